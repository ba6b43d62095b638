//! One test per semantic rule: each asserts the field path and the line the error points at.
//!
//! The expected line is the one marked `# <-` in the test's text, so the tests do not break
//! when the base config grows.

use outpost_config::{parse_str, ConfigError};

/// A valid config. `pool_keys` go into the pool's own table; `extra` is appended at the end,
/// where bare keys land in the pool's origin and headers start new tables.
fn config(pool_keys: &str, extra: &str) -> String {
    format!(
        r#"[[listener]]
name = "main"
address = "127.0.0.1:8080"

[[site]]
name = "web"
hosts = ["example.com"]
pool = "web"

[[pool]]
name = "web"
{pool_keys}
[[pool.origin]]
url = "http://127.0.0.1:9000"
{extra}"#
    )
}

fn errors(text: &str) -> Vec<ConfigError> {
    match parse_str(text, "edge.toml", None) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(errors) => errors.0,
    }
}

/// Asserts there is an error for `field` whose reason contains `needle`, located on the line
/// marked `# <-` (or on no line when nothing is marked).
#[track_caller]
fn check(text: &str, field: &str, needle: &str) {
    let errors = errors(text);
    let listing = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let Some(error) = errors.iter().find(|e| e.field == field) else {
        panic!("no error for `{field}`; got:\n{listing}\nfor:\n{text}");
    };
    assert!(error.reason.contains(needle), "`{needle}` not in: {error}");
    let marked = text.lines().position(|line| line.contains("# <-")).map(|i| i + 1);
    assert_eq!(error.line, marked, "wrong line: {error}\nin:\n{text}");
    assert_eq!(error.column.is_some(), marked.is_some(), "{error}");
    assert_eq!(error.file, "edge.toml");
}

#[test]
fn base_config_is_valid() {
    parse_str(&config("", ""), "edge.toml", None).unwrap();
    // Zero where zero means something: unlimited body, immediate drain, no connection reuse.
    let text = config(
        "idle_timeout = \"0s\"\n",
        "[limits]\nmax_body_bytes = 0\n[timeouts]\ndrain = \"0s\"\n",
    );
    parse_str(&text, "edge.toml", None).unwrap();
}

#[test]
fn pop_id_must_be_non_empty_and_simple() {
    check(
        &config("", "[pop]\nid = \"\" # <-\n"),
        "pop.id",
        "must not be empty",
    );
    check(
        &config("", "[pop]\nid = \"dev 1\" # <-\n"),
        "pop.id",
        "invalid PoP id \"dev 1\"",
    );
}

#[test]
fn non_loopback_admin_needs_a_token() {
    let text = config("", "[admin]\nlisten = \"0.0.0.0:9901\" # <-\n");
    check(
        &text,
        "admin.token",
        "admin listener on a non-loopback address needs admin.token",
    );
    let with_token = config("", "[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"s3cret\"\n");
    parse_str(&with_token, "edge.toml", None).unwrap();
}

#[test]
fn admin_token_must_not_be_empty() {
    check(
        &config("", "[admin]\ntoken = \"\" # <-\n"),
        "admin.token",
        "must not be empty",
    );
}

#[test]
fn admin_listen_must_not_be_a_listener_address() {
    let text = config("", "[admin]\nlisten = \"127.0.0.1:8080\" # <-\n");
    check(&text, "admin.listen", "listener \"main\"");
}

#[test]
fn access_log_must_not_be_empty() {
    check(
        &config("", "[log]\naccess_log = \"\" # <-\n"),
        "log.access_log",
        "must not be empty",
    );
}

#[test]
fn limits_must_be_positive() {
    check(
        &config("", "[limits]\nmax_header_bytes = 0 # <-\n"),
        "limits.max_header_bytes",
        "greater than 0",
    );
    check(
        &config("", "[limits]\nmax_uri_bytes = 0 # <-\n"),
        "limits.max_uri_bytes",
        "greater than 0",
    );
}

#[test]
fn client_timeouts_must_be_positive() {
    for key in ["header", "idle", "tls_handshake"] {
        let text = config("", &format!("[timeouts]\n{key} = \"0s\" # <-\n"));
        check(&text, &format!("timeouts.{key}"), "greater than 0s");
    }
}

