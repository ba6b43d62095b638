//! The JSON API under `/v1` (axum). Every route but the OpenAPI document needs a bearer token;
//! errors are problem+json (`crate::problem`). Roles: viewer reads, operator changes config,
//! PoP states and purges, admin manages PoPs, tokens, certificates and reads the audit log.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State, WebSocketUpgrade,
};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use outpost_wire::Purge;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::problem::Problem;
use crate::service::{new_token_secret, now_ms, rfc3339, Caller, Control};
use crate::store::*;

type Ctl = State<Arc<Control>>;
type ApiResult = Result<Response, Problem>;

/// Every route, as (method, path) in OpenAPI spelling: the router below and the document in
/// `openapi.rs` are both checked against it by the tests.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/openapi.json"),
    ("get", "/v1/status"),
    ("get", "/v1/config"),
    ("post", "/v1/config"),
    ("get", "/v1/config/versions"),
    ("get", "/v1/config/versions/{version}"),
    ("get", "/v1/config/diff"),
    ("post", "/v1/config/revert"),
    ("get", "/v1/pops"),
    ("get", "/v1/pops/{id}"),
    ("put", "/v1/pops/{id}"),
    ("patch", "/v1/pops/{id}"),
    ("delete", "/v1/pops/{id}"),
    ("get", "/v1/purges"),
    ("post", "/v1/purges"),
    ("get", "/v1/purges/{seq}"),
    ("get", "/v1/tokens"),
    ("post", "/v1/tokens"),
    ("delete", "/v1/tokens/{name}"),
    ("get", "/v1/certificates"),
    ("put", "/v1/certificates/{name}"),
    ("delete", "/v1/certificates/{name}"),
    ("get", "/v1/audit"),
    ("get", "/v1/stream"),
    ("get", "/metrics"),
];

pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/status", get(status))
        .route("/v1/config", get(config_latest).post(config_apply))
        .route("/v1/config/versions", get(config_versions))
        .route("/v1/config/versions/{version}", get(config_version))
        .route("/v1/config/diff", get(config_diff))
        .route("/v1/config/revert", post(config_revert))
        .route("/v1/pops", get(pops_list))
        .route(
            "/v1/pops/{id}",
            get(pop_get).put(pop_put).patch(pop_patch).delete(pop_delete),
        )
        .route("/v1/purges", get(purges_list).post(purge_create))
        .route("/v1/purges/{seq}", get(purge_get))
        .route("/v1/tokens", get(tokens_list).post(token_create))
        .route("/v1/tokens/{name}", axum::routing::delete(token_delete))
        .route("/v1/certificates", get(certs_list))
        .route("/v1/certificates/{name}", put(cert_put).delete(cert_delete))
        .route("/v1/audit", get(audit_list))
        .route("/v1/stream", get(stream))
        .route("/metrics", get(metrics))
        .fallback(|| async { Problem::not_found("no such route; see /v1/openapi.json") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this route does not take that method; see /v1/openapi.json",
            )
        })
        .with_state(control)
}

impl FromRequestParts<Arc<Control>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, control: &Arc<Control>) -> Result<Self, Problem> {
        let remote = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string());
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(Problem::unauthorized("send a token: Authorization: Bearer TOKEN"));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Problem::unauthorized("the Authorization header must be: Bearer TOKEN"))?;
        control.caller(token, remote).await
    }
}

/// `Json` whose rejections are problem+json with serde's precise message.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "send the body as JSON with Content-Type: application/json",
            )),
            Err(e) => Err(Problem::bad_request(format!(
                "invalid JSON body: {}",
                e.body_text()
            ))),
        }
    }
}

fn ok(status: StatusCode, value: Value) -> ApiResult {
    Ok((status, Json(value)).into_response())
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
        .into_response()
}

fn version_json(v: &VersionRecord) -> Value {
    let mut j = json!({
        "version": v.version,
        "hash": v.hash,
        "author": v.author,
        "message": v.message,
        "created": rfc3339(v.created_ms),
        "reverted_from": v.reverted_from,
    });
    if !v.toml.is_empty() {
        j["toml"] = json!(v.toml);
        j["diff"] = json!(v.diff);
    }
    j
}

