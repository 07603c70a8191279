//! `warden reload`, SIGHUP and `systemctl reload warden`: the whole config
//! read again and applied without disturbing what did not change.
//!
//! A file that does not parse or validate is refused with its line and key,
//! and so is a change of a key that cannot change while the daemon runs
//! (each named); the running config stays. Otherwise, per agent, as
//! [`diff::plan`] decides: added agents start (unless SAFE MODE, the stop
//! file or `autostart = false` keep them down), removed agents get an
//! orderly stop and are forgotten once down, changed agents restart with
//! their new config, agents whose kernel limits alone changed have them
//! written into their cgroup (same processes; if the kernel refuses, the
//! agent restarts instead), unchanged agents keep their processes. The tool
//! registry is read again too. Each reload is audited with the caller's uid,
//! the old and new config hash and the per-agent result.

use std::collections::BTreeSet;

use serde_json::json;

use super::agents::limits_of;
use super::protection::sha256_file;
use super::*;
use warden_core::config::diff::{self, AgentChange};
use warden_core::supervisor::{Event, State};
use warden_proto::control::{ErrorKind, Response};

/// Removed agents on their way down.
#[derive(Debug, Default)]
pub(super) struct Retiring(pub(super) BTreeSet<String>);

fn sha256_text(t: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(t.as_bytes()))
}

impl Daemon {
    fn new_record(&self, a: &AgentConfig) -> AgentRecord {
        AgentRecord {
            cfg: a.clone(),
            machine: supervisor::Agent::new(policy_of(&self.cfg, a)),
            cgroup: None,
            log: AgentLog::new(&self.cfg.log_dir, a.name(), self.cfg.log_policy(a)),
            unenforced: Vec::new(),
            wake: None,
            watch: AgentWatch::new(a.name(), self.cfg.thresholds(a)),
            limit_hits: (0, 0),
            last_cpu: None,
            cpu_counter: None,
            api_task: None,
            api_listener: None,
            heartbeat: None,
            uid: 0,
            frozen: false,
            api_counters: Default::default(),
            net: None,
        }
    }

    fn refuse_reload(
        &mut self,
        uid: Option<u32>,
        via: &str,
        dry_run: bool,
        kind: ErrorKind,
        why: String,
    ) -> Response {
        if !dry_run {
            let _ = self.audit.record(audit_event(
                "reload_refused",
                None,
                uid,
                json!({"via": via, "error": why, "running_sha256": self.on_disk.running_sha256}),
            ));
        }
        tracing::warn!("reload refused ({via}): {why}");
        Response::err(
            kind,
            format!("reload refused, the running config stays: {why}"),
        )
    }

