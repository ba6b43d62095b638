//! `outpost-control`: the control plane.
//!
//! Owns the fleet's durable state (versioned config, PoP inventory, tokens, audit log, purges,
//! certificates) behind the [`store::Store`] trait with its SQLite implementation, the `/v1`
//! JSON API (axum, problem+json errors, OpenAPI document), and the PoP stream sessions that
//! push versions and purges and record ACK/NACK. It validates configs with `outpost-config`
//! and speaks `outpost-wire`. It must not know how a PoP serves traffic (`outpost-edge`), how
//! the PoP applies what it gets, or anything about the command line.

pub mod api;
pub mod certs;
pub mod client;
pub mod diff;
pub mod openapi;
pub mod problem;
pub mod service;
pub mod store;
mod stream;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::service::{hash_token, new_token_secret, now_ms, Control};
use crate::store::{Role, SqliteStore, Store, TokenRecord};

#[derive(Debug, Clone)]
pub struct ControlOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Where the first admin token is read from (if it exists) or written to (if not), when the
    /// store has no token yet. Default: `DATA_DIR/admin.token`.
    pub bootstrap_token_file: Option<PathBuf>,
    /// Serve the API and the PoP streams over TLS with this certificate chain and key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A running control plane.
pub struct RunningControl {
    pub addr: SocketAddr,
    pub control: Arc<Control>,
    /// Where the bootstrap admin token was written, when this start made one.
    pub bootstrap_token_file: Option<PathBuf>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    _lock: File,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data dir {dir}: {reason}")]
    DataDir { dir: String, reason: String },
    #[error(
        "data dir {dir} is in use by another control plane ({holder}); stop it first or give another --data-dir"
    )]
    Locked { dir: String, holder: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("{0}")]
    Store(#[from] store::StoreError),
}

/// Takes the data dir's lock file: one control plane per data dir. The lock (flock) goes away
/// with the process, however it ends, so a killed control plane never leaves a stale lock.
fn lock_data_dir(dir: &Path) -> Result<File, StartError> {
    use std::io::{Read, Seek, Write};
    let show = dir.display().to_string();
    std::fs::create_dir_all(dir).map_err(|e| StartError::DataDir {
        dir: show.clone(),
        reason: format!("cannot create: {e}"),
    })?;
    let path = dir.join("control.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StartError::DataDir {
            dir: show.clone(),
            reason: format!("cannot open {}: {e}", path.display()),
        })?;
    let locked = fs4::fs_std::FileExt::try_lock_exclusive(&file).map_err(|e| StartError::DataDir {
        dir: show.clone(),
        reason: format!("cannot lock {}: {e}", path.display()),
    })?;
    if !locked {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => "lock file control.lock is held".to_owned(),
            pid => format!("pid {pid}, lock file control.lock"),
        };
        return Err(StartError::Locked { dir: show, holder });
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    let _ = file.flush();
    Ok(file)
}

/// Creates the first admin token when the store has none.
fn bootstrap(store: &dyn Store, options: &ControlOptions) -> Result<Option<PathBuf>, StartError> {
    if store.token_count()? > 0 {
        return Ok(None);
    }
    let path = options
        .bootstrap_token_file
        .clone()
        .unwrap_or_else(|| options.data_dir.join("admin.token"));
    let secret = match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
        _ => {
            let secret = new_token_secret().map_err(|reason| StartError::DataDir {
                dir: options.data_dir.display().to_string(),
                reason,
            })?;
            write_private(&path, &secret).map_err(|e| StartError::DataDir {
                dir: options.data_dir.display().to_string(),
                reason: format!("cannot write the bootstrap token to {}: {e}", path.display()),
            })?;
            secret
        }
    };
    store.insert_token(&TokenRecord {
        name: "admin".into(),
        role: Role::Admin,
        pop: None,
        hash: hash_token(&secret),
        created_ms: now_ms(),
    })?;
    Ok(Some(path))
}

fn write_private(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{secret}")
}

impl RunningControl {
    /// Locks the data dir, opens the store, makes the first admin token if needed, and serves
    /// the API and the PoP streams on `options.listen`.
    pub async fn start(options: ControlOptions) -> Result<Self, StartError> {
        let db = options.data_dir.join("control.db");
        let opts = options.clone();
        let (lock, store, token_file) = tokio::task::spawn_blocking(move || {
            let lock = lock_data_dir(&opts.data_dir)?;
            let store = SqliteStore::open(&db)?;
            let token_file = bootstrap(&store, &opts)?;
            Ok::<_, StartError>((lock, store, token_file))
        })
        .await
        .map_err(|e| StartError::DataDir {
            dir: options.data_dir.display().to_string(),
            reason: e.to_string(),
        })??;
        let shutdown = CancellationToken::new();
        let control = Control::new(Arc::new(store), shutdown.clone()).await?;
        let listener =
            tokio::net::TcpListener::bind(options.listen)
                .await
                .map_err(|e| StartError::Listen {
                    addr: options.listen,
                    reason: e.to_string(),
                })?;
        let addr = listener.local_addr().unwrap_or(options.listen);
        let stop = shutdown.clone();
        let server = match &options.tls {
            None => {
                let app = api::router(control.clone()).into_make_service_with_connect_info::<SocketAddr>();
                tokio::spawn(async move {
                    let result = axum::serve(listener, app)
                        .with_graceful_shutdown(async move { stop.cancelled().await })
                        .await;
                    if let Err(e) = result {
                        tracing::error!(error = %e, "control plane API server failed");
                    }
                })
            }
            Some((cert, key)) => {
                let config = tls_server_config(cert, key).map_err(StartError::Tls)?;
                let app = api::router(control.clone());
                tokio::spawn(serve_tls(listener, config, app, stop))
            }
        };
        tracing::info!(%addr, data_dir = %options.data_dir.display(), "control plane listening");
        Ok(Self {
            addr,
            control,
            bootstrap_token_file: token_file,
            shutdown,
            server,
            _lock: lock,
        })
    }

    /// Closes PoP streams and the API, waiting up to `timeout` for requests in flight.
    pub async fn stop(self, timeout: std::time::Duration) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(timeout, self.server).await;
    }
}

fn tls_server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("certificate {}: no CERTIFICATE block", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key do not make a TLS identity: {e}"))?;
    // WebSocket upgrades need HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The API over TLS: an accept loop, a handshake per connection (10 s at most), HTTP/1.1 with
/// upgrades for the PoP streams, graceful close of idle keep-alive connections on shutdown.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: axum::Router,
    stop: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, stop) = (acceptor.clone(), stop.clone());
        let app = app
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        connections.spawn(async move {
            let tls =
                match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .with_upgrades();
            tokio::pin!(conn);
            let mut closing = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = stop.cancelled(), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}
