//! The control plane's core: the store (called off the runtime threads), the hub that tells PoP
//! sessions about new versions and purges, and the operations the API exposes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use axum::http::StatusCode;
use outpost_wire::{CertificateFiles, Purge, ToPop};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::problem::Problem;
use crate::store::*;

/// Purges kept in memory for sessions to send without a store read (older ones are read back).
const RECENT_PURGES: usize = 4096;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// The version every PoP should serve, ready to send.
#[derive(Debug)]
pub struct Push {
    pub version: u64,
    /// Covers the text and the delivered certificates, so a re-uploaded certificate is re-sent.
    pub hash: String,
    pub created_ms: i64,
    pub message: Utf8Bytes,
}

/// What sessions watch: bumps when a version or a purge is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tick {
    pub version: u64,
    pub purge_seq: u64,
}

#[derive(Debug, Clone)]
pub struct RecentPurge {
    pub seq: u64,
    pub message: Utf8Bytes,
}

/// A connected PoP's session, as shown by the API.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: u64,
    pub since_ms: i64,
    pub remote: String,
    pub cancel: CancellationToken,
}

pub struct Hub {
    latest: RwLock<Option<Arc<Push>>>,
    recent: RwLock<VecDeque<RecentPurge>>,
    tick: watch::Sender<Tick>,
    sessions: Mutex<HashMap<String, SessionInfo>>,
    next_session: std::sync::atomic::AtomicU64,
}

impl Hub {
    pub fn latest(&self) -> Option<Arc<Push>> {
        self.latest.read().ok()?.clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Tick> {
        self.tick.subscribe()
    }

    /// Purges after `after`, if memory still holds all of them (else the caller reads the store).
    pub fn purges_after(&self, after: u64) -> Option<Vec<RecentPurge>> {
        let recent = self.recent.read().ok()?;
        match recent.front() {
            Some(first) if first.seq > after + 1 => None,
            _ => Some(recent.iter().filter(|p| p.seq > after).cloned().collect()),
        }
    }

    /// Registers a PoP's session, ending an older one of the same PoP.
    pub fn register(&self, pop: &str, remote: String) -> SessionInfo {
        let info = SessionInfo {
            id: self
                .next_session
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            since_ms: now_ms(),
            remote,
            cancel: CancellationToken::new(),
        };
        if let Ok(mut sessions) = self.sessions.lock() {
            if let Some(old) = sessions.insert(pop.to_owned(), info.clone()) {
                old.cancel.cancel();
            }
        }
        info
    }

    pub fn unregister(&self, pop: &str, id: u64) {
        if let Ok(mut sessions) = self.sessions.lock() {
            if sessions.get(pop).is_some_and(|s| s.id == id) {
                sessions.remove(pop);
            }
        }
    }

    pub fn session(&self, pop: &str) -> Option<SessionInfo> {
        self.sessions.lock().ok()?.get(pop).cloned()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().map_or(0, |s| s.len())
    }

    fn set_latest(&self, push: Push) {
        let version = push.version;
        if let Ok(mut latest) = self.latest.write() {
            *latest = Some(Arc::new(push));
        }
        self.tick.send_modify(|t| t.version = version);
    }

    fn add_purge(&self, record: &PurgeRecord) {
        let message: Utf8Bytes = ToPop::Purge {
            seq: record.seq,
            purge: record.purge.clone(),
        }
        .to_json()
        .into();
        if let Ok(mut recent) = self.recent.write() {
            recent.push_back(RecentPurge {
                seq: record.seq,
                message,
            });
            while recent.len() > RECENT_PURGES {
                recent.pop_front();
            }
        }
        let seq = record.seq;
        self.tick.send_modify(|t| t.purge_seq = t.purge_seq.max(seq));
    }
}

/// Who is calling, from a verified bearer token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub pop: Option<String>,
    pub remote: String,
}

impl Caller {
    pub fn require(&self, role: Role) -> Result<(), Problem> {
        if self.role == Role::Pop {
            return Err(Problem::forbidden(
                "a PoP token only opens its PoP's stream (/v1/stream)",
            ));
        }
        if self.role < role {
            return Err(Problem::forbidden(format!(
                "token \"{}\" has role {}; this needs {} or above",
                self.name,
                self.role.as_str(),
                role.as_str()
            )));
        }
        Ok(())
    }
}

