//! The tool broker as the daemon runs it: agents propose over their own
//! socket, [`crate::broker::decide`] answers, and what it allows runs here:
//! as the agent's user, inside the agent's cgroup (so the agent's limits and
//! every halt cover the tool), with the tool's timeout and output cap.
//!
//! The main loop never waits for a tool. An allowed call is forked at once
//! and handed to a task that waits on the tool's pidfd and reads its output;
//! the task sends a [`ToolDone`] back, and the main loop records the result
//! in the run, audits it and answers the agent. `approval.wait` parks the
//! agent's answer in a [`Waiter`] that an operator's decision, the request's
//! expiry or the wait's own deadline releases.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::{audit_event, Daemon, DaemonError, Mode};
use crate::broker::{
    self, decide, ApprovalStore, Decision, DenyCode, Proposal, Registry, RequestState, RunStore,
    StopReason,
};
use warden_core::config::Config;
use warden_core::supervisor::State;
use warden_proto::agent::{AgentResponse, ErrorCode};
use warden_proto::control::{ErrorKind, Response};

/// Default and longest `approval.wait`.
const WAIT_DEFAULT: Duration = Duration::from_secs(60);
const WAIT_MAX: Duration = Duration::from_secs(15 * 60);
/// Default lifetime of an approval token (`warden approve --ttl`).
const APPROVAL_TTL: Duration = Duration::from_secs(10 * 60);
/// After a tool exits, how long its output pipes may stay open (held by
/// something it left behind) before the result is sent without the rest.
const DRAIN_GRACE: Duration = Duration::from_millis(200);
/// After SIGKILL, how long to wait for the tool to be gone (a frozen
/// cgroup holds it) before the result is sent and the pid reaped later.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Ended runs kept in memory for `warden runs` (the audit log keeps all).
const RUNS_KEPT: usize = 10_000;

/// A parked `approval.wait`.
struct Waiter {
    agent: String,
    request_id: String,
    deadline: Instant,
    reply: oneshot::Sender<AgentResponse>,
}

/// A tool that is running.
#[derive(Debug, Clone)]
struct Running {
    agent: String,
    tool: String,
    pid: i32,
    run: Option<(String, u32)>,
}

/// What a tool's task reports when the tool is gone.
#[derive(Debug)]
pub(super) struct ToolDone {
    call: u64,
    outcome: Outcome,
    reply: oneshot::Sender<AgentResponse>,
}

#[derive(Debug, Default)]
struct Outcome {
    exit_code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    stdout: Captured,
    stderr: Captured,
    duration: Duration,
    /// The pid could not be reaped yet (still held after SIGKILL).
    unreaped: bool,
}

/// The first `cap` bytes of a stream, and how many it carried in all.
#[derive(Debug, Default)]
struct Captured {
    kept: Vec<u8>,
    total: u64,
}

impl Captured {
    fn truncated(&self) -> bool {
        self.total > self.kept.len() as u64
    }
}

/// The daemon's broker state.
pub(super) struct Broker {
    registry: Option<Registry>,
    registry_path: Option<PathBuf>,
    registry_sha256: Option<String>,
    approvals: ApprovalStore,
    runs: RunStore,
    waiters: Vec<Waiter>,
    running: BTreeMap<u64, Running>,
    next_call: u64,
    /// Tool pids that outlived their task (a frozen cgroup); reaped later.
    unreaped: Vec<i32>,
    done_tx: Option<mpsc::UnboundedSender<ToolDone>>,
}

