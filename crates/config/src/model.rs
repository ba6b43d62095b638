//! The typed config model, exactly as an operator writes it in TOML.
//!
//! Every table rejects unknown keys so a typo is an error with a location, never a silently
//! ignored setting. Defaults live here, next to the field they belong to, so the example config
//! and the code cannot disagree.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::{serde_duration, serde_opt_duration};
use crate::size::serde_size;

/// One PoP's whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Free-form version label an operator or the control plane puts on this config.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub pop: PopConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timeouts: ClientTimeouts,
    #[serde(default)]
    pub client_ip: ClientIpConfig,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<CertificateConfig>,
    #[serde(default, rename = "site")]
    pub sites: Vec<SiteConfig>,
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolConfig>,
    #[serde(default)]
    pub cache: CacheConfig,
}

/// The PoP's HTTP cache storage, shared by every site (each site's policy is `[site.cache]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Memory tier budget (`"256MiB"`); `0` turns caching off for the whole PoP.
    #[serde(default = "default_cache_memory", with = "serde_size")]
    pub memory: u64,
    /// Disk tier budget; `0` (the default) keeps the cache in memory only. The disk tier
    /// survives restarts.
    #[serde(default, with = "serde_size")]
    pub disk: u64,
    /// Where the disk tier lives; defaults to `cache` under `pop.state_dir`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory: default_cache_memory(),
            disk: 0,
            dir: None,
        }
    }
}

fn default_cache_memory() -> u64 {
    256 << 20
}

/// How one site uses the cache. The defaults honour what the origin says (RFC 9111).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteCacheConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Lifetime of responses that carry no freshness information (instead of the RFC's
    /// Last-Modified heuristic).
    #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
    pub default_ttl: Option<Duration>,
    /// Lifetime of every stored response, whatever the origin says.
    #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// Also store what the origin marks private or no-store, and answers without freshness
    /// information (for origins that send no cache headers). It overrides the origin, not the
    /// client: a response that sets a cookie (see `store_set_cookie`), an answer to a request
    /// with `Authorization` that the origin did not mark public (or s-maxage,
    /// must-revalidate), and a request with `Cache-Control: no-store` are still not stored.
    #[serde(default)]
    pub cache_everything: bool,
    /// Store a response that sets a cookie when the origin gives it a shared lifetime itself
    /// (`s-maxage`, `max-age`, `Expires` or `public`), as RFC 9111 §7.3 allows: every client
    /// then gets that cookie. `false` never stores such responses (Varnish's and nginx's
    /// default); an origin can also keep the cookie out of the stored copy with
    /// `private="set-cookie"`.
    #[serde(default = "default_true")]
    pub store_set_cookie: bool,
    /// Larger responses stream through without being stored.
    #[serde(default = "default_max_object_size", with = "serde_size")]
    pub max_object_size: u64,
    /// Grace: how long past its lifetime a stored response may answer when the origin is down
    /// or answers 5xx, beyond what the origin's stale-if-error allows.
    #[serde(default = "zero_duration", with = "serde_duration")]
    pub stale_if_error: Duration,
    /// The query string in the cache key: `keep` (default), `sort` or `ignore`.
    #[serde(default)]
    pub query: CacheQuery,
    /// Query parameters left out of the key (`utm_*` matches a prefix).
    #[serde(default)]
    pub ignore_params: Vec<String>,
    /// Request headers added to the cache key.
    #[serde(default)]
    pub key_headers: Vec<String>,
    /// Cookies (by name) added to the cache key.
    #[serde(default)]
    pub key_cookies: Vec<String>,
}

impl Default for SiteCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            default_ttl: None,
            ttl: None,
            cache_everything: false,
            store_set_cookie: true,
            max_object_size: default_max_object_size(),
            stale_if_error: Duration::ZERO,
            query: CacheQuery::Keep,
            ignore_params: Vec::new(),
            key_headers: Vec::new(),
            key_cookies: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn zero_duration() -> Duration {
    Duration::ZERO
}

