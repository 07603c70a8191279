//! Agents: spawn, reap, restart. Every lifecycle decision is the agent's
//! state machine's ([`supervisor::Agent::handle`]); this room only carries
//! out the actions it returns.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::killswitch::heartbeat::{HeartbeatConfig, HeartbeatWatch};
use crate::monitor::Breach;
use warden_core::cgroup::Limits;
use warden_core::config::{AgentConfig, Config, Unenforced};
use warden_core::halt::{self, Member};
use warden_core::supervisor::{self, Action, Event, ExitStatus, State};

pub(super) fn limits_of(a: &AgentConfig) -> Limits {
    Limits {
        memory_max: a.memory_max.map(|b| b.0),
        pids_max: a.pids_max,
        cpu_max: a.cpu_max,
    }
}

pub(super) fn policy_of(cfg: &Config, a: &AgentConfig) -> supervisor::Policy {
    supervisor::Policy {
        restart: a.restart,
        backoff: cfg.restart_backoff.0,
        backoff_max: cfg.restart_backoff_max.0,
        crash_exits: cfg.crash_loop.exits,
        crash_window: cfg.crash_loop.window.0,
        grace: cfg.grace.0,
    }
}

/// Reaps our child `pid` if it has exited. With `wait`, waits up to a second
/// (after a kill the zombie appears within microseconds).
pub(super) fn reap_pid(pid: i32, wait: bool) -> Option<ExitStatus> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::Pid;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => return Some(ExitStatus::Code(c)),
            Ok(WaitStatus::Signaled(_, s, _)) => return Some(ExitStatus::Signal(s as i32)),
            Ok(WaitStatus::StillAlive) if wait && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(WaitStatus::StillAlive) => return None,
            Ok(_) => return None,
            // ECHILD: already reaped.
            Err(_) => return None,
        }
    }
}

impl Daemon {
    /// Feeds an event to one agent's state machine and carries out its actions.
    pub(super) fn dispatch(&mut self, name: &str, event: Event) {
        let now = Instant::now();
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        let before = slot.machine.state.name();
        let actions = slot.machine.handle(event, now);
        slot.wake = None;
        for a in actions {
            match a {
                Action::Spawn => self.spawn(name),
                Action::Term => {
                    let slot = &self.slots[name];
                    if let Some(c) = &slot.cgroup {
                        let n = halt::term(c.as_ref(), slot.machine.state.pid());
                        slot.log.note(&format!("SIGTERM sent to {n} processes"));
                    }
                }
                Action::KillLadder => self.kill_one(name, "orderly", "grace period over"),
                Action::ReapLeftovers => self.reap_leftovers(name),
                Action::WakeAt(t) => {
                    if let Some(s) = self.slots.get_mut(name) {
                        s.wake = Some(t);
                    }
                }
                Action::Note(n) => {
                    let _ = self.audit.record(audit_event(
                        "agent_note",
                        Some(name),
                        None,
                        json!({"note": n}),
                    ));
                    if let Some(s) = self.slots.get(name) {
                        s.log.note(&n);
                    }
                }
            }
        }
        let after = self.slots[name].machine.state.name();
        if let State::Failed { reason } = &self.slots[name].machine.state {
            if before != "failed"
                && reason.starts_with("crash loop")
                && self.cfg.crash_loop_action == warden_core::config::CrashLoopAction::Halt
                && self.slots[name].watch.t.on("crash_loop")
            {
                let b = Breach {
                    monitor: "crash_loop".into(),
                    agent: Some(name.to_string()),
                    value: reason.clone(),
                    threshold: format!(
                        "{} exits within {}",
                        self.cfg.crash_loop.exits, self.cfg.crash_loop.window
                    ),
                };
                self.breach(b, now);
                return;
            }
        }
        if before != after {
            tracing::info!(agent = name, "{before} -> {after}");
            self.notify_status();
        }
    }

