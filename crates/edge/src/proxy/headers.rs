//! Proxy header semantics (RFC 9110 §7.6): hop-by-hop removal, Via, and the forwarding headers
//! (X-Forwarded-*, RFC 7239 Forwarded).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use outpost_config::ForwardedHeaders;

pub use crate::hop_by_hop::remove_hop_by_hop;

/// Whether a request asks to switch protocols (HTTP/1.1 Upgrade, e.g. WebSocket).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The `Via` value this PoP adds for a message of `version` (RFC 9110 §7.6.3), e.g.
/// `1.1 outpost-par1`. Built once per config; adding it to a message is a reference-count bump.
pub fn via_value(version: http::Version, pseudonym: &str) -> HeaderValue {
    let proto = match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    };
    HeaderValue::from_str(&format!("{proto} {pseudonym}"))
        .unwrap_or_else(|_| HeaderValue::from_static("1.1 outpost"))
}

/// The client's address as the forwarding headers spell it, computed once per connection.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    pub ip: IpAddr,
    /// `203.0.113.7` or `2001:db8::1`, for X-Forwarded-For.
    text: HeaderValue,
    /// `203.0.113.7` or `"[2001:db8::1]"` (RFC 7239 §6), for Forwarded. Shared: the request
    /// path clones this per request.
    node: std::sync::Arc<str>,
}

impl ClientAddr {
    pub fn new(ip: IpAddr) -> Self {
        let text = HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value");
        let node = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        }
        .into();
        Self { ip, text, node }
    }
}

/// HTTP/2 clients may split `Cookie` into several fields (RFC 9113 §8.2.3); an HTTP/1.1 origin
/// must get them as one, joined with "; ".
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
        headers.insert(header::COOKIE, v);
    }
}

static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Sets the forwarding fields the site asks for: X-Forwarded-For (appended), X-Forwarded-Proto
/// and X-Forwarded-Host, and/or Forwarded (appended). A family the site turns off is removed,
/// client-sent values included: passed through unchecked, it would let a client name any
/// address to an origin that believes it.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    which: ForwardedHeaders,
    client: &ClientAddr,
    proto: &'static str,
    host: &HeaderValue,
) {
    if which.x_forwarded() {
        set_x_forwarded(headers, client, proto, host);
    } else {
        headers.remove(&XFF);
        headers.remove(&XFP);
        headers.remove(&XFH);
    }
    if which.forwarded() {
        append_forwarded(headers, client, proto, host);
    } else {
        headers.remove(header::FORWARDED);
    }
}

fn set_x_forwarded(headers: &mut HeaderMap, client: &ClientAddr, proto: &'static str, host: &HeaderValue) {
    // Earlier hops may have sent several X-Forwarded-For lines: keep them all, in order.
    let mut v = Vec::new();
    let has_prior = has_prior_xff(headers);
    for prior in has_prior.then(|| headers.get_all(&XFF)).iter().flatten() {
        let prior = prior.as_bytes();
        if prior.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        v.extend_from_slice(prior);
        v.extend_from_slice(b", ");
    }
    let xff = if v.is_empty() {
        Some(client.text.clone())
    } else {
        v.extend_from_slice(client.text.as_bytes());
        HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).ok()
    };
    if let Some(xff) = xff {
        headers.insert(&XFF, xff);
    }
    headers.insert(&XFP, HeaderValue::from_static(proto));
    headers.insert(&XFH, host.clone());
}

fn append_forwarded(headers: &mut HeaderMap, client: &ClientAddr, proto: &'static str, host: &HeaderValue) {
    let mut v = Vec::with_capacity(24 + client.node.len() + host.len());
    push_forwarded_element(&mut v, client, proto, host);
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(v)) {
        headers.append(header::FORWARDED, value);
    }
}

/// This hop's Forwarded element (RFC 7239): `for=…;proto=…;host=…`.
fn push_forwarded_element(v: &mut Vec<u8>, client: &ClientAddr, proto: &'static str, host: &HeaderValue) {
    let host = host.as_bytes();
    let host_ok = !host.is_empty()
        && host
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(b));
    v.extend_from_slice(b"for=");
    v.extend_from_slice(client.node.as_bytes());
    v.extend_from_slice(b";proto=");
    v.extend_from_slice(proto.as_bytes());
    if host_ok {
        // A host with a port or an IPv6 literal is not a token: quote it.
        let quote = host.contains(&b':') || host.contains(&b'[');
        v.extend_from_slice(b";host=");
        if quote {
            v.push(b'"');
        }
        v.extend_from_slice(host);
        if quote {
            v.push(b'"');
        }
    }
}

/// Whether `headers` holds an X-Forwarded-For from an earlier hop (which ours is appended to).
/// Most requests have none: a look at the few names is cheaper than a lookup (a hash of the
/// name).
pub fn has_prior_xff(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| name == XFF)
}

