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

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::approval::{self, ApprovalStore, RequestState, TokenClaims, TokenRefusal};
use super::registry::{Registry, Scope};
use super::run::{Run, RunState};
use super::schema::{render_argv, validate_args};
use crate::config::Dur;

/// What one agent may do with tools: the `[agent.broker]` table of its config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentToolPolicy {
    /// Names of registered tools this agent may propose; nothing else.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Proposals per run, whatever their outcome (a refused call is a step too).
    pub max_steps: Option<u32>,
    /// Allowed calls per run.
    pub max_tool_calls: Option<u32>,
    /// Wall-clock time from `run.start` after which no call is allowed.
    #[serde(
        default,
        deserialize_with = "de_opt_dur",
        serialize_with = "ser_opt_dur"
    )]
    pub max_runtime: Option<Duration>,
}

fn de_opt_dur<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Ok(Option::<Dur>::deserialize(d)?.map(|d| d.0))
}

fn ser_opt_dur<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => s.serialize_some(&Dur(*d).to_string()),
        None => s.serialize_none(),
    }
}

impl AgentToolPolicy {
    /// True when any run limit is set: such an agent must open a run first.
    pub fn has_limits(&self) -> bool {
        self.max_steps.is_some() || self.max_tool_calls.is_some() || self.max_runtime.is_some()
    }

    /// Names in `tools` that the registry does not have; the daemon refuses
    /// (or warns about) such a config at load and on reload.
    pub fn unknown_tools(&self, registry: &Registry) -> Vec<String> {
        self.tools
            .iter()
            .filter(|t| registry.get(t).is_none())
            .cloned()
            .collect()
    }
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
    if !policy.tools.iter().any(|t| *t == tool.name) {
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