    /// Reads the config again (or takes `text`, for a plan only) and applies
    /// it, or with `dry_run` only says what it would do.
    pub(super) fn reload_config(
        &mut self,
        uid: Option<u32>,
        via: &str,
        dry_run: bool,
        text: Option<String>,
    ) -> Response {
        let path = self.opts.config_path.clone();
        if self.mode == Mode::ShuttingDown {
            return Response::err(ErrorKind::Refused, "daemon is shutting down");
        }
        if text.is_some() && !dry_run {
            return Response::err(
                ErrorKind::BadRequest,
                "a config text is only taken for a plan (--dry-run); reload reads the daemon's own file",
            );
        }
        let text = match text {
            Some(t) => t,
            None => match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    let why = format!("cannot read {}: {e}", path.display());
                    return self.refuse_reload(uid, via, dry_run, ErrorKind::Failed, why);
                }
            },
        };
        let new_sha = sha256_text(&text);
        let new = match Config::parse(&text, &path) {
            Ok(c) => c,
            Err(e) => {
                return self.refuse_reload(uid, via, dry_run, ErrorKind::BadRequest, e.to_string())
            }
        };
        let plan = diff::plan(&self.cfg, &new, &text);
        if let Some(why) = plan.refusal() {
            return self.refuse_reload(uid, via, dry_run, ErrorKind::BadRequest, why);
        }
        for (name, change) in &plan.agents {
            if matches!(change, AgentChange::Started | AgentChange::Restarted { .. }) {
                let a = new.agent(name).expect("planned agent");
                if let Err(e) = warden_core::spawn::resolve_identity(a) {
                    let why = format!("agent {name}: {e}");
                    return self.refuse_reload(uid, via, dry_run, ErrorKind::BadRequest, why);
                }
            }
        }
        if let Some(t) = &new.tools {
            if let Err(e) = crate::broker::load_registry(&new, t) {
                return self.refuse_reload(uid, via, dry_run, ErrorKind::Refused, e);
            }
        }
        let mut out = plan.to_json();
        out["config"] = json!(path);
        out["old_sha256"] = json!(self.on_disk.running_sha256);
        out["new_sha256"] = json!(new_sha);
        out["dry_run"] = json!(dry_run);
        if dry_run {
            return Response::ok(out);
        }

        // Apply. The new config is the daemon's from here on: spawns, stops
        // and monitors read it.
        let old = std::mem::replace(&mut self.cfg, new);
        self.host_limits = crate::monitor::Thresholds::resolve(&[&self.cfg.limits]);
        let mut results = Vec::new();
        for (name, change) in &plan.agents {
            let result = self.apply_change(name, change, &old);
            let keys = match change {
                AgentChange::Restarted { keys } | AgentChange::LimitsUpdated { keys } => {
                    keys.clone()
                }
                _ => vec![],
            };
            results.push(
                json!({"agent": name, "change": change.word(), "keys": keys, "result": result}),
            );
        }
        out["agents"] = json!(results);
        self.on_disk.running_sha256 = new_sha.clone();
        self.on_disk.sha.insert(
            std::fs::canonicalize(&path).unwrap_or(path.clone()),
            sha256_file(&path),
        );
        if let Err(e) = self.audit.record(audit_event(
            "config_reloaded",
            None,
            uid,
            json!({"via": via, "old_sha256": out["old_sha256"], "new_sha256": new_sha,
                   "agents": out["agents"], "live": out["live"]}),
        )) {
            self.audit_failed(&e.to_string());
        }
        // The tool registry, as `reload` always did.
        if self.cfg.tools.is_some() {
            let r = self.reload(uid);
            out["tools"] = r.data.unwrap_or_else(|| json!({"error": r.error}));
        }
        self.notify_status();
        tracing::info!("config reloaded ({via}): {}", out["agents"]);
        Response::ok(out)
    }

    /// Carries out one agent's part of a plan; returns what was done.
    fn apply_change(&mut self, name: &str, change: &AgentChange, old: &Config) -> String {
        let may_start = self.may_start().is_ok();
        match change {
            AgentChange::Started => {
                let a = self.cfg.agent(name).expect("planned agent").clone();
                let rec = self.new_record(&a);
                self.slots.insert(name.to_string(), rec);
                let _ = self.audit.record(audit_event(
                    "agent_added",
                    Some(name),
                    None,
                    json!({"command": a.command.get_ref(), "user": a.user.get_ref(), "allow_root": a.allow_root}),
                ));
                if a.allow_root {
                    let _ = self.audit.record(audit_event(
                        "allow_root",
                        Some(name),
                        None,
                        json!({"user": a.user.get_ref()}),
                    ));
                }
                if let Mode::Safe(_) = self.mode {
                    self.dispatch(name, Event::Halted);
                    return "added; not started: SAFE MODE".into();
                }
                if !a.autostart {
                    return "added; not started (autostart = false)".into();
                }
                if !may_start {
                    return "added; not started (stop file present or shutting down)".into();
                }
                self.dispatch(name, Event::Start);
                self.state_word(name)
            }
            AgentChange::Stopped => {
                self.dispatch(name, Event::Stop);
                self.retiring.0.insert(name.to_string());
                self.retire_done();
                "stopping; removed once down".into()
            }
            AgentChange::Restarted { .. } => {
                self.refresh(name);
                let running = self.slots[name].cgroup.is_some()
                    && matches!(self.slots[name].machine.state, State::Running { .. });
                if running {
                    self.dispatch(name, Event::Restart);
                    "restarting with the new config".into()
                } else {
                    "updated; not running".into()
                }
            }
            AgentChange::LimitsUpdated { keys } => {
                let before = old.agent(name).map(limits_of).unwrap_or_default();
                self.refresh(name);
                let s = &self.slots[name];
                let after = limits_of(&s.cfg);
                if s.cgroup.is_none() {
                    return "updated; not running (limits apply at its next start)".into();
                }
                match self.cg.update_limits(name, &before, &after) {
                    Ok(done) => {
                        let _ = self.audit.record(audit_event(
                            "agent_limits_updated",
                            Some(name),
                            None,
                            json!({"keys": done, "old": format!("{before:?}"), "new": format!("{after:?}"),
                                   "pid": s.machine.state.pid()}),
                        ));
                        s.log
                            .note(&format!("limits updated live: {}", keys.join(", ")));
                        format!("limits updated live: {}", keys.join(", "))
                    }
                    Err(e) => {
                        let _ = self.audit.record(audit_event(
                            "agent_limits_not_live",
                            Some(name),
                            None,
                            json!({"keys": keys, "error": e.to_string()}),
                        ));
                        if may_start {
                            self.dispatch(name, Event::Restart);
                        }
                        format!("the kernel refused the new limits live ({e}); restarting")
                    }
                }
            }
            AgentChange::Unchanged => {
                self.refresh(name);
                "unchanged".into()
            }
        }
    }

    /// Takes the agent's new config, its policy and thresholds.
    fn refresh(&mut self, name: &str) {
        let Some(a) = self.cfg.agent(name).cloned() else {
            return;
        };
        let policy = policy_of(&self.cfg, &a);
        let t = self.cfg.thresholds(&a);
        if let Some(s) = self.slots.get_mut(name) {
            s.cfg = a;
            s.machine.policy = policy;
            s.watch.t = t;
        }
    }

    fn state_word(&self, name: &str) -> String {
        match &self.slots[name].machine.state {
            State::Running { pid, .. } => format!("started, pid {pid}"),
            State::Failed { reason } => format!("cannot start: {reason}"),
            s => s.name().to_string(),
        }
    }

    /// Forgets removed agents once they are down.
    pub(super) fn retire_done(&mut self) {
        let done: Vec<String> = self
            .retiring
            .0
            .iter()
            .filter(|n| {
                self.slots.get(*n).is_none_or(|s| {
                    s.cgroup.is_none()
                        && matches!(
                            s.machine.state,
                            State::Stopped | State::Failed { .. } | State::Halted
                        )
                })
            })
            .cloned()
            .collect();
        for n in done {
            self.retiring.0.remove(&n);
            if self.slots.remove(&n).is_some() {
                let _ = crate::agent_socket::unbind(&self.cfg.agent_socket_dir, &n);
                let _ = self.audit.record(audit_event(
                    "agent_removed",
                    Some(&n),
                    None,
                    json!({"by": "reload"}),
                ));
                tracing::info!(agent = n, "removed by reload");
                self.notify_status();
            }
        }
    }
}
