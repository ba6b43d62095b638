//! Whether a stored response may answer a request (RFC 9111 §4.2, §4.2.4, §5.2.1; RFC 5861).

use crate::directives::RequestDirectives;
use crate::object::Object;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Serve it.
    Fresh,
    /// Stale, but the client said it accepts that (`max-stale`).
    StaleAccepted,
    /// Stale within stale-while-revalidate: serve it and refresh it in the background.
    StaleWhileRevalidate,
    /// Ask the origin first (conditional request); serve it if the origin says 304.
    Revalidate,
}

pub fn decide(obj: &Object, req: &RequestDirectives, now: f64) -> Reuse {
    let f = &obj.freshness;
    if req.no_cache || f.always_revalidate {
        return Reuse::Revalidate;
    }
    let age = f.age(now);
    // A soft purge makes the object stale now, keeping what stale-* allow.
    let lifetime = if obj.is_soft_purged() { 0.0 } else { f.lifetime };
    let staleness = age - lifetime;
    if staleness < 0.0 {
        if req.max_age.is_some_and(|max| age > max as f64) {
            return Reuse::Revalidate;
        }
        if req.min_fresh.is_some_and(|min| -staleness < min as f64) {
            return Reuse::Revalidate;
        }
        return Reuse::Fresh;
    }
    if f.forbids_stale {
        return Reuse::Revalidate;
    }
    if req.max_stale.is_some_and(|max| staleness <= max as f64)
        && req.max_age.is_none_or(|max| age <= max as f64)
    {
        return Reuse::StaleAccepted;
    }
    if f.stale_while_revalidate > 0
        && staleness <= f.stale_while_revalidate as f64
        && req.max_age.is_none()
        && req.min_fresh.is_none()
    {
        return Reuse::StaleWhileRevalidate;
    }
    Reuse::Revalidate
}

/// How stale an object may be to answer while the origin cannot be reached at all (RFC 9111
/// §4.2.4 lets a disconnected cache serve stale), when nothing else allows more.
pub const DISCONNECTED_MAX_SECS: u64 = 86_400;

/// After the origin failed, may the stale object answer instead? A 5xx allows what
/// stale-if-error (response or request) or the site's grace allow; an origin that could not
/// be reached (`disconnected`) allows up to a day more.
pub fn stale_on_error(
    obj: &Object,
    req: &RequestDirectives,
    grace_secs: u64,
    now: f64,
    disconnected: bool,
) -> bool {
    let f = &obj.freshness;
    if f.forbids_stale || f.always_revalidate {
        return false;
    }
    let lifetime = if obj.is_soft_purged() { 0.0 } else { f.lifetime };
    let staleness = f.age(now) - lifetime;
    let allowed = u64::from(f.stale_if_error)
        .max(req.stale_if_error.unwrap_or(0))
        .max(grace_secs)
        .max(if disconnected { DISCONNECTED_MAX_SECS } else { 0 });
    allowed > 0 && staleness <= allowed as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::freshness::Freshness;
    use crate::key::CacheKey;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    fn obj(lifetime: f64, swr: u32, sie: u32, forbids: bool) -> Object {
        let f = Freshness {
            response_time: 0.0,
            initial_age: 0.0,
            lifetime,
            heuristic: false,
            forbids_stale: forbids,
            always_revalidate: false,
            stale_while_revalidate: swr,
            stale_if_error: sie,
        };
        let key = CacheKey::for_url("http://a.test/").unwrap();
        Object::new(
            &key,
            "s".into(),
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::new(),
            f,
            Box::new([]),
            0,
        )
    }

    #[test]
    fn freshness_and_request_limits() {
        let o = obj(10.0, 0, 0, false);
        let none = RequestDirectives::default();
        assert_eq!(decide(&o, &none, 5.0), Reuse::Fresh);
        assert_eq!(decide(&o, &none, 10.0), Reuse::Revalidate);
        let max_age = RequestDirectives {
            max_age: Some(3),
            ..Default::default()
        };
        assert_eq!(decide(&o, &max_age, 5.0), Reuse::Revalidate);
        let min_fresh = RequestDirectives {
            min_fresh: Some(6),
            ..Default::default()
        };
        assert_eq!(decide(&o, &min_fresh, 5.0), Reuse::Revalidate);
        let max_stale = RequestDirectives {
            max_stale: Some(5),
            ..Default::default()
        };
        assert_eq!(decide(&o, &max_stale, 14.0), Reuse::StaleAccepted);
        assert_eq!(decide(&o, &max_stale, 16.0), Reuse::Revalidate);
        assert_eq!(
            decide(&obj(10.0, 0, 0, true), &max_stale, 14.0),
            Reuse::Revalidate
        );
    }

    #[test]
    fn stale_while_revalidate_and_if_error() {
        let o = obj(10.0, 5, 20, false);
        let none = RequestDirectives::default();
        assert_eq!(decide(&o, &none, 12.0), Reuse::StaleWhileRevalidate);
        assert_eq!(decide(&o, &none, 16.0), Reuse::Revalidate);
        assert!(stale_on_error(&o, &none, 0, 29.0, false));
        assert!(!stale_on_error(&o, &none, 0, 31.0, false));
        assert!(
            stale_on_error(&o, &none, 60, 31.0, false),
            "the site's grace extends it"
        );
        assert!(
            stale_on_error(&obj(10.0, 0, 0, false), &none, 0, 3600.0, true),
            "disconnected"
        );
        assert!(
            !stale_on_error(&obj(10.0, 5, 20, true), &none, 60, 11.0, true),
            "must-revalidate forbids it"
        );
    }

    #[test]
    fn soft_purge_makes_it_stale_but_keeps_stale_options() {
        let o = obj(100.0, 30, 0, false);
        o.mark_soft_purged();
        assert_eq!(
            decide(&o, &RequestDirectives::default(), 1.0),
            Reuse::StaleWhileRevalidate
        );
    }
}