impl Broker {
    pub(super) fn open(
        cfg: &Config,
        key: &warden_core::crypto::KeyPair,
    ) -> Result<Broker, DaemonError> {
        let (registry, sha) = match &cfg.tools {
            Some(p) => {
                let (r, sha) = broker::load_registry(cfg, p).map_err(DaemonError::Broker)?;
                (Some(r), Some(sha))
            }
            None => (None, None),
        };
        let dir = cfg.state_dir.join("broker");
        super::make_dir(&dir, 0o700)?;
        let journal = dir.join("approvals.jsonl");
        let approvals = ApprovalStore::open(&journal, key.verifying_key(), cfg.approval_ttl())
            .map_err(|e| DaemonError::Broker(e.to_string()))?;
        Ok(Broker {
            registry,
            registry_path: cfg.tools.clone(),
            registry_sha256: sha,
            approvals,
            runs: RunStore::new(),
            waiters: Vec::new(),
            running: BTreeMap::new(),
            next_call: 0,
            unreaped: Vec::new(),
            done_tx: None,
        })
    }

    pub(super) fn set_done_channel(&mut self, tx: mpsc::UnboundedSender<ToolDone>) {
        self.done_tx = Some(tx);
    }

    /// The earliest parked wait's deadline.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.waiters.iter().map(|w| w.deadline).min()
    }

    pub(super) fn status_json(&self) -> serde_json::Value {
        json!({
            "registry": self.registry_path,
            "registry_sha256": self.registry_sha256,
            "tools": self.registry.as_ref().map(|r| r.names()),
            "pending_approvals": self.approvals.pending(broker::now_ms()).len(),
            "running_tools": self.running.len(),
            "open_runs": self.runs.open_count(),
        })
    }

    /// Reaps tool pids that were still held when their task gave up.
    pub(super) fn reap_stragglers(&mut self) {
        self.unreaped
            .retain(|&pid| super::reap_pid(pid, false).is_none() && pid_exists(pid));
    }
}

fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn wait_answer(r: &broker::Request) -> Option<AgentResponse> {
    let d = match &r.state {
        RequestState::Pending => return None,
        RequestState::Approved {
            by_uid,
            token,
            token_expires_at_ms,
            ..
        } => json!({"request_id": r.id, "state": "approved", "approved_by": by_uid,
                    "token": token, "token_expires_at_ms": token_expires_at_ms}),
        RequestState::Rejected { by_uid, reason, .. } => {
            json!({"request_id": r.id, "state": "rejected", "rejected_by": by_uid, "reason": reason})
        }
        RequestState::Expired { .. } => json!({"request_id": r.id, "state": "expired"}),
        RequestState::Used { .. } => json!({"request_id": r.id, "state": "used"}),
    };
    Some(AgentResponse::ok(d))
}

impl Daemon {
    /// Why no tool may run now, if so.
    fn broker_refusal(&self, agent: &str) -> Option<String> {
        match &self.mode {
            Mode::Safe(l) => return Some(format!("SAFE MODE ({}): no tool runs", l.reason)),
            Mode::ShuttingDown => return Some("daemon is shutting down".into()),
            Mode::Running => {}
        }
        let Some(s) = self.slots.get(agent) else {
            return Some(format!("no agent named {agent:?}"));
        };
        if s.frozen {
            return Some("agent is frozen".into());
        }
        if !matches!(s.machine.state, State::Running { .. }) {
            return Some(format!("agent is {}", s.machine.state.name()));
        }
        None
    }

