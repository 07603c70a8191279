//! The agent socket: JSON lines between one agent and the daemon.
//!
//! Each agent has its own Unix socket (its path is in the agent's
//! `WARDEN_SOCKET`). Who is talking is fixed by which socket the line arrived
//! on and by the peer's uid (SO_PEERCRED), never by anything in the message.
//! One request per line, one response per line; see `docs/agent-api.md`.
//!
//! `heartbeat`, `task` and `whoami` are the agent API; `propose`,
//! `run.start`, `run.end` and `approval.wait` go to the tool broker
//! (`src/broker/`, wired in by the daemon).

pub mod client;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the wire format; sent in every response, optional in requests
/// (a request that names another version is refused).
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line, newline included; a longer line is answered
/// `too_long` and the connection closed.
pub const MAX_LINE: usize = 16 * 1024;
/// Longest task description, in bytes: a short summary, not the task itself.
pub const MAX_DESCRIPTION: usize = 1024;

/// What an agent may ask. The tag is `type`; unknown fields are refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum AgentRequest {
    /// "I am alive": the daemon records the time.
    #[serde(rename = "heartbeat")]
    Heartbeat,
    /// The agent generated a task; feeds the tasks-per-day monitor.
    #[serde(rename = "task")]
    Task {
        /// A short, human-readable summary (at most [`MAX_DESCRIPTION`] bytes).
        description: String,
    },
    /// Which agent this socket belongs to, as the daemon sees it.
    #[serde(rename = "whoami")]
    Whoami,
    /// Broker: ask to run a tool.
    #[serde(rename = "propose")]
    Propose {
        /// The tool's name, as the policy knows it.
        tool: String,
        /// The tool's arguments, by name.
        #[serde(default)]
        args: BTreeMap<String, serde_json::Value>,
        /// An approval token (`approval.wait` hands it out), for `write` and
        /// `execute` tools.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// Broker: begin a run towards a goal.
    #[serde(rename = "run.start")]
    RunStart {
        /// What the run is for, in the agent's words.
        goal: String,
    },
    /// Broker: end a run.
    #[serde(rename = "run.end")]
    RunEnd {
        /// The id `run.start` answered.
        run_id: String,
        /// Why the run ended, if the agent says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Broker: wait for a human's decision on a proposal.
    #[serde(rename = "approval.wait")]
    ApprovalWait {
        /// The id `propose` answered.
        request_id: String,
        /// How long to wait; the daemon's default when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
}

impl AgentRequest {
    /// The message's `type` on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            AgentRequest::Heartbeat => "heartbeat",
            AgentRequest::Task { .. } => "task",
            AgentRequest::Whoami => "whoami",
            AgentRequest::Propose { .. } => "propose",
            AgentRequest::RunStart { .. } => "run.start",
            AgentRequest::RunEnd { .. } => "run.end",
            AgentRequest::ApprovalWait { .. } => "approval.wait",
        }
    }

    /// Fields the message may carry besides `type` and `version`.
    fn fields(&self) -> &'static [&'static str] {
        match self {
            AgentRequest::Heartbeat | AgentRequest::Whoami => &[],
            AgentRequest::Task { .. } => &["description"],
            AgentRequest::Propose { .. } => &["tool", "args", "token"],
            AgentRequest::RunStart { .. } => &["goal"],
            AgentRequest::RunEnd { .. } => &["run_id", "reason"],
            AgentRequest::ApprovalWait { .. } => &["request_id", "timeout_ms"],
        }
    }

    /// True for the messages the tool broker will answer.
    pub fn is_broker(&self) -> bool {
        matches!(
            self,
            AgentRequest::Propose { .. }
                | AgentRequest::RunStart { .. }
                | AgentRequest::RunEnd { .. }
                | AgentRequest::ApprovalWait { .. }
        )
    }
}

