//! `outpost-managed`: a PoP run by the control plane (`outpost edge --control URL ...`).
//!
//! Owns the PoP's side of the stream: connecting with the PoP's token, resuming from the
//! applied version and last purge, applying each config version through `Edge::apply` (the
//! same path as a reload) and ACKing or NACKing it, the last-known-good config and certificates
//! in the state dir (served when the control plane cannot be reached, also at start), reconnects
//! with jittered backoff, and handing purges in order to a [`PurgeSink`] the binary provides.
//! It must not know the control plane's store or API, nor how the cache purges.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outpost_config::LoadedConfig;
use outpost_edge::Edge;
use outpost_wire::{CertificateFiles, FromPop, Purge, ToPop, PROTOCOL_VERSION, STREAM_PATH};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, OnceCell};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Applies one purge to the PoP's cache (the running `Edge` is passed in, so a sink can call
/// into it); `Err` is reported to the control plane with the ack. Not called before the PoP
/// serves anything: a purge that arrives before the first config has nothing to remove.
pub type PurgeSink = Arc<dyn Fn(&Edge, &Purge) -> Result<(), String> + Send + Sync>;

/// How to reach the control plane and what this PoP keeps local.
pub struct ManagedOptions {
    /// `http://host:port` or `https://host:port` of the control plane.
    pub control_url: String,
    /// TLS settings for an `https://` control URL (which CA to trust).
    pub control_tls: Option<Arc<rustls::ClientConfig>>,
    pub pop: String,
    pub token: String,
    pub state_dir: PathBuf,
    /// The admin listener (local: not taken from the fleet config; `None` turns it off).
    pub admin: Option<SocketAddr>,
    /// Local addresses for the fleet config's listeners, by listener name.
    pub binds: Vec<(String, SocketAddr)>,
    pub purge_sink: PurgeSink,
}

const LKG_FILE: &str = "last-known-good.json";
const PURGE_SEQ_FILE: &str = "purge-seq";
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// The control plane pings every 15 s; silence for this long means the link is dead.
const READ_TIMEOUT: Duration = Duration::from_secs(50);

/// The config message as received, kept as the last-known-good.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lkg {
    version: u64,
    hash: String,
    toml: String,
    certificates: Vec<CertificateFiles>,
}

/// A running managed PoP: the edge (once it has a config) and the link to the control plane.
pub struct Agent {
    edge: Arc<OnceCell<Edge>>,
    link: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("state dir {0}")]
    StateDir(String),
    #[error("cannot serve the last-known-good config (version {version}): {reason}")]
    Lkg { version: u64, reason: String },
    #[error("stopped before the control plane sent a config")]
    Stopped,
}

struct Link {
    opts: ManagedOptions,
    edge: Arc<OnceCell<Edge>>,
    started: watch::Sender<bool>,
    applied: Option<(u64, String)>,
    purge_seq: Option<u64>,
}

