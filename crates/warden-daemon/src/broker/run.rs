//! Runs: an agent's goal, the limits it started with, and every call made in
//! it, from proposal to result.
//!
//! A run is `open` until it ends, once, with one [`StopReason`]. [`crate::broker::decide`]
//! records each proposal and its decision; the daemon records each executed
//! call's result with [`RunStore::record_result`] and ends the run.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::policy::{AgentToolPolicy, Decision, DenyCode, Proposal};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("no run {0:?}")]
    NoSuchRun(String),
    #[error("agent {agent} already has run {id} open; end it first")]
    AlreadyOpen { agent: String, id: String },
    #[error("run {id} has already ended ({reason})")]
    Ended { id: String, reason: &'static str },
    #[error("run {id} has no allowed call {seq} waiting for a result")]
    NoSuchCall { id: String, seq: u32 },
    #[error("a run needs a goal")]
    NoGoal,
}

/// Why a run ended: exactly one per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Completed,
    LimitExceeded,
    ApprovalRequired,
    PolicyDenied,
    Error,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Completed => "completed",
            StopReason::LimitExceeded => "limit_exceeded",
            StopReason::ApprovalRequired => "approval_required",
            StopReason::PolicyDenied => "policy_denied",
            StopReason::Error => "error",
        }
    }

    /// The reason a run ends with when the daemon stops it because of
    /// `decision` (`None`: the decision does not end a run by itself).
    pub fn for_decision(decision: &Decision) -> Option<StopReason> {
        match decision {
            Decision::Allow { .. } => None,
            Decision::NeedsApproval { .. } => Some(StopReason::ApprovalRequired),
            Decision::Deny { code, .. } => Some(match code {
                DenyCode::LimitExceeded => StopReason::LimitExceeded,
                DenyCode::ApprovalRequired => StopReason::ApprovalRequired,
                DenyCode::StoreFailed => StopReason::Error,
                _ => StopReason::PolicyDenied,
            }),
        }
    }
}

/// Open, or ended once for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunState {
    Open,
    Ended {
        reason: StopReason,
        at_ms: u64,
        /// What the agent or the daemon said about the end.
        detail: Option<String>,
    },
}

/// The limits a run started with (a later config reload does not move them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct RunLimits {
    pub max_steps: Option<u32>,
    pub max_tool_calls: Option<u32>,
    #[serde(serialize_with = "ser_opt_ms", rename = "max_runtime_ms")]
    pub max_runtime: Option<Duration>,
}

fn ser_opt_ms<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_millis() as u64)),
        None => s.serialize_none(),
    }
}

/// One proposal in a run, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallRecord {
    /// Index in the run's calls.
    pub seq: u32,
    pub proposed_at_ms: u64,
    pub tool: String,
    pub args: BTreeMap<String, Value>,
    /// `allow`, `needs_approval` or a deny code.
    pub decision: &'static str,
    /// The deny reason, if denied.
    pub reason: Option<String>,
    /// The approval request, if one was opened or is awaited.
    pub request_id: Option<String>,
    /// uid of the operator whose token allowed the call.
    pub approved_by: Option<u32>,
    /// Set by [`RunStore::record_result`].
    pub executed: bool,
    pub exit_code: Option<i32>,
    /// Bytes of output the tool produced (before capping).
    pub result_bytes: Option<u64>,
    pub truncated: bool,
    pub duration_ms: Option<u64>,
}

/// What the daemon reports after running an allowed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExecResult {
    pub exit_code: Option<i32>,
    pub result_bytes: u64,
    pub truncated: bool,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub id: String,
    pub agent: String,
    pub goal: String,
    pub started_at_ms: u64,
    pub limits: RunLimits,
    /// Proposals so far (`max_steps` counts these).
    pub steps: u32,
    /// Allowed calls so far (`max_tool_calls` counts these).
    pub tool_calls: u32,
    pub calls: Vec<CallRecord>,
    pub state: RunState,
}

