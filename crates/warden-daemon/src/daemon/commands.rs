//! The control socket's verbs: one match arm per verb in [`Daemon::answer`],
//! each verb's handler small. Every command that changes something is
//! audited with the caller's uid before it runs; reads are not.

use std::path::Path;
use std::time::Instant;

use serde_json::json;

use super::*;
use crate::control_socket::Command;
use warden_core::audit::Safety;
use warden_core::safemode::{self};
use warden_core::supervisor::{Event, State};
use warden_proto::control::{ErrorKind, Request, Response};

pub(super) fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

impl Daemon {
    pub(super) fn command(&mut self, c: Command, now: Instant) {
        let Some(c) = self.fleet_command(c, now) else {
            return;
        };
        let req_name = c.request.name();
        let mut data = serde_json::to_value(&c.request).unwrap_or_default();
        // A token being checked is a secret: never into the audit log.
        if let Request::CredVerify { .. } = &c.request {
            data["token"] = json!("<redacted>");
        }
        // A config text to plan is recorded by its hash, not its contents.
        if let Request::Reload {
            config_text: Some(t),
            ..
        } = &c.request
        {
            use sha2::Digest;
            data["config_text"] = json!(format!("sha256:{}", hex::encode(sha2::Sha256::digest(t))));
        }
        // Requests from `warden web` name the token they act for: the
        // daemon, not the web, decides what that token may do.
        let principal = match self.authorize_web(&c) {
            Ok(p) => p,
            Err(refusal) => {
                let _ = c.reply.send(refusal);
                return;
            }
        };
        let mut audited = json!({"request": data, "pid": c.pid});
        if let Some(p) = &principal {
            audited["on_behalf_of"] = json!(p);
        }
        // Reads change nothing and are not audited: `logs -f` alone asks
        // four times a second, and a dashboard more, which would bury the
        // mutations. Who may read is still checked above.
        if c.request.is_read() {
            return self.answer_read(c, now);
        }
        let event = audit_event("command", None, Some(c.uid), audited);
        if let Err(e) = self.audit.record(event) {
            // Fail closed: nothing that changes state runs unaudited.
            self.audit_failed(&e.to_string());
            let _ = c.reply.send(Response::err(
                ErrorKind::Failed,
                format!("audit log unwritable, refusing {req_name}: {e}"),
            ));
            return;
        }
        let resp = self.answer(c.request, c.uid, now);
        tracing::debug!(cmd = req_name, uid = c.uid, ok = resp.ok, "command");
        let _ = c.reply.send(resp);
    }

    /// A read: answered at once; the audit-log reads (tail, show, verify,
    /// case packs) on a blocking thread, off the loop.
    fn answer_read(&mut self, c: Command, now: Instant) {
        if crate::web::reads::is_read(&c.request) {
            return self.answer_read_off_loop(c.request, c.reply);
        }
        let req_name = c.request.name();
        let resp = self.answer(c.request, c.uid, now);
        tracing::debug!(cmd = req_name, uid = c.uid, ok = resp.ok, "command");
        let _ = c.reply.send(resp);
    }

