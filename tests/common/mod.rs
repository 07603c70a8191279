//! Shared harness for root tests that run the real daemon binary.
//!
//! Each test gets its own temporary directory (state, logs, socket, stop file)
//! and its own cgroup root `/warden-test-PID-N`. Drop kills the daemon, kills
//! and removes the cgroups in every hierarchy, and checks nothing is left.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root; CI runs it as root"
    );
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_warden")
}

/// A unique marker that the test's workloads carry in their environment, so the test
/// can find any process of its own anywhere on the machine (never to kill by
/// it: only to assert that nothing survived).
pub fn marker() -> String {
    format!(
        "wardentest{}x{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub root: String,
    pub marker: String,
    pub config: PathBuf,
    pub daemon: Option<Child>,
    pub stderr_path: PathBuf,
}

impl Env {
    /// `agents` is the TOML of the `[[agent]]` tables; `{M}` in it is replaced
    /// by the marker.
    pub fn new(extra_top: &str, agents: &str) -> Env {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("warden-test-")
            .tempdir()
            .unwrap();
        let marker = marker();
        let root = format!("/warden-test-{marker}");
        let d = dir.path();
        let q = |p: &Path| toml::Value::String(p.to_string_lossy().into()).to_string();
        let text = format!(
            "stop_file = {}\nstate_dir = {}\nlog_dir = {}\nsocket = {}\nagent_socket_dir = {}\ncredentials_dir = {}\ncgroup_root = {}\ngrace = \"1s\"\n\
             restart_backoff = \"100ms\"\nempty_deadline = \"5s\"\n{extra_top}\n{}",
            q(&d.join("safety/STOP")),
            q(&d.join("state")),
            q(&d.join("log")),
            q(&d.join("control.sock")),
            q(&d.join("agents")),
            q(&d.join("credentials")),
            toml::Value::String(root.clone()),
            agents.replace("{M}", &marker)
        );
        let config = d.join("warden.toml");
        std::fs::write(&config, text).unwrap();
        // Agents' `env` may hold secrets: the daemon refuses a config that
        // every user can read (the package installs it 0640 root:warden).
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        Env {
            stderr_path: d.join("daemon.stderr"),
            dir,
            root,
            marker,
            config,
            daemon: None,
        }
    }

    /// Replaces a top-level key of the config (before the daemon starts).
    pub fn set_top(&self, key: &str, value: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let mut found = false;
        let out: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with(&format!("{key} = ")) {
                    found = true;
                    format!("{key} = {value}")
                } else {
                    l.to_string()
                }
            })
            .collect();
        let mut out = out.join("\n") + "\n";
        if !found {
            out = format!("{key} = {value}\n{out}");
        }
        std::fs::write(&self.config, out).unwrap();
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    pub fn stop_file(&self) -> PathBuf {
        self.path("safety/STOP")
    }
    pub fn socket(&self) -> PathBuf {
        self.path("control.sock")
    }
    pub fn latch(&self) -> PathBuf {
        self.path("state/safe-mode.latch")
    }

    /// Starts the daemon and waits until it answers.
    pub fn start(&mut self) {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .unwrap();
        let child = Command::new(bin())
            .args(["daemon", "--config"])
            .arg(&self.config)
            .env("WARDEN_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.try_call(r#"{"cmd":"ping"}"#).is_some() {
                return;
            }
            if let Some(st) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited at start: {st}\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn daemon_pid(&self) -> i32 {
        self.daemon.as_ref().unwrap().id() as i32
    }

    /// Raw JSON-lines request; None if the daemon does not answer.
    pub fn try_call(&self, line: &str) -> Option<Value> {
        use std::io::{BufRead, BufReader, Write};
        let s = std::os::unix::net::UnixStream::connect(self.socket()).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        (&s).write_all(format!("{line}\n").as_bytes()).ok()?;
        let mut out = String::new();
        BufReader::new(&s).read_line(&mut out).ok()?;
        serde_json::from_str(&out).ok()
    }

    pub fn call(&self, line: &str) -> Value {
        self.try_call(line)
            .unwrap_or_else(|| panic!("no answer to {line}\n{}", self.stderr()))
    }

    pub fn status(&self) -> Value {
        let v = self.call(r#"{"cmd":"status"}"#);
        assert_eq!(v["ok"], true, "{v}");
        v["data"].clone()
    }

    pub fn agent(&self, name: &str) -> Value {
        self.status()["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no agent {name}"))
    }

    /// Runs the CLI against this daemon; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin())
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// Waits until `f` holds, polling.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the agents together have at least `n` processes.
    pub fn wait_procs(&self, n: usize) {
        self.wait_for(
            &format!("{n} agent processes"),
            Duration::from_secs(30),
            || self.marked_pids().len() >= n,
        );
    }

    /// Every process on the machine that carries this test's marker.
    pub fn marked_pids(&self) -> Vec<i32> {
        marked_pids(&self.marker)
    }

    /// Every process whose cgroup path contains this test's root.
    pub fn pids_in_root(&self) -> Vec<i32> {
        let mut v = vec![];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
                if c.contains(&self.root) {
                    v.push(pid);
                }
            }
        }
        v
    }

    /// Asserts that no process of this test is left anywhere.
    pub fn assert_nothing_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let a = self.marked_pids();
            let b = self.pids_in_root();
            if a.is_empty() && b.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "survivors: marked {a:?}, in cgroup {b:?}\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.daemon_pid()), sig).unwrap();
    }

    /// Waits for the daemon to exit and returns its code (or -signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        let child = self.daemon.as_mut().unwrap();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.daemon = None;
                use std::os::unix::process::ExitStatusExt;
                return st.code().unwrap_or_else(|| -st.signal().unwrap_or(0));
            }
            assert!(Instant::now() < deadline, "daemon did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Cgroup directories of this test that still exist.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_dirs(&self.root)
    }
}

