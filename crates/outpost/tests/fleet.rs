//! A fleet of real processes on loopback: `outpost control`, managed PoPs (`outpost edge
//! --control`), a demo origin, and the CLI. Every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

mod common;

use common::*;

/// The demo origin every fleet test proxies to ("hello from fleet-origin").
fn spawn_origin(dir: &Path) -> (SocketAddr, Proc) {
    let addr = free_addr();
    let listen = addr.to_string();
    let proc = spawn(
        &["origin", "--listen", &listen, "--name", "fleet-origin"],
        &[],
        &dir.join("origin.log"),
    );
    (addr, proc)
}

fn spawn(args: &[&str], env: &[(&str, &str)], log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("OUTPOST_WORKERS", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("spawn outpost"))
}

/// An API call; (status, JSON body or Null).
fn api(addr: SocketAddr, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let (status, text) = http(addr, method, "control", path, Some(token), body.as_deref()).unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn cli(control: SocketAddr, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("OUTPOST_CONTROL", format!("http://{control}"))
        .env("OUTPOST_TOKEN", token)
        .output()
        .unwrap()
}

/// The Cache-Status header of a GET through a PoP.
fn cache_status(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out)
        .lines()
        .find_map(|l| l.strip_prefix("cache-status: "))
        .unwrap_or_default()
        .to_owned()
}

fn fleet_config(origin: SocketAddr, marker: &str) -> String {
    format!(
        "version = \"{marker}\"\n[log]\naccess_log = \"off\"\n\
         [[listener]]\nname = \"main\"\naddress = \"127.0.0.1:8080\"\n\
         [[site]]\nname = \"shop\"\nhosts = [\"shop.test\"]\npool = \"p\"\n\
         [[pool]]\nname = \"p\"\n[[pool.origin]]\nurl = \"http://{origin}\"\n"
    )
}

struct Pop {
    id: String,
    token: String,
    http: SocketAddr,
    admin: SocketAddr,
    state: PathBuf,
    proc: Option<Proc>,
}

struct Fleet {
    dir: PathBuf,
    control_addr: SocketAddr,
    control: Option<Proc>,
    admin_token: String,
    origin: SocketAddr,
    _origin: Proc,
    pops: Vec<Pop>,
}

impl Fleet {
    fn start_control(dir: &Path, addr: SocketAddr) -> Proc {
        let p = spawn(
            &[
                "control",
                "--data-dir",
                dir.join("control").to_str().unwrap(),
                "--listen",
                &addr.to_string(),
            ],
            &[],
            &dir.join(format!(
                "control-{}.log",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            )),
        );
        assert!(
            wait_until(Duration::from_secs(20), || http(
                addr,
                "GET",
                "c",
                "/v1/openapi.json",
                None,
                None
            )
            .is_ok_and(|(s, _)| s == 200)),
            "control plane up"
        );
        p
    }

