//! Syntax and deserialization errors: located by line, column and field, like semantic ones.

use std::path::{Path, PathBuf};

use outpost_config::{load_file, parse_str, ConfigError};

const BASE: &str = r#"[[listener]]
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

fn single_error(text: &str) -> ConfigError {
    let errors = parse_str(text, "edge.toml", None)
        .expect_err("config should be rejected")
        .0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors.into_iter().next().unwrap()
}

/// 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|line| line.contains(needle))
        .expect("needle in text")
        + 1
}

#[test]
fn unknown_key_names_line_column_and_field() {
    let text = format!("{BASE}wieght = 2\n");
    let error = single_error(&text);
    assert_eq!(error.field, "pool[0].origin[0].wieght");
    assert_eq!(error.line, Some(line_of(&text, "wieght")));
    assert_eq!(error.column, Some(1));
    assert!(
        error
            .reason
            .starts_with("unknown field `wieght`, expected one of `url`, `weight`"),
        "{error}"
    );
    let shown = error.to_string();
    assert!(shown.starts_with(&format!(
        "edge.toml:{}:1: pool[0].origin[0].wieght: unknown field",
        line_of(&text, "wieght")
    )));
}

#[test]
fn unknown_table_is_located() {
    let text = format!("{BASE}\n[admn]\nlisten = \"127.0.0.1:9901\"\n");
    let error = single_error(&text);
    assert_eq!(error.field, "admn");
    assert_eq!(error.line, Some(line_of(&text, "[admn]")));
    assert!(error.reason.contains("unknown field `admn`"), "{error}");
}

#[test]
fn unknown_key_in_nested_table() {
    let text = format!("{BASE}\n[pool.health_check]\npath = \"/\"\nintervall = \"5s\"\n");
    let error = single_error(&text);
    assert_eq!(error.field, "pool[0].health_check.intervall");
    assert_eq!(error.line, Some(line_of(&text, "intervall")));
}

#[test]
fn wrong_type_points_at_the_value() {
    let text = format!("{BASE}weight = \"two\"\n");
    let error = single_error(&text);
    assert_eq!(error.field, "pool[0].origin[0].weight");
    assert_eq!(
        (error.line, error.column),
        (Some(line_of(&text, "two")), Some(10))
    );
    assert!(error.reason.contains("invalid type"), "{error}");
}

#[test]
fn missing_field_names_the_field() {
    let text = format!("{BASE}\n[[listener]]\nname = \"second\"\n");
    let error = single_error(&text);
    assert_eq!(error.field, "listener[1].address");
    assert!(error.reason.contains("missing field `address`"), "{error}");
    let line = error.line.expect("located");
    assert!(
        line >= line_of(&text, "second") - 1 && line <= line_of(&text, "second"),
        "{error}"
    );
}

#[test]
fn bad_duration_and_address_and_enum() {
    let text = format!("{BASE}\n[timeouts]\nheader = \"10x\"\n");
    let error = single_error(&text);
    assert_eq!(error.field, "timeouts.header");
    assert_eq!(error.line, Some(line_of(&text, "10x")));
    assert!(
        error.reason.contains("unknown unit `x`, use ms, s, m or h"),
        "{error}"
    );

    let text = BASE.replace("\"127.0.0.1:8080\"", "\"localhost:8080\"");
    let error = single_error(&text);
    assert_eq!(error.field, "listener[0].address");
    assert_eq!(error.line, Some(3));

    let text = BASE.replace("name = \"web\"\n\n", "name = \"web\"\nbalance = \"fastest\"\n\n");
    let error = single_error(&text);
    assert_eq!(error.field, "pool[0].balance");
    assert!(error.reason.contains("unknown variant `fastest`"), "{error}");

    let text = BASE.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\nforwarded_headers = \"xff\"\n",
    );
    let error = single_error(&text);
    assert_eq!(error.field, "site[0].forwarded_headers");
    assert_eq!(error.line, Some(line_of(&text, "xff")));
    assert!(
        error
            .reason
            .contains("unknown variant `xff`, expected one of `both`, `x-forwarded`, `forwarded`, `none`"),
        "{error}"
    );
}

