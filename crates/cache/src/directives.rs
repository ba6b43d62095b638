//! Cache-Control (RFC 9111 §5.2) parsed once into the few facts a shared cache acts on, or,
//! where the origin addressed CDNs on their own, the targeted fields of RFC 9213
//! (`CDN-Cache-Control`) in its place.
//!
//! Parsing is lenient the way the RFC asks: unknown directives are ignored, a directive that
//! repeats keeps its first value, and an invalid delta-seconds makes the directive count as
//! present with the most conservative meaning (a max-age that cannot be read is max-age=0).
//! Targeted fields are Structured Field dictionaries and are parsed as such (by `sfv`): one
//! that does not parse is ignored as a whole, as RFC 9213 §2.1 requires.

use http::header::{self, HeaderMap, HeaderName};

/// The response directives a shared cache honours.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResponseDirectives {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    /// `no-cache` without field names: every reuse needs a successful revalidation.
    pub no_cache: bool,
    /// `no-cache="a, b"`: those fields must not be sent from cache without revalidation.
    pub no_cache_fields: Vec<HeaderName>,
    /// `private` without field names: a shared cache must not store the response.
    pub private: bool,
    /// `private="a"`: a shared cache may store the response without those fields.
    pub private_fields: Vec<HeaderName>,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    pub immutable: bool,
    /// Read from a targeted field (RFC 9213): Cache-Control and Expires do not apply.
    pub targeted: bool,
}

/// The request directives a cache honours when choosing a stored response.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestDirectives {
    pub max_age: Option<u64>,
    /// `max-stale` without a value accepts any staleness (`Some(u64::MAX)`).
    pub max_stale: Option<u64>,
    pub min_fresh: Option<u64>,
    pub no_cache: bool,
    pub no_store: bool,
    pub only_if_cached: bool,
    pub stale_if_error: Option<u64>,
}

impl RequestDirectives {
    /// `Pragma: no-cache` counts as `Cache-Control: no-cache` only when the request carries no
    /// Cache-Control at all (RFC 9111 §5.4).
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        let mut any = false;
        for (name, value) in directives(headers) {
            any = true;
            match name.as_str() {
                "max-age" => set_once(&mut d.max_age, seconds(value)),
                "max-stale" => set_once(&mut d.max_stale, value.map_or(u64::MAX, |v| seconds(Some(v)))),
                "min-fresh" => set_once(&mut d.min_fresh, seconds(value)),
                "no-cache" => d.no_cache = true,
                "no-store" => d.no_store = true,
                "only-if-cached" => d.only_if_cached = true,
                "stale-if-error" => set_once(&mut d.stale_if_error, seconds(value)),
                _ => {}
            }
        }
        if !any {
            d.no_cache = headers
                .get_all(header::PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case("no-cache"));
        }
        d
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl ResponseDirectives {
    /// Cache-Control, overridden by Surrogate-Control where that field has directives for
    /// Outpost: it is addressed to CDN caches, so its `max-age` and `no-store` decide storage
    /// and lifetime here and Cache-Control's `no-store` and `no-cache` are left to the caches
    /// downstream. `private` stands: it says the response is one user's, which no lifetime
    /// given to surrogates makes shareable.
    ///
    /// A targeted field (RFC 9213) on Outpost's target list, present with a valid, non-empty
    /// value, replaces all of these: Cache-Control, Expires and Surrogate-Control are then
    /// ignored for this response.
    pub fn parse(headers: &HeaderMap) -> Self {
        if let Some(d) = targeted_directives(headers) {
            return d;
        }
        let mut d = Self::parse_cache_control(headers);
        if let Some(surrogate) = surrogate_directives(headers) {
            d.no_store = surrogate.no_store;
            d.no_cache = false;
            d.must_understand = false;
            if let Some(max_age) = surrogate.max_age {
                d.s_maxage = Some(max_age);
            } else if surrogate.no_store {
                d.s_maxage = None;
            }
        }
        d
    }

    fn parse_cache_control(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for (name, value) in directives(headers) {
            match name.as_str() {
                "max-age" => set_once(&mut d.max_age, seconds(value)),
                "s-maxage" => set_once(&mut d.s_maxage, seconds(value)),
                "no-store" => d.no_store = true,
                "no-cache" => match value.map(field_names) {
                    Some(fields) if !fields.is_empty() => d.no_cache_fields.extend(fields),
                    _ => d.no_cache = true,
                },
                "private" => match value.map(field_names) {
                    Some(fields) if !fields.is_empty() => d.private_fields.extend(fields),
                    _ => d.private = true,
                },
                "public" => d.public = true,
                "must-revalidate" => d.must_revalidate = true,
                "proxy-revalidate" => d.proxy_revalidate = true,
                "must-understand" => d.must_understand = true,
                "stale-while-revalidate" => set_once(&mut d.stale_while_revalidate, seconds(value)),
                "stale-if-error" => set_once(&mut d.stale_if_error, seconds(value)),
                "immutable" => d.immutable = true,
                _ => {}
            }
        }
        d
    }

    /// Whether stale reuse is forbidden (must-revalidate; for a shared cache also
    /// proxy-revalidate and s-maxage, which carries proxy-revalidate's meaning).
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }

