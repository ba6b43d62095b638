//! How a pool talks to its origins: the HTTP version, TLS (modern versions only, the pool's CA
//! bundle or the web roots, an optional client certificate for mTLS), timeouts.

use std::sync::Arc;

use outpost_config::{PoolConfig, UpstreamProtocol, UpstreamTls};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::connect::OriginTls;

/// The part of a pool's config that decides how it connects; a reload that leaves it
/// unchanged keeps the warm connections.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSettings {
    pub protocol: UpstreamProtocol,
    tls: Option<UpstreamTls>,
    pub connect_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
}

impl ClientSettings {
    pub fn of(pool: &PoolConfig) -> Self {
        Self {
            protocol: pool.protocol,
            tls: pool.tls.clone(),
            connect_timeout: pool.connect_timeout,
            idle_timeout: pool.idle_timeout,
        }
    }
}

/// TLS for a pool's `https://` origins, offering the pool's HTTP version in ALPN. Built for
/// every pool, so a bad CA bundle or client certificate fails the config load, not a request.
pub fn origin_tls(settings: &ClientSettings) -> Result<Arc<OriginTls>, String> {
    let mut config = tls_config(settings.tls.as_ref())?;
    config.alpn_protocols = match settings.protocol {
        UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
    };
    let server_name = match settings.tls.as_ref().and_then(|t| t.server_name.clone()) {
        Some(name) => {
            Some(rustls_pki_types::ServerName::try_from(name).map_err(|e| format!("tls.server_name: {e}"))?)
        }
        None => None,
    };
    Ok(Arc::new(OriginTls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    }))
}

fn tls_config(cfg: Option<&UpstreamTls>) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match cfg.and_then(|t| t.ca.as_ref()) {
        Some(ca) => {
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("origin CA bundle {}: {e}", ca.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "origin CA bundle {} holds no usable certificate",
                    ca.display()
                ));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match cfg.map(|t| (&t.client_cert, &t.client_key)) {
        Some((Some(cert), Some(key))) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("origin client certificate {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("origin client key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("origin client certificate: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}
