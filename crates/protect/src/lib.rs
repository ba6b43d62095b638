//! `outpost-protect`: decisions that protect origins from abusive traffic.
//!
//! Owns rate limiting (keyed token buckets with bounded memory), the WAF (custom rules and the
//! managed rule set) and the parsing of the request bodies the WAF inspects. It sees a request only as the few facts a decision needs (`RequestFacts`) and answers
//! allow or deny; it must not know about sockets, the HTTP server, proxying or the config file
//! format (it takes the typed config model).

pub mod body;
pub mod path;
pub mod rate_limit;
pub mod waf;

/// Calls `visit(name, value)` for every cookie of every Cookie header until it returns true.
/// One parser for the rate limits and both WAF rule kinds, so they agree on what a cookie is.
pub(crate) fn for_each_cookie(headers: &http::HeaderMap, mut visit: impl FnMut(&str, &str) -> bool) {
    for header in headers.get_all(http::header::COOKIE) {
        let header = text(header.as_bytes());
        for (name, value) in header.split(';').filter_map(|pair| pair.trim().split_once('=')) {
            if visit(name, value) {
                return;
            }
        }
    }
}

/// A header value as text; invalid UTF-8 (rare) is replaced rather than skipped.
pub(crate) fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    // `from_utf8_lossy` walks the bytes in chunks; the plain check is several times faster
    // on the ASCII values nearly every request carries.
    match std::str::from_utf8(bytes) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}
