//! The control socket: JSON lines between the `warden` CLI and the daemon.
//!
//! One request per line, one response per line. The daemon learns the caller's
//! uid from SO_PEERCRED (never from the message) and audits every command.
//! Adding a command means adding one variant to [`Request`] and one match arm
//! in the daemon.

pub mod client;

use serde::{Deserialize, Serialize};

/// Version of the wire format; sent in every response.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line the daemon reads.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Ping,
    Status,
    Agents,
    /// Bytes of an agent's log from `offset` (None: the in-memory tail).
    Logs {
        agent: String,
        offset: Option<u64>,
    },
    Start {
        agent: String,
    },
    Stop {
        agent: String,
    },
    Restart {
        agent: String,
    },
    Halt {
        reason: String,
    },
    /// A human says "I am watching" (oversight timeout).
    Checkin,
    /// Two-phase kill, phase one: an authorization to execute later.
    Arm {
        agent: Option<String>,
        #[serde(default)]
        all: bool,
        /// "1-4" (default), "3", "1-3", ...
        levels: Option<String>,
        reason: String,
        /// e.g. "5m" (default).
        ttl: Option<String>,
    },
    /// Phase two: run the levels of an armed authorization, once.
    Execute {
        id: String,
    },
    /// Cancel an armed authorization.
    Disarm {
        id: String,
    },
    /// List kill authorizations.
    Authorizations,
    /// Issue a credential to an agent; the secret is answered once.
    CredIssue {
        agent: String,
        kind: String,
        name: String,
        revoke_command: Option<Vec<String>>,
    },
    /// Check a token; answers which credential it is, or refuses.
    CredVerify {
        token: String,
    },
    CredList,
    /// Revoke one credential, or every credential of an agent.
    CredRevoke {
        id: Option<String>,
        agent: Option<String>,
    },
    /// Tool calls waiting for an operator's approval.
    Approvals,
    /// Approve a pending tool call; answers its single-use token.
    Approve {
        id: String,
        /// How long the token stays valid, e.g. "10m" (default).
        ttl: Option<String>,
    },
    /// Refuse a pending tool call.
    Reject {
        id: String,
        reason: String,
    },
    /// Broker runs, newest last.
    Runs {
        agent: Option<String>,
        /// Only runs that ended with this stop reason.
        reason: Option<String>,
    },
    /// One run with every call.
    RunShow {
        id: String,
    },
    /// Read the tool registry again.
    Reload,
    Resume {
        reason: String,
        /// A signed authorization (see `warden authorize-resume`), when the
        /// daemon requires one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authorization: Option<serde_json::Value>,
    },

    // The fleet bridge (`warden fleet run`, crates/warden-fleet): an
    // unprivileged control-socket client that relays fleet halts from etcd.
    /// The fleet process introduces itself; from now on its beats are due.
    FleetHello {
        node: String,
    },
    /// The fleet process is alive. Not audited (it comes every ~250 ms); the
    /// answer carries what the fleet publishes for this node.
    FleetBeat,
    /// A halt relayed from the fleet: `trigger` is `fleet` (a fleet halt
    /// record, `epoch` names it) or `fleet_partition` (this node lost etcd).
    FleetHalt {
        trigger: String,
        epoch: Option<u64>,
        reason: String,
    },
    /// A fleet event (halt seen, ack, partition, resume) for the audit chain.
    FleetEvent {
        kind: String,
        epoch: Option<u64>,
        data: serde_json::Value,
    },
}

impl Request {
    /// Reads change nothing: allowed in SAFE MODE, and answered even when
    /// the audit log has failed.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Request::Ping
                | Request::Status
                | Request::Agents
                | Request::Logs { .. }
                | Request::Authorizations
                | Request::CredList
                | Request::CredVerify { .. }
                | Request::Approvals
                | Request::Runs { .. }
                | Request::RunShow { .. }
                | Request::FleetBeat
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Status => "status",
            Request::Agents => "agents",
            Request::Logs { .. } => "logs",
            Request::Start { .. } => "start",
            Request::Stop { .. } => "stop",
            Request::Restart { .. } => "restart",
            Request::Halt { .. } => "halt",
            Request::Resume { .. } => "resume",
            Request::Checkin => "checkin",
            Request::Arm { .. } => "arm",
            Request::Execute { .. } => "execute",
            Request::Disarm { .. } => "disarm",
            Request::Authorizations => "authorizations",
            Request::CredIssue { .. } => "cred-issue",
            Request::CredVerify { .. } => "cred-verify",
            Request::CredList => "cred-list",
            Request::CredRevoke { .. } => "cred-revoke",
            Request::Approvals => "approvals",
            Request::Approve { .. } => "approve",
            Request::Reject { .. } => "reject",
            Request::Runs { .. } => "runs",
            Request::RunShow { .. } => "run-show",
            Request::Reload => "reload",
            Request::FleetHello { .. } => "fleet-hello",
            Request::FleetBeat => "fleet-beat",
            Request::FleetHalt { .. } => "fleet-halt",
            Request::FleetEvent { .. } => "fleet-event",
        }
    }
}

/// Machine-readable error kinds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    Refused,
    Failed,
}

impl crate::frame::Codes for ErrorKind {
    const VERSION: u32 = PROTOCOL_VERSION;
}

/// The daemon's answer: the one reply shape of [`crate::frame`].
pub type Response = crate::frame::Reply<ErrorKind>;

/// Parses one request line, with an error that names the problem.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let req: Request = serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?;
    // serde ignores extra keys next to a unit variant's tag; refuse them here
    // so a misspelt field is never silently dropped.
    let raw: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?;
    let known = serde_json::to_value(&req).expect("request serializes");
    if let Some(k) = raw.keys().find(|k| {
        known.get(k.as_str()).is_none() && !["offset", "authorization"].contains(&k.as_str())
    }) {
        return Err(format!(
            "bad request: unknown field `{k}` for command `{}`",
            req.name()
        ));
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_roundtrip() {
        for r in [
            Request::Status,
            Request::Logs {
                agent: "a".into(),
                offset: Some(3),
            },
            Request::Halt { reason: "x".into() },
            Request::FleetHello { node: "n1".into() },
            Request::FleetBeat,
            Request::FleetHalt {
                trigger: "fleet".into(),
                epoch: Some(3),
                reason: "r".into(),
            },
            Request::FleetEvent {
                kind: "ack".into(),
                epoch: None,
                data: serde_json::json!({"took_ms": 4}),
            },
        ] {
            let s = serde_json::to_string(&r).unwrap();
            assert_eq!(parse_request(&s).unwrap(), r);
        }
        assert_eq!(
            parse_request(r#"{"cmd":"status"}"#).unwrap(),
            Request::Status
        );
    }

    #[test]
    fn bad_requests_name_the_problem() {
        assert!(parse_request("nonsense")
            .unwrap_err()
            .contains("bad request"));
        assert!(parse_request(r#"{"cmd":"explode"}"#)
            .unwrap_err()
            .contains("explode"));
        assert!(parse_request(r#"{"cmd":"halt"}"#)
            .unwrap_err()
            .contains("reason"));
        assert!(parse_request(r#"{"cmd":"status","x":1}"#)
            .unwrap_err()
            .contains("x"));
    }
}
