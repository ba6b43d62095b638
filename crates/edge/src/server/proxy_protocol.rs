//! PROXY protocol (v1 text and v2 binary, parsed by the `ppp` crate): a load balancer in front
//! of the PoP prefixes each connection with the client's real address.
//!
//! The header is read (not peeked) in chunks, so bytes of the request that arrive in the same
//! segment are returned to the caller, which replays them (`idle::IdleIo`) before reading on.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A v2 header with TLVs can be long; anything past this is not a header we accept.
const MAX_HEADER: usize = 4096;

/// Reads the PROXY header from `io`. Returns the client's address (None for a LOCAL/UNKNOWN
/// header, e.g. the balancer's own health check) and the bytes that followed the header.
pub async fn read_header<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> Result<(Option<SocketAddr>, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(256);
    let read = async {
        loop {
            let mut chunk = [0u8; 512];
            let n = io.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed before a complete PROXY header".to_owned());
            }
            buf.extend_from_slice(&chunk[..n]);
            let parsed = HeaderResult::parse(&buf);
            if parsed.is_incomplete() {
                if buf.len() >= MAX_HEADER {
                    return Err("PROXY header too long".to_owned());
                }
                continue;
            }
            let (len, source) = match parsed {
                HeaderResult::V1(Ok(h)) => (h.header.len(), v1_source(&h.addresses)),
                // LOCAL: the balancer speaking for itself (health checks); its addresses are not a
                // client's, whatever the address block says.
                HeaderResult::V2(Ok(h)) if h.command == ppp::v2::Command::Local => (h.len(), None),
                HeaderResult::V2(Ok(h)) => (h.len(), v2_source(&h.addresses)),
                HeaderResult::V1(Err(e)) => return Err(format!("invalid PROXY v1 header: {e}")),
                HeaderResult::V2(Err(e)) => return Err(format!("invalid PROXY v2 header: {e}")),
            };
            return Ok((source, buf[len..].to_vec()));
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| "no PROXY header in time".to_owned())?
}

fn v1_source(addresses: &ppp::v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Unknown => None,
    }
}

fn v2_source(addresses: &ppp::v2::Addresses) -> Option<SocketAddr> {
    match addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn v1_header_then_request_bytes() {
        let mut input: &[u8] = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\nGET / HTTP/1.1\r\n";
        let (source, rest) = read_header(&mut input, Duration::from_secs(1)).await.unwrap();
        assert_eq!(source, Some("203.0.113.7:51000".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn v2_header_ipv6() {
        let mut input = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        input.extend_from_slice(&[0x21, 0x21, 0, 36]);
        input.extend_from_slice(&"2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        input.extend_from_slice(&"2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        input.extend_from_slice(&[0xc7, 0x38, 0x01, 0xbb]);
        input.extend_from_slice(b"rest");
        let (source, rest) = read_header(&mut input.as_slice(), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(source, Some("[2001:db8::7]:51000".parse().unwrap()));
        assert_eq!(rest, b"rest");
    }

    #[tokio::test]
    async fn garbage_and_plain_http_are_refused() {
        let mut input: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(read_header(&mut input, Duration::from_secs(1)).await.is_err());
    }
}