/// Whether the client's field `name` is one [`write_forwarded`] replaces or, for a family the
/// site turns off, drops: everything but an earlier hop's Forwarded, which ours follows. The
/// caller has made sure that there is no earlier X-Forwarded-For to keep
/// ([`has_prior_xff`]).
pub fn forwarding_replaces(name: &HeaderName, which: ForwardedHeaders) -> bool {
    match name.as_str().len() {
        9 => name == header::FORWARDED && !which.forwarded(),
        15..=17 => name == XFF || name == XFP || name == XFH,
        _ => false,
    }
}

/// [`set_forwarded`] written straight into a request head as `name: value\r\n` lines, for a
/// request without an earlier X-Forwarded-For, the client's forwarding fields being left out
/// of the head by [`forwarding_replaces`].
pub fn write_forwarded(
    head: &mut Vec<u8>,
    which: ForwardedHeaders,
    client: &ClientAddr,
    proto: &'static str,
    host: &HeaderValue,
) {
    if which.x_forwarded() {
        head.extend_from_slice(b"x-forwarded-for: ");
        head.extend_from_slice(client.text.as_bytes());
        head.extend_from_slice(b"\r\nx-forwarded-proto: ");
        head.extend_from_slice(proto.as_bytes());
        head.extend_from_slice(b"\r\nx-forwarded-host: ");
        head.extend_from_slice(host.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if which.forwarded() {
        head.extend_from_slice(b"forwarded: ");
        push_forwarded_element(head, client, proto, host);
        head.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarding_headers_append_to_prior_hops() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("forwarded", "for=203.0.113.7"),
        ]);
        let client = ClientAddr::new("2001:db8::1".parse().unwrap());
        set_forwarded(
            &mut h,
            ForwardedHeaders::Both,
            &client,
            "https",
            &HeaderValue::from_static("example.com"),
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 2001:db8::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.com");
        let fw: Vec<_> = h.get_all("forwarded").iter().collect();
        assert_eq!(fw.len(), 2);
        assert_eq!(fw[1], "for=\"[2001:db8::1]\";proto=https;host=example.com");
    }

    #[test]
    fn forwarded_quotes_hosts_with_ports() {
        let mut h = HeaderMap::new();
        let client = ClientAddr::new("192.0.2.1".parse().unwrap());
        set_forwarded(
            &mut h,
            ForwardedHeaders::Both,
            &client,
            "http",
            &HeaderValue::from_static("example.com:8080"),
        );
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.1;proto=http;host=\"example.com:8080\""
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
    }

    #[test]
    fn several_forwarded_for_lines_are_all_kept() {
        let mut h = map(&[
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "192.0.2.2, 192.0.2.3"),
        ]);
        set_forwarded(
            &mut h,
            ForwardedHeaders::Both,
            &ClientAddr::new("192.0.2.9".parse().unwrap()),
            "http",
            &HeaderValue::from_static("a"),
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 192.0.2.2, 192.0.2.3, 192.0.2.9");
    }

    #[test]
    fn a_family_turned_off_is_neither_added_nor_passed_through() {
        let client = ClientAddr::new("192.0.2.9".parse().unwrap());
        let sent_by_client = || {
            map(&[
                ("x-forwarded-for", "203.0.113.66"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "spoofed.example"),
                ("forwarded", "for=203.0.113.66"),
            ])
        };
        let host = HeaderValue::from_static("a.test");

        let mut h = sent_by_client();
        set_forwarded(&mut h, ForwardedHeaders::None, &client, "http", &host);
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
        ] {
            assert!(h.get(name).is_none(), "{name} must not reach the origin");
        }

        let mut h = sent_by_client();
        set_forwarded(&mut h, ForwardedHeaders::XForwarded, &client, "http", &host);
        assert_eq!(h["x-forwarded-for"], "203.0.113.66, 192.0.2.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.test");
        assert!(h.get("forwarded").is_none());

        let mut h = sent_by_client();
        set_forwarded(&mut h, ForwardedHeaders::Forwarded, &client, "http", &host);
        let fw: Vec<_> = h.get_all("forwarded").iter().collect();
        assert_eq!(fw, ["for=203.0.113.66", "for=192.0.2.9;proto=http;host=a.test"]);
        for name in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"] {
            assert!(h.get(name).is_none(), "{name} must not reach the origin");
        }
    }

    #[test]
    fn split_cookies_are_joined() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2");
        let mut single = map(&[("cookie", "a=1")]);
        join_cookies(&mut single);
        assert_eq!(single["cookie"], "a=1");
    }

    #[test]
    fn via_names_the_protocol_version() {
        assert_eq!(via_value(http::Version::HTTP_2, "outpost-par1"), "2 outpost-par1");
        assert_eq!(
            via_value(http::Version::HTTP_11, "outpost-par1"),
            "1.1 outpost-par1"
        );
    }
}
