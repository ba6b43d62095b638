//! The admin listener: liveness, readiness, Prometheus metrics, the active config, reload.
//!
//! Loopback by default; config validation refuses a non-loopback address without a token.
//! When a token is set every endpoint but `/healthz` and `/readyz` requires
//! `Authorization: Bearer TOKEN` (compared in constant time).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::{ApplyError, PurgeError, Shared};

pub fn spawn(shared: Arc<Shared>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "admin listener ready");
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shared.stopped.cancelled() => break,
                r = listener.accept() => r,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(route(&shared, req).await) }
                });
                let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10));
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(local)
}

type AdminResponse = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> AdminResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(body.into()))
        .expect("static headers are valid")
}

fn json(status: StatusCode, value: &serde_json::Value) -> AdminResponse {
    reply(status, "application/json", format!("{value:#}\n"))
}

fn problem(status: StatusCode, title: &str, detail: &str, errors: &[String]) -> AdminResponse {
    let body = serde_json::json!({ "type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail, "errors": errors });
    reply(status, "application/problem+json", format!("{body:#}\n"))
}

fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let snapshot = shared.snapshot.load();
    let Some(token) = snapshot.loaded.config.admin.token.as_deref() else {
        return true;
    };
    let Some((scheme, given)) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
    else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(given.trim().as_bytes(), token.trim().as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> AdminResponse {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/healthz") => return reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => {
            return if shared.is_ready() {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            };
        }
        _ => {}
    }
    if !authorized(shared, &req) {
        let mut resp = problem(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "this endpoint needs Authorization: Bearer <admin.token>",
            &[],
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        return resp;
    }
    match (req.method(), path) {
        (&Method::GET, "/metrics") => {
            for pool in &shared.snapshot.load().pools {
                pool.refresh_gauges();
            }
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                shared.metrics.encode(),
            )
        }
        (&Method::GET, "/config") => {
            let s = shared.snapshot.load();
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "pop": shared.pop_id,
                    "version": s.version(),
                    "hash": s.loaded.hash,
                    "generation": s.generation,
                    "source": s.loaded.source,
                    "applied_at": humantime::format_rfc3339_millis(s.applied_at).to_string(),
                    "last_reload": shared.last_reload(),
                }),
            )
        }
        (&Method::POST, "/reload") => match shared.reload_from_file().await {
            Ok(applied) => json(
                StatusCode::OK,
                &serde_json::to_value(&applied).unwrap_or_default(),
            ),
            Err(e @ ApplyError::Invalid(_)) => problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid config",
                "the previous config keeps serving",
                &e.messages(),
            ),
            Err(e) => problem(
                StatusCode::CONFLICT,
                "Config refused",
                "the previous config keeps serving",
                &e.messages(),
            ),
        },
        (&Method::POST, "/purge") => {
            let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return problem(StatusCode::BAD_REQUEST, "Unreadable body", &e.to_string(), &[]);
                }
            };
            let request: outpost_cache::PurgeRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "Invalid purge",
                        &format!(
                            "expected {{\"url\"|\"prefix\"|\"tag\"|\"site\": ..., \"soft\": bool}}: {e}"
                        ),
                        &[],
                    )
                }
            };
            match shared.purge(request) {
                Ok(done) => json(StatusCode::OK, &serde_json::to_value(&done).unwrap_or_default()),
                Err(PurgeError::Invalid(e)) => problem(StatusCode::BAD_REQUEST, "Invalid purge", &e, &[]),
                Err(PurgeError::NoCache) => problem(
                    StatusCode::CONFLICT,
                    "No cache",
                    "this PoP runs without a cache (cache.memory = 0)",
                    &[],
                ),
            }
        }
        (_, "/metrics" | "/config" | "/reload" | "/healthz" | "/readyz" | "/purge") => problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "see the admin API in the README",
            &[],
        ),
        _ => problem(
            StatusCode::NOT_FOUND,
            "Not found",
            "admin endpoints: /healthz /readyz /metrics /config POST /reload POST /purge",
            &[],
        ),
    }
}