#[test]
fn pool_timeouts_must_be_positive() {
    for key in ["connect_timeout", "response_header_timeout", "request_timeout"] {
        let text = config(&format!("{key} = \"0s\" # <-\n"), "");
        check(&text, &format!("pool[0].{key}"), "greater than 0s");
    }
}

#[test]
fn health_check_values() {
    let health = |body: &str| config("", &format!("[pool.health_check]\n{body}"));
    check(
        &health("interval = \"0s\" # <-\n"),
        "pool[0].health_check.interval",
        "greater than 0s",
    );
    check(
        &health("timeout = \"0s\" # <-\n"),
        "pool[0].health_check.timeout",
        "greater than 0s",
    );
    check(
        &health("interval = \"1s\"\ntimeout = \"2s\" # <-\n"),
        "pool[0].health_check.timeout",
        "timeout (2s) must not exceed interval (1s)",
    );
    check(
        &health("rise = 0 # <-\n"),
        "pool[0].health_check.rise",
        "at least 1",
    );
    check(
        &health("fall = 0 # <-\n"),
        "pool[0].health_check.fall",
        "at least 1",
    );
    check(
        &health("path = \"healthz\" # <-\n"),
        "pool[0].health_check.path",
        "must start with '/'",
    );
    check(
        &health("expect_status = 600 # <-\n"),
        "pool[0].health_check.expect_status",
        "100 to 599",
    );
    check(
        &health("expect_status = 42 # <-\n"),
        "pool[0].health_check.expect_status",
        "100 to 599",
    );
    parse_str(&health("expect_status = 204\n"), "edge.toml", None).unwrap();
}

#[test]
fn outlier_base_ejection_must_not_exceed_max() {
    let text = config(
        "",
        "[pool.outlier]\nbase_ejection = \"10m\" # <-\nmax_ejection = \"5m\"\n",
    );
    check(
        &text,
        "pool[0].outlier.base_ejection",
        "must not exceed max_ejection (5m)",
    );
}

#[test]
fn at_least_one_listener() {
    let text = "[[site]]\nname = \"web\"\nhosts = [\"*\"]\npool = \"web\"\n\
                [[pool]]\nname = \"web\"\n[[pool.origin]]\nurl = \"http://127.0.0.1:9000\"\n";
    check(text, "listener", "at least one [[listener]] is required");
}

#[test]
fn listener_names_are_unique_and_non_empty() {
    let text = config(
        "",
        "[[listener]]\nname = \"main\" # <-\naddress = \"127.0.0.1:8081\"\n",
    );
    check(
        &text,
        "listener[1].name",
        "duplicate listener name \"main\" (also listener[0])",
    );
    let text = config(
        "",
        "[[listener]]\nname = \"\" # <-\naddress = \"127.0.0.1:8081\"\n",
    );
    check(&text, "listener[1].name", "must not be empty");
}

#[test]
fn listener_addresses_are_unique() {
    let text = config(
        "",
        "[[listener]]\nname = \"two\"\naddress = \"127.0.0.1:8080\" # <-\n",
    );
    check(
        &text,
        "listener[1].address",
        "127.0.0.1:8080 is already used by listener \"main\"",
    );
    let text = config(
        "",
        "[[listener]]\nname = \"all\"\naddress = \"0.0.0.0:8080\" # <-\n",
    );
    check(&text, "listener[1].address", "overlaps listener \"main\"");
}

#[test]
fn tls_listener_needs_a_certificate() {
    let text = config(
        "",
        "[[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:8443\"\n[listener.tls] # <-\n",
    );
    check(
        &text,
        "listener[1].tls",
        "a TLS listener needs at least one [[certificate]]",
    );
}

#[test]
fn default_certificate_must_exist() {
    let text = config(
        "",
        "[[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:8443\"\n\
         [listener.tls]\ndefault_certificate = \"nope\" # <-\n\
         [[certificate]]\nname = \"main\"\ncert = \"c.pem\"\nkey = \"c.key\"\n",
    );
    check(
        &text,
        "listener[1].tls.default_certificate",
        "unknown certificate \"nope\"; defined certificates: main",
    );
}

