//! One PoP's stream: a WebSocket opened with the PoP's token. After the PoP's `Hello`, the
//! session sends the purges it missed (in order), then the latest config if the PoP serves
//! another, then whatever is made while it stays connected; it records ACK/NACK and purge acks.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use outpost_wire::{FromPop, ToPop, PROTOCOL_VERSION};

use crate::service::{now_ms, Caller, Control};
use crate::store::PurgeAck;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const PING_EVERY: Duration = Duration::from_secs(15);
/// A PoP that sends nothing (not even a pong) for this long is gone.
const SILENCE_LIMIT: Duration = Duration::from_secs(45);

struct Session {
    pop: String,
    /// Last purge sent to the PoP.
    purge_cursor: u64,
    /// The config (version, hash) last sent or reported by the PoP.
    config_sent: Option<(u64, String)>,
}

pub async fn run(control: Arc<Control>, caller: Caller, mut socket: WebSocket) {
    let Some(pop) = caller.pop.clone() else {
        return;
    };
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, next_message(&mut socket)).await {
        Ok(Some(Ok(FromPop::Hello {
            protocol,
            pop: said,
            applied_version,
            applied_hash,
            last_purge_seq,
        }))) => {
            if protocol != PROTOCOL_VERSION {
                return close(
                    socket,
                    format!(
                        "protocol {protocol} is not supported; this control plane speaks {PROTOCOL_VERSION}"
                    ),
                )
                .await;
            }
            if said != pop {
                return close(
                    socket,
                    format!("this token belongs to PoP \"{pop}\", not \"{said}\""),
                )
                .await;
            }
            (applied_version, applied_hash, last_purge_seq)
        }
        Ok(Some(Ok(_))) => return close(socket, "the first message must be hello".into()).await,
        Ok(Some(Err(e))) => return close(socket, e).await,
        Ok(None) => return,
        Err(_) => return close(socket, "no hello within 10 s".into()).await,
    };
    let (applied_version, applied_hash, last_purge_seq) = hello;
    let id = pop.clone();
    match control.db(move |s| s.pop(&id)).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return close(socket, format!("PoP \"{pop}\" is not in the inventory")).await;
        }
        Err(e) => return close(socket, format!("control plane store failure: {e}")).await,
    }
    let latest_seq = control.db(|s| s.latest_purge_seq()).await.unwrap_or(0);
    let purge_cursor = match last_purge_seq {
        // A PoP with no state has nothing cached: it starts from now, and purges it was
        // expected to apply are closed as skipped rather than left pending forever.
        None => {
            let (id, at) = (pop.clone(), now_ms());
            match control
                .db(move |s| {
                    s.skip_purges(
                        &id,
                        latest_seq,
                        at,
                        "skipped: the PoP started with an empty cache",
                    )
                })
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(%pop, n, "PoP started without state: its pending purges are moot"),
                Err(e) => {
                    tracing::error!(%pop, error = %e, "cannot close the pending purges of a PoP without state")
                }
            }
            latest_seq
        }
        Some(seq) if seq > latest_seq => {
            tracing::warn!(%pop, seq, latest_seq, "PoP reports purges this control plane never made; starting it from the latest");
            latest_seq
        }
        Some(seq) => seq,
    };
    let session_info = control.hub.register(&pop, caller.remote.clone());
    tracing::info!(%pop, remote = %caller.remote, ?applied_version, purge_cursor, "PoP connected");
    let mut session = Session {
        pop: pop.clone(),
        purge_cursor,
        config_sent: applied_version.zip(applied_hash),
    };
    if let (Some(v), None) = (applied_version, &session.config_sent) {
        // Without the hash the content is unknown: send the latest again.
        tracing::debug!(%pop, v, "PoP did not send its config hash");
    }
    let result = serve(&control, &mut session, &mut socket, &session_info.cancel).await;
    control.hub.unregister(&pop, session_info.id);
    match result {
        Ok(()) => tracing::info!(%pop, "PoP disconnected"),
        Err(reason) => {
            tracing::warn!(%pop, %reason, "PoP stream closed");
            close(socket, reason).await;
        }
    }
}

async fn serve(
    control: &Arc<Control>,
    session: &mut Session,
    socket: &mut WebSocket,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    let mut ticks = control.hub.subscribe();
    send_pending(control, session, socket).await?;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Err("superseded by a newer connection of the same PoP".into()),
            _ = control.shutdown.cancelled() => return Err("the control plane is shutting down".into()),
            changed = ticks.changed() => {
                if changed.is_err() {
                    return Err("the control plane is shutting down".into());
                }
                send_pending(control, session, socket).await?;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > SILENCE_LIMIT {
                    return Err(format!("nothing heard for {} s", SILENCE_LIMIT.as_secs()));
                }
                send(socket, Message::Ping(Default::default())).await?;
            }
            msg = next_frame(socket) => {
                last_heard = tokio::time::Instant::now();
                match msg {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(None)) => {}
                    Some(Ok(Some(msg))) => handle(control, session, msg).await?,
                }
            }
        }
    }
}

