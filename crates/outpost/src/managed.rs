//! `outpost edge --control URL --pop ID --token TOKEN --state-dir DIR`: a PoP run by the
//! control plane (see `outpost-managed`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use outpost_managed::{Agent, ManagedOptions, PurgeSink};
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct ManagedArgs {
    /// Managed mode: the control plane's URL (http://host:port); the PoP takes its config from it.
    #[arg(long, requires_all = ["pop", "token", "state_dir"], conflicts_with_all = ["config", "listen", "origin"])]
    pub control: Option<String>,
    /// Managed mode: CA certificate(s) (PEM) to trust for an https:// control URL (default: the
    /// public web roots).
    #[arg(long, requires = "control")]
    pub control_ca: Option<PathBuf>,
    /// Managed mode: this PoP's id in the control plane's inventory.
    #[arg(long, requires = "control")]
    pub pop: Option<String>,
    /// Managed mode: this PoP's token (it opens only this PoP's stream).
    #[arg(long, env = "OUTPOST_POP_TOKEN", hide_env_values = true, requires = "control")]
    pub token: Option<String>,
    /// Managed mode: where the last-known-good config, certificates and purge position are kept.
    #[arg(long, requires = "control")]
    pub state_dir: Option<PathBuf>,
    /// Managed mode: local address for a listener of the fleet config, NAME=ADDR (repeatable).
    #[arg(long = "bind", value_parser = parse_bind, requires = "control")]
    pub binds: Vec<(String, SocketAddr)>,
}

fn parse_bind(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("\"{s}\": use NAME=HOST:PORT, e.g. main=0.0.0.0:80"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("\"{s}\": {addr} is not an address: {e}"))?;
    Ok((name.to_owned(), addr))
}

/// Applies a purge from the control plane to this PoP's cache, through the same call as the
/// admin API's `POST /purge` (the wire format is that body). A PoP without a cache has nothing
/// to purge and acknowledges.
fn purge_sink() -> PurgeSink {
    Arc::new(move |edge, purge| {
        let request: outpost_cache::PurgeRequest = serde_json::to_value(purge)
            .and_then(serde_json::from_value)
            .map_err(|e| format!("purge {}: {e}", purge.describe()))?;
        match edge.shared().purge(request) {
            Ok(_) | Err(outpost_edge::PurgeError::NoCache) => Ok(()),
            Err(e) => Err(format!("purge {}: {e}", purge.describe())),
        }
    })
}

pub async fn serve(args: ManagedArgs, admin: &str) -> ExitCode {
    let Ok(admin) = crate::edge::parse_admin(admin) else {
        return ExitCode::from(2);
    };
    let (Some(control_url), Some(pop), Some(token), Some(state_dir)) =
        (args.control, args.pop, args.token, args.state_dir)
    else {
        eprintln!("outpost edge: managed mode needs --control, --pop, --token and --state-dir");
        return ExitCode::from(2);
    };
    let control_tls = if control_url.starts_with("https://") {
        match outpost_control::client::tls_client_config(args.control_ca.as_deref()) {
            Ok(config) => Some(Arc::new(config)),
            Err(e) => {
                eprintln!("outpost edge: --control-ca: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let options = ManagedOptions {
        control_tls,
        control_url,
        pop,
        token,
        state_dir,
        admin,
        binds: args.binds,
        purge_sink: purge_sink(),
    };
    let stop = CancellationToken::new();
    let stop_on_signal = stop.clone();
    let signals = tokio::spawn(async move {
        crate::control::shutdown_signal().await;
        stop_on_signal.cancel();
    });
    let agent = match Agent::start(options, stop.clone()).await {
        Ok(agent) => agent,
        Err(outpost_managed::AgentError::Stopped) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost edge: {e}");
            return ExitCode::FAILURE;
        }
    };
    signals.abort();
    crate::edge::wait_for_signals(agent.edge()).await;
    agent.disconnect().await;
    agent.edge().drain().await;
    tracing::info!("drained; exiting");
    ExitCode::SUCCESS
}
