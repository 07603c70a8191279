//! `GET /api/openapi.json`: an OpenAPI 3 description of every endpoint, the
//! same table as `api::routes` plus the events, metrics and health ones.
//! Built once from JSON literals: the API is small, and a derive-based
//! generator would add a proc-macro stack for a page of text.

use std::sync::OnceLock;

use axum::response::IntoResponse;
use serde_json::{json, Map, Value};

pub async fn serve() -> impl IntoResponse {
    axum::Json(spec().clone())
}

fn err_ref() -> Value {
    json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn obj() -> Value {
    json!({"type": "object"})
}

fn string() -> Value {
    json!({"type": "string"})
}

/// A non-empty word (ids, names).
fn word() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 200})
}

/// A reason: at least one character that is not white space.
fn reason_text() -> Value {
    json!({"type": "string", "pattern": "\\S"})
}

/// An optional property: absent or null mean the same.
fn opt(mut v: Value) -> Value {
    v["nullable"] = json!(true);
    v
}

/// A duration as the daemon reads it: "10m", "90d".
fn duration() -> Value {
    json!({"type": "string", "pattern": "^[1-9][0-9]{0,3}(s|m|h|d)$"})
}

/// A byte offset or seq.
fn uint() -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": u64::MAX})
}

/// One operation. `role` None: no authentication. `errs`: HTTP statuses
/// besides the ones every authenticated call may answer.
fn op(
    summary: &str,
    role: Option<&str>,
    params: Vec<Value>,
    body: Option<Value>,
    ok: Value,
    errs: &[u16],
) -> Value {
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({"description": "OK", "content": {"application/json": {"schema": ok}}}),
    );
    let mut codes: Vec<u16> = errs.to_vec();
    if role.is_some() {
        codes.extend([400, 401, 403, 422, 429, 503]);
    }
    if body.is_some() {
        codes.extend([400, 413]);
    }
    codes.sort();
    codes.dedup();
    for c in codes {
        responses.insert(c.to_string(), {
            let mut r = err_ref();
            r["description"] = json!(describe(c));
            r
        });
    }
    let mut o = json!({
        "summary": summary,
        "parameters": params,
        "responses": responses,
    });
    match role {
        Some(r) => {
            o["security"] = json!([{"bearer": []}]);
            o["description"] = json!(format!("Needs a token of role {r} or above."));
        }
        None => o["security"] = json!([]),
    }
    if let Some(schema) = body {
        o["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": schema}},
        });
    }
    o
}

fn describe(code: u16) -> &'static str {
    match code {
        400 => "Bad request",
        401 => "Missing, unknown, revoked or expired token",
        403 => "The token's role does not allow this",
        404 => "Not found",
        409 => "Refused in the daemon's current state (SAFE MODE, stop file, ...)",
        413 => "Body larger than 64 KiB",
        422 => "The daemon could not carry out the request",
        429 => "Rate limit, or too many failed authentications",
        503 => "The daemon is unreachable, or too many event streams",
        _ => "Error",
    }
}

fn path_param(name: &str, schema: Value) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": schema})
}

fn query_param(name: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema})
}

fn body(required: &[&str], props: Value) -> Value {
    json!({"type": "object", "required": required, "properties": props, "additionalProperties": false})
}

fn name_param() -> Value {
    path_param("name", word())
}

fn id_param() -> Value {
    path_param("id", word())
}

/// The document (built once).
pub fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(build)
}

