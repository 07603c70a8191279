//! The orderly way down (SIGTERM): stop every agent, then exit cleanly.

use std::time::Instant;

use serde_json::json;

use super::*;
use warden_core::halt::{self};
use warden_core::safemode::{self};
use warden_core::supervisor::{Event, State};

impl Daemon {
    pub(super) fn begin_shutdown(&mut self) {
        tracing::info!("SIGTERM: orderly stop of every agent, then exit");
        let _ = self.audit.record(audit_event(
            "shutdown_requested",
            None,
            None,
            json!({"signal": "SIGTERM"}),
        ));
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        let names: Vec<String> = self.slots.keys().cloned().collect();
        self.change_mode(ModeEvent::ShutdownRequested);
        for n in names {
            self.dispatch(&n, Event::Stop);
        }
        self.notify_status();
    }

    pub(super) fn all_down(&self) -> bool {
        self.slots.values().all(|s| {
            matches!(
                s.machine.state,
                State::Stopped | State::Failed { .. } | State::Halted
            )
        })
    }

    pub(super) fn finish(&mut self) {
        // Anything still up (a failed kill, a demo exit) comes down now.
        if self.cg.agents().populated().unwrap_or(false) {
            let t0 = Instant::now();
            let scope = self.cg.agents();
            let (report, evidence) = halt::run(&halt::Request {
                id: None,
                scope: scope.as_ref(),
                members: &[],
                trigger: "exit",
                reason: "daemon exiting",
                hard: true,
                seen_at: t0,
                empty_deadline: self.cfg.empty_deadline.0,
            });
            self.seal_halt(&report, &evidence, None);
        }
        // The kernel checks the agents' cgroups empty itself, so it hears
        // `clean` while they still exist.
        if let Some(k) = self.kernel.take() {
            k.finish_clean();
        }
        for s in self.slots.values_mut() {
            if let Some(c) = s.cgroup.take() {
                let _ = c.remove();
            }
            s.net = None;
        }
        for n in self.cg.existing_agents().unwrap_or_default() {
            let _ = self.cg.agent(&n).remove();
        }
        let _ = self.cg.teardown();
        for n in self.slots.keys() {
            kills::release_cred_dir(&self.cfg.credentials_dir.join(n));
        }
        let _ = std::fs::remove_file(&self.cfg.socket);
        let _ = self.audit.record(audit_event(
            "daemon_exit",
            None,
            None,
            json!({"clean": true}),
        ));
        let _ = self.audit.checkpoint();
        if let Err(e) = safemode::mark_clean_exit(&self.cfg.clean_marker_path()) {
            tracing::error!("cannot mark clean exit: {e}");
        }
        if let Some(h) = self.pinger.hardware.take() {
            h.close_orderly();
        }
        tracing::info!("warden exited cleanly");
    }
}
