//! Semantic checks on a deserialized config: everything serde cannot express, such as
//! cross-references between tables, uniqueness, and values that parse but make no sense.
//!
//! Pure: no file system, no DNS, no sockets. Certificate files are only named here; whether they
//! exist and hold a usable key is for the component that loads them, so a config can be checked
//! on a machine that does not have the secrets.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::duration::format_duration;
use crate::model::*;
use crate::path::FieldPath;

/// One semantic problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    /// The key the problem is about.
    pub(crate) field: FieldPath,
    /// Where to point in the text when `field` is absent from it, e.g. the missing `admin.token`
    /// is best shown at `admin.listen`, the key that made it required.
    pub(crate) anchor: Option<FieldPath>,
    pub(crate) reason: String,
}

/// Every problem in `config`, in the order of the config's sections.
pub(crate) fn validate(config: &Config) -> Vec<Issue> {
    let mut v = Validator { issues: Vec::new() };
    let root = FieldPath::root();
    v.pop(&config.pop, &root.key("pop"));
    v.admin(config, &root.key("admin"));
    if config.log.access_log.trim().is_empty() {
        v.error(
            root.key("log").key("access_log"),
            "must not be empty; use \"stdout\", \"off\" or a file path",
        );
    }
    v.limits(&config.limits, &root.key("limits"));
    v.client_timeouts(&config.timeouts, &root.key("timeouts"));
    v.listeners(config);
    v.client_ip(config);
    v.certificates(config);
    v.sites(config);
    v.pools(config);
    v.cache(config);
    v.issues
}

struct Validator {
    issues: Vec<Issue>,
}

impl Validator {
    fn error(&mut self, field: FieldPath, reason: impl Into<String>) {
        self.issues.push(Issue {
            field,
            anchor: None,
            reason: reason.into(),
        });
    }

    fn error_at(&mut self, field: FieldPath, anchor: FieldPath, reason: impl Into<String>) {
        self.issues.push(Issue {
            field,
            anchor: Some(anchor),
            reason: reason.into(),
        });
    }

    /// Every duration must be expressible in the file format, so a config built in code can be
    /// serialized, hashed and shown back.
    fn duration(&mut self, path: FieldPath, duration: Duration, must_be_positive: bool) {
        if format_duration(duration).is_none() {
            self.error(
                path,
                format!("{duration:?} has sub-millisecond precision; use whole milliseconds"),
            );
        } else if must_be_positive && duration.is_zero() {
            self.error(path, "must be greater than 0s");
        }
    }

    fn name(
        &mut self,
        path: FieldPath,
        name: &str,
        kind: &str,
        seen: &mut HashMap<String, usize>,
        index: usize,
    ) {
        if name.trim().is_empty() {
            self.error(path, format!("{kind} name must not be empty"));
        } else if let Some(first) = seen.get(name) {
            self.error(
                path,
                format!("duplicate {kind} name \"{name}\" (also {kind}[{first}])"),
            );
        } else {
            seen.insert(name.to_owned(), index);
        }
    }

