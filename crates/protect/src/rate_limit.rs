//! Rate limits: per configured limit, a table of GCRA buckets (governor, the ecosystem's
//! standard) keyed by the client IP, its network prefix, a header, a cookie, or the site.
//!
//! Memory is bounded: at most `max_keys` buckets are tracked, each a few dozen bytes whatever
//! the key (header and cookie values are hashed with a per-process random seed, so long or
//! crafted values neither grow memory nor collide on purpose). Past the cap only *new* keys
//! share one overflow bucket, so a flood of fresh keys cannot take the budget of clients already
//! tracked; `sweep` (run periodically by the edge) drops buckets that have refilled completely.
//!
//! The table is a DashMap of governor's direct limiters rather than governor's keyed store,
//! because the cap needs "is this key already tracked?", which the keyed store does not answer.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::header::{self, HeaderMap};
use outpost_config::{RateLimitAction, RateLimitConfig};

/// What a limit counts by, parsed once from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeySpec {
    ClientIp,
    IpPrefix { v4: u8, v6: u8 },
    Header(header::HeaderName),
    Cookie(String),
    Site,
}

/// One bucket's identity. Absent headers or cookies share the `Missing` bucket: requests without
/// an API key are limited together, not let through.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Ip(u128),
    /// A header or cookie value, hashed (see the module comment).
    Value(u64),
    Missing,
    Site,
}

/// The facts about a request a protection decision looks at.
pub struct RequestFacts<'a> {
    pub client_ip: IpAddr,
    pub method: &'a http::Method,
    /// The normalized path (see `path::normalize`).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The buffered, parsed body, when the WAF inspects this request's body.
    pub body: Option<&'a crate::body::RequestBody>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The limit does not apply to this request (its path is outside the route).
    Skip,
    Allow,
    /// Over the limit. `enforce` is false for log-only limits.
    Deny {
        retry_after: Duration,
        enforce: bool,
    },
}

type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

struct Entry<C: Clock> {
    bucket: Bucket<C>,
    /// When the bucket was last used, in nanoseconds since the limit was built.
    last_used: AtomicU64,
}

pub struct RateLimit<C: Clock = DefaultClock> {
    pub name: Arc<str>,
    config: RateLimitConfig,
    key: KeySpec,
    quota: Quota,
    clock: C,
    start: C::Instant,
    /// A bucket untouched this long has refilled completely and can be forgotten.
    refill: Duration,
    buckets: DashMap<Key, Entry<C>>,
    overflow: Entry<C>,
    hasher: std::hash::RandomState,
}

impl RateLimit<DefaultClock> {
    pub fn new(config: &RateLimitConfig) -> Result<Self, String> {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimit<C> {
    pub fn with_clock(config: &RateLimitConfig, clock: C) -> Result<Self, String> {
        let key = parse_key(config)?;
        let rate = NonZeroU32::new(config.rate).ok_or("rate must be at least 1")?;
        let burst = NonZeroU32::new(config.burst.unwrap_or(config.rate)).ok_or("burst must be at least 1")?;
        let period = config.per / rate.get();
        let quota = Quota::with_period(period)
            .ok_or_else(|| format!("{} requests per {:?} is too fine-grained", rate, config.per))?
            .allow_burst(burst);
        let start = clock.now();
        let overflow = Entry {
            bucket: RateLimiter::direct_with_clock(quota, clock.clone()),
            last_used: AtomicU64::new(0),
        };
        Ok(Self {
            name: config.name.as_str().into(),
            config: config.clone(),
            key,
            quota,
            refill: period.saturating_mul(burst.get()),
            clock,
            start,
            buckets: DashMap::new(),
            overflow,
            hasher: std::hash::RandomState::new(),
        })
    }

    /// Whether this limiter was built from `config` (a reload keeps its buckets then).
    pub fn same_config(&self, config: &RateLimitConfig) -> bool {
        self.config == *config
    }

    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    pub fn check(&self, facts: &RequestFacts<'_>) -> Decision {
        if let Some(prefix) = &self.config.path_prefix {
            if !facts.path.starts_with(prefix.as_str()) {
                return Decision::Skip;
            }
        }
        let key = self.key_for(facts);
        let now = self.clock.now();
        let since_start = now.duration_since(self.start).as_u64();
        let verdict = |entry: &Entry<C>| {
            entry.last_used.store(since_start, Ordering::Relaxed);
            match entry.bucket.check() {
                Ok(()) => Decision::Allow,
                Err(not_until) => Decision::Deny {
                    retry_after: not_until.wait_time_from(now),
                    enforce: self.config.action == RateLimitAction::Block,
                },
            }
        };
        if let Some(entry) = self.buckets.get(&key) {
            return verdict(&entry);
        }
        if self.buckets.len() >= self.config.max_keys {
            return verdict(&self.overflow);
        }
        let entry = self.buckets.entry(key).or_insert_with(|| Entry {
            bucket: RateLimiter::direct_with_clock(self.quota, self.clock.clone()),
            last_used: AtomicU64::new(since_start),
        });
        verdict(&entry)
    }

    /// Drops buckets that have refilled completely (idle keys), so memory follows the active
    /// clients, not every client ever seen.
    pub fn sweep(&self) {
        let now = self.clock.now().duration_since(self.start).as_u64();
        let refill = u64::try_from(self.refill.as_nanos()).unwrap_or(u64::MAX);
        self.buckets
            .retain(|_, e| now.saturating_sub(e.last_used.load(Ordering::Relaxed)) < refill);
        self.buckets.shrink_to_fit();
    }

    pub fn tracked_keys(&self) -> usize {
        self.buckets.len()
    }

    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers) naming this limit's quota.
    /// Validation keeps `per` to whole seconds and names to header-safe characters.
    pub fn policy_header(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            self.name,
            self.config.rate,
            self.config.per.as_secs().max(1)
        )
    }

