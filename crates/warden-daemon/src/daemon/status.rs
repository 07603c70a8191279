//! What `warden status` and `warden agents` show, and systemd's status line.

use serde_json::json;

use super::*;
use warden_core::cgroup::Layout;
use warden_core::supervisor::{ExitStatus, State};

impl Daemon {
    pub(super) fn notify_status(&self) {
        let text = match &self.mode {
            Mode::Running => {
                let running = self
                    .slots
                    .values()
                    .filter(|s| matches!(s.machine.state, State::Running { .. }))
                    .count();
                format!("running: {running}/{} agents", self.slots.len())
            }
            Mode::Safe(l) => format!("SAFE MODE: {}", l.reason),
            Mode::ShuttingDown => "stopping agents".to_string(),
        };
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&text)]);
    }

    pub(super) fn agent_json(&self, name: &str, s: &AgentRecord) -> serde_json::Value {
        let (stats, pids) = match &s.cgroup {
            Some(c) => (c.stats().ok(), c.procs().unwrap_or_default()),
            None => (None, vec![]),
        };
        json!({
            "name": name,
            "state": kills::state_name(&s.machine.state, s.frozen),
            "reason": match &s.machine.state { State::Failed { reason } => Some(reason.clone()), _ => None },
            "pid": s.machine.state.pid(),
            "pids": pids,
            "cgroup": s.cgroup.as_ref().map(|c| c.path().to_string()),
            "cpu_usec": stats.as_ref().and_then(|s| s.cpu_usage_usec),
            "memory_bytes": stats.as_ref().and_then(|s| s.memory_current),
            "restarts": s.machine.restarts,
            "last_exit": s.machine.last_exit.map(|e: ExitStatus| e.to_string()),
            "user": s.cfg.user.get_ref(),
            "limits": {"memory_max": s.cfg.memory_max.map(|b| b.0), "pids_max": s.cfg.pids_max, "cpu_max": s.cfg.cpu_max},
            "unenforced_limits": s.unenforced,
            "monitors": s.watch.readings,
            "output_bytes": s.log.output_bytes(),
            "heartbeat_deadline_ms": s.heartbeat.as_ref().map(|h| h.deadline_ms()),
            "socket": crate::agent_socket::socket_path(&self.cfg.agent_socket_dir, name),
            "api": s.api_counters.snapshot(),
            "network": warden_core::netns::status(&self.cfg, name, s.net.as_ref()),
        })
    }

    pub(super) fn agents_json(&self) -> Vec<serde_json::Value> {
        self.slots
            .iter()
            .map(|(n, s)| self.agent_json(n, s))
            .collect()
    }

    pub(super) fn status_json(&self) -> serde_json::Value {
        let (state, safe) = match &self.mode {
            Mode::Running => ("running", None),
            Mode::Safe(l) => ("safe_mode", Some(l.clone())),
            Mode::ShuttingDown => ("stopping", None),
        };
        json!({
            "daemon": {
                "pid": std::process::id(),
                "host_id": warden_core::authz::host_id(),
                "version": env!("CARGO_PKG_VERSION"),
                "state": state,
                "safe_mode": safe,
                "uptime_s": self.started.elapsed().as_secs(),
                "cgroup_layout": match self.cg.layout() { Layout::V2 => "v2", Layout::Hybrid => "hybrid", Layout::V1 => "v1" },
                "cgroup_root": self.cg.root(),
                "stop_file": self.cfg.stop_file,
                "stop_file_present": self.stop.present(),
                "stop_file_watch": self.stop.watch_alive,
                "kernel_pid": self.kernel.as_ref().map(|k| k.pid()),
                "audit_healthy": self.audit.healthy(),
                "config": self.opts.config_path,
            },
            "agents": self.agents_json(),
            "host_monitors": self.host_readings,
            "oversight": {"last_checkin": self.oversight.last(), "due_ms": self.oversight.due_ms()},
            "broker": self.broker.status_json(),
            "health": self.pinger.last,
            "watchdog": {
                "enabled": self.pinger.enabled(),
                "device": self.pinger.hardware.as_ref().map(|h| h.path().to_path_buf()),
                "pings": self.pinger.hardware.as_ref().map(|h| h.pings),
            },
            "last_halt": self.last_halt,
            "protection": self.protection_json(),
            "fleet": self.fleet.status_json(std::time::Instant::now()),
        })
    }
}
