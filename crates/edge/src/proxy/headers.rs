//! Proxy header semantics (RFC 9110 §7.6): hop-by-hop removal, Via, and the forwarding headers
//! (X-Forwarded-*, RFC 7239 Forwarded).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1, plus the
/// non-standard ones that real clients still send).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header the Connection header names.
/// `keep_upgrade` keeps `Connection: upgrade` and `Upgrade` for a protocol switch (WebSocket).
/// `TE: trailers` survives because HTTP/2 origins (gRPC) rely on it end to end.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .filter(|name| !(keep_upgrade && name == header::UPGRADE))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
    for name in &HOP_BY_HOP {
        if keep_upgrade && (name == header::CONNECTION || name == header::UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

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

/// Appends this hop to `Via` (RFC 9110 §7.6.3).
pub fn append_via(headers: &mut HeaderMap, version: http::Version, via: &HeaderValue) {
    let proto = match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    };
    let mut value = Vec::with_capacity(4 + via.len());
    value.extend_from_slice(proto.as_bytes());
    value.push(b' ');
    value.extend_from_slice(via.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&value) {
        headers.append(header::VIA, v);
    }
}

/// Facts about the client side of a request that the origin is told about.
pub struct ForwardedFor<'a> {
    pub client_ip: IpAddr,
    pub proto: &'static str,
    pub host: &'a str,
}

/// Sets X-Forwarded-For (appended), X-Forwarded-Proto, X-Forwarded-Host and Forwarded (appended).
pub fn set_forwarded(headers: &mut HeaderMap, fwd: &ForwardedFor<'_>) {
    static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    let ip = fwd.client_ip.to_string();
    let xff = match headers.get(&XFF).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(&XFF, v);
    }
    headers.insert(&XFP, HeaderValue::from_static(fwd.proto));
    if let Ok(v) = HeaderValue::from_str(fwd.host) {
        headers.insert(&XFH, v);
    }
    // RFC 7239 §6: IPv6 addresses are quoted and bracketed; host is a quoted-string when needed.
    let node = match fwd.client_ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let host_ok = fwd
        .host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    let forwarded = if host_ok && !fwd.host.is_empty() {
        format!(
            "for={node};proto={};host={}",
            fwd.proto,
            quote_if_needed(fwd.host)
        )
    } else {
        format!("for={node};proto={}", fwd.proto)
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.append(header::FORWARDED, v);
    }
}

fn quote_if_needed(value: &str) -> String {
    if value.contains(':') || value.contains('[') {
        format!("\"{value}\"")
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
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
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("x-end-to-end", "kept"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-end-to-end"], "kept");
    }

    #[test]
    fn te_trailers_survives_and_upgrade_kept_when_switching() {
        let mut h = map(&[("te", "trailers, deflate")]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");

        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade_request(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarding_headers_append_to_prior_hops() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("forwarded", "for=203.0.113.7"),
        ]);
        let fwd = ForwardedFor {
            client_ip: "2001:db8::1".parse().unwrap(),
            proto: "https",
            host: "example.com",
        };
        set_forwarded(&mut h, &fwd);
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 2001:db8::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.com");
        let fw: Vec<_> = h.get_all("forwarded").iter().collect();
        assert_eq!(fw.len(), 2);
        assert_eq!(fw[1], "for=\"[2001:db8::1]\";proto=https;host=example.com");
    }

    #[test]
    fn via_names_the_protocol_version() {
        let mut h = HeaderMap::new();
        append_via(
            &mut h,
            http::Version::HTTP_2,
            &HeaderValue::from_static("outpost-par1"),
        );
        assert_eq!(h["via"], "2 outpost-par1");
    }
}