    fn pop(&mut self, pop: &PopConfig, path: &FieldPath) {
        if pop.id.is_empty() {
            self.error(path.key("id"), "must not be empty");
        } else if !pop
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            self.error(
                path.key("id"),
                format!(
                    "invalid PoP id \"{}\": use only letters, digits, '.', '_' and '-'",
                    pop.id
                ),
            );
        }
        if pop
            .region
            .as_deref()
            .is_some_and(|region| region.trim().is_empty())
        {
            self.error(path.key("region"), "must not be empty; leave it out instead");
        }
        if pop
            .state_dir
            .as_deref()
            .is_some_and(|dir| dir.as_os_str().is_empty())
        {
            self.error(path.key("state_dir"), "must not be empty; leave it out instead");
        }
    }

    fn admin(&mut self, config: &Config, path: &FieldPath) {
        let admin = &config.admin;
        let token = admin.token.as_deref();
        if token.is_some_and(|token| token.trim().is_empty()) {
            self.error(path.key("token"), "must not be empty");
        }
        let Some(listen) = admin.listen else { return };
        if !listen.ip().is_loopback() && token.is_none() {
            self.error_at(
                path.key("token"),
                path.key("listen"),
                "admin listener on a non-loopback address needs admin.token",
            );
        }
        for listener in &config.listeners {
            if let Some(how) = address_conflict(listen, listener.address) {
                self.error(
                    path.key("listen"),
                    format!("{listen} {how} listener \"{}\"", listener.name),
                );
            }
        }
    }

    fn limits(&mut self, limits: &Limits, path: &FieldPath) {
        if limits.max_header_bytes == 0 {
            self.error(path.key("max_header_bytes"), "must be greater than 0");
        }
        if limits.max_uri_bytes == 0 {
            self.error(path.key("max_uri_bytes"), "must be greater than 0");
        }
    }

    fn client_timeouts(&mut self, timeouts: &ClientTimeouts, path: &FieldPath) {
        self.duration(path.key("header"), timeouts.header, true);
        self.duration(path.key("idle"), timeouts.idle, true);
        self.duration(path.key("tls_handshake"), timeouts.tls_handshake, true);
        self.duration(path.key("body"), timeouts.body, true);
        self.duration(path.key("body_rate_window"), timeouts.body_rate_window, true);
        // Zero drain is meaningful: close connections as soon as SIGTERM arrives.
        self.duration(path.key("drain"), timeouts.drain, false);
    }

    fn client_ip(&mut self, config: &Config) {
        let path = FieldPath::root().key("client_ip");
        if let Some(name) = &config.client_ip.header {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.error(
                    path.key("header"),
                    format!("\"{name}\" is not a valid header name"),
                );
            } else if config.client_ip.trusted_proxies.is_empty() {
                self.error(
                    path.key("header"),
                    "a client address header is only believed from client_ip.trusted_proxies; list them",
                );
            }
        }
        for (i, listener) in config.listeners.iter().enumerate() {
            if listener.proxy_protocol && config.client_ip.trusted_proxies.is_empty() {
                self.error(
                    FieldPath::root().key("listener").index(i).key("proxy_protocol"),
                    "PROXY protocol headers are only accepted from client_ip.trusted_proxies; list them",
                );
            }
        }
    }

    fn listeners(&mut self, config: &Config) {
        if config.listeners.is_empty() {
            self.error(
                FieldPath::root().key("listener"),
                "at least one [[listener]] is required",
            );
        }
        let certificates: Vec<&str> = config.certificates.iter().map(|c| c.name.as_str()).collect();
        let mut names = HashMap::new();
        for (i, listener) in config.listeners.iter().enumerate() {
            let path = FieldPath::root().key("listener").index(i);
            self.name(path.key("name"), &listener.name, "listener", &mut names, i);
            let earlier = config.listeners[..i].iter();
            if let Some((how, other)) = earlier
                .filter_map(|other| Some((address_conflict(listener.address, other.address)?, other)))
                .next()
            {
                self.error(
                    path.key("address"),
                    format!("address {} {how} listener \"{}\"", listener.address, other.name),
                );
            }
            let Some(tls) = &listener.tls else { continue };
            if certificates.is_empty() {
                self.error(
                    path.key("tls"),
                    "a TLS listener needs at least one [[certificate]]",
                );
            } else if let Some(name) = &tls.default_certificate {
                if !certificates.contains(&name.as_str()) {
                    self.error(
                        path.key("tls").key("default_certificate"),
                        format!(
                            "unknown certificate \"{name}\"; {}",
                            defined("certificates", "certificate", &certificates)
                        ),
                    );
                }
            }
        }
    }

    fn certificates(&mut self, config: &Config) {
        let mut names = HashMap::new();
        for (i, certificate) in config.certificates.iter().enumerate() {
            let path = FieldPath::root().key("certificate").index(i);
            self.name(path.key("name"), &certificate.name, "certificate", &mut names, i);
            if certificate.cert.as_os_str().is_empty() {
                self.error(
                    path.key("cert"),
                    "must not be empty; give the path of a PEM certificate chain",
                );
            }
            if certificate.key.as_os_str().is_empty() {
                self.error(
                    path.key("key"),
                    "must not be empty; give the path of a PEM private key",
                );
            }
            for (j, name) in certificate.names.iter().enumerate() {
                let problem = if name == "*" {
                    Some(
                        "`*` alone cannot be a certificate name; use a wildcard like *.example.com"
                            .to_owned(),
                    )
                } else {
                    host_pattern_problem(name)
                };
                if let Some(problem) = problem {
                    self.error(
                        path.key("names").index(j),
                        format!("invalid server name \"{name}\": {problem}"),
                    );
                }
            }
        }
    }

    fn sites(&mut self, config: &Config) {
        let pools: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
        let listeners: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
        let mut names = HashMap::new();
        // Lower-cased host -> index of the site that claimed it first.
        let mut hosts: HashMap<String, usize> = HashMap::new();
        for (i, site) in config.sites.iter().enumerate() {
            let path = FieldPath::root().key("site").index(i);
            self.name(path.key("name"), &site.name, "site", &mut names, i);
            if site.hosts.is_empty() {
                self.error(
                    path.key("hosts"),
                    "a site needs at least one host; use [\"*\"] to match every host",
                );
            }
            for (j, host) in site.hosts.iter().enumerate() {
                let host_path = path.key("hosts").index(j);
                if let Some(problem) = host_pattern_problem(host) {
                    self.error(host_path, format!("invalid host \"{host}\": {problem}"));
                    continue;
                }
                let lower = host.to_ascii_lowercase();
                match hosts.get(&lower) {
                    Some(&other) if other == i => {
                        self.error(
                            host_path,
                            format!("host \"{lower}\" is listed twice in this site"),
                        );
                    }
                    Some(&other) => self.error(
                        host_path,
                        format!(
                            "host \"{lower}\" is already served by site \"{}\"",
                            config.sites[other].name
                        ),
                    ),
                    None => {
                        hosts.insert(lower, i);
                    }
                }
            }
            if !pools.contains(&site.pool.as_str()) {
                self.error(
                    path.key("pool"),
                    format!(
                        "unknown pool \"{}\"; {}",
                        site.pool,
                        defined("pools", "pool", &pools)
                    ),
                );
            }
            self.rate_limits(site, &path);
            self.waf_rules(site, &path);
            let waf = path.key("waf");
            if !(1..=3).contains(&site.waf.sensitivity) {
                self.error(waf.key("sensitivity"), "must be 1, 2 or 3");
            }
            if !(400..=599).contains(&site.waf.status) {
                self.error(waf.key("status"), "a block answers with a 4xx or 5xx status");
            }
            if site.waf.body_limit == 0 || site.waf.body_limit > crate::model::MAX_WAF_BODY_LIMIT {
                self.error(
                    waf.key("body_limit"),
                    format!(
                        "must be between 1B and {} (the WAF holds this much of a body per request)",
                        crate::size::format_size(crate::model::MAX_WAF_BODY_LIMIT)
                    ),
                );
            }
            for (j, ex) in site.waf.exclusions.iter().enumerate() {
                let ex_path = waf.key("exclusion").index(j);
                if ex.rule.trim().is_empty() {
                    self.error(
                        ex_path.key("rule"),
                        "name a rule id or a class (sqli, xss, traversal, cmdi, scanner)",
                    );
                }
                if ex.path_prefix.is_none() && ex.arg.is_none() {
                    self.error(ex_path.key("rule"), "an exclusion needs a path_prefix, an arg, or both (to turn a rule off everywhere, lower the sensitivity)");
                }
            }
            for (j, listener) in site.listeners.iter().enumerate() {
                let listener_path = path.key("listeners").index(j);
                if !listeners.contains(&listener.as_str()) {
                    self.error(
                        listener_path,
                        format!(
                            "unknown listener \"{listener}\"; {}",
                            defined("listeners", "listener", &listeners)
                        ),
                    );
                } else if site.listeners[..j].contains(listener) {
                    self.error(listener_path, format!("listener \"{listener}\" is listed twice"));
                }
            }
        }
    }

    fn cache(&mut self, config: &Config) {
        let path = FieldPath::root().key("cache");
        if config.cache.disk > 0 && config.cache.dir.is_none() && config.pop.state_dir.is_none() {
            self.error(
                path.key("disk"),
                "a disk tier needs a directory: set cache.dir or pop.state_dir",
            );
        }
        if config.cache.disk > 0 && config.cache.memory == 0 {
            self.error(
                path.key("memory"),
                "the disk tier is read through the memory tier; give memory a budget or set disk to 0",
            );
        }
        for (i, site) in config.sites.iter().enumerate() {
            let c = &site.cache;
            let cpath = FieldPath::root().key("site").index(i).key("cache");
            if c.max_object_size == 0 {
                self.error(
                    cpath.key("max_object_size"),
                    "must be more than 0 (to store nothing, set enabled = false)",
                );
            }
            if c.ttl == Some(Duration::ZERO) {
                self.error(
                    cpath.key("ttl"),
                    "a zero ttl stores nothing; set enabled = false instead",
                );
            }
            for (j, name) in c.key_headers.iter().enumerate() {
                if http_header_name_problem(name) {
                    self.error(
                        cpath.key("key_headers").index(j),
                        format!("\"{name}\" is not a valid header name"),
                    );
                }
            }
            for (j, p) in c.ignore_params.iter().enumerate() {
                if p.trim().is_empty() || p.trim_end_matches('*').is_empty() {
                    self.error(
                        cpath.key("ignore_params").index(j),
                        "name a parameter (a trailing * matches a prefix)",
                    );
                }
            }
            for (j, cookie) in c.key_cookies.iter().enumerate() {
                if cookie.is_empty() || cookie.contains([';', '=', ' ']) {
                    self.error(
                        cpath.key("key_cookies").index(j),
                        format!("\"{cookie}\" is not a cookie name"),
                    );
                }
            }
        }
    }

    fn rate_limits(&mut self, site: &SiteConfig, site_path: &FieldPath) {
        let mut names = HashMap::new();
        for (i, limit) in site.rate_limits.iter().enumerate() {
            let path = site_path.key("rate_limit").index(i);
            self.name(path.key("name"), &limit.name, "rate_limit", &mut names, i);
            if !limit
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            {
                self.error(
                    path.key("name"),
                    "use letters, digits, '-', '_', '.' or ':' (it is sent in RateLimit headers)",
                );
            }
            if let Some(problem) = rate_key_problem(&limit.key) {
                self.error(path.key("key"), problem);
            }
            if limit.rate == 0 {
                self.error(
                    path.key("rate"),
                    "must be at least 1 (remove the limit to allow everything)",
                );
            }
            self.duration(path.key("per"), limit.per, true);
            // RateLimit-Policy advertises the window in whole seconds; a year bounds the bucket
            // arithmetic (period x burst must fit in 64-bit nanoseconds).
            if limit.per.subsec_nanos() != 0 || limit.per > Duration::from_secs(365 * 24 * 3600) {
                self.error(
                    path.key("per"),
                    "must be a whole number of seconds, at most a year (\"8760h\")",
                );
            } else if limit.rate > 0 {
                let period_ns = limit.per.as_nanos() / u128::from(limit.rate);
                let burst = u128::from(limit.burst.unwrap_or(limit.rate).max(1));
                if period_ns * burst > u128::from(u64::MAX) {
                    self.error(
                        path.key("burst"),
                        "burst x (per / rate) exceeds what the limiter can count; lower burst",
                    );
                }
            }
            if limit.burst == Some(0) {
                self.error(path.key("burst"), "must be at least 1");
            }
            if let Some(prefix) = &limit.path_prefix {
                if !prefix.starts_with('/') {
                    self.error(
                        path.key("path_prefix"),
                        format!("\"{prefix}\" must start with '/'"),
                    );
                }
            }
            if !(8..=32).contains(&limit.ipv4_prefix) {
                self.error(path.key("ipv4_prefix"), "must be between 8 and 32");
            }
            if !(16..=128).contains(&limit.ipv6_prefix) {
                self.error(path.key("ipv6_prefix"), "must be between 16 and 128");
            }
            if limit.max_keys == 0 {
                self.error(path.key("max_keys"), "must be at least 1");
            }
        }
    }

    fn waf_rules(&mut self, site: &SiteConfig, site_path: &FieldPath) {
        let mut ids = HashMap::new();
        for (i, rule) in site.waf_rules.iter().enumerate() {
            let path = site_path.key("waf_rule").index(i);
            self.name(path.key("id"), &rule.id, "waf_rule", &mut ids, i);
            if !(400..=599).contains(&rule.status) {
                self.error(path.key("status"), "a block answers with a 4xx or 5xx status");
            }
            if rule.conditions.is_empty() {
                self.error(
                    path.key("id"),
                    "a rule needs at least one [[site.waf_rule.match]]",
                );
            }
            for (j, cond) in rule.conditions.iter().enumerate() {
                let cpath = path.key("match").index(j);
                if let Some(problem) = waf_target_problem(&cond.target) {
                    self.error(cpath.key("target"), problem);
                }
                const OPERATORS: [&str; 8] =
                    ["equals", "prefix", "contains", "regex", "cidr", "gt", "lt", "eq"];
                if !OPERATORS.contains(&cond.operator.as_str()) {
                    self.error(
                        cpath.key("operator"),
                        format!(
                            "unknown operator \"{}\"; use one of {}",
                            cond.operator,
                            OPERATORS.join(", ")
                        ),
                    );
                }
                if cond.values.is_empty() {
                    self.error(cpath.key("values"), "at least one value");
                }
                for (k, value) in cond.values.iter().enumerate() {
                    let vpath = cpath.key("values").index(k);
                    let problem = match cond.operator.as_str() {
                        "regex" => regex::Regex::new(value).err().map(|e| {
                            format!("invalid regex: {}", e.to_string().lines().last().unwrap_or(""))
                        }),
                        "cidr"
                            if value.parse::<ipnet::IpNet>().is_err() && value.parse::<IpAddr>().is_err() =>
                        {
                            Some(format!("\"{value}\" is not an address or CIDR network"))
                        }
                        "gt" | "lt" | "eq" if value.parse::<f64>().is_err() => {
                            Some(format!("\"{value}\" is not a number"))
                        }
                        _ => None,
                    };
                    if let Some(problem) = problem {
                        self.error(vpath, problem);
                    }
                }
                const TRANSFORMS: [&str; 6] = [
                    "url_decode",
                    "url_decode_repeat",
                    "lowercase",
                    "normalize_whitespace",
                    "remove_comments",
                    "html_entity_decode",
                ];
                for (k, t) in cond.transforms.iter().enumerate() {
                    if !TRANSFORMS.contains(&t.as_str()) {
                        self.error(
                            cpath.key("transforms").index(k),
                            format!("unknown transform \"{t}\"; use one of {}", TRANSFORMS.join(", ")),
                        );
                    }
                }
            }
        }
    }

    fn pools(&mut self, config: &Config) {
        let mut names = HashMap::new();
        for (i, pool) in config.pools.iter().enumerate() {
            let path = FieldPath::root().key("pool").index(i);
            self.name(path.key("name"), &pool.name, "pool", &mut names, i);
            if let Some(problem) = hash_key_problem(&pool.hash_key) {
                self.error(path.key("hash_key"), problem);
            }
            self.duration(path.key("connect_timeout"), pool.connect_timeout, true);
            self.duration(
                path.key("response_header_timeout"),
                pool.response_header_timeout,
                true,
            );
            self.duration(path.key("request_timeout"), pool.request_timeout, true);
            // Zero idle timeout is meaningful: do not keep upstream connections.
            self.duration(path.key("idle_timeout"), pool.idle_timeout, false);
            let ratio = pool.retry.budget_ratio;
            if !(0.0..=1.0).contains(&ratio) {
                self.error(
                    path.key("retry").key("budget_ratio"),
                    format!("must be between 0.0 and 1.0, got {ratio}"),
                );
            }
            for (j, status) in pool.retry.on_status.iter().enumerate() {
                if !(500..=599).contains(status) {
                    self.error(
                        path.key("retry").key("on_status").index(j),
                        format!("only 5xx statuses can be retried, got {status}"),
                    );
                }
            }
            if let Some(health) = &pool.health_check {
                self.health_check(health, &path.key("health_check"));
            }
            self.outlier(&pool.outlier, &path.key("outlier"));
            if let Some(tls) = &pool.tls {
                self.upstream_tls(tls, &path.key("tls"));
            }
            self.origins(pool, &path);
        }
    }

    fn health_check(&mut self, health: &HealthCheckConfig, path: &FieldPath) {
        if !health.path.starts_with('/') {
            self.error(
                path.key("path"),
                format!("must start with '/', got \"{}\"", health.path),
            );
        } else if health.path.parse::<http::uri::PathAndQuery>().is_err() {
            self.error(
                path.key("path"),
                format!("\"{}\" is not a valid request path", health.path),
            );
        }
        if health.expect_status != 0 && !(100..=599).contains(&health.expect_status) {
            self.error(
                path.key("expect_status"),
                format!(
                    "must be 0 (any 2xx or 3xx) or a status code from 100 to 599, got {}",
                    health.expect_status
                ),
            );
        }
        self.duration(path.key("interval"), health.interval, true);
        self.duration(path.key("timeout"), health.timeout, true);
        if health.timeout > health.interval {
            self.error(
                path.key("timeout"),
                format!(
                    "timeout ({}) must not exceed interval ({})",
                    show(health.timeout),
                    show(health.interval)
                ),
            );
        }
        if health.rise == 0 {
            self.error(path.key("rise"), "must be at least 1");
        }
        if health.fall == 0 {
            self.error(path.key("fall"), "must be at least 1");
        }
        if let Some(host) = &health.host {
            if host.parse::<http::uri::Authority>().is_err() {
                self.error(
                    path.key("host"),
                    format!("\"{host}\" is not a valid Host header value"),
                );
            }
        }
    }

    fn outlier(&mut self, outlier: &OutlierConfig, path: &FieldPath) {
        self.duration(
            path.key("base_ejection"),
            outlier.base_ejection,
            outlier.consecutive_failures > 0,
        );
        self.duration(path.key("max_ejection"), outlier.max_ejection, false);
        if outlier.base_ejection > outlier.max_ejection {
            self.error(
                path.key("base_ejection"),
                format!(
                    "base_ejection ({}) must not exceed max_ejection ({})",
                    show(outlier.base_ejection),
                    show(outlier.max_ejection)
                ),
            );
        }
    }

    fn upstream_tls(&mut self, tls: &UpstreamTls, path: &FieldPath) {
        for (key, file) in [
            ("ca", &tls.ca),
            ("client_cert", &tls.client_cert),
            ("client_key", &tls.client_key),
        ] {
            if file.as_deref().is_some_and(|file| file.as_os_str().is_empty()) {
                self.error(path.key(key), "must not be empty; leave it out instead");
            }
        }
        match (&tls.client_cert, &tls.client_key) {
            (Some(_), None) => self.error_at(
                path.key("client_key"),
                path.key("client_cert"),
                "client_cert is set but client_key is not; mTLS needs both",
            ),
            (None, Some(_)) => self.error_at(
                path.key("client_cert"),
                path.key("client_key"),
                "client_key is set but client_cert is not; mTLS needs both",
            ),
            _ => {}
        }
        if let Some(name) = &tls.server_name {
            if name.parse::<IpAddr>().is_err() {
                if let Some(problem) = dns_name_problem(name) {
                    self.error(
                        path.key("server_name"),
                        format!("invalid server name \"{name}\": {problem}"),
                    );
                }
            }
        }
    }

    fn origins(&mut self, pool: &PoolConfig, pool_path: &FieldPath) {
        let path = pool_path.key("origin");
        if pool.origins.is_empty() {
            self.error_at(
                path,
                pool_path.clone(),
                "a pool needs at least one [[pool.origin]]",
            );
            return;
        }
        if pool.origins.iter().all(|origin| origin.backup) {
            self.error(
                path.clone(),
                "every origin is a backup; at least one needs backup = false",
            );
        }
        // Normalized (scheme, host, port) -> index, so `http://a` and `http://a:80/` collide.
        let mut seen: HashMap<(String, String, u16), usize> = HashMap::new();
        for (j, origin) in pool.origins.iter().enumerate() {
            let origin_path = path.index(j);
            match origin_identity(&origin.url) {
                Err(problem) => self.error(
                    origin_path.key("url"),
                    format!("invalid URL \"{}\": {problem}", origin.url),
                ),
                Ok(identity) => {
                    if let Some(first) = seen.get(&identity) {
                        self.error(
                            origin_path.key("url"),
                            format!(
                                "origin {} is listed twice in pool \"{}\" (also origin[{first}])",
                                origin.url, pool.name
                            ),
                        );
                    } else {
                        seen.insert(identity, j);
                    }
                }
            }
            if origin.weight == 0 {
                self.error(origin_path.key("weight"), "must be at least 1");
            }
        }
    }
}