#[test]
fn certificate_fields() {
    let cert = |body: &str| config("", &format!("[[certificate]]\n{body}"));
    check(
        &cert("name = \"a\"\ncert = \"\" # <-\nkey = \"k\"\n"),
        "certificate[0].cert",
        "must not be empty",
    );
    check(
        &cert("name = \"a\"\ncert = \"c\"\nkey = \"\" # <-\n"),
        "certificate[0].key",
        "must not be empty",
    );
    check(
        &cert("name = \"\" # <-\ncert = \"c\"\nkey = \"k\"\n"),
        "certificate[0].name",
        "must not be empty",
    );
    check(
        &cert(
            "name = \"a\"\ncert = \"c\"\nkey = \"k\"\nnames = [\"ok.example.com\", \"bad_name.com\"] # <-\n",
        ),
        "certificate[0].names[1]",
        "invalid server name \"bad_name.com\"",
    );
    check(
        &cert("name = \"a\"\ncert = \"c\"\nkey = \"k\"\nnames = [\"a.*.com\"] # <-\n"),
        "certificate[0].names[0]",
        "wildcards are only allowed",
    );
    let two = cert("name = \"a\"\ncert = \"c\"\nkey = \"k\"\n[[certificate]]\nname = \"a\" # <-\ncert = \"c\"\nkey = \"k\"\n");
    check(&two, "certificate[1].name", "duplicate certificate name \"a\"");
    parse_str(
        &cert("name = \"a\"\ncert = \"c\"\nkey = \"k\"\nnames = [\"*.example.com\"]\n"),
        "edge.toml",
        None,
    )
    .unwrap();
}

#[test]
fn site_hosts_must_be_non_empty_and_valid() {
    let site = |hosts: &str| {
        config(
            "",
            &format!("[[site]]\nname = \"other\"\nhosts = {hosts} # <-\npool = \"web\"\n"),
        )
    };
    check(&site("[]"), "site[1].hosts", "at least one host");
    check(
        &site("[\"ok.com\", \"not ok.com\"]"),
        "site[1].hosts[1]",
        "invalid host \"not ok.com\"",
    );
    check(
        &site("[\"*.*.example.com\"]"),
        "site[1].hosts[0]",
        "leading `*.` label",
    );
    check(
        &site("[\"api*.example.com\"]"),
        "site[1].hosts[0]",
        "leading `*.` label",
    );
    check(&site("[\"example.com:8080\"]"), "site[1].hosts[0]", "port");
    check(
        &site("[\"a.com\", \"A.com\"]"),
        "site[1].hosts[1]",
        "host \"a.com\" is listed twice",
    );
    parse_str(
        &site("[\"*.example.com\", \"Other.Example.org\"]"),
        "edge.toml",
        None,
    )
    .unwrap();
}

#[test]
fn a_host_belongs_to_one_site() {
    let text = config(
        "",
        "[[site]]\nname = \"other\"\nhosts = [\"EXAMPLE.com\"] # <-\npool = \"web\"\n",
    );
    check(
        &text,
        "site[1].hosts[0]",
        "host \"example.com\" is already served by site \"web\"",
    );
}

#[test]
fn site_pool_must_exist() {
    let text = config(
        "",
        "[[site]]\nname = \"other\"\nhosts = [\"b.com\"]\npool = \"web2\" # <-\n",
    );
    check(&text, "site[1].pool", "unknown pool \"web2\"; defined pools: web");
}

#[test]
fn site_listeners_must_exist() {
    let text = config(
        "",
        "[[site]]\nname = \"other\"\nhosts = [\"b.com\"]\npool = \"web\"\nlisteners = [\"main\", \"tls\"] # <-\n",
    );
    check(
        &text,
        "site[1].listeners[1]",
        "unknown listener \"tls\"; defined listeners: main",
    );
}

#[test]
fn site_and_pool_names_are_unique() {
    let text = config(
        "",
        "[[site]]\nname = \"web\" # <-\nhosts = [\"b.com\"]\npool = \"web\"\n",
    );
    check(
        &text,
        "site[1].name",
        "duplicate site name \"web\" (also site[0])",
    );
    let text = config(
        "",
        "[[pool]]\nname = \"web\" # <-\n[[pool.origin]]\nurl = \"http://127.0.0.1:9001\"\n",
    );
    check(
        &text,
        "pool[1].name",
        "duplicate pool name \"web\" (also pool[0])",
    );
}

