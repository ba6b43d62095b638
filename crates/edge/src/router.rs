//! Host routing: which site answers a request, from its Host (or :authority).
//! Exact names win over `*.suffix` wildcards, which win over a `*` catch-all.

use std::collections::HashMap;

#[derive(Debug, Default, Clone)]
pub struct Router {
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
    catch_all: Option<usize>,
}

impl Router {
    pub fn add(&mut self, host: &str, site: usize) {
        let host = host.to_ascii_lowercase();
        if host == "*" {
            self.catch_all.get_or_insert(site);
        } else if let Some(suffix) = host.strip_prefix("*.") {
            self.wildcard.entry(suffix.to_owned()).or_insert(site);
        } else {
            self.exact.entry(host).or_insert(site);
        }
    }

    /// `host` is already lower-case and without port (see `normalize_host`).
    pub fn route(&self, host: &str) -> Option<usize> {
        if let Some(&site) = self.exact.get(host) {
            return Some(site);
        }
        if !self.wildcard.is_empty() {
            if let Some((_, parent)) = host.split_once('.') {
                if let Some(&site) = self.wildcard.get(parent) {
                    return Some(site);
                }
            }
        }
        self.catch_all
    }
}

/// Lower-cases a Host value and strips its port and any trailing dot; borrows when it can.
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop the port after them.
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                raw
            }
        })
    };
    let trimmed = without_port.trim_end_matches('.');
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(trimmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_beats_wildcard_beats_catch_all() {
        let mut r = Router::default();
        r.add("*", 0);
        r.add("*.example.com", 1);
        r.add("api.example.com", 2);
        assert_eq!(r.route("api.example.com"), Some(2));
        assert_eq!(r.route("www.example.com"), Some(1));
        assert_eq!(
            r.route("a.b.example.com"),
            Some(0),
            "wildcards match one label only"
        );
        assert_eq!(r.route("example.com"), Some(0));
        assert_eq!(r.route("other.org"), Some(0));
    }

    #[test]
    fn unknown_host_without_catch_all() {
        let mut r = Router::default();
        r.add("Example.COM", 3);
        assert_eq!(r.route("example.com"), Some(3));
        assert_eq!(r.route("nope.test"), None);
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("Example.com:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:443"), "[::1]");
        assert_eq!(normalize_host("127.0.0.1"), "127.0.0.1");
    }
}
