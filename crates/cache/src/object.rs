//! A stored response and the request facts it was selected by (Vary, RFC 9111 §4.1).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::StatusCode;

use crate::fields;
use crate::freshness::Freshness;
use crate::key::CacheKey;

/// One stored response. Immutable once stored except for the soft-purge mark; a revalidation
/// replaces the object rather than editing it, so readers never see half an update.
///
/// Kept within an allocator size class on purpose (see "Cache memory" in
/// docs/architecture.md): what few objects have (Vary, extra key parts, tags) sits behind one
/// optional box.
#[derive(Debug)]
pub struct Object {
    url: Box<str>,
    pub site: Arc<str>,
    pub status: StatusCode,
    /// The response's header fields in one exact-size buffer (see `fields`): a `HeaderMap`
    /// costs about a kilobyte per object at rest. Copying them out also frees the connection
    /// read buffer that hyper's parsed values point into. A plain box, not `Bytes`: a shared
    /// `Bytes` costs 16 more bytes here and a 24-byte share count once cloned, and a decoded
    /// map copies the buffer once instead (`headers`).
    head: Box<[u8]>,
    /// Never cloned for a response (see `body_bytes`).
    body: Bytes,
    pub freshness: Freshness,
    selectors: Option<Box<Selectors>>,
    /// Purge sequence number when the fetch that produced this object started: purges after it
    /// apply to the object even when they arrived while it was being fetched.
    pub stored_seq: u64,
    soft_purged: AtomicBool,
}

/// What selects an object among its URL's variants, and its purge tags.
#[derive(Debug)]
struct Selectors {
    /// The request's values of the fields named in Vary, normalised.
    vary: VaryValues,
    /// The operator's extra key parts (see `KeyPolicy`).
    extra: Option<Box<str>>,
    /// Surrogate keys from Surrogate-Key and Cache-Tag.
    tags: Box<[Box<str>]>,
}

