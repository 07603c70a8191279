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
/// Longest reason kept for a halt; longer ones are cut (never refused: a
/// halt must not fail because of its reason) and end with a marker.
pub const MAX_REASON: usize = 4096;

/// Cuts `reason` to at most [`MAX_REASON`] bytes plus a marker that says
/// how much was dropped; shorter reasons are returned as they are.
pub fn truncate_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON {
        return reason.to_string();
    }
    let mut end = MAX_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{} [truncated: {} more bytes]",
        &reason[..end],
        reason.len() - end
    )
}

/// A request line longer than [`MAX_LINE`] cannot be parsed, but if its
/// start reads as a halt it is one: a halt is never refused for its size.
/// The reason is the raw (still JSON-escaped) start of the `reason` string,
/// marked as truncated. A line that merely mentions `"cmd":"halt"` inside
/// another field halts too; the socket's users may halt anyway.
pub fn salvage_halt(prefix: &[u8]) -> Option<Request> {
    let text = String::from_utf8_lossy(prefix);
    if !text.trim_start().starts_with('{') || string_value(&text, "cmd")? != "halt" {
        return None;
    }
    let raw: String = string_value(&text, "reason")
        .unwrap_or_default()
        .chars()
        .take(1024)
        .collect();
    Some(Request::Halt {
        reason: format!("{raw} [truncated: request longer than {MAX_LINE} bytes]"),
    })
}

/// The raw text of `"key": "value"` up to its closing quote (or the end of
/// `text`), without unescaping.
fn string_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(&rest[..i]),
            _ => escaped = false,
        }
    }
    Some(rest)
}

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
    /// Read the whole config again and apply it (and the tool registry);
    /// with `dry_run`, only say what would change. `config_text` (dry run
    /// only) plans that text instead of the daemon's file
    /// (`check-config --against-running`).
    Reload {
        #[serde(default)]
        dry_run: bool,
        #[serde(default)]
        config_text: Option<String>,
    },
    Resume {
        reason: String,
        /// A signed authorization (see `warden authorize-resume`), when the
        /// daemon requires one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authorization: Option<serde_json::Value>,
    },

    // --- `warden web` (issue #14): events, metrics, audit reads, tokens ---
    /// Turns the connection into a stream: every audit entry after `since`
    /// (from the database), then each new one as it is committed, one JSON
    /// line each ([`STREAM_END`] marks an error line that ends it).
    Subscribe {
        since: Option<u64>,
    },
    /// Counters the daemon keeps for `/metrics` (halts, phase timings, seq).
    Metrics,
    /// The last `n` audit entries (default 50, at most [`AUDIT_TAIL_MAX`]).
    AuditTail {
        n: Option<u64>,
    },
    /// One audit entry.
    AuditShow {
        seq: u64,
    },
    /// Check the chain, signatures and head, as `warden audit verify`.
    AuditVerify,
    /// The case pack of a halt, as its JSON document.
    Casepack {
        halt_id: String,
    },
    /// A web API token; the secret is answered once, only its SHA-256 kept.
    TokenCreate {
        name: String,
        role: Role,
        /// e.g. "90d"; none: never expires.
        expires: Option<String>,
    },
    /// Every token (never a secret or a digest).
    TokenList,
    TokenRevoke {
        name: String,
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

/// Most entries one `audit-tail` answers.
pub const AUDIT_TAIL_MAX: u64 = 1000;

/// Roles of web API tokens, each including the one before.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads only.
    Viewer,
    /// Viewer, plus start, stop, restart, approve, reject, checkin.
    Operator,
    /// Operator, plus halt, the two-phase kill, resume, credentials, reload
    /// and tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("role {s:?}: use viewer, operator or admin")),
        }
    }
}

/// Who a request is made for: the web service sends the SHA-256 of the
/// bearer token it was given; the daemon looks it up and checks its role.
/// Accepted only from root and the configured web user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OnBehalfOf {
    /// Hex SHA-256 of the bearer token (the token itself never crosses).
    pub token_sha256: String,
}

/// Top-level key of a request line that carries [`OnBehalfOf`].
pub const ON_BEHALF_OF: &str = "on_behalf_of";