pub fn hash_token(token: &str) -> String {
    // Tokens are 256 random bits, so a plain SHA-256 is enough: there is nothing to brute-force
    // that a slow hash would protect.
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn new_token_secret() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a token: {e}"))?;
    Ok(format!("opt_{}", hex::encode(bytes)))
}

/// The result of applying (or dry-running) a config.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplyOutcome {
    /// The version now stored (or that would be, for a dry run).
    pub version: u64,
    pub unchanged: bool,
    pub dry_run: bool,
    pub diff: String,
    pub hash: String,
}

pub struct Control {
    store: Arc<dyn Store>,
    pub hub: Hub,
    acks: mpsc::UnboundedSender<PurgeAck>,
    pub shutdown: CancellationToken,
}

impl Control {
    /// Loads the latest version and recent purges into the hub and starts the ack writer.
    pub async fn new(store: Arc<dyn Store>, shutdown: CancellationToken) -> Result<Arc<Self>, StoreError> {
        let (tx, _) = watch::channel(Tick::default());
        let (acks, acks_rx) = mpsc::unbounded_channel();
        let control = Arc::new(Self {
            store,
            hub: Hub {
                latest: RwLock::new(None),
                recent: RwLock::new(VecDeque::new()),
                tick: tx,
                sessions: Mutex::new(HashMap::new()),
                next_session: std::sync::atomic::AtomicU64::new(1),
            },
            acks,
            shutdown,
        });
        control.refresh_push().await?;
        let latest_seq = control.db(|s| s.latest_purge_seq()).await?;
        let after = latest_seq.saturating_sub(RECENT_PURGES as u64);
        let recent = control
            .db(move |s| s.purges_after(after, RECENT_PURGES as u32))
            .await?;
        for record in &recent {
            control.hub.add_purge(record);
        }
        tokio::spawn(ack_writer(control.store.clone(), acks_rx));
        Ok(control)
    }

