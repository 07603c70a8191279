//! Safety-monitor thresholds as the configuration states them, and their
//! resolution per agent: plain data, read by the monitors.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{Bytes, Dur};

/// Per-agent thresholds: the `[limits]` table, overridden by an agent's own
/// `[agent.limits]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Loop without sleep: at or above `busy_cpu` of a core for this long.
    pub busy_loop: Option<Dur>,
    /// Fraction of one core that counts as busy (default 0.95).
    pub busy_cpu: Option<f64>,
    /// Halt when memory use reaches this fraction of memory_max (default 0.9).
    pub memory_halt: Option<f64>,
    /// New processes per second (default 100).
    pub fork_rate: Option<f64>,
    /// Halt when the process count reaches this fraction of pids_max (default 0.95).
    pub pids_near: Option<f64>,
    /// Bytes written to disk within `disk_window` (default 1G per 60s).
    pub disk_write: Option<Bytes>,
    pub disk_window: Option<Dur>,
    /// Tasks an agent may generate per 24 hours (default 10).
    pub tasks_per_day: Option<u32>,
    /// Governance rejections in a row that halt (default: more than 3).
    pub governance_rejections: Option<u32>,
    /// Host: minimum free space on the state and log filesystems (default 64M).
    pub disk_free_min: Option<Bytes>,
    /// Host: minimum MemAvailable (default 64M).
    pub host_memory_min: Option<Bytes>,
    /// Host: minimum free inodes (statvfs f_favail) on the stop file's
    /// filesystem (default 64): with none left, `touch STOP` fails (ENOSPC).
    pub stop_inodes_min: Option<u64>,
    /// Host: maximum 1-minute load average per core (default: off; load
    /// counts tasks in uninterruptible sleep too, so it is opt-in).
    pub host_load_max: Option<f64>,
    /// Monitors switched off, by name (e.g. `["pids", "host_load"]`); audited
    /// at start like any other configuration.
    #[serde(default)]
    pub disable: Vec<String>,
}

/// Every monitor's name, as used in breaches, `disable` and `warden status`.
pub const MONITORS: &[&str] = &[
    "busy_loop",
    "memory",
    "fork_rate",
    "pids",
    "disk_write",
    "tasks",
    "governance",
    "crash_loop",
    "disk_free",
    "host_memory",
    "host_load",
    "stop_inodes",
    "self_modification",
];

/// Resolved thresholds for one agent (or the host).
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub busy_loop: Duration,
    pub busy_cpu: f64,
    pub memory_halt: f64,
    pub fork_rate: f64,
    pub pids_near: f64,
    pub disk_write: u64,
    pub disk_window: Duration,
    pub tasks_per_day: u32,
    pub governance_rejections: u32,
    pub disk_free_min: u64,
    pub host_memory_min: u64,
    pub host_load_max: Option<f64>,
    pub stop_inodes_min: u64,
    /// Monitors that never trip.
    pub disabled: Vec<String>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            busy_loop: Duration::from_secs(60),
            busy_cpu: 0.95,
            memory_halt: 0.9,
            fork_rate: 100.0,
            pids_near: 0.95,
            disk_write: 1 << 30,
            disk_window: Duration::from_secs(60),
            tasks_per_day: 10,
            governance_rejections: 3,
            disk_free_min: 64 << 20,
            host_memory_min: 64 << 20,
            host_load_max: None,
            stop_inodes_min: 64,
            disabled: Vec::new(),
        }
    }
}

impl Thresholds {
    /// Defaults, then the daemon-wide table, then the agent's own.
    pub fn resolve(layers: &[&LimitsConfig]) -> Thresholds {
        let mut t = Thresholds::default();
        for l in layers {
            if let Some(v) = l.busy_loop {
                t.busy_loop = v.0;
            }
            if let Some(v) = l.busy_cpu {
                t.busy_cpu = v;
            }
            if let Some(v) = l.memory_halt {
                t.memory_halt = v;
            }
            if let Some(v) = l.fork_rate {
                t.fork_rate = v;
            }
            if let Some(v) = l.pids_near {
                t.pids_near = v;
            }
            if let Some(v) = l.disk_write {
                t.disk_write = v.0;
            }
            if let Some(v) = l.disk_window {
                t.disk_window = v.0;
            }
            if let Some(v) = l.tasks_per_day {
                t.tasks_per_day = v;
            }
            if let Some(v) = l.governance_rejections {
                t.governance_rejections = v;
            }
            if let Some(v) = l.disk_free_min {
                t.disk_free_min = v.0;
            }
            if let Some(v) = l.host_memory_min {
                t.host_memory_min = v.0;
            }
            if let Some(v) = l.host_load_max {
                t.host_load_max = Some(v);
            }
            if let Some(v) = l.stop_inodes_min {
                t.stop_inodes_min = v;
            }
            for d in &l.disable {
                if !t.disabled.contains(d) {
                    t.disabled.push(d.clone());
                }
            }
        }
        t
    }

    /// Is this monitor switched on?
    pub fn on(&self, monitor: &str) -> bool {
        !self.disabled.iter().any(|d| d == monitor)
    }

    /// Checks ranges; the message names the key.
    pub fn validate(l: &LimitsConfig) -> Result<(), String> {
        let frac = |k: &str, v: Option<f64>| match v {
            Some(x) if !(x > 0.0 && x <= 1.0) => {
                Err(format!("{k} must be a fraction in (0, 1], got {x}"))
            }
            _ => Ok(()),
        };
        if let Some(d) = l.disable.iter().find(|d| !MONITORS.contains(&d.as_str())) {
            return Err(format!(
                "disable: unknown monitor {d:?} (known: {})",
                MONITORS.join(", ")
            ));
        }
        frac("busy_cpu", l.busy_cpu)?;
        frac("memory_halt", l.memory_halt)?;
        frac("pids_near", l.pids_near)?;
        if let Some(x) = l.fork_rate {
            if !(x > 0.0 && x.is_finite()) {
                return Err(format!(
                    "fork_rate must be a positive number per second, got {x}"
                ));
            }
        }
        if let Some(x) = l.host_load_max {
            if !(x > 0.0 && x.is_finite()) {
                return Err(format!("host_load_max must be positive, got {x}"));
            }
        }
        if l.disk_window.is_some_and(|d| d.0.is_zero()) {
            return Err("disk_window must be longer than zero".into());
        }
        if l.busy_loop.is_some_and(|d| d.0.is_zero()) {
            return Err("busy_loop must be longer than zero".into());
        }
        Ok(())
    }
}
