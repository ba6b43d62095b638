//! May a shared cache store this response (RFC 9111 §3, §3.5)? The answer is a reason either
//! way, because `Cache-Status` reports why a response was not stored.

use http::header::{self, HeaderMap};
use http::{Method, StatusCode};

use crate::directives::{RequestDirectives, ResponseDirectives};
use crate::freshness::heuristically_cacheable;

/// Operator switches that widen (or, for cookies, narrow) what is stored.
#[derive(Debug, Clone)]
pub struct StorePolicy {
    /// Store responses the origin marked private or no-store, and ones without freshness
    /// information (they then live for the site's TTL). It overrides the origin, not the
    /// client: it never stores a response that sets a cookie (only the origin's own explicit
    /// lifetime does that, see `store_set_cookie`), an answer to a request with
    /// `Authorization` that the origin did not mark shareable (the cache key has no user in
    /// it: one user's answer would go to everyone), or one the client asked not to be stored.
    pub cache_everything: bool,
    /// Store a response that sets a cookie when the origin itself gives it a shared lifetime
    /// (`s-maxage`, `max-age`, `Expires` or `public`): RFC 9111 §7.3 says Set-Cookie does not
    /// inhibit caching, and such a response is replayed, cookie included, to every client.
    /// Off, no response that sets a cookie is stored (Varnish's and nginx's default).
    pub store_set_cookie: bool,
    /// A lifetime is configured for responses that carry none.
    pub has_default_ttl: bool,
    pub max_object_bytes: u64,
}

impl Default for StorePolicy {
    fn default() -> Self {
        Self {
            cache_everything: false,
            store_set_cookie: true,
            has_default_ttl: false,
            max_object_bytes: 0,
        }
    }
}

/// May a stored response keep the Set-Cookie fields it carries? Only when the operator allows
/// it and the origin, not the site's TTL rules, says the response may be shared.
pub fn may_store_set_cookie(response: &HeaderMap, res: &ResponseDirectives, policy: &StorePolicy) -> bool {
    policy.store_set_cookie && (res.has_explicit_lifetime() || res.public || res.has_expires(response))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Method,
    Status,
    RequestNoStore,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    NoLifetime,
    VaryStar,
    TooLarge,
    Partial,
}

impl NotStored {
    /// The `detail` of Cache-Status for a response that was forwarded and not stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::Status => "status",
            Self::RequestNoStore => "request-no-store",
            Self::NoStore => "no-store",
            Self::Private => "private",
            Self::Authorization => "authorization",
            Self::SetCookie => "set-cookie",
            Self::NoLifetime => "no-lifetime",
            Self::VaryStar => "vary-star",
            Self::TooLarge => "too-large",
            Self::Partial => "partial",
        }
    }
}

/// Statuses whose meaning Outpost knows well enough to reuse (RFC 9111 §3: "understood").
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=205 | 300..=303 | 305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451 | 500..=508 | 510 | 511
    )
}