pub fn marked_pids(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut v = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(c) = std::fs::read(format!("/proc/{pid}/environ")) {
            // Zombies have an empty environment and are already dead.
            if String::from_utf8_lossy(&c).contains(marker) {
                v.push(pid);
            }
        }
    }
    v
}

pub fn cgroup_dirs(root: &str) -> Vec<PathBuf> {
    let mut v = vec![];
    for e in std::fs::read_dir(CGROUP_MOUNT).unwrap().flatten() {
        let p = e.path().join(root.trim_start_matches('/'));
        if p.exists() {
            v.push(p);
        }
    }
    v
}

/// Mount points under `dir` (from /proc/self/mountinfo), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

fn unmount_under(dir: &Path) {
    for m in mounts_under(dir) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Kills everything in `dir` (a cgroup directory) and removes it, depth first.
fn scrub(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                scrub(&e.path());
            }
        }
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
    if let Ok(p) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in p.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    for _ in 0..200 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The guard may still be cleaning up; give it a moment, then scrub.
        std::thread::sleep(Duration::from_millis(50));
        for d in cgroup_dirs(&self.root) {
            scrub(&d);
        }
        // A daemon that did not end cleanly leaves its agents' credential
        // tmpfs mounts behind: detach every mount under the test's directory.
        unmount_under(self.dir.path());
        // safety_events.jsonl is append-only (FS_APPEND_FL): clear it, or
        // the temporary directory cannot be removed.
        let _ = warden_core::sys::fsattr::clear_append_only_tree(self.dir.path());
        // A process of ours outside any cgroup of ours (should never happen)
        // is still ours: end it by pid.
        for pid in marked_pids(&self.marker) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Shell workloads, shared with the benchmark. `{N}` is a count.
pub mod workload {
    /// N sleeping children; TERM ends them.
    pub const COOPERATIVE: &str = "for i in $(seq {N}); do sleep 1000 & done; wait";
    /// N children that ignore TERM (the disposition survives exec).
    pub const TERM_IGNORING: &str =
        "trap '' TERM; for i in $(seq {N}); do sleep 1000 & done; while :; do wait; done";
    /// N double-forked setsid escapees that ignore TERM.
    pub const ESCAPEES: &str = "trap '' TERM; for i in $(seq {N}); do ( setsid sh -c 'trap \"\" TERM; exec sleep 1000' </dev/null >/dev/null 2>&1 & ) ; done; while :; do sleep 1; done";
    /// Keeps spawning children in new process groups.
    pub const RESPAWNER: &str =
        "trap '' TERM; while :; do setsid sleep 1000 </dev/null >/dev/null 2>&1 & sleep 0.05; done";
    /// A fork bomb whose every process keeps forking; pids_max bounds it.
    pub const FORK_BOMB: &str = "exec python3 -c 'import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.05)'";
}

/// One `[[agent]]` table running a shell workload, marked with the test's marker.
pub fn agent(name: &str, script: &str, n: usize, extra: &str) -> String {
    format!(
        "[[agent]]\nname = \"{name}\"\ncommand = {}\nuser = \"nobody\"\nenv = {{ WARDEN_TEST_MARK = \"{{M}}\" }}\n{extra}\n",
        sh(script, n)
    )
}

/// The `command` array for a shell workload.
pub fn sh(script: &str, n: usize) -> String {
    let s = script.replace("{N}", &n.to_string());
    format!("[\"/bin/sh\", \"-c\", {}]", toml::Value::String(s))
}
