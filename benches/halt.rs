//! Halt benchmark (needs root and a hybrid or v2 host with
//! `/sys/fs/cgroup/unified`): how fast the real daemon takes hostile process
//! trees down once the stop file appears, against the kernel's own floor
//! (`cgroup.kill` on a bare cgroup holding the same processes), and what the
//! daemon costs while it watches 50 agents.
//!
//! Everything is measured from outside, without touching the daemon: a
//! monotonic timestamp right before the stop file is created, then a blocking
//! `poll` on an inotify watch (IN_MODIFY, IN_DELETE_SELF/IN_IGNORED) of
//! `<unified>/<root>/agents/cgroup.events`, recording the first `frozen 1` and
//! the `populated 0`. The floor uses the same watch on its own cgroup, from the
//! write of "1" to `cgroup.kill`. The daemon's own phase timings come from
//! `status` (`last_halt.timings`).
//!
//! `cargo bench --bench halt` (as root). `HALT_BENCH_REPS=N` changes the number
//! of runs per workload (default 5). The report is printed and written to
//! `target/bench-halt.md`; see docs/benchmarks.md.
//!
//! Nothing is left behind: the daemons run under the test harness's `Env`
//! (its Drop kills the daemon and scrubs its cgroups), the floor cgroup has a
//! Drop guard of its own, and a panic hook and a SIGINT/SIGTERM/SIGHUP thread
//! clean up the same things by pid and by cgroup, never by process name.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{agent, workload, Env};
use inotify::{EventMask, Inotify, WatchMask};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const UNIFIED: &str = "/sys/fs/cgroup/unified";
const PIDS_V1: &str = "/sys/fs/cgroup/pids";
/// The environment variable the harness marks workloads with.
const MARK_VAR: &str = "WARDEN_TEST_MARK";
/// Longest wait for any one halt or kill to finish.
const HALT_TIMEOUT: Duration = Duration::from_secs(60);
/// Window of the idle-CPU measurement.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

// Targets.
const TARGET_FLOOR_RATIO: f64 = 1.1;
const TARGET_FROZEN_MS: f64 = 5.0;
const TARGET_RSS_KIB: u64 = 8 * 1024;
const TARGET_IDLE_CPU_PCT: f64 = 0.1;

/// One benchmark workload: `agents` agents, each running `script` with `{N}` = `n`.
struct Workload {
    label: &'static str,
    script: &'static str,
    n: usize,
    agents: usize,
    pids_max: Option<u64>,
    /// Processes (all agents together) to wait for before the trigger.
    expect: usize,
    /// Pause after `expect` is reached, so spawning is over (0: trigger at once).
    settle: Duration,
    /// Monitors disabled because they would halt the agents on their own
    /// before the stop file does (fork rate, pids near pids_max, and the host
    /// load, which this bench's own fork bomb drives up).
    disable: &'static [&'static str],
    /// Measure the daemon's RSS and idle CPU with this workload up.
    footprint: bool,
    reps: usize,
}

const QUIET: &[&str] = &["fork_rate", "pids", "host_load"];

fn workloads(reps: usize) -> Vec<Workload> {
    let ms = Duration::from_millis;
    vec![
        Workload {
            label: "cooperative tree (sh + 99 sleep)",
            script: workload::COOPERATIVE,
            n: 99,
            agents: 1,
            pids_max: None,
            expect: 100,
            settle: ms(300),
            disable: QUIET,
            footprint: false,
            reps,
        },
        Workload {
            label: "TERM-ignoring tree (sh + 99 sleep)",
            script: workload::TERM_IGNORING,
            n: 99,
            agents: 1,
            pids_max: None,
            expect: 100,
            settle: ms(300),
            disable: QUIET,
            footprint: false,
            reps,
        },
        Workload {
            label: "setsid escapees, TERM-ignoring (99)",
            script: workload::ESCAPEES,
            n: 99,
            agents: 1,
            pids_max: None,
            expect: 100,
            settle: ms(300),
            disable: QUIET,
            footprint: false,
            reps,
        },
        Workload {
            label: "respawner, new pgrps (pids_max 100, halted at >= 80)",
            script: workload::RESPAWNER,
            n: 0,
            agents: 1,
            pids_max: Some(100),
            expect: 80,
            settle: Duration::ZERO,
            disable: QUIET,
            footprint: false,
            reps,
        },
        Workload {
            label: "python fork bomb (pids_max 200)",
            script: workload::FORK_BOMB,
            n: 0,
            agents: 1,
            pids_max: Some(200),
            expect: 195,
            settle: ms(300),
            disable: QUIET,
            footprint: false,
            reps,
        },
        Workload {
            label: "50 agents x (sh + 19 sleep) = 1,000",
            script: workload::COOPERATIVE,
            n: 19,
            agents: 50,
            pids_max: None,
            expect: 1000,
            settle: ms(1000),
            disable: &["host_load"],
            footprint: true,
            reps,
        },
    ]
}

