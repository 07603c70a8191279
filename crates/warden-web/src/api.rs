//! The REST endpoints: each turns into one control request made on behalf
//! of the caller's token; the daemon's answer comes back as JSON. The table
//! of routes is [`routes`]; `openapi.rs` describes the same table.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use warden_proto::control::{ErrorKind, Request, Role};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

type Answer = Result<Json<Value>, ApiError>;

impl AppState {
    /// One request to the daemon for `c`; its data, or its refusal.
    pub async fn call(&self, c: &Caller, req: Request) -> Result<Value, ApiError> {
        let r = self.daemon.call(&req, Some(&c.who)).await?;
        if r.ok {
            return Ok(r.data.unwrap_or(Value::Null));
        }
        if r.code == Some(ErrorKind::Unauthorized) {
            self.limits.failed(c.peer, Instant::now());
        }
        Err(ApiError::from_kind(
            r.code,
            r.error.unwrap_or_else(|| "request failed".into()),
        ))
    }

    async fn answer(&self, c: &Caller, req: Request) -> Answer {
        self.call(c, req).await.map(Json)
    }
}

/// A JSON body (an empty body reads as `{}`), with JSON errors: 400 for a
/// bad one, 413 past the size limit.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| {
                let status = r.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "payload_too_large"
                } else {
                    "bad_request"
                };
                ApiError::new(status, code, r.body_text())
            })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes)
            .map(Body)
            .map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
    }
}

/// Query parameters, with JSON errors.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|r| ApiError::bad_request(r.body_text()))
    }
}

/// Path parameters, with JSON errors.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|r| ApiError::bad_request(r.body_text()))
    }
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/health", get(health))
        .route("/api/status", get(status))
        .route("/api/agents", get(agents))
        .route("/api/agents/{name}", get(agent))
        .route("/api/agents/{name}/logs", get(logs))
        .route("/api/agents/{name}/start", post(start))
        .route("/api/agents/{name}/stop", post(stop))
        .route("/api/agents/{name}/restart", post(restart))
        .route("/api/halt", post(halt))
        .route("/api/resume", post(resume))
        .route("/api/checkin", post(checkin))
        .route("/api/reload", post(reload))
        .route("/api/approvals", get(approvals))
        .route("/api/approvals/{id}/approve", post(approve))
        .route("/api/approvals/{id}/reject", post(reject))
        .route("/api/runs", get(runs))
        .route("/api/runs/{id}", get(run))
        .route("/api/authorizations", get(authorizations).post(arm))
        .route("/api/authorizations/{id}/execute", post(execute))
        .route("/api/authorizations/{id}/disarm", post(disarm))
        .route("/api/credentials", get(credentials).post(cred_issue))
        .route("/api/credentials/{id}/revoke", post(cred_revoke))
        .route("/api/audit", get(audit_tail))
        .route("/api/audit/verify", get(audit_verify))
        .route("/api/audit/{seq}", get(audit_show))
        .route("/api/casepacks/{halt_id}", get(casepack))
        .route("/api/tokens", get(tokens).post(token_create))
        .route("/api/tokens/{name}/revoke", post(token_revoke))
}

/// No authentication: whether the web process runs and reaches the daemon.
async fn health(State(st): State<Arc<AppState>>) -> Response {
    match st.daemon.call(&Request::Ping, None).await {
        Ok(r) if r.ok => Json(json!({"status": "ok", "daemon": "reachable"})).into_response(),
        Ok(r) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "daemon_unavailable",
            r.error.unwrap_or_else(|| "the daemon refused ping".into()),
        )
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn status(State(st): State<Arc<AppState>>, c: Caller) -> Answer {
    st.answer(&c, Request::Status).await
}

async fn agents(State(st): State<Arc<AppState>>, c: Caller) -> Answer {
    st.answer(&c, Request::Agents).await
}

async fn agent(State(st): State<Arc<AppState>>, c: Caller, Path(name): Path<String>) -> Answer {
    let all = st.call(&c, Request::Agents).await?;
    all.as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name.as_str()).cloned())
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no agent named {name:?}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    /// Byte offset in the agent's log file; absent: the in-memory tail.
    offset: Option<u64>,
}