    /// Whether the response carries any explicit freshness a shared cache uses.
    pub fn has_explicit_lifetime(&self) -> bool {
        self.s_maxage.is_some() || self.max_age.is_some()
    }

    /// Whether the response's Expires field counts: not when a targeted field governs it.
    pub fn has_expires(&self, headers: &HeaderMap) -> bool {
        !self.targeted && headers.contains_key(header::EXPIRES)
    }
}

/// RFC 9213's targeted field for Outpost alone: used before `CDN-Cache-Control`, and never
/// forwarded (like Cloudflare's `Cloudflare-CDN-Cache-Control`).
pub const OUTPOST_CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("outpost-cdn-cache-control");

/// RFC 9213's targeted field for every CDN cache: used, and forwarded so that CDN caches
/// downstream can use it too (§3).
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// Outpost's target list, most specific first (RFC 9213 §2.2).
const TARGET_LIST: [HeaderName; 2] = [OUTPOST_CDN_CACHE_CONTROL, CDN_CACHE_CONTROL];

/// Fields addressed to this cache alone, removed from what clients receive.
pub fn is_for_this_cache_only(name: &HeaderName) -> bool {
    *name == SURROGATE_CONTROL || *name == OUTPOST_CDN_CACHE_CONTROL
}

/// Removes the fields addressed to this cache alone.
pub fn strip_for_this_cache_only(headers: &mut HeaderMap) {
    headers.remove(SURROGATE_CONTROL);
    headers.remove(OUTPOST_CDN_CACHE_CONTROL);
}

/// The first field of the target list present with a valid, non-empty Dictionary, read as
/// cache directives; `None` when there is none and the usual fields govern.
fn targeted_directives(headers: &HeaderMap) -> Option<ResponseDirectives> {
    TARGET_LIST.iter().find_map(|name| {
        let mut lines = headers.get_all(name).iter().peekable();
        lines.peek()?;
        // Field lines are one field joined by commas (RFC 9651 §4.2).
        let mut joined = String::new();
        for line in lines {
            let line = line.to_str().ok()?.trim();
            if line.is_empty() {
                continue;
            }
            if !joined.is_empty() {
                joined.push_str(", ");
            }
            joined.push_str(line);
        }
        let dict: sfv::Dictionary = sfv::Parser::new(&joined).parse().ok()?;
        (!dict.is_empty()).then(|| from_dictionary(&dict))
    })
}

