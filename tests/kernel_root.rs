//! The safety kernel with the real daemon: the failure matrix of
//! docs/kernel.md, each row with real cgroups and real processes.
//!
//! - the daemon SIGSTOPped, then the stop file: frozen at once, gone, latched;
//!   after SIGCONT the audit chain holds the kernel's halt and evidence;
//! - the daemon's loop stalls past liveness_timeout: the kernel halts;
//! - the kernel SIGKILLed: the daemon halts everything and runs no agent
//!   until a new kernel is up and a human resumes;
//! - a slow credential revocation and a stuck orderly stop do not delay the
//!   freeze of a stop-file halt.
//!
//! The daemon SIGKILLed is daemon_root's; the stop file's directory removed
//! or replaced by a symlink is crates/warden-kernel's tests/kernel.rs.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{agent, workload, Env};
use nix::sys::signal::Signal;
use serde_json::Value;

const T: Duration = Duration::from_secs(15);

fn touch(p: &std::path::Path) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b"").unwrap();
}

/// The agents' parent in the cgroup2 hierarchy (v2 or hybrid's unified).
fn agents_events(env: &Env) -> PathBuf {
    env.cgroup_dirs()
        .into_iter()
        .map(|d| d.join("agents/cgroup.events"))
        .find(|p| p.exists())
        .expect("a cgroup2 agents parent (v2 or hybrid)")
}

fn frozen(events: &std::path::Path) -> bool {
    std::fs::read_to_string(events)
        .map(|s| s.lines().any(|l| l == "frozen 1"))
        .unwrap_or(false)
}