async fn logs(
    State(st): State<Arc<AppState>>,
    c: Caller,
    Path(agent): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Answer {
    st.answer(
        &c,
        Request::Logs {
            agent,
            offset: q.offset,
        },
    )
    .await
}

async fn start(State(st): State<Arc<AppState>>, c: Caller, Path(agent): Path<String>) -> Answer {
    st.answer(&c, Request::Start { agent }).await
}

async fn stop(State(st): State<Arc<AppState>>, c: Caller, Path(agent): Path<String>) -> Answer {
    st.answer(&c, Request::Stop { agent }).await
}

async fn restart(State(st): State<Arc<AppState>>, c: Caller, Path(agent): Path<String>) -> Answer {
    st.answer(&c, Request::Restart { agent }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reason {
    reason: String,
}

async fn halt(State(st): State<Arc<AppState>>, c: Caller, Body(b): Body<Reason>) -> Answer {
    if b.reason.trim().is_empty() {
        return Err(ApiError::bad_request("a halt needs a reason"));
    }
    st.answer(&c, Request::Halt { reason: b.reason }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeBody {
    reason: String,
    /// The signed authorization, when the daemon has a `resume_key`.
    authorization: Option<serde_json::Map<String, Value>>,
}

async fn resume(State(st): State<Arc<AppState>>, c: Caller, Body(b): Body<ResumeBody>) -> Answer {
    st.answer(
        &c,
        Request::Resume {
            reason: b.reason,
            authorization: b.authorization.map(Value::Object),
        },
    )
    .await
}

async fn checkin(State(st): State<Arc<AppState>>, c: Caller) -> Answer {
    st.answer(&c, Request::Checkin).await
}

async fn reload(State(st): State<Arc<AppState>>, c: Caller) -> Answer {
    st.answer(
        &c,
        Request::Reload {
            dry_run: false,
            config_text: None,
        },
    )
    .await
}

async fn approvals(State(st): State<Arc<AppState>>, c: Caller) -> Answer {
    st.answer(&c, Request::Approvals).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    ttl: Option<String>,
}

async fn approve(
    State(st): State<Arc<AppState>>,
    c: Caller,
    Path(id): Path<String>,
    Body(b): Body<ApproveBody>,
) -> Answer {
    st.answer(&c, Request::Approve { id, ttl: b.ttl }).await
}

async fn reject(
    State(st): State<Arc<AppState>>,
    c: Caller,
    Path(id): Path<String>,
    Body(b): Body<Reason>,
) -> Answer {
    st.answer(
        &c,
        Request::Reject {
            id,
            reason: b.reason,
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    agent: Option<String>,
    reason: Option<String>,
}

async fn runs(State(st): State<Arc<AppState>>, c: Caller, Query(q): Query<RunsQuery>) -> Answer {
    st.answer(
        &c,
        Request::Runs {
            agent: q.agent,
            reason: q.reason,
        },
    )
    .await
}

async fn run(State(st): State<Arc<AppState>>, c: Caller, Path(id): Path<String>) -> Answer {
    st.answer(&c, Request::RunShow { id }).await
}

async fn authorizations(State(st): State<Arc<AppState>>, c: Caller) -> Answer {
    st.answer(&c, Request::Authorizations).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArmBody {
    agent: Option<String>,
    #[serde(default)]
    all: bool,
    levels: Option<String>,
    reason: String,
    ttl: Option<String>,
}

async fn arm(State(st): State<Arc<AppState>>, c: Caller, Body(b): Body<ArmBody>) -> Answer {
    st.answer(
        &c,
        Request::Arm {
            agent: b.agent,
            all: b.all,
            levels: b.levels,
            reason: b.reason,
            ttl: b.ttl,
        },
    )
    .await
}

async fn execute(State(st): State<Arc<AppState>>, c: Caller, Path(id): Path<String>) -> Answer {
    st.answer(&c, Request::Execute { id }).await
}

async fn disarm(State(st): State<Arc<AppState>>, c: Caller, Path(id): Path<String>) -> Answer {
    st.answer(&c, Request::Disarm { id }).await
}

async fn credentials(State(st): State<Arc<AppState>>, c: Caller) -> Answer {
    st.answer(&c, Request::CredList).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredBody {
    agent: String,
    kind: String,
    name: String,
    revoke_command: Option<Vec<String>>,
}

async fn cred_issue(State(st): State<Arc<AppState>>, c: Caller, Body(b): Body<CredBody>) -> Answer {
    st.answer(
        &c,
        Request::CredIssue {
            agent: b.agent,
            kind: b.kind,
            name: b.name,
            revoke_command: b.revoke_command,
        },
    )
    .await
}

async fn cred_revoke(State(st): State<Arc<AppState>>, c: Caller, Path(id): Path<String>) -> Answer {
    st.answer(
        &c,
        Request::CredRevoke {
            id: Some(id),
            agent: None,
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TailQuery {
    n: Option<u64>,
}

async fn audit_tail(
    State(st): State<Arc<AppState>>,
    c: Caller,
    Query(q): Query<TailQuery>,
) -> Answer {
    st.answer(&c, Request::AuditTail { n: q.n }).await
}

async fn audit_verify(State(st): State<Arc<AppState>>, c: Caller) -> Answer {
    st.answer(&c, Request::AuditVerify).await
}

async fn audit_show(State(st): State<Arc<AppState>>, c: Caller, Path(seq): Path<u64>) -> Answer {
    st.answer(&c, Request::AuditShow { seq }).await
}

/// The case pack file, byte for byte as `warden casepack export` writes it.
async fn casepack(
    State(st): State<Arc<AppState>>,
    c: Caller,
    Path(halt_id): Path<String>,
) -> Result<Response, ApiError> {
    let v = st
        .call(
            &c,
            Request::Casepack {
                halt_id: halt_id.clone(),
            },
        )
        .await?;
    let file = v["file"].as_str().unwrap_or_default().to_string();
    let safe: String = halt_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let disposition = format!("attachment; filename=\"casepack-{safe}.json\"");
    let mut r = ([(header::CONTENT_TYPE, "application/json")], file).into_response();
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

async fn tokens(State(st): State<Arc<AppState>>, c: Caller) -> Answer {
    st.answer(&c, Request::TokenList).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    name: String,
    role: Role,
    expires: Option<String>,
}

async fn token_create(
    State(st): State<Arc<AppState>>,
    c: Caller,
    Body(b): Body<TokenBody>,
) -> Answer {
    st.answer(
        &c,
        Request::TokenCreate {
            name: b.name,
            role: b.role,
            expires: b.expires,
        },
    )
    .await
}

async fn token_revoke(
    State(st): State<Arc<AppState>>,
    c: Caller,
    Path(name): Path<String>,
) -> Answer {
    st.answer(&c, Request::TokenRevoke { name }).await
}