impl Object {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key: &CacheKey,
        site: Arc<str>,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        freshness: Freshness,
        vary: VaryValues,
        stored_seq: u64,
    ) -> Self {
        let tags = surrogate_keys(&headers);
        let selectors = (!vary.is_empty() || key.extra.is_some() || !tags.is_empty()).then(|| {
            Box::new(Selectors {
                vary,
                extra: key.extra.clone(),
                tags,
            })
        });
        Self {
            url: key.url.as_str().into(),
            site,
            status,
            head: fields::encode(&headers),
            body,
            freshness,
            selectors,
            stored_seq,
            soft_purged: AtomicBool::new(false),
        }
    }

    /// The URL of the cache key (`scheme://host/path?query`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The request's values of the fields named in Vary, normalised.
    pub fn vary(&self) -> &[(HeaderName, Option<Box<str>>)] {
        self.selectors.as_ref().map_or(&[], |s| &s.vary)
    }

    /// The operator's extra key parts (see `KeyPolicy`).
    pub fn extra(&self) -> Option<&str> {
        self.selectors.as_ref().and_then(|s| s.extra.as_deref())
    }

    /// Surrogate keys from Surrogate-Key and Cache-Tag.
    pub fn tags(&self) -> &[Box<str>] {
        self.selectors.as_ref().map_or(&[], |s| &s.tags)
    }

    /// The stored header fields.
    pub fn headers(&self) -> HeaderMap {
        fields::decode(&self.head)
    }

    /// The body's bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as a buffer for a response, which keeps the object alive until it is sent.
    /// Cloning the stored buffer instead would turn it into a shared one, and the share count
    /// that `Bytes` allocates then (24 bytes) would stay with the object for as long as it is
    /// stored: one more allocation per object at rest, against one short-lived one per response.
    pub fn body_bytes(self: &Arc<Self>) -> Bytes {
        Bytes::from_owner(StoredBody(Arc::clone(self)))
    }

    /// The same body buffer, for a copy of this object with new header fields (a 304's refresh).
    pub fn body_for_copy(&self) -> Bytes {
        self.body.clone()
    }

    /// The stored header fields, encoded (see `fields`).
    pub fn header_block(&self) -> &[u8] {
        &self.head
    }

    /// Whether this object answers a request with these headers and extra key parts.
    pub fn matches(&self, request: &HeaderMap, extra: Option<&str>) -> bool {
        selects(self.vary(), self.extra(), request, extra)
    }

    /// Same selecting facts as `other`: a newer response for the same variant replaces it.
    pub fn same_variant(&self, other: &Object) -> bool {
        self.extra() == other.extra() && self.vary() == other.vary()
    }

    pub fn mark_soft_purged(&self) {
        self.soft_purged.store(true, Ordering::Relaxed);
    }

    pub fn is_soft_purged(&self) -> bool {
        self.soft_purged.load(Ordering::Relaxed)
    }

    /// Bytes this object holds, for the memory budget: body, header text and a fixed
    /// allowance for the structures around them (measured in docs/architecture.md, "Cache memory").
    pub fn weight(&self) -> u32 {
        let total = self.body.len() + self.head.len() + self.url.len() + OVERHEAD;
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

struct StoredBody(Arc<Object>);

impl AsRef<[u8]> for StoredBody {
    fn as_ref(&self) -> &[u8] {
        &self.0.body
    }
}

/// Whether a response stored with these Vary values and extra key parts answers a request with
/// these headers and extra key parts (for stored objects and fills alike).
pub(crate) fn selects(
    vary: &[(HeaderName, Option<Box<str>>)],
    stored_extra: Option<&str>,
    request: &HeaderMap,
    extra: Option<&str>,
) -> bool {
    stored_extra == extra
        && vary
            .iter()
            .all(|(name, value)| normalized(request, name).as_deref() == value.as_deref())
}

/// The request's values of the fields a response varies on, by field name.
pub type VaryValues = Box<[(HeaderName, Option<Box<str>>)]>;

/// Per-object bytes outside the body and headers: the object struct, the memory tier's entry.
pub const OVERHEAD: usize = 384;

/// The request's values for the fields a response varies on; `None` when `Vary: *` (such a
/// response never matches a later request and is not stored).
pub fn vary_values(response: &HeaderMap, request: &HeaderMap) -> Option<VaryValues> {
    let mut out = Vec::new();
    for value in response.get_all(header::VARY) {
        let Ok(value) = value.to_str() else { return None };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                return None;
            };
            if !out.iter().any(|(n, _)| *n == name) {
                let v = normalized(request, &name);
                out.push((name, v));
            }
        }
    }
    Some(out.into_boxed_slice())
}

/// Field lines combined with ", " and whitespace around commas removed, so `a,b` and `a, b`
/// select the same variant (RFC 9111 §4.1 allows this normalisation).
pub(crate) fn normalized(headers: &HeaderMap, name: &HeaderName) -> Option<Box<str>> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let mut out = String::new();
    for v in values {
        for part in String::from_utf8_lossy(v.as_bytes()).split(',') {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(part.trim());
        }
    }
    Some(out.into_boxed_str())
}