fn show(duration: Duration) -> String {
    format_duration(duration).unwrap_or_else(|| format!("{duration:?}"))
}

/// "defined pools: web, api", or a hint that there are none at all.
fn defined(plural: &str, table: &str, names: &[&str]) -> String {
    if names.is_empty() {
        format!("no [[{table}]] is defined")
    } else {
        format!("defined {plural}: {}", names.join(", "))
    }
}

/// How `a` clashes with `b` when both are bound, if it does. Port 0 asks the OS for a free port,
/// so it never clashes; an unspecified address (`0.0.0.0`, `[::]`) clashes with any address of
/// its family on the same port.
fn address_conflict(a: SocketAddr, b: SocketAddr) -> Option<&'static str> {
    if a.port() == 0 || a.port() != b.port() {
        return None;
    }
    if a.ip() == b.ip() {
        Some("is already used by")
    } else if a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified()) {
        Some("overlaps")
    } else {
        None
    }
}

/// Why `host` is not a site host pattern: a DNS name, `*.` followed by one, or `*`.
pub(crate) fn host_pattern_problem(host: &str) -> Option<String> {
    if host == "*" {
        return None;
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains('*') {
        return Some(
            "wildcards are only allowed as a leading `*.` label (like *.example.com) or as \"*\" alone"
                .to_owned(),
        );
    }
    dns_name_problem(name)
}

/// Why `name` is not a DNS name (letters, digits, '-' and '.', case-insensitive).
pub(crate) fn dns_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("empty host name".to_owned());
    }
    if name.contains(':') {
        return Some("must not include a port or be an IPv6 address".to_owned());
    }
    if name.len() > 253 {
        return Some("longer than 253 characters".to_owned());
    }
    if name.ends_with('.') {
        return Some("must not end with '.'".to_owned());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Some("has an empty label (\"..\" or a leading '.')".to_owned());
        }
        if label.len() > 63 {
            return Some(format!("label \"{label}\" is longer than 63 characters"));
        }
        if let Some(bad) = label.chars().find(|c| !c.is_ascii_alphanumeric() && *c != '-') {
            return Some(format!(
                "'{bad}' is not allowed; use letters, digits, '-' and '.'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!("label \"{label}\" must not start or end with '-'"));
        }
    }
    None
}

