//! The control plane in process on 127.0.0.1: API auth and roles, problem+json errors,
//! optimistic concurrency, the OpenAPI document against the routes, the data-dir lock, and the
//! PoP stream's refusals.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode};
use outpost_control::client::{Client, ClientError};
use outpost_control::{ControlOptions, RunningControl, StartError};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("outpost-control-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn start(dir: &std::path::Path) -> Result<RunningControl, StartError> {
    RunningControl::start(ControlOptions {
        data_dir: dir.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        bootstrap_token_file: None,
        tls: None,
    })
    .await
}

async fn admin(dir: &std::path::Path, running: &RunningControl) -> Client {
    let token = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    Client::new(&format!("http://{}", running.addr), Some(token.trim().to_owned())).unwrap()
}

const CONFIG: &str = "[[listener]]\nname = \"main\"\naddress = \"127.0.0.1:8080\"\n\
    [[site]]\nname = \"s\"\nhosts = [\"a.test\"]\npool = \"p\"\n\
    [[pool]]\nname = \"p\"\n[[pool.origin]]\nurl = \"http://127.0.0.1:9000\"\n";

fn status_of(r: Result<Value, ClientError>) -> (StatusCode, Value) {
    match r {
        Ok(v) => (StatusCode::OK, v),
        Err(ClientError::Api { status, body, .. }) => (status, body),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn tokens_and_roles_guard_every_route() {
    let dir = temp_dir("auth");
    let running = start(&dir).await.unwrap();
    let admin = admin(&dir, &running).await;
    let base = format!("http://{}", running.addr);

    // No token, a wrong token: 401 problem+json.
    let anon = Client::new(&base, None).unwrap();
    let (status, body) = anon.raw(Method::GET, "/v1/status", None).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["type"], json!("/problems/unauthorized"));
    assert_eq!(problem["status"], json!(401));
    let wrong = Client::new(&base, Some("opt_wrong".into())).unwrap();
    assert_eq!(
        status_of(wrong.get("/v1/status").await).0,
        StatusCode::UNAUTHORIZED
    );

    // A viewer reads but cannot apply; an operator applies but cannot mint tokens.
    let mut clients = Vec::new();
    for role in ["viewer", "operator"] {
        let t = admin
            .post("/v1/tokens", &json!({"name": role, "role": role}))
            .await
            .unwrap();
        clients.push(Client::new(&base, Some(t["token"].as_str().unwrap().to_owned())).unwrap());
    }
    let (viewer, operator) = (&clients[0], &clients[1]);
    assert_eq!(status_of(viewer.get("/v1/status").await).0, StatusCode::OK);
    let (status, body) = status_of(viewer.post("/v1/config", &json!({"toml": CONFIG})).await);
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body["detail"].as_str().unwrap().contains("viewer"), "{body}");
    let (status, body) = status_of(
        operator
            .post("/v1/config", &json!({"toml": CONFIG, "message": "first"}))
            .await,
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], json!(1));
    let (status, _) = status_of(
        operator
            .post("/v1/tokens", &json!({"name": "x", "role": "admin"}))
            .await,
    );
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A PoP token opens nothing but its stream.
    admin
        .put("/v1/pops/fra-1", &json!({"region": "eu"}))
        .await
        .unwrap();
    let t = admin
        .post(
            "/v1/tokens",
            &json!({"name": "pop-fra", "role": "pop", "pop": "fra-1"}),
        )
        .await
        .unwrap();
    let pop = Client::new(&base, Some(t["token"].as_str().unwrap().to_owned())).unwrap();
    let (status, body) = status_of(pop.get("/v1/status").await);
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body["detail"].as_str().unwrap().contains("stream"), "{body}");

    // Every change is audited with who and from where; tokens are stored hashed.
    let audit = admin.get("/v1/audit").await.unwrap();
    let entries = audit["entries"].as_array().unwrap();
    let apply = entries
        .iter()
        .find(|e| e["action"] == json!("config.apply"))
        .unwrap();
    assert_eq!(apply["actor"], json!("operator"));
    assert!(
        apply["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{apply}"
    );
    assert!(entries.iter().any(|e| e["action"] == json!("token.create")));
    running.stop(Duration::from_secs(2)).await;
    let db = std::fs::read(dir.join("control.db")).unwrap_or_default();
    let secret = t["token"].as_str().unwrap();
    assert!(
        !String::from_utf8_lossy(&db).contains(secret),
        "token stored in clear"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_input_gets_precise_problems_and_stores_nothing() {
    let dir = temp_dir("input");
    let running = start(&dir).await.unwrap();
    let admin = admin(&dir, &running).await;

    // Invalid config: 422 with located errors; no version.
    let bad = CONFIG.replace("pool = \"p\"", "pool = \"missing\"");
    let (status, body) = status_of(
        admin
            .post("/v1/config", &json!({"toml": bad, "file": "edge.toml"}))
            .await,
    );
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let errors = body["errors"].to_string();
    assert!(
        errors.contains("edge.toml:7:8:") && errors.contains("site[0].pool"),
        "{errors}"
    );
    assert_eq!(status_of(admin.get("/v1/config").await).0, StatusCode::NOT_FOUND);

    // Malformed JSON, wrong fields, no content type.
    let (status, body) = admin
        .raw(Method::POST, "/v1/purges", Some(&json!({"bogus": 1})))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
    let (status, _) = admin.raw(Method::POST, "/v1/config", None).await.unwrap();
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, body) = status_of(admin.get("/v1/config/versions/abc").await);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(status_of(admin.get("/v1/nope").await).0, StatusCode::NOT_FOUND);

    // Optimistic concurrency: a stale base is refused with the latest version.
    assert_eq!(
        admin
            .post("/v1/config", &json!({"toml": CONFIG, "base_version": 0}))
            .await
            .unwrap()["version"],
        json!(1)
    );
    let changed = CONFIG.replace("a.test", "b.test");
    let (status, body) = status_of(
        admin
            .post("/v1/config", &json!({"toml": changed, "base_version": 0}))
            .await,
    );
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["latest_version"], json!(1));
    // Dry run: the diff, nothing stored.
    let dry = admin
        .post(
            "/v1/config",
            &json!({"toml": changed, "base_version": 1, "dry_run": true}),
        )
        .await
        .unwrap();
    assert!(
        dry["diff"]
            .as_str()
            .unwrap()
            .contains("-hosts = [\"a.test\"]\n+hosts = [\"b.test\"]"),
        "{dry}"
    );
    let versions = admin.get("/v1/config/versions").await.unwrap();
    assert_eq!(versions["versions"].as_array().unwrap().len(), 1);
    let v2 = admin
        .post("/v1/config", &json!({"toml": changed, "base_version": 1}))
        .await
        .unwrap();
    assert_eq!(v2["version"], json!(2));
    let diff = admin.get("/v1/config/diff?from=1&to=2").await.unwrap();
    assert!(
        diff["diff"].as_str().unwrap().contains("+hosts = [\"b.test\"]"),
        "{diff}"
    );
    running.stop(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_second_control_plane_on_the_same_data_dir_is_refused() {
    let dir = temp_dir("lock");
    let first = start(&dir).await.unwrap();
    let err = start(&dir).await.err().expect("second start refused");
    let msg = err.to_string();
    assert!(matches!(err, StartError::Locked { .. }), "{msg}");
    assert!(
        msg.contains("in use by another control plane") && msg.contains(&std::process::id().to_string()),
        "{msg}"
    );
    first.stop(Duration::from_secs(2)).await;
    // Once the first is gone the data dir is free again, with its state.
    let again = start(&dir).await.unwrap();
    again.stop(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn openapi_document_lists_exactly_the_served_routes() {
    let dir = temp_dir("openapi");
    let running = start(&dir).await.unwrap();
    let admin = admin(&dir, &running).await;
    let doc = Client::new(&format!("http://{}", running.addr), None)
        .unwrap()
        .get("/v1/openapi.json")
        .await
        .unwrap();
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let mut routes: Vec<(String, String)> = outpost_control::api::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    documented.sort();
    routes.sort();
    assert_eq!(documented, routes);
    // Every listed route is served (not the router's fallback).
    for (method, path) in outpost_control::api::ROUTES {
        let path = path
            .replace("{version}", "1")
            .replace("{seq}", "1")
            .replace("{id}", "x")
            .replace("{name}", "x");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let body = matches!(method, Method::POST | Method::PUT | Method::PATCH).then(|| json!({}));
        let (status, bytes) = admin.raw(method.clone(), &path, body.as_ref()).await.unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED && !text.contains("no such route"),
            "{method} {path}: {status} {text}"
        );
    }
    running.stop(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_stream_refuses_other_pops_and_garbage() {
    let dir = temp_dir("stream");
    let running = start(&dir).await.unwrap();
    let admin = admin(&dir, &running).await;
    admin.put("/v1/pops/fra-1", &json!({})).await.unwrap();
    let t = admin
        .post("/v1/tokens", &json!({"name": "p", "role": "pop", "pop": "fra-1"}))
        .await
        .unwrap();
    let token = t["token"].as_str().unwrap().to_owned();
    let connect = |token: String| {
        let url = format!("ws://{}/v1/stream", running.addr);
        async move {
            let mut req = url.into_client_request().unwrap();
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            tokio_tungstenite::connect_async(req).await
        }
    };
    let first_error = |mut ws: tokio_tungstenite::WebSocketStream<_>| async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
                Ok(Some(Ok(_))) => continue,
                other => panic!("no error message: {other:?}"),
            }
        }
    };
    // An API token cannot open a stream.
    let admin_token = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    match connect(admin_token.trim().to_owned()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // The PoP's token, claiming another PoP.
    let (mut ws, _) = connect(token.clone()).await.unwrap();
    ws.send(Message::text(
        r#"{"type":"hello","protocol":1,"pop":"iad-1","applied_version":null,"applied_hash":null,"last_purge_seq":null}"#,
    ))
    .await
    .unwrap();
    let msg = first_error(ws).await;
    assert!(
        msg.contains("\"type\":\"error\"") && msg.contains("belongs to PoP \\\"fra-1\\\""),
        "{msg}"
    );
    // Garbage instead of hello.
    let (mut ws, _) = connect(token.clone()).await.unwrap();
    ws.send(Message::text("{not json")).await.unwrap();
    let msg = first_error(ws).await;
    assert!(msg.contains("bad message from PoP"), "{msg}");
    // A proper hello with no config stored yet, then a purge: delivered with its sequence.
    let (mut ws, _) = connect(token).await.unwrap();
    ws.send(Message::text(
        r#"{"type":"hello","protocol":1,"pop":"fra-1","applied_version":null,"applied_hash":null,"last_purge_seq":null}"#,
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    admin.post("/v1/purges", &json!({"site": "s"})).await.unwrap();
    let msg = first_error(ws).await;
    assert_eq!(msg, r#"{"type":"purge","seq":1,"purge":{"site":"s"}}"#);
    running.stop(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