fn surrogate_keys(headers: &HeaderMap) -> Box<[Box<str>]> {
    let mut tags: Vec<Box<str>> = Vec::new();
    for name in ["surrogate-key", "cache-tag"] {
        for v in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
            // Surrogate-Key separates with spaces, Cache-Tag with commas.
            for t in v.split([' ', ',']).map(str::trim).filter(|t| !t.is_empty()) {
                if !tags.iter().any(|x| &**x == t) {
                    tags.push(t.into());
                }
            }
        }
    }
    tags.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::tests_support;

    use crate::object::tests_support::headers as h;

    #[test]
    fn vary_selects_by_normalised_request_values() {
        let resp = h(&[
            ("vary", "Accept-Encoding, accept-language"),
            ("vary", "accept-encoding"),
        ]);
        let req = h(&[("accept-encoding", "gzip,br")]);
        let vary = vary_values(&resp, &req).unwrap();
        assert_eq!(vary.len(), 2, "a field named twice counts once");
        let key = CacheKey::for_url("http://a.test/").unwrap();
        let obj = Object::new(
            &key,
            "s".into(),
            StatusCode::OK,
            resp,
            Bytes::new(),
            tests_support::freshness(),
            vary,
            0,
        );
        assert!(obj.matches(&h(&[("accept-encoding", "gzip, br")]), None));
        assert!(!obj.matches(&h(&[("accept-encoding", "gzip")]), None));
        assert!(!obj.matches(
            &h(&[("accept-encoding", "gzip,br"), ("accept-language", "fr")]),
            None
        ));
    }

    #[test]
    fn a_response_body_keeps_its_object_until_sent_and_no_longer() {
        let (_, obj) = tests_support::stored(
            "http://a.test/x",
            "s",
            HeaderMap::new(),
            Bytes::from_static(b"hello"),
            Box::new([]),
            0,
        );
        let obj = Arc::new(obj);
        let range = obj.body_bytes().slice(1..3);
        let whole = obj.body_bytes();
        let stored = Arc::downgrade(&obj);
        drop(obj); // evicted or purged while the responses are on their way
        assert_eq!((&range[..], &whole[..]), (&b"el"[..], &b"hello"[..]));
        drop(whole);
        assert!(stored.upgrade().is_some(), "the range still holds it");
        drop(range);
        assert!(stored.upgrade().is_none(), "freed with the last response");
    }

    #[test]
    fn an_object_fits_the_160_byte_allocator_size_class() {
        // Counted with its Arc's two counts (see "Cache memory" in docs/architecture.md): a
        // field more moves every stored object to the 192-byte class.
        assert!(std::mem::size_of::<Object>() + 16 <= 160);
    }

    #[test]
    fn vary_star_never_stores() {
        assert!(vary_values(&h(&[("vary", "*")]), &HeaderMap::new()).is_none());
    }

    #[test]
    fn tags_from_both_headers() {
        let t = surrogate_keys(&h(&[("surrogate-key", "a b  c"), ("cache-tag", "c,d")]));
        assert_eq!(
            &*t,
            &["a".into(), "b".into(), "c".into(), "d".into()] as &[Box<str>]
        );
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::{Object, VaryValues};
    use crate::freshness::{Freshness, LifetimePolicy};
    use crate::key::CacheKey;
    use bytes::Bytes;
    use http::header::{HeaderMap, HeaderName};
    use http::StatusCode;

    /// A 200 response for `url`, fresh for an hour.
    pub fn stored(
        url: &str,
        site: &str,
        headers: HeaderMap,
        body: Bytes,
        vary: VaryValues,
        stored_seq: u64,
    ) -> (CacheKey, Object) {
        let key = CacheKey::for_url(url).unwrap();
        let policy = LifetimePolicy {
            ttl_override: Some(std::time::Duration::from_secs(3600)),
            default_ttl: None,
        };
        let freshness = Freshness::compute(0.0, 0.0, StatusCode::OK, &headers, &Default::default(), &policy);
        let obj = Object::new(
            &key,
            site.into(),
            StatusCode::OK,
            headers,
            body,
            freshness,
            vary,
            stored_seq,
        );
        (key, obj)
    }

    /// A header map from `(name, value)` pairs, repeated names appended.
    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        m
    }

    pub fn freshness() -> Freshness {
        Freshness {
            response_time: 0.0,
            initial_age: 0.0,
            lifetime: 0.0,
            heuristic: false,
            forbids_stale: false,
            always_revalidate: false,
            stale_while_revalidate: 0,
            stale_if_error: 0,
        }
    }
}