impl Agent {
    /// Serves the last-known-good config at once if the state dir has one, and connects to the
    /// control plane. Without a last-known-good, returns once the control plane's first config
    /// is serving (retrying the connection until then, or until `stop`).
    pub async fn start(opts: ManagedOptions, stop: CancellationToken) -> Result<Self, AgentError> {
        let dir = opts.state_dir.clone();
        let (lkg, purge_seq) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)
                .map_err(|e| AgentError::StateDir(format!("{}: cannot create: {e}", dir.display())))?;
            let purge_seq: Option<u64> = std::fs::read_to_string(dir.join(PURGE_SEQ_FILE))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            Ok((read_lkg(&dir), purge_seq))
        })
        .await
        .map_err(|e| AgentError::StateDir(e.to_string()))??;
        let edge = Arc::new(OnceCell::new());
        let (started, mut started_rx) = watch::channel(false);
        let mut link = Link {
            opts,
            edge: edge.clone(),
            started,
            applied: None,
            purge_seq,
        };
        if let Some(lkg) = lkg {
            let version = lkg.version;
            let loaded = link.build(&lkg).await.map_err(|e| AgentError::Lkg {
                version,
                reason: e.join("; "),
            })?;
            let started = Edge::start(loaded, None).await.map_err(|e| AgentError::Lkg {
                version,
                reason: e.to_string(),
            })?;
            // Purges made while this PoP was away arrive before the config; until then a disk
            // cache may hold purged objects, so requests bypass it (a memory cache starts empty).
            if started.shared().cache.as_ref().is_some_and(|c| c.has_disk()) {
                started.shared().hold_cache(true);
            }
            let _ = edge.set(started);
            link.applied = Some((lkg.version, lkg.hash.clone()));
            let _ = link.started.send(true);
            tracing::info!(
                version,
                "serving the last-known-good config while connecting to the control plane"
            );
        } else {
            tracing::info!(
                "no last-known-good config in the state dir: waiting for the control plane's first version"
            );
        }
        let link_stop = stop.clone();
        let link = tokio::spawn(async move { link.run(link_stop).await });
        loop {
            if *started_rx.borrow_and_update() {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    link.abort();
                    return Err(AgentError::Stopped);
                }
                r = started_rx.changed() => if r.is_err() { return Err(AgentError::Stopped) },
            }
        }
        Ok(Self { edge, link, stop })
    }

    pub fn edge(&self) -> &Edge {
        // `start` returns only once the cell is set.
        self.edge
            .get()
            .expect("the agent starts only with a serving edge")
    }

    /// Closes the link to the control plane (the edge keeps serving until dropped or drained).
    pub async fn disconnect(&self) {
        self.stop.cancel();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.cancel();
        self.link.abort();
    }
}

fn read_lkg(dir: &Path) -> Option<Lkg> {
    let path = dir.join(LKG_FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    match serde_json::from_str(&text) {
        Ok(lkg) => Some(lkg),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "last-known-good file is unreadable; ignoring it");
            None
        }
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, so a crash never leaves
/// half a file.
async fn write_atomic(path: &Path, contents: Vec<u8>) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, contents).await?;
    tokio::fs::rename(&tmp, path).await
}

fn ws_url(control: &str) -> Result<String, String> {
    let base = control.trim_end_matches('/');
    if let Some(rest) = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("ws://"))
    {
        Ok(format!("ws://{rest}{STREAM_PATH}"))
    } else if let Some(rest) = base
        .strip_prefix("https://")
        .or_else(|| base.strip_prefix("wss://"))
    {
        Ok(format!("wss://{rest}{STREAM_PATH}"))
    } else {
        Err(format!(
            "--control {control}: use http://host:port or https://host:port"
        ))
    }
}