fn default_max_object_size() -> u64 {
    64 << 20
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheQuery {
    #[default]
    Keep,
    Sort,
    Ignore,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PopConfig {
    /// Names this PoP in metrics, logs and the `Via` header.
    #[serde(default = "default_pop_id")]
    pub id: String,
    #[serde(default)]
    pub region: Option<String>,
    /// Where the PoP keeps state that must survive a restart.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

impl Default for PopConfig {
    fn default() -> Self {
        Self {
            id: default_pop_id(),
            region: None,
            state_dir: None,
        }
    }
}

fn default_pop_id() -> String {
    "local".to_owned()
}

/// The admin listener: health, readiness, metrics, config and reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `None` disables the admin listener.
    #[serde(default = "default_admin_listen")]
    pub listen: Option<SocketAddr>,
    /// Bearer token required on every admin request except `/healthz` and `/readyz`.
    /// Mandatory when `listen` is not a loopback address.
    #[serde(default)]
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token: None,
        }
    }
}

fn default_admin_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9901)))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `"stdout"`, `"off"`, or a file path to append JSON lines to.
    #[serde(default = "default_access_log")]
    pub access_log: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            access_log: default_access_log(),
        }
    }
}

fn default_access_log() -> String {
    "stdout".to_owned()
}

/// Request limits, applied on every listener before routing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Total size of the request line and headers (431 / connection error beyond it).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Longest request target accepted (414 beyond it).
    #[serde(default = "default_max_uri_bytes")]
    pub max_uri_bytes: usize,
    /// Largest request body forwarded (413 beyond it); 0 means unlimited.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Open connections allowed from one client IP; more are closed at accept. 0 means unlimited.
    #[serde(default)]
    pub max_connections_per_ip: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_uri_bytes: default_max_uri_bytes(),
            max_body_bytes: default_max_body_bytes(),
            max_connections_per_ip: 0,
        }
    }
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_uri_bytes() -> usize {
    8 * 1024
}
fn default_max_body_bytes() -> u64 {
    100 * 1024 * 1024
}

/// Downstream (client side) timeouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTimeouts {
    /// Time a client has to send a complete request head.
    #[serde(default = "default_header_timeout", with = "serde_duration")]
    pub header: Duration,
    /// Time an idle keep-alive connection is kept open.
    #[serde(default = "default_idle_timeout", with = "serde_duration")]
    pub idle: Duration,
    /// Time a TLS handshake may take.
    #[serde(default = "default_handshake_timeout", with = "serde_duration")]
    pub tls_handshake: Duration,
    /// Longest pause allowed between two pieces of a request body (slow-POST protection, like
    /// nginx's client_body_timeout); past it the client gets 408.
    #[serde(default = "default_body_timeout", with = "serde_duration")]
    pub body: Duration,
    /// Slowest request body accepted, in bytes per second averaged over `body_rate_window` of
    /// time spent waiting for the client (a trickle that never pauses long enough for `body`);
    /// below it the client gets 408. `"off"` (or 0) disables it. The default, 500 B/s over 20 s,
    /// is Apache mod_reqtimeout's (`body=20,MinRate=500`): any real uplink clears it.
    #[serde(default = "default_body_min_rate", with = "crate::size::serde_rate")]
    pub body_min_rate: u64,
    #[serde(default = "default_body_rate_window", with = "serde_duration")]
    pub body_rate_window: Duration,
    /// How long SIGTERM waits for in-flight requests before closing connections.
    #[serde(default = "default_drain_timeout", with = "serde_duration")]
    pub drain: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        Self {
            header: default_header_timeout(),
            idle: default_idle_timeout(),
            tls_handshake: default_handshake_timeout(),
            body: default_body_timeout(),
            body_min_rate: default_body_min_rate(),
            body_rate_window: default_body_rate_window(),
            drain: default_drain_timeout(),
        }
    }
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_body_min_rate() -> u64 {
    500
}
fn default_body_rate_window() -> Duration {
    Duration::from_secs(20)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    /// Present for TLS listeners.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from a load balancer in
    /// `client_ip.trusted_proxies`; its source address becomes the client address.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// Where the client's address comes from when the PoP sits behind load balancers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIpConfig {
    /// Networks whose PROXY protocol headers and forwarding headers are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// A header (e.g. "x-forwarded-for") that names the client when the peer is a trusted
    /// proxy: the right-most address in it that is not itself a trusted proxy.
    #[serde(default)]
    pub header: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate served when SNI is absent or matches no certificate's names.
    #[serde(default)]
    pub default_certificate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub name: String,
    /// PEM file with the leaf certificate first, then intermediates.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Server names this certificate answers for. Empty means: the names in its SAN extension.
    #[serde(default)]
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub name: String,
    /// Exact host names or `*.example.com` wildcards (one label), or `"*"` for every host.
    pub hosts: Vec<String>,
    /// Origin pool that serves this site.
    pub pool: String,
    /// Listeners this site is served on; empty means all.
    #[serde(default)]
    pub listeners: Vec<String>,
    /// Request rate limits, checked in order; every matching limit must allow the request.
    #[serde(default, rename = "rate_limit")]
    pub rate_limits: Vec<RateLimitConfig>,
    /// Custom WAF rules, evaluated by ascending priority.
    #[serde(default, rename = "waf_rule")]
    pub waf_rules: Vec<WafRuleConfig>,
    /// The built-in managed rule set (after the custom rules).
    #[serde(default)]
    pub waf: ManagedWafConfig,
    #[serde(default)]
    pub cache: SiteCacheConfig,
    /// Which fields tell the origin about the client: X-Forwarded-For/-Proto/-Host, Forwarded
    /// (RFC 7239), both (the default) or none.
    #[serde(default)]
    pub forwarded_headers: ForwardedHeaders,
}

