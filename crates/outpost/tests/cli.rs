//! The real binary as a child process: quick start, config file, SIGHUP reload (good and bad),
//! SIGTERM drain, and `outpost validate`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_outpost");

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

fn spawn(args: &[&str]) -> Proc {
    Proc(
        Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn outpost"),
    )
}

fn signal(p: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &p.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    auth: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("outpost-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A config whose site does not cache: these tests watch which origin answers after a reload.
fn config(listen: SocketAddr, admin: SocketAddr, origin: SocketAddr, version: &str) -> String {
    format!(
        "version = \"{version}\"\n[pop]\nid = \"cli\"\n[admin]\nlisten = \"{admin}\"\ntoken = \"t0k\"\n[log]\naccess_log = \"off\"\n\
         [[listener]]\nname = \"main\"\naddress = \"{listen}\"\n[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n[site.cache]\nenabled = false\n\
         [[pool]]\nname = \"p\"\n[[pool.origin]]\nurl = \"http://{origin}\"\n"
    )
}

#[test]
fn quick_start_proxies_every_host_to_the_origin() {
    let (origin, listen) = (free_addr(), free_addr());
    let _o = spawn(&["origin", "--listen", &origin.to_string(), "--name", "qs-origin"]);
    let _e = spawn(&[
        "edge",
        "--listen",
        &listen.to_string(),
        "--origin",
        &format!("http://{origin}"),
        "--admin",
        "off",
        "--access-log",
        "off",
        "--workers",
        "1",
    ]);
    assert!(
        wait_until(Duration::from_secs(10), || http(
            listen,
            "GET",
            "any.example",
            "/x",
            None
        )
        .is_ok_and(
            |(s, b)| s == 200 && b.contains("hello from qs-origin: GET /x (Host: any.example)")
        )),
        "quick start serves through the origin"
    );
}

#[test]
fn quick_start_waf_detects_by_default_and_blocks_when_asked() {
    let origin = free_addr();
    let _o = spawn(&["origin", "--listen", &origin.to_string()]);
    let attack = "/search?q=%27%20OR%201%3D1--";
    for (mode, expected) in [("detect", 200), ("block", 403)] {
        let listen = free_addr();
        let mut args = vec!["edge", "--admin", "off", "--access-log", "off"];
        let (l, o) = (listen.to_string(), format!("http://{origin}"));
        args.extend(["--listen", &l, "--origin", &o, "--waf", mode]);
        let _e = spawn(&args);
        assert!(
            wait_until(Duration::from_secs(10), || http(listen, "GET", "h", "/", None)
                .is_ok_and(|(s, _)| s == 200)),
            "{mode}: PoP up"
        );
        assert_eq!(
            http(listen, "GET", "h", attack, None).unwrap().0,
            expected,
            "--waf {mode}"
        );
        assert_eq!(
            http(listen, "GET", "h", "/search?q=O%27Reilly+books", None)
                .unwrap()
                .0,
            200,
            "--waf {mode}: benign"
        );
    }
}

#[test]
fn sighup_reloads_refuses_bad_configs_and_sigterm_drains() {
    let dir = temp_dir("reload");
    let (oa, ob, listen, admin) = (free_addr(), free_addr(), free_addr(), free_addr());
    let _a = spawn(&["origin", "--listen", &oa.to_string(), "--name", "origin-a"]);
    let _b = spawn(&["origin", "--listen", &ob.to_string(), "--name", "origin-b"]);
    let path = dir.join("edge.toml");
    std::fs::write(&path, config(listen, admin, oa, "one")).unwrap();
    let mut edge = spawn(&["edge", "--config", path.to_str().unwrap(), "--workers", "2"]);
    assert!(wait_until(Duration::from_secs(10), || http(
        listen, "GET", "h", "/", None
    )
    .is_ok_and(|(_, b)| b.contains("origin-a"))));

    std::fs::write(&path, config(listen, admin, ob, "two")).unwrap();
    signal(&edge, "-HUP");
    assert!(
        wait_until(Duration::from_secs(10), || http(listen, "GET", "h", "/", None)
            .is_ok_and(|(_, b)| b.contains("origin-b"))),
        "SIGHUP applies the new config"
    );

    std::fs::write(
        &path,
        config(listen, admin, ob, "three").replace("pool = \"p\"", "pool = \"nope\""),
    )
    .unwrap();
    signal(&edge, "-HUP");
    assert!(wait_until(Duration::from_secs(10), || {
        http(admin, "GET", "a", "/config", Some("t0k")).is_ok_and(|(_, b)| b.contains("\"invalid\""))
    }));
    let (_, body) = http(admin, "GET", "a", "/config", Some("t0k")).unwrap();
    assert!(body.contains("\"version\": \"two\""), "{body}");
    assert!(
        body.contains("edge.toml:") && body.contains("site[0].pool"),
        "{body}"
    );
    assert!(
        http(listen, "GET", "h", "/", None)
            .unwrap()
            .1
            .contains("origin-b"),
        "old config keeps serving"
    );

    signal(&edge, "-TERM");
    let end = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = edge.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < end, "edge did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "drain exits 0, got {status:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn validate_points_at_file_line_and_field() {
    let dir = temp_dir("validate");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\nwieght = 3\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["validate", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:4:"), "{err}");
    assert!(err.contains("wieght"), "{err}");

    let ok = Command::new(BIN)
        .args([
            "validate",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/edge.toml"),
        ])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let _ = std::fs::remove_dir_all(dir);
}