fn build() -> Value {
    let v = Some("viewer");
    let o = Some("operator");
    let a = Some("admin");
    let reason = || body(&["reason"], json!({"reason": reason_text()}));
    let levels = json!({"type": "string", "enum": ["1", "2", "3", "4", "1-2", "1-3", "1-4", "2-3", "2-4", "3-4"]});
    let arm = json!({"oneOf": [
        {"type": "object", "required": ["agent", "reason"], "additionalProperties": false, "properties": {
            "agent": word(), "levels": opt(levels.clone()), "reason": reason_text(), "ttl": opt(duration())}},
        {"type": "object", "required": ["all", "reason"], "additionalProperties": false, "properties": {
            "all": {"type": "boolean", "enum": [true]}, "levels": opt(levels), "reason": reason_text(), "ttl": opt(duration())}},
    ]});
    let paths = json!({
        "/api/health": {"get": op("Liveness of the web and its daemon", None, vec![], None,
            json!({"type": "object", "properties": {"status": string(), "daemon": string()}}), &[503])},
        "/api/status": {"get": op("Daemon state, every agent, the last halt", v, vec![], None, obj(), &[])},
        "/api/agents": {"get": op("Every agent", v, vec![], None, json!({"type": "array", "items": obj()}), &[])},
        "/api/agents/{name}": {"get": op("One agent", v, vec![name_param()], None, obj(), &[404])},
        "/api/agents/{name}/logs": {"get": op("An agent's output: from a byte offset (64 KiB at most), else the recent tail", v,
            vec![name_param(), query_param("offset", uint())], None,
            json!({"type": "object", "properties": {"data": string(), "next_offset": {"type": "integer"}}}), &[404])},
        "/api/agents/{name}/start": {"post": op("Start an agent", o, vec![name_param()], None, obj(), &[404, 409])},
        "/api/agents/{name}/stop": {"post": op("Stop an agent (TERM, grace, freeze, kill)", o, vec![name_param()], None, obj(), &[404, 409])},
        "/api/agents/{name}/restart": {"post": op("Stop, then start an agent", o, vec![name_param()], None, obj(), &[404, 409])},
        "/api/halt": {"post": op("Hard halt of every agent; SAFE MODE", a, vec![], Some(reason()), obj(), &[409])},
        "/api/resume": {"post": op("Leave SAFE MODE (with a signed authorization when resume_key is set)", a, vec![],
            Some(body(&["reason"], json!({"reason": reason_text(), "authorization": opt(obj())}))), obj(), &[409])},
        "/api/checkin": {"post": op("A human is watching (oversight timeout)", o, vec![], None, obj(), &[409])},
        "/api/reload": {"post": op("Read the tool registry again", a, vec![], None, obj(), &[409])},
        "/api/approvals": {"get": op("Tool calls waiting for approval", v, vec![], None, obj(), &[])},
        "/api/approvals/{id}/approve": {"post": op("Approve a pending tool call", o, vec![id_param()],
            Some(body(&[], json!({"ttl": opt(duration())}))), obj(), &[404, 409])},
        "/api/approvals/{id}/reject": {"post": op("Refuse a pending tool call", o, vec![id_param()], Some(reason()), obj(), &[404, 409])},
        "/api/runs": {"get": op("Broker runs", v, vec![query_param("agent", word()), query_param("reason",
            json!({"type": "string", "enum": ["completed", "limit_exceeded", "approval_required", "policy_denied", "error"]}))], None, obj(), &[404])},
        "/api/runs/{id}": {"get": op("One broker run with every call", v, vec![id_param()], None, obj(), &[404])},
        "/api/authorizations": {
            "get": op("Two-phase kill authorizations", v, vec![], None, obj(), &[]),
            "post": op("Arm a two-phase kill", a, vec![], Some(arm), obj(), &[404, 409])},
        "/api/authorizations/{id}/execute": {"post": op("Execute an armed authorization, once", a, vec![id_param()], None, obj(), &[404, 409])},
        "/api/authorizations/{id}/disarm": {"post": op("Cancel an armed authorization", a, vec![id_param()], None, obj(), &[404, 409])},
        "/api/credentials": {
            "get": op("Agents' credentials (never a secret)", v, vec![], None, obj(), &[]),
            "post": op("Issue a credential; the secret is answered once", a, vec![], Some(body(&["agent", "kind", "name"], json!({
                "agent": word(), "kind": {"type": "string", "enum": ["api-key", "oauth", "service"]},
                "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
                "revoke_command": opt(json!({"type": "array", "minItems": 1, "items": word()}))}))), obj(), &[404, 409])},
        "/api/credentials/{id}/revoke": {"post": op("Revoke a credential", a, vec![id_param()], None, obj(), &[404, 409])},
        "/api/audit": {"get": op("The last audit entries (n: default 50, at most 1000 are answered)", v, vec![query_param("n", uint())], None, obj(), &[])},
        "/api/audit/verify": {"get": op("Verify the audit chain, signatures and head", v, vec![], None, obj(), &[])},
        "/api/audit/{seq}": {"get": op("One audit entry", v, vec![path_param("seq", uint())], None, obj(), &[404])},
        "/api/casepacks/{halt_id}": {"get": op("A halt's case pack, as `warden casepack export` writes it", v,
            vec![path_param("halt_id", word())], None, obj(), &[404])},
        "/api/tokens": {
            "get": op("Web API tokens (never a secret)", a, vec![], None, obj(), &[]),
            "post": op("Create a token; the secret is answered once", a, vec![], Some(body(&["name", "role"], json!({
                "name": {"type": "string", "pattern": "^[A-Za-z0-9._@-]{1,64}$"},
                "role": {"type": "string", "enum": ["viewer", "operator", "admin"]},
                "expires": opt(duration())}))), obj(), &[409])},
        "/api/tokens/{name}/revoke": {"post": op("Revoke a token", a, vec![name_param()], None, obj(), &[404])},
        "/api/events": {"get": {
            "summary": "Every audit entry as it lands (Server-Sent Events; id = audit seq; Last-Event-ID replays what was missed; keepalive every 15 s)",
            "security": [{"bearer": []}],
            "parameters": [query_param("since", uint()),
                {"name": "Last-Event-ID", "in": "header", "required": false, "schema": string()}],
            "responses": {"200": {"description": "An event stream", "content": {"text/event-stream": {"schema": string()}}},
                "400": err_ref(), "401": err_ref(), "403": err_ref(), "429": err_ref(), "503": err_ref()}}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics",
            "security": [{"bearer": []}],
            "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": string()}}},
                "401": err_ref(), "403": err_ref(), "422": err_ref(), "429": err_ref(), "503": err_ref()}}},
        "/api/openapi.json": {"get": {"summary": "This document", "security": [],
            "responses": {"200": {"description": "OpenAPI 3", "content": {"application/json": {"schema": obj()}}}}}},
    });
    // Every error status needs a description.
    let mut paths = paths;
    for (_, item) in paths.as_object_mut().expect("paths").iter_mut() {
        for (_, o) in item.as_object_mut().expect("item").iter_mut() {
            for (code, r) in o["responses"]
                .as_object_mut()
                .expect("responses")
                .iter_mut()
            {
                if r.get("description").is_none() {
                    r["description"] = json!(describe(code.parse().unwrap_or(0)));
                }
            }
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "warden web",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "REST API of warden, the supervisor of AI agents. Every call but health and this document needs `Authorization: Bearer <token>` (`warden token create`). Errors are {\"error\": {\"code\", \"message\"}}."
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {"type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}
            }}
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_described() {
        let s = super::spec();
        for p in [
            "/api/status",
            "/api/agents/{name}/logs",
            "/api/halt",
            "/api/events",
            "/metrics",
            "/api/tokens",
            "/api/casepacks/{halt_id}",
            "/api/audit/{seq}",
        ] {
            assert!(s["paths"].get(p).is_some(), "{p}");
        }
        assert_eq!(s["openapi"], "3.0.3");
    }
}