    pub(super) fn answer(&mut self, req: Request, uid: u32, now: Instant) -> Response {
        match req {
            Request::Ping => Response::ok(json!({"pong": true})),
            Request::Status => Response::ok(self.status_json()),
            Request::Agents => Response::ok(json!(self.agents_json())),
            Request::Logs { agent, offset } => self.logs(&agent, offset),
            Request::Start { agent } | Request::Stop { agent } | Request::Restart { agent }
                if !self.slots.contains_key(&agent) =>
            {
                Response::err(ErrorKind::NotFound, format!("no agent named {agent:?}"))
            }
            Request::Start { agent } => {
                if let Err(r) = self.may_start() {
                    return r;
                }
                self.dispatch(&agent, Event::Start);
                self.agent_reply(&agent)
            }
            Request::Restart { agent } => {
                if let Err(r) = self.may_start() {
                    return r;
                }
                self.dispatch(&agent, Event::Restart);
                self.agent_reply(&agent)
            }
            Request::Stop { agent } => {
                self.dispatch(&agent, Event::Stop);
                self.agent_reply(&agent)
            }
            Request::Arm {
                agent,
                all,
                levels,
                reason,
                ttl,
            } => self.arm(agent, all, levels, &reason, ttl, uid),
            Request::Execute { id } => self.execute(&id, uid),
            Request::Disarm { id } => self.disarm(&id, uid),
            Request::Authorizations => {
                Response::ok(json!({"authorizations": self.twophase.list()}))
            }
            Request::CredIssue {
                agent,
                kind,
                name,
                revoke_command,
            } => self.cred_issue(&agent, &kind, &name, revoke_command, uid),
            Request::CredVerify { token } => self.cred_verify(&token),
            Request::CredList => Response::ok(json!({"credentials": self.creds.list()})),
            Request::CredRevoke { id, agent } => self.cred_revoke(id, agent, uid),
            Request::Checkin => {
                let c = self.oversight.checkin(uid, warden_core::clock::now_ms());
                Response::ok(json!({"checked_in": c, "next_due_ms": self.oversight.due_ms()}))
            }
            Request::Approvals => self.approvals_list(),
            Request::Approve { id, ttl } => self.approve(&id, ttl, uid),
            Request::Reject { id, reason } => self.reject(&id, &reason, uid),
            Request::Runs { agent, reason } => self.runs_list(agent, reason),
            Request::RunShow { id } => self.run_show(&id),
            Request::Reload {
                dry_run,
                config_text,
            } => self.reload_config(Some(uid), "cli", dry_run, config_text),
            Request::Halt { reason } => {
                if reason.trim().is_empty() {
                    return Response::err(ErrorKind::BadRequest, "halt needs a reason");
                }
                let reason = warden_proto::control::truncate_reason(&reason);
                self.hard_halt("cli", &reason, Some(uid), now);
                Response::ok(json!({"halt": self.last_halt}))
            }
            Request::Resume {
                reason,
                authorization,
            } => {
                if let Err(r) = self.fleet_may_resume(now) {
                    return r;
                }
                self.resume(&reason, authorization, uid)
            }
            Request::FleetHello { node } => self.fleet_hello(node, now),
            // Answered outside the audit-then-act path (Daemon::fleet_command).
            Request::FleetBeat | Request::FleetEvent { .. } | Request::FleetHalt { .. } => {
                Response::err(ErrorKind::Failed, "fleet verb out of place")
            }
            // `warden web` (daemon/tokens.rs, daemon/web_reads.rs).
            Request::Subscribe { .. } => self.subscribe(),
            Request::Metrics => self.metrics_json(),
            Request::AuditTail { .. }
            | Request::AuditShow { .. }
            | Request::AuditVerify
            | Request::Casepack { .. } => {
                Response::err(ErrorKind::Failed, "audit reads are answered off the loop")
            }
            Request::TokenCreate {
                name,
                role,
                expires,
            } => self.token_create(&name, role, expires.as_deref(), uid),
            Request::TokenList => self.token_list(),
            Request::TokenRevoke { name } => self.token_revoke(&name, uid),
        }
    }

    pub(super) fn may_start(&self) -> Result<(), Response> {
        match &self.mode {
            Mode::Safe(l) => Err(Response::err(
                ErrorKind::Refused,
                format!(
                    "SAFE MODE ({}): run `warden resume --reason ...` first",
                    l.reason
                ),
            )),
            Mode::ShuttingDown => Err(Response::err(ErrorKind::Refused, "daemon is shutting down")),
            Mode::Running if self.stop.present() => Err(Response::err(
                ErrorKind::Refused,
                format!("stop file {} is present", self.cfg.stop_file.display()),
            )),
            Mode::Running => Ok(()),
        }
    }