    /// Runs `f` against the store on the blocking pool.
    pub async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&*store))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    /// Rebuilds what PoPs should serve from the latest version and the uploaded certificates.
    pub async fn refresh_push(&self) -> StoreResult<()> {
        let (latest, certs) = self.db(|s| Ok((s.latest_version()?, s.certificates()?))).await?;
        let Some(latest) = latest else {
            return Ok(());
        };
        // The version was validated when stored; the names it gives certificates pick which
        // uploaded ones go with it.
        let wanted: Vec<String> = outpost_config::parse_str(&latest.toml, "fleet.toml", None)
            .map(|l| l.config.certificates.into_iter().map(|c| c.name).collect())
            .unwrap_or_default();
        let certificates: Vec<CertificateFiles> = certs
            .into_iter()
            .filter(|c| wanted.contains(&c.name))
            .map(|c| CertificateFiles {
                name: c.name,
                cert_pem: c.cert_pem,
                key_pem: c.key_pem,
            })
            .collect();
        let mut hasher = Sha256::new();
        hasher.update(latest.toml.as_bytes());
        for c in &certificates {
            for part in [&c.name, &c.cert_pem, &c.key_pem] {
                hasher.update((part.len() as u64).to_be_bytes());
                hasher.update(part.as_bytes());
            }
        }
        let hash = hex::encode(hasher.finalize());
        let message = ToPop::Config {
            version: latest.version,
            hash: hash.clone(),
            toml: latest.toml,
            certificates,
        }
        .to_json()
        .into();
        self.hub.set_latest(Push {
            version: latest.version,
            hash,
            created_ms: latest.created_ms,
            message,
        });
        Ok(())
    }

    pub async fn caller(&self, token: &str, remote: String) -> Result<Caller, Problem> {
        let hash = hash_token(token);
        match self.db(move |s| s.token_by_hash(&hash)).await? {
            Some(t) => Ok(Caller {
                name: t.name,
                role: t.role,
                pop: t.pop,
                remote,
            }),
            None => Err(Problem::unauthorized("unknown or revoked token")),
        }
    }

    pub async fn audit(&self, caller: &Caller, action: &str, target: &str, detail: String) {
        let entry = AuditEntry {
            id: 0,
            at_ms: now_ms(),
            actor: caller.name.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail,
            remote: caller.remote.clone(),
        };
        if let Err(e) = self.db(move |s| s.append_audit(&entry)).await {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    /// Validates `toml` with the same validator as `outpost edge`, and stores it as the next
    /// version unless it equals the latest. `base`: refuse unless the latest is still that one.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply(
        &self,
        caller: &Caller,
        file: &str,
        toml: String,
        message: String,
        base: Option<u64>,
        dry_run: bool,
        reverted_from: Option<u64>,
    ) -> Result<ApplyOutcome, Problem> {
        if let Err(errors) = outpost_config::parse_str(&toml, file, None) {
            let mut p = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-config",
                format!(
                    "the config is invalid ({} problem(s)); nothing was stored",
                    errors.len()
                ),
            );
            p.errors = errors.iter().map(ToString::to_string).collect();
            return Err(p);
        }
        let latest = self.db(|s| s.latest_version()).await?;
        let latest_n = latest.as_ref().map_or(0, |v| v.version);
        if let Some(base) = base {
            if base != latest_n {
                return Err(StoreError::Conflict {
                    base,
                    latest: latest_n,
                }
                .into());
            }
        }
        let hash = outpost_wire::config_hash(&toml);
        let old_text = latest.as_ref().map_or("", |v| v.toml.as_str());
        let diff = crate::diff::unified(
            old_text,
            &toml,
            &format!("version {latest_n}"),
            &format!("version {}", latest_n + 1),
        );
        if latest.as_ref().is_some_and(|v| v.hash == hash) {
            return Ok(ApplyOutcome {
                version: latest_n,
                unchanged: true,
                dry_run,
                diff: String::new(),
                hash,
            });
        }
        if dry_run {
            return Ok(ApplyOutcome {
                version: latest_n + 1,
                unchanged: false,
                dry_run,
                diff,
                hash,
            });
        }
        let new = NewVersion {
            toml,
            hash: hash.clone(),
            author: caller.name.clone(),
            message: message.clone(),
            created_ms: now_ms(),
            diff: diff.clone(),
            reverted_from,
        };
        let stored = self.db(move |s| s.insert_version(new, Some(latest_n))).await?;
        let action = if reverted_from.is_some() {
            "config.revert"
        } else {
            "config.apply"
        };
        self.audit(caller, action, &format!("version {}", stored.version), message)
            .await;
        self.refresh_push().await?;
        tracing::info!(version = stored.version, author = %caller.name, "config version stored");
        Ok(ApplyOutcome {
            version: stored.version,
            unchanged: false,
            dry_run,
            diff,
            hash,
        })
    }

    pub async fn purge(&self, caller: &Caller, purge: Purge) -> Result<PurgeRecord, Problem> {
        purge.validate().map_err(Problem::bad_request)?;
        let author = caller.name.clone();
        let record = self
            .db(move |s| {
                let targets: Vec<String> = s.pops()?.into_iter().map(|p| p.id).collect();
                s.insert_purge(&purge, &author, now_ms(), &targets)
            })
            .await?;
        self.hub.add_purge(&record);
        self.audit(
            caller,
            "purge",
            &format!("purge {}", record.seq),
            record.purge.describe(),
        )
        .await;
        Ok(record)
    }

    /// Called by a session: a purge was applied by `pop`.
    pub fn purge_acked(&self, ack: PurgeAck) {
        let _ = self.acks.send(ack);
    }
}

/// Writes purge acknowledgements in batches: with a thousand PoPs acking one purge, one
/// transaction instead of a thousand.
async fn ack_writer(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<PurgeAck>) {
    let mut batch = Vec::with_capacity(1024);
    while rx.recv_many(&mut batch, 4096).await > 0 {
        let acks = std::mem::take(&mut batch);
        let store = store.clone();
        let result = tokio::task::spawn_blocking(move || store.record_purge_acks(&acks)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot record purge acknowledgements"),
            Err(e) => tracing::error!(error = %e, "purge acknowledgement writer failed"),
        }
    }
}
