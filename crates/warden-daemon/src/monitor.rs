//! Safety monitors: the kernel's watch list.
//!
//! Every value is sampled from the kernel (cgroup statistics, /proc, statvfs),
//! never from an agent's own report, except the two counters that only agents
//! and the tool broker can feed (tasks generated, governance rejections). This
//! module is pure logic over samples, so every threshold is tested without
//! processes; the daemon samples and acts on a [`Breach`] with a hard halt.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use warden_core::config::limits::{LimitsConfig, Thresholds, MONITORS};

/// A monitor's current value against its threshold, for `warden status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reading {
    pub value: f64,
    pub threshold: f64,
    pub unit: String,
}

/// A threshold crossed: the daemon hard-halts and enters SAFE MODE.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Breach {
    /// `busy_loop`, `memory`, `fork_rate`, `pids`, `disk_write`, `tasks`,
    /// `governance`, `crash_loop`, `disk_free`, `host_memory`, `host_load`,
    /// `self_modification`, ...
    pub monitor: String,
    pub agent: Option<String>,
    pub value: String,
    pub threshold: String,
}

impl Breach {
    pub fn reason(&self) -> String {
        match &self.agent {
            Some(a) => format!(
                "{} monitor tripped by agent {a}: {} (threshold {})",
                self.monitor, self.value, self.threshold
            ),
            None => format!(
                "{} monitor tripped: {} (threshold {})",
                self.monitor, self.value, self.threshold
            ),
        }
    }
}

/// One kernel sample of one agent.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub cpu_usec: Option<u64>,
    /// PSI stall of the cgroup: time runnable but not running.
    pub cpu_stall_usec: Option<u64>,
    /// (pid, write_bytes) from /proc/PID/io, where the cgroup has no usable
    /// block-I/O counter (v1 blkio counts only throttled cgroups).
    pub proc_io: Vec<(i32, u64)>,
    pub memory: Option<u64>,
    pub memory_max: Option<u64>,
    pub pids: Vec<i32>,
    pub pids_max: Option<u64>,
    pub io_write: Option<u64>,
}

/// (time, cpu usage, cpu stall, pids) of the previous sample.
type LastSample = (Instant, Option<u64>, Option<u64>, BTreeSet<i32>);

/// The watch state of one agent.
#[derive(Debug)]
pub struct AgentWatch {
    pub name: String,
    pub t: Thresholds,
    last: Option<LastSample>,
    /// Per-pid write_bytes last seen, and the sum of their growth.
    io_seen: BTreeMap<i32, u64>,
    io_total: u64,
    busy_since: Option<Instant>,
    io: VecDeque<(Instant, u64)>,
    tasks: VecDeque<Instant>,
    rejections_in_row: u32,
    pub readings: BTreeMap<String, Reading>,
}