/// A PoP with its sync state: desired is always the latest version (no staged rollouts yet).
fn pop_json(
    control: &Control,
    p: &PopRecord,
    desired: Option<(u64, i64)>,
    first_missing_ms: Option<i64>,
) -> Value {
    let session = control.hub.session(&p.id);
    let now = now_ms();
    let in_sync = match (desired, p.applied_version) {
        (None, _) => true,
        (Some((d, _)), Some(a)) => a >= d,
        _ => false,
    };
    let lag_ms = if in_sync {
        0
    } else {
        (now - first_missing_ms.or(desired.map(|d| d.1)).unwrap_or(now)).max(0)
    };
    json!({
        "id": p.id,
        "region": p.region,
        "location": p.location,
        "capacity": p.capacity,
        "state": p.state,
        "connected": session.is_some(),
        "connected_since": session.as_ref().map(|s| rfc3339(s.since_ms)),
        "remote": session.as_ref().map(|s| s.remote.clone()),
        "desired_version": desired.map(|d| d.0),
        "applied_version": p.applied_version,
        "applied_at": p.applied_ms.map(rfc3339),
        "in_sync": in_sync,
        "sync_lag_seconds": lag_ms as f64 / 1000.0,
        "last_nack": p.nack_version.map(|v| json!({
            "version": v,
            "errors": p.nack_errors,
            "at": p.nack_ms.map(rfc3339),
        })),
        "last_purge_seq": p.last_purge_seq,
    })
}

/// Every PoP as JSON with its sync lag: the time since the first version it lacks was made.
async fn pops_json(control: &Arc<Control>) -> Result<Vec<Value>, Problem> {
    let (pops, versions) = control.db(|s| Ok((s.pops()?, s.versions()?))).await?;
    let desired = versions.first().map(|v| (v.version, v.created_ms));
    Ok(pops
        .iter()
        .map(|p| {
            let first_missing = versions
                .iter()
                .find(|v| Some(v.version) == p.applied_version.map(|a| a + 1).or(Some(1)))
                .map(|v| v.created_ms);
            pop_json(control, p, desired, first_missing)
        })
        .collect())
}

async fn status(State(control): Ctl, caller: Caller) -> ApiResult {
    caller.require(Role::Viewer)?;
    let (latest, pending) = control
        .db(|s| {
            let latest = s.latest_version()?;
            let pending: Vec<u64> = s
                .recent_purges(100)?
                .into_iter()
                .filter(|p| p.targets.iter().any(|t| t.1.is_none()))
                .map(|p| p.record.seq)
                .collect();
            Ok((latest, pending))
        })
        .await?;
    let pops = pops_json(&control).await?;
    let in_sync = pops.iter().filter(|p| p["in_sync"] == json!(true)).count();
    ok(
        StatusCode::OK,
        json!({
            "config": latest.as_ref().map(|v| { let mut v = v.clone(); v.toml.clear(); version_json(&v) }),
            "pops_total": pops.len(),
            "pops_in_sync": in_sync,
            "pops_connected": control.hub.session_count(),
            "pops": pops,
            "purges_pending": pending,
        }),
    )
}

