//! The safety kernel, as the daemon sees it: start it, beat, hear what it
//! froze or killed by itself, audit its reports, and fail closed without it
//! (docs/kernel.md).

use std::time::Instant;

use serde_json::json;

use super::*;
use crate::kernel_link::{self, Kernel, Message};
use warden_core::safemode;

impl Daemon {
    pub(super) fn kernel_spec(&self) -> std::io::Result<kernel_link::Spec> {
        let exe = std::fs::read_link("/proc/self/exe")?;
        let (v2, v1_freezer) = self.cg.kernel_dirs();
        Ok(kernel_link::Spec {
            exe,
            stop_file: self.cfg.stop_file.clone(),
            latch: self.cfg.latch_path(),
            report_dir: self.kernel_report_dir(),
            v2,
            v1_freezer,
            liveness: self.cfg.liveness_timeout.0,
            deadline: self.cfg.kernel_deadline.0,
            // The hardware watchdog stays with the daemon's pinger for now:
            // a watchdog device opens once, and both gate on the same health.
            watchdog: None,
        })
    }

    pub(super) fn kernel_report_dir(&self) -> std::path::PathBuf {
        self.cfg.state_dir.join("kernel")
    }

    /// Starts the kernel; without one no agent runs (fail closed).
    pub(super) fn start_kernel(&mut self) -> Result<(), String> {
        let spec = self.kernel_spec().map_err(|e| e.to_string())?;
        let k = Kernel::spawn(&spec).map_err(|e| e.to_string())?;
        tracing::info!(pid = k.pid(), "safety kernel ready");
        let _ = self.audit.record(audit_event(
            "kernel_started",
            None,
            None,
            json!({"pid": k.pid(), "liveness_timeout_ms": spec.liveness.as_millis() as u64,
                   "deadline_ms": spec.deadline.as_millis() as u64,
                   "v2": spec.v2, "v1_freezer": spec.v1_freezer}),
        ));
        self.kernel = Some(k);
        Ok(())
    }

    /// What the kernel said since the last look.
    pub(super) fn kernel_readable(&mut self, now: Instant) {
        let (msgs, eof) = match self.kernel.as_mut() {
            Some(k) => (k.read(), k.eof),
            None => return,
        };
        for m in msgs {
            match m {
                Message::Frozen { trigger, us } => {
                    tracing::warn!("safety kernel froze the agents ({trigger}) in {us} us");
                    let _ = self.audit.record(audit_event(
                        "kernel_frozen",
                        None,
                        None,
                        json!({"trigger": trigger, "frozen_us": us}),
                    ));
                    // The kernel saw it first; the daemon, healthy, finishes
                    // the halt with full evidence and says `empty`; unless
                    // its own watch already did.
                    let populated = self.cg.agents().populated().unwrap_or(true);
                    if self.mode.is_safe() && !populated && self.all_down() {
                        if let Some(id) = self.last_halt.as_ref().map(|h| h.id.clone()) {
                            if let Some(k) = self.kernel.as_mut() {
                                k.empty(&id);
                            }
                        }
                        continue;
                    }
                    let reason = match trigger.as_str() {
                        "stop_file" => {
                            format!("stop file {} present", self.cfg.stop_file.display())
                        }
                        t => format!("the safety kernel halted the agents ({t})"),
                    };
                    let t = if trigger == "stop_file" {
                        "stop_file".to_string()
                    } else {
                        format!("kernel_{trigger}")
                    };
                    self.hard_halt(&t, &reason, None, now);
                }
                Message::Killed { report } => {
                    tracing::error!(
                        "the safety kernel killed the agents by itself (report {:?})",
                        report
                    );
                    self.import_kernel_reports();
                    if !self.mode.is_safe() {
                        if let Some(l) = safemode::get(&self.cfg.latch_path()) {
                            self.change_mode(ModeEvent::Latched(l));
                        }
                    }
                }
                Message::Unknown(l) => tracing::warn!("safety kernel said {l:?}"),
                other => tracing::debug!("safety kernel: {other:?}"),
            }
        }
        if eof {
            self.kernel_died(now);
        }
    }

    /// Audits every report the kernel wrote of a halt it carried out by
    /// itself (now, or while the daemon was hung or dead), keeping its
    /// original trigger, then removes the file.
    pub(super) fn import_kernel_reports(&mut self) {
        for path in kernel_link::reports(&self.kernel_report_dir()) {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!("cannot read kernel report {}: {e}", path.display());
                    continue;
                }
            };
            let report: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(
                |e| json!({"unreadable": e.to_string(), "text": text.chars().take(4096).collect::<String>()}),
            );
            let id = format!("k{}", warden_core::crypto::random_hex(6));
            let evidence_id = self.audit.store_evidence(&id, &report).ok();
            let trigger = report["trigger"].as_str().unwrap_or("kernel").to_string();
            let reason = format!("the safety kernel halted the agents by itself ({trigger})");
            let r = self.audit.record_safety(
                audit_event(
                    "halt",
                    None,
                    None,
                    json!({"halt_id": id, "by": "kernel", "evidence_id": evidence_id,
                           "evidence_sha256": warden_core::audit::evidence_sha256(&report),
                           "trigger": trigger, "reason": reason, "hard": true,
                           "kernel_report": path.file_name().map(|n| n.to_string_lossy().into_owned()),
                           "survivors": report["survivors"], "complete": report["complete"]}),
                ),
                self.safety("safety_halt", &reason),
            );
            match r.and_then(|_| self.audit.checkpoint()) {
                // Only what is in the chain may go.
                Ok(()) => {
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => tracing::error!("cannot audit kernel report {}: {e}", path.display()),
            }
        }
    }

    /// The kernel is gone: everything halts, and nothing runs until a new
    /// kernel is ready and a human resumes.
    pub(super) fn kernel_died(&mut self, now: Instant) {
        let status = self.kernel.take().map(|mut k| k.alive());
        tracing::error!("the safety kernel died ({status:?}); halting every agent");
        let _ = self
            .audit
            .record(audit_event("kernel_died", None, None, json!({})));
        self.import_kernel_reports();
        self.hard_halt(
            "kernel_died",
            "the safety kernel process ended; agents do not run without it",
            None,
            now,
        );
        if let Err(e) = self.start_kernel() {
            tracing::error!("cannot restart the safety kernel: {e}; agents stay down");
        }
    }
}