#[test]
fn syntax_error_is_located() {
    let text = "[[listener]]\nname = \"main\"\naddress = 127.0.0.1:8080\n";
    let error = single_error(text);
    assert_eq!(error.line, Some(3));
    assert!(error.column.is_some());
    assert_eq!(error.field, "listener[0].address");
    assert!(!error.reason.is_empty());
}

#[test]
fn syntax_error_inside_a_multiline_array() {
    let text = "[[site]]\nname = \"web\"\nhosts = [\n  \"a.com\"\n  \"b.com\",\n]\npool = \"web\"\n";
    let error = single_error(text);
    assert_eq!(error.line, Some(5));
    assert_eq!(error.field, "site[0].hosts");
}

#[test]
fn single_table_instead_of_array_gets_a_hint() {
    let text = "[[listener]]\nname = \"main\"\naddress = \"127.0.0.1:8080\"\n[pool]\nname = \"web\"\n";
    let error = single_error(text);
    assert_eq!((error.field.as_str(), error.line), ("pool", Some(4)));
    assert!(
        error.reason.contains("write [[pool]] with double brackets"),
        "{error}"
    );
}

#[test]
fn multi_line_messages_become_one_line() {
    let error = single_error("hosts = [1,\n2\n");
    assert!(!error.reason.contains('\n'), "{error:?}");
    assert!(!error.to_string().contains('\n'));
}

#[test]
fn duplicate_key_is_located() {
    let text = "[admin]\ntoken = \"a\"\ntoken = \"b\"\n";
    let error = single_error(text);
    assert_eq!(error.line, Some(3));
    assert_eq!(error.field, "admin.token");
    assert!(error.reason.contains("duplicate key"), "{error}");
}

#[test]
fn unreadable_file_reports_the_path() {
    let path = Path::new("/nonexistent/outpost/edge.toml");
    let errors = load_file(path).unwrap_err();
    assert_eq!(errors.len(), 1);
    let error = &errors.0[0];
    assert_eq!(error.file, "/nonexistent/outpost/edge.toml");
    assert_eq!((error.line, error.field.as_str()), (None, ""));
    assert!(error.reason.starts_with("cannot read config file"), "{error}");
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let text = format!(
        "{BASE}\n[pop]\nstate_dir = \"state\"\n[log]\naccess_log = \"logs/access.jsonl\"\n\
         [[certificate]]\nname = \"c\"\ncert = \"certs/c.pem\"\nkey = \"/etc/outpost/c.key\"\n\
         [[pool]]\nname = \"api\"\n[pool.tls]\nca = \"ca.pem\"\nclient_cert = \"me.pem\"\nclient_key = \"me.key\"\n\
         [[pool.origin]]\nurl = \"https://10.0.0.1\"\n"
    );
    let dir = std::env::temp_dir().join(format!("outpost-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("edge.toml");
    std::fs::write(&file, &text).unwrap();
    let loaded = load_file(&file);
    std::fs::remove_dir_all(&dir).unwrap();
    let loaded = loaded.unwrap();
    let config = &loaded.config;
    assert_eq!(loaded.source, file.display().to_string());
    assert_eq!(config.pop.state_dir, Some(dir.join("state")));
    assert_eq!(
        config.log.access_log,
        dir.join("logs/access.jsonl").display().to_string()
    );
    assert_eq!(config.certificates[0].cert, dir.join("certs/c.pem"));
    assert_eq!(config.certificates[0].key, PathBuf::from("/etc/outpost/c.key"));
    let tls = config.pools[1].tls.as_ref().unwrap();
    assert_eq!(tls.ca, Some(dir.join("ca.pem")));
    assert_eq!(tls.client_cert, Some(dir.join("me.pem")));
    assert_eq!(tls.client_key, Some(dir.join("me.key")));

    // Without a base directory, paths are kept as written.
    let unresolved = parse_str(&text, "<test>", None).unwrap();
    assert_eq!(
        unresolved.config.certificates[0].cert,
        PathBuf::from("certs/c.pem")
    );
    assert_eq!(unresolved.config.log.access_log, "logs/access.jsonl");
}

#[test]
fn special_access_logs_are_not_paths() {
    let text = format!("{BASE}\n[log]\naccess_log = \"off\"\n");
    let loaded = parse_str(&text, "edge.toml", Some(Path::new("/etc/outpost"))).unwrap();
    assert_eq!(loaded.config.log.access_log, "off");
}