    /// `propose`: decide, audit, and run what is allowed.
    pub(super) fn propose(
        &mut self,
        agent: &str,
        proposal: Proposal,
        peer_pid: Option<i32>,
        reply: oneshot::Sender<AgentResponse>,
        now: Instant,
    ) {
        if let Some(why) = self.broker_refusal(agent) {
            let _ = reply.send(AgentResponse::err(ErrorCode::Refused, why));
            return;
        }
        let now_ms = broker::now_ms();
        let policy = &self.slots[agent].cfg.broker;
        let b = &mut self.broker;
        let Some(registry) = b.registry.as_ref() else {
            let _ = reply.send(AgentResponse::err(
                ErrorCode::Refused,
                "no tool registry is configured on this host (`tools` in the config)",
            ));
            return;
        };
        let run = b.runs.open_run_mut(agent);
        let run_id = run.as_ref().map(|r| r.id.clone());
        let decision = decide(
            registry,
            policy,
            agent,
            run,
            &proposal,
            &mut b.approvals,
            now_ms,
        );
        let seq = run_id
            .as_deref()
            .and_then(|id| b.runs.show(id))
            .and_then(|r| r.last_seq());
        // Who approved the call a token allowed (the token was verified).
        let approved_by = match &decision {
            Decision::Allow { .. } => proposal
                .token
                .as_deref()
                .and_then(|t| broker::Token::decode(t).ok())
                .map(|t| t.claims.approver_uid),
            _ => None,
        };
        let (code, reason, request_id) = match &decision {
            Decision::Allow { .. } => ("allow", None, None),
            Decision::NeedsApproval { request_id } => {
                ("needs_approval", None, Some(request_id.clone()))
            }
            Decision::Deny { code, reason } => (code.as_str(), Some(reason.clone()), None),
        };
        if let Err(e) = self.audit.record(audit_event(
            "tool_decision",
            Some(agent),
            None,
            json!({"tool": proposal.tool, "args": proposal.args, "token": proposal.token.is_some(),
                   "decision": code, "reason": reason, "request_id": request_id,
                   "approved_by": approved_by, "run_id": run_id, "seq": seq, "pid": peer_pid}),
        )) {
            // Fail closed: nothing runs unaudited.
            let _ = reply.send(AgentResponse::err(
                ErrorCode::Failed,
                format!("audit log unwritable: {e}"),
            ));
            self.audit_failed(&e.to_string());
            return;
        }
        let rejected = decision.is_rejection();
        let ctx = json!({"run_id": run_id, "seq": seq});
        match decision {
            Decision::Allow {
                argv,
                timeout,
                output_cap,
            } => {
                let run = run_id.zip(seq);
                self.run_tool(agent, &proposal.tool, argv, timeout, output_cap, run, reply);
            }
            Decision::NeedsApproval { request_id } => {
                let _ = reply.send(AgentResponse::err_with(
                    ErrorCode::PendingApproval,
                    format!(
                        "tool {} needs an operator's approval: request {request_id} (`warden approve {request_id}`); wait with approval.wait, then propose again with the token",
                        proposal.tool
                    ),
                    json!({"decision": "needs_approval", "request_id": request_id,
                           "run_id": ctx["run_id"], "seq": ctx["seq"]}),
                ));
            }
            Decision::Deny { code, reason } => {
                let _ = reply.send(AgentResponse::err_with(
                    ErrorCode::Denied,
                    reason.clone(),
                    json!({"decision": code.as_str(), "reason": reason,
                           "run_id": ctx["run_id"], "seq": ctx["seq"]}),
                ));
                // A run past its limits is over: nothing more can be allowed in it.
                if code == DenyCode::LimitExceeded {
                    if let Some(id) = ctx["run_id"].as_str() {
                        let _ = self.end_run(id, StopReason::LimitExceeded, Some(reason));
                    }
                }
            }
        }
        self.report_decision(agent, rejected, now);
    }