fn reading(value: f64, threshold: f64, unit: &str) -> Reading {
    Reading {
        value,
        threshold,
        unit: unit.into(),
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl AgentWatch {
    pub fn new(name: &str, t: Thresholds) -> AgentWatch {
        AgentWatch {
            name: name.into(),
            t,
            last: None,
            io_seen: BTreeMap::new(),
            io_total: 0,
            busy_since: None,
            io: VecDeque::new(),
            tasks: VecDeque::new(),
            rejections_in_row: 0,
            readings: BTreeMap::new(),
        }
    }

    /// Forgets rates across a restart (a new process tree starts from zero).
    pub fn reset(&mut self) {
        self.last = None;
        self.busy_since = None;
        self.io.clear();
        self.io_seen.clear();
    }

    /// A sample in which the agent used no CPU at all: nothing can have
    /// forked, allocated or written, so only the rates drop to zero. The
    /// daemon takes this path for sleeping agents, which keeps an idle host
    /// at one file read per agent per interval.
    pub fn quiet(&mut self, now: Instant) {
        self.busy_since = None;
        if let Some(last) = self.last.as_mut() {
            last.0 = now;
        }
        for k in ["cpu", "fork_rate"] {
            if let Some(r) = self.readings.get_mut(k) {
                r.value = 0.0;
            }
        }
        if let Some(r) = self.readings.get_mut("busy_loop") {
            r.value = 0.0;
        }
    }

    fn breach(&self, monitor: &str, value: String, threshold: String) -> Breach {
        Breach {
            monitor: monitor.into(),
            agent: Some(self.name.clone()),
            value,
            threshold,
        }
    }

    /// Feeds one sample; returns the first threshold crossed.
    pub fn sample(&mut self, s: &Sample, now: Instant) -> Option<Breach> {
        let t = self.t.clone();
        let pids: BTreeSet<i32> = s.pids.iter().copied().collect();
        let mut breach = None;

        if let Some((then, cpu_then, stall_then, pids_then)) = &self.last {
            let dt = now.duration_since(*then).as_secs_f64();
            if dt > 0.0 {
                // CPU demand, in cores, since the last sample: time used plus
                // time spent runnable but waiting, so a busy loop on a
                // contended machine still counts as one.
                if let (Some(a), Some(b)) = (cpu_then, s.cpu_usec) {
                    let stall = match (stall_then, s.cpu_stall_usec) {
                        (Some(x), Some(y)) => y.saturating_sub(*x),
                        _ => 0,
                    };
                    let frac = (b.saturating_sub(*a) + stall) as f64 / 1e6 / dt;
                    self.readings
                        .insert("cpu".into(), reading(frac, t.busy_cpu, "cores"));
                    if frac >= t.busy_cpu {
                        let since = *self.busy_since.get_or_insert(*then);
                        let busy = now.duration_since(since);
                        self.readings.insert(
                            "busy_loop".into(),
                            reading(busy.as_secs_f64(), t.busy_loop.as_secs_f64(), "s"),
                        );
                        if busy >= t.busy_loop && breach.is_none() && t.on("busy_loop") {
                            breach = Some(self.breach(
                                "busy_loop",
                                format!(
                                    "{:.0}% of a core for {}",
                                    frac * 100.0,
                                    humantime::format_duration(Duration::from_secs(busy.as_secs()))
                                ),
                                format!(
                                    "{:.0}% for {}",
                                    t.busy_cpu * 100.0,
                                    humantime::format_duration(t.busy_loop)
                                ),
                            ));
                        }
                    } else {
                        self.busy_since = None;
                        self.readings.insert(
                            "busy_loop".into(),
                            reading(0.0, t.busy_loop.as_secs_f64(), "s"),
                        );
                    }
                }
                // Fork rate: processes that were not there at the last sample.
                let new = pids.difference(pids_then).count() as f64;
                let rate = new / dt;
                self.readings
                    .insert("fork_rate".into(), reading(rate, t.fork_rate, "/s"));
                if rate >= t.fork_rate && breach.is_none() && t.on("fork_rate") {
                    breach = Some(self.breach(
                        "fork_rate",
                        format!("{rate:.0} new processes/s"),
                        format!("{:.0}/s", t.fork_rate),
                    ));
                }
            }
        }
        if let (Some(m), Some(max)) = (s.memory, s.memory_max) {
            let limit = t.memory_halt * max as f64;
            self.readings
                .insert("memory".into(), reading(m as f64, limit, "bytes"));
            if m as f64 >= limit && breach.is_none() && t.on("memory") {
                breach = Some(self.breach(
                    "memory",
                    format!("{} in use", bytesize::ByteSize(m)),
                    format!(
                        "{:.0}% of memory_max {}",
                        t.memory_halt * 100.0,
                        bytesize::ByteSize(max)
                    ),
                ));
            }
        }
        if let Some(max) = s.pids_max {
            let limit = (t.pids_near * max as f64).ceil();
            self.readings.insert(
                "pids".into(),
                reading(pids.len() as f64, limit, "processes"),
            );
            if pids.len() as f64 >= limit && breach.is_none() && t.on("pids") {
                breach = Some(self.breach(
                    "pids",
                    format!("{} processes", pids.len()),
                    format!("{:.0}% of pids_max {max}", t.pids_near * 100.0),
                ));
            }
        }
        for (pid, w) in &s.proc_io {
            let before = self.io_seen.insert(*pid, *w).unwrap_or(0);
            self.io_total += w.saturating_sub(before);
        }
        let live: BTreeSet<i32> = s.proc_io.iter().map(|(p, _)| *p).collect();
        self.io_seen.retain(|p, _| live.contains(p));
        let io_write = match s.io_write {
            Some(c) if c >= self.io_total => Some(c),
            _ if !s.proc_io.is_empty() || self.io_total > 0 => Some(self.io_total),
            other => other,
        };
        if let Some(w) = io_write {
            self.io.push_back((now, w));
            while let Some((at, _)) = self.io.front() {
                if now.duration_since(*at) > t.disk_window {
                    self.io.pop_front();
                } else {
                    break;
                }
            }
            let first = self.io.front().map(|(_, b)| *b).unwrap_or(w);
            let written = w.saturating_sub(first);
            self.readings.insert(
                "disk_write".into(),
                reading(written as f64, t.disk_write as f64, "bytes"),
            );
            if written >= t.disk_write && breach.is_none() && t.on("disk_write") {
                breach = Some(self.breach(
                    "disk_write",
                    format!(
                        "{} written within {}",
                        bytesize::ByteSize(written),
                        humantime::format_duration(t.disk_window)
                    ),
                    format!(
                        "{} per {}",
                        bytesize::ByteSize(t.disk_write),
                        humantime::format_duration(t.disk_window)
                    ),
                ));
            }
        }
        self.last = Some((now, s.cpu_usec, s.cpu_stall_usec, pids));
        breach
    }

    /// An agent reported a task it generated (agent API).
    pub fn task(&mut self, now: Instant) -> Option<Breach> {
        self.tasks.push_back(now);
        while let Some(t) = self.tasks.front() {
            if now.duration_since(*t) > DAY {
                self.tasks.pop_front();
            } else {
                break;
            }
        }
        let n = self.tasks.len() as u32;
        self.readings.insert(
            "tasks".into(),
            reading(n as f64, self.t.tasks_per_day as f64, "per 24h"),
        );
        (n > self.t.tasks_per_day && self.t.on("tasks")).then(|| {
            self.breach(
                "tasks",
                format!("{n} tasks generated within 24h"),
                format!("at most {} per 24h", self.t.tasks_per_day),
            )
        })
    }

    /// The policy engine decided on one of the agent's requests.
    pub fn governance(&mut self, rejected: bool) -> Option<Breach> {
        if rejected {
            self.rejections_in_row += 1;
        } else {
            self.rejections_in_row = 0;
        }
        let n = self.rejections_in_row;
        self.readings.insert(
            "governance".into(),
            reading(
                n as f64,
                self.t.governance_rejections as f64,
                "rejections in a row",
            ),
        );
        (n > self.t.governance_rejections && self.t.on("governance")).then(|| {
            self.breach(
                "governance",
                format!("{n} policy rejections in a row"),
                format!("at most {} in a row", self.t.governance_rejections),
            )
        })
    }
}

/// One sample of the host.
#[derive(Debug, Clone, Default)]
pub struct HostSample {
    /// (path, free bytes) of the filesystems warden writes to.
    pub disk_free: Vec<(String, u64)>,
    pub mem_available: Option<u64>,
    pub load1: Option<f64>,
    pub cores: usize,
}

/// Checks host exhaustion; fills `readings`.
pub fn check_host(
    t: &Thresholds,
    s: &HostSample,
    readings: &mut BTreeMap<String, Reading>,
) -> Option<Breach> {
    let mut breach = None;
    let host = |monitor: &str, value: String, threshold: String| Breach {
        monitor: monitor.into(),
        agent: None,
        value,
        threshold,
    };
    for (path, free) in &s.disk_free {
        readings.insert(
            format!("disk_free:{path}"),
            reading(*free as f64, t.disk_free_min as f64, "bytes"),
        );
        if *free < t.disk_free_min && breach.is_none() && t.on("disk_free") {
            breach = Some(host(
                "disk_free",
                format!("{} free on {path}", bytesize::ByteSize(*free)),
                format!("at least {}", bytesize::ByteSize(t.disk_free_min)),
            ));
        }
    }
    if let Some(m) = s.mem_available {
        readings.insert(
            "host_memory".into(),
            reading(m as f64, t.host_memory_min as f64, "bytes"),
        );
        if m < t.host_memory_min && breach.is_none() && t.on("host_memory") {
            breach = Some(host(
                "host_memory",
                format!("{} available", bytesize::ByteSize(m)),
                format!("at least {}", bytesize::ByteSize(t.host_memory_min)),
            ));
        }
    }
    if let (Some(l), Some(max)) = (s.load1, t.host_load_max) {
        let per_core = l / s.cores.max(1) as f64;
        readings.insert("host_load".into(), reading(per_core, max, "per core"));
        if per_core > max && breach.is_none() && t.on("host_load") {
            breach = Some(host(
                "host_load",
                format!("load {l:.1} on {} cores", s.cores),
                format!("at most {max:.1} per core"),
            ));
        }
    }
    breach
}

/// write_bytes of each process from /proc/PID/io.
pub fn proc_write_bytes(pids: &[i32]) -> Vec<(i32, u64)> {
    pids.iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(format!("/proc/{p}/io")).ok()?;
            let w = text
                .lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))?
                .trim()
                .parse()
                .ok()?;
            Some((*p, w))
        })
        .collect()
}

