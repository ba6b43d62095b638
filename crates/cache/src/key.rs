//! Cache keys. The primary key is the URL (scheme, host, path, query, shaped by the site's
//! query policy); it is what purge by URL and by prefix match. Headers and cookies an operator
//! adds to the key are a secondary part, compared like a `Vary`, so a purge by URL still
//! removes every variant.

use http::header::{self, HeaderMap, HeaderName};

/// How the query string takes part in the key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueryMode {
    /// As the client sent it.
    #[default]
    Keep,
    /// Parameters sorted by name, so `?b=1&a=2` and `?a=2&b=1` share an object.
    Sort,
    /// Left out entirely.
    Ignore,
}

#[derive(Debug, Clone, Default)]
pub struct KeyPolicy {
    pub query: QueryMode,
    /// Parameters left out of the key (tracking parameters such as `utm_source`); a trailing
    /// `*` matches any suffix.
    pub ignore_params: Vec<String>,
    /// Request headers added to the key.
    pub headers: Vec<HeaderName>,
    /// Cookies added to the key, by name.
    pub cookies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// `scheme://host/path?query`, host lower-case without port.
    pub url: String,
    pub hash: u64,
    /// The operator's extra key parts, `None` when the policy adds none.
    pub extra: Option<Box<str>>,
}

impl CacheKey {
    pub fn new(
        scheme: &str,
        host: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        policy: &KeyPolicy,
    ) -> Self {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let mut url = String::with_capacity(scheme.len() + host.len() + path_and_query.len() + 4);
        url.push_str(scheme);
        url.push_str("://");
        url.push_str(host);
        url.push_str(if path.is_empty() { "/" } else { path });
        if let Some(q) = query {
            push_query(&mut url, q, policy);
        }
        let extra = extra_part(headers, policy);
        Self {
            hash: hash_url(&url),
            url,
            extra,
        }
    }

    /// A key for a URL given in a purge or a Location header: no extra parts.
    pub fn for_url(url: &str) -> Option<Self> {
        let uri: http::Uri = url.parse().ok()?;
        let scheme = uri.scheme_str()?;
        let host = uri.host()?.trim_end_matches('.').to_ascii_lowercase();
        let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
        Some(Self::new(
            &scheme.to_ascii_lowercase(),
            &host,
            pq,
            &HeaderMap::new(),
            &KeyPolicy::default(),
        ))
    }
}

pub fn hash_url(url: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(url.as_bytes())
}

fn push_query(url: &mut String, query: &str, policy: &KeyPolicy) {
    if policy.query == QueryMode::Ignore {
        return;
    }
    if policy.query == QueryMode::Keep && policy.ignore_params.is_empty() {
        url.push('?');
        url.push_str(query);
        return;
    }
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(n, _)| n);
            !policy.ignore_params.iter().any(|ig| match ig.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == ig,
            })
        })
        .collect();
    if policy.query == QueryMode::Sort {
        params.sort_by_key(|p| p.split_once('=').map_or(*p, |(n, _)| n));
    }
    if !params.is_empty() {
        url.push('?');
        url.push_str(&params.join("&"));
    }
}

fn extra_part(headers: &HeaderMap, policy: &KeyPolicy) -> Option<Box<str>> {
    if policy.headers.is_empty() && policy.cookies.is_empty() {
        return None;
    }
    let mut out = String::new();
    for name in &policy.headers {
        out.push_str(name.as_str());
        out.push('=');
        for (i, v) in headers.get_all(name).iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
        out.push('\n');
    }
    for cookie in &policy.cookies {
        out.push_str("cookie:");
        out.push_str(cookie);
        out.push('=');
        if let Some(v) = cookie_value(headers, cookie) {
            out.push_str(v);
        }
        out.push('\n');
    }
    Some(out.into_boxed_str())
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_policies() {
        let h = HeaderMap::new();
        let keep = CacheKey::new("http", "a.test", "/p?b=1&a=2", &h, &KeyPolicy::default());
        assert_eq!(keep.url, "http://a.test/p?b=1&a=2");
        let sort = KeyPolicy {
            query: QueryMode::Sort,
            ignore_params: vec!["utm_*".into()],
            ..Default::default()
        };
        let k = CacheKey::new("http", "a.test", "/p?utm_source=x&b=1&a=2", &h, &sort);
        assert_eq!(k.url, "http://a.test/p?a=2&b=1");
        let ignore = KeyPolicy {
            query: QueryMode::Ignore,
            ..Default::default()
        };
        assert_eq!(
            CacheKey::new("https", "a.test", "/p?x", &h, &ignore).url,
            "https://a.test/p"
        );
    }

    #[test]
    fn extra_parts_do_not_change_the_primary_key() {
        let policy = KeyPolicy {
            headers: vec![HeaderName::from_static("x-device")],
            cookies: vec!["lang".into()],
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        h.insert("x-device", "mobile".parse().unwrap());
        h.insert(header::COOKIE, "a=1; lang=fr".parse().unwrap());
        let a = CacheKey::new("http", "a.test", "/", &h, &policy);
        h.insert(header::COOKIE, "lang=de".parse().unwrap());
        let b = CacheKey::new("http", "a.test", "/", &h, &policy);
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.extra, b.extra);
        assert!(a.extra.as_deref().unwrap().contains("lang=fr"));
    }

    #[test]
    fn url_keys_normalise_scheme_and_host() {
        let k = CacheKey::for_url("HTTP://Example.COM/a?b").unwrap();
        assert_eq!(k.url, "http://example.com/a?b");
        assert!(CacheKey::for_url("/relative").is_none());
    }
}