    /// Control plane, an origin, and `n` registered PoPs (not started).
    fn new(tag: &str, n: usize) -> Self {
        let dir = temp_dir("fleet", tag);
        let control_addr = free_addr();
        let control = Self::start_control(&dir, control_addr);
        let admin_token = std::fs::read_to_string(dir.join("control/admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        let (origin, origin_proc) = spawn_origin(&dir);
        let mut pops = Vec::new();
        for i in 0..n {
            let id = format!("pop-{i}");
            let (s, _) = api(
                control_addr,
                "PUT",
                &format!("/v1/pops/{id}"),
                &admin_token,
                Some(json!({"region": format!("r{i}"), "location": "here", "capacity": 10})),
            );
            assert_eq!(s, 200);
            let (s, t) = api(
                control_addr,
                "POST",
                "/v1/tokens",
                &admin_token,
                Some(json!({"name": format!("t-{id}"), "role": "pop", "pop": id})),
            );
            assert_eq!(s, 201, "{t}");
            pops.push(Pop {
                state: dir.join(&id),
                id,
                token: t["token"].as_str().unwrap().to_owned(),
                http: free_addr(),
                admin: free_addr(),
                proc: None,
            });
        }
        Self {
            dir,
            control_addr,
            control: Some(control),
            admin_token,
            origin,
            _origin: origin_proc,
            pops,
        }
    }

    fn start_pop(&mut self, i: usize) {
        let p = &self.pops[i];
        let log = self.dir.join(format!(
            "{}-{}.log",
            p.id,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let proc = spawn(
            &[
                "edge",
                "--control",
                &format!("http://{}", self.control_addr),
                "--pop",
                &p.id,
                "--state-dir",
                p.state.to_str().unwrap(),
                "--bind",
                &format!("main={}", p.http),
                "--admin",
                &p.admin.to_string(),
            ],
            &[("OUTPOST_POP_TOKEN", &p.token)],
            &log,
        );
        self.pops[i].proc = Some(proc);
    }

    fn apply(&self, toml: &str) -> (u16, Value) {
        api(
            self.control_addr,
            "POST",
            "/v1/config",
            &self.admin_token,
            Some(json!({"toml": toml, "message": "test"})),
        )
    }

    fn pop_status(&self, id: &str) -> Value {
        api(
            self.control_addr,
            "GET",
            &format!("/v1/pops/{id}"),
            &self.admin_token,
            None,
        )
        .1
    }

    fn serves(&self, i: usize, marker: &str) -> bool {
        let p = &self.pops[i];
        let via_origin = http(p.http, "GET", "shop.test", "/x", None, None)
            .is_ok_and(|(s, b)| s == 200 && b.contains("hello from fleet-origin"));
        let version = http(p.admin, "GET", "a", "/config", None, None).is_ok_and(|(_, b)| b.contains(marker));
        via_origin && version
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in &mut self.pops {
            p.proc.take();
        }
        self.control.take();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn config_reaches_every_pop_invalid_is_refused_and_a_pop_only_failure_is_nacked() {
    let mut fleet = Fleet::new("config", 3);
    for i in 0..3 {
        fleet.start_pop(i);
    }
    // Applied with the CLI from a file: every PoP serves version 1.
    let file = fleet.dir.join("fleet.toml");
    std::fs::write(&file, fleet_config(fleet.origin, "first")).unwrap();
    let out = cli(
        fleet.control_addr,
        &fleet.admin_token,
        &["apply", "-f", file.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("applied: version 1") && stdout.contains("+[[site]]"),
        "{stdout}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || (0..3)
            .all(|i| fleet.serves(i, "control-v1"))),
        "every PoP serves version 1"
    );
    for i in 0..3 {
        let s = fleet.pop_status(&fleet.pops[i].id);
        assert_eq!(s["applied_version"], json!(1), "{s}");
        assert_eq!(s["in_sync"], json!(true), "{s}");
        assert_eq!(s["connected"], json!(true), "{s}");
    }
    // The same file again: idempotent, no new version.
    let out = cli(
        fleet.control_addr,
        &fleet.admin_token,
        &["apply", "-f", file.to_str().unwrap()],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no change"),
        "{out:?}"
    );

    // An invalid change: refused with the file, line, column and field; nothing stored.
    let bad = fleet_config(fleet.origin, "bad").replace("pool = \"p\"", "pool = \"nope\"");
    std::fs::write(&file, &bad).unwrap();
    let out = cli(
        fleet.control_addr,
        &fleet.admin_token,
        &["apply", "-f", file.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nothing was stored"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:10:", file.display())) && stderr.contains("site[0].pool"),
        "{stderr}"
    );
    let (_, versions) = api(
        fleet.control_addr,
        "GET",
        "/v1/config/versions",
        &fleet.admin_token,
        None,
    );
    assert_eq!(versions["versions"].as_array().unwrap().len(), 1);

    // Valid for the control plane, but no PoP can load the certificate: every PoP NACKs with
    // the reason and keeps serving version 1.
    let tls = format!(
        "{}[[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\n[listener.tls]\ndefault_certificate = \"c\"\n\
         [[certificate]]\nname = \"c\"\ncert = \"/nonexistent/c.crt\"\nkey = \"/nonexistent/c.key\"\nnames = [\"shop.test\"]\n",
        fleet_config(fleet.origin, "second")
    );
    let (s, body) = fleet.apply(&tls);
    assert_eq!(s, 201, "{body}");
    assert!(
        wait_until(Duration::from_secs(20), || (0..3).all(|i| {
            fleet.pop_status(&fleet.pops[i].id)["last_nack"]["version"] == json!(2)
        })),
        "every PoP NACKs version 2"
    );
    for i in 0..3 {
        let s = fleet.pop_status(&fleet.pops[i].id);
        let errors = s["last_nack"]["errors"].to_string();
        assert!(errors.contains("/nonexistent/c.crt"), "{errors}");
        assert_eq!(s["applied_version"], json!(1), "{s}");
        assert_eq!(s["in_sync"], json!(false), "{s}");
        assert!(fleet.serves(i, "control-v1"), "PoP {i} keeps version 1");
    }
    let (_, metrics) = http(
        fleet.control_addr,
        "GET",
        "c",
        "/metrics",
        Some(&fleet.admin_token),
        None,
    )
    .unwrap();
    assert!(
        metrics.contains("outpost_control_pop_applied_version{pop=\"pop-0\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("outpost_control_pop_sync_lag_seconds{pop=\"pop-0\"}"),
        "{metrics}"
    );

    // Revert to version 1 (as version 3): everyone is in sync again.
    let out = cli(fleet.control_addr, &fleet.admin_token, &["revert", "1"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("version 3 has the content of version 1"),
        "{out:?}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || (0..3).all(|i| {
            fleet.pop_status(&fleet.pops[i].id)["applied_version"] == json!(3)
        })),
        "every PoP applies the revert"
    );
    let out = cli(fleet.control_addr, &fleet.admin_token, &["history"]);
    let history = String::from_utf8_lossy(&out.stdout);
    assert!(
        history.contains("(revert to 1)") && history.lines().count() == 4,
        "{history}"
    );
}

#[test]
fn purges_reach_every_pop_and_an_offline_pop_applies_missed_ones_on_reconnect() {
    let mut fleet = Fleet::new("purge", 3);
    for i in 0..3 {
        fleet.start_pop(i);
    }
    assert_eq!(fleet.apply(&fleet_config(fleet.origin, "p")).0, 201);
    assert!(wait_until(Duration::from_secs(20), || (0..3)
        .all(|i| fleet.serves(i, "control-v1"))));

    let out = cli(
        fleet.control_addr,
        &fleet.admin_token,
        &["purge", "--tag", "product-7"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("purge 1 accepted for 3 PoP(s)") && stdout.contains("complete in"),
        "{stdout}"
    );
    let (_, p) = api(
        fleet.control_addr,
        "GET",
        "/v1/purges/1",
        &fleet.admin_token,
        None,
    );
    assert_eq!(p["complete"], json!(true), "{p}");
    assert_eq!(p["purge"], json!({"tag": "product-7"}));
    for pop in p["pops"].as_array().unwrap() {
        assert!(pop["latency_ms"].as_i64().unwrap() < 1000, "{pop}");
    }

    // The purge really empties each PoP's cache: a cached page is fetched again after it.
    for pop in &fleet.pops {
        http(pop.http, "GET", "shop.test", "/cached", None, None).unwrap();
        assert!(
            cache_status(pop.http, "/cached").contains("hit"),
            "{} caches /cached",
            pop.id
        );
    }
    let out = cli(
        fleet.control_addr,
        &fleet.admin_token,
        &["purge", "http://shop.test/cached"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for pop in &fleet.pops {
        let status = cache_status(pop.http, "/cached");
        assert!(
            status.contains("fwd=miss"),
            "{}: after the purge: {status}",
            pop.id
        );
    }

    // pop-2 goes away; two purges are made; it is pending for them until it comes back.
    fleet.pops[2].proc.take().unwrap().stop();
    assert!(wait_until(Duration::from_secs(10), || fleet.pop_status("pop-2")
        ["connected"]
        == json!(false)));
    for body in [
        json!({"url": "http://shop.test/a?x=1"}),
        json!({"prefix": "http://shop.test/img/", "soft": true}),
    ] {
        let (s, _) = api(
            fleet.control_addr,
            "POST",
            "/v1/purges",
            &fleet.admin_token,
            Some(body),
        );
        assert_eq!(s, 202);
    }
    assert!(wait_until(Duration::from_secs(10), || {
        let (_, p) = api(
            fleet.control_addr,
            "GET",
            "/v1/purges/4",
            &fleet.admin_token,
            None,
        );
        p["acked"] == json!(2)
    }));
    let (_, p) = api(
        fleet.control_addr,
        "GET",
        "/v1/purges/4",
        &fleet.admin_token,
        None,
    );
    assert_eq!(p["complete"], json!(false), "{p}");
    let pending: Vec<&Value> = p["pops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["done"] == json!(false))
        .collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["pop"], json!("pop-2"));

    // Back: it applies both missed purges, in order, and acks them.
    fleet.start_pop(2);
    assert!(
        wait_until(Duration::from_secs(20), || (3..=4).all(|seq| {
            api(
                fleet.control_addr,
                "GET",
                &format!("/v1/purges/{seq}"),
                &fleet.admin_token,
                None,
            )
            .1["complete"]
                == json!(true)
        })),
        "the returning PoP acks the purges it missed"
    );
    assert_eq!(fleet.pop_status("pop-2")["last_purge_seq"], json!(4));
    assert_eq!(
        std::fs::read_to_string(fleet.pops[2].state.join("purge-seq"))
            .unwrap()
            .trim(),
        "4"
    );

    // A bad purge is refused with the reason.
    let (s, p) = api(
        fleet.control_addr,
        "POST",
        "/v1/purges",
        &fleet.admin_token,
        Some(json!({"url": "shop.test/x"})),
    );
    assert_eq!(s, 400);
    assert!(p["detail"].as_str().unwrap().contains("http://"), "{p}");
}

#[test]
fn pops_keep_serving_without_the_control_plane_and_restart_from_last_known_good() {
    let mut fleet = Fleet::new("outage", 2);
    fleet.start_pop(0);
    fleet.start_pop(1);
    // With a disk cache (in each PoP's state dir), which outlives a restart.
    let origin = fleet.origin;
    let with_disk = move |marker: &str| {
        format!(
            "{}[cache]\ndisk = \"16MiB\"\ndir = \"cache\"\n",
            fleet_config(origin, marker)
        )
    };
    assert_eq!(fleet.apply(&with_disk("lkg")).0, 201);
    assert!(wait_until(Duration::from_secs(20), || (0..2)
        .all(|i| fleet.serves(i, "control-v1"))));

    // The control plane dies hard: both PoPs keep serving.
    let mut control = fleet.control.take().unwrap();
    control.0.kill().unwrap();
    control.0.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!((0..2).all(|i| fleet.serves(i, "control-v1")));

    // pop-0 restarts while the control plane is down: it serves its last-known-good at once.
    let status = fleet.pops[0].proc.take().unwrap().stop();
    assert!(status.success(), "{status}");
    fleet.start_pop(0);
    assert!(
        wait_until(Duration::from_secs(15), || fleet.serves(0, "control-v1")),
        "restarted PoP serves its last-known-good with the control plane down"
    );
    // Purges may have been made meanwhile: until it has them, it does not use its disk cache,
    // while pop-1, which never went away, still does.
    for _ in 0..2 {
        let status = cache_status(fleet.pops[0].http, "/held");
        assert!(
            !status.contains("hit"),
            "restarted PoP bypasses its cache: {status}"
        );
        cache_status(fleet.pops[1].http, "/held");
    }
    assert!(cache_status(fleet.pops[1].http, "/held").contains("hit"));

    // The control plane comes back on the same data dir; a new version reaches both PoPs,
    // which reconnect by themselves.
    fleet.control = Some(Fleet::start_control(&fleet.dir, fleet.control_addr));
    assert!(wait_until(Duration::from_secs(20), || (0..2).all(|i| {
        fleet.pop_status(&format!("pop-{i}"))["connected"] == json!(true)
    })));
    assert_eq!(fleet.apply(&with_disk("after")).0, 201);
    assert!(
        wait_until(Duration::from_secs(20), || (0..2)
            .all(|i| fleet.serves(i, "control-v2"))),
        "both PoPs get version 2 after the outage"
    );
    cache_status(fleet.pops[0].http, "/held");
    assert!(
        cache_status(fleet.pops[0].http, "/held").contains("hit"),
        "caught up with the control plane, the PoP caches again"
    );
}

#[test]
fn uploaded_certificates_are_delivered_and_written_to_the_state_dir() {
    let mut fleet = Fleet::new("certs", 1);
    fleet.start_pop(0);
    let cert = rcgen::generate_simple_self_signed(vec!["shop.test".to_owned()]).unwrap();
    let (cert_file, key_file) = (fleet.dir.join("shop.crt"), fleet.dir.join("shop.key"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let out = cli(
        fleet.control_addr,
        &fleet.admin_token,
        &[
            "cert",
            "put",
            "shop",
            "--cert",
            cert_file.to_str().unwrap(),
            "--key",
            key_file.to_str().unwrap(),
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("certificate shop uploaded (expires 4096-"),
        "{out:?}"
    );
    let out = cli(fleet.control_addr, &fleet.admin_token, &["cert"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\nshop "),
        "{out:?}"
    );
    let tls = format!(
        "{}[[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\n[listener.tls]\ndefault_certificate = \"shop\"\n\
         [[certificate]]\nname = \"shop\"\ncert = \"uploaded.crt\"\nkey = \"uploaded.key\"\nnames = [\"shop.test\"]\n",
        fleet_config(fleet.origin, "tls")
    );
    assert_eq!(fleet.apply(&tls).0, 201);
    assert!(
        wait_until(Duration::from_secs(20), || fleet.pop_status("pop-0")
            ["applied_version"]
            == json!(1)),
        "{}",
        fleet.pop_status("pop-0")
    );
    let certs: Vec<_> = std::fs::read_dir(fleet.pops[0].state.join("certs"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        certs.contains(&"shop.crt".to_owned()) && certs.contains(&"shop.key".to_owned()),
        "{certs:?}"
    );
    let (s, body) = api(
        fleet.control_addr,
        "PUT",
        "/v1/certificates/bad",
        &fleet.admin_token,
        Some(json!({"cert_pem": "x", "key_pem": "y"})),
    );
    assert_eq!(s, 400, "{body}");
}

#[test]
fn lab_starts_a_fleet_writes_lab_json_and_stops_cleanly() {
    let dir = temp_dir("fleet", "lab");
    let lab = spawn(
        &["lab", "--dir", dir.to_str().unwrap(), "--ephemeral-ports"],
        &[],
        &std::env::temp_dir().join(format!("outpost-lab-test-{}.log", std::process::id())),
    );
    let lab_json = dir.join("lab.json");
    assert!(
        wait_until(Duration::from_secs(60), || lab_json.exists()),
        "lab.json written"
    );
    let facts: Value = serde_json::from_str(&std::fs::read_to_string(&lab_json).unwrap()).unwrap();
    let pops = facts["pops"].as_array().unwrap();
    assert_eq!(pops.len(), 3);
    let regions: Vec<&str> = pops.iter().map(|p| p["region"].as_str().unwrap()).collect();
    assert_eq!(regions, ["eu-central", "us-east", "ap-southeast"]);
    assert!(facts["sites"][0]["hosts"]
        .as_array()
        .unwrap()
        .contains(&json!("shop.lab")));
    assert_eq!(facts["origins"].as_array().unwrap().len(), 2);
    let token = facts["control"]["token"].as_str().unwrap();
    let control: SocketAddr = facts["control"]["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut addrs = Vec::new();
    for p in pops {
        let addr: SocketAddr = p["http"].as_str().unwrap().parse().unwrap();
        let admin: SocketAddr = p["admin"].as_str().unwrap().parse().unwrap();
        let (s, body) = http(addr, "GET", "shop.lab", "/hello", None, None).unwrap();
        assert_eq!(s, 200, "{body}");
        assert!(http(admin, "GET", "a", "/healthz", None, None).is_ok_and(|(s, _)| s == 200));
        addrs.push(addr);
    }
    let (s, status) = api(control, "GET", "/v1/status", token, None);
    assert_eq!(s, 200);
    assert_eq!(status["pops_in_sync"], json!(3), "{status}");
    let out = cli(control, token, &["purge", "http://shop.lab/hello"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("complete in"),
        "{out:?}"
    );

    let status = lab.stop();
    assert!(status.success(), "{status}");
    for addr in addrs.iter().chain([&control]) {
        assert!(
            TcpStream::connect_timeout(addr, Duration::from_millis(500)).is_err(),
            "{addr} still open after the lab stopped"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn control_plane_over_tls_serves_the_cli_and_pop_streams() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = temp_dir("fleet", "tls");
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (ca_file, cert_file, key_file) = (dir.join("ca.pem"), dir.join("api.crt"), dir.join("api.key"));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, leaf.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    let addr = free_addr();
    let _control = spawn(
        &[
            "control",
            "--data-dir",
            dir.join("control").to_str().unwrap(),
            "--listen",
            &addr.to_string(),
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ],
        &[],
        &dir.join("control.log"),
    );
    let url = format!("https://{addr}");
    let run = |args: &[&str]| -> Output {
        let token = std::fs::read_to_string(dir.join("control/admin.token")).unwrap_or_default();
        Command::new(BIN)
            .args(args)
            .env("OUTPOST_CONTROL", &url)
            .env("OUTPOST_CONTROL_CA", &ca_file)
            .env("OUTPOST_TOKEN", token.trim())
            .output()
            .unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(20), || run(&["status"]).status.success()),
        "the CLI talks to the control plane over TLS"
    );
    // Plain HTTP on the TLS port gets no API answer.
    assert!(http(addr, "GET", "c", "/v1/openapi.json", None, None).map_or(true, |(s, _)| s != 200));

    assert!(run(&["pops", "add", "tls-1", "--region", "eu"]).status.success());
    let out = run(&["token", "t-tls-1", "--role", "pop", "--pop", "tls-1"]);
    let pop_token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(pop_token.starts_with("opt_"), "{out:?}");
    let (origin, _origin) = spawn_origin(&dir);
    let file = dir.join("fleet.toml");
    std::fs::write(&file, fleet_config(origin, "tls")).unwrap();
    assert!(run(&["apply", "-f", file.to_str().unwrap()]).status.success());
    let (http_addr, admin) = (free_addr(), free_addr());
    let _pop = spawn(
        &[
            "edge",
            "--control",
            &url,
            "--control-ca",
            ca_file.to_str().unwrap(),
            "--pop",
            "tls-1",
            "--state-dir",
            dir.join("tls-1").to_str().unwrap(),
            "--bind",
            &format!("main={http_addr}"),
            "--admin",
            &admin.to_string(),
        ],
        &[("OUTPOST_POP_TOKEN", &pop_token)],
        &dir.join("tls-1.log"),
    );
    assert!(
        wait_until(Duration::from_secs(20), || http(
            http_addr,
            "GET",
            "shop.test",
            "/x",
            None,
            None
        )
        .is_ok_and(|(s, b)| s == 200 && b.contains("hello from fleet-origin"))),
        "the PoP got its config over wss"
    );
    let out = run(&["pops"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("tls-1") && l.contains(" yes ")),
        "{table}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
