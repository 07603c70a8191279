//! Root tests: the real `warden-kernel` binary against real cgroups (hybrid:
//! v1 freezer + cgroup2 `unified`; pure v2 when /sys/fs/cgroup is cgroup2).
//! Each test makes its own `warden-ktest-<pid>-<n>/agents/agent.x` in every
//! hierarchy, moves a few `sh`/`sleep` forkers there, plays the daemon on
//! the kernel's pipes, and leaves nothing behind even when it fails (Drop
//! kills by cgroup, never by name, and removes the cgroups).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LIVENESS_MS: u64 = 400;
const DEADLINE_MS: u64 = 800;

static N: AtomicU32 = AtomicU32::new(0);

/// The cgroup2 mount and the v1 freezer mount of this host.
fn layout() -> (Option<PathBuf>, Option<PathBuf>) {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return (Some(root.into()), None);
    }
    let v2 = root.join("unified");
    let v1 = root.join("freezer");
    let v2 = v2.join("cgroup.procs").exists().then_some(v2);
    let v1 = v1
        .join("freezer.state")
        .exists()
        .then(|| v1.clone())
        .or_else(|| {
            // The v1 freezer root has no freezer.state; its mount has tasks.
            v1.join("tasks").exists().then_some(v1)
        });
    assert!(
        v2.is_some() || v1.is_some(),
        "no cgroup2 mount and no v1 freezer: these tests need real cgroups (run as root)"
    );
    (v2, v1)
}

/// One test's world: cgroups, agents, the kernel, temp files.
struct World {
    /// `warden-ktest-*` roots, removed on drop.
    roots: Vec<PathBuf>,
    /// The agents' parents (`root/agents`), given to the kernel.
    v2_parent: Option<PathBuf>,
    v1_parent: Option<PathBuf>,
    /// `agents/agent.x` in each hierarchy.
    agents: Vec<PathBuf>,
    /// Stop dir, latch, reports, log.
    tmp: tempfile::TempDir,
    /// The forkers we started (reaped on drop).
    children: Vec<Child>,
    /// The kernel under test.
    kernel: Option<Child>,
    /// Its stdin, shared with the heartbeat thread; None once closed.
    stdin: Arc<Mutex<Option<ChildStdin>>>,
    /// Lines from its stdout.
    lines: Option<Receiver<String>>,
    /// Stops the heartbeat thread.
    beating: Arc<AtomicBool>,
    /// Give the kernel only the v1 freezer parent (the pure v1 ladder).
    v1_only: bool,
}

fn write(p: &Path, s: &str) {
    std::fs::write(p, s).unwrap_or_else(|e| panic!("write {s} to {}: {e}", p.display()));
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn subtree(d: &Path) -> Vec<PathBuf> {
    let mut v = vec![d.to_path_buf()];
    let mut i = 0;
    while i < v.len() {
        if let Ok(rd) = std::fs::read_dir(&v[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    v.push(e.path());
                }
            }
        }
        i += 1;
    }
    v
}