/// The fields a site's requests carry to the origin about the client and the request as the PoP
/// received it. A family that is off is also removed from what the client sent: passed through,
/// a client could claim any address to an origin that trusts the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeaders {
    /// X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host and Forwarded.
    #[default]
    Both,
    /// X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host only.
    XForwarded,
    /// Forwarded (RFC 7239) only.
    Forwarded,
    /// Neither (an origin that must not learn client addresses, or that needs none).
    None,
}

impl ForwardedHeaders {
    pub fn x_forwarded(self) -> bool {
        matches!(self, Self::Both | Self::XForwarded)
    }

    pub fn forwarded(self) -> bool {
        matches!(self, Self::Both | Self::Forwarded)
    }
}

/// The managed rule set: SQL injection, XSS, path traversal, command injection, scanners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedWafConfig {
    #[serde(default)]
    pub mode: WafMode,
    /// 1 (default): high-confidence signatures only; 2 and 3 add broader ones, catching more
    /// at the price of more false positives.
    #[serde(default = "default_sensitivity")]
    pub sensitivity: u8,
    /// Status of a block.
    #[serde(default = "default_waf_status")]
    pub status: u16,
    /// Where a rule (by id) or a class (`sqli`, `xss`, `traversal`, `cmdi`, `scanner`) does not
    /// apply: under a path prefix, for one argument, or both.
    #[serde(default, rename = "exclusion")]
    pub exclusions: Vec<WafExclusionConfig>,
    /// How much of a urlencoded, JSON or multipart request body the WAF (custom rules with a
    /// body target, and the managed rule set) buffers and inspects. Bodies of other types, and
    /// sites without WAF rules, stream through unbuffered.
    #[serde(default = "default_waf_body_limit", with = "serde_size")]
    pub body_limit: u64,
    /// A body larger than `body_limit`: `"inspect"` (default) inspects its first `body_limit`
    /// bytes and forwards the whole body; `"block"` answers 413.
    #[serde(default)]
    pub body_oversize: WafBodyOversize,
}

impl Default for ManagedWafConfig {
    fn default() -> Self {
        Self {
            mode: WafMode::Off,
            sensitivity: default_sensitivity(),
            status: default_waf_status(),
            exclusions: Vec::new(),
            body_limit: default_waf_body_limit(),
            body_oversize: WafBodyOversize::default(),
        }
    }
}

/// Largest `body_limit` accepted: the buffer is held per request.
pub const MAX_WAF_BODY_LIMIT: u64 = 16 << 20;