impl Link {
    async fn run(mut self, stop: CancellationToken) {
        let url = match ws_url(&self.opts.control_url) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        let mut attempt: u32 = 0;
        let mut last_error = String::new();
        loop {
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.session(&url, &stop) => r,
            };
            match outcome {
                Ok(()) => attempt = 0,
                Err((heard, e)) => {
                    if heard {
                        attempt = 0;
                    }
                    if e != last_error {
                        tracing::warn!(error = %e, "control plane link down; serving the current config and retrying");
                        last_error = e;
                    }
                }
            }
            // Full jitter: a fleet that lost its control plane does not come back in lockstep.
            let ceiling = BACKOFF_BASE.saturating_mul(1 << attempt.min(8)).min(BACKOFF_CAP);
            let delay = ceiling.mul_f64(0.5 + fastrand::f64() / 2.0);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection. `Err((heard, reason))`: `heard` when the control plane answered hello.
    async fn session(&mut self, url: &str, stop: &CancellationToken) -> Result<(), (bool, String)> {
        let mut request = url
            .into_client_request()
            .map_err(|e| (false, format!("bad control URL {url}: {e}")))?;
        let auth = format!("Bearer {}", self.opts.token)
            .parse()
            .map_err(|_| (false, "the token has characters a header cannot carry".to_owned()))?;
        request.headers_mut().insert("authorization", auth);
        let connector = self
            .opts
            .control_tls
            .clone()
            .map(tokio_tungstenite::Connector::Rustls);
        let connect = tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector);
        let (mut ws, _) = match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Err(_) => return Err((false, format!("connecting to {url} timed out"))),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                let detail = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["detail"].as_str().map(str::to_owned))
                    .unwrap_or(body);
                return Err((
                    false,
                    format!("control plane refused the stream: {} {detail}", resp.status()),
                ));
            }
            Ok(Err(e)) => return Err((false, format!("cannot connect to {url}: {e}"))),
            Ok(Ok(pair)) => pair,
        };
        let hello = FromPop::Hello {
            protocol: PROTOCOL_VERSION,
            pop: self.opts.pop.clone(),
            applied_version: self.applied.as_ref().map(|a| a.0),
            applied_hash: self.applied.as_ref().map(|a| a.1.clone()),
            last_purge_seq: self.purge_seq,
        };
        ws.send(Message::text(hello.to_json()))
            .await
            .map_err(|e| (false, format!("cannot send hello: {e}")))?;
        tracing::info!(%url, applied = ?self.applied.as_ref().map(|a| a.0), purge_seq = ?self.purge_seq, "connected to the control plane");
        let mut heard = false;
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => {
                    let _ = ws.close(None).await;
                    return Ok(());
                }
                f = tokio::time::timeout(READ_TIMEOUT, ws.next()) => f,
            };
            let msg = match frame {
                Err(_) => return Err((heard, "no message or ping from the control plane in 50 s".into())),
                Ok(None) => return Err((heard, "the control plane closed the stream".into())),
                Ok(Some(Err(e))) => return Err((heard, format!("stream error: {e}"))),
                Ok(Some(Ok(m))) => m,
            };
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(_) => return Err((heard, "the control plane closed the stream".into())),
                Message::Binary(_) => return Err((heard, "unexpected binary frame".into())),
                _ => continue,
            };
            heard = true;
            let msg: ToPop = match serde_json::from_str(text.as_str()) {
                Ok(m) => m,
                Err(e) => return Err((heard, format!("bad message from the control plane: {e}"))),
            };
            let reply = match msg {
                ToPop::Error { message } => return Err((heard, format!("control plane: {message}"))),
                ToPop::Purge { seq, purge } => self.purge(seq, &purge).await,
                ToPop::Config {
                    version,
                    hash,
                    toml,
                    certificates,
                } => {
                    let reply = self
                        .config(Lkg {
                            version,
                            hash,
                            toml,
                            certificates,
                        })
                        .await;
                    // The control plane sends missed purges before the config: caught up.
                    if let Some(edge) = self.edge.get() {
                        edge.shared().hold_cache(false);
                    }
                    reply
                }
            };
            ws.send(Message::text(reply.to_json()))
                .await
                .map_err(|e| (heard, format!("cannot send: {e}")))?;
        }
    }

    async fn purge(&mut self, seq: u64, purge: &Purge) -> FromPop {
        if self.purge_seq.is_some_and(|done| seq <= done) {
            // Already applied (the ack was lost): acknowledge again.
            return FromPop::PurgeAck { seq, error: None };
        }
        let error = match self.edge.get() {
            Some(edge) => (self.opts.purge_sink)(edge, purge).err(),
            None => None,
        };
        if let Some(e) = &error {
            tracing::warn!(seq, purge = %purge.describe(), error = %e, "purge failed");
        }
        self.purge_seq = Some(seq);
        let path = self.opts.state_dir.join(PURGE_SEQ_FILE);
        if let Err(e) = write_atomic(&path, seq.to_string().into_bytes()).await {
            tracing::error!(error = %e, "cannot record the last purge in the state dir");
        }
        FromPop::PurgeAck { seq, error }
    }

    async fn config(&mut self, lkg: Lkg) -> FromPop {
        let version = lkg.version;
        if self
            .applied
            .as_ref()
            .is_some_and(|(v, h)| *v == version && *h == lkg.hash)
        {
            return FromPop::Ack { version };
        }
        match self.apply(&lkg).await {
            Ok(()) => {
                tracing::info!(version, "config version applied");
                let json = serde_json::to_vec_pretty(&lkg).unwrap_or_default();
                if let Err(e) = write_atomic(&self.opts.state_dir.join(LKG_FILE), json).await {
                    tracing::error!(error = %e, "cannot save the last-known-good config");
                }
                self.applied = Some((version, lkg.hash.clone()));
                self.clean_cert_dirs(&lkg.hash).await;
                FromPop::Ack { version }
            }
            Err(errors) => {
                tracing::error!(
                    version,
                    ?errors,
                    "config version refused; the previous one keeps serving"
                );
                FromPop::Nack { version, errors }
            }
        }
    }

    async fn apply(&mut self, lkg: &Lkg) -> Result<(), Vec<String>> {
        let loaded = self.build(lkg).await?;
        match self.edge.get() {
            Some(edge) => edge.apply(loaded).await.map(|_| ()).map_err(|e| e.messages()),
            None => {
                let edge = Edge::start(loaded, None).await.map_err(|e| e.messages())?;
                let _ = self.edge.set(edge);
                let _ = self.started.send(true);
                Ok(())
            }
        }
    }

    /// The fleet config made this PoP's: certificates written to the state dir, relative paths
    /// resolved against it, and the local settings (id, admin listener, listener addresses).
    async fn build(&self, lkg: &Lkg) -> Result<LoadedConfig, Vec<String>> {
        let source = format!("control version {}", lkg.version);
        let errs = |e: outpost_config::ConfigErrors| e.iter().map(ToString::to_string).collect::<Vec<_>>();
        let mut config = outpost_config::parse_str(&lkg.toml, &source, Some(&self.opts.state_dir))
            .map_err(errs)?
            .config;
        let cert_dir = self
            .opts
            .state_dir
            .join("certs")
            .join(&lkg.hash[..lkg.hash.len().min(16)]);
        let mut written = HashMap::new();
        for c in &lkg.certificates {
            let (cert, key) = write_cert(&cert_dir, c).await.map_err(|e| {
                vec![format!(
                    "certificate {}: cannot write to the state dir: {e}",
                    c.name
                )]
            })?;
            written.insert(c.name.clone(), (cert, key));
        }
        for c in &mut config.certificates {
            if let Some((cert, key)) = written.get(&c.name) {
                c.cert = cert.clone();
                c.key = key.clone();
            }
        }
        config.version = Some(format!("control-v{}", lkg.version));
        config.pop.id = self.opts.pop.clone();
        config.pop.state_dir = Some(self.opts.state_dir.clone());
        config.admin.listen = self.opts.admin;
        for (name, addr) in &self.opts.binds {
            match config.listeners.iter_mut().find(|l| &l.name == name) {
                Some(l) => l.address = *addr,
                None => {
                    return Err(vec![format!(
                        "--bind {name}={addr}: version {} has no listener named \"{name}\"",
                        lkg.version
                    )])
                }
            }
        }
        outpost_config::from_config(config, &source).map_err(errs)
    }

    /// Removes certificate directories of versions no longer serving.
    async fn clean_cert_dirs(&self, keep_hash: &str) {
        let keep = &keep_hash[..keep_hash.len().min(16)];
        let Ok(mut dir) = tokio::fs::read_dir(self.opts.state_dir.join("certs")).await else {
            return;
        };
        while let Ok(Some(entry)) = dir.next_entry().await {
            if entry.file_name().to_str() != Some(keep) {
                let _ = tokio::fs::remove_dir_all(entry.path()).await;
            }
        }
    }
}