impl Run {
    /// Records a proposal and its decision; called by `decide`.
    pub(crate) fn record_call(
        &mut self,
        p: &Proposal,
        d: &Decision,
        approved_by: Option<u32>,
        now_ms: u64,
    ) {
        self.steps = self.steps.saturating_add(1);
        if matches!(d, Decision::Allow { .. }) {
            self.tool_calls = self.tool_calls.saturating_add(1);
        }
        let (reason, request_id) = match d {
            Decision::Deny { reason, .. } => (Some(reason.clone()), None),
            Decision::NeedsApproval { request_id } => (None, Some(request_id.clone())),
            Decision::Allow { .. } => (None, None),
        };
        self.calls.push(CallRecord {
            seq: self.calls.len() as u32,
            proposed_at_ms: now_ms,
            tool: p.tool.clone(),
            args: p.args.clone(),
            decision: d.code(),
            reason,
            request_id,
            approved_by,
            executed: false,
            exit_code: None,
            result_bytes: None,
            truncated: false,
            duration_ms: None,
        });
    }

    /// The seq of the call `decide` recorded last.
    pub fn last_seq(&self) -> Option<u32> {
        self.calls.last().map(|c| c.seq)
    }

    pub fn is_open(&self) -> bool {
        self.state == RunState::Open
    }
}

/// A run as `list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub id: String,
    pub agent: String,
    pub goal: String,
    pub started_at_ms: u64,
    pub steps: u32,
    pub tool_calls: u32,
    pub state: RunState,
}

/// Every run since the daemon started, in memory.
#[derive(Debug, Default)]
pub struct RunStore {
    runs: BTreeMap<String, Run>,
    /// Agent → its open run: an agent has at most one.
    open: HashMap<String, String>,
    /// Orders run ids by start within one daemon.
    counter: u64,
}

impl RunStore {
    pub fn new() -> RunStore {
        RunStore::default()
    }

    /// Opens a run with the agent's current limits; returns its id.
    pub fn start(
        &mut self,
        agent: &str,
        goal: &str,
        policy: &AgentToolPolicy,
        now_ms: u64,
    ) -> Result<String, RunError> {
        if goal.trim().is_empty() {
            return Err(RunError::NoGoal);
        }
        if let Some(id) = self.open.get(agent) {
            return Err(RunError::AlreadyOpen {
                agent: agent.into(),
                id: id.clone(),
            });
        }
        self.counter += 1;
        // The random part keeps ids unique across daemon restarts.
        let id = format!(
            "run-{:06}-{}",
            self.counter,
            warden_core::crypto::random_hex(4)
        );
        self.runs.insert(
            id.clone(),
            Run {
                id: id.clone(),
                agent: agent.into(),
                goal: goal.into(),
                started_at_ms: now_ms,
                limits: RunLimits {
                    max_steps: policy.max_steps,
                    max_tool_calls: policy.max_tool_calls,
                    max_runtime: policy.max_runtime,
                },
                steps: 0,
                tool_calls: 0,
                calls: Vec::new(),
                state: RunState::Open,
            },
        );
        self.open.insert(agent.into(), id.clone());
        Ok(id)
    }

