//! Config changes while serving: reloads under load, refused configs, listener changes,
//! graceful drain, and the admin API's token.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use outpost_edge::ApplyError;

fn config(origin: &Origin, extra_listener: bool) -> String {
    let mut s = format!(
        r#"
version = "v-{name}"
[pop]
id = "rl"
[admin]
listen = "127.0.0.1:0"
token = "s3cret-admin-token"
[log]
access_log = "off"
[[listener]]
name = "http"
address = "127.0.0.1:0"
[[site]]
name = "site"
hosts = ["*"]
pool = "p"
[[pool]]
name = "p"
[[pool.origin]]
url = "{url}"
"#,
        name = origin.name,
        url = origin.url()
    );
    if extra_listener {
        s.push_str("\n[[listener]]\nname = \"extra\"\naddress = \"127.0.0.1:0\"\n");
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let dir = TempDir::new("reload-load");
    let edge = Arc::new(start_edge(&dir, &config(&a, false)).await);
    let addr = edge.listener_addr("http").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let client = http1_client();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 5_000 {
                n += 1;
                let resp = send(&client, addr, "x", Method::GET, "/", Bytes::new()).await;
                if resp.status == StatusCode::OK {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed
                        .lock()
                        .unwrap()
                        .push(format!("{} {}", resp.status, resp.body));
                }
            }
        }));
    }
    for round in 0..10 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let target = if round % 2 == 0 { &b } else { &a };
        write_config(&dir, &config(target, false));
        let applied = edge.reload().await.expect("reload applies");
        assert_eq!(applied.version, format!("v-{}", target.name));
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} requests failed during reloads, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "load ran: {}",
        ok.load(Ordering::Relaxed)
    );
    assert!(a.hits() > 0 && b.hits() > 0, "both configs served traffic");
    // The last config (round 9 -> a) is the one serving now.
    assert_eq!(get(addr, "x", "/").await.body, "a");
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_config_it_started_with() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    a.set_delay(Duration::from_millis(800));
    let dir = TempDir::new("reload-in-flight");
    let edge = start_edge(&dir, &config(&a, false)).await;
    let addr = edge.listener_addr("http").unwrap();
    let slow = tokio::spawn(async move { get(addr, "x", "/slow").await });
    // The slow request has reached origin a before the reload.
    assert!(eventually(Duration::from_secs(5), || a.hits() == 1).await);
    write_config(&dir, &config(&b, false));
    assert_eq!(edge.reload().await.expect("reload applies").version, "v-b");
    assert_eq!(
        get(addr, "x", "/").await.body,
        "b",
        "new requests use the new config"
    );
    let slow = slow.await.unwrap();
    assert_eq!((slow.status, slow.body.as_str()), (StatusCode::OK, "a"));
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn invalid_config_is_refused_and_the_old_one_keeps_serving() {
    let a = Origin::start("a").await;
    let dir = TempDir::new("reload-invalid");
    let edge = start_edge(&dir, &config(&a, false)).await;
    let addr = edge.listener_addr("http").unwrap();
    let serving_hash = outpost_config::load_file(&dir.path("edge.toml")).unwrap().hash;

    let broken = config(&a, false).replace("pool = \"p\"", "pool = \"missing\"");
    write_config(&dir, &broken);
    match edge.reload().await {
        Err(ApplyError::Invalid(errors)) => {
            let text = errors.to_string();
            assert!(text.contains("edge.toml:"), "{text}");
            assert!(text.contains("site[0].pool"), "{text}");
            assert!(text.contains("missing"), "{text}");
            let line = errors.0[0].line.expect("a line number");
            let expected = broken.lines().position(|l| l.contains("\"missing\"")).unwrap() + 1;
            assert_eq!(line, expected);
        }
        other => panic!("expected an invalid-config error, got {other:?}"),
    }
    assert_eq!(get(addr, "x", "/").await.body, "a", "old config still serving");

    // A valid config that cannot be applied (certificate file missing) is refused too.
    let unloadable = config(&a, false).replace(
        "[[site]]",
        "[[certificate]]\nname = \"c\"\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/c.key\"\n[[site]]",
    );
    write_config(&dir, &unloadable);
    let err = edge.reload().await.unwrap_err();
    assert!(matches!(err, ApplyError::Refused(_)), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/c.pem"), "{err}");
    assert_eq!(get(addr, "x", "/").await.body, "a");

    // The refusal shows in metrics and in the admin API.
    let admin = edge.admin_addr().unwrap();
    let client = http1_client();
    let authed = |path: &str| {
        http::Request::builder()
            .uri(format!("http://{admin}{path}"))
            .header("authorization", "Bearer s3cret-admin-token")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap()
    };
    let cfg = collect(client.request(authed("/config")).await.unwrap()).await;
    let cfg: serde_json::Value = serde_json::from_str(&cfg.body).unwrap();
    assert_eq!(cfg["version"], "v-a");
    assert_eq!(
        cfg["hash"],
        serving_hash.as_str(),
        "the hash of the config still serving"
    );
    assert_eq!(cfg["last_reload"]["result"], "refused");
    let text = collect(client.request(authed("/metrics")).await.unwrap())
        .await
        .body;
    assert_eq!(
        metric_value(&text, "outpost_config_reloads_total", &[("result", "invalid")]),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&text, "outpost_config_reloads_total", &[("result", "refused")]),
        Some(1.0)
    );

    // POST /reload with the broken file answers 422 with the precise errors.
    write_config(&dir, &broken);
    let mut req = authed("/reload");
    *req.method_mut() = Method::POST;
    let resp = collect(client.request(req).await.unwrap()).await;
    assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(resp.body.contains("site[0].pool"), "{}", resp.body);
}

#[tokio::test]
async fn admin_api_requires_its_token() {
    let a = Origin::start("a").await;
    let dir = TempDir::new("admin");
    let edge = start_edge(&dir, &config(&a, false)).await;
    let admin = edge.admin_addr().unwrap();
    assert_eq!(get(admin, "admin", "/healthz").await.status, StatusCode::OK);
    assert_eq!(get(admin, "admin", "/readyz").await.status, StatusCode::OK);
    assert_eq!(
        get(admin, "admin", "/metrics").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(admin, "admin", "/config").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn reload_adds_and_removes_listeners() {
    let a = Origin::start("a").await;
    let dir = TempDir::new("listeners");
    let edge = start_edge(&dir, &config(&a, false)).await;
    assert!(edge.listener_addr("extra").is_none());

    write_config(&dir, &config(&a, true));
    edge.reload().await.unwrap();
    let extra = edge.listener_addr("extra").expect("new listener bound");
    assert_eq!(get(extra, "x", "/").await.body, "a");

    write_config(&dir, &config(&a, false));
    edge.reload().await.unwrap();
    assert!(edge.listener_addr("extra").is_none());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(extra).await.is_err(),
        "removed listener no longer accepts"
    );
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_then_stops() {
    let a = Origin::start("a").await;
    a.set_delay(Duration::from_millis(500));
    let dir = TempDir::new("drain");
    let edge = Arc::new(start_edge(&dir, &config(&a, false)).await);
    let addr = edge.listener_addr("http").unwrap();

    let in_flight = tokio::spawn(async move { get(addr, "x", "/slow").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let drained = edge.drain().await;
    let resp = in_flight.await.unwrap();
    assert_eq!(resp.status, StatusCode::OK, "the in-flight request completes");
    assert!(drained, "drain finished within its deadline");
    assert_eq!(
        get(edge.admin_addr().unwrap(), "admin", "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after drain"
    );
}