/// Reads the host sample from /proc and statvfs.
pub fn sample_host(paths: &[&std::path::Path]) -> HostSample {
    let mut disk_free = Vec::new();
    for p in paths {
        if let Ok(v) = nix::sys::statvfs::statvfs(*p) {
            disk_free.push((
                p.display().to_string(),
                v.blocks_available() * v.fragment_size(),
            ));
        }
    }
    let mem_available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    let load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok());
    HostSample {
        disk_free,
        mem_available,
        load1,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::config::Dur;

    fn t() -> Thresholds {
        Thresholds {
            busy_loop: Duration::from_secs(5),
            fork_rate: 50.0,
            disk_write: 1000,
            disk_window: Duration::from_secs(10),
            ..Thresholds::default()
        }
    }

    fn sample(cpu: u64, pids: std::ops::Range<i32>) -> Sample {
        Sample {
            cpu_usec: Some(cpu),
            pids: pids.collect(),
            ..Sample::default()
        }
    }

    #[test]
    fn busy_loop_trips_after_its_duration_and_not_before() {
        let mut w = AgentWatch::new("a", t());
        let t0 = Instant::now();
        assert!(w.sample(&sample(0, 1..2), t0).is_none());
        // 99% of a core for 4 s: under the 5 s threshold.
        for i in 1..=4u64 {
            let b = w.sample(&sample(i * 990_000, 1..2), t0 + Duration::from_secs(i));
            assert!(b.is_none(), "tripped early at {i}s");
        }
        let b = w
            .sample(&sample(5 * 990_000, 1..2), t0 + Duration::from_secs(5))
            .unwrap();
        assert_eq!(b.monitor, "busy_loop");
        assert_eq!(b.agent.as_deref(), Some("a"));
        assert!(b.value.contains("99%"), "{}", b.value);
    }

    #[test]
    fn sleeping_resets_busy_loop() {
        let mut w = AgentWatch::new("a", t());
        let t0 = Instant::now();
        let mut cpu = 0;
        w.sample(&sample(cpu, 1..2), t0);
        for i in 1..=20u64 {
            // Busy 4 s out of every 5: never 5 s in a row.
            cpu += if i % 5 == 0 { 100_000 } else { 1_000_000 };
            assert!(w
                .sample(&sample(cpu, 1..2), t0 + Duration::from_secs(i))
                .is_none());
        }
        // 94% is under the 95% line.
        let mut w = AgentWatch::new("b", t());
        w.sample(&sample(0, 1..2), t0);
        for i in 1..=20u64 {
            assert!(w
                .sample(&sample(i * 940_000, 1..2), t0 + Duration::from_secs(i))
                .is_none());
        }
    }

    #[test]
    fn fork_rate() {
        let mut w = AgentWatch::new("a", t());
        let t0 = Instant::now();
        w.sample(&sample(0, 1..10), t0);
        // 49 new processes in one second: under 50/s.
        assert!(w
            .sample(&sample(0, 1..59), t0 + Duration::from_secs(1))
            .is_none());
        let b = w
            .sample(&sample(0, 100..150), t0 + Duration::from_secs(2))
            .unwrap();
        assert_eq!(b.monitor, "fork_rate");
    }

    #[test]
    fn memory_and_pids_near_limits() {
        let mut w = AgentWatch::new("a", t());
        let now = Instant::now();
        let mut s = Sample {
            memory: Some(89),
            memory_max: Some(100),
            pids: (0..94).collect(),
            pids_max: Some(100),
            ..Sample::default()
        };
        assert!(w.sample(&s, now).is_none());
        s.memory = Some(90);
        assert_eq!(w.sample(&s, now).unwrap().monitor, "memory");
        s.memory = Some(10);
        s.pids = (0..95).collect();
        assert_eq!(
            w.sample(&s, now + Duration::from_secs(100))
                .unwrap()
                .monitor,
            "pids"
        );
        assert_eq!(w.readings["pids"].threshold, 95.0);
    }

    #[test]
    fn disk_write_window() {
        let mut w = AgentWatch::new("a", t());
        let t0 = Instant::now();
        let mut s = Sample {
            io_write: Some(0),
            ..Sample::default()
        };
        w.sample(&s, t0);
        s.io_write = Some(999);
        assert!(w.sample(&s, t0 + Duration::from_secs(5)).is_none());
        // Old writes fall out of the window.
        s.io_write = Some(1500);
        assert!(w.sample(&s, t0 + Duration::from_secs(16)).is_none());
        s.io_write = Some(2500);
        assert_eq!(
            w.sample(&s, t0 + Duration::from_secs(17)).unwrap().monitor,
            "disk_write"
        );
    }

    #[test]
    fn cpu_demand_counts_stall() {
        let mut w = AgentWatch::new("a", t());
        let t0 = Instant::now();
        let s = |cpu, stall| Sample {
            cpu_usec: Some(cpu),
            cpu_stall_usec: Some(stall),
            ..Sample::default()
        };
        w.sample(&s(0, 0), t0);
        // 50 % used, 49 % waiting for a CPU: a busy loop on a contended host.
        w.sample(&s(500_000, 490_000), t0 + Duration::from_secs(1));
        assert!((w.readings["cpu"].value - 0.99).abs() < 1e-9);
    }

    #[test]
    fn proc_io_accumulates_across_exits() {
        let mut w = AgentWatch::new("a", t());
        let t0 = Instant::now();
        let s = |io: Vec<(i32, u64)>| Sample {
            io_write: Some(0),
            proc_io: io,
            ..Sample::default()
        };
        w.sample(&s(vec![(1, 400), (2, 300)]), t0);
        // pid 2 exited: its 300 bytes still count.
        w.sample(&s(vec![(1, 600)]), t0 + Duration::from_secs(1));
        w.sample(&s(vec![(1, 600), (3, 500)]), t0 + Duration::from_secs(2));
        // 700 at the first sample, 1400 at the last: 700 written within the window.
        assert_eq!(w.readings["disk_write"].value, 700.0);
    }

    #[test]
    fn tasks_per_day() {
        let mut w = AgentWatch::new("a", t());
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(w.task(t0 + Duration::from_secs(i)).is_none());
        }
        let b = w.task(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(b.monitor, "tasks");
        assert!(b.value.contains("11 tasks"));
        // A day later the old ones no longer count.
        let mut w = AgentWatch::new("b", t());
        for i in 0..10 {
            w.task(t0 + Duration::from_secs(i));
        }
        assert!(w.task(t0 + DAY + Duration::from_secs(20)).is_none());
    }

    #[test]
    fn governance_rejections_in_a_row() {
        let mut w = AgentWatch::new("a", t());
        for _ in 0..3 {
            assert!(w.governance(true).is_none());
        }
        // An accepted request resets the run.
        assert!(w.governance(false).is_none());
        for _ in 0..3 {
            assert!(w.governance(true).is_none());
        }
        let b = w.governance(true).unwrap();
        assert_eq!(b.monitor, "governance");
        assert!(b.value.contains("4 policy rejections"));
    }

    #[test]
    fn host_exhaustion() {
        let th = Thresholds {
            host_load_max: Some(8.0),
            ..Thresholds::default()
        };
        let mut rd = BTreeMap::new();
        let ok = HostSample {
            disk_free: vec![("/var".into(), 1 << 30)],
            mem_available: Some(1 << 30),
            load1: Some(1.0),
            cores: 2,
        };
        assert!(check_host(&th, &ok, &mut rd).is_none());
        let mut s = ok.clone();
        s.disk_free[0].1 = 1 << 20;
        assert_eq!(check_host(&th, &s, &mut rd).unwrap().monitor, "disk_free");
        let mut s = ok.clone();
        s.mem_available = Some(1 << 20);
        assert_eq!(check_host(&th, &s, &mut rd).unwrap().monitor, "host_memory");
        let mut s = ok;
        s.load1 = Some(17.0);
        assert_eq!(check_host(&th, &s, &mut rd).unwrap().monitor, "host_load");
    }

    #[test]
    fn layered_thresholds_and_validation() {
        let global = LimitsConfig {
            busy_loop: Some(Dur(Duration::from_secs(30))),
            fork_rate: Some(10.0),
            ..Default::default()
        };
        let agent = LimitsConfig {
            fork_rate: Some(20.0),
            ..Default::default()
        };
        let t = Thresholds::resolve(&[&global, &agent]);
        assert_eq!(t.busy_loop, Duration::from_secs(30));
        assert_eq!(t.fork_rate, 20.0);
        assert_eq!(t.tasks_per_day, 10);
        let off = LimitsConfig {
            disable: vec!["pids".into()],
            ..Default::default()
        };
        let t2 = Thresholds::resolve(&[&global, &off]);
        assert!(!t2.on("pids") && t2.on("memory"));
        let mut w = AgentWatch::new("a", t2);
        let s = Sample {
            pids: (0..100).collect(),
            pids_max: Some(100),
            ..Sample::default()
        };
        assert!(w.sample(&s, Instant::now()).is_none());
        let unknown = LimitsConfig {
            disable: vec!["naps".into()],
            ..Default::default()
        };
        assert!(Thresholds::validate(&unknown).unwrap_err().contains("naps"));
        let bad = LimitsConfig {
            busy_cpu: Some(1.5),
            ..Default::default()
        };
        assert!(Thresholds::validate(&bad).unwrap_err().contains("busy_cpu"));
    }
}
