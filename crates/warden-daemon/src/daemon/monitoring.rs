//! Timers and monitors: sampled on every due turn of the loop; what they find
//! is returned as a breach and applied by the halter.

use std::path::Path;
use std::time::Instant;

use serde_json::json;

use super::*;
use crate::monitor::{self, Breach};
use warden_core::cgroup;
use warden_core::halt::{self};
use warden_core::supervisor::{Event, State};
use warden_core::watchdog::Health;

impl Daemon {
    pub(super) fn tick(&mut self, now: Instant) {
        if !self.stop.watch_alive {
            if !self.stop_watch_halted && !matches!(self.mode, Mode::Safe(_)) {
                self.stop_watch_halted = true;
                let reason = format!(
                    "stop file watch on {} lost",
                    self.cfg
                        .stop_file
                        .parent()
                        .unwrap_or(Path::new("/"))
                        .display()
                );
                self.hard_halt("stop_file_watch", &reason, None, now);
            }
            if self.stop.repair() {
                self.stop_watch_halted = false;
            }
        }
        let monitor_due = now >= self.next_monitor;
        if monitor_due {
            self.next_monitor = now + self.cfg.monitor_interval.0;
            if let Some(b) = self.sample_monitors(now) {
                self.breach(b, now);
            }
            for (name, b) in self.silent_agents() {
                self.halt_silent_agent(&name, b);
            }
            if let Some(b) = self.check_oversight() {
                self.breach(b, now);
            }
            if let Err(e) = self.twophase.expire(warden_core::clock::now_ms()) {
                tracing::error!("cannot persist expired kill authorizations: {e}");
            }
        }
        // Parked approval waits every turn; request expiry with the monitors.
        self.broker_tick(now, monitor_due);
        self.fleet_tick(now);
        if self.kernel.is_some() && now >= self.next_kernel_beat {
            let failing = self.health().failing();
            let why = (!failing.is_empty()).then(|| failing.join(","));
            if let Some(k) = self.kernel.as_mut() {
                self.next_kernel_beat = k.beat(why.as_deref(), now);
            }
        }
        if now >= self.pinger.next() {
            let health = self.health();
            self.pinger.tick(health, now);
        }
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for n in &names {
            let s = &self.slots[n];
            if let State::Stopping { .. } = s.machine.state {
                let empty = s
                    .cgroup
                    .as_ref()
                    .map(|c| !c.populated().unwrap_or(true))
                    .unwrap_or(true);
                if empty {
                    if let Some(p) = s.machine.state.pid() {
                        if let Some(st) = reap_pid(p, true) {
                            self.dispatch(n, Event::Exited { status: st });
                        }
                    }
                    self.remove_cgroup(n);
                    self.dispatch(n, Event::Empty);
                    continue;
                }
            }
            if self.slots[n].wake.is_some_and(|w| w <= now)
                || matches!(self.slots[n].machine.state, State::Stopping { .. })
            {
                self.dispatch(n, Event::Tick);
            }
        }
        if self.pending_survivors {
            let scope = self.cg.agents();
            if scope.populated().unwrap_or(true) {
                let (report, evidence) = halt::run(&halt::Request {
                    id: None,
                    scope: scope.as_ref(),
                    members: &[],
                    trigger: "retry",
                    reason: "survivors of an earlier halt",
                    hard: true,
                    seen_at: now,
                    empty_deadline: self.cfg.empty_deadline.0,
                    evidence_budget: self.cfg.evidence_budget(),
                });
                self.pending_survivors = !report.complete();
                self.seal_halt(&report, &evidence, None);
            } else {
                self.pending_survivors = false;
            }
        }
        // In SAFE MODE nothing may run: anything found is halted again.
        if matches!(self.mode, Mode::Safe(_)) && self.cg.agents().populated().unwrap_or(false) {
            self.hard_halt(
                "safe_mode",
                "processes found in agent cgroups during SAFE MODE",
                None,
                now,
            );
        }
        if !self.audit.healthy() {
            self.audit_failed("writer stopped");
        }
    }