#[test]
fn pool_needs_an_origin() {
    let text = config("", "[[pool]] # <-\nname = \"empty\"\n");
    check(&text, "pool[1].origin", "at least one [[pool.origin]]");
}

#[test]
fn pool_needs_a_primary_origin() {
    let text = config(
        "",
        "[[pool]]\nname = \"backups\"\n[[pool.origin]] # <-\nurl = \"http://10.0.0.1\"\nbackup = true\n\
         [[pool.origin]]\nurl = \"http://10.0.0.2\"\nbackup = true\n",
    );
    check(&text, "pool[1].origin", "every origin is a backup");
}

#[test]
fn origin_urls_are_checked() {
    let origin = |url: &str| config("", &format!("[[pool.origin]]\nurl = \"{url}\" # <-\n"));
    check(
        &origin("ftp://10.0.0.1"),
        "pool[0].origin[1].url",
        "unsupported scheme `ftp`",
    );
    check(&origin("10.0.0.1:80"), "pool[0].origin[1].url", "missing scheme");
    check(
        &origin("http://10.0.0.1/api"),
        "pool[0].origin[1].url",
        "cannot have a path",
    );
    check(
        &origin("http://10.0.0.1/?a=b"),
        "pool[0].origin[1].url",
        "cannot have a query",
    );
    check(
        &origin("http://user:pw@10.0.0.1"),
        "pool[0].origin[1].url",
        "user info",
    );
    check(&origin("http://"), "pool[0].origin[1].url", "invalid URL");
    parse_str(&origin("https://origin.example.com:8443/"), "edge.toml", None).unwrap();
}

#[test]
fn origin_urls_are_unique_within_a_pool() {
    let text = config("", "[[pool.origin]]\nurl = \"http://127.0.0.1:9000/\" # <-\n");
    check(
        &text,
        "pool[0].origin[1].url",
        "listed twice in pool \"web\" (also origin[0])",
    );
}

#[test]
fn origin_weight_is_at_least_one() {
    check(
        &config("", "weight = 0 # <-\n"),
        "pool[0].origin[0].weight",
        "at least 1",
    );
}

#[test]
fn hash_key_is_known() {
    let text = config("balance = \"consistent_hash\"\nhash_key = \"cookie\" # <-\n", "");
    check(
        &text,
        "pool[0].hash_key",
        "unknown hash_key \"cookie\"; use \"path\"",
    );
    let text = config("hash_key = \"header:bad header\" # <-\n", "");
    check(&text, "pool[0].hash_key", "invalid header name \"bad header\"");
    parse_str(&config("hash_key = \"header:X-User\"\n", ""), "edge.toml", None).unwrap();
}

#[test]
fn retry_budget_ratio_is_a_fraction() {
    let text = config("", "[pool.retry]\nbudget_ratio = 1.5 # <-\n");
    check(
        &text,
        "pool[0].retry.budget_ratio",
        "between 0.0 and 1.0, got 1.5",
    );
}

#[test]
fn mtls_needs_cert_and_key() {
    let text = config("", "[pool.tls]\nclient_cert = \"c.pem\" # <-\n");
    check(
        &text,
        "pool[0].tls.client_key",
        "client_cert is set but client_key is not",
    );
    let text = config("", "[pool.tls]\nclient_key = \"c.key\" # <-\n");
    check(
        &text,
        "pool[0].tls.client_cert",
        "client_key is set but client_cert is not",
    );
    // https origins work with or without a tls table.
    parse_str(
        &config("", "[[pool.origin]]\nurl = \"https://10.0.0.1\"\n"),
        "edge.toml",
        None,
    )
    .unwrap();
    let both = config(
        "",
        "[pool.tls]\nclient_cert = \"c.pem\"\nclient_key = \"c.key\"\n",
    );
    parse_str(&both, "edge.toml", None).unwrap();
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let text = config("connect_timeout = \"0s\"\n", "weight = 0\n[pop]\nid = \"\"\n");
    let errors = errors(&text);
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["pool[0].connect_timeout", "pool[0].origin[0].weight", "pop.id"]
    );
    let lines: Vec<usize> = errors.iter().map(|e| e.line.unwrap()).collect();
    assert!(lines.windows(2).all(|w| w[0] < w[1]), "{lines:?}");
}