fn waf_target_problem(target: &str) -> Option<String> {
    const WHOLE: [&str; 9] = [
        "method",
        "path",
        "query",
        "args",
        "headers",
        "cookies",
        "client_ip",
        "body",
        "body_args",
    ];
    if WHOLE.contains(&target) {
        return None;
    }
    for prefix in ["arg:", "header:", "cookie:", "body_arg:"] {
        if let Some(name) = target.strip_prefix(prefix) {
            return name
                .is_empty()
                .then(|| format!("\"{target}\" needs a name after the colon"));
        }
    }
    Some(format!(
        "unknown target \"{target}\"; use {}, arg:NAME, header:NAME, cookie:NAME or body_arg:NAME",
        WHOLE.join(", ")
    ))
}

fn rate_key_problem(key: &str) -> Option<String> {
    const ALLOWED: &str = "use \"client_ip\", \"ip_prefix\", \"site\", \"header:NAME\" or \"cookie:NAME\"";
    match key {
        "client_ip" | "ip_prefix" | "site" => None,
        _ => {
            if let Some(name) = key.strip_prefix("header:") {
                return http::HeaderName::from_bytes(name.as_bytes())
                    .is_err()
                    .then(|| format!("invalid header name \"{name}\" in key \"{key}\""));
            }
            if let Some(name) = key.strip_prefix("cookie:") {
                let ok = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
                return (!ok).then(|| format!("invalid cookie name \"{name}\" in key \"{key}\""));
            }
            Some(format!("unknown key \"{key}\"; {ALLOWED}"))
        }
    }
}

