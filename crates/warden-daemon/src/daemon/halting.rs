//! The halter: every hard halt goes through [`Daemon::hard_halt`] (freeze,
//! evidence, kill, verify empty, then SAFE MODE), and every sealed halt through
//! [`Daemon::seal_halt`]. A monitor breach becomes a halt in [`Daemon::breach`].

use std::time::Instant;

use serde_json::json;

use super::*;
use crate::monitor::Breach;
use warden_core::audit::{self, Safety};
use warden_core::halt::{self, Member};
use warden_core::safemode::{self, Latch};
use warden_core::supervisor::Event;

impl Daemon {
    pub(super) fn safety(&self, event: &str, reason: &str) -> Safety {
        Safety {
            event: event.into(),
            reason: reason.into(),
            autonomy_state: match &self.mode {
                Mode::Running => "running",
                Mode::Safe(_) => "halted",
                Mode::ShuttingDown => "stopping",
            }
            .into(),
            governance_state: "supervised".into(),
            human_notified: true,
        }
    }

    pub(super) fn on_stop_file(&mut self, t0: Instant) {
        // Already down and latched: nothing to do unless something runs.
        let populated = self.cg.agents().populated().unwrap_or(true);
        if matches!(self.mode, Mode::Safe(_)) && !populated && self.all_down() {
            return;
        }
        let reason = format!("stop file {} present", self.cfg.stop_file.display());
        self.hard_halt("stop_file", &reason, None, t0);
    }

    /// Freeze, evidence, kill, verify empty for every agent; then SAFE MODE.
    pub fn hard_halt(&mut self, trigger: &str, reason: &str, uid: Option<u32>, t0: Instant) {
        let names: Vec<String> = self.slots.keys().cloned().collect();
        let scope = self.cg.agents();
        let members: Vec<Member<'_>> = self
            .slots
            .iter()
            .filter_map(|(n, s)| {
                s.cgroup.as_ref().map(|c| Member {
                    name: n.clone(),
                    cgroup: c.as_ref(),
                    log: Some(s.log.clone()),
                })
            })
            .collect();
        // The kernel freezes too (freezing destroys nothing) and takes over
        // if this ladder does not confirm `empty` in time.
        let id = halt::new_id();
        if let Some(k) = self.kernel.as_mut() {
            k.halt(&id);
        }
        let (report, evidence) = halt::run(&halt::Request {
            id: Some(&id),
            scope: scope.as_ref(),
            members: &members,
            trigger,
            reason,
            hard: true,
            seen_at: t0,
            empty_deadline: self.cfg.empty_deadline.0,
        });
        drop(members);
        if report.complete() {
            if let Some(k) = self.kernel.as_mut() {
                k.empty(&id);
            }
        }
        // Latch first: from here on a crash still comes back halted.
        let latch = Latch::new(trigger, reason, Some(report.id.clone()), uid);
        if let Err(e) = safemode::set(&self.cfg.latch_path(), &latch) {
            tracing::error!(
                "cannot write SAFE MODE latch {}: {e}",
                self.cfg.latch_path().display()
            );
        }
        self.change_mode(ModeEvent::Latched(latch));
        for n in &names {
            if let Some(pid) = self.slots[n].machine.state.pid() {
                reap_pid(pid, true);
            }
            self.dispatch(n, Event::Halted);
            let s = self.slots.get_mut(n).expect("slot");
            if let Some(c) = s.cgroup.take() {
                if let Err(e) = c.remove() {
                    tracing::warn!("{e}");
                    s.cgroup = Some(c);
                }
            }
            s.log.note(&format!("hard halt {}: {}", report.id, reason));
        }
        for n in &names {
            self.agent_down(n);
        }
        self.pending_survivors = !report.complete();
        self.print_report(&report);
        tracing::warn!(
            "hard halt {} ({trigger}: {reason}): {} processes, frozen {} us, killed {} us, empty {} us, survivors {:?}",
            report.id,
            report.processes,
            report.timings.frozen_us,
            report.timings.killed_us,
            report.timings.empty_us,
            report.survivors
        );
        self.seal_halt(&report, &evidence, uid);
        drop(evidence);
        warden_core::sys::release_free_memory();
        self.last_halt = Some(report);
        self.notify_status();
    }