async fn config_latest(State(control): Ctl, caller: Caller) -> ApiResult {
    caller.require(Role::Viewer)?;
    match control.db(|s| s.latest_version()).await? {
        Some(v) => ok(StatusCode::OK, version_json(&v)),
        None => Err(Problem::not_found(
            "no config version yet: apply one with POST /v1/config (outpost apply -f FILE)",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyBody {
    /// The fleet config, the same TOML as `outpost edge --config`.
    toml: String,
    #[serde(default)]
    message: String,
    /// Refuse (409) unless the latest version is still this one (0: none yet).
    #[serde(default)]
    base_version: Option<u64>,
    #[serde(default)]
    dry_run: bool,
    /// Names the text in error locations (default `fleet.toml`).
    #[serde(default)]
    file: Option<String>,
}

async fn config_apply(State(control): Ctl, caller: Caller, ApiJson(body): ApiJson<ApplyBody>) -> ApiResult {
    caller.require(Role::Operator)?;
    let file = body.file.unwrap_or_else(|| "fleet.toml".into());
    let outcome = control
        .apply(
            &caller,
            &file,
            body.toml,
            body.message,
            body.base_version,
            body.dry_run,
            None,
        )
        .await?;
    let status = if outcome.unchanged || outcome.dry_run {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    ok(status, serde_json::to_value(outcome).unwrap_or_default())
}

async fn config_versions(State(control): Ctl, caller: Caller) -> ApiResult {
    caller.require(Role::Viewer)?;
    let versions = control.db(|s| s.versions()).await?;
    ok(
        StatusCode::OK,
        json!({ "versions": versions.iter().map(version_json).collect::<Vec<_>>() }),
    )
}

fn parse_number(what: &str, s: &str) -> Result<u64, Problem> {
    s.parse()
        .map_err(|_| Problem::bad_request(format!("{what} must be a positive integer, got \"{s}\"")))
}

async fn config_version(State(control): Ctl, caller: Caller, Path(version): Path<String>) -> ApiResult {
    caller.require(Role::Viewer)?;
    let n = parse_number("version", &version)?;
    match control.db(move |s| s.version(n)).await? {
        Some(v) => ok(StatusCode::OK, version_json(&v)),
        None => Err(Problem::not_found(format!("no version {n}"))),
    }
}

#[derive(Deserialize)]
struct DiffQuery {
    from: Option<String>,
    to: Option<String>,
}

async fn config_diff(State(control): Ctl, caller: Caller, Query(q): Query<DiffQuery>) -> ApiResult {
    caller.require(Role::Viewer)?;
    let latest = control.db(|s| s.latest_version()).await?;
    let latest_n = latest.map_or(0, |v| v.version);
    let to = match &q.to {
        Some(t) => parse_number("to", t)?,
        None => latest_n,
    };
    let from = match &q.from {
        Some(f) => parse_number("from", f)?,
        None => to.saturating_sub(1),
    };
    let (a, b) = control
        .db(move |s| Ok((s.version(from)?, s.version(to)?)))
        .await?;
    let text = |n: u64, v: Option<VersionRecord>| -> Result<String, Problem> {
        match v {
            Some(v) => Ok(v.toml),
            None if n == 0 => Ok(String::new()),
            None => Err(Problem::not_found(format!("no version {n}"))),
        }
    };
    let (a, b) = (text(from, a)?, text(to, b)?);
    let diff = crate::diff::unified(&a, &b, &format!("version {from}"), &format!("version {to}"));
    ok(StatusCode::OK, json!({ "from": from, "to": to, "diff": diff }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevertBody {
    /// The version whose content becomes the new latest.
    version: u64,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    base_version: Option<u64>,
}

async fn config_revert(State(control): Ctl, caller: Caller, ApiJson(body): ApiJson<RevertBody>) -> ApiResult {
    caller.require(Role::Operator)?;
    let n = body.version;
    let Some(old) = control.db(move |s| s.version(n)).await? else {
        return Err(Problem::not_found(format!("no version {n} to revert to")));
    };
    let message = body.message.unwrap_or_else(|| format!("revert to version {n}"));
    let outcome = control
        .apply(
            &caller,
            "fleet.toml",
            old.toml,
            message,
            body.base_version,
            false,
            Some(n),
        )
        .await?;
    let status = if outcome.unchanged {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    ok(status, serde_json::to_value(outcome).unwrap_or_default())
}

async fn pops_list(State(control): Ctl, caller: Caller) -> ApiResult {
    caller.require(Role::Viewer)?;
    ok(StatusCode::OK, json!({ "pops": pops_json(&control).await? }))
}

async fn pop_get(State(control): Ctl, caller: Caller, Path(id): Path<String>) -> ApiResult {
    caller.require(Role::Viewer)?;
    pops_json(&control)
        .await?
        .into_iter()
        .find(|p| p["id"] == json!(id))
        .map_or_else(
            || Err(Problem::not_found(format!("no PoP \"{id}\""))),
            |p| ok(StatusCode::OK, p),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PopBody {
    #[serde(default)]
    region: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    capacity: u32,
    #[serde(default)]
    state: Option<PopState>,
}

fn check_id(what: &str, id: &str) -> Result<(), Problem> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Problem::bad_request(format!(
            "{what} \"{id}\": use 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

async fn pop_put(
    State(control): Ctl,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PopBody>,
) -> ApiResult {
    caller.require(Role::Admin)?;
    check_id("PoP id", &id)?;
    let spec = PopSpec {
        id: id.clone(),
        region: body.region,
        location: body.location,
        capacity: body.capacity,
        state: body.state.unwrap_or(PopState::Active),
    };
    let detail = format!(
        "region={} location={} capacity={} state={}",
        spec.region,
        spec.location,
        spec.capacity,
        spec.state.as_str()
    );
    control.db(move |s| s.upsert_pop(&spec)).await?;
    control
        .audit(&caller, "pop.put", &format!("pop {id}"), detail)
        .await;
    pop_get(State(control), caller, Path(id)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PopPatch {
    state: PopState,
}

async fn pop_patch(
    State(control): Ctl,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PopPatch>,
) -> ApiResult {
    caller.require(Role::Operator)?;
    let pid = id.clone();
    let Some(pop) = control.db(move |s| s.pop(&pid)).await? else {
        return Err(Problem::not_found(format!("no PoP \"{id}\"")));
    };
    let spec = PopSpec {
        id: pop.id,
        region: pop.region,
        location: pop.location,
        capacity: pop.capacity,
        state: body.state,
    };
    control.db(move |s| s.upsert_pop(&spec)).await?;
    control
        .audit(
            &caller,
            "pop.state",
            &format!("pop {id}"),
            body.state.as_str().to_owned(),
        )
        .await;
    pop_get(State(control), caller, Path(id)).await
}

async fn pop_delete(State(control): Ctl, caller: Caller, Path(id): Path<String>) -> ApiResult {
    caller.require(Role::Admin)?;
    let pid = id.clone();
    if !control.db(move |s| s.delete_pop(&pid)).await? {
        return Err(Problem::not_found(format!("no PoP \"{id}\"")));
    }
    if let Some(session) = control.hub.session(&id) {
        session.cancel.cancel();
    }
    control
        .audit(&caller, "pop.delete", &format!("pop {id}"), String::new())
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn purge_json(p: &PurgeStatus) -> Value {
    let created = p.record.created_ms;
    let pops: Vec<Value> = p
        .targets
        .iter()
        .map(|(pop, acked, error)| {
            json!({
                "pop": pop,
                "done": acked.is_some(),
                "acked_at": acked.map(rfc3339),
                "latency_ms": acked.map(|a| (a - created).max(0)),
                "error": error,
            })
        })
        .collect();
    let done = p.targets.iter().filter(|t| t.1.is_some()).count();
    json!({
        "seq": p.record.seq,
        "purge": p.record.purge,
        "author": p.record.author,
        "created": rfc3339(created),
        "complete": done == p.targets.len(),
        "acked": done,
        "targets": p.targets.len(),
        "completion_ms": if done == p.targets.len() {
            p.targets.iter().filter_map(|t| t.1).max().map(|m| (m - created).max(0))
        } else { None },
        "pops": pops,
    })
}

async fn purge_create(State(control): Ctl, caller: Caller, ApiJson(purge): ApiJson<Purge>) -> ApiResult {
    caller.require(Role::Operator)?;
    let record = control.purge(&caller, purge).await?;
    let seq = record.seq;
    let status = control.db(move |s| s.purge_status(seq)).await?;
    let body = status.map_or_else(|| json!({ "seq": seq }), |s| purge_json(&s));
    ok(StatusCode::ACCEPTED, body)
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<u32>,
}

async fn purges_list(State(control): Ctl, caller: Caller, Query(q): Query<Limit>) -> ApiResult {
    caller.require(Role::Viewer)?;
    let limit = q.limit.unwrap_or(50).min(1000);
    let list = control.db(move |s| s.recent_purges(limit)).await?;
    ok(
        StatusCode::OK,
        json!({ "purges": list.iter().map(purge_json).collect::<Vec<_>>() }),
    )
}

async fn purge_get(State(control): Ctl, caller: Caller, Path(seq): Path<String>) -> ApiResult {
    caller.require(Role::Viewer)?;
    let seq = parse_number("seq", &seq)?;
    match control.db(move |s| s.purge_status(seq)).await? {
        Some(p) => ok(StatusCode::OK, purge_json(&p)),
        None => Err(Problem::not_found(format!("no purge {seq}"))),
    }
}

async fn tokens_list(State(control): Ctl, caller: Caller) -> ApiResult {
    caller.require(Role::Admin)?;
    let tokens = control.db(|s| s.tokens()).await?;
    let list: Vec<Value> = tokens
        .iter()
        .map(|t| json!({"name": t.name, "role": t.role, "pop": t.pop, "created": rfc3339(t.created_ms)}))
        .collect();
    ok(StatusCode::OK, json!({ "tokens": list }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    name: String,
    role: Role,
    /// Required for role `pop`: the PoP whose stream the token opens.
    #[serde(default)]
    pop: Option<String>,
}

async fn token_create(State(control): Ctl, caller: Caller, ApiJson(body): ApiJson<TokenBody>) -> ApiResult {
    caller.require(Role::Admin)?;
    check_id("token name", &body.name)?;
    match (body.role, &body.pop) {
        (Role::Pop, None) => return Err(Problem::bad_request("role pop needs \"pop\": the PoP id")),
        (Role::Pop, Some(pop)) => {
            let pid = pop.clone();
            if control.db(move |s| s.pop(&pid)).await?.is_none() {
                return Err(Problem::bad_request(format!(
                    "no PoP \"{pop}\" in the inventory; add it with PUT /v1/pops/{pop} first"
                )));
            }
        }
        (_, Some(_)) => return Err(Problem::bad_request("\"pop\" is only for role pop")),
        _ => {}
    }
    let secret = new_token_secret().map_err(Problem::internal)?;
    let record = TokenRecord {
        name: body.name.clone(),
        role: body.role,
        pop: body.pop.clone(),
        hash: crate::service::hash_token(&secret),
        created_ms: now_ms(),
    };
    control.db(move |s| s.insert_token(&record)).await?;
    control
        .audit(
            &caller,
            "token.create",
            &format!("token {}", body.name),
            body.role.as_str().to_owned(),
        )
        .await;
    ok(
        StatusCode::CREATED,
        json!({"name": body.name, "role": body.role, "pop": body.pop, "token": secret}),
    )
}

async fn token_delete(State(control): Ctl, caller: Caller, Path(name): Path<String>) -> ApiResult {
    caller.require(Role::Admin)?;
    let n = name.clone();
    if !control.db(move |s| s.delete_token(&n)).await? {
        return Err(Problem::not_found(format!("no token \"{name}\"")));
    }
    control
        .audit(&caller, "token.delete", &format!("token {name}"), String::new())
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn certs_list(State(control): Ctl, caller: Caller) -> ApiResult {
    caller.require(Role::Viewer)?;
    let certs = control.db(|s| s.certificates()).await?;
    let now = now_ms();
    let list: Vec<Value> = certs
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "not_after": c.not_after_ms.map(rfc3339),
                "expires_in_days": c.not_after_ms.map(|t| (t - now) / 86_400_000),
                "uploaded": rfc3339(c.uploaded_ms),
            })
        })
        .collect();
    ok(StatusCode::OK, json!({ "certificates": list }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertBody {
    cert_pem: String,
    key_pem: String,
}

async fn cert_put(
    State(control): Ctl,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<CertBody>,
) -> ApiResult {
    caller.require(Role::Admin)?;
    check_id("certificate name", &name)?;
    let not_after_ms =
        crate::certs::check_pem(&body.cert_pem, &body.key_pem).map_err(Problem::bad_request)?;
    let record = CertificateRecord {
        name: name.clone(),
        cert_pem: body.cert_pem,
        key_pem: body.key_pem,
        not_after_ms,
        uploaded_ms: now_ms(),
    };
    control.db(move |s| s.put_certificate(&record)).await?;
    control.refresh_push().await?;
    control
        .audit(
            &caller,
            "certificate.put",
            &format!("certificate {name}"),
            not_after_ms.map(rfc3339).unwrap_or_default(),
        )
        .await;
    ok(
        StatusCode::OK,
        json!({"name": name, "not_after": not_after_ms.map(rfc3339)}),
    )
}

async fn cert_delete(State(control): Ctl, caller: Caller, Path(name): Path<String>) -> ApiResult {
    caller.require(Role::Admin)?;
    let n = name.clone();
    if !control.db(move |s| s.delete_certificate(&n)).await? {
        return Err(Problem::not_found(format!("no certificate \"{name}\"")));
    }
    control.refresh_push().await?;
    control
        .audit(
            &caller,
            "certificate.delete",
            &format!("certificate {name}"),
            String::new(),
        )
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn audit_list(State(control): Ctl, caller: Caller, Query(q): Query<Limit>) -> ApiResult {
    caller.require(Role::Admin)?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let entries = control.db(move |s| s.audit(limit)).await?;
    let list: Vec<Value> = entries
        .iter()
        .map(|e| json!({"at": rfc3339(e.at_ms), "actor": e.actor, "action": e.action, "target": e.target, "detail": e.detail, "remote": e.remote}))
        .collect();
    ok(StatusCode::OK, json!({ "entries": list }))
}

async fn stream(
    State(control): Ctl,
    caller: Caller,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult {
    if caller.role != Role::Pop || caller.pop.is_none() {
        return Err(Problem::forbidden("only a PoP token opens a stream"));
    }
    let ws =
        ws.map_err(|e| Problem::bad_request(format!("a WebSocket upgrade is needed: {}", e.body_text())))?;
    // Small buffers: a thousand mostly idle streams should not hold 256 KiB each (tungstenite's
    // defaults); messages larger than the buffer still pass, in several reads.
    Ok(ws
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(64 << 20)
        .on_upgrade(move |socket| crate::stream::run(control, caller, socket)))
}

async fn metrics(State(control): Ctl, caller: Caller) -> ApiResult {
    caller.require(Role::Viewer)?;
    let pops = pops_json(&control).await?;
    let latest = control.hub.latest().map_or(0, |p| p.version);
    let mut out = String::new();
    out.push_str("# HELP outpost_control_config_version The latest fleet config version.\n# TYPE outpost_control_config_version gauge\n");
    out.push_str(&format!("outpost_control_config_version {latest}\n"));
    out.push_str("# HELP outpost_control_stream_connections PoP streams open now.\n# TYPE outpost_control_stream_connections gauge\n");
    out.push_str(&format!(
        "outpost_control_stream_connections {}\n",
        control.hub.session_count()
    ));
    type Series = (&'static str, &'static str, fn(&Value) -> f64);
    let series: [Series; 3] = [
        (
            "outpost_control_pop_applied_version",
            "The config version each PoP serves (0: none).",
            |p| p["applied_version"].as_f64().unwrap_or(0.0),
        ),
        (
            "outpost_control_pop_sync_lag_seconds",
            "Time since the first version a PoP lacks was made (0 when in sync).",
            |p| p["sync_lag_seconds"].as_f64().unwrap_or(0.0),
        ),
        (
            "outpost_control_pop_connected",
            "1 while the PoP's stream is open.",
            |p| if p["connected"] == json!(true) { 1.0 } else { 0.0 },
        ),
    ];
    for (name, help, value) in series {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for p in &pops {
            out.push_str(&format!(
                "{name}{{pop=\"{}\"}} {}\n",
                p["id"].as_str().unwrap_or(""),
                value(p)
            ));
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