/// Machine-readable error codes; every one is listed in `docs/agent-api.md`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, unknown `type`, missing or unknown field.
    BadRequest,
    /// The request names a protocol version this daemon does not speak.
    UnsupportedVersion,
    /// The line is longer than [`MAX_LINE`]; the connection is closed.
    TooLong,
    /// Over the agent's message rate; the message was dropped.
    RateLimited,
    /// The daemon's queue is full; try again shortly.
    Busy,
    /// The agent already has the most connections it may hold; closed.
    TooManyConnections,
    /// The peer is not this socket's agent (SO_PEERCRED); closed.
    PeerRefused,
    /// The daemon will not do this (for example: SAFE MODE, no tool registry).
    Refused,
    /// The broker's policy refused the proposal; `data.decision` is the
    /// reason's code (`unknown_tool`, `not_allowed`, `bad_arguments`, ...).
    Denied,
    /// The proposal waits for an operator: `data.request_id` names the
    /// request to `approval.wait` on.
    PendingApproval,
    /// The daemon failed, or is shutting down.
    Failed,
}

impl crate::frame::Codes for ErrorCode {
    const VERSION: u32 = PROTOCOL_VERSION;
}

/// One answer to one request: the one reply shape of [`crate::frame`].
pub type AgentResponse = crate::frame::Reply<ErrorCode>;

/// Encodes a request as one line, newline included.
pub fn encode_request(req: &AgentRequest) -> String {
    crate::frame::encode(req)
}

/// Decodes one request line (trailing newline allowed). The error is the
/// answer to send back.
pub fn decode_request(line: &str) -> Result<AgentRequest, AgentResponse> {
    let bad = |m: String| AgentResponse::err(ErrorCode::BadRequest, format!("bad request: {m}"));
    let mut raw: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(line.trim_end()).map_err(|e| bad(e.to_string()))?;
    match raw.remove("version") {
        None => {}
        Some(v) if v.as_u64() == Some(PROTOCOL_VERSION as u64) => {}
        Some(v) => {
            return Err(AgentResponse::err(
                ErrorCode::UnsupportedVersion,
                format!("unsupported version {v}: this daemon speaks version {PROTOCOL_VERSION}"),
            ))
        }
    }
    let value = serde_json::Value::Object(raw);
    let req: AgentRequest = serde_json::from_value(value.clone()).map_err(|e| {
        let e = e.to_string();
        match value.get("type") {
            Some(serde_json::Value::String(t)) if e.starts_with("unknown variant") => {
                bad(format!("unknown message type `{t}`"))
            }
            _ => bad(e),
        }
    })?;
    // serde ignores extra keys next to a unit variant's tag; refuse them here
    // so a misspelt field is never silently dropped.
    if let Some(k) = value
        .as_object()
        .into_iter()
        .flat_map(|m| m.keys())
        .find(|k| k.as_str() != "type" && !req.fields().contains(&k.as_str()))
    {
        return Err(bad(format!(
            "unknown field `{k}` for message `{}`",
            req.name()
        )));
    }
    validate(&req).map_err(bad)?;
    Ok(req)
}

fn validate(req: &AgentRequest) -> Result<(), String> {
    let nonempty = |field: &str, v: &str| {
        if v.trim().is_empty() {
            Err(format!("`{field}` is empty"))
        } else {
            Ok(())
        }
    };
    match req {
        AgentRequest::Task { description } => {
            nonempty("description", description)?;
            if description.len() > MAX_DESCRIPTION {
                return Err(format!(
                    "`description` is {} bytes; at most {MAX_DESCRIPTION}",
                    description.len()
                ));
            }
            Ok(())
        }
        AgentRequest::Propose { tool, .. } => nonempty("tool", tool),
        AgentRequest::RunStart { goal } => nonempty("goal", goal),
        AgentRequest::RunEnd { run_id, .. } => nonempty("run_id", run_id),
        AgentRequest::ApprovalWait { request_id, .. } => nonempty("request_id", request_id),
        AgentRequest::Heartbeat | AgentRequest::Whoami => Ok(()),
    }
}

/// Encodes a response as one line, newline included.
pub fn encode_response(r: &AgentResponse) -> String {
    crate::frame::encode(r)
}