#[allow(clippy::too_many_arguments)]
pub fn check(
    method: &Method,
    request: &HeaderMap,
    req: &RequestDirectives,
    status: StatusCode,
    response: &HeaderMap,
    res: &ResponseDirectives,
    policy: &StorePolicy,
) -> Result<(), NotStored> {
    if method != Method::GET {
        return Err(NotStored::Method);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        return Err(NotStored::Partial);
    }
    // Unknown statuses may be stored when the origin gives them a lifetime, except under
    // must-understand, which asks for exactly that care (RFC 9111 §5.2.2.3).
    let known = understood(status);
    if !(200..600).contains(&status.as_u16()) || (res.must_understand && !known) {
        return Err(NotStored::Status);
    }
    if !(known || res.has_explicit_lifetime() || res.has_expires(response)) {
        return Err(NotStored::Status);
    }
    let must_understand = res.must_understand;
    if res.no_store && !must_understand && !policy.cache_everything {
        return Err(NotStored::NoStore);
    }
    if res.private && !policy.cache_everything {
        return Err(NotStored::Private);
    }
    if response.contains_key(header::SET_COOKIE)
        && !res.private_fields.contains(&header::SET_COOKIE)
        && !may_store_set_cookie(response, res, policy)
    {
        return Err(NotStored::SetCookie);
    }
    if response
        .get_all(header::VARY)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|n| n.trim() == "*")))
    {
        return Err(NotStored::VaryStar);
    }
    if policy.max_object_bytes > 0 {
        let declared = response
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > policy.max_object_bytes) {
            return Err(NotStored::TooLarge);
        }
    }
    let has_lifetime = res.has_explicit_lifetime()
        || res.has_expires(response)
        || heuristically_cacheable(status)
        || res.public
        || policy.cache_everything
        || (policy.has_default_ttl && heuristically_cacheable(status));
    // A response with no-cache is stored to be revalidated, even without a lifetime.
    if !has_lifetime && !res.no_cache {
        return Err(NotStored::NoLifetime);
    }
    // The request's own reasons come last: a caller that keeps what is stored when only this
    // request forbids storing (a 304 answering it) must learn when the response forbids it too.
    if req.no_store {
        return Err(NotStored::RequestNoStore);
    }
    if request.contains_key(header::AUTHORIZATION)
        && !(res.public || res.must_revalidate || res.s_maxage.is_some())
    {
        return Err(NotStored::Authorization);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(
        policy: &StorePolicy,
        method: Method,
        req: &[(&str, &str)],
        status: u16,
        res: &[(&str, &str)],
    ) -> Result<(), NotStored> {
        let to_map = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            m
        };
        let (rq, rs) = (to_map(req), to_map(res));
        check(
            &method,
            &rq,
            &RequestDirectives::parse(&rq),
            StatusCode::from_u16(status).unwrap(),
            &rs,
            &ResponseDirectives::parse(&rs),
            policy,
        )
    }

    fn run(method: Method, req: &[(&str, &str)], status: u16, res: &[(&str, &str)]) -> Result<(), NotStored> {
        run_with(&StorePolicy::default(), method, req, status, res)
    }

    #[test]
    fn the_response_forbidding_storage_is_reported_before_the_request_doing_so() {
        let no_store = [("cache-control", "no-store")];
        for res in [
            [("cache-control", "private, max-age=60")],
            [("cache-control", "no-store")],
        ] {
            let reason = run(Method::GET, &no_store, 200, &res).unwrap_err();
            assert!(
                matches!(reason, NotStored::Private | NotStored::NoStore),
                "{res:?}: {reason:?}"
            );
        }
        let authorized = [("authorization", "Bearer x")];
        assert_eq!(
            run(
                Method::GET,
                &authorized,
                200,
                &[("cache-control", "private, max-age=60")]
            ),
            Err(NotStored::Private)
        );
        // Only the request forbids it: the request's reason.
        assert_eq!(
            run(Method::GET, &no_store, 200, &[("cache-control", "max-age=60")]),
            Err(NotStored::RequestNoStore)
        );
        assert_eq!(
            run(Method::GET, &authorized, 200, &[("cache-control", "max-age=60")]),
            Err(NotStored::Authorization)
        );
    }

    #[test]
    fn a_cookie_is_stored_only_under_the_origins_own_shared_lifetime() {
        for explicit in ["max-age=60", "s-maxage=60", "public"] {
            let res = [("cache-control", explicit), ("set-cookie", "a=b")];
            assert_eq!(run(Method::GET, &[], 200, &res), Ok(()), "{explicit}");
        }
        let expires = [
            ("expires", "Wed, 01 Jan 2031 00:00:00 GMT"),
            ("set-cookie", "a=b"),
        ];
        assert_eq!(run(Method::GET, &[], 200, &expires), Ok(()));
        // Heuristic freshness (Last-Modified only) or the operator's rules are not the origin
        // saying the cookie may be shared.
        let heuristic = [
            ("last-modified", "Wed, 01 Jan 2020 00:00:00 GMT"),
            ("set-cookie", "a=b"),
        ];
        assert_eq!(run(Method::GET, &[], 200, &heuristic), Err(NotStored::SetCookie));
        let everything = StorePolicy {
            cache_everything: true,
            has_default_ttl: true,
            ..StorePolicy::default()
        };
        assert_eq!(
            run_with(&everything, Method::GET, &[], 200, &[("set-cookie", "a=b")]),
            Err(NotStored::SetCookie)
        );
        let never = StorePolicy {
            store_set_cookie: false,
            ..StorePolicy::default()
        };
        let explicit = [("cache-control", "max-age=60"), ("set-cookie", "a=b")];
        assert_eq!(
            run_with(&never, Method::GET, &[], 200, &explicit),
            Err(NotStored::SetCookie)
        );
        // private="set-cookie" stores the response without the cookie, whatever the switch.
        let private_field = [
            ("cache-control", "max-age=60, private=\"set-cookie\""),
            ("set-cookie", "a=b"),
        ];
        assert_eq!(run_with(&never, Method::GET, &[], 200, &private_field), Ok(()));
    }

    #[test]
    fn cache_everything_overrides_the_origin_not_the_client() {
        let everything = StorePolicy {
            cache_everything: true,
            has_default_ttl: true,
            ..StorePolicy::default()
        };
        let run =
            |req: &[(&str, &str)], res: &[(&str, &str)]| run_with(&everything, Method::GET, req, 200, res);
        for origin_says in ["private", "no-store", "no-cache, no-store, max-age=0"] {
            assert_eq!(
                run(&[], &[("cache-control", origin_says)]),
                Ok(()),
                "{origin_says}"
            );
        }
        assert_eq!(run(&[], &[]), Ok(()), "no freshness information");
        let private_answer = [("cache-control", "private, max-age=60")];
        assert_eq!(
            run(&[("authorization", "Bearer alice")], &private_answer),
            Err(NotStored::Authorization)
        );
        assert_eq!(
            run(&[("authorization", "Bearer alice")], &[]),
            Err(NotStored::Authorization)
        );
        // The origin saying the answer may be shared is the exception RFC 9111 §3.5 makes.
        for shared in ["public", "s-maxage=60", "max-age=60, must-revalidate"] {
            assert_eq!(
                run(&[("authorization", "Bearer alice")], &[("cache-control", shared)]),
                Ok(()),
                "{shared}"
            );
        }
        assert_eq!(
            run(&[("cache-control", "no-store")], &[]),
            Err(NotStored::RequestNoStore)
        );
    }

    #[test]
    fn rules() {
        assert_eq!(run(Method::GET, &[], 200, &[]), Ok(()));
        assert_eq!(
            run(Method::POST, &[], 200, &[("cache-control", "max-age=9")]),
            Err(NotStored::Method)
        );
        assert_eq!(run(Method::GET, &[], 302, &[]), Err(NotStored::NoLifetime));
        assert_eq!(
            run(Method::GET, &[], 302, &[("cache-control", "max-age=9")]),
            Ok(())
        );
        assert_eq!(
            run(Method::GET, &[], 200, &[("cache-control", "no-store")]),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            run(Method::GET, &[], 200, &[("cache-control", "private")]),
            Err(NotStored::Private)
        );
        assert_eq!(
            run(
                Method::GET,
                &[("authorization", "x")],
                200,
                &[("cache-control", "max-age=9")]
            ),
            Err(NotStored::Authorization)
        );
        assert_eq!(
            run(
                Method::GET,
                &[("authorization", "x")],
                200,
                &[("cache-control", "s-maxage=9")]
            ),
            Ok(())
        );
        assert_eq!(
            run(Method::GET, &[], 200, &[("set-cookie", "a=b")]),
            Err(NotStored::SetCookie)
        );
        assert_eq!(
            run(Method::GET, &[], 200, &[("vary", "*")]),
            Err(NotStored::VaryStar)
        );
        assert_eq!(
            run(Method::GET, &[("cache-control", "no-store")], 200, &[]),
            Err(NotStored::RequestNoStore)
        );
        assert_eq!(run(Method::GET, &[], 206, &[]), Err(NotStored::Partial));
    }
}
