//! Messages from agents' own sockets; the agent's identity is the socket's.

use std::time::Instant;

use serde_json::json;

use super::*;
use crate::agent_socket::AgentCommand;
use warden_proto::agent::{AgentRequest, AgentResponse, ErrorCode};

impl Daemon {
    /// A message from an agent's own socket; its identity is the socket's.
    pub(super) fn agent_command(&mut self, c: AgentCommand, now: Instant) {
        let name = c.agent.clone();
        let Some(s) = self.slots.get_mut(&name) else {
            let _ = c
                .reply
                .send(AgentResponse::err(ErrorCode::Refused, "unknown agent"));
            return;
        };
        let resp = match &c.request {
            AgentRequest::Heartbeat => match s.heartbeat.as_mut() {
                Some(h) => {
                    let token = h.beat(warden_core::clock::now_ms());
                    AgentResponse::ok(json!({"token": token}))
                }
                None => AgentResponse::ok(
                    json!({"token": null, "note": "no heartbeat configured for this agent"}),
                ),
            },
            AgentRequest::Task { description } => {
                let breach = s.watch.task(now);
                let count = s
                    .watch
                    .readings
                    .get("tasks")
                    .map(|r| r.value)
                    .unwrap_or(0.0);
                let _ = self.audit.record(audit_event(
                    "agent_task",
                    Some(&name),
                    None,
                    json!({"description": description, "pid": c.peer_pid, "tasks_24h": count}),
                ));
                let _ = c.reply.send(AgentResponse::ok(json!({"tasks_24h": count})));
                if let Some(b) = breach {
                    self.breach(b, now);
                }
                return;
            }
            AgentRequest::Whoami => AgentResponse::err(
                ErrorCode::BadRequest,
                "whoami is answered by the agent socket itself",
            ),
            AgentRequest::Propose { tool, args, token } => {
                let p = crate::broker::Proposal {
                    tool: tool.clone(),
                    args: args.clone(),
                    token: token.clone(),
                };
                self.propose(&name, p, c.peer_pid, c.reply, now);
                return;
            }
            AgentRequest::RunStart { goal } => self.run_start(&name, goal),
            AgentRequest::RunEnd { run_id, reason } => {
                self.run_end(&name, run_id, reason.as_deref())
            }
            AgentRequest::ApprovalWait {
                request_id,
                timeout_ms,
            } => {
                self.approval_wait(&name, request_id, *timeout_ms, c.reply, now);
                return;
            }
        };
        let _ = c.reply.send(resp);
    }
}
