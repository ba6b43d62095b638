//! Age and freshness lifetime (RFC 9111 §4.2), computed once when a response is stored or
//! refreshed, so a lookup only subtracts two numbers.
//!
//! Times are seconds since the Unix epoch as f64: the RFC's arithmetic is in seconds, and the
//! sub-second part keeps "max-age=1, asked 1.5 s later" stale rather than rounding it fresh.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap};
use http::StatusCode;

use crate::directives::ResponseDirectives;

/// Longest lifetime the Last-Modified heuristic may give (a common ceiling; RFC 9111 §4.2.2
/// leaves it to the cache).
const HEURISTIC_MAX: f64 = 86_400.0;

pub fn now_secs() -> f64 {
    to_secs(SystemTime::now())
}

pub fn to_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Operator policy that changes how long a response stays fresh.
#[derive(Debug, Clone, Default)]
pub struct LifetimePolicy {
    /// Lifetime for responses that carry no explicit freshness, instead of the heuristic.
    pub default_ttl: Option<Duration>,
    /// Lifetime for every stored response, whatever the origin said.
    pub ttl_override: Option<Duration>,
}

/// Everything about a stored response's age and lifetime.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Freshness {
    /// When the response arrived (the request's time only counts toward `initial_age`, so it
    /// is not kept: every byte of an object counts in the memory tier).
    pub response_time: f64,
    /// RFC 9111 §4.2.3 corrected_initial_age.
    pub initial_age: f64,
    /// Seconds the response is fresh for, counted in age.
    pub lifetime: f64,
    /// The lifetime came from the Last-Modified heuristic (reported in Cache-Status).
    pub heuristic: bool,
    /// must-revalidate, proxy-revalidate or s-maxage: never served stale.
    pub forbids_stale: bool,
    /// no-cache without field names: every reuse revalidates first.
    pub always_revalidate: bool,
    /// Seconds (u32: 136 years is enough, and the object stays within an allocator size class).
    pub stale_while_revalidate: u32,
    pub stale_if_error: u32,
}

impl Freshness {
    pub fn compute(
        request_time: f64,
        response_time: f64,
        status: StatusCode,
        headers: &HeaderMap,
        d: &ResponseDirectives,
        policy: &LifetimePolicy,
    ) -> Self {
        let date = header_time(headers, header::DATE).unwrap_or(response_time);
        let age_value = age_value(headers);
        let apparent_age = (response_time - date).max(0.0);
        let response_delay = (response_time - request_time).max(0.0);
        let initial_age = apparent_age.max(age_value + response_delay);

        let (lifetime, heuristic) = if let Some(ttl) = policy.ttl_override {
            (ttl.as_secs_f64(), false)
        } else if let Some(s) = d.s_maxage {
            (s as f64, false)
        } else if let Some(m) = d.max_age {
            (m as f64, false)
        } else if d.has_expires(headers) {
            // An Expires that cannot be parsed ("0", "-1") means already expired.
            let expires = header_time(headers, header::EXPIRES);
            (expires.map_or(0.0, |e| (e - date).max(0.0)), false)
        } else if let Some(ttl) = policy.default_ttl {
            (ttl.as_secs_f64(), false)
        } else if heuristically_cacheable(status) || d.public {
            match header_time(headers, header::LAST_MODIFIED) {
                Some(lm) if lm < date => (((date - lm) / 10.0).min(HEURISTIC_MAX), true),
                _ => (0.0, true),
            }
        } else {
            (0.0, false)
        };
        Self {
            response_time,
            initial_age,
            lifetime,
            heuristic,
            forbids_stale: d.forbids_stale(),
            always_revalidate: d.no_cache,
            stale_while_revalidate: clamp_secs(d.stale_while_revalidate.unwrap_or(0)),
            stale_if_error: clamp_secs(d.stale_if_error.unwrap_or(0)),
        }
    }

    /// RFC 9111 §4.2.3 current_age.
    pub fn age(&self, now: f64) -> f64 {
        self.initial_age + (now - self.response_time).max(0.0)
    }

    /// Seconds past the lifetime (negative while fresh).
    pub fn staleness(&self, now: f64) -> f64 {
        self.age(now) - self.lifetime
    }

    pub fn is_fresh(&self, now: f64) -> bool {
        self.staleness(now) < 0.0
    }

    /// Remaining freshness in seconds, at least 0 (for `Cache-Status: ttl=`).
    pub fn ttl(&self, now: f64) -> i64 {
        (-self.staleness(now)).floor() as i64
    }
}

/// The Age field as delta-seconds. One value of digits only; anything else (negative, a
/// fraction, a list, two field lines) is invalid, and RFC 9111 §5.1 asks a cache to treat the
/// response as stale then, so it counts as infinitely old.
fn age_value(headers: &HeaderMap) -> f64 {
    let mut values = headers.get_all(header::AGE).iter();
    let Some(first) = values.next() else { return 0.0 };
    if values.next().is_some() {
        return f64::INFINITY;
    }
    let text = first.to_str().unwrap_or_default().trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return f64::INFINITY;
    }
    text.parse::<u64>().map_or(f64::INFINITY, |v| v as f64)
}

