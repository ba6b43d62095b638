//! Custom WAF rules on the real request path: blocking, detection-only, metrics and the
//! access log (with secrets redacted).

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

#[tokio::test]
async fn rules_block_or_log_and_say_so_in_metrics_and_the_access_log() {
    let origin = Origin::start("o").await;
    let dir = TempDir::new("waf");
    let log_path = dir.path("access.log");
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[log]
access_log = "{}"
[[listener]]
name = "http"
address = "127.0.0.1:0"
[[site]]
name = "shop"
hosts = ["*"]
pool = "p"
[[site.waf_rule]]
id = "no-scripts"
[[site.waf_rule.match]]
target = "args"
operator = "contains"
values = ["<script"]
transforms = ["url_decode_repeat", "lowercase"]
[[site.waf_rule]]
id = "stolen-token"
status = 401
body = "token revoked"
[[site.waf_rule.match]]
target = "header:authorization"
operator = "equals"
values = ["Bearer leaked-token"]
[[site.waf_rule]]
id = "watch-admin"
action = "log"
[[site.waf_rule.match]]
target = "path"
operator = "prefix"
values = ["/admin"]
[[pool]]
name = "p"
[[pool.origin]]
url = "{}"
"#,
        log_path.display(),
        origin.url()
    );
    let edge = start_edge(&dir, &config).await;
    let addr = edge.listener_addr("http").unwrap();

    let blocked = get(addr, "x", "/search?q=%253CScRiPt%253Ealert(1)").await;
    assert_eq!(blocked.status, StatusCode::FORBIDDEN);
    assert!(
        blocked.body.contains("request blocked by rule no-scripts"),
        "{}",
        blocked.body
    );
    let client = http1_client();
    let req = http::Request::builder()
        .uri(format!("http://{addr}/account"))
        .header("host", "x")
        .header("authorization", "Bearer leaked-token")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let revoked = collect(client.request(req).await.unwrap()).await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED);
    assert_eq!(revoked.body, "outpost: token revoked\n");
    assert_eq!(origin.hits(), 0, "blocked requests never reach the origin");

    assert_eq!(
        get(addr, "x", "/admin/users").await.status,
        StatusCode::OK,
        "detection only"
    );
    assert_eq!(
        get(addr, "x", "/search?q=scripting+tips").await.status,
        StatusCode::OK
    );
    assert_eq!(origin.hits(), 2);

    let text = metrics(&edge).await;
    for (rule, action) in [
        ("no-scripts", "block"),
        ("stolen-token", "block"),
        ("watch-admin", "log"),
    ] {
        assert_eq!(
            metric_value(
                &text,
                "outpost_waf_rule_hits_total",
                &[("rule", rule), ("action", action)]
            ),
            Some(1.0),
            "{rule}"
        );
    }

    let mut lines: Vec<serde_json::Value> = Vec::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            lines = std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            lines.len() >= 4
        })
        .await
    );
    assert_eq!(lines[0]["waf"]["rule"], "no-scripts");
    assert_eq!(lines[0]["waf"]["action"], "block");
    assert_eq!(lines[0]["waf"]["location"], "arg:q");
    assert_eq!(lines[0]["waf"]["value"], "<script>alert(1)");
    assert_eq!(lines[1]["waf"]["location"], "header:authorization");
    assert_eq!(
        lines[1]["waf"]["value"], "[redacted]",
        "credentials never reach the log"
    );
    assert!(!std::fs::read_to_string(&log_path)
        .unwrap()
        .contains("leaked-token"));
    assert_eq!(lines[2]["waf"]["action"], "log");
    assert_eq!(lines[2]["status"], 200);
    assert!(lines[3]["waf"].is_null());
}