// ---------------------------------------------------------------------------
// Cleanup on panic and on signals: a registry of what is running.

#[derive(Clone)]
enum Leftover {
    /// A daemon of the harness: its pid, cgroup root and marker.
    Daemon {
        pid: i32,
        root: String,
        marker: String,
        dir: PathBuf,
    },
    /// The floor's cgroup directories and marker.
    Floor { dirs: Vec<PathBuf>, marker: String },
}

static REGISTRY: Mutex<Vec<(u32, Leftover)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Removes its entry from the registry when dropped (the owner's own Drop
/// does the normal cleanup).
struct Registered(u32);

fn register(l: Leftover) -> Registered {
    let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
    REGISTRY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id, l));
    Registered(id)
}

impl Drop for Registered {
    fn drop(&mut self) {
        REGISTRY
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _)| *id != self.0);
    }
}

/// Kills and removes everything registered: daemons by pid, processes by
/// cgroup, then anything still carrying a marker, by pid.
fn emergency_cleanup() {
    let items: Vec<Leftover> = match REGISTRY.try_lock() {
        Ok(g) => g.iter().map(|(_, l)| l.clone()).collect(),
        Err(std::sync::TryLockError::Poisoned(p)) => {
            p.into_inner().iter().map(|(_, l)| l.clone()).collect()
        }
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    for l in items {
        match l {
            Leftover::Daemon {
                pid,
                root,
                marker,
                dir,
            } => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                std::thread::sleep(Duration::from_millis(50));
                for d in common::cgroup_dirs(&root) {
                    scrub(&d);
                }
                kill_marked(&marker);
                unlock(&dir);
                let _ = std::fs::remove_dir_all(&dir);
            }
            Leftover::Floor { dirs, marker } => {
                for d in &dirs {
                    scrub(d);
                }
                kill_marked(&marker);
            }
        }
    }
}

/// Clears the append-only attribute the daemon sets on its safety log, so
/// the harness's temporary directory can be removed.
fn unlock(dir: &Path) {
    let _ = Command::new("chattr")
        .arg("-R")
        .arg("-a")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `unlock` before the `Env` declared ahead of it is dropped.
struct Unlock(PathBuf);

impl Drop for Unlock {
    fn drop(&mut self) {
        unlock(&self.0);
    }
}

fn kill_marked(marker: &str) {
    for pid in common::marked_pids(marker) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Kills everything in the cgroup directory `dir` and removes it, depth first.
fn scrub(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                scrub(&e.path());
            }
        }
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
    let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
    if let Ok(p) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in p.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    for _ in 0..300 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGINT/SIGTERM/SIGHUP: clean up, then exit. Handlers (not a blocked mask,
/// which children would inherit) on a thread of their own.
fn install_cleanup_handlers() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("signal runtime");
        rt.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
            let _ = tx.send(());
            let sig = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
                _ = hup.recv() => "SIGHUP",
            };
            eprintln!("\nhalt bench: {sig}, cleaning up");
            emergency_cleanup();
            std::process::exit(130);
        });
    });
    rx.recv().expect("signal handlers installed");
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        emergency_cleanup();
    }));
}

// ---------------------------------------------------------------------------
// Measurement.

