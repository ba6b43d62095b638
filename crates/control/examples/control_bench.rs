//! Control-plane bench (run by `bench/control.sh`):
//!
//! 1. Real fleets of 3 and 20 managed PoPs (`outpost edge --control`, one worker each):
//!    config propagation (version stored → every PoP ACKed) and purge completion (purge stored
//!    → every PoP acked), p50 and p99, from the control plane's own timestamps.
//! 2. 1,000 simulated PoPs (WebSocket clients speaking outpost-wire in this process) on one
//!    control plane: its memory per connection (RSS delta / connections) and purge fan-out
//!    time (POST → the last client received it, one clock), plus completion with acks.
//!
//! Usage: control_bench OUTPOST_BIN [--rounds N] [--sim N]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use outpost_control::client::Client;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn spawn(bin: &Path, args: &[String], env: &[(&str, String)], log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("OUTPOST_WORKERS", "1")
        .env("OUTPOST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("spawn outpost"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
        percentile(&v, 50.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(f64::NAN),
        v.len()
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn config(origin: SocketAddr, round: usize) -> String {
    format!(
        "version = \"bench-{round}\"\n[log]\naccess_log = \"off\"\n\
         [[listener]]\nname = \"main\"\naddress = \"127.0.0.1:8080\"\n\
         [[site]]\nname = \"shop\"\nhosts = [\"shop.test\"]\npool = \"p\"\n\
         [[pool]]\nname = \"p\"\n[[pool.origin]]\nurl = \"http://{origin}\"\n"
    )
}

struct Control {
    proc: Proc,
    api: Client,
    addr: SocketAddr,
}

async fn start_control(bin: &Path, dir: &Path) -> Control {
    let addr = free_addr();
    let proc = spawn(
        bin,
        &[
            "control".into(),
            "--data-dir".into(),
            dir.join("control").display().to_string(),
            "--listen".into(),
            addr.to_string(),
        ],
        &[],
        &dir.join("control.log"),
    );
    let probe = Client::new(&format!("http://{addr}"), None).unwrap();
    let start = Instant::now();
    while probe.get("/v1/openapi.json").await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "control plane did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = std::fs::read_to_string(dir.join("control/admin.token")).unwrap();
    let api = Client::new(&format!("http://{addr}"), Some(token.trim().to_owned())).unwrap();
    Control { proc, api, addr }
}

async fn register(api: &Client, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in 0..n {
        let id = format!("pop-{i}");
        api.put(&format!("/v1/pops/{id}"), &json!({"region": "bench"}))
            .await
            .unwrap();
        let t = api
            .post(
                "/v1/tokens",
                &json!({"name": format!("t-{id}"), "role": "pop", "pop": id}),
            )
            .await
            .unwrap();
        out.push((id, t["token"].as_str().unwrap().to_owned()));
    }
    out
}

async fn wait_applied(api: &Client, version: u64, n: usize) -> Value {
    let start = Instant::now();
    loop {
        let pops = api.get("/v1/pops").await.unwrap();
        let done = pops["pops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["applied_version"].as_u64() == Some(version))
            .count();
        if done >= n {
            return pops;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "version {version} not applied everywhere"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn ms_of(rfc3339: &str) -> f64 {
    // "2026-11-25T13:47:51.489Z": seconds of the day are enough for differences within a run.
    let t = rfc3339
        .split('T')
        .nth(1)
        .unwrap_or("0:0:0Z")
        .trim_end_matches('Z');
    let mut parts = t.split(':').map(|p| p.parse::<f64>().unwrap_or(0.0));
    let (h, m, s) = (
        parts.next().unwrap_or(0.0),
        parts.next().unwrap_or(0.0),
        parts.next().unwrap_or(0.0),
    );
    ((h * 60.0 + m) * 60.0 + s) * 1000.0
}

async fn real_fleet(bin: &Path, root: &Path, n: usize, rounds: usize) {
    let dir = root.join(format!("fleet-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    let control = start_control(bin, &dir).await;
    let origin = free_addr();
    let _origin = spawn(
        bin,
        &["origin".into(), "--listen".into(), origin.to_string()],
        &[],
        &dir.join("origin.log"),
    );
    let pops = register(&control.api, n).await;
    control
        .api
        .post("/v1/config", &json!({"toml": config(origin, 0)}))
        .await
        .unwrap();
    let mut procs = Vec::new();
    for (id, token) in &pops {
        procs.push(spawn(
            bin,
            &[
                "edge".into(),
                "--control".into(),
                format!("http://{}", control.addr),
                "--pop".into(),
                id.clone(),
                "--state-dir".into(),
                dir.join(id).display().to_string(),
                "--bind".into(),
                format!("main={}", free_addr()),
                "--admin".into(),
                "off".into(),
            ],
            &[("OUTPOST_POP_TOKEN", token.clone())],
            &dir.join(format!("{id}.log")),
        ));
    }
    wait_applied(&control.api, 1, n).await;

    let mut config_ms = Vec::new();
    for round in 1..=rounds {
        let v = control
            .api
            .post("/v1/config", &json!({"toml": config(origin, round)}))
            .await
            .unwrap();
        let version = v["version"].as_u64().unwrap();
        let pops = wait_applied(&control.api, version, n).await;
        let stored = control
            .api
            .get(&format!("/v1/config/versions/{version}"))
            .await
            .unwrap();
        let created = ms_of(stored["created"].as_str().unwrap());
        let last = pops["pops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| ms_of(p["applied_at"].as_str().unwrap()))
            .fold(0.0, f64::max);
        config_ms.push(last - created);
    }
    let mut purge_ms = Vec::new();
    for round in 0..rounds * 2 {
        let p = control
            .api
            .post(
                "/v1/purges",
                &json!({"url": format!("http://shop.test/item/{round}")}),
            )
            .await
            .unwrap();
        let seq = p["seq"].as_u64().unwrap();
        let start = Instant::now();
        loop {
            let s = control.api.get(&format!("/v1/purges/{seq}")).await.unwrap();
            if s["complete"] == json!(true) {
                purge_ms.push(s["completion_ms"].as_f64().unwrap());
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "purge {seq} incomplete"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    println!(
        "{n} PoPs: config propagation (stored -> all ACKed): {}",
        summary(config_ms)
    );
    println!(
        "{n} PoPs: purge completion (stored -> all acked):   {}",
        summary(purge_ms)
    );
    drop(procs);
    drop(control.proc);
}

async fn simulated(bin: &Path, root: &Path, n: usize, rounds: usize) {
    let dir = root.join("sim");
    std::fs::create_dir_all(&dir).unwrap();
    let control = start_control(bin, &dir).await;
    let origin = free_addr();
    let pops = register(&control.api, n).await;
    control
        .api
        .post("/v1/config", &json!({"toml": config(origin, 0)}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = control.proc.0.id();
    let before = rss_kib(pid);

    // Each simulated PoP: hello, ACK the config it gets, record when each purge arrives, ack it.
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let url = Arc::new(format!("ws://{}/v1/stream", control.addr));
    for (id, token) in pops {
        let (tx, ready_tx, url) = (tx.clone(), ready_tx.clone(), url.clone());
        tokio::spawn(async move {
            let mut req = url.as_str().into_client_request().unwrap();
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("connect");
            let hello = json!({"type": "hello", "protocol": 1, "pop": id, "applied_version": null, "applied_hash": null, "last_purge_seq": 0});
            ws.send(Message::text(hello.to_string())).await.unwrap();
            while let Some(Ok(msg)) = ws.next().await {
                let Message::Text(text) = msg else { continue };
                let at = Instant::now();
                let v: Value = serde_json::from_str(text.as_str()).unwrap();
                let reply = match v["type"].as_str() {
                    Some("config") => {
                        let _ = ready_tx.send(());
                        json!({"type": "ack", "version": v["version"]})
                    }
                    Some("purge") => {
                        let seq = v["seq"].as_u64().unwrap();
                        let _ = tx.send((seq, at));
                        json!({"type": "purge_ack", "seq": seq})
                    }
                    _ => continue,
                };
                if ws.send(Message::text(reply.to_string())).await.is_err() {
                    break;
                }
            }
        });
    }
    let start = Instant::now();
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .expect("all connected");
    }
    println!(
        "{n} simulated PoPs connected and got the config in {:.0} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    println!(
        "{n} connections: control plane RSS {} KiB -> {} KiB: {:.1} KiB per connection",
        before,
        after,
        (after.saturating_sub(before)) as f64 / n as f64
    );
    let mut fanout = Vec::new();
    let mut complete = Vec::new();
    for round in 0..rounds {
        let t0 = Instant::now();
        let p = control
            .api
            .post("/v1/purges", &json!({"tag": format!("t{round}")}))
            .await
            .unwrap();
        let seq = p["seq"].as_u64().unwrap();
        let mut got = 0;
        let mut last = t0;
        while got < n {
            let (s, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("purge delivered")
                .unwrap();
            if s == seq {
                got += 1;
                last = last.max(at);
            }
        }
        fanout.push((last - t0).as_secs_f64() * 1000.0);
        loop {
            let s = control.api.get(&format!("/v1/purges/{seq}")).await.unwrap();
            if s["complete"] == json!(true) {
                complete.push(s["completion_ms"].as_f64().unwrap());
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    println!(
        "{n} connections: purge fan-out (POST -> last PoP received): {}",
        summary(fanout)
    );
    println!(
        "{n} connections: purge completion (stored -> all acks recorded): {}",
        summary(complete)
    );
    drop(control.proc);
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let bin = PathBuf::from(
        args.next()
            .expect("usage: control_bench OUTPOST_BIN [--rounds N] [--sim N]"),
    );
    let (mut rounds, mut sim) = (50, 1000);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => rounds = args.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--sim" => sim = args.next().and_then(|v| v.parse().ok()).expect("--sim N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let root = std::env::temp_dir().join(format!("outpost-control-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    println!(
        "machine: {} CPUs; {rounds} config rounds, {} purges per fleet",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        rounds * 2
    );
    for n in [3, 20] {
        real_fleet(&bin, &root, n, rounds).await;
    }
    simulated(&bin, &root, sim, rounds).await;
    let _ = std::fs::remove_dir_all(&root);
}