    /// The agent's open run, to pass to `decide`.
    pub fn open_run_mut(&mut self, agent: &str) -> Option<&mut Run> {
        let id = self.open.get(agent)?;
        self.runs.get_mut(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Run> {
        self.runs.get_mut(id)
    }

    pub fn show(&self, id: &str) -> Option<&Run> {
        self.runs.get(id)
    }

    /// Records the result of allowed call `seq`.
    pub fn record_result(&mut self, id: &str, seq: u32, r: ExecResult) -> Result<(), RunError> {
        let run = self
            .runs
            .get_mut(id)
            .ok_or_else(|| RunError::NoSuchRun(id.into()))?;
        let call = run
            .calls
            .get_mut(seq as usize)
            .filter(|c| c.decision == "allow" && !c.executed)
            .ok_or(RunError::NoSuchCall { id: id.into(), seq })?;
        call.executed = true;
        call.exit_code = r.exit_code;
        call.result_bytes = Some(r.result_bytes);
        call.truncated = r.truncated;
        call.duration_ms = Some(r.duration.as_millis() as u64);
        Ok(())
    }

    /// Ends a run with its one stop reason.
    pub fn end(
        &mut self,
        id: &str,
        reason: StopReason,
        detail: Option<String>,
        now_ms: u64,
    ) -> Result<(), RunError> {
        let run = self
            .runs
            .get_mut(id)
            .ok_or_else(|| RunError::NoSuchRun(id.into()))?;
        if let RunState::Ended { reason, .. } = &run.state {
            return Err(RunError::Ended {
                id: id.into(),
                reason: reason.as_str(),
            });
        }
        run.state = RunState::Ended {
            reason,
            at_ms: now_ms,
            detail,
        };
        self.open.remove(&run.agent);
        Ok(())
    }

    /// Runs, oldest first, of `agent` (all if `None`) that ended with
    /// `reason` (any state if `None`).
    /// Runs kept, open and ended.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Runs open now (one per agent at most).
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Drops ended runs (the daemon keeps memory bounded); open runs stay.
    pub fn forget(&mut self, ids: &[String]) {
        for id in ids {
            if self.runs.get(id).is_some_and(|r| !r.is_open()) {
                self.runs.remove(id);
            }
        }
    }

    pub fn list(&self, agent: Option<&str>, reason: Option<StopReason>) -> Vec<RunSummary> {
        let mut v: Vec<RunSummary> = self
            .runs
            .values()
            .filter(|r| agent.is_none_or(|a| r.agent == a))
            .filter(|r| {
                reason.is_none_or(
                    |want| matches!(r.state, RunState::Ended { reason, .. } if reason == want),
                )
            })
            .map(|r| RunSummary {
                id: r.id.clone(),
                agent: r.agent.clone(),
                goal: r.goal.clone(),
                started_at_ms: r.started_at_ms,
                steps: r.steps,
                tool_calls: r.tool_calls,
                state: r.state.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.started_at_ms.cmp(&b.started_at_ms).then(a.id.cmp(&b.id)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_open_run_per_agent_and_one_end() {
        let mut s = RunStore::new();
        let p = AgentToolPolicy::default();
        assert_eq!(s.start("a", " ", &p, 0), Err(RunError::NoGoal));
        let id = s.start("a", "find x", &p, 0).unwrap();
        assert!(matches!(
            s.start("a", "again", &p, 1),
            Err(RunError::AlreadyOpen { .. })
        ));
        let other = s.start("b", "other", &p, 2).unwrap();
        s.end(&id, StopReason::Completed, None, 3).unwrap();
        assert_eq!(
            s.end(&id, StopReason::Error, None, 4),
            Err(RunError::Ended {
                id: id.clone(),
                reason: "completed"
            })
        );
        let id2 = s.start("a", "next", &p, 5).unwrap();
        assert_eq!(s.list(Some("a"), None).len(), 2);
        assert_eq!(s.list(None, Some(StopReason::Completed))[0].id, id);
        assert!(s.list(Some("b"), Some(StopReason::Completed)).is_empty());
        assert_eq!(
            s.list(None, None)
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            [id.as_str(), other.as_str(), id2.as_str()]
        );
        assert!(s.open_run_mut("a").is_some_and(|r| r.id == id2));
        assert!(matches!(
            s.end("nope", StopReason::Completed, None, 0),
            Err(RunError::NoSuchRun(_))
        ));
        let json = serde_json::to_value(s.show(&id).unwrap()).unwrap();
        assert_eq!(json["state"]["reason"], "completed");
    }
}