/// What the watch saw, from the trigger.
#[derive(Debug, Default, Clone)]
struct Watch {
    /// How long the trigger itself took (the write to `cgroup.kill`, ...).
    trigger: Duration,
    frozen: Option<Duration>,
    empty: Option<Duration>,
}

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Watches `events` (a `cgroup.events`) with inotify, takes a monotonic
/// timestamp, runs `trigger`, then blocks in `poll` and records when the file
/// first said `frozen 1` and when it said `populated 0` (or went away). `at_frozen`
/// runs once when `frozen 1` is first seen (the floor's own ladder).
fn watch(events: &Path, trigger: impl FnOnce(), at_frozen: Option<&dyn Fn()>) -> Watch {
    let mut ino = Inotify::init().expect("inotify_init");
    ino.watches()
        .add(events, WatchMask::MODIFY | WatchMask::DELETE_SELF)
        .unwrap_or_else(|e| panic!("cannot watch {}: {e}", events.display()));
    let mut buf = [0u8; 4096];
    let mut w = Watch::default();
    let t0 = Instant::now();
    trigger();
    w.trigger = t0.elapsed();
    let deadline = t0 + HALT_TIMEOUT;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let left =
            nix::poll::PollTimeout::try_from(deadline - now).unwrap_or(nix::poll::PollTimeout::MAX);
        let mut fds = [nix::poll::PollFd::new(
            ino.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, left) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => panic!("poll: {e}"),
        }
        let woke = t0.elapsed();
        let mut gone = false;
        match ino.read_events(&mut buf) {
            Ok(evs) => {
                for e in evs {
                    gone |= e
                        .mask
                        .intersects(EventMask::IGNORED | EventMask::DELETE_SELF);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("inotify read: {e}"),
        }
        let text = match std::fs::read_to_string(events) {
            Ok(t) => t,
            Err(_) => {
                gone = true;
                String::new()
            }
        };
        if w.frozen.is_none() && keyed(&text, "frozen") == Some(1) {
            w.frozen = Some(woke);
            if let Some(f) = at_frozen {
                f();
                continue;
            }
        }
        if gone || keyed(&text, "populated") == Some(0) {
            w.empty = Some(woke);
            break;
        }
    }
    w
}

fn state_of(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Live (not zombie) processes that carry `marker` or sit in a cgroup whose
/// path contains `needle`.
fn live_ours(marker: &str, needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut v = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let marked = std::fs::read(format!("/proc/{pid}/environ"))
            .map(|b| String::from_utf8_lossy(&b).contains(marker))
            .unwrap_or(false);
        let inside = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|c| c.contains(needle))
            .unwrap_or(false);
        if (marked || inside) && !matches!(state_of(pid), Some('Z' | 'X') | None) {
            v.push(pid);
        }
    }
    v
}