fn default_waf_body_limit() -> u64 {
    64 * 1024
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WafBodyOversize {
    /// Inspect the first `body_limit` bytes; the rest is forwarded uninspected.
    #[default]
    Inspect,
    /// Refuse the request with 413.
    Block,
}

fn default_sensitivity() -> u8 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WafMode {
    #[default]
    Off,
    /// Matches are counted and logged, nothing is blocked (for a safe rollout).
    Detect,
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafExclusionConfig {
    /// A rule id (e.g. `sqli-tautology`) or a class (`sqli`).
    pub rule: String,
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// An argument name: a query argument, or a body argument (a form field, a multipart part,
    /// or a JSON member as its dotted path, e.g. `user.bio`).
    #[serde(default)]
    pub arg: Option<String>,
}

/// One custom WAF rule: when every condition matches, the action applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafRuleConfig {
    /// Names the rule in metrics and the access log.
    pub id: String,
    /// Lower runs first; rules of equal priority run in file order.
    #[serde(default = "default_waf_priority")]
    pub priority: u32,
    #[serde(default)]
    pub action: WafAction,
    /// Status of a block (403 by default).
    #[serde(default = "default_waf_status")]
    pub status: u16,
    /// Body of a block; a short default names the rule.
    #[serde(default)]
    pub body: Option<String>,
    /// All must match (AND).
    #[serde(rename = "match")]
    pub conditions: Vec<WafConditionConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WafAction {
    #[default]
    Block,
    /// Only counted and logged (detection mode).
    Log,
    /// Lets the request through and skips the remaining rules.
    Allow,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafConditionConfig {
    /// `method`, `path`, `query`, `args` (every query argument), `arg:NAME`, `headers`,
    /// `header:NAME`, `cookies`, `cookie:NAME`, `client_ip`, or the request body: `body` (its
    /// text, up to `[site.waf] body_limit`), `body_args` (every parsed urlencoded, JSON or
    /// multipart value) and `body_arg:NAME` (JSON members by dotted path, e.g. `user.bio`).
    pub target: String,
    /// `equals`, `prefix`, `contains`, `regex`, `cidr`, `gt`, `lt` or `eq` (numeric).
    pub operator: String,
    /// One or more values; the condition matches when any matches.
    pub values: Vec<String>,
    /// Applied in order before matching: `url_decode`, `url_decode_repeat`, `lowercase`,
    /// `normalize_whitespace`, `remove_comments`, `html_entity_decode`.
    #[serde(default)]
    pub transforms: Vec<String>,
    /// Matches when the operator does not.
    #[serde(default)]
    pub negate: bool,
}

fn default_waf_priority() -> u32 {
    100
}
fn default_waf_status() -> u16 {
    403
}

/// What a rate limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Names the limit in metrics, logs and the `RateLimit-Policy` header.
    pub name: String,
    /// `"client_ip"`, `"ip_prefix"` (the client's /24 or /64, see the prefix fields),
    /// `"header:NAME"` (an API key), `"cookie:NAME"`, or `"site"` (one budget for the whole
    /// site: a global guard).
    #[serde(default = "default_rate_key")]
    pub key: String,
    /// Requests allowed per `per`.
    pub rate: u32,
    #[serde(default = "default_rate_per", with = "crate::duration::serde_duration")]
    pub per: Duration,
    /// Requests allowed at once above the steady rate; defaults to `rate`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Only requests whose path starts with this are counted (a route); absent means all.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// `"block"` answers 429 with Retry-After; `"log"` only counts and logs (safe rollout).
    #[serde(default)]
    pub action: RateLimitAction,
    #[serde(default = "default_ipv4_prefix")]
    pub ipv4_prefix: u8,
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// Most keys tracked at once; keys beyond it share one budget until idle keys expire.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAction {
    #[default]
    Block,
    Log,
}

fn default_rate_key() -> String {
    "client_ip".to_owned()
}
fn default_rate_per() -> Duration {
    Duration::from_secs(1)
}
fn default_ipv4_prefix() -> u8 {
    24
}
fn default_ipv6_prefix() -> u8 {
    64
}
fn default_max_keys() -> usize {
    100_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancePolicy {
    #[default]
    RoundRobin,
    LeastRequests,
    ConsistentHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    #[serde(default)]
    pub balance: BalancePolicy,
    /// What consistent hashing hashes: `"path"`, `"uri"` (path and query), `"host"`,
    /// `"client_ip"` or `"header:NAME"`.
    #[serde(default = "default_hash_key")]
    pub hash_key: String,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default = "default_connect_timeout", with = "serde_duration")]
    pub connect_timeout: Duration,
    /// Time from having sent the request (its body included) to receiving the response head;
    /// also the longest the origin may go without taking any of a request body being sent
    /// (counted from the start of the attempt, so connecting and waiting for a connection
    /// are within it for requests with a body, as they are for those without).
    #[serde(default = "default_response_header_timeout", with = "serde_duration")]
    pub response_header_timeout: Duration,
    /// Deadline for the whole exchange, body included.
    #[serde(default = "default_request_timeout", with = "serde_duration")]
    pub request_timeout: Duration,
    /// How long an idle upstream connection stays in the pool.
    #[serde(default = "default_upstream_idle_timeout", with = "serde_duration")]
    pub idle_timeout: Duration,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Active health checks; absent means origins are only judged passively.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub outlier: OutlierConfig,
    /// TLS to origins (for `https://` origins): CA, client certificate for mTLS, SNI override.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    #[serde(default, rename = "origin")]
    pub origins: Vec<OriginConfig>,
}

fn default_hash_key() -> String {
    "uri".to_owned()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_response_header_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_upstream_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Extra attempts after the first, for idempotent requests without a body.
    #[serde(default = "default_retry_attempts")]
    pub attempts: u32,
    /// Retries may add at most this fraction of the pool's recent request rate.
    #[serde(default = "default_budget_ratio")]
    pub budget_ratio: f64,
    /// Retries always allowed per second, whatever the ratio, so quiet pools can still retry.
    #[serde(default = "default_min_retries_per_second")]
    pub min_per_second: u32,
    /// Origin statuses that are retried on another origin (connection failures and broken
    /// exchanges always are). Empty by default, like nginx's `proxy_next_upstream` and
    /// HAProxy's `retry-on`: retrying an overloaded origin's 503 doubles its load.
    #[serde(default)]
    pub on_status: Vec<u16>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: default_retry_attempts(),
            budget_ratio: default_budget_ratio(),
            min_per_second: default_min_retries_per_second(),
            on_status: Vec::new(),
        }
    }
}

