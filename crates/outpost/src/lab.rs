//! `outpost lab`: a whole fleet on this machine. The control plane, managed PoPs in named
//! regions and demo origins run as child processes of this same binary on loopback addresses;
//! the lab registers the PoPs, applies a first config, sends a little traffic, prints what runs
//! where and writes it to DIR/lab.json. SIGINT/SIGTERM stops every child, PoPs first.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use outpost_control::client::Client;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

#[derive(Args)]
pub struct LabArgs {
    /// Keeps the lab's state (store, PoP state dirs, logs, lab.json) here; default: a temporary
    /// directory removed at exit.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// How many PoPs (1 to 20).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=20))]
    pops: u8,
    /// Use ephemeral ports everywhere instead of the usual ones (7000, 8080, 9901, 9000).
    #[arg(long)]
    ephemeral_ports: bool,
}

const REGIONS: &[(&str, &str, &str)] = &[
    ("fra", "eu-central", "Frankfurt"),
    ("iad", "us-east", "Ashburn"),
    ("sin", "ap-southeast", "Singapore"),
    ("gru", "sa-east", "Sao Paulo"),
    ("syd", "ap-southeast-2", "Sydney"),
    ("lhr", "eu-west", "London"),
    ("nrt", "ap-northeast", "Tokyo"),
    ("sjc", "us-west", "San Jose"),
];

struct Proc {
    name: String,
    child: Child,
}

/// An address on `ip` with `port` if it is free, else an ephemeral port (on `ip`, or on
/// 127.0.0.1 when `ip` cannot be bound at all).
fn pick(ip: Ipv4Addr, port: u16, ephemeral: bool) -> SocketAddr {
    let want = SocketAddr::new(IpAddr::V4(ip), if ephemeral { 0 } else { port });
    for candidate in [
        want,
        SocketAddr::new(IpAddr::V4(ip), 0),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    ] {
        if let Ok(l) = TcpListener::bind(candidate) {
            if let Ok(addr) = l.local_addr() {
                return addr;
            }
        }
    }
    want
}

fn fleet_toml(origins: &[(String, SocketAddr)]) -> String {
    let mut t = String::from(
        "# The lab's fleet config: edit it and run `outpost apply -f` on this file.\n\
         # Every PoP gets it; each binds listener \"main\" to its own address (--bind main=...).\n\
         version = \"lab\"\n\n\
         [log]\n\
         # Relative paths are resolved against each PoP's state dir.\n\
         access_log = \"access.log\"\n\n\
         [[listener]]\nname = \"main\"\naddress = \"127.0.0.1:8080\"\n\n\
         [[site]]\nname = \"shop\"\nhosts = [\"shop.lab\", \"www.shop.lab\"]\npool = \"shop\"\n\n\
         [[site]]\nname = \"api\"\nhosts = [\"api.lab\"]\npool = \"api\"\n\n\
         [[pool]]\nname = \"shop\"\n",
    );
    for (_, addr) in origins {
        t.push_str(&format!("[[pool.origin]]\nurl = \"http://{addr}\"\n"));
    }
    t.push_str("[pool.health_check]\npath = \"/healthz\"\ninterval = \"2s\"\n\n");
    t.push_str("[[pool]]\nname = \"api\"\n");
    if let Some((_, addr)) = origins.last() {
        t.push_str(&format!("[[pool.origin]]\nurl = \"http://{addr}\"\n"));
    }
    t
}

pub fn run(args: LabArgs) -> ExitCode {
    crate::init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outpost lab: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (dir, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("outpost-lab-{}", std::process::id())),
            true,
        ),
    };
    let mut procs = Vec::new();
    let result = runtime.block_on(lab(&args, &dir, &mut procs));
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost lab: {e}");
            eprintln!("outpost lab: logs are in {}", dir.join("logs").display());
            ExitCode::FAILURE
        }
    };
    runtime.block_on(stop_all(&mut procs));
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    code
}

fn spawn(
    bin: &Path,
    logs: &Path,
    name: &str,
    args: &[String],
    pop_token: Option<&str>,
) -> Result<Proc, String> {
    let log = std::fs::File::create(logs.join(format!("{name}.log")))
        .map_err(|e| format!("cannot create the log of {name}: {e}"))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("cannot create the log of {name}: {e}"))?;
    let mut cmd = Command::new(bin);
    if let Some(token) = pop_token {
        cmd.env("OUTPOST_POP_TOKEN", token);
    }
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .env("OUTPOST_WORKERS", "1")
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    Ok(Proc {
        name: name.to_owned(),
        child,
    })
}