    /// Forks an allowed tool in the agent's cgroup and hands it to a task.
    #[allow(clippy::too_many_arguments)]
    fn run_tool(
        &mut self,
        agent: &str,
        tool: &str,
        argv: Vec<String>,
        timeout: Duration,
        cap: u64,
        run: Option<(String, u32)>,
        reply: oneshot::Sender<AgentResponse>,
    ) {
        let Some(tx) = self.broker.done_tx.clone() else {
            self.tool_failed(agent, tool, run, "broker is not running", reply);
            return;
        };
        let s = &self.slots[agent];
        let started = match s.cgroup.as_ref() {
            None => Err("agent has no cgroup".to_string()),
            Some(cg) => {
                let mut env = vec![("WARDEN_TOOL".to_string(), tool.to_string())];
                if let Some((id, _)) = &run {
                    env.push(("WARDEN_RUN_ID".to_string(), id.clone()));
                }
                env.push((
                    crate::killswitch::credentials::ENV_DIR.to_string(),
                    self.cfg.credentials_dir.join(agent).display().to_string(),
                ));
                // The agent's network: its namespace when it has one of its own.
                let netns = match (&s.net, s.cfg.network) {
                    (Some(n), _) => n
                        .join()
                        .map_err(|e| format!("cannot join its network: {e}")),
                    (None, warden_core::config::NetworkMode::Host) => {
                        Ok(warden_core::sys::exec::NetNs::Host)
                    }
                    (None, _) => Err("its network namespace is gone".to_string()),
                };
                netns.and_then(|ns| {
                    warden_core::spawn::start_tool(&s.cfg, cg.as_ref(), &argv, &env, ns)
                        .map_err(|e| e.to_string())
                })
            }
        };
        let st = match started {
            Ok(st) => st,
            Err(e) => {
                self.tool_failed(agent, tool, run, &e, reply);
                return;
            }
        };
        // The tool's exit is awaited on its pidfd; without one it cannot be
        // watched, so it does not run.
        let exit =
            match warden_core::sys::pidfd_open(st.pid).and_then(warden_core::sys::async_readable) {
                Ok(fd) => fd,
                Err(e) => {
                    let _ = nix::sys::signal::kill(
                        Pid::from_raw(st.pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    super::reap_pid(st.pid, true);
                    self.tool_failed(agent, tool, run, &format!("cannot watch it: {e}"), reply);
                    return;
                }
            };
        let call = self.broker.next_call;
        self.broker.next_call += 1;
        tracing::info!(agent, tool, pid = st.pid, "tool started");
        let _ = self.audit.record(audit_event(
            "tool_start",
            Some(agent),
            None,
            json!({"tool": tool, "argv": argv, "pid": st.pid, "timeout_ms": timeout.as_millis() as u64,
                   "output_cap": cap, "run_id": run.as_ref().map(|r| &r.0), "seq": run.as_ref().map(|r| r.1)}),
        ));
        self.broker.running.insert(
            call,
            Running {
                agent: agent.to_string(),
                tool: tool.to_string(),
                pid: st.pid,
                run,
            },
        );
        let pid = st.pid;
        tokio::spawn(async move {
            let outcome = watch_tool(pid, exit, st.stdout, st.stderr, timeout, cap).await;
            let _ = tx.send(ToolDone {
                call,
                outcome,
                reply,
            });
        });
    }

    fn tool_failed(
        &mut self,
        agent: &str,
        tool: &str,
        run: Option<(String, u32)>,
        err: &str,
        reply: oneshot::Sender<AgentResponse>,
    ) {
        tracing::error!(agent, tool, "cannot start tool: {err}");
        let _ = self.audit.record(audit_event(
            "tool_result",
            Some(agent),
            None,
            json!({"tool": tool, "error": err, "run_id": run.as_ref().map(|r| &r.0),
                   "seq": run.as_ref().map(|r| r.1)}),
        ));
        if let Some((id, seq)) = run {
            let _ = self
                .broker
                .runs
                .record_result(&id, seq, broker::ExecResult::default());
        }
        let _ = reply.send(AgentResponse::err(
            ErrorCode::Failed,
            format!("tool {tool} was allowed but could not start: {err}"),
        ));
    }

    /// A tool is gone: record, audit, answer.
    pub(super) fn tool_done(&mut self, d: ToolDone) {
        let Some(r) = self.broker.running.remove(&d.call) else {
            return;
        };
        let o = d.outcome;
        if o.unreaped {
            self.broker.unreaped.push(r.pid);
        }
        let truncated = o.stdout.truncated() || o.stderr.truncated();
        if let Some((id, seq)) = &r.run {
            let _ = self.broker.runs.record_result(
                id,
                *seq,
                broker::ExecResult {
                    exit_code: o.exit_code,
                    result_bytes: o.stdout.total + o.stderr.total,
                    truncated,
                    duration: o.duration,
                },
            );
        }
        let data = json!({
            "tool": r.tool, "pid": r.pid, "exit_code": o.exit_code, "signal": o.signal,
            "timed_out": o.timed_out, "stdout_bytes": o.stdout.total, "stderr_bytes": o.stderr.total,
            "truncated": truncated, "duration_ms": o.duration.as_millis() as u64,
            "run_id": r.run.as_ref().map(|x| &x.0), "seq": r.run.as_ref().map(|x| x.1),
        });
        tracing::info!(agent = r.agent, tool = r.tool, "tool ended: {data}");
        if let Err(e) = self.audit.record(audit_event(
            "tool_result",
            Some(&r.agent),
            None,
            data.clone(),
        )) {
            self.audit_failed(&e.to_string());
        }
        let mut answer = data;
        answer["decision"] = json!("allow");
        answer["stdout"] = json!(String::from_utf8_lossy(&o.stdout.kept));
        answer["stderr"] = json!(String::from_utf8_lossy(&o.stderr.kept));
        let _ = d.reply.send(AgentResponse::ok(answer));
    }

    /// `run.start`.
    pub(super) fn run_start(&mut self, agent: &str, goal: &str) -> AgentResponse {
        if let Some(why) = self.broker_refusal(agent) {
            return AgentResponse::err(ErrorCode::Refused, why);
        }
        let policy = &self.slots[agent].cfg.broker;
        match self
            .broker
            .runs
            .start(agent, goal, policy, broker::now_ms())
        {
            Ok(id) => {
                let limits = self.broker.runs.show(&id).map(|r| r.limits);
                let _ = self.audit.record(audit_event(
                    "run_start",
                    Some(agent),
                    None,
                    json!({"run_id": id, "goal": goal, "limits": limits}),
                ));
                self.prune_runs();
                AgentResponse::ok(json!({"run_id": id, "limits": limits}))
            }
            Err(e) => AgentResponse::err(ErrorCode::Refused, e.to_string()),
        }
    }

    /// `run.end`: the agent's reason, or the last refusal's, or `completed`.
    pub(super) fn run_end(
        &mut self,
        agent: &str,
        run_id: &str,
        reason: Option<&str>,
    ) -> AgentResponse {
        let Some(run) = self.broker.runs.show(run_id).filter(|r| r.agent == agent) else {
            return AgentResponse::err(
                ErrorCode::Refused,
                format!("agent {agent} has no run {run_id:?}"),
            );
        };
        let reason = match reason {
            Some(text) => match serde_json::from_value::<StopReason>(json!(text)) {
                Ok(r) => r,
                Err(_) => {
                    return AgentResponse::err(
                        ErrorCode::BadRequest,
                        format!("bad request: unknown reason {text:?}: use completed, limit_exceeded, approval_required, policy_denied or error"),
                    )
                }
            },
            None => run
                .calls
                .last()
                .map(|c| match c.decision {
                    "allow" => StopReason::Completed,
                    "needs_approval" | "approval_required" => StopReason::ApprovalRequired,
                    "limit_exceeded" => StopReason::LimitExceeded,
                    "store_failed" => StopReason::Error,
                    _ => StopReason::PolicyDenied,
                })
                .unwrap_or(StopReason::Completed),
        };
        match self.end_run(run_id, reason, None) {
            Ok(()) => {
                let r = self.broker.runs.show(run_id);
                AgentResponse::ok(json!({"run_id": run_id, "reason": reason,
                    "steps": r.map(|r| r.steps), "tool_calls": r.map(|r| r.tool_calls)}))
            }
            Err(e) => AgentResponse::err(ErrorCode::Refused, e),
        }
    }

    fn end_run(
        &mut self,
        run_id: &str,
        reason: StopReason,
        detail: Option<String>,
    ) -> Result<(), String> {
        self.broker
            .runs
            .end(run_id, reason, detail.clone(), broker::now_ms())
            .map_err(|e| e.to_string())?;
        let r = self.broker.runs.show(run_id);
        let _ = self.audit.record(audit_event(
            "run_end",
            r.map(|r| r.agent.as_str()),
            None,
            json!({"run_id": run_id, "reason": reason, "detail": detail,
                   "steps": r.map(|r| r.steps), "tool_calls": r.map(|r| r.tool_calls)}),
        ));
        Ok(())
    }

    /// Keeps memory bounded: the oldest ended runs go first.
    fn prune_runs(&mut self) {
        if self.broker.runs.len() <= RUNS_KEPT {
            return;
        }
        let all = self.broker.runs.list(None, None);
        let old: Vec<String> = all
            .iter()
            .filter(|r| r.state != broker::RunState::Open)
            .take(all.len() - RUNS_KEPT)
            .map(|r| r.id.clone())
            .collect();
        self.broker.runs.forget(&old);
    }

    /// `approval.wait`: answered now if decided, else parked.
    pub(super) fn approval_wait(
        &mut self,
        agent: &str,
        request_id: &str,
        timeout_ms: Option<u64>,
        reply: oneshot::Sender<AgentResponse>,
        now: Instant,
    ) {
        let Some(r) = self
            .broker
            .approvals
            .get(request_id)
            .filter(|r| r.agent == agent)
        else {
            let _ = reply.send(AgentResponse::err(
                ErrorCode::Refused,
                format!("agent {agent} has no approval request {request_id:?}"),
            ));
            return;
        };
        if let Some(a) = wait_answer(r) {
            let _ = reply.send(a);
            return;
        }
        let wait = timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(WAIT_DEFAULT)
            .min(WAIT_MAX);
        self.broker.waiters.push(Waiter {
            agent: agent.to_string(),
            request_id: request_id.to_string(),
            deadline: now + wait,
            reply,
        });
    }

    /// Answers the waits whose request was decided or whose time is up;
    /// expires requests nobody decided in time.
    pub(super) fn broker_tick(&mut self, now: Instant, expire: bool) {
        if expire {
            match self.broker.approvals.expire(broker::now_ms()) {
                Ok(ids) => {
                    for id in ids {
                        let agent = self.broker.approvals.get(&id).map(|r| r.agent.clone());
                        let _ = self.audit.record(audit_event(
                            "approval_expired",
                            agent.as_deref(),
                            None,
                            json!({"request_id": id}),
                        ));
                    }
                }
                Err(e) => tracing::error!("cannot journal expired approval requests: {e}"),
            }
        }
        if self.broker.waiters.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.broker.waiters);
        for w in waiters {
            let decided = self
                .broker
                .approvals
                .get(&w.request_id)
                .and_then(wait_answer);
            if let Some(a) = decided {
                let _ = w.reply.send(a);
            } else if now >= w.deadline || w.reply.is_closed() {
                let _ = w.reply.send(AgentResponse::ok(
                    json!({"request_id": w.request_id, "state": "pending"}),
                ));
            } else {
                self.broker.waiters.push(w);
            }
        }
    }

    /// The agent went down: its open run ends, its waits are answered.
    pub(super) fn broker_agent_down(&mut self, agent: &str) {
        let open = self.broker.runs.open_run_mut(agent).map(|r| r.id.clone());
        if let Some(id) = open {
            let _ = self.end_run(&id, StopReason::Error, Some("the agent stopped".into()));
        }
        let (mine, rest): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.broker.waiters)
            .into_iter()
            .partition(|w| w.agent == agent);
        self.broker.waiters = rest;
        for w in mine {
            let _ = w
                .reply
                .send(AgentResponse::err(ErrorCode::Failed, "the agent stopped"));
        }
    }

