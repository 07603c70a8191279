//! Root tests of the safety kernel: one real workload per monitor that trips
//! it and one just under it that is left alone; resume authorizations; the
//! watchdog stops when a health check fails.

mod common;

use std::time::{Duration, Instant};

use common::{agent, Env};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(30);

/// Only the monitor under test is on (the others could trip first on a busy CI).
fn only(monitor: &str, extra: &str) -> String {
    let all = [
        "busy_loop",
        "memory",
        "fork_rate",
        "pids",
        "disk_write",
        "crash_loop",
        "disk_free",
        "host_memory",
        "host_load",
    ];
    let off: Vec<String> = all
        .iter()
        .filter(|m| **m != monitor)
        .map(|m| format!("\"{m}\""))
        .collect();
    format!(
        "monitor_interval = \"200ms\"\n[limits]\ndisable = [{}]\n{extra}\n",
        off.join(", ")
    )
}

/// Waits for a monitor halt and returns the latch reason.
fn expect_breach(env: &Env, monitor: &str, agent_name: Option<&str>) -> String {
    env.wait_for(&format!("{monitor} breach"), T, || {
        env.status()["daemon"]["state"] == "safe_mode"
    });
    let st = env.status();
    let latch = &st["daemon"]["safe_mode"];
    assert_eq!(latch["trigger"], "monitor", "{st}");
    let reason = latch["reason"].as_str().unwrap().to_string();
    assert!(reason.starts_with(monitor), "{reason}");
    if let Some(a) = agent_name {
        assert!(reason.contains(&format!("agent {a}")), "{reason}");
    }
    assert!(reason.contains("threshold"), "{reason}");
    env.assert_nothing_left();
    // The safety event names the monitor, the value and the threshold.
    let events = std::fs::read_to_string(env.path("log/safety_events.jsonl")).unwrap_or_default();
    if !events.is_empty() {
        assert!(events.contains(monitor), "{events}");
    }
    reason
}

/// Runs an agent for `secs` and checks the daemon is still running it.
fn expect_no_breach(env: &Env, secs: u64) {
    std::thread::sleep(Duration::from_secs(secs));
    let st = env.status();
    assert_eq!(st["daemon"]["state"], "running", "{st}");
}

fn stop(mut env: Env) {
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0, "{}", env.stderr());
    env.assert_nothing_left();
}

const BUSY: &str = "exec python3 -c 'while True: pass'";
/// About 60 % of a core.
const HALF_BUSY: &str = "exec python3 -c 'import time\nwhile True:\n    t = time.time()\n    while time.time() - t < 0.06: pass\n    time.sleep(0.04)'";

#[test]
fn busy_loop_trips_and_partial_load_does_not() {
    let mut env = Env::new(
        &only("busy_loop", "busy_loop = \"2s\""),
        &[agent("spin", BUSY, 0, "")].concat(),
    );
    env.start();
    let t0 = Instant::now();
    let r = expect_breach(&env, "busy_loop", Some("spin"));
    assert!(t0.elapsed() >= Duration::from_secs(2), "tripped early: {r}");
    stop(env);

    let mut env = Env::new(
        &only("busy_loop", "busy_loop = \"2s\""),
        &[agent("half", HALF_BUSY, 0, "")].concat(),
    );
    env.start();
    expect_no_breach(&env, 4);
    let m = &env.agent("half")["monitors"];
    assert!(m["cpu"]["value"].as_f64().unwrap() > 0.3, "{m}");
    stop(env);
}

fn ramp(mib: usize) -> String {
    format!(
        "exec python3 -c 'import time\nb = []\nfor i in range({mib}):\n    b.append(bytearray(1 << 20))\n    time.sleep(0.01)\ntime.sleep(1000)'"
    )
}

#[test]
fn memory_ramp_trips_below_memory_max() {
    let mut env = Env::new(
        &only("memory", "memory_halt = 0.5"),
        &agent("ramp", &ramp(90), 0, "memory_max = \"100M\""),
    );
    env.start();
    expect_breach(&env, "memory", Some("ramp"));
    stop(env);

    let mut env = Env::new(
        &only("memory", "memory_halt = 0.5"),
        &agent("steady", &ramp(25), 0, "memory_max = \"100M\""),
    );
    env.start();
    expect_no_breach(&env, 3);
    stop(env);
}