/// Decodes one response line (trailing newline allowed).
pub fn decode_response(line: &str) -> Result<AgentResponse, String> {
    serde_json::from_str(line.trim_end()).map_err(|e| format!("unreadable response: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all() -> Vec<AgentRequest> {
        vec![
            AgentRequest::Heartbeat,
            AgentRequest::Whoami,
            AgentRequest::Task {
                description: "summarise the logs".into(),
            },
            AgentRequest::Propose {
                tool: "shell".into(),
                args: [
                    ("cmd".to_string(), json!("ls")),
                    ("n".to_string(), json!(3)),
                ]
                .into_iter()
                .collect(),
                token: None,
            },
            AgentRequest::Propose {
                tool: "deploy".into(),
                args: BTreeMap::new(),
                token: Some("wt1.00.00".into()),
            },
            AgentRequest::RunStart { goal: "g".into() },
            AgentRequest::RunEnd {
                run_id: "r1".into(),
                reason: Some("done".into()),
            },
            AgentRequest::RunEnd {
                run_id: "r1".into(),
                reason: None,
            },
            AgentRequest::ApprovalWait {
                request_id: "p1".into(),
                timeout_ms: Some(5000),
            },
        ]
    }

    #[test]
    fn requests_roundtrip() {
        for r in all() {
            let line = encode_request(&r);
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(decode_request(&line).unwrap(), r, "{line}");
        }
    }

    #[test]
    fn wire_names_are_the_documented_ones() {
        for (line, name) in [
            (r#"{"type":"heartbeat"}"#, "heartbeat"),
            (r#"{"type":"whoami","version":1}"#, "whoami"),
            (r#"{"type":"task","description":"x"}"#, "task"),
            (r#"{"type":"propose","tool":"t"}"#, "propose"),
            (r#"{"type":"run.start","goal":"g"}"#, "run.start"),
            (r#"{"type":"run.end","run_id":"r"}"#, "run.end"),
            (
                r#"{"type":"approval.wait","request_id":"p"}"#,
                "approval.wait",
            ),
        ] {
            let r = decode_request(line).unwrap();
            assert_eq!(r.name(), name);
            assert_eq!(
                r.is_broker(),
                !["heartbeat", "whoami", "task"].contains(&name)
            );
        }
    }

    fn err(line: &str) -> AgentResponse {
        decode_request(line).unwrap_err()
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let e = err("nonsense");
        assert_eq!(e.code, Some(ErrorCode::BadRequest));
        assert!(e.error.unwrap().starts_with("bad request"));
        assert!(err(r#"{"type":"explode"}"#)
            .error
            .unwrap()
            .contains("unknown message type `explode`"));
        assert!(err(r#"{"type":"task"}"#)
            .error
            .unwrap()
            .contains("description"));
        assert!(err(r#"{"type":"heartbeat","agent":"other"}"#)
            .error
            .unwrap()
            .contains("unknown field `agent`"));
        assert!(err(r#"{"type":"task","description":"x","uid":0}"#)
            .error
            .unwrap()
            .contains("unknown field `uid`"));
        assert!(err(r#"{"type":"task","description":"  "}"#)
            .error
            .unwrap()
            .contains("empty"));
        let long = format!(
            r#"{{"type":"task","description":"{}"}}"#,
            "x".repeat(MAX_DESCRIPTION + 1)
        );
        assert!(err(&long).error.unwrap().contains("at most"));
        assert!(err(r#"[1,2]"#).error.is_some());
        assert!(err(r#"{"version":1}"#).error.unwrap().contains("type"));
        let v = err(r#"{"type":"heartbeat","version":2}"#);
        assert_eq!(v.code, Some(ErrorCode::UnsupportedVersion));
    }

    #[test]
    fn responses_roundtrip() {
        for r in [
            AgentResponse::ok(json!({"agent":"a"})),
            AgentResponse::err(ErrorCode::RateLimited, "slow down"),
            AgentResponse::err_with(
                ErrorCode::Denied,
                "tool x is not registered",
                json!({"decision": "unknown_tool"}),
            ),
        ] {
            let line = encode_response(&r);
            assert_eq!(decode_response(&line).unwrap(), r);
        }
        assert_eq!(
            encode_response(&AgentResponse::err(ErrorCode::TooManyConnections, "x")),
            "{\"ok\":false,\"version\":1,\"error\":\"x\",\"code\":\"too_many_connections\"}\n"
        );
    }
}