    pub(super) fn approvals_list(&self) -> Response {
        Response::ok(json!({"pending": self.broker.approvals.pending(broker::now_ms())}))
    }

    pub(super) fn approve(&mut self, id: &str, ttl: Option<String>, uid: u32) -> Response {
        let ttl = match ttl.as_deref().map(humantime::parse_duration).transpose() {
            Ok(t) => t.unwrap_or(APPROVAL_TTL),
            Err(e) => return Response::err(ErrorKind::BadRequest, format!("ttl: {e}")),
        };
        let now_ms = broker::now_ms();
        match self
            .broker
            .approvals
            .approve(id, ttl, uid, &self.key, now_ms)
        {
            Ok(token) => {
                let c = &token.claims;
                let _ = self.audit.record(audit_event(
                    "approval_granted",
                    Some(&c.agent),
                    Some(uid),
                    json!({"request_id": id, "tool": c.tool, "scope": c.scope,
                           "args_sha256": c.args_sha256, "ttl_ms": ttl.as_millis() as u64,
                           "token_expires_at_ms": c.expires_at_ms}),
                ));
                self.broker_tick(Instant::now(), false);
                Response::ok(json!({"request_id": id, "agent": c.agent, "tool": c.tool,
                    "token": token.encode(), "token_expires_at_ms": c.expires_at_ms}))
            }
            Err(e) => Response::err(approval_error_kind(&e), e.to_string()),
        }
    }