    pub(super) fn spawn(&mut self, name: &str) {
        let refuse = match &self.mode {
            Mode::Safe(l) => Some(format!("SAFE MODE ({})", l.reason)),
            Mode::ShuttingDown => Some("daemon is shutting down".into()),
            Mode::Running if self.stop.present() => Some("stop file present".into()),
            Mode::Running if self.kernel.is_none() => Some("no safety kernel".into()),
            Mode::Running => None,
        };
        if let Some(why) = refuse {
            tracing::warn!(agent = name, "not started: {why}");
            self.dispatch(name, Event::Halted);
            return;
        }
        let result = self.try_spawn(name);
        if let Ok((pid, _, _)) = &result {
            self.dispatch(name, Event::Spawned { pid: *pid });
        }
        let s = self.slots.get_mut(name).expect("slot");
        match result {
            Ok((pid, out, err)) => {
                s.watch.reset();
                s.limit_hits = (0, 0);
                s.last_cpu = None;
                s.cpu_counter = None;
                if let (Some(l), Some(tx)) = (s.api_listener.take(), self.agent_tx.clone()) {
                    match tokio::net::UnixListener::from_std(l) {
                        Ok(l) => {
                            let limits = crate::agent_socket::Limits {
                                rate_per_sec: s.cfg.api_rate,
                                burst: s.cfg.api_burst,
                                ..Default::default()
                            };
                            s.api_task = Some(tokio::spawn(crate::agent_socket::serve_with(
                                l,
                                name.to_string(),
                                s.uid,
                                limits,
                                s.api_counters.clone(),
                                tx,
                            )))
                        }
                        Err(e) => tracing::error!(agent = name, "cannot serve agent socket: {e}"),
                    }
                }
                s.heartbeat = s.cfg.heartbeat.and_then(|h| {
                    HeartbeatConfig::new(h.0, s.cfg.missed.unwrap_or(3))
                        .ok()
                        .map(|c| {
                            HeartbeatWatch::new(
                                name,
                                c,
                                self.key.clone(),
                                warden_core::clock::now_ms(),
                            )
                        })
                });
                s.log.note(&format!("started pid {pid}"));
                tokio::spawn(s.log.clone().drain(out));
                tokio::spawn(s.log.clone().drain(err));
                let data = json!({"pid": pid, "cgroup": s.cgroup.as_ref().map(|c| c.path().to_string()),
                                  "restarts": s.machine.restarts, "unenforced_limits": s.unenforced,
                                  "command": s.cfg.command.get_ref(), "user": s.cfg.user.get_ref(),
                                  "network": warden_core::netns::status(&self.cfg, name, s.net.as_ref())});
                let kind = if s.machine.restarts > 0 {
                    "agent_restart"
                } else {
                    "agent_start"
                };
                if let Err(e) = self.audit.record(audit_event(kind, Some(name), None, data)) {
                    self.audit_failed(&e.to_string());
                }
            }
            Err(reason) => {
                tracing::error!(agent = name, "cannot start: {reason}");
                s.log.note(&format!("cannot start: {reason}"));
                if let Some(c) = s.cgroup.take() {
                    let _ = c.remove();
                }
                self.dispatch(name, Event::SpawnFailed { reason });
            }
        }
    }

    pub(super) fn try_spawn(&mut self, name: &str) -> Result<(i32, OwnedFd, OwnedFd), String> {
        let policy = self.cfg.unenforced_limits;
        let s = self.slots.get_mut(name).expect("slot");
        let limits = limits_of(&s.cfg);
        let missing = self.cg.unenforceable(&limits);
        if !missing.is_empty() {
            match s.cfg.unenforced(policy) {
                Unenforced::Refuse => {
                    return Err(format!(
                        "this host cannot enforce {} (set unenforced_limits = \"warn\" to run without them)",
                        missing.join(", ")
                    ))
                }
                Unenforced::Warn => {
                    tracing::warn!(agent = name, "running without {}: the host cannot enforce them", missing.join(", "));
                }
            }
        }
        s.unenforced = missing;
        // A cgroup left from the last run of this agent must be empty first.
        let existing = self.cg.agent(name);
        if existing.populated().unwrap_or(false) {
            halt::clear(existing.as_ref(), self.cfg.empty_deadline.0).map_err(|e| e.to_string())?;
        }
        // A fresh namespace per run (the last run's link goes first), made
        // before the cgroup so that a failure leaves neither behind.
        s.net = None;
        let net = warden_core::netns::AgentNet::for_agent(&self.cfg, name)
            .map_err(|e| format!("cannot set up its network: {e}"))?;
        let cg = self
            .cg
            .create_agent(name, &limits)
            .map_err(|e| e.to_string())?;
        // The agent's own socket exists before its first instruction runs.
        let id = warden_core::spawn::resolve_identity(&s.cfg).map_err(|e| e.to_string())?;
        let listener = crate::agent_socket::bind(&self.cfg.agent_socket_dir, name, id.uid, id.gid)
            .map_err(|e| {
                format!(
                    "cannot bind its socket in {}: {e}",
                    self.cfg.agent_socket_dir.display()
                )
            })?;
        let sock = crate::agent_socket::socket_path(&self.cfg.agent_socket_dir, name);
        let cred_dir = self.cfg.credentials_dir.join(name);
        let extra = [
            ("WARDEN_SOCKET".to_string(), sock.display().to_string()),
            (
                crate::killswitch::credentials::ENV_DIR.to_string(),
                cred_dir.display().to_string(),
            ),
        ];
        kills::prepare_cred_dir(&cred_dir, id.uid, id.gid)
            .map_err(|e| format!("cannot prepare {}: {e}", cred_dir.display()))?;
        s.api_listener = Some(listener);
        s.uid = id.uid;
        let netns = match &net {
            Some(n) => n
                .join()
                .map_err(|e| format!("cannot share its network namespace: {e}"))?,
            None => warden_core::sys::exec::NetNs::Host,
        };
        let extra: Vec<_> = extra
            .into_iter()
            .chain(net.iter().flat_map(|n| n.env()))
            .collect();
        let started = warden_core::spawn::start_in(&s.cfg, cg.as_ref(), &extra, netns);
        s.cgroup = Some(cg);
        let st = started.map_err(|e| e.to_string())?;
        s.net = net;
        Ok((st.pid, st.stdout, st.stderr))
    }

