//! The control plane's CLI: apply, diff, history, revert, pops, status, purge, tokens.
//! Every command talks to the `/v1` API with `--control URL --token TOKEN` (or OUTPOST_CONTROL
//! and OUTPOST_TOKEN).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use outpost_control::client::{Client, ClientError};
use serde_json::{json, Value};

#[derive(Args, Clone)]
pub struct ApiArgs {
    /// The control plane's URL.
    #[arg(
        long = "control",
        env = "OUTPOST_CONTROL",
        default_value = "http://127.0.0.1:7000"
    )]
    pub control: String,
    /// An API token (viewer, operator or admin).
    #[arg(long, env = "OUTPOST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate(s) (PEM) to trust for an https:// control URL (default: public roots).
    #[arg(long, env = "OUTPOST_CONTROL_CA")]
    pub control_ca: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum ApiCommand {
    /// Make FILE (or every *.toml in DIR, in name order) the fleet config: prints the diff,
    /// stores a new version unless nothing changed, refuses if the config moved meanwhile.
    Apply {
        #[command(flatten)]
        api: ApiArgs,
        /// A fleet config file (same format as `outpost edge --config`), or a directory of them.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Validate and print the diff; store nothing.
        #[arg(long)]
        dry_run: bool,
        /// Why: stored with the version.
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Diff between two versions (default: the latest against the one before), or of a local
    /// file against the latest (-f).
    Diff {
        #[command(flatten)]
        api: ApiArgs,
        from: Option<u64>,
        to: Option<u64>,
        #[arg(short = 'f', long = "file", conflicts_with_all = ["from", "to"])]
        file: Option<PathBuf>,
    },
    /// Every config version: number, time, author, message.
    History {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Make a new version with the content of version N.
    Revert {
        #[command(flatten)]
        api: ApiArgs,
        version: u64,
        #[arg(short, long)]
        message: Option<String>,
    },
    /// The PoP inventory with each PoP's state and sync; `pops add ID` registers one.
    Pops {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        action: Option<PopAction>,
    },
    /// Fleet status: the latest version, PoPs in sync, sync lag, pending purges.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Purge from every PoP: a URL, or --prefix, --tag or --site; waits for the PoPs' acks.
    Purge {
        #[command(flatten)]
        api: ApiArgs,
        /// One URL (with query), e.g. http://shop.example/img/a.png
        #[arg(required_unless_present_any = ["prefix", "tag", "site"], conflicts_with_all = ["prefix", "tag", "site"])]
        url: Option<String>,
        #[arg(long, conflicts_with_all = ["tag", "site"])]
        prefix: Option<String>,
        #[arg(long, conflicts_with = "site")]
        tag: Option<String>,
        #[arg(long)]
        site: Option<String>,
        /// Mark stale instead of removing (served while revalidating).
        #[arg(long)]
        soft: bool,
        /// How long to wait for every PoP's ack (0: do not wait).
        #[arg(long, default_value = "10s", value_parser = humantime_duration)]
        wait: Duration,
    },
    /// Certificates for the fleet config's [[certificate]]s: upload (PEM), list with expiry.
    Cert {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        action: Option<CertAction>,
    },
    /// Create an API or PoP token (admin); the secret is printed once.
    Token {
        #[command(flatten)]
        api: ApiArgs,
        name: String,
        /// viewer, operator, admin, or pop (with --pop).
        #[arg(long)]
        role: String,
        #[arg(long)]
        pop: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum PopAction {
    /// Add or replace a PoP in the inventory.
    Add {
        id: String,
        #[arg(long, default_value = "")]
        region: String,
        #[arg(long, default_value = "")]
        location: String,
        #[arg(long, default_value_t = 0)]
        capacity: u32,
    },
    /// Set a PoP's state: active, draining or maintenance.
    State { id: String, state: String },
}

#[derive(Subcommand)]
pub enum CertAction {
    /// Upload (or replace) the certificate chain and key for the [[certificate]] named NAME;
    /// PoPs receive it with the config.
    Put {
        name: String,
        /// PEM certificate chain, leaf first.
        #[arg(long)]
        cert: PathBuf,
        /// PEM private key.
        #[arg(long)]
        key: PathBuf,
    },
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    outpost_config::parse_duration(s).map_err(|e| e.to_string())
}

pub fn run(cmd: ApiCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outpost: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("outpost: {e}");
            match &e {
                CliError::Api(ClientError::Api { .. }) | CliError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Api(#[from] ClientError),
    #[error("{0}")]
    Usage(String),
}

fn client(api: &ApiArgs) -> Result<Client, CliError> {
    if api.token.is_none() {
        return Err(CliError::Usage(
            "no token: pass --token TOKEN or set OUTPOST_TOKEN (an admin token is in the control plane's DATA_DIR/admin.token)".into(),
        ));
    }
    Ok(Client::with_ca(
        &api.control,
        api.token.clone(),
        api.control_ca.as_deref(),
    )?)
}

/// The fleet config text from a file, or every `*.toml` of a directory in name order.
pub fn read_config(path: &Path) -> Result<String, String> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(format!("{}: no *.toml file in this directory", path.display()));
        }
        let mut text = String::new();
        for f in files {
            let part = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            text.push_str(&format!(
                "# --- {} ---\n",
                f.file_name().unwrap_or_default().to_string_lossy()
            ));
            text.push_str(&part);
            if !part.ends_with('\n') {
                text.push('\n');
            }
        }
        Ok(text)
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

async fn latest_version(c: &Client) -> Result<u64, CliError> {
    match c.get("/v1/config").await {
        Ok(v) => Ok(v["version"].as_u64().unwrap_or(0)),
        Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn execute(cmd: ApiCommand) -> Result<ExitCode, CliError> {
    match cmd {
        ApiCommand::Apply {
            api,
            file,
            dry_run,
            message,
        } => {
            let c = client(&api)?;
            let toml = read_config(&file).map_err(CliError::Usage)?;
            let base = latest_version(&c).await?;
            let message = if message.is_empty() {
                format!("outpost apply -f {}", file.display())
            } else {
                message
            };
            let out = c
                .post(
                    "/v1/config",
                    &json!({"toml": toml, "message": message, "base_version": base, "dry_run": dry_run, "file": file.display().to_string()}),
                )
                .await?;
            let version = out["version"].as_u64().unwrap_or(0);
            if out["unchanged"] == json!(true) {
                println!("no change: version {version} already has this content");
            } else {
                print!("{}", out["diff"].as_str().unwrap_or(""));
                if dry_run {
                    println!("dry run: would store version {version} (nothing stored)");
                } else {
                    println!(
                        "applied: version {version} (was {base}); PoPs are receiving it (outpost status)"
                    );
                }
            }
        }
        ApiCommand::Diff { api, from, to, file } => {
            let c = client(&api)?;
            if let Some(file) = file {
                let toml = read_config(&file).map_err(CliError::Usage)?;
                let out = c
                    .post(
                        "/v1/config",
                        &json!({"toml": toml, "dry_run": true, "file": file.display().to_string()}),
                    )
                    .await?;
                if out["unchanged"] == json!(true) {
                    println!("no difference from version {}", out["version"]);
                } else {
                    print!("{}", out["diff"].as_str().unwrap_or(""));
                }
            } else {
                let mut q = Vec::new();
                if let Some(f) = from {
                    q.push(format!("from={f}"));
                }
                if let Some(t) = to {
                    q.push(format!("to={t}"));
                }
                let out = c.get(&format!("/v1/config/diff?{}", q.join("&"))).await?;
                let diff = out["diff"].as_str().unwrap_or("");
                if diff.is_empty() {
                    println!("no difference between version {} and {}", out["from"], out["to"]);
                } else {
                    print!("{diff}");
                }
            }
        }
        ApiCommand::History { api } => {
            let c = client(&api)?;
            let out = c.get("/v1/config/versions").await?;
            println!("{:>7}  {:<24}  {:<12}  message", "version", "created", "author");
            for v in out["versions"].as_array().into_iter().flatten() {
                let revert = v["reverted_from"]
                    .as_u64()
                    .map(|n| format!(" (revert to {n})"))
                    .unwrap_or_default();
                println!(
                    "{:>7}  {:<24}  {:<12}  {}{revert}",
                    s(&v["version"]),
                    s(&v["created"]),
                    s(&v["author"]),
                    s(&v["message"])
                );
            }
        }
        ApiCommand::Revert {
            api,
            version,
            message,
        } => {
            let c = client(&api)?;
            let base = latest_version(&c).await?;
            let out = c
                .post(
                    "/v1/config/revert",
                    &json!({"version": version, "message": message, "base_version": base}),
                )
                .await?;
            if out["unchanged"] == json!(true) {
                println!("no change: the latest version already has version {version}'s content");
            } else {
                print!("{}", out["diff"].as_str().unwrap_or(""));
                println!(
                    "reverted: version {} has the content of version {version}",
                    out["version"]
                );
            }
        }
        ApiCommand::Pops { api, action } => {
            let c = client(&api)?;
            match action {
                Some(PopAction::Add {
                    id,
                    region,
                    location,
                    capacity,
                }) => {
                    c.put(
                        &format!("/v1/pops/{id}"),
                        &json!({"region": region, "location": location, "capacity": capacity}),
                    )
                    .await?;
                    println!("PoP {id} added; create its token: outpost token {id} --role pop --pop {id}");
                }
                Some(PopAction::State { id, state }) => {
                    c.patch(&format!("/v1/pops/{id}"), &json!({"state": state}))
                        .await?;
                    println!("PoP {id} is now {state}");
                }
                None => {
                    let out = c.get("/v1/pops").await?;
                    print_pops(&out["pops"]);
                }
            }
        }
        ApiCommand::Status { api } => {
            let c = client(&api)?;
            let out = c.get("/v1/status").await?;
            match out["config"].as_object() {
                Some(cfg) => println!(
                    "config: version {} by {} at {} ({})",
                    s(&cfg["version"]),
                    s(&cfg["author"]),
                    s(&cfg["created"]),
                    s(&cfg["message"])
                ),
                None => println!("config: none yet (outpost apply -f FILE)"),
            }
            println!(
                "pops: {} total, {} connected, {} in sync",
                out["pops_total"], out["pops_connected"], out["pops_in_sync"]
            );
            print_pops(&out["pops"]);
            let pending = out["purges_pending"].as_array().map_or(0, Vec::len);
            println!("purges pending: {pending}");
        }
        ApiCommand::Purge {
            api,
            url,
            prefix,
            tag,
            site,
            soft,
            wait,
        } => {
            let c = client(&api)?;
            let mut body = match (url, prefix, tag, site) {
                (Some(u), ..) => json!({"url": u}),
                (_, Some(p), ..) => json!({"prefix": p}),
                (_, _, Some(t), _) => json!({"tag": t}),
                (_, _, _, Some(s)) => json!({"site": s}),
                _ => return Err(CliError::Usage("give a URL, --prefix, --tag or --site".into())),
            };
            if soft {
                body["soft"] = json!(true);
            }
            let started = Instant::now();
            let out = c.post("/v1/purges", &body).await?;
            let seq = out["seq"].as_u64().unwrap_or(0);
            println!("purge {seq} accepted for {} PoP(s)", out["targets"]);
            let mut status = out;
            while status["complete"] != json!(true) && started.elapsed() < wait {
                tokio::time::sleep(Duration::from_millis(20)).await;
                status = c.get(&format!("/v1/purges/{seq}")).await?;
            }
            for p in status["pops"].as_array().into_iter().flatten() {
                let state = if p["done"] == json!(true) {
                    format!("done in {} ms", s(&p["latency_ms"]))
                } else {
                    "pending (applied when it reconnects)".into()
                };
                let err = p["error"]
                    .as_str()
                    .map(|e| format!(" error: {e}"))
                    .unwrap_or_default();
                println!("  {:<16} {state}{err}", s(&p["pop"]));
            }
            if status["complete"] == json!(true) {
                println!("complete in {} ms", s(&status["completion_ms"]));
            } else if !wait.is_zero() {
                println!(
                    "not every PoP has acknowledged yet: outpost purge status is at GET /v1/purges/{seq}"
                );
                return Ok(ExitCode::from(3));
            }
        }
        ApiCommand::Cert { api, action } => {
            let c = client(&api)?;
            match action {
                Some(CertAction::Put { name, cert, key }) => {
                    let read = |p: &Path| {
                        std::fs::read_to_string(p)
                            .map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))
                    };
                    let out = c
                        .put(
                            &format!("/v1/certificates/{name}"),
                            &json!({"cert_pem": read(&cert)?, "key_pem": read(&key)?}),
                        )
                        .await?;
                    println!("certificate {name} uploaded (expires {})", s(&out["not_after"]));
                }
                None => {
                    let out = c.get("/v1/certificates").await?;
                    println!("{:<20} {:<26} {:>9}  uploaded", "name", "not after", "days left");
                    for cert in out["certificates"].as_array().into_iter().flatten() {
                        println!(
                            "{:<20} {:<26} {:>9}  {}",
                            s(&cert["name"]),
                            s(&cert["not_after"]),
                            s(&cert["expires_in_days"]),
                            s(&cert["uploaded"])
                        );
                    }
                }
            }
        }
        ApiCommand::Token { api, name, role, pop } => {
            let c = client(&api)?;
            let out = c
                .post("/v1/tokens", &json!({"name": name, "role": role, "pop": pop}))
                .await?;
            println!("{}", s(&out["token"]));
            eprintln!("token \"{name}\" ({role}) created; it is shown only now");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_pops(pops: &Value) {
    println!(
        "{:<12} {:<10} {:<12} {:<11} {:<9} {:>7} {:>7} {:>8}  last nack",
        "id", "region", "location", "state", "connected", "desired", "applied", "lag"
    );
    for p in pops.as_array().into_iter().flatten() {
        let nack = p["last_nack"]
            .as_object()
            .map(|n| {
                format!(
                    "v{}: {}",
                    s(&n["version"]),
                    n["errors"]
                        .as_array()
                        .and_then(|e| e.first())
                        .map(s)
                        .unwrap_or_default()
                )
            })
            .unwrap_or_default();
        println!(
            "{:<12} {:<10} {:<12} {:<11} {:<9} {:>7} {:>7} {:>7}s  {nack}",
            s(&p["id"]),
            s(&p["region"]),
            s(&p["location"]),
            s(&p["state"]),
            if p["connected"] == json!(true) {
                "yes"
            } else {
                "no"
            },
            s(&p["desired_version"]),
            s(&p["applied_version"]),
            s(&p["sync_lag_seconds"]),
        );
    }
}