    pub(super) fn reject(&mut self, id: &str, reason: &str, uid: u32) -> Response {
        let agent = self.broker.approvals.get(id).map(|r| r.agent.clone());
        match self
            .broker
            .approvals
            .reject(id, reason, uid, broker::now_ms())
        {
            Ok(()) => {
                let _ = self.audit.record(audit_event(
                    "approval_rejected",
                    agent.as_deref(),
                    Some(uid),
                    json!({"request_id": id, "reason": reason}),
                ));
                self.broker_tick(Instant::now(), false);
                Response::ok(json!({"request_id": id, "rejected": true}))
            }
            Err(e) => Response::err(approval_error_kind(&e), e.to_string()),
        }
    }

    pub(super) fn runs_list(&self, agent: Option<String>, reason: Option<String>) -> Response {
        let reason = match reason.as_deref() {
            None => None,
            Some(t) => match serde_json::from_value::<StopReason>(json!(t)) {
                Ok(r) => Some(r),
                Err(_) => return Response::err(
                    ErrorKind::BadRequest,
                    format!("unknown reason {t:?}: use completed, limit_exceeded, approval_required, policy_denied or error"),
                ),
            },
        };
        if let Some(a) = &agent {
            if !self.slots.contains_key(a) {
                return Response::err(ErrorKind::NotFound, format!("no agent named {a:?}"));
            }
        }
        Response::ok(json!({"runs": self.broker.runs.list(agent.as_deref(), reason)}))
    }