    /// Samples every running agent and the host; returns the first breach.
    pub(super) fn sample_monitors(&mut self, now: Instant) -> Option<monitor::Breach> {
        let mut first = None;
        let mut hits = Vec::new();
        for (name, s) in self.slots.iter_mut() {
            let Some(cg) = s.cgroup.as_ref() else {
                continue;
            };
            if !matches!(
                s.machine.state,
                State::Running { .. } | State::Stopping { .. }
            ) {
                continue;
            }
            if s.cpu_counter.is_none() {
                s.cpu_counter = cgroup::CpuCounter::open(cg.as_ref());
            }
            let cpu = match &s.cpu_counter {
                Some(c) => c.read(),
                None => cg.cpu_usage_usec().ok().flatten(),
            };
            if cpu.is_some() && cpu == s.last_cpu {
                s.watch.quiet(now);
                continue;
            }
            s.last_cpu = cpu;
            let stats = cg.stats().unwrap_or_default();
            let now_hits = (
                stats.memory_events_max.unwrap_or(0),
                stats.pids_events_max.unwrap_or(0),
            );
            if now_hits.0 > s.limit_hits.0 || now_hits.1 > s.limit_hits.1 {
                hits.push((
                    name.clone(),
                    now_hits.0 - s.limit_hits.0.min(now_hits.0),
                    now_hits.1 - s.limit_hits.1.min(now_hits.1),
                ));
            }
            s.limit_hits = now_hits;
            let pids = cg.procs().unwrap_or_default();
            let sample = monitor::Sample {
                cpu_usec: stats.cpu_usage_usec,
                cpu_stall_usec: stats.cpu_stall_usec,
                proc_io: monitor::proc_write_bytes(&pids),
                memory: stats.memory_current,
                memory_max: s.cfg.memory_max.map(|b| b.0),
                pids,
                pids_max: s.cfg.pids_max,
                io_write: stats.io_write_bytes,
                output_bytes: s.log.output_bytes(),
            };
            if let Some(b) = s.watch.sample(&sample, now) {
                first.get_or_insert(b);
            }
        }
        // The kernel refused memory or a fork: audited, not itself a halt
        // (the memory and pids monitors decide that).
        for (name, mem, pids) in hits {
            let _ = self.audit.record(audit_event(
                "limit_hit",
                Some(&name),
                None,
                json!({"memory_max_events": mem, "pids_max_events": pids}),
            ));
        }
        let paths = [self.cfg.state_dir.as_path(), self.cfg.log_dir.as_path()];
        let stop_dir = self.cfg.stop_file.parent().unwrap_or(Path::new("/"));
        let host = monitor::sample_host(&paths, stop_dir);
        self.rearm_stop_placeholder();
        if let Some(b) = monitor::check_host(&self.host_limits, &host, &mut self.host_readings) {
            first.get_or_insert(b);
        }
        first
    }

    /// Dead man's switches: the silent agents, each with its breach.
    pub(super) fn silent_agents(&self) -> Vec<(String, Breach)> {
        if matches!(self.mode, Mode::Safe(_)) {
            return Vec::new();
        }
        let now_ms = warden_core::clock::now_ms();
        self.slots
            .iter()
            .filter(|(_, s)| matches!(s.machine.state, State::Running { .. }) && !s.frozen)
            .filter_map(|(n, s)| {
                s.heartbeat
                    .as_ref()
                    .and_then(|h| h.check(now_ms))
                    .map(|b| (n.clone(), b))
            })
            .collect()
    }

    /// Oversight: everything halts if no human checked in in time.
    pub(super) fn check_oversight(&self) -> Option<Breach> {
        if matches!(self.mode, Mode::Safe(_)) {
            return None;
        }
        self.oversight.check(warden_core::clock::now_ms())
    }

    /// Every health check that gates the watchdog pings.
    pub(super) fn health(&self) -> Health {
        Health {
            main_loop: true,
            stop_file_watch: self.stop.watch_alive,
            audit: self.audit.healthy(),
            cgroupfs: self.cg.agents().populated().is_ok(),
            protect_watch: true,
            kernel: self.kernel.is_some(),
        }
    }

    /// A policy decision on an agent's request (tool broker): feeds the
    /// governance monitor.
    pub fn report_decision(&mut self, agent: &str, rejected: bool, now: Instant) {
        let b = self
            .slots
            .get_mut(agent)
            .and_then(|s| s.watch.governance(rejected));
        if let Some(b) = b {
            self.breach(b, now);
        }
    }

    /// Keeps the armed stop placeholder in place (it is used up when an
    /// operator moves it to the stop file); a failure is logged once until
    /// it succeeds again.
    pub(super) fn rearm_stop_placeholder(&mut self) {
        use std::sync::atomic::{AtomicBool, Ordering};
        static FAILED: AtomicBool = AtomicBool::new(false);
        let placeholder = warden_core::stopfile::placeholder_path(&self.cfg.stop_file);
        match warden_core::stopfile::arm_placeholder(&self.cfg.stop_file) {
            Ok(created) => {
                if created {
                    tracing::info!("stop placeholder {} armed", placeholder.display());
                }
                FAILED.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                if !FAILED.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        "cannot create the stop placeholder {}: {e}",
                        placeholder.display()
                    );
                }
            }
        }
    }
}