/// Cache directives from a Dictionary (RFC 9213 §2.1): a directive without a value is a
/// Boolean, delta-seconds an Integer, field names a String. A directive set to false (`?0`)
/// is absent; a lifetime that is not a non-negative Integer counts as 0, like an unreadable
/// one in Cache-Control, and any other value of the wrong type (an inner list) makes the
/// directive count in its strictest form (`private=("a")` is `private`).
fn from_dictionary(dict: &sfv::Dictionary) -> ResponseDirectives {
    let mut d = ResponseDirectives {
        targeted: true,
        ..ResponseDirectives::default()
    };
    for (key, entry) in dict {
        let value = match entry {
            sfv::ListEntry::Item(item) => Some(&item.bare_item),
            sfv::ListEntry::InnerList(_) => None,
        };
        if value.and_then(sfv::BareItem::as_boolean) == Some(false) {
            continue;
        }
        let secs = || {
            value
                .and_then(sfv::BareItem::as_integer)
                .and_then(|i| u64::try_from(i).ok())
                .unwrap_or(0)
        };
        let names = || {
            value
                .and_then(sfv::BareItem::as_string)
                .map(|s| field_names(s.as_str()))
                .unwrap_or_default()
        };
        match key.as_str() {
            "max-age" => d.max_age = Some(secs()),
            "s-maxage" => d.s_maxage = Some(secs()),
            "no-store" => d.no_store = true,
            "no-cache" => match names() {
                fields if !fields.is_empty() => d.no_cache_fields = fields,
                _ => d.no_cache = true,
            },
            "private" => match names() {
                fields if !fields.is_empty() => d.private_fields = fields,
                _ => d.private = true,
            },
            "public" => d.public = true,
            "must-revalidate" => d.must_revalidate = true,
            "proxy-revalidate" => d.proxy_revalidate = true,
            "must-understand" => d.must_understand = true,
            "stale-while-revalidate" => d.stale_while_revalidate = Some(secs()),
            "stale-if-error" => d.stale_if_error = Some(secs()),
            "immutable" => d.immutable = true,
            _ => {}
        }
    }
    d
}

/// The device token Outpost announces in `Surrogate-Capability` and answers to in targeted
/// `Surrogate-Control` directives (`max-age=60;outpost`).
pub const SURROGATE_TOKEN: &str = "outpost";

/// Addressed to this cache (the surrogate), never forwarded to clients.
pub const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

/// The `Surrogate-Capability` request header value Outpost sends to origins.
pub const SURROGATE_CAPABILITY: &str = "outpost=\"Surrogate/1.0\"";

/// `Surrogate-Control` (the Edge Architecture specification): directives addressed to every
/// surrogate, overridden by those targeted at Outpost's token; directives targeted at other
/// surrogates, and those Outpost does not act on (`content`), are ignored. A PoP acts as a
/// remote surrogate: `no-store-remote` keeps a response out of it like `no-store`.
#[derive(Debug, Default)]
struct Surrogate {
    max_age: Option<u64>,
    no_store: bool,
}

impl Surrogate {
    fn is_empty(&self) -> bool {
        self.max_age.is_none() && !self.no_store
    }
}

