//! The real binary as a child process: quick start, config file, SIGHUP reload (good and bad),
//! SIGTERM drain, and `outpost validate`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

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
    let origin = free_addr();
    let _o = spawn(&["origin", "--listen", &origin.to_string(), "--name", "qs-origin"]);
    // One worker: with io_uring where the kernel has it (origin heads batched), and without.
    for io_uring in ["auto", "off"] {
        let listen = free_addr();
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
            "--io-uring",
            io_uring,
        ]);
        assert!(
            wait_until(Duration::from_secs(10), || http(
                listen,
                "GET",
                "any.example",
                "/x",
                None,
                None
            )
            .is_ok_and(
                |(s, b)| s == 200 && b.contains("hello from qs-origin: GET /x (Host: any.example)")
            )),
            "quick start serves through the origin (--io-uring {io_uring})"
        );
        for i in 0..20 {
            let path = format!("/n{i}");
            let (status, body) = http(listen, "GET", "any.example", &path, None, None).unwrap();
            assert_eq!(status, 200);
            assert!(
                body.contains(&format!("GET {path} ")),
                "--io-uring {io_uring}: {body}"
            );
        }
    }
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
            wait_until(Duration::from_secs(10), || http(
                listen, "GET", "h", "/", None, None
            )
            .is_ok_and(|(s, _)| s == 200)),
            "{mode}: PoP up"
        );
        assert_eq!(
            http(listen, "GET", "h", attack, None, None).unwrap().0,
            expected,
            "--waf {mode}"
        );
        assert_eq!(
            http(listen, "GET", "h", "/search?q=O%27Reilly+books", None, None)
                .unwrap()
                .0,
            200,
            "--waf {mode}: benign"
        );
    }
}

#[test]
fn sighup_reloads_refuses_bad_configs_and_sigterm_drains() {
    let dir = temp_dir("cli", "reload");
    let (oa, ob, listen, admin) = (free_addr(), free_addr(), free_addr(), free_addr());
    let _a = spawn(&["origin", "--listen", &oa.to_string(), "--name", "origin-a"]);
    let _b = spawn(&["origin", "--listen", &ob.to_string(), "--name", "origin-b"]);
    let path = dir.join("edge.toml");
    std::fs::write(&path, config(listen, admin, oa, "one")).unwrap();
    let mut edge = spawn(&["edge", "--config", path.to_str().unwrap(), "--workers", "2"]);
    assert!(wait_until(Duration::from_secs(10), || http(
        listen, "GET", "h", "/", None, None
    )
    .is_ok_and(|(_, b)| b.contains("origin-a"))));

    std::fs::write(&path, config(listen, admin, ob, "two")).unwrap();
    edge.signal("-HUP");
    assert!(
        wait_until(Duration::from_secs(10), || http(
            listen, "GET", "h", "/", None, None
        )
        .is_ok_and(|(_, b)| b.contains("origin-b"))),
        "SIGHUP applies the new config"
    );

    std::fs::write(
        &path,
        config(listen, admin, ob, "three").replace("pool = \"p\"", "pool = \"nope\""),
    )
    .unwrap();
    edge.signal("-HUP");
    assert!(wait_until(Duration::from_secs(10), || {
        http(admin, "GET", "a", "/config", Some("t0k"), None).is_ok_and(|(_, b)| b.contains("\"invalid\""))
    }));
    let (_, body) = http(admin, "GET", "a", "/config", Some("t0k"), None).unwrap();
    assert!(body.contains("\"version\": \"two\""), "{body}");
    assert!(
        body.contains("edge.toml:") && body.contains("site[0].pool"),
        "{body}"
    );
    assert!(
        http(listen, "GET", "h", "/", None, None)
            .unwrap()
            .1
            .contains("origin-b"),
        "old config keeps serving"
    );

    edge.signal("-TERM");
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
    let dir = temp_dir("cli", "validate");
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
