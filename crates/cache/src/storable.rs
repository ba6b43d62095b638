//! May a shared cache store this response (RFC 9111 §3, §3.5)? The answer is a reason either
//! way, because `Cache-Status` reports why a response was not stored.

use http::header::{self, HeaderMap};
use http::{Method, StatusCode};

use crate::directives::{RequestDirectives, ResponseDirectives};
use crate::freshness::heuristically_cacheable;

/// Operator switches that widen what is stored.
#[derive(Debug, Clone, Default)]
pub struct StorePolicy {
    /// Store responses the origin marked private or no-store, and ones without freshness
    /// information (they then live for the site's TTL). Responses that set cookies are still
    /// never stored: replaying one user's cookie to another is never what an operator wants.
    pub cache_everything: bool,
    /// A lifetime is configured for responses that carry none.
    pub has_default_ttl: bool,
    pub max_object_bytes: u64,
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
    if !(known || res.has_explicit_lifetime() || response.contains_key(header::EXPIRES)) {
        return Err(NotStored::Status);
    }
    let must_understand = res.must_understand;
    if req.no_store && !policy.cache_everything {
        return Err(NotStored::RequestNoStore);
    }
    if res.no_store && !must_understand && !policy.cache_everything {
        return Err(NotStored::NoStore);
    }
    if res.private && !policy.cache_everything {
        return Err(NotStored::Private);
    }
    if request.contains_key(header::AUTHORIZATION)
        && !(res.public || res.must_revalidate || res.s_maxage.is_some() || policy.cache_everything)
    {
        return Err(NotStored::Authorization);
    }
    if response.contains_key(header::SET_COOKIE) && !res.private_fields.contains(&header::SET_COOKIE) {
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
        || response.contains_key(header::EXPIRES)
        || heuristically_cacheable(status)
        || res.public
        || policy.cache_everything
        || (policy.has_default_ttl && heuristically_cacheable(status));
    // A response with no-cache is stored to be revalidated, even without a lifetime.
    if !has_lifetime && !res.no_cache {
        return Err(NotStored::NoLifetime);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(method: Method, req: &[(&str, &str)], status: u16, res: &[(&str, &str)]) -> Result<(), NotStored> {
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
            &StorePolicy::default(),
        )
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