    pub(super) fn run_show(&self, id: &str) -> Response {
        match self.broker.runs.show(id) {
            Some(r) => Response::ok(json!({"run": r})),
            None => Response::err(
                ErrorKind::NotFound,
                format!("no run {id:?} (runs are kept in memory since the daemon started; the audit log has every call)"),
            ),
        }
    }

    /// `warden reload`: reads the tool registry again. A registry that does
    /// not load, or lacks a tool an agent is configured with, is refused and
    /// the one in use stays.
    pub(super) fn reload(&mut self, uid: Option<u32>) -> Response {
        let Some(path) = self.broker.registry_path.clone() else {
            return Response::err(
                ErrorKind::Refused,
                "no tool registry is configured (`tools`); nothing to reload",
            );
        };
        match broker::load_registry(&self.cfg, &path) {
            Ok((reg, sha)) => {
                let old = self.broker.registry.take();
                let names = |r: Option<&Registry>| -> Vec<String> {
                    r.map(|r| r.names().into_iter().map(str::to_string).collect())
                        .unwrap_or_default()
                };
                let (before, after) = (names(old.as_ref()), names(Some(&reg)));
                let added: Vec<&String> = after.iter().filter(|n| !before.contains(n)).collect();
                let removed: Vec<&String> = before.iter().filter(|n| !after.contains(n)).collect();
                let data = json!({"path": path, "old_sha256": self.broker.registry_sha256,
                    "sha256": sha, "tools": after, "added": added, "removed": removed});
                let _ = self
                    .audit
                    .record(audit_event("tools_reloaded", None, uid, data.clone()));
                tracing::info!("tool registry reloaded from {}", path.display());
                self.broker.registry = Some(reg);
                self.broker.registry_sha256 = Some(sha);
                Response::ok(data)
            }
            Err(e) => {
                let _ = self.audit.record(audit_event(
                    "tools_reload_refused",
                    None,
                    uid,
                    json!({"path": path, "error": e}),
                ));
                Response::err(
                    ErrorKind::BadRequest,
                    format!("reload refused, the registry in use stays: {e}"),
                )
            }
        }
    }
}

