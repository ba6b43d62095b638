//! Active health checks: one task per origin of each pool that has a `health_check`, probing on
//! an interval and flipping the origin's state after `rise` / `fall` consecutive results.
//! The tasks belong to one config version and stop when it is replaced.

use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, StatusCode};
use outpost_config::HealthCheckConfig;
use tokio_util::sync::CancellationToken;

use super::pool::Pool;
use crate::proxy::body;

pub fn spawn_checks(pools: &[Arc<Pool>], cancel: &CancellationToken) {
    for pool in pools {
        let Some(check) = pool.config.health_check.clone() else {
            continue;
        };
        for index in 0..pool.origins.len() {
            let pool = pool.clone();
            let check = check.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                // Spread the first probes so a reload does not fire every check at once.
                let jitter =
                    Duration::from_millis(fastrand::u64(0..=check.interval.as_millis().min(1000) as u64));
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(jitter) => {}
                }
                let mut ticker = tokio::time::interval(check.interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = ticker.tick() => {}
                    }
                    let outcome = probe(&pool, index, &check).await;
                    record(&pool, index, &check, outcome);
                }
            });
        }
    }
}

async fn probe(pool: &Pool, index: usize, check: &HealthCheckConfig) -> Result<(), String> {
    let origin = &pool.origins[index];
    let host = check.host.clone().unwrap_or_else(|| origin.authority.to_string());
    let uri = if pool.is_http2() {
        http::Uri::builder()
            .scheme(origin.scheme.clone())
            .authority(host.as_str())
            .path_and_query(check.path.as_str())
            .build()
    } else {
        http::Uri::builder().path_and_query(check.path.as_str()).build()
    }
    .map_err(|e| e.to_string())?;
    let req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(header::HOST, host)
        .header(header::USER_AGENT, "outpost-health-check")
        .body(body::empty())
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + check.timeout;
    let resp = pool
        .send_to(index, req, deadline, None, &mut None)
        .await
        .map_err(|e| match e {
            super::SendError::Timeout => format!("no answer within {:?}", check.timeout),
            e => e.to_string(),
        })?;
    let status = resp.status();
    let ok = if check.expect_status == 0 {
        status.is_success() || status.is_redirection()
    } else {
        status == StatusCode::from_u16(check.expect_status).unwrap_or(StatusCode::OK)
    };
    if ok {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

fn record(pool: &Pool, index: usize, check: &HealthCheckConfig, outcome: Result<(), String>) {
    let origin = &pool.origins[index];
    let ok = outcome.is_ok();
    if let Some(healthy) = origin.state.health.record(ok, check.rise, check.fall) {
        if healthy {
            tracing::info!(pool = %pool.name, origin = %origin.url, "origin passed its health checks: back in rotation");
        } else {
            let reason = outcome.err().unwrap_or_default();
            tracing::warn!(pool = %pool.name, origin = %origin.url, %reason, "origin failed its health checks: out of rotation");
        }
        pool.refresh_gauges();
    }
}