/// RFC 9110 §15.1: status codes cacheable by default (206 is left out: Outpost stores only
/// complete responses).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Adds a Date of `received` (seconds since the epoch) to a response that came without one:
/// RFC 9110 §6.6.1 asks a recipient with a clock to date such a response when it caches or
/// forwards it, so a stored copy says when it was made rather than taking the time of each
/// hit. Call it after computing the response's `Freshness`: the missing Date counts there as
/// `response_time` to the sub-second, which the whole second written here would round down.
pub fn stamp_date(headers: &mut HeaderMap, received: f64) {
    // One that cannot be read counts as missing for freshness too; it is replaced (RFC 9110
    // §6.6.1 lets a recipient replace an invalid Date).
    if header_time(headers, header::DATE).is_some() {
        return;
    }
    let Ok(since_epoch) = Duration::try_from_secs_f64(received) else {
        return;
    };
    let text = httpdate::fmt_http_date(UNIX_EPOCH + since_epoch);
    if let Ok(value) = header::HeaderValue::from_str(&text) {
        headers.insert(header::DATE, value);
    }
}

pub fn header_time(headers: &HeaderMap, name: header::HeaderName) -> Option<f64> {
    let v = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(v.trim()).ok().map(to_secs)
}

fn clamp_secs(secs: u64) -> u32 {
    u32::try_from(secs).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::object::tests_support::headers as h;

    fn fresh(now: f64, headers: &HeaderMap) -> Freshness {
        let d = ResponseDirectives::parse(headers);
        Freshness::compute(now, now, StatusCode::OK, headers, &d, &LifetimePolicy::default())
    }

    fn date(t: f64) -> String {
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs_f64(t))
    }

    #[test]
    fn s_maxage_beats_max_age_beats_expires() {
        let now = 1_700_000_000.0;
        let f = fresh(
            now,
            &h(&[
                ("cache-control", "max-age=10, s-maxage=20"),
                ("expires", &date(now + 99.0)),
            ]),
        );
        assert_eq!(f.lifetime, 20.0);
        let f = fresh(
            now,
            &h(&[("cache-control", "max-age=10"), ("expires", &date(now + 99.0))]),
        );
        assert_eq!(f.lifetime, 10.0);
        let f = fresh(now, &h(&[("date", &date(now)), ("expires", &date(now + 99.0))]));
        assert_eq!(f.lifetime, 99.0);
        let f = fresh(now, &h(&[("expires", "0")]));
        assert_eq!(f.lifetime, 0.0, "an invalid Expires means already expired");
    }

    #[test]
    fn age_header_and_old_date_count() {
        let now = 1_700_000_000.0;
        let f = fresh(now, &h(&[("cache-control", "max-age=100"), ("age", "30")]));
        assert_eq!(f.age(now), 30.0);
        assert!(f.is_fresh(now + 69.0) && !f.is_fresh(now + 70.5));
        let f = fresh(
            now,
            &h(&[("cache-control", "max-age=100"), ("date", &date(now - 40.0))]),
        );
        assert_eq!(f.age(now), 40.0);
    }

    #[test]
    fn a_response_without_a_readable_date_is_dated_when_it_arrived_and_one_with_a_date_keeps_it() {
        let now = 1_700_000_000.5;
        let mut headers = h(&[("cache-control", "max-age=100")]);
        stamp_date(&mut headers, now);
        assert_eq!(headers["date"], date(1_700_000_000.0).as_str());
        let mut dated = h(&[("date", &date(now - 40.0))]);
        stamp_date(&mut dated, now);
        assert_eq!(dated["date"], date(now - 40.0).as_str());
        let mut garbled = h(&[("date", "yesterday")]);
        stamp_date(&mut garbled, now);
        assert_eq!(garbled["date"], date(1_700_000_000.0).as_str());
    }

    #[test]
    fn heuristic_is_a_tenth_of_last_modified_age_and_only_for_cacheable_statuses() {
        let now = 1_700_000_000.0;
        let headers = h(&[("date", &date(now)), ("last-modified", &date(now - 1000.0))]);
        let f = fresh(now, &headers);
        assert_eq!(f.lifetime, 100.0);
        assert!(f.heuristic);
        let d = ResponseDirectives::parse(&headers);
        let f = Freshness::compute(
            now,
            now,
            StatusCode::FOUND,
            &headers,
            &d,
            &LifetimePolicy::default(),
        );
        assert_eq!(f.lifetime, 0.0, "302 is not heuristically cacheable");
    }

    #[test]
    fn operator_override_wins_and_default_fills_silence() {
        let now = 1_700_000_000.0;
        let headers = h(&[("cache-control", "max-age=5")]);
        let d = ResponseDirectives::parse(&headers);
        let policy = LifetimePolicy {
            default_ttl: Some(Duration::from_secs(60)),
            ttl_override: Some(Duration::from_secs(600)),
        };
        let f = Freshness::compute(now, now, StatusCode::OK, &headers, &d, &policy);
        assert_eq!(f.lifetime, 600.0);
        let policy = LifetimePolicy {
            default_ttl: Some(Duration::from_secs(60)),
            ttl_override: None,
        };
        let f = Freshness::compute(
            now,
            now,
            StatusCode::OK,
            &HeaderMap::new(),
            &Default::default(),
            &policy,
        );
        assert_eq!(f.lifetime, 60.0);
    }
}