fn approval_error_kind(e: &broker::ApprovalError) -> ErrorKind {
    match e {
        broker::ApprovalError::NoSuchRequest(_) => ErrorKind::NotFound,
        broker::ApprovalError::Io { .. } | broker::ApprovalError::Corrupt { .. } => {
            ErrorKind::Failed
        }
        broker::ApprovalError::ZeroTtl | broker::ApprovalError::NoReason => ErrorKind::BadRequest,
        _ => ErrorKind::Refused,
    }
}

/// Reads a pipe to its end into `into`, keeping the first `cap` bytes.
async fn read_capped(fd: OwnedFd, cap: u64, into: Arc<Mutex<Captured>>) {
    use tokio::io::AsyncReadExt;
    let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let Ok(mut c) = into.lock() else { return };
                c.total += n as u64;
                let room = (cap as usize).saturating_sub(c.kept.len());
                let take = room.min(n);
                c.kept.extend_from_slice(&buf[..take]);
            }
        }
    }
}

/// Waits for the tool (killing it at its timeout), then collects its output.
async fn watch_tool(
    pid: i32,
    exit: tokio::io::unix::AsyncFd<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
    timeout: Duration,
    cap: u64,
) -> Outcome {
    use nix::sys::signal::{kill, killpg, Signal};
    let t0 = Instant::now();
    let out = Arc::new(Mutex::new(Captured::default()));
    let err = Arc::new(Mutex::new(Captured::default()));
    let readers = [
        tokio::spawn(read_capped(stdout, cap, out.clone())),
        tokio::spawn(read_capped(stderr, cap, err.clone())),
    ];
    let mut o = Outcome::default();
    let exited = if tokio::time::timeout(timeout, exit.readable())
        .await
        .is_err()
    {
        o.timed_out = true;
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        tokio::time::timeout(KILL_WAIT, exit.readable())
            .await
            .is_ok()
    } else {
        true
    };
    o.duration = t0.elapsed();
    // What the tool left in its process group goes with it.
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    match exited.then(|| super::reap_pid(pid, true)).flatten() {
        Some(warden_core::supervisor::ExitStatus::Code(c)) => o.exit_code = Some(c),
        Some(warden_core::supervisor::ExitStatus::Signal(s)) => o.signal = Some(s),
        None => o.unreaped = true,
    }
    for r in readers {
        let abort = r.abort_handle();
        if tokio::time::timeout(DRAIN_GRACE, r).await.is_err() {
            abort.abort();
        }
    }
    o.stdout = std::mem::take(&mut *out.lock().unwrap_or_else(|p| p.into_inner()));
    o.stderr = std::mem::take(&mut *err.lock().unwrap_or_else(|p| p.into_inner()));
    o
}