#[test]
fn inline_tables_are_located_too() {
    let text = r#"listener = [{ name = "main", address = "127.0.0.1:8080" }]
site = [{ name = "web", hosts = ["*"], pool = "web" }]

[[pool]]
name = "web"
origin = [
  { url = "http://10.0.0.1" },
  { url = "http://10.0.0.2", weight = 0 }, # <-
]
"#;
    check(text, "pool[0].origin[1].weight", "at least 1");
}

/// A site with one rate limit whose body is `limit_keys`.
fn rate_limited(limit_keys: &str) -> String {
    config("", "").replace(
        "pool = \"web\"\n\n[[pool]]",
        &format!("pool = \"web\"\n[[site.rate_limit]]\nname = \"l\"\n{limit_keys}\n\n[[pool]]"),
    )
}

#[test]
fn rate_limits_are_checked() {
    parse_str(
        &rate_limited("rate = 10\nkey = \"header:x-api-key\""),
        "edge.toml",
        None,
    )
    .unwrap();
    parse_str(
        &rate_limited("rate = 10\nkey = \"cookie:session\"\naction = \"log\""),
        "edge.toml",
        None,
    )
    .unwrap();
    check(
        &rate_limited("rate = 10\nkey = \"ip\" # <-"),
        "site[0].rate_limit[0].key",
        "unknown key \"ip\"",
    );
    check(
        &rate_limited("rate = 0 # <-"),
        "site[0].rate_limit[0].rate",
        "at least 1",
    );
    check(
        &rate_limited("rate = 5\nburst = 0 # <-"),
        "site[0].rate_limit[0].burst",
        "at least 1",
    );
    check(
        &rate_limited("rate = 5\nper = \"0s\" # <-"),
        "site[0].rate_limit[0].per",
        "greater than 0s",
    );
    check(
        &rate_limited("rate = 5\npath_prefix = \"api\" # <-"),
        "site[0].rate_limit[0].path_prefix",
        "start with '/'",
    );
    check(
        &rate_limited("rate = 5\nipv4_prefix = 4 # <-"),
        "site[0].rate_limit[0].ipv4_prefix",
        "between 8 and 32",
    );
    check(
        &rate_limited("rate = 5\n[[site.rate_limit]]\nname = \"l\" # <-\nrate = 1"),
        "site[0].rate_limit[1].name",
        "duplicate rate_limit name",
    );
}

#[test]
fn proxy_protocol_and_client_headers_need_trusted_proxies() {
    let text = config("", "").replace(
        "address = \"127.0.0.1:8080\"",
        "address = \"127.0.0.1:8080\"\nproxy_protocol = true # <-",
    );
    check(&text, "listener[0].proxy_protocol", "trusted_proxies");
    let text = format!(
        "[client_ip]\nheader = \"x-forwarded-for\" # <-\n{}",
        config("", "")
    );
    check(&text, "client_ip.header", "trusted_proxies");
    let text = format!(
        "[client_ip]\ntrusted_proxies = [\"10.0.0.0/33\"] # <-\n{}",
        config("", "")
    );
    let errors = errors(&text);
    assert!(
        errors[0].to_string().contains("client_ip.trusted_proxies"),
        "{}",
        errors[0]
    );
    let ok = format!("[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\"]\nheader = \"x-forwarded-for\"\n{}", config("", ""));
    parse_str(&ok, "edge.toml", None).unwrap();
}