/// SIGTERM to every child (PoPs first: they drain), then SIGKILL to any still running after 10 s.
async fn stop_all(procs: &mut [Proc]) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for p in procs.iter().rev() {
        if let Some(pid) = p.child.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    for p in procs.iter_mut().rev() {
        match tokio::time::timeout(Duration::from_secs(10), p.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("outpost lab: {} did not stop in 10 s; killing it", p.name);
                let _ = p.child.kill().await;
            }
        }
    }
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "{what} did not happen within {} s {last}",
        limit.as_secs()
    ))
}

async fn lab(args: &LabArgs, dir: &Path, procs: &mut Vec<Proc>) -> Result<(), String> {
    let bin = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let eph = args.ephemeral_ports;

    // The control plane.
    let control_addr = pick(Ipv4Addr::LOCALHOST, 7000, eph);
    let token_file = dir.join("admin.token");
    procs.push(spawn(
        &bin,
        &logs,
        "control",
        &[
            "control".into(),
            "--data-dir".into(),
            dir.join("control").display().to_string(),
            "--listen".into(),
            control_addr.to_string(),
            "--bootstrap-token-file".into(),
            token_file.display().to_string(),
        ],
        None,
    )?);
    let url = format!("http://{control_addr}");
    let probe = Client::new(&url, None).map_err(|e| e.to_string())?;
    wait_for("the control plane's start", Duration::from_secs(20), || async {
        Ok(probe.get("/v1/openapi.json").await.is_ok())
    })
    .await?;
    let token = std::fs::read_to_string(&token_file)
        .map_err(|e| format!("{}: {e}", token_file.display()))?
        .trim()
        .to_owned();
    let api = Client::new(&url, Some(token.clone())).map_err(|e| e.to_string())?;

    // Demo origins.
    let mut origins = Vec::new();
    for (i, name) in ["origin-a", "origin-b"].iter().enumerate() {
        let addr = pick(Ipv4Addr::new(127, 0, 0, 21 + i as u8), 9000, eph);
        procs.push(spawn(
            &bin,
            &logs,
            name,
            &[
                "origin".into(),
                "--listen".into(),
                addr.to_string(),
                "--name".into(),
                (*name).into(),
            ],
            None,
        )?);
        origins.push(((*name).to_owned(), addr));
    }

    // The first config (kept in DIR/fleet.toml for the user to edit and apply again).
    let fleet = fleet_toml(&origins);
    let fleet_path = dir.join("fleet.toml");
    std::fs::write(&fleet_path, &fleet).map_err(|e| format!("{}: {e}", fleet_path.display()))?;
    let applied = api
        .post(
            "/v1/config",
            &json!({"toml": fleet, "message": "outpost lab: first config"}),
        )
        .await
        .map_err(|e| format!("applying the first config: {e}"))?;
    let version = applied["version"].as_u64().unwrap_or(0);

    // PoPs: registered, each with its own token, then started.
    let mut pops = Vec::new();
    for i in 0..usize::from(args.pops) {
        let (code, region, location) = REGIONS[i % REGIONS.len()];
        let id = if i < REGIONS.len() {
            format!("{code}-1")
        } else {
            format!("{code}-{}", i / REGIONS.len() + 1)
        };
        let ip = Ipv4Addr::new(127, 0, 0, 11 + i as u8);
        let http = pick(ip, 8080, eph);
        let admin = pick(ip, 9901, eph);
        api.put(
            &format!("/v1/pops/{id}"),
            &json!({"region": region, "location": location, "capacity": 100}),
        )
        .await
        .map_err(|e| format!("registering {id}: {e}"))?;
        let token_name = format!("pop-{id}");
        let _ = api.delete(&format!("/v1/tokens/{token_name}")).await;
        let created = api
            .post(
                "/v1/tokens",
                &json!({"name": token_name, "role": "pop", "pop": id}),
            )
            .await
            .map_err(|e| format!("token for {id}: {e}"))?;
        let pop_token = created["token"].as_str().unwrap_or_default().to_owned();
        let state_dir = dir.join("pops").join(&id);
        // The PoP's token goes through the environment, not the command line (ps shows that).
        procs.push(spawn(
            &bin,
            &logs,
            &id,
            &[
                "edge".into(),
                "--control".into(),
                url.clone(),
                "--pop".into(),
                id.clone(),
                "--state-dir".into(),
                state_dir.display().to_string(),
                "--bind".into(),
                format!("main={http}"),
                "--admin".into(),
                admin.to_string(),
            ],
            Some(&pop_token),
        )?);
        pops.push(json!({"id": id, "region": region, "location": location, "http": http.to_string(), "admin": admin.to_string(), "state_dir": state_dir}));
    }

    let n = pops.len();
    wait_for(
        "every PoP applying the first config",
        Duration::from_secs(30),
        || async {
            let status = api.get("/v1/status").await.map_err(|e| e.to_string())?;
            Ok(status["pops"].as_array().is_some_and(|p| {
                p.iter()
                    // Connected too: a reused --dir remembers versions applied in an earlier run.
                    .filter(|p| {
                        p["applied_version"].as_u64() >= Some(version) && p["connected"] == json!(true)
                    })
                    .count()
                    >= n
            }))
        },
    )
    .await?;

    // A little client traffic through every PoP.
    let mut traffic = Vec::new();
    for pop in &pops {
        let addr: SocketAddr = pop["http"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e| format!("{e}"))?;
        let mut ok = 0;
        for path in ["/", "/hello", "/size/1024"] {
            if let Ok((200, _)) = get(addr, "shop.lab", path).await {
                ok += 1;
            }
        }
        traffic.push(format!("{}: {ok}/3 OK", pop["id"].as_str().unwrap_or_default()));
    }

    let lab_json = json!({
        "dir": dir,
        "control": {"url": url, "token": token, "token_file": token_file, "api": format!("{url}/v1")},
        "pops": pops.iter().map(|p| json!({"id": p["id"], "region": p["region"], "location": p["location"], "http": p["http"], "admin": p["admin"], "state_dir": p["state_dir"]})).collect::<Vec<Value>>(),
        "sites": [
            {"name": "shop", "hosts": ["shop.lab", "www.shop.lab"]},
            {"name": "api", "hosts": ["api.lab"]},
        ],
        "origins": origins.iter().map(|(name, addr)| json!({"name": name, "address": addr.to_string()})).collect::<Vec<Value>>(),
        "config_version": version,
        "fleet_config": fleet_path,
        "logs": logs,
    });
    let lab_path = dir.join("lab.json");
    std::fs::write(
        &lab_path,
        serde_json::to_vec_pretty(&lab_json).unwrap_or_default(),
    )
    .map_err(|e| format!("{}: {e}", lab_path.display()))?;

    let first = &pops[0];
    println!(
        "\nOutpost lab is running ({} PoPs, config version {version}). Ctrl-C stops everything.\n",
        pops.len()
    );
    println!("control plane  {url}/v1   token in {}", token_file.display());
    for p in &pops {
        println!(
            "PoP {:<8} {:<15} {:<10} http://{}  admin http://{}",
            p["id"].as_str().unwrap_or_default(),
            p["region"].as_str().unwrap_or_default(),
            p["location"].as_str().unwrap_or_default(),
            p["http"].as_str().unwrap_or_default(),
            p["admin"].as_str().unwrap_or_default()
        );
    }
    for (name, addr) in &origins {
        println!("origin {name:<10} http://{addr}");
    }
    println!("traffic        {}", traffic.join(", "));
    println!("\nTry:");
    println!(
        "  curl -H 'Host: shop.lab' http://{}/hello",
        first["http"].as_str().unwrap_or_default()
    );
    println!(
        "  curl -H 'Host: api.lab' http://{}/size/64",
        first["http"].as_str().unwrap_or_default()
    );
    println!(
        "  curl -s http://{}/metrics | grep outpost_requests",
        first["admin"].as_str().unwrap_or_default()
    );
    println!(
        "  export OUTPOST_CONTROL={url} OUTPOST_TOKEN=$(cat {})",
        token_file.display()
    );
    println!("  outpost status");
    println!("  outpost purge --prefix http://shop.lab/   # or: outpost purge http://shop.lab/hello");
    println!(
        "  $EDITOR {} && outpost apply -f {}",
        fleet_path.display(),
        fleet_path.display()
    );
    println!("  outpost history; outpost diff; outpost revert 1");
    println!("  curl -H \"Authorization: Bearer $OUTPOST_TOKEN\" {url}/v1/pops");
    println!(
        "\nState and logs in {} (lab.json has all of this as JSON).",
        dir.display()
    );

    // Run until a signal, or until a child dies.
    let signal = crate::control::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => {
                eprintln!("outpost lab: stopping");
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for p in procs.iter_mut() {
                    if let Ok(Some(status)) = p.child.try_wait() {
                        return Err(format!("{} exited ({status}); see {}", p.name, logs.join(format!("{}.log", p.name)).display()));
                    }
                }
            }
        }
    }
}

/// A plain HTTP/1.1 GET; (status, body).
async fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("read timed out"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, text))
}