fn hash_key_problem(key: &str) -> Option<String> {
    const ALLOWED: &str = "use \"path\", \"uri\", \"host\", \"client_ip\" or \"header:NAME\"";
    match key {
        "path" | "uri" | "host" | "client_ip" => None,
        _ => match key.strip_prefix("header:") {
            Some(name) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => None,
            Some(name) => Some(format!("invalid header name \"{name}\" in hash_key \"{key}\"")),
            None => Some(format!("unknown hash_key \"{key}\"; {ALLOWED}")),
        },
    }
}

/// Checks an origin URL and returns what makes two origins the same: scheme, lower-cased host
/// and port (explicit or the scheme's default).
fn origin_identity(url: &str) -> Result<(String, String, u16), String> {
    // `http::Uri` silently drops fragments, so look for one before parsing.
    if url.contains('#') {
        return Err("origin URLs cannot have a fragment".to_owned());
    }
    let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let Some(scheme) = uri.scheme_str() else {
        return Err("missing scheme; write http://HOST:PORT or https://HOST:PORT".to_owned());
    };
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        other => return Err(format!("unsupported scheme `{other}`; use http or https")),
    };
    let Some(authority) = uri.authority() else {
        return Err("missing host".to_owned());
    };
    if authority.as_str().contains('@') {
        return Err("user info is not allowed in an origin URL".to_owned());
    }
    if authority.host().is_empty() {
        return Err("missing host".to_owned());
    }
    if !matches!(uri.path(), "" | "/") {
        return Err(format!(
            "origin URLs cannot have a path (got \"{}\"); sites route by host",
            uri.path()
        ));
    }
    if uri.query().is_some() {
        return Err("origin URLs cannot have a query".to_owned());
    }
    let port = authority.port_u16().unwrap_or(default_port);
    if port == 0 {
        return Err("port 0 is not a valid origin port".to_owned());
    }
    Ok((scheme.to_owned(), authority.host().to_ascii_lowercase(), port))
}