async fn write_cert(dir: &Path, c: &CertificateFiles) -> std::io::Result<(PathBuf, PathBuf)> {
    let safe = c
        .name
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
        && !c.name.starts_with('.');
    if !safe {
        return Err(std::io::Error::other("unsafe certificate name"));
    }
    tokio::fs::create_dir_all(dir).await?;
    let cert = dir.join(format!("{}.crt", c.name));
    let key = dir.join(format!("{}.key", c.name));
    write_atomic(&cert, c.cert_pem.clone().into_bytes()).await?;
    write_atomic(&key, c.key_pem.clone().into_bytes()).await?;
    let perms = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    tokio::fs::set_permissions(&key, perms).await?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(dir: &Path, binds: Vec<(String, SocketAddr)>) -> Link {
        let (started, _) = watch::channel(false);
        Link {
            opts: ManagedOptions {
                control_url: "http://127.0.0.1:7000".into(),
                control_tls: None,
                pop: "fra-1".into(),
                token: "t".into(),
                state_dir: dir.to_owned(),
                admin: Some("127.0.0.1:9999".parse().unwrap()),
                binds,
                purge_sink: Arc::new(|_, _| Ok(())),
            },
            edge: Arc::new(OnceCell::new()),
            started,
            applied: None,
            purge_seq: None,
        }
    }

    const FLEET: &str = "[pop]\nid = \"fleet\"\n[admin]\nlisten = \"127.0.0.1:1\"\n[log]\naccess_log = \"access.log\"\n\
        [[listener]]\nname = \"main\"\naddress = \"127.0.0.1:8080\"\n\
        [[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:8443\"\n[listener.tls]\ndefault_certificate = \"up\"\n\
        [[certificate]]\nname = \"up\"\ncert = \"x.crt\"\nkey = \"x.key\"\nnames = [\"a.test\"]\n\
        [[site]]\nname = \"s\"\nhosts = [\"a.test\"]\npool = \"p\"\n\
        [[pool]]\nname = \"p\"\n[[pool.origin]]\nurl = \"http://127.0.0.1:9000\"\n";

    fn lkg(certificates: Vec<CertificateFiles>) -> Lkg {
        Lkg {
            version: 7,
            hash: "0123456789abcdef0123".into(),
            toml: FLEET.into(),
            certificates,
        }
    }

    #[tokio::test]
    async fn local_settings_override_the_fleet_config() {
        let dir = std::env::temp_dir().join(format!("outpost-managed-build-{}", std::process::id()));
        let bind: SocketAddr = "127.0.0.1:18080".parse().unwrap();
        let l = link(&dir, vec![("main".into(), bind)]);
        let cert = CertificateFiles {
            name: "up".into(),
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
        };
        let loaded = l.build(&lkg(vec![cert])).await.unwrap();
        let c = &loaded.config;
        assert_eq!(c.pop.id, "fra-1");
        assert_eq!(c.version.as_deref(), Some("control-v7"));
        assert_eq!(c.admin.listen, Some("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(c.listeners[0].address, bind);
        assert_eq!(c.listeners[1].address, "127.0.0.1:8443".parse().unwrap());
        // The delivered certificate is written to the state dir and used; relative paths
        // resolve against the state dir.
        let cert_path = dir.join("certs/0123456789abcdef/up.crt");
        assert_eq!(c.certificates[0].cert, cert_path);
        assert_eq!(std::fs::read_to_string(&cert_path).unwrap(), "CERT");
        assert_eq!(c.log.access_log, dir.join("access.log").display().to_string());

        // Without an upload, the fleet config's (relative) path is kept, under the state dir.
        let loaded = l.build(&lkg(vec![])).await.unwrap();
        assert_eq!(loaded.config.certificates[0].cert, dir.join("x.crt"));

        // A --bind for a listener the version does not have is an error naming both.
        let l = link(&dir, vec![("nope".into(), bind)]);
        let err = l.build(&lkg(vec![])).await.unwrap_err();
        assert!(
            err[0].contains("--bind nope=") && err[0].contains("version 7"),
            "{err:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn control_urls_map_to_the_stream() {
        assert_eq!(
            ws_url("http://127.0.0.1:7000/").unwrap(),
            "ws://127.0.0.1:7000/v1/stream"
        );
        assert_eq!(
            ws_url("https://c.example:7000").unwrap(),
            "wss://c.example:7000/v1/stream"
        );
        assert!(ws_url("ftp://x").is_err());
    }
}