async fn handle(control: &Arc<Control>, session: &mut Session, msg: FromPop) -> Result<(), String> {
    let pop = session.pop.clone();
    match msg {
        FromPop::Hello { .. } => return Err("hello sent twice".into()),
        FromPop::Ack { version } => {
            let sent = session.config_sent.as_ref().map(|(v, _)| *v);
            if sent != Some(version) {
                tracing::warn!(%pop, version, ?sent, "ACK for a version this session did not send; ignored");
                return Ok(());
            }
            tracing::info!(%pop, version, "PoP applied config");
            let at = now_ms();
            if let Err(e) = control.db(move |s| s.record_applied(&pop, version, at)).await {
                tracing::error!(error = %e, "cannot record an ACK");
            }
        }
        FromPop::Nack { version, errors } => {
            tracing::warn!(%pop, version, ?errors, "PoP refused config; it keeps its previous one");
            let at = now_ms();
            let errors: Vec<String> = errors.into_iter().take(50).collect();
            if let Err(e) = control
                .db(move |s| s.record_nack(&pop, version, &errors, at))
                .await
            {
                tracing::error!(error = %e, "cannot record a NACK");
            }
        }
        FromPop::PurgeAck { seq, error } => {
            if seq > session.purge_cursor {
                return Err(format!("purge ack for {seq}, which was never sent"));
            }
            control.purge_acked(PurgeAck {
                seq,
                pop,
                acked_ms: now_ms(),
                error,
            });
        }
    }
    Ok(())
}

/// Sends the purges after the session's cursor, then the latest config if it differs from what
/// the PoP has. Purges first: a PoP that was away drops what it missed before new config lands.
async fn send_pending(
    control: &Arc<Control>,
    session: &mut Session,
    socket: &mut WebSocket,
) -> Result<(), String> {
    loop {
        let batch: Vec<(u64, Utf8Bytes)> = match control.hub.purges_after(session.purge_cursor) {
            Some(recent) => recent.into_iter().map(|p| (p.seq, p.message)).collect(),
            None => {
                let after = session.purge_cursor;
                control
                    .db(move |s| s.purges_after(after, 1000))
                    .await
                    .map_err(|e| format!("store failure: {e}"))?
                    .into_iter()
                    .map(|r| {
                        let msg = ToPop::Purge {
                            seq: r.seq,
                            purge: r.purge,
                        };
                        (r.seq, msg.to_json().into())
                    })
                    .collect()
            }
        };
        if batch.is_empty() {
            break;
        }
        for (seq, message) in batch {
            send(socket, Message::Text(message)).await?;
            session.purge_cursor = seq;
        }
    }
    if let Some(push) = control.hub.latest() {
        let current = Some((push.version, push.hash.clone()));
        if session.config_sent != current {
            send(socket, Message::Text(push.message.clone())).await?;
            session.config_sent = current;
        }
    }
    Ok(())
}

async fn send(socket: &mut WebSocket, msg: Message) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(10), socket.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("send failed: {e}")),
        Err(_) => Err("the PoP is not reading (send timed out)".into()),
    }
}

/// The next protocol message (`Ok(None)` for a ping or pong); `None` when the PoP closed.
async fn next_frame(socket: &mut WebSocket) -> Option<Result<Option<FromPop>, String>> {
    let msg = match socket.recv().await? {
        Ok(m) => m,
        Err(e) => return Some(Err(format!("receive failed: {e}"))),
    };
    match msg {
        Message::Text(text) => Some(
            serde_json::from_str(text.as_str())
                .map(Some)
                .map_err(|e| format!("bad message from PoP: {e}")),
        ),
        Message::Binary(_) => Some(Err("binary frames are not part of the protocol".into())),
        Message::Close(_) => None,
        Message::Ping(_) | Message::Pong(_) => Some(Ok(None)),
    }
}

/// The next protocol message, skipping keep-alives.
async fn next_message(socket: &mut WebSocket) -> Option<Result<FromPop, String>> {
    loop {
        match next_frame(socket).await? {
            Ok(Some(m)) => return Some(Ok(m)),
            Ok(None) => continue,
            Err(e) => return Some(Err(e)),
        }
    }
}

async fn close(mut socket: WebSocket, message: String) {
    let _ = send(
        &mut socket,
        Message::Text(ToPop::Error { message }.to_json().into()),
    )
    .await;
    let _ = socket.send(Message::Close(None)).await;
}
