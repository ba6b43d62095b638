//! `outpost origin`: a small demo origin for trying a PoP without a real backend (and for the
//! lab later). It is not a web server to deploy: it answers every path from memory.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(clap::Args)]
pub struct OriginArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Name shown in every answer (and the `x-origin` header), to tell origins apart.
    #[arg(long, default_value = "demo-origin")]
    name: String,
}

pub fn run(args: OriginArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outpost origin: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("outpost origin: cannot bind {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        eprintln!("demo origin \"{}\" on http://{}", args.name, args.listen);
        let name: &'static str = Box::leak(args.name.into_boxed_str());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |req| async move { Ok::<_, Infallible>(answer(name, req)) });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// `/size/N` answers N bytes; `/status/N` answers status N; anything else a short page.
fn answer(name: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let (status, body) = if let Some(n) = path.strip_prefix("/size/") {
        (200, "x".repeat(n.parse::<usize>().unwrap_or(0).min(64 << 20)))
    } else if let Some(code) = path.strip_prefix("/status/") {
        let code = code
            .parse::<u16>()
            .ok()
            .filter(|c| (200..600).contains(c))
            .unwrap_or(400);
        (code, format!("{name}: status {code}\n"))
    } else {
        let host = req
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-");
        (
            200,
            format!("hello from {name}: {} {path} (Host: {host})\n", req.method()),
        )
    };
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .header("cache-control", "public, max-age=60")
        .header("x-origin", name)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