/// The Surrogate-Control directives that apply to Outpost; `None` when none do (no field,
/// or one only for other surrogates), and Cache-Control then governs alone.
fn surrogate_directives(headers: &HeaderMap) -> Option<Surrogate> {
    let mut values = headers.get_all(SURROGATE_CONTROL).iter().peekable();
    values.peek()?;
    let (mut general, mut targeted) = (Surrogate::default(), Surrogate::default());
    for value in values.filter_map(|v| v.to_str().ok()) {
        for (name, arg) in split_directives(value) {
            let (name, name_target) = match name.split_once(';') {
                Some((n, t)) => (n.to_owned(), Some(t.trim().to_owned())),
                None => (name, None),
            };
            let (arg, arg_target) =
                match arg.map(|a| a.split_once(';').map_or((a, None), |(v, t)| (v, Some(t.trim())))) {
                    Some((v, t)) => (Some(v), t.map(str::to_owned)),
                    None => (None, None),
                };
            let d = match name_target.or(arg_target) {
                None => &mut general,
                Some(t) if t == SURROGATE_TOKEN => &mut targeted,
                Some(_) => continue,
            };
            match name.as_str() {
                // `max-age=60+600`: the second number lets a surrogate serve the response stale
                // that long. Here it stands for s-maxage, which forbids stale reuse, so only the
                // freshness counts.
                "max-age" => set_once(
                    &mut d.max_age,
                    seconds(arg.map(|a| a.split('+').next().unwrap_or(a))),
                ),
                // `no-store-remote` is no-store for surrogates far from the origin; a PoP is
                // one (it sits close to users, which is why it exists).
                "no-store" | "no-store-remote" => d.no_store = true,
                _ => {}
            }
        }
    }
    [targeted, general].into_iter().find(|d| !d.is_empty())
}

fn set_once(slot: &mut Option<u64>, value: u64) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

/// delta-seconds; anything unreadable is 0 (the conservative reading), overflow saturates.
fn seconds(value: Option<&str>) -> u64 {
    let Some(v) = value else { return 0 };
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    v.parse().unwrap_or(u64::MAX)
}

fn field_names(value: &str) -> Vec<HeaderName> {
    value
        .split(',')
        .filter_map(|f| HeaderName::from_bytes(f.trim().as_bytes()).ok())
        .collect()
}

/// Every directive of every Cache-Control field: lower-cased name and unquoted value.
fn directives(headers: &HeaderMap) -> impl Iterator<Item = (String, Option<&str>)> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(split_directives)
}

