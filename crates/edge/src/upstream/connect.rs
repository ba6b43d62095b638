//! Opening a connection to an origin, for both HTTP versions: TCP within the pool's connect
//! timeout (no Nagle, keep-alive probes so a vanished origin is noticed on idle connections),
//! then TLS for `https://` origins with the pool's roots, optional client certificate and SNI.

use std::time::Duration;

use http::uri::{Authority, Scheme};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// How a pool reaches its `https://` origins; one per pool and HTTP version (the ALPN differs).
pub struct OriginTls {
    pub connector: tokio_rustls::TlsConnector,
    /// `tls.server_name`: the name to verify instead of the origin's host.
    pub server_name: Option<ServerName<'static>>,
}

/// How often an idle origin connection is probed at the TCP level.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

pub fn is_tls(scheme: &Scheme) -> bool {
    *scheme == Scheme::HTTPS
}

pub async fn tcp(scheme: &Scheme, origin: &Authority, timeout: Duration) -> Result<TcpStream, String> {
    let port = origin.port_u16().unwrap_or(if is_tls(scheme) { 443 } else { 80 });
    let host = host_of(origin);
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| format!("connect timed out after {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let _ = socket2::SockRef::from(&tcp)
        .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
    Ok(tcp)
}

pub async fn tls(
    tls: &OriginTls,
    origin: &Authority,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, String> {
    let name = match &tls.server_name {
        Some(name) => name.clone(),
        None => ServerName::try_from(host_of(origin).to_owned()).map_err(|e| e.to_string())?,
    };
    tokio::time::timeout(timeout, tls.connector.connect(name, tcp))
        .await
        .map_err(|_| format!("TLS handshake timed out after {timeout:?}"))?
        .map_err(|e| format!("TLS handshake failed: {e}"))
}

fn host_of(origin: &Authority) -> &str {
    origin.host().trim_start_matches('[').trim_end_matches(']')
}