fn pids_under(d: &Path) -> Vec<i32> {
    let mut p: Vec<i32> = subtree(d)
        .iter()
        .flat_map(|c| {
            read(&c.join("cgroup.procs"))
                .lines()
                .filter_map(|l| l.parse().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    p.sort();
    p.dedup();
    p
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl World {
    /// Cgroups and three running agents (a shell with two sleeps and a
    /// nested shell with one more).
    fn new() -> World {
        let (v2, v1) = layout();
        let name = format!(
            "warden-ktest-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let mut w = World {
            roots: vec![],
            v2_parent: None,
            v1_parent: None,
            agents: vec![],
            tmp: tempfile::tempdir().unwrap(),
            children: vec![],
            kernel: None,
            stdin: Arc::new(Mutex::new(None)),
            lines: None,
            beating: Arc::new(AtomicBool::new(false)),
            v1_only: false,
        };
        for (mount, slot) in [(v2, 0), (v1, 1)] {
            let Some(m) = mount else { continue };
            let root = m.join(&name);
            let agent = root.join("agents/agent.x");
            w.roots.push(root.clone());
            std::fs::create_dir_all(&agent).unwrap();
            if slot == 0 {
                w.v2_parent = Some(root.join("agents"));
            } else {
                w.v1_parent = Some(root.join("agents"));
            }
            w.agents.push(agent);
        }
        std::fs::create_dir(w.tmp.path().join("safety")).unwrap();
        std::fs::create_dir(w.tmp.path().join("reports")).unwrap();
        w.spawn_agents(
            r#"sleep 1000 & sleep 1000 & sh -c 'sleep 1000 & wait' & wait"#,
            5,
        );
        w
    }

    /// Runs `script` in a shell that first moves itself into agent.x in
    /// every hierarchy; waits until the agent cgroup holds `n` processes.
    fn spawn_agents(&mut self, script: &str, n: usize) {
        let before = self.agent_pids().len();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                r#"for f in "$@"; do echo $$ > "$f"; done; {script}"#
            ))
            .arg("sh");
        for a in &self.agents {
            cmd.arg(a.join("cgroup.procs"));
        }
        self.children
            .push(cmd.stdin(Stdio::null()).spawn().unwrap());
        let agent = self.agents[0].clone();
        wait_for("agents to start", Duration::from_secs(5), || {
            pids_under(&agent).len() >= before + n
        });
    }

    fn stop_file(&self) -> PathBuf {
        self.tmp.path().join("safety/STOP")
    }
    fn latch(&self) -> PathBuf {
        self.tmp.path().join("safe-mode.latch")
    }
    fn reports(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.tmp.path().join("reports"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect()
    }
    fn watchdog(&self) -> PathBuf {
        self.tmp.path().join("watchdog")
    }

    fn agent_pids(&self) -> Vec<i32> {
        pids_under(&self.agents[0])
    }

    fn empty(&self) -> bool {
        self.agents.iter().all(|a| pids_under(a).is_empty())
    }

    /// The parent the kernel freezes reports frozen.
    fn frozen(&self) -> bool {
        match (
            self.v2_parent.as_ref().filter(|_| !self.v1_only),
            &self.v1_parent,
        ) {
            (Some(p), _) => read(&p.join("cgroup.events")).contains("frozen 1"),
            (None, Some(p)) => read(&p.join("freezer.state")).trim() == "FROZEN",
            _ => false,
        }
    }

    /// Starts the kernel and says hello; `hb`: keep sending `hb 1`.
    fn start(&mut self, hb: bool) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden-kernel"));
        cmd.arg("--stop-file")
            .arg(self.stop_file())
            .arg("--latch")
            .arg(self.latch())
            .arg("--report-dir")
            .arg(self.tmp.path().join("reports"))
            .args(["--liveness-timeout-ms", &LIVENESS_MS.to_string()])
            .args(["--deadline-ms", &DEADLINE_MS.to_string()])
            .arg("--watchdog")
            .arg(self.watchdog())
            .args(["--watchdog-interval-ms", "50"]);
        if let Some(p) = self.v2_parent.as_ref().filter(|_| !self.v1_only) {
            cmd.arg("--v2").arg(p);
        }
        if let Some(p) = &self.v1_parent {
            cmd.arg("--v1-freezer").arg(p);
        }
        let log = std::fs::File::create(self.tmp.path().join("kernel.log")).unwrap();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        *self.stdin.lock().unwrap() = child.stdin.take();
        self.kernel = Some(child);
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        self.lines = Some(rx);
        assert_eq!(self.expect("hello", 5), "hello 1");
        self.expect("ready", 5);
        self.send("hello 1");
        if hb {
            self.send("hb 1");
            self.beating.store(true, Ordering::SeqCst);
            let (stdin, beating) = (self.stdin.clone(), self.beating.clone());
            std::thread::spawn(move || {
                while beating.load(Ordering::SeqCst) {
                    if let Some(s) = stdin.lock().unwrap().as_mut() {
                        let _ = s.write_all(b"hb 1\n");
                    }
                    std::thread::sleep(Duration::from_millis(LIVENESS_MS / 4));
                }
            });
        }
    }

    fn send(&self, line: &str) {
        let mut g = self.stdin.lock().unwrap();
        let s = g.as_mut().expect("stdin open");
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    fn close_stdin(&self) {
        self.beating.store(false, Ordering::SeqCst);
        self.stdin.lock().unwrap().take();
    }

    /// The next line starting with `prefix` within `secs`; others skipped.
    fn expect(&self, prefix: &str, secs: u64) -> String {
        let until = Instant::now() + Duration::from_secs(secs);
        let rx = self.lines.as_ref().unwrap();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(l) => eprintln!("(skipped kernel line {l:?})"),
                Err(e) => panic!("no {prefix:?} line from the kernel within {secs} s: {e}"),
            }
        }
    }

    /// No line starting with `prefix` within `ms`.
    fn expect_none(&self, prefix: &str, ms: u64) {
        let until = Instant::now() + Duration::from_millis(ms);
        let rx = self.lines.as_ref().unwrap();
        while let Ok(l) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            assert!(!l.starts_with(prefix), "unexpected kernel line {l:?}");
        }
    }

    fn wait_exit(&mut self, secs: u64) -> i32 {
        let k = self.kernel.as_mut().unwrap();
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = k.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < until,
                "kernel did not exit within {secs} s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn latch_json(&self) -> serde_json::Value {
        serde_json::from_str(&read(&self.latch())).expect("latch is JSON")
    }

    /// A report from `killed PATH`: valid JSON naming every pid.
    fn check_report(&self, line: &str, trigger: &str, pids: &[i32]) -> serde_json::Value {
        let path = line.strip_prefix("killed ").unwrap();
        assert!(path.starts_with(self.tmp.path().join("reports").to_str().unwrap()));
        let v: serde_json::Value =
            serde_json::from_str(&read(Path::new(path))).expect("report is JSON");
        assert_eq!(v["trigger"], trigger);
        assert_eq!(v["complete"], true, "{v}");
        let got: Vec<i64> = v["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_i64().unwrap())
            .collect();
        for p in pids {
            assert!(got.contains(&i64::from(*p)), "pid {p} missing from {v}");
        }
        assert!(v["timings_us"]["frozen"].as_u64().is_some(), "{v}");
        assert!(v["timings_us"]["empty"].as_u64().is_some(), "{v}");
        assert_eq!(v["survivors"].as_array().unwrap().len(), 0);
        v
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.close_stdin();
        if let Some(mut k) = self.kernel.take() {
            if k.try_wait().ok().flatten().is_none() {
                let _ = k.kill();
            }
            let _ = k.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- kernel log ---\n{}",
                read(&self.tmp.path().join("kernel.log"))
            );
        }
        // Kill by cgroup: v2 cgroup.kill; v1 thaw, SIGKILL every pid; repeat.
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let mut left = 0;
            for r in &self.roots {
                for c in subtree(r) {
                    if c.join("cgroup.freeze").exists() {
                        let _ = std::fs::write(c.join("cgroup.freeze"), "0");
                    }
                    if c.join("freezer.state").exists() {
                        let _ = std::fs::write(c.join("freezer.state"), "THAWED");
                    }
                }
                let _ = std::fs::write(r.join("cgroup.kill"), "1");
                for p in pids_under(r) {
                    left += 1;
                    let _ = Command::new("kill")
                        .args(["-KILL", &p.to_string()])
                        .status();
                }
            }
            if left == 0 || Instant::now() > until {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for r in &self.roots {
            let mut all = subtree(r);
            all.reverse();
            for c in all {
                if let Err(e) = std::fs::remove_dir(&c) {
                    eprintln!("cannot remove test cgroup {}: {e}", c.display());
                }
            }
        }
    }
}

fn frozen_us(line: &str) -> u64 {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn stop_file_freezes_then_kills_after_the_deadline() {
    let mut w = World::new();
    let pids = w.agent_pids();
    w.start(true);
    let t = Instant::now();
    write(&w.stop_file(), "");
    let line = w.expect("frozen", 3);
    let seen = t.elapsed();
    assert!(line.starts_with("frozen stop_file "), "{line}");
    assert!(w.frozen(), "parent not frozen after {line}");
    eprintln!(
        "stop file -> frozen: {} us in the kernel, {seen:?} seen by the test",
        frozen_us(&line)
    );
    // No `empty` from us: the kernel kills after the deadline.
    let killed = w.expect("killed", DEADLINE_MS / 1000 + 5);
    assert!(
        t.elapsed() >= Duration::from_millis(DEADLINE_MS),
        "killed before the deadline"
    );
    wait_for("empty agent cgroup", Duration::from_secs(2), || w.empty());
    w.check_report(&killed, "stop_file", &pids);
    assert_eq!(w.latch_json()["trigger"], "stop_file");
    // An agent that appears while latched is frozen and killed again.
    w.spawn_agents("exec sleep 1000", 1);
    let line = w.expect("frozen", 3);
    assert!(line.starts_with("frozen agent_while_latched "), "{line}");
    w.expect("killed", 3);
    wait_for("empty agent cgroup", Duration::from_secs(2), || w.empty());
    assert_eq!(w.latch_json()["trigger"], "stop_file");
    // Resume is refused while the stop file exists, accepted after.
    w.send("resume");
    assert_eq!(w.expect("re", 2), "refused stop_file");
    std::fs::remove_file(w.stop_file()).unwrap();
    std::thread::sleep(Duration::from_millis(120));
    w.send("resume");
    assert_eq!(w.expect("re", 2), "resumed");
    assert!(!w.frozen());
}

#[test]
fn daemon_silence_halts_with_liveness() {
    let mut w = World::new();
    let pids = w.agent_pids();
    w.start(false);
    let line = w.expect("frozen", 3);
    assert!(line.starts_with("frozen liveness "), "{line}");
    let killed = w.expect("killed", 3);
    wait_for("empty agent cgroup", Duration::from_secs(2), || w.empty());
    w.check_report(&killed, "liveness", &pids);
    assert_eq!(w.latch_json()["trigger"], "kernel_liveness");
    // Never healthy: the watchdog was never pinged.
    assert_eq!(read(&w.watchdog()), "");
}

#[test]
fn stdin_closed_halts_with_daemon_gone() {
    let mut w = World::new();
    let pids = w.agent_pids();
    w.start(true);
    std::thread::sleep(Duration::from_millis(100));
    w.close_stdin();
    let line = w.expect("frozen", 3);
    assert!(line.starts_with("frozen daemon_gone "), "{line}");
    let killed = w.expect("killed", 3);
    w.check_report(&killed, "daemon_gone", &pids);
    assert_eq!(w.wait_exit(5), 0);
    assert!(w.empty());
    assert_eq!(w.latch_json()["trigger"], "daemon_died");
}

#[test]
fn daemon_halt_then_empty_needs_no_kernel_kill() {
    let mut w = World::new();
    w.start(true);
    std::thread::sleep(Duration::from_millis(150));
    w.send("halt h1");
    wait_for("frozen parent", Duration::from_secs(2), || w.frozen());
    // The daemon's own ladder: kill its agents (cgroup.kill works on a
    // frozen v2 cgroup; on pure v1 it thaws after its SIGKILLs).
    match &w.v2_parent {
        Some(_) => write(&w.agents[0].join("cgroup.kill"), "1"),
        None => {
            for p in w.agent_pids() {
                let _ = Command::new("kill")
                    .args(["-KILL", &p.to_string()])
                    .status();
            }
            write(
                &w.v1_parent.as_ref().unwrap().join("freezer.state"),
                "THAWED",
            );
        }
    }
    wait_for("empty agent cgroup", Duration::from_secs(2), || w.empty());
    w.send("empty h1");
    assert_eq!(w.expect("empty", 2), "empty");
    assert!(!w.frozen(), "parent still frozen after empty");
    w.expect_none("killed", DEADLINE_MS + 300);
    assert!(w.reports().is_empty(), "{:?}", w.reports());
    let l = w.latch_json();
    assert_eq!(l["trigger"], "halt");
    assert_eq!(l["halt_id"], "h1");
    // Healthy daemon, checks passing: the watchdog was pinged.
    assert!(!read(&w.watchdog()).is_empty());
}

#[test]
fn stop_dir_removed_is_a_present_stop_file() {
    let mut w = World::new();
    w.start(true);
    std::fs::remove_dir(w.tmp.path().join("safety")).unwrap();
    let line = w.expect("frozen", 3);
    assert!(line.starts_with("frozen stop_file "), "{line}");
    assert!(w.frozen());
}

#[test]
fn stop_dir_replaced_by_a_symlink_is_a_present_stop_file() {
    let mut w = World::new();
    w.start(true);
    let other = w.tmp.path().join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    std::fs::remove_dir(w.tmp.path().join("safety")).unwrap();
    std::os::unix::fs::symlink(&other, w.tmp.path().join("safety")).unwrap();
    let line = w.expect("frozen", 3);
    assert!(line.starts_with("frozen stop_file "), "{line}");
    assert!(w.frozen());
}

#[test]
fn clean_with_nothing_running_exits_zero() {
    let mut w = World::new();
    // The daemon stopped its agents in order before `clean`.
    match &w.v2_parent {
        Some(_) => write(&w.agents[0].join("cgroup.kill"), "1"),
        None => {
            for p in w.agent_pids() {
                let _ = Command::new("kill")
                    .args(["-KILL", &p.to_string()])
                    .status();
            }
        }
    }
    wait_for("empty agent cgroup", Duration::from_secs(2), || w.empty());
    w.start(true);
    w.send("clean");
    w.close_stdin();
    assert_eq!(w.wait_exit(3), 0);
    assert!(!w.latch().exists());
    assert!(w.reports().is_empty());
}

#[test]
fn existing_latch_is_not_overwritten() {
    let mut w = World::new();
    let pids = w.agent_pids();
    w.start(true);
    // The daemon latched first (`warden halt` from the CLI).
    let cli =
        r#"{"version":1,"trigger":"cli","reason":"operator","halt_id":null,"set_at_ms":1,"uid":0}"#;
    write(&w.latch(), cli);
    write(&w.stop_file(), "");
    assert!(w.expect("frozen", 3).starts_with("frozen stop_file"));
    let killed = w.expect("killed", 5);
    w.check_report(&killed, "stop_file", &pids);
    assert_eq!(read(&w.latch()), cli);
}

#[test]
fn latched_at_start_kills_agents_until_resume() {
    let mut w = World::new();
    let pids = w.agent_pids();
    let cli =
        r#"{"version":1,"trigger":"cli","reason":"operator","halt_id":null,"set_at_ms":1,"uid":0}"#;
    write(&w.latch(), cli);
    w.start(true);
    let line = w.expect("frozen", 3);
    assert!(line.starts_with("frozen agent_while_latched"), "{line}");
    let killed = w.expect("killed", 3);
    w.check_report(&killed, "agent_while_latched", &pids);
    assert_eq!(read(&w.latch()), cli);
}

#[test]
fn v1_freezer_alone_freezes_kills_and_thaws() {
    let mut w = World::new();
    if w.v1_parent.is_none() {
        // Pure v2 host: there is no v1 ladder to test; the other tests
        // cover v2.
        assert!(w.v2_parent.is_some());
        eprintln!("pure v2 host: no v1 freezer, nothing to test here");
        return;
    }
    w.v1_only = true;
    let pids = w.agent_pids();
    w.start(true);
    write(&w.stop_file(), "");
    let line = w.expect("frozen", 3);
    assert!(line.starts_with("frozen stop_file "), "{line}");
    assert!(w.frozen(), "v1 parent not FROZEN");
    // Killed while frozen, then thawed so that the pending SIGKILL lands.
    let killed = w.expect("killed", 5);
    wait_for("empty agent cgroup", Duration::from_secs(2), || w.empty());
    w.check_report(&killed, "stop_file", &pids);
    assert!(!w.frozen(), "v1 parent left frozen after the kill");
}

#[test]
fn busy_loops_do_not_delay_the_freeze() {
    let mut w = World::new();
    // One busy loop per core, plus a forker.
    w.spawn_agents("while :; do :; done", 1);
    w.spawn_agents("while :; do :; done", 1);
    w.spawn_agents("while :; do sleep 0.01 & done", 1);
    w.start(true);
    let t = Instant::now();
    write(&w.stop_file(), "");
    let line = w.expect("frozen", 3);
    assert!(line.starts_with("frozen stop_file "), "{line}");
    assert!(w.frozen());
    eprintln!(
        "busy cores: stop file -> frozen {} us in the kernel, {:?} seen by the test",
        frozen_us(&line),
        t.elapsed()
    );
    w.expect("killed", 5);
    wait_for("empty agent cgroup", Duration::from_secs(2), || w.empty());
}