/// Splits `a, b=1, c="x, y"` on the commas outside quoted strings.
fn split_directives(value: &str) -> Vec<(String, Option<&str>)> {
    let mut out = Vec::new();
    let bytes = value.as_bytes();
    let mut start = 0;
    let mut quoted = false;
    for i in 0..=bytes.len() {
        let end = i == bytes.len();
        if !end && bytes[i] == b'"' {
            quoted = !quoted;
            continue;
        }
        if end || (bytes[i] == b',' && !quoted) {
            let part = value[start..i].trim();
            start = i + 1;
            if part.is_empty() {
                continue;
            }
            let (name, val) = match part.split_once('=') {
                Some((n, v)) => {
                    let v = v.trim();
                    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
                    (n.trim(), Some(v))
                }
                None => (part, None),
            };
            out.push((name.to_ascii_lowercase(), val));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cc: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in cc {
            h.append(header::CACHE_CONTROL, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn response_directives_with_quotes_and_repeats() {
        let d = ResponseDirectives::parse(&headers(&[
            "public, max-age=60, no-cache=\"set-cookie, x-a\"",
            "max-age=5, S-MaxAge=30, stale-while-revalidate=10",
        ]));
        assert_eq!(d.max_age, Some(60), "the first max-age wins");
        assert_eq!(d.s_maxage, Some(30));
        assert!(d.public && !d.no_cache);
        assert_eq!(d.no_cache_fields, vec!["set-cookie", "x-a"]);
        assert_eq!(d.stale_while_revalidate, Some(10));
        assert!(d.forbids_stale(), "s-maxage implies proxy-revalidate");
    }

    #[test]
    fn unreadable_max_age_is_zero_and_bare_private_is_private() {
        let d = ResponseDirectives::parse(&headers(&["max-age=abc, private"]));
        assert_eq!(d.max_age, Some(0));
        assert!(d.private);
        let d = ResponseDirectives::parse(&headers(&["private=\"x-user\""]));
        assert!(!d.private);
        assert_eq!(d.private_fields, vec!["x-user"]);
    }

    #[test]
    fn a_valid_targeted_field_replaces_cache_control_expires_and_surrogate_control() {
        let mut h = headers(&["no-store, private, max-age=5"]);
        h.insert(header::EXPIRES, "Thu, 01 Jan 2099 00:00:00 GMT".parse().unwrap());
        h.insert("surrogate-control", "no-store".parse().unwrap());
        h.insert(
            CDN_CACHE_CONTROL,
            "max-age=600, stale-while-revalidate=30, no-cache=\"set-cookie\", public=?0"
                .parse()
                .unwrap(),
        );
        let d = ResponseDirectives::parse(&h);
        assert!(d.targeted);
        assert!(!d.no_store && !d.private && !d.public, "{d:?}");
        assert_eq!(d.max_age, Some(600));
        assert_eq!(d.stale_while_revalidate, Some(30));
        assert_eq!(d.no_cache_fields, vec!["set-cookie"]);
        assert!(!d.no_cache);
        assert!(
            !d.has_expires(&h),
            "Expires does not count beside a targeted field"
        );

        // Outpost's own field comes first; lines of one field are joined.
        h.append(OUTPOST_CDN_CACHE_CONTROL, "no-cache".parse().unwrap());
        h.append(
            OUTPOST_CDN_CACHE_CONTROL,
            "must-revalidate, max-age=-1".parse().unwrap(),
        );
        let d = ResponseDirectives::parse(&h);
        assert!(d.no_cache && d.must_revalidate);
        assert_eq!(d.max_age, Some(0), "a negative lifetime counts as 0");

        // Values of the wrong type count in the strictest form; empty lines are skipped.
        let mut h = HeaderMap::new();
        h.append(
            CDN_CACHE_CONTROL,
            "private=(\"x-a\"), max-age=(60)".parse().unwrap(),
        );
        h.append(CDN_CACHE_CONTROL, "".parse().unwrap());
        h.append(CDN_CACHE_CONTROL, "no-cache=(\"set-cookie\")".parse().unwrap());
        let d = ResponseDirectives::parse(&h);
        assert!(d.targeted && d.private && d.no_cache, "{d:?}");
        assert!(d.private_fields.is_empty() && d.no_cache_fields.is_empty());
        assert_eq!(d.max_age, Some(0));
    }

    #[test]
    fn an_invalid_or_empty_targeted_field_is_ignored() {
        for value in ["max-age=60, x=\"", "", "max-age=60;", "MAX-AGE=60"] {
            let mut h = headers(&["max-age=5, private"]);
            h.insert(CDN_CACHE_CONTROL, value.parse().unwrap());
            let d = ResponseDirectives::parse(&h);
            assert!(!d.targeted && d.private, "{value:?}: {d:?}");
            assert_eq!(d.max_age, Some(5), "{value:?}");
        }
        // A valid field that is not first on the list still counts when the first is invalid.
        let mut h = headers(&["private"]);
        h.insert(OUTPOST_CDN_CACHE_CONTROL, "max-age=(1".parse().unwrap());
        h.insert(CDN_CACHE_CONTROL, "max-age=7".parse().unwrap());
        let d = ResponseDirectives::parse(&h);
        assert!(d.targeted && !d.private);
        assert_eq!(d.max_age, Some(7));
    }

    #[test]
    fn only_outpost_s_own_fields_are_kept_from_clients() {
        let mut h = headers(&["max-age=5"]);
        for name in [SURROGATE_CONTROL, OUTPOST_CDN_CACHE_CONTROL, CDN_CACHE_CONTROL] {
            h.insert(name, "max-age=60".parse().unwrap());
        }
        strip_for_this_cache_only(&mut h);
        assert!(h.contains_key(CDN_CACHE_CONTROL) && h.contains_key(header::CACHE_CONTROL));
        assert!(!h.contains_key(SURROGATE_CONTROL) && !h.contains_key(OUTPOST_CDN_CACHE_CONTROL));
    }

    #[test]
    fn surrogate_control_overrides_cache_control_for_this_cache() {
        let mut h = headers(&["no-store, max-age=5"]);
        h.insert("surrogate-control", "max-age=3600".parse().unwrap());
        let d = ResponseDirectives::parse(&h);
        assert!(!d.no_store);
        assert_eq!(d.s_maxage, Some(3600));
        let mut h = headers(&["max-age=3600"]);
        h.insert("surrogate-control", "no-store".parse().unwrap());
        assert!(ResponseDirectives::parse(&h).no_store);
        h.insert(
            "surrogate-control",
            "no-store, max-age=60;outpost, max-age=1;other".parse().unwrap(),
        );
        let d = ResponseDirectives::parse(&h);
        assert!(
            !d.no_store,
            "directives targeted at Outpost win over general ones"
        );
        assert_eq!(d.s_maxage, Some(60));
    }

    #[test]
    fn no_store_remote_keeps_a_response_out_of_a_pop() {
        let mut h = headers(&["max-age=3600"]);
        h.insert("surrogate-control", "no-store-remote".parse().unwrap());
        assert!(ResponseDirectives::parse(&h).no_store);
        h.insert("surrogate-control", "no-store-remote;other".parse().unwrap());
        assert!(
            !ResponseDirectives::parse(&h).no_store,
            "addressed to another surrogate"
        );
    }

    #[test]
    fn surrogate_control_for_other_surrogates_leaves_cache_control_in_charge() {
        for surrogate in [
            "max-age=3600;othercdn",
            "content=\"ESI/1.0\"",
            "no-store;othercdn",
        ] {
            let mut h = headers(&["private, max-age=600"]);
            h.insert("surrogate-control", surrogate.parse().unwrap());
            let d = ResponseDirectives::parse(&h);
            assert!(d.private, "{surrogate}");
            assert_eq!((d.max_age, d.s_maxage), (Some(600), None), "{surrogate}");
            let mut h = headers(&["no-store, no-cache"]);
            h.insert("surrogate-control", surrogate.parse().unwrap());
            let d = ResponseDirectives::parse(&h);
            assert!(d.no_store && d.no_cache, "{surrogate}");
        }
        // Only directives Outpost acts on count toward the targeted set overriding the rest.
        let mut h = headers(&["no-store"]);
        h.insert(
            "surrogate-control",
            "max-age=60, content=\"ESI/1.0\";outpost".parse().unwrap(),
        );
        assert_eq!(ResponseDirectives::parse(&h).s_maxage, Some(60));
    }

    #[test]
    fn surrogate_control_never_makes_a_private_response_shared() {
        let mut h = headers(&["private, max-age=600"]);
        h.insert("surrogate-control", "max-age=3600;outpost".parse().unwrap());
        let d = ResponseDirectives::parse(&h);
        assert!(d.private);
        assert_eq!(d.s_maxage, Some(3600));
    }

    #[test]
    fn surrogate_max_age_with_a_stale_allowance_is_fresh_for_its_first_part() {
        for surrogate in ["max-age=60+600", "max-age=60+600;outpost", "max-age=\"60+600\""] {
            let mut h = HeaderMap::new();
            h.insert("surrogate-control", surrogate.parse().unwrap());
            assert_eq!(ResponseDirectives::parse(&h).s_maxage, Some(60), "{surrogate}");
        }
    }

    #[test]
    fn request_directives_and_pragma() {
        let d = RequestDirectives::parse(&headers(&["max-stale, min-fresh=5"]));
        assert_eq!(d.max_stale, Some(u64::MAX));
        assert_eq!(d.min_fresh, Some(5));
        let mut h = HeaderMap::new();
        h.insert(header::PRAGMA, "no-cache".parse().unwrap());
        assert!(RequestDirectives::parse(&h).no_cache);
        h.insert(header::CACHE_CONTROL, "max-age=10".parse().unwrap());
        assert!(
            !RequestDirectives::parse(&h).no_cache,
            "Cache-Control overrides Pragma"
        );
    }
}