    /// The ladder on one agent (orderly stop after grace, operator kill).
    pub(super) fn kill_one(&mut self, name: &str, trigger: &str, reason: &str) {
        match self.ladder_one(name, trigger, reason, false) {
            None => self.dispatch(name, Event::Empty),
            Some(report) => {
                self.slots[name].log.note(&format!(
                    "killed after grace: {} processes, empty after {} us",
                    report.processes, report.timings.empty_us
                ));
                if report.complete() {
                    self.dispatch(name, Event::Empty);
                }
            }
        }
    }

    /// The halt ladder on one agent's cgroup (evidence, kill, verify empty),
    /// then reaps its main process and seals the evidence; the cgroup is
    /// removed once empty, else the kill is retried. None if it has no cgroup.
    pub(super) fn ladder_one(
        &mut self,
        name: &str,
        trigger: &str,
        reason: &str,
        hard: bool,
    ) -> Option<halt::Report> {
        let s = self.slots.get(name)?;
        let cg = s.cgroup.as_ref()?;
        let members = [Member {
            name: name.to_string(),
            cgroup: cg.as_ref(),
            log: Some(s.log.clone()),
        }];
        let (report, evidence) = halt::run(&halt::Request {
            id: None,
            scope: cg.as_ref(),
            members: &members,
            trigger,
            reason,
            hard,
            seen_at: Instant::now(),
            empty_deadline: self.cfg.empty_deadline.0,
        });
        if let Some(p) = s.machine.state.pid() {
            reap_pid(p, true);
        }
        self.seal_halt(&report, &evidence, None);
        if report.complete() {
            self.remove_cgroup(name);
        } else {
            self.pending_survivors = true;
        }
        Some(report)
    }

    /// The agent is down: stop serving its socket, forget its heartbeat.
    pub(super) fn agent_down(&mut self, name: &str) {
        self.broker_agent_down(name);
        if let Some(s) = self.slots.get_mut(name) {
            if let Some(t) = s.api_task.take() {
                t.abort();
            }
            s.api_listener = None;
            s.heartbeat = None;
            s.frozen = false;
            s.net = None;
            let _ = crate::agent_socket::unbind(&self.cfg.agent_socket_dir, name);
        }
    }

    pub(super) fn remove_cgroup(&mut self, name: &str) {
        self.agent_down(name);
        if let Some(s) = self.slots.get_mut(name) {
            if let Some(c) = s.cgroup.take() {
                if let Err(e) = c.remove() {
                    tracing::warn!("{e}");
                    s.cgroup = Some(c);
                }
            }
        }
    }

    pub(super) fn reap_leftovers(&mut self, name: &str) {
        let Some(s) = self.slots.get(name) else {
            return;
        };
        let Some(cg) = s.cgroup.as_ref() else { return };
        if cg.populated().unwrap_or(false) {
            let n = cg.procs().map(|p| p.len()).unwrap_or(0);
            let _ = halt::clear(cg.as_ref(), self.cfg.empty_deadline.0);
            s.log.note(&format!(
                "main process exited; killed {n} processes it left behind"
            ));
            let _ = self.audit.record(audit_event(
                "agent_leftovers_killed",
                Some(name),
                None,
                json!({"processes": n}),
            ));
        }
        self.remove_cgroup(name);
    }

    pub(super) fn reap(&mut self, now: Instant) {
        let pids: Vec<(String, i32)> = self
            .slots
            .iter()
            .filter_map(|(n, s)| s.machine.state.pid().map(|p| (n.clone(), p)))
            .collect();
        for (name, pid) in pids {
            if let Some(status) = reap_pid(pid, false) {
                let s = &self.slots[&name];
                s.log.note(&format!("pid {pid} ended: {status}"));
                let _ = self.audit.record(audit_event(
                    "agent_exit",
                    Some(&name),
                    None,
                    json!({"pid": pid, "status": status.to_string()}),
                ));
                self.dispatch(&name, Event::Exited { status });
            }
        }
        self.broker.reap_stragglers();
        match self.kernel.as_mut().map(|k| k.alive()) {
            Some(true) => {}
            Some(false) => self.kernel_died(now),
            // Restarting it failed before: try again on every reap.
            None => {
                if let Err(e) = self.start_kernel() {
                    tracing::error!("cannot restart the safety kernel: {e}");
                }
            }
        }
    }
}