fn default_retry_attempts() -> u32 {
    2
}
fn default_budget_ratio() -> f64 {
    0.2
}
fn default_min_retries_per_second() -> u32 {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Status a healthy origin answers with; 0 accepts any 2xx or 3xx.
    #[serde(default)]
    pub expect_status: u16,
    #[serde(default = "default_health_interval", with = "serde_duration")]
    pub interval: Duration,
    #[serde(default = "default_health_timeout", with = "serde_duration")]
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy origin healthy.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that make a healthy origin unhealthy.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Host header sent with the check; defaults to the origin's authority.
    #[serde(default)]
    pub host: Option<String>,
}

fn default_health_path() -> String {
    "/".to_owned()
}
fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

/// Passive outlier detection: origins failing in live traffic are ejected for a while.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive 5xx answers or connect failures that eject an origin; 0 disables.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// First ejection lasts this long; each further ejection doubles it.
    #[serde(default = "default_base_ejection", with = "serde_duration")]
    pub base_ejection: Duration,
    #[serde(default = "default_max_ejection", with = "serde_duration")]
    pub max_ejection: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            base_ejection: default_base_ejection(),
            max_ejection: default_max_ejection(),
        }
    }
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(10)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM bundle of CAs trusted for origin certificates; defaults to the public web roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate and key presented to origins (mTLS).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// SNI and verified name; defaults to each origin URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// `http://host:port` or `https://host:port`; no path.
    pub url: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub cloud: Option<String>,
    /// Backups only receive traffic when no primary origin is healthy.
    #[serde(default)]
    pub backup: bool,
}

fn default_weight() -> u32 {
    1
}