    pub(super) fn resume(
        &mut self,
        reason: &str,
        authorization: Option<serde_json::Value>,
        uid: u32,
    ) -> Response {
        if reason.trim().is_empty() {
            return Response::err(ErrorKind::BadRequest, "resume needs a reason");
        }
        if self.kernel.is_none() {
            return Response::err(
                ErrorKind::Refused,
                "the safety kernel is not running: agents do not run without it",
            );
        }
        if self.stop.present() {
            return Response::err(
                ErrorKind::Refused,
                format!(
                    "stop file {} is present: remove it before resuming",
                    self.cfg.stop_file.display()
                ),
            );
        }
        let Mode::Safe(latch) = self.mode.clone() else {
            return Response::err(ErrorKind::Refused, "not in SAFE MODE: nothing to resume");
        };
        if self.pending_survivors || self.cg.agents().populated().unwrap_or(true) {
            return Response::err(
                ErrorKind::Refused,
                "agent cgroups are not empty yet: the halt is still being retried",
            );
        }
        let mut authorized_by = None;
        if let Some(key_path) = &self.cfg.resume_key {
            let checked = (|| {
                let a = warden_core::authz::parse(
                    authorization
                        .as_ref()
                        .ok_or(warden_core::authz::AuthzError::Missing)?,
                )?;
                let key = warden_core::authz::load_public(key_path)?;
                warden_core::authz::check(
                    &a,
                    &key,
                    &warden_core::authz::host_id(),
                    warden_core::clock::now_ms(),
                )?;
                warden_core::authz::consume(
                    &self.cfg.state_dir.join("resume-nonces"),
                    &a.statement.nonce,
                )?;
                Ok::<_, warden_core::authz::AuthzError>(a)
            })();
            match checked {
                Ok(a) => authorized_by = Some(a.statement),
                Err(e) => {
                    let _ = self.audit.record(audit_event(
                        "resume_refused",
                        None,
                        Some(uid),
                        json!({"reason": reason, "why": e.to_string()}),
                    ));
                    return Response::err(ErrorKind::Refused, format!("resume refused: {e}"));
                }
            }
        }
        let r = self.audit.record_safety(
            audit_event(
                "safe_mode_left",
                None,
                Some(uid),
                json!({"reason": reason, "latch": latch, "authorization": authorized_by}),
            ),
            Safety {
                event: "resume".into(),
                reason: reason.into(),
                autonomy_state: "resuming".into(),
                governance_state: "human_authorized".into(),
                human_notified: true,
            },
        );
        if let Err(e) = r {
            return Response::err(
                ErrorKind::Failed,
                format!("cannot audit the resume, staying halted: {e}"),
            );
        }
        if let Err(e) = safemode::clear(&self.cfg.latch_path()) {
            return Response::err(ErrorKind::Failed, format!("cannot clear the latch: {e}"));
        }
        // The kernel leaves its halted state only now that the resume is on
        // record; until it says so, it would kill any agent that starts.
        if let Some(Err(why)) = self.kernel.as_mut().map(|k| k.resume()) {
            let _ = safemode::set(&self.cfg.latch_path(), &latch);
            let _ = self.audit.record(audit_event(
                "resume_refused",
                None,
                Some(uid),
                json!({"reason": reason, "why": format!("safety kernel: {why}")}),
            ));
            return Response::err(
                ErrorKind::Refused,
                format!("the safety kernel refused the resume ({why}); still in SAFE MODE"),
            );
        }
        self.change_mode(ModeEvent::Resumed);
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for n in names {
            let autostart = self.slots[&n].cfg.autostart;
            self.dispatch(&n, Event::Resume { autostart });
        }
        self.notify_status();
        Response::ok(json!({"resumed": true, "by_uid": uid, "reason": reason, "cleared": latch}))
    }

    pub(super) fn agent_reply(&self, agent: &str) -> Response {
        let a = self.agent_json(agent, &self.slots[agent]);
        if let State::Failed { reason } = &self.slots[agent].machine.state {
            return Response::err(ErrorKind::Failed, format!("agent {agent} failed: {reason}"));
        }
        Response::ok(a)
    }

    pub(super) fn logs(&self, agent: &str, offset: Option<u64>) -> Response {
        let Some(s) = self.slots.get(agent) else {
            return Response::err(ErrorKind::NotFound, format!("no agent named {agent:?}"));
        };
        match offset {
            None => Response::ok(
                json!({"data": s.log.tail_text(), "next_offset": file_len(&s.log.path)}),
            ),
            Some(off) => {
                use std::io::{Read, Seek, SeekFrom};
                let mut data = Vec::new();
                let mut next = off;
                if let Ok(mut f) = std::fs::File::open(&s.log.path) {
                    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                    // Past the end: the file was rotated since; go on
                    // from the start of the new one.
                    let start = if off > len { 0 } else { off };
                    if f.seek(SeekFrom::Start(start)).is_ok() {
                        let _ = (&mut f).take(64 * 1024).read_to_end(&mut data);
                    }
                    next = start + data.len() as u64;
                }
                Response::ok(json!({"data": String::from_utf8_lossy(&data), "next_offset": next}))
            }
        }
    }
}
