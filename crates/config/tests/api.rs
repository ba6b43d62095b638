//! The programmatic side: quick start, `from_config`, and the config hash.

use std::net::SocketAddr;
use std::time::Duration;

use outpost_config::{from_config, parse_str, quick_start};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn quick_start_validates() {
    let config = quick_start(
        addr("127.0.0.1:8080"),
        "http://127.0.0.1:9000",
        Some(addr("127.0.0.1:9901")),
    );
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(config.listeners[0].name, "main");
    assert_eq!(config.listeners[0].address, addr("127.0.0.1:8080"));
    assert!(config.listeners[0].tls.is_none());
    assert_eq!(config.sites[0].name, "default");
    assert_eq!(config.sites[0].hosts, ["*"]);
    assert_eq!(config.sites[0].pool, "default");
    assert_eq!(config.pools[0].name, "default");
    assert_eq!(config.pools[0].origins.len(), 1);
    assert_eq!(config.pools[0].origins[0].url, "http://127.0.0.1:9000");
    assert_eq!(config.pools[0].origins[0].weight, 1);
    assert_eq!(config.admin.listen, Some(addr("127.0.0.1:9901")));
    let loaded = from_config(config, "<command line>").unwrap();
    assert_eq!(loaded.source, "<command line>");

    let no_admin = quick_start(addr("127.0.0.1:8080"), "http://127.0.0.1:9000", None);
    assert_eq!(no_admin.admin.listen, None);
    from_config(no_admin, "<command line>").unwrap();
}

#[test]
fn quick_start_matches_the_equivalent_file() {
    let text = r#"
[admin]
listen = "127.0.0.1:9901"

[[listener]]
name = "main"
address = "127.0.0.1:8080"

[[site]]
name = "default"
hosts = ["*"]
pool = "default"

[[pool]]
name = "default"
[[pool.origin]]
url = "http://127.0.0.1:9000"
"#;
    let from_file = parse_str(text, "edge.toml", None).unwrap();
    let config = quick_start(
        addr("127.0.0.1:8080"),
        "http://127.0.0.1:9000",
        Some(addr("127.0.0.1:9901")),
    );
    let from_code = from_config(config, "<command line>").unwrap();
    assert_eq!(from_file.config, from_code.config);
    assert_eq!(from_file.hash, from_code.hash);
}

#[test]
fn programmatic_errors_have_fields_but_no_lines() {
    let config = quick_start(addr("127.0.0.1:8080"), "ftp://origin", Some(addr("0.0.0.0:9901")));
    let errors = from_config(config, "<command line>").unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["admin.token", "pool[0].origin[0].url"]);
    for error in &errors {
        assert_eq!(
            (error.file.as_str(), error.line, error.column),
            ("<command line>", None, None)
        );
    }
    assert!(errors
        .to_string()
        .starts_with("<command line>: admin.token: admin listener on a non-loopback"));
}

#[test]
fn sub_millisecond_durations_are_rejected() {
    let mut config = quick_start(addr("127.0.0.1:8080"), "http://127.0.0.1:9000", None);
    config.timeouts.header = Duration::from_micros(1500);
    let errors = from_config(config, "<test>").unwrap_err();
    assert_eq!(errors.0[0].field, "timeouts.header");
    assert!(errors.0[0].reason.contains("sub-millisecond"));
}

#[test]
fn hash_is_canonical() {
    let a = r#"
[[listener]]
name = "main"
address = "127.0.0.1:8080"

[[site]]
name = "web"
hosts = ["*"]
pool = "web"

[[pool]]
name = "web"
[[pool.origin]]
url = "http://127.0.0.1:9000"
"#;
    // Same config: different layout, comments, key order, inline tables and explicit defaults.
    let b = r#"
# a comment
pool = [{ name = "web", balance = "round_robin", origin = [{ weight = 1, url = "http://127.0.0.1:9000" }] }]

[[site]]
pool = "web"
hosts = [ "*" ]
name = "web"

[timeouts]
header = "10s"

[[listener]]
address = "127.0.0.1:8080"
name = "main"
"#;
    let a = parse_str(a, "a.toml", None).unwrap();
    let b = parse_str(b, "b.toml", None).unwrap();
    assert_eq!(a.config, b.config);
    assert_eq!(a.hash, b.hash);
    assert_eq!(a.hash.len(), 64);
    assert!(a
        .hash
        .bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));

    let mut changed = a.config.clone();
    changed.pools[0].origins[0].weight = 2;
    let changed = from_config(changed, "<test>").unwrap();
    assert_ne!(changed.hash, a.hash);
    assert_eq!(from_config(a.config.clone(), "<test>").unwrap().hash, a.hash);
}