/// RFC 9110 token characters, lower-case or not.
fn http_header_name_problem(name: &str) -> bool {
    name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        for ok in [
            "*",
            "example.com",
            "*.example.com",
            "a-b.example.com",
            "Example.COM",
            "localhost",
            "10.0.0.1",
        ] {
            assert_eq!(host_pattern_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "*.*.example.com",
            "a.*.com",
            "*example.com",
            "ex ample.com",
            "example.com:80",
            "-a.com",
        ] {
            assert!(host_pattern_problem(bad).is_some(), "{bad}");
        }
        assert!(host_pattern_problem("a..com").is_some());
        assert!(host_pattern_problem("example.com.").is_some());
        assert!(host_pattern_problem(&"a".repeat(64)).is_some());
    }

    #[test]
    fn origin_urls() {
        assert!(origin_identity("http://127.0.0.1:9000").is_ok());
        assert!(origin_identity("https://origin.example.com/").is_ok());
        assert_eq!(
            origin_identity("http://A.com"),
            origin_identity("http://a.com:80/")
        );
        assert!(origin_identity("127.0.0.1:9000")
            .unwrap_err()
            .contains("missing scheme"));
        assert!(origin_identity("ftp://a.com")
            .unwrap_err()
            .contains("unsupported scheme `ftp`"));
        assert!(origin_identity("http://a.com/api").unwrap_err().contains("path"));
        assert!(origin_identity("http://a.com/?x=1")
            .unwrap_err()
            .contains("query"));
        assert!(origin_identity("http://user:pw@a.com")
            .unwrap_err()
            .contains("user info"));
        assert!(origin_identity("http://a.com/#x")
            .unwrap_err()
            .contains("fragment"));
        assert!(origin_identity("http://a.com:0").unwrap_err().contains("port 0"));
        assert!(origin_identity("not a url").is_err());
    }

    #[test]
    fn hash_keys() {
        for ok in ["path", "uri", "host", "client_ip", "header:x-user-id"] {
            assert_eq!(hash_key_problem(ok), None, "{ok}");
        }
        assert!(hash_key_problem("cookie").unwrap().contains("unknown hash_key"));
        assert!(hash_key_problem("header:")
            .unwrap()
            .contains("invalid header name"));
        assert!(hash_key_problem("header:a b")
            .unwrap()
            .contains("invalid header name"));
    }

    #[test]
    fn address_conflicts() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            address_conflict(addr("127.0.0.1:80"), addr("127.0.0.1:80")),
            Some("is already used by")
        );
        assert_eq!(
            address_conflict(addr("0.0.0.0:80"), addr("127.0.0.1:80")),
            Some("overlaps")
        );
        assert_eq!(address_conflict(addr("127.0.0.1:80"), addr("127.0.0.1:81")), None);
        assert_eq!(address_conflict(addr("127.0.0.1:0"), addr("127.0.0.1:0")), None);
        assert_eq!(address_conflict(addr("[::]:80"), addr("127.0.0.1:80")), None);
    }
}
