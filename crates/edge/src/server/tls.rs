//! TLS termination: certificates loaded from PEM files, chosen by SNI, hot-reloaded.
//!
//! One `CertStore` holds every certificate of the current config; each TLS listener has a
//! `SniResolver` that reads the store through an `ArcSwap`, so a certificate file that changes on
//! disk (or a reload that changes the set) takes effect for the next handshake while established
//! connections keep the certificate they negotiated. Only TLS 1.2 and 1.3 with rustls' default
//! (modern) cipher suites are offered.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use outpost_config::CertificateConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// One loaded certificate and the files it came from.
#[derive(Debug)]
pub struct LoadedCert {
    pub name: String,
    pub names: Vec<String>,
    pub key: Arc<CertifiedKey>,
    files: [(PathBuf, Option<SystemTime>); 2],
}

/// Every certificate of one config, indexed for SNI lookup.
#[derive(Debug, Default)]
pub struct CertStore {
    certs: Vec<Arc<LoadedCert>>,
    by_config_name: HashMap<String, usize>,
    exact: HashMap<String, usize>,
    /// Keyed by the suffix after `*.`, e.g. `example.com` for `*.example.com`.
    wildcard: HashMap<String, usize>,
}

impl CertStore {
    pub fn load(configs: &[CertificateConfig]) -> Result<Self, String> {
        let mut store = Self::default();
        for cfg in configs {
            let cert = load_cert(cfg)?;
            store.insert(Arc::new(cert));
        }
        Ok(store)
    }

    fn insert(&mut self, cert: Arc<LoadedCert>) {
        let idx = self.certs.len();
        for name in &cert.names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(suffix) => self.wildcard.entry(suffix.to_owned()).or_insert(idx),
                None => self.exact.entry(name).or_insert(idx),
            };
        }
        self.by_config_name.insert(cert.name.clone(), idx);
        self.certs.push(cert);
    }

    pub fn certs(&self) -> &[Arc<LoadedCert>] {
        &self.certs
    }

    pub fn by_name(&self, config_name: &str) -> Option<&Arc<LoadedCert>> {
        self.by_config_name.get(config_name).map(|&i| &self.certs[i])
    }

    /// The certificate for a server name: exact match first, then a one-label wildcard.
    pub fn lookup(&self, server_name: &str) -> Option<&Arc<LoadedCert>> {
        let name = server_name.trim_end_matches('.');
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(&i) = self.exact.get(name) {
            return Some(&self.certs[i]);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).map(|&i| &self.certs[i])
    }

    /// Whether any certificate file changed on disk since it was loaded.
    pub fn files_changed(&self) -> bool {
        self.certs
            .iter()
            .any(|c| c.files.iter().any(|(path, seen)| modified(path) != *seen))
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_cert(cfg: &CertificateConfig) -> Result<LoadedCert, String> {
    let what = |e: &dyn std::fmt::Display, path: &Path| {
        format!(
            "certificate \"{}\": cannot load {}: {e}",
            cfg.name,
            path.display()
        )
    };
    // Read the mtimes before the contents so a write racing the load is seen as a change later.
    let files = [
        (cfg.cert.clone(), modified(&cfg.cert)),
        (cfg.key.clone(), modified(&cfg.key)),
    ];
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| what(&e, &cfg.cert))?
        .collect::<Result<_, _>>()
        .map_err(|e| what(&e, &cfg.cert))?;
    if chain.is_empty() {
        return Err(what(&"no CERTIFICATE block in the file", &cfg.cert));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| what(&e, &cfg.key))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        format!(
            "certificate \"{}\": key does not fit the certificate: {e}",
            cfg.name
        )
    })?;
    let leaf = webpki::EndEntityCert::try_from(&certified.cert[0])
        .map_err(|e| format!("certificate \"{}\": unreadable leaf certificate: {e:?}", cfg.name))?;
    let names = if cfg.names.is_empty() {
        leaf.valid_dns_names().map(str::to_owned).collect()
    } else {
        cfg.names.clone()
    };
    if names.is_empty() {
        return Err(format!(
            "certificate \"{}\": it names no DNS host (no subjectAltName); list them in `names`",
            cfg.name
        ));
    }
    Ok(LoadedCert {
        name: cfg.name.clone(),
        names,
        key: Arc::new(certified),
        files,
    })
}

/// Chooses the certificate for each handshake of one listener.
#[derive(Debug)]
pub struct SniResolver {
    store: Arc<ArcSwap<CertStore>>,
    default_cert: Option<String>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let store = self.store.load();
        if let Some(found) = hello.server_name().and_then(|sni| store.lookup(sni)) {
            return Some(found.key.clone());
        }
        let default = match &self.default_cert {
            Some(name) => store.by_name(name),
            // With a single certificate there is no ambiguity about what to serve.
            None if store.certs().len() == 1 => store.certs().first(),
            None => None,
        };
        default.map(|c| c.key.clone())
    }
}

/// A rustls server config for one listener: TLS 1.2/1.3, ALPN h2 then http/1.1.
pub fn server_config(store: Arc<ArcSwap<CertStore>>, default_cert: Option<String>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3");
    let mut config = builder
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { store, default_cert }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A bounded label for why a handshake failed.
pub fn classify_handshake_error(err: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    if let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        return match tls {
            E::NoCertificatesPresented => "no_client_certificate",
            E::PeerIncompatible(_) => "incompatible",
            E::AlertReceived(_) => "alert_received",
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. } => "protocol_error",
            E::General(msg) if msg.contains("no server certificate") => "no_certificate",
            E::PeerMisbehaved(_) => "peer_misbehaved",
            _ => "other",
        };
    }
    match err.kind() {
        std::io::ErrorKind::UnexpectedEof => "eof",
        std::io::ErrorKind::ConnectionReset => "reset",
        std::io::ErrorKind::InvalidData => "protocol_error",
        _ => "io_error",
    }
}