#[test]
fn waf_rules_are_checked() {
    let with_rule = |body: &str| {
        config("", "").replace(
            "pool = \"web\"\n\n[[pool]]",
            &format!("pool = \"web\"\n[[site.waf_rule]]\nid = \"r\"\n{body}\n\n[[pool]]"),
        )
    };
    let good = "[[site.waf_rule.match]]\ntarget = \"arg:q\"\noperator = \"regex\"\nvalues = [\"(?i)union\\\\s+select\"]";
    parse_str(&with_rule(good), "edge.toml", None).unwrap();
    check(
        &with_rule("[[site.waf_rule.match]]\ntarget = \"arg:q\"\noperator = \"regex\"\nvalues = [\"(unclosed\"] # <-"),
        "site[0].waf_rule[0].match[0].values[0]",
        "invalid regex",
    );
    check(
        &with_rule(
            "[[site.waf_rule.match]]\ntarget = \"bodies\" # <-\noperator = \"contains\"\nvalues = [\"x\"]",
        ),
        "site[0].waf_rule[0].match[0].target",
        "unknown target",
    );
    check(
        &with_rule(
            "[[site.waf_rule.match]]\ntarget = \"body_arg:\" # <-\noperator = \"equals\"\nvalues = [\"x\"]",
        ),
        "site[0].waf_rule[0].match[0].target",
        "needs a name",
    );
    for target in ["body", "body_args", "body_arg:user.role"] {
        let rule = format!(
            "[[site.waf_rule.match]]\ntarget = \"{target}\"\noperator = \"contains\"\nvalues = [\"x\"]"
        );
        parse_str(&with_rule(&rule), "edge.toml", None).unwrap();
    }
    check(
        &with_rule("[[site.waf_rule.match]]\ntarget = \"path\"\noperator = \"like\" # <-\nvalues = [\"x\"]"),
        "site[0].waf_rule[0].match[0].operator",
        "unknown operator",
    );
    check(
        &with_rule("[[site.waf_rule.match]]\ntarget = \"client_ip\"\noperator = \"cidr\"\nvalues = [\"10.0.0.0/99\"] # <-"),
        "site[0].waf_rule[0].match[0].values[0]",
        "not an address",
    );
    check(
        &with_rule("status = 200 # <-\n[[site.waf_rule.match]]\ntarget = \"path\"\noperator = \"prefix\"\nvalues = [\"/\"]"),
        "site[0].waf_rule[0].status",
        "4xx or 5xx",
    );
}

#[test]
fn waf_body_settings_are_checked() {
    let with_waf = |body: &str| {
        config("", "").replace(
            "pool = \"web\"\n\n[[pool]]",
            &format!("pool = \"web\"\n[site.waf]\nmode = \"block\"\n{body}\n\n[[pool]]"),
        )
    };
    let ok = parse_str(
        &with_waf("body_limit = \"128KiB\"\nbody_oversize = \"block\""),
        "edge.toml",
        None,
    )
    .unwrap();
    assert_eq!(ok.config.sites[0].waf.body_limit, 128 * 1024);
    check(
        &with_waf("body_limit = \"0B\" # <-"),
        "site[0].waf.body_limit",
        "between 1B and 16MiB",
    );
    check(
        &with_waf("body_limit = \"1GiB\" # <-"),
        "site[0].waf.body_limit",
        "between 1B and 16MiB",
    );
    check(
        &with_waf("body_limit = \"64 parsecs\" # <-"),
        "site[0].waf.body_limit",
        "unknown unit",
    );
    check(
        &with_waf("body_oversize = \"drop\" # <-"),
        "site[0].waf.body_oversize",
        "unknown variant",
    );
}

#[test]
fn body_min_rate_is_checked() {
    let text = config("", "[timeouts]\nbody_min_rate = \"1KiB\" # <-\n");
    check(&text, "timeouts.body_min_rate", "bytes per second");
    let text = config("", "[timeouts]\nbody_rate_window = \"0s\" # <-\n");
    check(&text, "timeouts.body_rate_window", "greater than 0s");
    let ok = parse_str(
        &config("", "[timeouts]\nbody_min_rate = \"off\"\n"),
        "edge.toml",
        None,
    )
    .unwrap();
    assert_eq!(ok.config.timeouts.body_min_rate, 0);
}

#[test]
fn rate_limit_windows_and_names_fit_the_headers() {
    check(
        &rate_limited("rate = 5\nper = \"1500ms\" # <-"),
        "site[0].rate_limit[0].per",
        "whole number of seconds",
    );
    check(
        &rate_limited("rate = 5\nper = \"9000h\" # <-"),
        "site[0].rate_limit[0].per",
        "at most a year",
    );
    check(
        &rate_limited("rate = 1\nper = \"8760h\"\nburst = 4000000000 # <-"),
        "site[0].rate_limit[0].burst",
        "lower burst",
    );
    let named = config("", "").replace(
        "pool = \"web\"\n\n[[pool]]",
        "pool = \"web\"\n[[site.rate_limit]]\nname = \"a \\\"b\\\"\" # <-\nrate = 1\n\n[[pool]]",
    );
    check(&named, "site[0].rate_limit[0].name", "letters, digits");
}