/// In a `subscribe` stream, a line with this key (and `error`) is the last.
pub const STREAM_END: &str = "end";

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
                | Request::Reload { dry_run: true, .. }
                | Request::Subscribe { .. }
                | Request::Metrics
                | Request::AuditTail { .. }
                | Request::AuditShow { .. }
                | Request::AuditVerify
                | Request::Casepack { .. }
                | Request::TokenList
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
            Request::Reload { .. } => "reload",
            Request::Subscribe { .. } => "subscribe",
            Request::Metrics => "metrics",
            Request::AuditTail { .. } => "audit-tail",
            Request::AuditShow { .. } => "audit-show",
            Request::AuditVerify => "audit-verify",
            Request::Casepack { .. } => "casepack",
            Request::TokenCreate { .. } => "token-create",
            Request::TokenList => "token-list",
            Request::TokenRevoke { .. } => "token-revoke",
            Request::FleetHello { .. } => "fleet-hello",
            Request::FleetBeat => "fleet-beat",
            Request::FleetHalt { .. } => "fleet-halt",
            Request::FleetEvent { .. } => "fleet-event",
        }
    }

    /// The least role a web token needs for this request. Every verb is
    /// listed, so a new verb cannot be added without deciding.
    pub fn required_role(&self) -> Role {
        match self {
            Request::Ping
            | Request::Status
            | Request::Agents
            | Request::Logs { .. }
            | Request::Authorizations
            | Request::CredList
            | Request::Approvals
            | Request::Runs { .. }
            | Request::RunShow { .. }
            | Request::Subscribe { .. }
            | Request::Metrics
            | Request::AuditTail { .. }
            | Request::AuditShow { .. }
            | Request::AuditVerify
            | Request::Casepack { .. } => Role::Viewer,
            Request::Start { .. }
            | Request::Stop { .. }
            | Request::Restart { .. }
            | Request::Approve { .. }
            | Request::Reject { .. }
            | Request::Checkin => Role::Operator,
            Request::Halt { .. }
            | Request::Arm { .. }
            | Request::Execute { .. }
            | Request::Disarm { .. }
            | Request::Resume { .. }
            | Request::CredIssue { .. }
            | Request::CredVerify { .. }
            | Request::CredRevoke { .. }
            | Request::Reload { .. }
            | Request::TokenCreate { .. }
            | Request::TokenList
            | Request::TokenRevoke { .. }
            | Request::FleetHello { .. }
            | Request::FleetBeat
            | Request::FleetHalt { .. }
            | Request::FleetEvent { .. } => Role::Admin,
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
    /// `on_behalf_of` names no valid token (unknown, revoked, expired), or
    /// came from a uid that may not use it.
    Unauthorized,
    /// The token's role does not allow the verb.
    Forbidden,
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

/// Parses a request line that may carry [`ON_BEHALF_OF`] next to the
/// request's own keys.
pub fn parse_line(line: &str) -> Result<(Request, Option<OnBehalfOf>), String> {
    if !line.contains(ON_BEHALF_OF) {
        return parse_request(line).map(|r| (r, None));
    }
    let mut raw: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?;
    let obo = match raw.remove(ON_BEHALF_OF) {
        None => None,
        Some(v) => Some(
            serde_json::from_value::<OnBehalfOf>(v)
                .map_err(|e| format!("bad request: {ON_BEHALF_OF}: {e}"))?,
        ),
    };
    let rest = serde_json::Value::Object(raw).to_string();
    parse_request(&rest).map(|r| (r, obo))
}

/// One request line (with its newline), for `who` if given.
pub fn encode_line(req: &Request, who: Option<&OnBehalfOf>) -> String {
    let mut v = serde_json::to_value(req).expect("request serializes");
    if let (Some(who), Some(map)) = (who, v.as_object_mut()) {
        map.insert(
            ON_BEHALF_OF.into(),
            serde_json::to_value(who).expect("on_behalf_of serializes"),
        );
    }
    let mut s = v.to_string();
    s.push('\n');
    s
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
    fn long_reasons_are_cut_with_a_marker() {
        assert_eq!(truncate_reason("short"), "short");
        let long = "é".repeat(MAX_REASON);
        let t = truncate_reason(&long);
        assert!(t.len() < MAX_REASON + 64, "{}", t.len());
        assert!(t.ends_with("more bytes]"), "{t}");
    }

    #[test]
    fn an_oversized_halt_is_still_a_halt() {
        let line = serde_json::to_string(&Request::Halt {
            reason: "x".repeat(2 * MAX_LINE),
        })
        .unwrap();
        match salvage_halt(&line.as_bytes()[..MAX_LINE + 1]) {
            Some(Request::Halt { reason }) => {
                assert!(reason.starts_with("xxx") && reason.contains("truncated"));
                assert!(reason.len() < 2048);
            }
            other => panic!("{other:?}"),
        }
        let spaced = format!(
            "{{ \"cmd\" : \"halt\", \"reason\": \"{}",
            "y".repeat(MAX_LINE)
        );
        assert!(matches!(
            salvage_halt(spaced.as_bytes()),
            Some(Request::Halt { .. })
        ));
        let status = format!("{{\"cmd\":\"status\",\"x\":\"{}", "y".repeat(MAX_LINE));
        assert_eq!(salvage_halt(status.as_bytes()), None);
    }

    #[test]
    fn on_behalf_of_travels_beside_the_request() {
        let who = OnBehalfOf {
            token_sha256: "ab".repeat(32),
        };
        let req = Request::TokenCreate {
            name: "ci".into(),
            role: Role::Operator,
            expires: Some("90d".into()),
        };
        let line = encode_line(&req, Some(&who));
        assert_eq!(parse_line(line.trim()).unwrap(), (req.clone(), Some(who)));
        let line = encode_line(&req, None);
        assert_eq!(parse_line(line.trim()).unwrap(), (req, None));
        assert!(parse_line(r#"{"cmd":"status","on_behalf_of":{"x":1}}"#).is_err());
        let (r, w) =
            parse_line(r#"{"cmd":"status","on_behalf_of":{"token_sha256":"00"}}"#).unwrap();
        assert_eq!(r, Request::Status);
        assert!(w.is_some());
    }

    #[test]
    fn roles_are_ordered_and_verbs_have_one() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!(Request::Status.required_role(), Role::Viewer);
        assert_eq!(Request::Checkin.required_role(), Role::Operator);
        assert_eq!(
            Request::Halt { reason: "x".into() }.required_role(),
            Role::Admin
        );
        assert_eq!(Request::TokenList.required_role(), Role::Admin);
        assert_eq!(
            parse_request(r#"{"cmd":"subscribe","since":3}"#).unwrap(),
            Request::Subscribe { since: Some(3) }
        );
        assert_eq!(
            parse_request(r#"{"cmd":"audit-tail"}"#).unwrap(),
            Request::AuditTail { n: None }
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