    fn key_for(&self, facts: &RequestFacts<'_>) -> Key {
        match &self.key {
            KeySpec::ClientIp => Key::Ip(ip_bits(facts.client_ip)),
            KeySpec::IpPrefix { v4, v6 } => Key::Ip(prefix_bits(facts.client_ip, *v4, *v6)),
            KeySpec::Header(name) => match facts.headers.get(name) {
                Some(v) => Key::Value(self.hasher.hash_one(v.as_bytes())),
                None => Key::Missing,
            },
            KeySpec::Cookie(wanted) => {
                let mut key = Key::Missing;
                crate::for_each_cookie(facts.headers, |name, value| {
                    let found = name == wanted;
                    if found {
                        key = Key::Value(self.hasher.hash_one(value.as_bytes()));
                    }
                    found
                });
                key
            }
            KeySpec::Site => Key::Site,
        }
    }
}

fn parse_key(config: &RateLimitConfig) -> Result<KeySpec, String> {
    Ok(match config.key.as_str() {
        "client_ip" => KeySpec::ClientIp,
        "ip_prefix" => KeySpec::IpPrefix {
            v4: config.ipv4_prefix.min(32),
            v6: config.ipv6_prefix.min(128),
        },
        "site" => KeySpec::Site,
        other => {
            if let Some(name) = other.strip_prefix("header:") {
                KeySpec::Header(header::HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?)
            } else if let Some(name) = other.strip_prefix("cookie:") {
                KeySpec::Cookie(name.to_owned())
            } else {
                return Err(format!("unknown rate limit key \"{other}\""));
            }
        }
    })
}