    /// Stores evidence, audits the halt with its timings, signs a checkpoint.
    pub(super) fn seal_halt(
        &mut self,
        report: &halt::Report,
        evidence: &warden_core::evidence::Evidence,
        uid: Option<u32>,
    ) {
        let value = serde_json::to_value(evidence).unwrap_or_default();
        let evidence_id = match self.audit.store_evidence(&report.id, &value) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::error!("cannot store evidence of halt {}: {e}", report.id);
                None
            }
        };
        let sha = audit::evidence_sha256(&value);
        let data = json!({
            "halt_id": report.id, "evidence_id": evidence_id, "evidence_sha256": sha,
            "trigger": report.trigger, "reason": report.reason, "hard": report.hard,
            "timings_us": report.timings, "processes": report.processes,
            "survivors": report.survivors, "agents": report.agents, "errors": report.errors,
        });
        let event = if report.hard {
            "safety_halt"
        } else {
            "orderly_stop"
        };
        let r = self.audit.record_safety(
            audit_event("halt", None, uid, data),
            self.safety(event, &report.reason),
        );
        if let Err(e) = r.and_then(|_| self.audit.checkpoint()) {
            tracing::error!("cannot audit halt {}: {e}", report.id);
        }
    }

    pub(super) fn print_report(&self, r: &halt::Report) {
        if !self.opts.print_reports {
            return;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        println!("\n=== HALT {} ===", r.id);
        println!("trigger   : {} ({})", r.trigger, r.reason);
        println!("agents    : {}", r.agents.join(", "));
        println!("processes : {} captured while frozen", r.processes);
        println!(
            "frozen    : {:>8.2} ms after the trigger (freeze requested at {:.2} ms)",
            ms(r.timings.frozen_us),
            ms(r.timings.freeze_requested_us)
        );
        println!("evidence  : {:>8.2} ms", ms(r.timings.evidence_us));
        println!("killed    : {:>8.2} ms", ms(r.timings.killed_us));
        println!("empty     : {:>8.2} ms", ms(r.timings.empty_us));
        println!(
            "survivors : {}",
            if r.survivors.is_empty() {
                "none".to_string()
            } else {
                format!("{:?}", r.survivors)
            }
        );
        for e in &r.errors {
            println!("note      : {e}");
        }
        println!("SAFE MODE latched: agents stay down until `warden resume --reason ...`");
    }

    /// A monitor tripped: safety event, hard halt, SAFE MODE.
    pub(super) fn breach(&mut self, b: Breach, now: Instant) {
        if matches!(self.mode, Mode::Safe(_)) && !self.cg.agents().populated().unwrap_or(true) {
            // Already halted and empty: record, do not halt again.
            let _ = self.audit.record_safety(
                audit_event("monitor_breach", b.agent.as_deref(), None, json!(b)),
                self.safety("runaway_detected", &b.reason()),
            );
            return;
        }
        let reason = b.reason();
        tracing::error!("{reason}");
        if let Err(e) = self.audit.record_safety(
            audit_event("monitor_breach", b.agent.as_deref(), None, json!(b)),
            self.safety("runaway_detected", &reason),
        ) {
            tracing::error!("cannot audit breach: {e}");
        }
        self.hard_halt("monitor", &reason, None, now);
    }

    /// A silent agent is hard-halted on its own: evidence from its frozen
    /// tree, kill, cgroup verified empty. It stays down (`halted`) until an
    /// operator starts it; the other agents and the host carry on.
    pub(super) fn halt_silent_agent(&mut self, name: &str, b: Breach) {
        let reason = b.reason();
        tracing::error!(agent = name, "{reason}");
        if let Err(e) = self.audit.record_safety(
            audit_event("monitor_breach", Some(name), None, json!(b)),
            self.safety("agent_halted", &reason),
        ) {
            self.audit_failed(&e.to_string());
        }
        let report = self.ladder_one(name, "heartbeat", &reason, true);
        if let Some(r) = &report {
            self.slots[name].log.note(&format!(
                "halted: {reason}; {} processes, empty after {} us",
                r.processes, r.timings.empty_us
            ));
            if self.opts.print_reports {
                self.print_report(r);
            }
        }
        self.dispatch(name, Event::Halted);
        if let Some(s) = self.slots.get_mut(name) {
            s.heartbeat = None;
        }
        self.last_halt = report;
        self.notify_status();
    }

    pub(super) fn audit_failed(&mut self, err: &str) {
        tracing::error!("audit log failed: {err}");
        if !matches!(self.mode, Mode::Safe(_)) {
            self.hard_halt(
                "audit",
                &format!("audit log unwritable: {err}"),
                None,
                Instant::now(),
            );
        }
    }
}