/// Survivors: like `Env::assert_nothing_left`, what is still there after 2 s.
fn survivors(marker: &str, needle: &str) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let v = live_ours(marker, needle);
        if v.is_empty() || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_count(what: &str, n: usize, timeout: Duration, mut count: impl FnMut() -> usize) {
    let deadline = Instant::now() + timeout;
    loop {
        let c = count();
        if c >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} processes of {what} (have {c})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon's phase timings of one halt, milliseconds from the trigger seen.
#[derive(Debug, Default, Clone)]
struct Phases {
    freeze_requested: f64,
    frozen: f64,
    evidence: f64,
    killed: f64,
    empty: f64,
    processes: usize,
    survivors: usize,
}

/// One measured halt.
#[derive(Debug, Default, Clone)]
struct Run {
    /// Processes counted just before the trigger.
    procs: usize,
    watch: Watch,
    survivors: usize,
    phases: Option<Phases>,
    /// Floor only: the kernel's ladder on the same tree, without warden
    /// (freeze; at `frozen 1`, kill and thaw; until `populated 0`).
    freeze: Option<Watch>,
}

/// Nanoseconds on CPU of every thread of `pid` (schedstat's first field), by tid.
fn cpu_ns_by_task(pid: i32) -> Vec<(i32, u64)> {
    let mut v = vec![];
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(ns) = std::fs::read_to_string(e.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        {
            v.push((tid, ns));
        }
    }
    v
}

fn cpu_delta_ns(before: &[(i32, u64)], after: &[(i32, u64)]) -> u64 {
    after
        .iter()
        .map(|(tid, ns)| {
            let b = before
                .iter()
                .find(|(t, _)| t == tid)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            ns.saturating_sub(b)
        })
        .sum()
}

fn status_kib(pid: i32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| {
        l.strip_prefix(key)?
            .trim_start_matches(':')
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

#[derive(Debug, Default, Clone)]
struct Footprint {
    agents: usize,
    procs: usize,
    daemon_rss: u64,
    daemon_anon: u64,
    daemon_file: u64,
    daemon_threads: usize,
    guard_rss: u64,
    daemon_cpu_pct: f64,
    guard_cpu_pct: f64,
    window: Duration,
    /// (halts, VmRSS, RssAnon) at the end, after every run's halt.
    after: Option<(usize, u64, u64)>,
}

/// RSS and idle CPU of the daemon and its guard, with the agents up and
/// nothing talking to the daemon.
fn footprint(env: &Env, agents: usize) -> Footprint {
    let daemon = env.daemon_pid();
    let guard = env.status()["daemon"]["kernel_pid"]
        .as_i64()
        .expect("kernel_pid in status") as i32;
    // Let the status call and the spawns settle.
    std::thread::sleep(Duration::from_secs(2));
    let procs = env.marked_pids().len();
    std::thread::sleep(Duration::from_millis(500));
    let (d0, g0, t0) = (
        cpu_ns_by_task(daemon),
        cpu_ns_by_task(guard),
        Instant::now(),
    );
    std::thread::sleep(IDLE_WINDOW);
    let (d1, g1, window) = (cpu_ns_by_task(daemon), cpu_ns_by_task(guard), t0.elapsed());
    let pct = |ns: u64| ns as f64 / window.as_nanos() as f64 * 100.0;
    Footprint {
        agents,
        procs,
        daemon_rss: status_kib(daemon, "VmRSS").unwrap_or(0),
        daemon_anon: status_kib(daemon, "RssAnon").unwrap_or(0),
        daemon_file: status_kib(daemon, "RssFile").unwrap_or(0),
        daemon_threads: d1.len(),
        guard_rss: status_kib(guard, "VmRSS").unwrap_or(0),
        daemon_cpu_pct: pct(cpu_delta_ns(&d0, &d1)),
        guard_cpu_pct: pct(cpu_delta_ns(&g0, &g1)),
        window,
        after: None,
    }
}

// ---------------------------------------------------------------------------
// The floor: the same processes in a bare cgroup, killed with `cgroup.kill`.

struct Floor {
    name: String,
    marker: String,
    unified: PathBuf,
    pids: PathBuf,
    children: Vec<Child>,
    /// Every tree gets fresh child cgroups: killed processes that are not
    /// reaped yet (escapees wait for init) still count against pids.max.
    seq: u32,
    dirs: Vec<PathBuf>,
    _reg: Registered,
}

impl Floor {
    fn new() -> Floor {
        let name = format!("warden-bench-floor-{}", std::process::id());
        let marker = common::marker();
        let unified = Path::new(UNIFIED).join(&name);
        let pids = Path::new(PIDS_V1).join(&name);
        let reg = register(Leftover::Floor {
            dirs: vec![unified.clone(), pids.clone()],
            marker: marker.clone(),
        });
        std::fs::create_dir(&unified)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", unified.display()));
        std::fs::create_dir(&pids).unwrap_or_else(|e| panic!("mkdir {}: {e}", pids.display()));
        Floor {
            name,
            marker,
            unified,
            pids,
            children: Vec::new(),
            seq: 0,
            dirs: Vec::new(),
            _reg: reg,
        }
    }

    fn count(&self) -> usize {
        std::fs::read_dir(&self.unified)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| {
                std::fs::read_to_string(e.path().join("cgroup.procs"))
                    .map(|s| s.lines().count())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Starts the workload in fresh `F/tSEQ-aI` cgroups (unified and pids)
    /// and waits for it.
    fn start(&mut self, w: &Workload) -> usize {
        self.seq += 1;
        for i in 0..w.agents {
            let u = self.unified.join(format!("t{}-a{i}", self.seq));
            let p = self.pids.join(format!("t{}-a{i}", self.seq));
            for d in [&u, &p] {
                std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
                self.dirs.push(d.clone());
            }
            let max = w.pids_max.map_or("max".to_string(), |m| m.to_string());
            std::fs::write(p.join("pids.max"), &max).expect("pids.max");
            // Join both cgroups, then the very same `sh -c SCRIPT` the daemon runs.
            let join = format!(
                "echo 0 > {}/cgroup.procs && echo 0 > {}/cgroup.procs && exec /bin/sh -c \"$0\"",
                u.display(),
                p.display()
            );
            let child = Command::new("/bin/sh")
                .arg("-c")
                .arg(join)
                .arg(w.script.replace("{N}", &w.n.to_string()))
                .env(MARK_VAR, &self.marker)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn floor workload");
            self.children.push(child);
        }
        wait_count(w.label, w.expect, Duration::from_secs(60), || self.count());
        std::thread::sleep(w.settle);
        self.count()
    }

    /// Reaps the workload's shells and counts survivors.
    fn reap(&mut self) -> usize {
        for mut c in self.children.drain(..) {
            let _ = c.wait();
        }
        let n = survivors(&self.marker, &format!("/{}/", self.name)).len();
        for d in self.dirs.drain(..) {
            scrub(&d);
        }
        n
    }

    /// Two floors for the workload, each on a fresh tree: the kernel's ladder
    /// alone (freeze, and at `frozen 1` kill and thaw, until `populated 0`,
    /// returned as `freeze`), then `cgroup.kill` alone (returned as `watch`).
    fn run(&mut self, w: &Workload) -> Run {
        let events = self.unified.join("cgroup.events");
        let kill_file = self.unified.join("cgroup.kill");
        let freeze_file = self.unified.join("cgroup.freeze");
        self.start(w);
        let kill_and_thaw = || {
            std::fs::write(&kill_file, "1").expect("cgroup.kill");
            std::fs::write(&freeze_file, "0").expect("thaw");
        };
        let ladder = watch(
            &events,
            || std::fs::write(&freeze_file, "1").expect("cgroup.freeze"),
            Some(&kill_and_thaw),
        );
        let mut survivors = self.reap();
        // The next tree must not start frozen (the ladder thawed it unless
        // `frozen 1` was never seen).
        let _ = std::fs::write(&freeze_file, "0");
        let procs = self.start(w);
        let watch = watch(
            &events,
            || std::fs::write(&kill_file, "1").expect("cgroup.kill"),
            None,
        );
        survivors += self.reap();
        Run {
            procs,
            watch,
            survivors,
            phases: None,
            freeze: Some(ladder),
        }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = std::fs::write(self.unified.join("cgroup.kill"), "1");
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        scrub(&self.unified);
        scrub(&self.pids);
        kill_marked(&self.marker);
    }
}

// ---------------------------------------------------------------------------
// warden.

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn phases_of(h: &Value) -> Phases {
    let t = &h["timings"];
    let f = |k: &str| t[k].as_u64().unwrap_or(0) as f64 / 1000.0;
    Phases {
        freeze_requested: f("freeze_requested_us"),
        frozen: f("frozen_us"),
        evidence: f("evidence_us"),
        killed: f("killed_us"),
        empty: f("empty_us"),
        processes: h["processes"].as_u64().unwrap_or(0) as usize,
        survivors: h["survivors"].as_array().map_or(0, |a| a.len()),
    }
}

struct Results {
    warden: Vec<Run>,
    floor: Vec<Run>,
    footprint: Option<Footprint>,
    load_before: String,
}

/// Starts a daemon with the workload, then `reps` times: wait for the
/// processes, create the stop file and time the halt (then the floor with
/// the same processes), remove the stop file and resume.
fn bench(w: &Workload, floor: &mut Floor) -> Results {
    let extra = w
        .pids_max
        .map_or(String::new(), |m| format!("pids_max = {m}"));
    let agents: String = (0..w.agents)
        .map(|i| agent(&format!("a{i:02}"), w.script, w.n, &extra))
        .collect();
    let top = format!(
        "[limits]\ndisable = [{}]",
        w.disable
            .iter()
            .map(|m| format!("{m:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let load_before = loadavg();
    let mut env = Env::new(&top, &agents);
    env.start();
    let _reg = register(Leftover::Daemon {
        pid: env.daemon_pid(),
        root: env.root.clone(),
        marker: env.marker.clone(),
        dir: env.dir.path().to_path_buf(),
    });
    let _unlock = Unlock(env.dir.path().to_path_buf());
    let events = Path::new(UNIFIED)
        .join(env.root.trim_start_matches('/'))
        .join("agents/cgroup.events");
    let needle = format!("{}/", env.root);
    let mut out = Results {
        warden: vec![],
        floor: vec![],
        footprint: None,
        load_before,
    };
    let mut last_id = Value::Null;
    for rep in 0..w.reps {
        if rep > 0 {
            std::fs::remove_file(env.stop_file()).expect("remove stop file");
            let (code, o, e) = env.cli(&["resume", "--reason", "halt benchmark"]);
            assert_eq!(code, 0, "resume failed: {o}{e}\n{}", env.stderr());
        }
        wait_count(w.label, w.expect, Duration::from_secs(60), || {
            env.marked_pids().len()
        });
        if w.footprint && out.footprint.is_none() {
            out.footprint = Some(footprint(&env, w.agents));
        }
        std::thread::sleep(w.settle);
        let procs = env.marked_pids().len();
        let stop = env.stop_file();
        let watch = watch(
            &events,
            || std::fs::write(&stop, b"").expect("create stop file"),
            None,
        );
        let surv = survivors(&env.marker, &needle);
        // The daemon answers once the halt is sealed.
        let deadline = Instant::now() + HALT_TIMEOUT;
        let h = loop {
            let h = env.status()["last_halt"].clone();
            if !h.is_null() && h["id"] != last_id {
                break h;
            }
            assert!(
                Instant::now() < deadline,
                "no halt report\n{}",
                env.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        last_id = h["id"].clone();
        assert_eq!(
            h["trigger"],
            "stop_file",
            "unexpected halt: {} ({})\n{}",
            h["trigger"],
            h["reason"],
            tail(&env.stderr())
        );
        out.warden.push(Run {
            procs,
            watch,
            survivors: surv.len(),
            phases: Some(phases_of(&h)),
            freeze: None,
        });
        eprintln!(
            "  warden run {}: {} procs, frozen {:?}, empty {:?}, survivors {}",
            rep + 1,
            procs,
            out.warden.last().unwrap().watch.frozen.map(ms),
            out.warden.last().unwrap().watch.empty.map(ms),
            surv.len()
        );
        let f = floor.run(w);
        eprintln!(
            "  floor  run {}: {} procs, empty {:?}, survivors {}",
            rep + 1,
            f.procs,
            f.watch.empty.map(ms),
            f.survivors
        );
        out.floor.push(f);
    }
    if let Some(f) = out.footprint.as_mut() {
        let pid = env.daemon_pid();
        f.after = Some((
            w.reps,
            status_kib(pid, "VmRSS").unwrap_or(0),
            status_kib(pid, "RssAnon").unwrap_or(0),
        ));
    }
    stop_daemon(&mut env);
    out
}

/// SIGTERM, then wait for a clean exit; a daemon that does not exit is
/// reported (its Drop kills it) but does not spoil the measurements.
fn stop_daemon(env: &mut Env) {
    env.signal(Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    let child = env.daemon.as_mut().expect("daemon");
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => {
                env.daemon = None;
                return;
            }
            Ok(Some(st)) => {
                eprintln!("WARNING: daemon exited with {st}\n{}", tail(&env.stderr()));
                env.daemon = None;
                return;
            }
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                eprintln!(
                    "WARNING: daemon did not exit within 30 s of SIGTERM; killing it\n{}",
                    tail(&env.stderr())
                );
                return;
            }
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

// ---------------------------------------------------------------------------
// Report.

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn max(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::max)
}

fn fmt_ms(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.1}"))
}

fn med_max(v: &[f64]) -> String {
    format!("{} / {}", fmt_ms(median(v)), fmt_ms(max(v)))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn first_load(s: &str) -> f64 {
    s.split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0.0)
}

/// The commit the binary was built from, and whether `src/` had changes on top.
fn source_version() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no", "--", "src"])
                .is_some_and(|s| !s.is_empty());
            format!(
                "commit {head}{}",
                if dirty {
                    " with uncommitted changes in src/"
                } else {
                    ""
                }
            )
        }
        None => "an unknown commit".into(),
    }
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

fn report(ws: &[Workload], rs: &[Results], load_start: &str, took: Duration) -> String {
    let mut o = String::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let layout = if Path::new(PIDS_V1).exists() {
        "hybrid (v1 controllers + cgroup2 `unified`)"
    } else {
        "v2"
    };
    let _ = writeln!(o, "## warden halt benchmark\n");
    let _ = writeln!(
        o,
        "Binary: `{}` built from {}.\n",
        common::bin(),
        source_version()
    );
    let _ = writeln!(
        o,
        "Host: {cores} cores, kernel {}, cgroups {layout}. Load average (1/5/15 min) at start {load_start}, at end {}. Bench took {:.0} s.\n",
        kernel.trim(),
        loadavg(),
        took.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "Times in ms, median / max over the runs. *stop → frozen* and *stop → empty*: from a monotonic timestamp taken right before the stop file is created to the inotify wake-up on the agents' `cgroup.events` that shows `frozen 1` / `populated 0`. *floor*: the same processes (same scripts, same `sh -c`) in a bare cgroup `unified/warden-bench-floor-PID` (plus a v1 pids cgroup for pids_max), from the write of `1` to its `cgroup.kill` to `populated 0`, same watch; *warden / floor* compares the medians. *kernel ladder*: warden's ladder without warden on a fresh tree in that cgroup: write `1` to `cgroup.freeze`, at `frozen 1` write `cgroup.kill` and thaw, until `populated 0`. *load 1m*: the 1-minute load average before the workload (it includes this bench's own earlier workloads: the fork bomb drives it up). Survivors: live processes still carrying the run's marker or in its cgroups 2 s after `populated 0` (warden / floor, all runs), plus those the daemon reported.\n"
    );
    let _ = writeln!(
        o,
        "Monitors that would halt the agents on their own before the stop file does are disabled: {}.\n",
        ws.iter()
            .map(|w| format!("{}: {}", w.label, w.disable.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        o,
        "| workload | procs | runs | load 1m | stop → frozen | stop → empty | floor: kill → empty | warden / floor | kernel ladder → empty | survivors |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (w, r) in ws.iter().zip(rs) {
        let fz: Vec<f64> = r
            .warden
            .iter()
            .filter_map(|x| x.watch.frozen.map(ms))
            .collect();
        let em: Vec<f64> = r
            .warden
            .iter()
            .filter_map(|x| x.watch.empty.map(ms))
            .collect();
        let fl: Vec<f64> = r
            .floor
            .iter()
            .filter_map(|x| x.watch.empty.map(ms))
            .collect();
        let lad: Vec<f64> = r
            .floor
            .iter()
            .filter_map(|x| x.freeze.as_ref()?.empty.map(ms))
            .collect();
        let procs: Vec<f64> = r.warden.iter().map(|x| x.procs as f64).collect();
        let ratio = match (median(&em), median(&fl)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        let sw: usize = r.warden.iter().map(|x| x.survivors).sum();
        let sd: usize = r
            .warden
            .iter()
            .filter_map(|x| x.phases.as_ref().map(|p| p.survivors))
            .sum();
        let sf: usize = r.floor.iter().map(|x| x.survivors).sum();
        let missing = r.warden.iter().filter(|x| x.watch.empty.is_none()).count()
            + r.floor.iter().filter(|x| x.watch.empty.is_none()).count();
        let _ = writeln!(
            o,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {sw} / {sf} (daemon: {sd}){} |",
            w.label,
            median(&procs).unwrap_or(0.0),
            r.warden.len(),
            r.load_before.split_whitespace().next().unwrap_or("?"),
            med_max(&fz),
            med_max(&em),
            med_max(&fl),
            ratio,
            med_max(&lad),
            if missing > 0 {
                format!(", {missing} runs never empty")
            } else {
                String::new()
            }
        );
    }

    let _ = writeln!(
        o,
        "\nThe daemon's own phase timings (`warden status --json` → `last_halt.timings`), median ms from the moment its loop saw the trigger (its `t0`). *seen* ≈ (stop → frozen) − `frozen_us`: stop-file creation to the daemon's `t0` (its inotify wake-up and stop-file check). *late* ≈ `empty_us` + *seen* − (stop → empty): how much later than the external watch the daemon itself noticed `populated 0`. For comparison, *floor freeze*: the kernel ladder's write of `1` to `cgroup.freeze` (how long the write took / until `frozen 1`), and *floor kill write*: how long the floor's write of `1` to `cgroup.kill` took. *seen* is median / max, the rest medians.\n"
    );
    let _ = writeln!(
        o,
        "| workload | captured | seen | freeze requested | frozen | evidence | killed | empty | late | floor freeze | floor kill write |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (w, r) in ws.iter().zip(rs) {
        let ph: Vec<(&Phases, &Watch)> = r
            .warden
            .iter()
            .filter_map(|x| x.phases.as_ref().map(|p| (p, &x.watch)))
            .collect();
        let col = |f: &dyn Fn(&Phases) -> f64| {
            fmt_ms(median(&ph.iter().map(|(p, _)| f(p)).collect::<Vec<_>>()))
        };
        let seen_of = |p: &Phases, w: &Watch| w.frozen.map(|f| ms(f) - p.frozen);
        let seen: Vec<f64> = ph.iter().filter_map(|(p, w)| seen_of(p, w)).collect();
        let late: Vec<f64> = ph
            .iter()
            .filter_map(|(p, w)| Some(p.empty + seen_of(p, w)? - ms(w.empty?)))
            .collect();
        let captured: Vec<f64> = ph.iter().map(|(p, _)| p.processes as f64).collect();
        let ffz: Vec<f64> = r
            .floor
            .iter()
            .filter_map(|x| x.freeze.as_ref()?.frozen.map(ms))
            .collect();
        let fkw: Vec<f64> = r.floor.iter().map(|x| ms(x.watch.trigger)).collect();
        let ffw: Vec<f64> = r
            .floor
            .iter()
            .filter_map(|x| x.freeze.as_ref().map(|f| ms(f.trigger)))
            .collect();
        let _ = writeln!(
            o,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
            w.label,
            median(&captured).unwrap_or(0.0),
            med_max(&seen),
            col(&|p| p.freeze_requested),
            col(&|p| p.frozen),
            col(&|p| p.evidence),
            col(&|p| p.killed),
            col(&|p| p.empty),
            fmt_ms(median(&late)),
            fmt_ms(median(&ffw)),
            fmt_ms(median(&ffz)),
            fmt_ms(median(&fkw)),
        );
    }

    let fp = rs.iter().find_map(|r| r.footprint.clone());
    if let Some(f) = &fp {
        let _ = writeln!(
            o,
            "\nFootprint with {} agents and {} processes up, nothing talking to the daemon: RSS from `/proc/PID/status`, CPU from `/proc/PID/task/*/schedstat` over {:.1} s.\n",
            f.agents,
            f.procs,
            f.window.as_secs_f64()
        );
        let _ = writeln!(
            o,
            "| process | VmRSS | RssAnon | RssFile | threads | CPU (% of one core) |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            o,
            "| daemon | {} KiB | {} KiB | {} KiB | {} | {:.3} % |",
            f.daemon_rss, f.daemon_anon, f.daemon_file, f.daemon_threads, f.daemon_cpu_pct
        );
        let _ = writeln!(
            o,
            "| safety kernel (`warden kernel`) | {} KiB | | | | {:.3} % |",
            f.guard_rss, f.guard_cpu_pct
        );
        if let Some((n, rss, anon)) = f.after {
            let _ = writeln!(
                o,
                "| daemon, after {n} halts of these {} processes (not a target) | {rss} KiB | {anon} KiB | | | |",
                f.procs
            );
        }
    }

    let _ = writeln!(o, "\nTargets:\n");
    let total_surv: usize = rs
        .iter()
        .flat_map(|r| r.warden.iter().chain(r.floor.iter()))
        .map(|x| x.survivors + x.phases.as_ref().map_or(0, |p| p.survivors))
        .sum();
    let never_empty = rs
        .iter()
        .flat_map(|r| r.warden.iter())
        .filter(|x| x.watch.empty.is_none())
        .count();
    let _ = writeln!(
        o,
        "- {} zero survivors in every workload ({total_surv} survivors, {never_empty} halts that never reported empty)",
        pass(total_surv == 0 && never_empty == 0)
    );
    for (w, r) in ws.iter().zip(rs).filter(|(w, _)| w.expect >= 1000) {
        let em: Vec<f64> = r
            .warden
            .iter()
            .filter_map(|x| x.watch.empty.map(ms))
            .collect();
        let fl: Vec<f64> = r
            .floor
            .iter()
            .filter_map(|x| x.watch.empty.map(ms))
            .collect();
        let (ok, text) = match (median(&em), median(&fl)) {
            (Some(a), Some(b)) => (
                a <= TARGET_FLOOR_RATIO * b,
                format!("{a:.1} ms vs floor {b:.1} ms = {:.2}x", a / b),
            ),
            _ => (false, "not measured".into()),
        };
        let _ = writeln!(
            o,
            "- {} hard halt of {} processes within {TARGET_FLOOR_RATIO}x the floor (median): {text} [{}]",
            pass(ok),
            w.expect,
            w.label
        );
    }
    for (w, r) in ws.iter().zip(rs) {
        let fz: Vec<f64> = r
            .warden
            .iter()
            .filter_map(|x| x.watch.frozen.map(ms))
            .collect();
        let unseen = r.warden.len() - fz.len();
        let worst = max(&fz);
        let ok = unseen == 0 && worst.is_some_and(|m| m <= TARGET_FROZEN_MS);
        let _ = writeln!(
            o,
            "- {} stop file → frozen within {TARGET_FROZEN_MS} ms, every run: median {} ms, max {} ms{} [{}]",
            pass(ok),
            fmt_ms(median(&fz)),
            fmt_ms(worst),
            if unseen > 0 {
                format!(", `frozen 1` never seen in {unseen} runs")
            } else {
                String::new()
            },
            w.label
        );
    }
    match &fp {
        Some(f) => {
            let _ = writeln!(
                o,
                "- {} daemon RSS under {} MiB with {} agents: {:.1} MiB (guard {:.1} MiB more)",
                pass(f.daemon_rss < TARGET_RSS_KIB),
                TARGET_RSS_KIB / 1024,
                f.agents,
                f.daemon_rss as f64 / 1024.0,
                f.guard_rss as f64 / 1024.0
            );
            let _ = writeln!(
                o,
                "- {} daemon idle CPU under {TARGET_IDLE_CPU_PCT} % of a core: {:.3} % (guard {:.3} %)",
                pass(f.daemon_cpu_pct < TARGET_IDLE_CPU_PCT),
                f.daemon_cpu_pct,
                f.guard_cpu_pct
            );
        }
        None => {
            let _ = writeln!(o, "- FAIL footprint not measured");
        }
    }
    if first_load(load_start) > 1.0 {
        let _ = writeln!(
            o,
            "\nNote: the 1-minute load average was {} at the start: the host was shared, expect noise.",
            first_load(load_start)
        );
    }
    o
}

fn main() {
    common::require_root();
    assert!(
        Path::new(UNIFIED).join("cgroup.procs").exists() && Path::new(PIDS_V1).exists(),
        "this benchmark needs a hybrid cgroup host ({UNIFIED} and {PIDS_V1})"
    );
    install_cleanup_handlers();
    let reps = std::env::var("HALT_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5usize)
        .max(1);
    let mut ws = workloads(reps);
    // HALT_BENCH_ONLY=1,6 runs a subset (1-based), for development.
    if let Ok(only) = std::env::var("HALT_BENCH_ONLY") {
        let keep: Vec<usize> = only
            .split(',')
            .filter_map(|x| x.trim().parse().ok())
            .collect();
        let mut i = 0;
        ws.retain(|_| {
            i += 1;
            keep.contains(&i)
        });
    }
    let load_start = loadavg();
    let start = Instant::now();
    eprintln!(
        "halt bench: {} workloads x {reps} runs, binary {}, load {load_start}",
        ws.len(),
        common::bin()
    );
    let mut floor = Floor::new();
    let mut rs = Vec::new();
    for w in &ws {
        eprintln!("{} (load {})", w.label, loadavg());
        rs.push(bench(w, &mut floor));
    }
    drop(floor);
    let text = report(&ws, &rs, &load_start, start.elapsed());
    println!("{text}");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let path = target.join("bench-halt.md");
    match std::fs::write(&path, &text) {
        Ok(()) => eprintln!("written to {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}