/// IPv4 addresses (also when they arrive IPv4-mapped on a dual-stack socket) are mapped into
/// the IPv6 space so both fit one key type.
fn ip_bits(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn prefix_bits(ip: IpAddr, v4: u8, v6: u8) -> u128 {
    let canonical = ip.to_canonical();
    let keep = match canonical {
        IpAddr::V4(_) => 96 + u32::from(v4),
        IpAddr::V6(_) => u32::from(v6),
    };
    let bits = ip_bits(canonical);
    if keep >= 128 {
        bits
    } else {
        bits & !(u128::MAX >> keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn config(key: &str, rate: u32, per: Duration, burst: Option<u32>) -> RateLimitConfig {
        RateLimitConfig {
            name: "test".into(),
            key: key.into(),
            rate,
            per,
            burst,
            path_prefix: None,
            action: RateLimitAction::Block,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            max_keys: 1000,
        }
    }

    fn facts<'a>(ip: &str, path: &'a str, headers: &'a HeaderMap) -> RequestFacts<'a> {
        RequestFacts {
            client_ip: ip.parse().unwrap(),
            method: &http::Method::GET,
            path,
            query: None,
            headers,
            body: None,
        }
    }

    fn allowed(limit: &RateLimit<FakeRelativeClock>, f: &RequestFacts<'_>, n: usize) -> usize {
        (0..n).filter(|_| limit.check(f) == Decision::Allow).count()
    }

    #[test]
    fn burst_then_steady_rate_per_client() {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::with_clock(
            &config("client_ip", 10, Duration::from_secs(1), Some(5)),
            clock.clone(),
        )
        .unwrap();
        let h = HeaderMap::new();
        let a = facts("192.0.2.1", "/", &h);
        assert_eq!(allowed(&limit, &a, 20), 5, "burst of 5");
        match limit.check(&a) {
            Decision::Deny { retry_after, enforce } => {
                assert!(enforce);
                assert!(
                    retry_after <= Duration::from_millis(100) && retry_after > Duration::ZERO,
                    "{retry_after:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Another client has its own bucket.
        assert_eq!(allowed(&limit, &facts("192.0.2.2", "/", &h), 5), 5);
        // 10/s: one more every 100 ms.
        clock.advance(Duration::from_millis(100));
        assert_eq!(allowed(&limit, &a, 3), 1);
    }

    #[test]
    fn ip_prefix_groups_a_network() {
        let clock = FakeRelativeClock::default();
        let limit =
            RateLimit::with_clock(&config("ip_prefix", 2, Duration::from_secs(60), None), clock).unwrap();
        let h = HeaderMap::new();
        assert_eq!(allowed(&limit, &facts("198.51.100.1", "/", &h), 1), 1);
        assert_eq!(allowed(&limit, &facts("198.51.100.200", "/", &h), 1), 1);
        assert_eq!(
            allowed(&limit, &facts("198.51.100.77", "/", &h), 1),
            0,
            "same /24 shares the budget"
        );
        assert_eq!(
            allowed(&limit, &facts("198.51.101.1", "/", &h), 1),
            1,
            "next /24 is separate"
        );
        assert_eq!(allowed(&limit, &facts("2001:db8:0:1::1", "/", &h), 2), 2);
        assert_eq!(
            allowed(&limit, &facts("2001:db8:0:1::ffff", "/", &h), 1),
            0,
            "same /64"
        );
    }

    #[test]
    fn header_and_cookie_keys_with_a_shared_bucket_for_the_absent() {
        let clock = FakeRelativeClock::default();
        let by_header = RateLimit::with_clock(
            &config("header:x-api-key", 1, Duration::from_secs(60), None),
            clock.clone(),
        )
        .unwrap();
        let by_cookie =
            RateLimit::with_clock(&config("cookie:session", 1, Duration::from_secs(60), None), clock)
                .unwrap();
        let mut k1 = HeaderMap::new();
        k1.insert("x-api-key", "one".parse().unwrap());
        k1.insert("cookie", "theme=dark; session=abc".parse().unwrap());
        let mut k2 = HeaderMap::new();
        k2.insert("x-api-key", "two".parse().unwrap());
        k2.insert("cookie", "session=def".parse().unwrap());
        let none = HeaderMap::new();
        for limit in [&by_header, &by_cookie] {
            assert_eq!(allowed(limit, &facts("192.0.2.1", "/", &k1), 2), 1);
            assert_eq!(allowed(limit, &facts("192.0.2.1", "/", &k2), 2), 1);
            assert_eq!(allowed(limit, &facts("192.0.2.1", "/", &none), 1), 1);
            assert_eq!(
                allowed(limit, &facts("192.0.2.9", "/", &none), 1),
                0,
                "keyless requests share one budget"
            );
        }
    }

    #[test]
    fn routes_log_only_and_site_wide_limits() {
        let clock = FakeRelativeClock::default();
        let mut cfg = config("site", 1, Duration::from_secs(60), None);
        cfg.path_prefix = Some("/api/".into());
        cfg.action = RateLimitAction::Log;
        let limit = RateLimit::with_clock(&cfg, clock).unwrap();
        let h = HeaderMap::new();
        assert_eq!(
            limit.check(&facts("192.0.2.1", "/static/a.css", &h)),
            Decision::Skip
        );
        assert_eq!(limit.check(&facts("192.0.2.1", "/api/x", &h)), Decision::Allow);
        assert!(
            matches!(
                limit.check(&facts("192.0.2.2", "/api/y", &h)),
                Decision::Deny { enforce: false, .. }
            ),
            "site-wide budget; log only"
        );
        assert_eq!(limit.policy_header(), "\"test\";q=1;w=60");
    }

    #[test]
    fn a_full_table_does_not_starve_tracked_clients() {
        let clock = FakeRelativeClock::default();
        let mut cfg = config("client_ip", 1, Duration::from_secs(60), Some(2));
        cfg.max_keys = 10;
        let limit = RateLimit::with_clock(&cfg, clock).unwrap();
        let h = HeaderMap::new();
        assert_eq!(allowed(&limit, &facts("192.0.2.1", "/", &h), 1), 1);
        for i in 0..500u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            limit.check(&facts(&ip, "/", &h));
        }
        assert_eq!(
            allowed(&limit, &facts("192.0.2.1", "/", &h), 5),
            1,
            "its own bucket, not the flooded overflow"
        );
        // IPv4-mapped IPv6 peers count as the IPv4 client they are.
        assert_eq!(allowed(&limit, &facts("::ffff:192.0.2.1", "/", &h), 1), 0);
    }

    #[test]
    fn memory_is_bounded_and_idle_keys_expire() {
        let clock = FakeRelativeClock::default();
        let mut cfg = config("client_ip", 1, Duration::from_secs(1), None);
        cfg.max_keys = 100;
        let limit = RateLimit::with_clock(&cfg, clock.clone()).unwrap();
        let h = HeaderMap::new();
        for i in 0..1000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            limit.check(&facts(&ip, "/", &h));
        }
        assert_eq!(limit.tracked_keys(), 100, "the table stops at max_keys");
        clock.advance(Duration::from_secs(5));
        limit.sweep();
        assert_eq!(limit.tracked_keys(), 0, "idle buckets are dropped");
    }
}
