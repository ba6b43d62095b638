//! The connection-pooling HTTP client one origin pool uses: HTTP/1.1 or HTTP/2, plain or TLS
//! (with an optional client certificate for mTLS), keep-alive with an idle limit.

use std::sync::Arc;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use outpost_config::{PoolConfig, UpstreamProtocol, UpstreamTls};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::proxy::body::ProxyBody;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// The part of a pool's config that decides how its client connects; a reload that leaves it
/// unchanged keeps the client and its warm connections.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSettings {
    protocol: UpstreamProtocol,
    tls: Option<UpstreamTls>,
    connect_timeout: std::time::Duration,
    idle_timeout: std::time::Duration,
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

pub fn build(settings: &ClientSettings) -> Result<HttpClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));
    http.set_keepalive(Some(std::time::Duration::from_secs(60)));

    let tls = tls_config(settings.tls.as_ref())?;
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match settings.tls.as_ref().and_then(|t| t.server_name.clone()) {
        Some(name) => {
            let name =
                rustls_pki_types::ServerName::try_from(name).map_err(|e| format!("tls.server_name: {e}"))?;
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let connector = match settings.protocol {
        UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
        UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http),
    };

    let mut client = Client::builder(TokioExecutor::new());
    client
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(settings.idle_timeout)
        // The proxy sets Host itself: the client's Host would name the origin, not the site.
        .set_host(false)
        // Requests are mostly a head without a body: one send of one buffer costs less than
        // writev's iovec path (bodies are copied into the buffer, up to hyper's buffer limit).
        .http1_writev(false)
        .http2_only(settings.protocol == UpstreamProtocol::Http2);
    Ok(client.build(connector))
}

/// TLS for HTTP/2 origins reached through `h2.rs`; None when no origin needs it.
pub fn h2_tls(settings: &ClientSettings) -> Result<Option<Arc<super::h2::H2Tls>>, String> {
    let mut config = tls_config(settings.tls.as_ref())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let server_name = match settings.tls.as_ref().and_then(|t| t.server_name.clone()) {
        Some(name) => {
            Some(rustls_pki_types::ServerName::try_from(name).map_err(|e| format!("tls.server_name: {e}"))?)
        }
        None => None,
    };
    Ok(Some(Arc::new(super::h2::H2Tls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    })))
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