fn forker(per_sec: u32) -> String {
    format!("while :; do for i in $(seq {per_sec}); do sleep 30 & done; sleep 1; done")
}

#[test]
fn fork_storm_trips_and_slow_forker_does_not() {
    let mut env = Env::new(
        &only("fork_rate", "fork_rate = 40"),
        &agent("storm", &forker(100), 0, ""),
    );
    env.start();
    expect_breach(&env, "fork_rate", Some("storm"));
    stop(env);

    let mut env = Env::new(
        &only("fork_rate", "fork_rate = 40"),
        &agent("slow", &forker(5), 0, ""),
    );
    env.start();
    expect_no_breach(&env, 3);
    stop(env);
}

#[test]
fn pids_near_limit_trips() {
    let mut env = Env::new(
        &only("pids", "pids_near = 0.8"),
        &agent("many", &forker(3), 0, "pids_max = 20"),
    );
    env.start();
    expect_breach(&env, "pids", Some("many"));
    stop(env);
}

/// A small tmpfs under the test's directory, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn new(path: std::path::PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&path).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=1777").as_str()),
        )
        .unwrap();
        Tmpfs(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn filling_the_log_filesystem_trips_disk_free() {
    // log_dir lives on a 64M tmpfs; the agent writes into it.
    let base = tempfile::tempdir().unwrap();
    let fs = Tmpfs::new(base.path().join("small"), "64M");
    let fill = |mib: u32| {
        format!(
            "dd if=/dev/zero of={}/fill-$$ bs=1M count={mib} 2>/dev/null; sleep 1000",
            fs.0.display()
        )
    };
    let logdir = toml::Value::String(fs.0.join("log").display().to_string()).to_string();
    let top = only("disk_free", "disk_free_min = \"32M\"");
    let mut env = Env::new(&top, &agent("filler", &fill(40), 0, ""));
    env.set_top("log_dir", &logdir);
    env.start();
    expect_breach(&env, "disk_free", None);
    stop(env);
    for e in std::fs::read_dir(&fs.0).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("fill-") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let mut env = Env::new(&top, &agent("small", &fill(10), 0, ""));
    env.set_top("log_dir", &logdir);
    env.start();
    expect_no_breach(&env, 3);
    stop(env);
}

#[test]
fn disk_write_per_agent_trips() {
    let dir = tempfile::Builder::new()
        .prefix("warden-dw-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    // Writes 1 MiB every 20 ms, `mib` times, then idles.
    let write = |mib: u32| {
        format!(
            "exec python3 -c 'import os, time\nf = open(\"{}/w-%d\" % os.getpid(), \"wb\")\nfor i in range({mib}):\n    f.write(b\"x\" * (1 << 20)); f.flush(); time.sleep(0.02)\ntime.sleep(1000)'",
            dir.path().display()
        )
    };
    let mut env = Env::new(
        &only("disk_write", "disk_write = \"16M\"\ndisk_window = \"30s\""),
        &agent("writer", &write(64), 0, ""),
    );
    env.start();
    expect_breach(&env, "disk_write", Some("writer"));
    stop(env);
    let mut env = Env::new(
        &only("disk_write", "disk_write = \"16M\"\ndisk_window = \"30s\""),
        &agent("light", &write(4), 0, ""),
    );
    env.start();
    expect_no_breach(&env, 3);
    let m = &env.agent("light")["monitors"]["disk_write"];
    assert!(m["value"].as_f64().unwrap() >= 3.0 * 1048576.0, "{m}");
    stop(env);
}

#[test]
fn crash_loop_halts() {
    let mut env = Env::new(
        &format!(
            "crash_loop = {{ exits = 3, window = \"30s\" }}\n{}",
            only("crash_loop", "")
        ),
        &agent("crasher", "exit 7", 0, ""),
    );
    env.start();
    expect_breach(&env, "crash_loop", Some("crasher"));
    stop(env);
    // Two exits in the window: left alone (failed policy would not even apply).
    let mut env = Env::new(
        &format!(
            "crash_loop = {{ exits = 3, window = \"30s\" }}\n{}",
            only("crash_loop", "")
        ),
        &agent("twice", "exit 7", 0, "restart = \"never\""),
    );
    env.start();
    expect_no_breach(&env, 2);
    stop(env);
}

/// An operator's change of a protected file is audited with its writer and
/// never halts (an agent's change does: tests/reload_root.rs; where
/// fanotify is missing any change halts: the inotify unit tests).
#[test]
fn an_operators_change_of_a_protected_file_is_audited_not_halted() {
    let mut env = Env::new(
        &only("self_modification", ""),
        &agent("a", common::workload::COOPERATIVE, 2, ""),
    );
    let policy = env.path("policy.toml");
    std::fs::write(&policy, "x = 1\n").unwrap();
    // Protect it through the config.
    env.set_top("protected_paths", &format!("[\"{}\"]", policy.display()));
    env.start();
    env.wait_procs(3);
    assert_eq!(
        env.status()["protection"]["watch"]["mechanism"],
        "fanotify",
        "this kernel has fanotify"
    );
    std::fs::write(env.path("notes.txt"), "hello").unwrap();
    std::fs::write(&policy, "x = 2\n").unwrap();
    // The config file itself is protected too.
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, text + "\n# a comment\n").unwrap();
    expect_no_breach(&env, 1);
    let st = env.status();
    assert_eq!(st["protection"]["config"]["differs"], true, "{st}");
    stop(env);
}

#[test]
fn resume_authorizations() {
    let keydir = tempfile::tempdir().unwrap();
    let key = keydir.path().join("resume.key");
    let out = std::process::Command::new(common::bin())
        .args(["keygen", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut env = Env::new(
        &format!(
            "resume_key = \"{}.pub\"\n{}",
            key.display(),
            only("none", "")
        ),
        "",
    );
    env.start();
    let (code, _, _) = env.cli(&["halt", "--reason", "test"]);
    assert_eq!(code, 0);
    let host = env.status()["daemon"]["host_id"]
        .as_str()
        .unwrap()
        .to_string();
    let authorize = |name: &str, args: &[&str], k: &std::path::Path| {
        let p = env.path(name);
        let out = std::process::Command::new(common::bin())
            .args([
                "authorize-resume",
                "--key",
                k.to_str().unwrap(),
                "--reason",
                "checked",
                "-o",
            ])
            .arg(&p)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        p
    };
    let resume = |auth: Option<&std::path::Path>| {
        let mut args = vec!["resume", "--reason", "r"];
        if let Some(a) = auth {
            args.push("--authorization");
            args.push(a.to_str().unwrap());
        }
        env.cli(&args)
    };
    // Missing.
    let (code, _, err) = resume(None);
    assert_eq!(code, 1);
    assert!(err.contains("needs --authorization"), "{err}");
    // Expired.
    let expired = authorize("expired.json", &["--valid-for", "1ms"], &key);
    std::thread::sleep(Duration::from_millis(20));
    let (code, _, err) = resume(Some(&expired));
    assert_eq!(code, 1);
    assert!(err.contains("expired"), "{err}");
    // Wrong host.
    let wrong = authorize("wrong.json", &["--host", "some-other-host"], &key);
    let (_, _, err) = resume(Some(&wrong));
    assert!(err.contains("for host \"some-other-host\""), "{err}");
    // Signed by another key.
    let other = keydir.path().join("other.key");
    let out = std::process::Command::new(common::bin())
        .args(["keygen", other.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let forged = authorize("forged.json", &["--host", &host], &other);
    let (_, _, err) = resume(Some(&forged));
    assert!(err.contains("signature does not verify"), "{err}");
    // Tampered.
    let good = authorize("good.json", &["--host", &host], &key);
    let text = std::fs::read_to_string(&good).unwrap();
    let tampered = env.path("tampered.json");
    std::fs::write(&tampered, text.replace("checked", "checkeD")).unwrap();
    let (_, _, err) = resume(Some(&tampered));
    assert!(err.contains("signature does not verify"), "{err}");
    assert_eq!(env.status()["daemon"]["state"], "safe_mode");
    // Good: accepted once.
    let (code, _, err) = resume(Some(&good));
    assert_eq!(code, 0, "{err}");
    assert_eq!(env.status()["daemon"]["state"], "running");
    let (code, _, _) = env.cli(&["halt", "--reason", "again"]);
    assert_eq!(code, 0);
    // Reused.
    let (code, _, err) = resume(Some(&good));
    assert_eq!(code, 1);
    assert!(err.contains("already used"), "{err}");
    stop(env);
}

#[test]
fn watchdog_pings_stop_when_a_health_check_fails() {
    let mut env = Env::new("", "");
    let dev = env.path("watchdog");
    env.set_top(
        "watchdog",
        &format!(
            "{{ device = \"{}\", timeout = \"10s\", interval = \"100ms\" }}",
            dev.display()
        ),
    );
    env.start();
    let pings = || {
        std::fs::read(&dev)
            .map(|b| b.iter().filter(|c| **c == b'k').count())
            .unwrap_or(0)
    };
    env.wait_for("pings", T, || pings() >= 5);
    assert_eq!(env.status()["health"]["stop_file_watch"], true);
    // Break the stop-file watch: replace its directory with a file, so that
    // the watch cannot be repaired until the file goes.
    std::fs::remove_dir_all(env.path("safety")).unwrap();
    std::fs::write(env.path("safety"), b"not a directory").unwrap();
    // Within one interval the pings stop (allow scheduling slack).
    std::thread::sleep(Duration::from_millis(250));
    let n = pings();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pings(), n, "pinged while unhealthy");
    let st = env.status();
    assert_eq!(st["health"]["stop_file_watch"], false, "{st}");
    // The daemon halted (fail closed): for the lost watch, or because the
    // stop file's path no longer answers "no such file".
    let trigger = st["daemon"]["safe_mode"]["trigger"].as_str().unwrap();
    assert!(["stop_file_watch", "stop_file"].contains(&trigger), "{st}");
    // Healthy again: the watch is repaired and pings resume.
    std::fs::remove_file(env.path("safety")).unwrap();
    env.wait_for("pings resume", T, || pings() > n);
    // SIGSTOP: the main loop stops turning, and so do the pings.
    env.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(150));
    let n = pings();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(pings(), n);
    env.signal(Signal::SIGCONT);
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    // Orderly exit: magic close.
    assert_eq!(std::fs::read(&dev).unwrap().last(), Some(&b'V'));
}

#[test]
fn full_state_disk_halts_rather_than_run_unaudited() {
    let base = tempfile::tempdir().unwrap();
    let fs = Tmpfs::new(base.path().join("state"), "16M");
    let mut env = Env::new(
        &only("none", ""),
        &agent("a", common::workload::TERM_IGNORING, 3, ""),
    );
    env.set_top(
        "state_dir",
        &toml::Value::String(fs.0.join("warden").display().to_string()).to_string(),
    );
    env.start();
    env.wait_procs(4);
    // Fill the filesystem that holds the audit database.
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=64"])
        .arg(format!("of={}", fs.0.join("fill").display()))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    // The next state change cannot be audited: refused, and everything halts.
    let (code, _, err) = env.cli(&["stop", "a"]);
    assert_eq!(code, 1);
    assert!(err.contains("audit log unwritable"), "{err}");
    env.wait_for("agents halted", T, || env.marked_pids().is_empty());
    env.assert_nothing_left();
    // Reads still answer and say why.
    let st = env.status();
    assert_eq!(st["daemon"]["state"], "safe_mode", "{st}");
    assert_eq!(st["daemon"]["safe_mode"]["trigger"], "audit", "{st}");
    assert_eq!(st["daemon"]["audit_healthy"], false);
    env.signal(Signal::SIGKILL);
    env.wait_exit(T);
    drop(env);
    drop(fs);
}
