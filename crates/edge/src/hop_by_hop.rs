//! Connection-specific fields (RFC 9110 §7.6.1): which they are, and taking them out of a
//! message a proxy forwards. Shared by the proxy's phases, which strip every message, and the
//! inline HTTP/1.1 origin client, which sorts them out while it builds a response's field map.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1, plus the
/// non-standard ones that real clients still send).
const HOP_BY_HOP_COUNT: usize = 7;

const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

// Positions in `HOP_BY_HOP`.
pub(crate) const CONNECTION: usize = 0;
pub(crate) const KEEP_ALIVE: usize = 1;
pub(crate) const PROXY_CONNECTION: usize = 2;
pub(crate) const TE: usize = 3;
pub(crate) const TRAILER: usize = 4;
pub(crate) const TRANSFER_ENCODING: usize = 5;
pub(crate) const UPGRADE: usize = 6;

/// What a field name is to a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// One of `HOP_BY_HOP`, by its place there.
    Listed(usize),
    /// A field named `close`: removed when Connection lists the `close` option (RFC 9110
    /// §7.6.1; §16.3.2.2 reserves the name for that reason).
    Close,
    EndToEnd,
}

/// Removes hop-by-hop headers, including every header the Connection header names.
/// `keep_upgrade` keeps `Connection: upgrade` and `Upgrade` for a protocol switch (WebSocket).
/// `TE: trailers` survives because HTTP/2 origins (gRPC) rely on it end to end.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the fields first, runs on every request and response: most messages carry
    // none of these, or only `Connection: keep-alive` or `close`, which name nothing beyond the
    // list. A lookup per listed name, or parsing and removing the names Connection lists, is a
    // hash and a probe each (measured: ~900 instructions per message, against ~150 for the scan).
    let mut present = [false; HOP_BY_HOP_COUNT];
    let mut te_named = false;
    let mut names_others = false;
    let mut lists_close = false;
    let mut close_field = false;
    for (name, value) in headers.iter() {
        match classify(name) {
            Field::EndToEnd => {}
            Field::Close => close_field = true,
            Field::Listed(i) => {
                present[i] = true;
                if i == CONNECTION {
                    for token in connection_tokens(value) {
                        match listed(token.as_bytes()) {
                            Some(TE) => te_named = true,
                            Some(_) => {}
                            None if token.eq_ignore_ascii_case("close") => lists_close = true,
                            None => names_others = true,
                        }
                    }
                }
            }
        }
    }
    if names_others || (lists_close && close_field) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(connection_tokens)
            .filter(|token| listed(token.as_bytes()).is_none())
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    // A TE that Connection names goes, trailers or not (RFC 9110 §7.6.1).
    let te_trailers = present[TE]
        && !te_named
        && headers
            .get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if !present[i] || (keep_upgrade && (i == CONNECTION || i == UPGRADE)) {
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

/// What `name` is to a proxy, telling most names apart by length alone (names are lowercase
/// in a `HeaderMap`).
pub(crate) fn classify(name: &HeaderName) -> Field {
    let name = name.as_str();
    let candidates: &[usize] = match name.len() {
        2 => &[TE],
        5 if name == "close" => return Field::Close,
        7 => &[TRAILER, UPGRADE],
        10 => &[CONNECTION, KEEP_ALIVE],
        16 => &[PROXY_CONNECTION],
        17 => &[TRANSFER_ENCODING],
        _ => return Field::EndToEnd,
    };
    candidates
        .iter()
        .copied()
        .find(|&i| HOP_BY_HOP[i].as_str() == name)
        .map_or(Field::EndToEnd, Field::Listed)
}

/// The place in `HOP_BY_HOP` of a name a Connection header lists (any case).
pub(crate) fn listed(token: &[u8]) -> Option<usize> {
    HOP_BY_HOP
        .iter()
        .position(|h| token.eq_ignore_ascii_case(h.as_str().as_bytes()))
}

/// The names one Connection field lists.
fn connection_tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .ok()
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::headers::{is_upgrade_request, tests::map};

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
    fn connection_options_remove_only_what_they_name() {
        let mut h = map(&[
            ("connection", "Keep-Alive"),
            ("connection", "close, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("close", "a field of that name goes with the option"),
            ("x-end-to-end", "kept"),
        ]);
        remove_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-end-to-end"], "{h:?}");

        let mut h = map(&[("connection", "keep-alive"), ("x-end-to-end", "kept")]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");

        let mut h = map(&[("connection", "close"), ("close", "1"), ("x-end-to-end", "kept")]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-end-to-end"], "{h:?}");
        let mut h = map(&[("close", "1"), ("x-end-to-end", "kept")]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(
            h.len(),
            2,
            "without the option a field named close is end to end: {h:?}"
        );
    }

    #[test]
    fn te_named_by_connection_goes_even_with_trailers() {
        let mut h = map(&[("connection", "TE"), ("te", "trailers")]);
        remove_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
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
}