fn audit_tail(env: &Env, n: u64) -> Vec<Value> {
    let out = std::process::Command::new(common::bin())
        .args([
            "audit",
            "tail",
            "--json",
            "-n",
            &n.to_string(),
            "--state-dir",
        ])
        .arg(env.path("state"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn two_agents() -> String {
    agent("coop", workload::COOPERATIVE, 3, "") + &agent("esc", workload::ESCAPEES, 3, "")
}

#[test]
fn hung_daemon_then_stop_file_kernel_freezes_kills_and_latches() {
    let mut env = Env::new(
        "liveness_timeout = \"30s\"\nkernel_deadline = \"500ms\"",
        &two_agents(),
    );
    env.start();
    env.wait_procs(6);
    let before = env.marked_pids();
    let events = agents_events(&env);
    assert!(!frozen(&events));
    env.signal(Signal::SIGSTOP);
    let t0 = Instant::now();
    touch(&env.stop_file());
    env.wait_for("frozen by the kernel", T, || frozen(&events));
    let frozen_after = t0.elapsed();
    env.wait_for("agents gone", T, || env.marked_pids().is_empty());
    let gone_after = t0.elapsed();
    assert!(env.latch().exists(), "the kernel latched SAFE MODE");
    let latch: Value = serde_json::from_slice(&std::fs::read(env.latch()).unwrap()).unwrap();
    assert_eq!(latch["trigger"], "stop_file", "{latch}");
    eprintln!("hung daemon: frozen after {frozen_after:?}, gone after {gone_after:?}");
    // The daemon comes back: it shows the halt, and the audit chain holds
    // the kernel's report with the pids it killed.
    env.signal(Signal::SIGCONT);
    env.wait_for("SAFE MODE", T, || {
        env.status()["daemon"]["state"] == "safe_mode"
    });
    env.assert_nothing_left();
    let entries = audit_tail(&env, 50);
    let halt = entries
        .iter()
        .find(|e| e["kind"] == "halt" && e["data"]["by"] == "kernel")
        .unwrap_or_else(|| panic!("no kernel halt in the audit: {entries:?}"));
    assert_eq!(halt["data"]["trigger"], "stop_file", "{halt}");
    assert!(entries.iter().any(|e| e["kind"] == "kernel_frozen"));
    let (code, out, err) = env.cli(&[
        "audit",
        "verify",
        "--state-dir",
        env.path("state").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    // The kernel's evidence names the processes it killed.
    let db = rusqlite::Connection::open(env.path("state/warden.db")).unwrap();
    let id = halt["data"]["halt_id"].as_str().unwrap();
    let ev: String = db
        .query_row("SELECT data FROM evidence WHERE halt_id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    let killed: Vec<i64> = serde_json::from_str::<Value>(&ev).unwrap()["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["pid"].as_i64())
        .collect();
    assert!(
        before.iter().all(|p| killed.contains(&(*p as i64))),
        "{before:?} vs {killed:?}"
    );
    std::fs::remove_file(env.stop_file()).unwrap();
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn stalled_loop_is_a_halt_by_the_kernel() {
    let mut env = Env::new("liveness_timeout = \"300ms\"", &two_agents());
    env.start();
    env.wait_procs(6);
    env.signal(Signal::SIGSTOP);
    let t0 = Instant::now();
    env.wait_for("agents gone", T, || env.marked_pids().is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(250));
    let latch: Value = serde_json::from_slice(&std::fs::read(env.latch()).unwrap()).unwrap();
    assert_eq!(latch["trigger"], "kernel_liveness", "{latch}");
    env.signal(Signal::SIGCONT);
    env.wait_for("SAFE MODE", T, || {
        env.status()["daemon"]["state"] == "safe_mode"
    });
    let entries = audit_tail(&env, 50);
    assert!(
        entries.iter().any(|e| e["kind"] == "halt"
            && ["liveness", "kernel_liveness"]
                .contains(&e["data"]["trigger"].as_str().unwrap_or(""))),
        "{entries:?}"
    );
    // Resume works once a human says so.
    let (code, _, err) = env.cli(&["resume", "--reason", "stall investigated"]);
    assert_eq!(code, 0, "{err}");
    env.wait_procs(6);
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn killed_kernel_halts_everything_and_no_agent_runs_without_one() {
    let mut env = Env::new("", &two_agents());
    env.start();
    env.wait_procs(6);
    let kpid = env.status()["daemon"]["kernel_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(kpid), Signal::SIGKILL).unwrap();
    env.wait_for("SAFE MODE after the kernel died", T, || {
        env.status()["daemon"]["safe_mode"]["trigger"] == "kernel_died"
    });
    env.assert_nothing_left();
    // A new kernel is up; a resume brings the agents back under it.
    env.wait_for("a new kernel", T, || {
        env.status()["daemon"]["kernel_pid"]
            .as_i64()
            .is_some_and(|p| p as i32 != kpid)
    });
    let (code, _, err) = env.cli(&["resume", "--reason", "kernel restarted"]);
    assert_eq!(code, 0, "{err}");
    env.wait_procs(6);
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn slow_revocation_and_stuck_stop_do_not_delay_the_freeze() {
    // `slow` has a credential whose revoke command sleeps 10 s; `stuck`
    // ignores TERM, so its orderly stop waits out a 30 s grace.
    let agents = agent("slow", workload::COOPERATIVE, 2, "")
        + &agent("stuck", workload::TERM_IGNORING, 2, "")
        + &agent("other", workload::COOPERATIVE, 2, "");
    let mut env = Env::new("", &agents);
    env.set_top("grace", "\"30s\"");
    env.start();
    env.wait_procs(6);
    let (code, _, err) = env.cli(&[
        "cred",
        "issue",
        "slow",
        "--kind",
        "api-key",
        "--name",
        "k",
        "--revoke-command",
        "sleep",
        "10",
    ]);
    assert_eq!(code, 0, "{err}");
    // Revocation runs with kill level 1 (two-phase): it takes 10 s.
    let (code, out, err) = env.cli(&[
        "arm", "slow", "--levels", "1", "--reason", "revoke", "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let armed: Value = serde_json::from_str(&out).unwrap();
    let id = armed["id"]
        .as_str()
        .or(armed["authorization"]["id"].as_str())
        .unwrap_or_else(|| panic!("no id in {armed}"))
        .to_string();
    let socket = env.socket();
    let bin = common::bin();
    let exec = std::thread::spawn(move || {
        std::process::Command::new(bin)
            .arg("--socket")
            .arg(socket)
            .args(["execute", &id])
            .output()
    });
    // The stuck agent's orderly stop: TERM ignored, grace 30 s.
    let (code, _, err) = env.cli(&["stop", "stuck"]);
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(Duration::from_millis(200));
    let events = agents_events(&env);
    let t0 = Instant::now();
    touch(&env.stop_file());
    // Frozen by the stop file, or already gone: a loop blocked by the 10 s
    // revocation for longer than liveness_timeout is itself a kernel halt.
    env.wait_for("frozen or empty", T, || {
        frozen(&events) || std::fs::read_to_string(&events).is_ok_and(|s| s.contains("populated 0"))
    });
    eprintln!(
        "frozen {:?} after the stop file, with the daemon busy",
        t0.elapsed()
    );
    env.wait_for("agents gone", T, || env.marked_pids().is_empty());
    let _ = exec.join();
    env.wait_for("SAFE MODE", Duration::from_secs(30), || {
        env.try_call(r#"{"cmd":"status"}"#)
            .is_some_and(|s| s["data"]["daemon"]["state"] == "safe_mode")
    });
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(Duration::from_secs(30)), 0);
    env.assert_nothing_left();
}
