//! Root tests of the running daemon: every workload leaves nothing behind
//! after a hard halt, an orderly stop, and a SIGKILL of the daemon; limits
//! hold; SAFE MODE keeps agents down; bad input gets clear errors.

mod common;

use std::time::{Duration, Instant};

use common::{agent, workload, Env};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(20);

/// All the hostile workloads at once, with limits.
fn hostile_agents() -> String {
    [
        agent("coop", workload::COOPERATIVE, 5, "pids_max = 64"),
        agent("ignorer", workload::TERM_IGNORING, 5, "pids_max = 64"),
        agent("escapee", workload::ESCAPEES, 5, "pids_max = 64"),
        agent("respawner", workload::RESPAWNER, 0, "pids_max = 32"),
        agent("bomb", workload::FORK_BOMB, 0, "pids_max = 40"),
    ]
    .concat()
}

/// The runaway monitors would (rightly) halt these workloads by themselves;
/// tests of the other halt levers switch them off.
const NO_RUNAWAY: &str =
    "[limits]\ndisable = [\"pids\", \"fork_rate\", \"busy_loop\", \"crash_loop\", \"memory\"]\n";

fn touch(p: &std::path::Path) {
    std::fs::write(p, b"").unwrap();
}

#[test]
fn stop_file_hard_halt_leaves_nothing_and_latches() {
    let mut env = Env::new(NO_RUNAWAY, &hostile_agents());
    env.start();
    // 5 + 5 + 5 escapees, plus the respawner and the bomb filling their pids_max.
    env.wait_procs(40);
    env.wait_for("bomb at its limit", T, || {
        env.agent("bomb")["pids"].as_array().unwrap().len() >= 30
    });
    let before = env.marked_pids();
    let t0 = Instant::now();
    touch(&env.stop_file());
    env.wait_for("SAFE MODE", T, || {
        env.status()["daemon"]["state"] == "safe_mode"
    });
    let took = t0.elapsed();
    env.assert_nothing_left();
    for p in &before {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}/environ")).exists()
                || !common::marked_pids(&env.marker).contains(p),
            "pid {p} survived"
        );
    }
    let st = env.status();
    let h = &st["last_halt"];
    assert_eq!(h["trigger"], "stop_file");
    assert!(h["survivors"].as_array().unwrap().is_empty(), "{h}");
    assert_eq!(h["frozen"], true, "{h}");
    assert!(
        h["processes"].as_u64().unwrap() as usize >= before.len() - 5,
        "{h}"
    );
    let t = &h["timings"];
    let ladder = [
        t["freeze_requested_us"].as_u64().unwrap(),
        t["frozen_us"].as_u64().unwrap(),
        t["evidence_us"].as_u64().unwrap(),
        t["killed_us"].as_u64().unwrap(),
        t["empty_us"].as_u64().unwrap(),
    ];
    assert!(
        ladder.windows(2).all(|w| w[0] <= w[1]),
        "phases out of order: {ladder:?}"
    );
    assert!(took < Duration::from_secs(10));
    assert!(env.latch().exists(), "latch written");
    assert_eq!(st["daemon"]["safe_mode"]["trigger"], "stop_file");
    // Agent cgroups are removed.
    let agents_dirs: Vec<_> = env
        .cgroup_dirs()
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(d.join("agents"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect();
    assert!(agents_dirs.is_empty(), "{agents_dirs:?}");
    // Nothing starts while the stop file exists, and resume is refused.
    let (code, _, err) = env.cli(&["start", "coop"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("SAFE MODE"), "{err}");
    let (code, _, err) = env.cli(&["resume", "--reason", "test"]);
    assert_eq!(code, 1);
    assert!(err.contains("stop file"), "{err}");
    // Remove it and resume: agents come back.
    std::fs::remove_file(env.stop_file()).unwrap();
    let (code, out, err) = env.cli(&["resume", "--reason", "checked by test"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!env.latch().exists());
    env.wait_procs(10);
    assert_eq!(env.status()["daemon"]["state"], "running");
    // Orderly stop at the end: nothing left, clean exit.
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0, "{}", env.stderr());
    env.assert_nothing_left();
    assert!(env.cgroup_dirs().is_empty(), "{:?}", env.cgroup_dirs());
}

#[test]
fn cli_halt_and_sigint_halt() {
    let mut env = Env::new("", &agent("ignorer", workload::TERM_IGNORING, 4, ""));
    env.start();
    env.wait_procs(5);
    let (code, out, err) = env.cli(&["halt", "--reason", "operator test"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("survivors 0"), "{out}");
    env.assert_nothing_left();
    let st = env.status();
    assert_eq!(st["daemon"]["safe_mode"]["trigger"], "cli");
    assert_eq!(st["daemon"]["safe_mode"]["reason"], "operator test");
    let (code, out, _) = env.cli(&["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("SAFE MODE") && out.contains("operator test"),
        "{out}"
    );
    // SIGINT: hard halt, daemon stays up.
    let (code, _, err) = env.cli(&["resume", "--reason", "again"]);
    assert_eq!(code, 0, "{err}");
    env.wait_procs(5);
    env.signal(Signal::SIGINT);
    env.wait_for("SAFE MODE after SIGINT", T, || {
        env.status()["daemon"]["safe_mode"]["trigger"] == "signal"
    });
    env.assert_nothing_left();
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
}

#[test]
fn orderly_stop_terms_then_kills_and_exits() {
    // Every workload, the respawner and the fork bomb included.
    let mut env = Env::new(NO_RUNAWAY, &hostile_agents());
    env.start();
    env.wait_procs(40);
    let t0 = Instant::now();
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0, "{}", env.stderr());
    let took = t0.elapsed();
    // grace is 1s: the ignorers needed the kill ladder after it.
    assert!(took >= Duration::from_millis(900), "{took:?}");
    env.assert_nothing_left();
    assert!(env.cgroup_dirs().is_empty());
    assert!(!env.latch().exists(), "an orderly stop sets no latch");
    // A clean stop: the next start runs the agents.
    env.start();
    assert_eq!(env.status()["daemon"]["state"], "running");
    env.wait_procs(40);
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn sigkill_of_daemon_leaves_no_agent_and_restart_is_safe_mode() {
    // Every workload, the respawner and the fork bomb included.
    let mut env = Env::new(NO_RUNAWAY, &hostile_agents());
    env.start();
    env.wait_procs(40);
    env.signal(Signal::SIGKILL);
    assert_eq!(env.wait_exit(T), -9);
    // The guard takes down what PDEATHSIG cannot reach.
    env.wait_for("agents gone after SIGKILL", Duration::from_secs(10), || {
        env.marked_pids().is_empty()
    });
    env.assert_nothing_left();
    env.start();
    let st = env.status();
    assert_eq!(st["daemon"]["state"], "safe_mode", "{st}");
    assert!(env.marked_pids().is_empty(), "nothing starts in SAFE MODE");
    let (code, _, err) = env.cli(&["resume", "--reason", "investigated"]);
    assert_eq!(code, 0, "{err}");
    env.wait_procs(10);
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn latch_set_before_restart_keeps_agents_down() {
    let mut env = Env::new("", &agent("coop", workload::COOPERATIVE, 2, ""));
    std::fs::create_dir_all(env.path("state")).unwrap();
    let latch = serde_json::json!({"version":1,"trigger":"cli","reason":"set by test",
        "halt_id":null,"set_at_ms":0,"uid":0});
    std::fs::write(env.latch(), latch.to_string()).unwrap();
    env.start();
    std::thread::sleep(Duration::from_millis(500));
    assert!(env.marked_pids().is_empty());
    let st = env.status();
    assert_eq!(st["daemon"]["safe_mode"]["reason"], "set by test");
    assert_eq!(env.agent("coop")["state"], "halted");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    assert!(env.latch().exists(), "a clean exit keeps the latch");
}

#[test]
fn memory_hog_and_fork_bomb_are_contained() {
    let agents = [
        agent(
            "hog",
            "exec python3 -c 'b=[]\nwhile True: b.append(bytearray(1<<20))'",
            0,
            "memory_max = \"64M\"\nrestart = \"never\"",
        ),
        agent("bomb", workload::FORK_BOMB, 0, "pids_max = 25"),
    ]
    .concat();
    let mut env = Env::new(NO_RUNAWAY, &agents);
    env.start();
    // The hog is killed by the kernel at its limit.
    env.wait_for("hog OOM-killed", T, || {
        env.agent("hog")["last_exit"] == "killed by signal 9"
    });
    // The bomb stays at its limit, and the daemon answers quickly meanwhile.
    env.wait_for("bomb at limit", T, || {
        env.agent("bomb")["pids"].as_array().unwrap().len() >= 20
    });
    for _ in 0..20 {
        let t = Instant::now();
        let n = env.agent("bomb")["pids"].as_array().unwrap().len();
        assert!(n <= 25, "pids_max exceeded: {n}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "daemon slow: {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let cg = std::path::Path::new(common::CGROUP_MOUNT)
        .join("pids")
        .join(env.root.trim_start_matches('/'))
        .join("agents/bomb/pids.max");
    assert_eq!(std::fs::read_to_string(cg).unwrap().trim(), "25");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn restart_policy_and_crash_loop_breaker() {
    let agents = [
        agent(
            "crasher",
            "echo crash; exit 3",
            0,
            "restart = \"on-failure\"",
        ),
        agent("once", "exit 0", 0, "restart = \"on-failure\""),
    ]
    .concat();
    let mut env = Env::new(
        "crash_loop = { exits = 3, window = \"30s\" }\ncrash_loop_action = \"fail\"",
        &agents,
    );
    env.start();
    env.wait_for("crash loop breaker", T, || {
        env.agent("crasher")["state"] == "failed"
    });
    let a = env.agent("crasher");
    assert!(a["reason"].as_str().unwrap().contains("crash loop"), "{a}");
    assert_eq!(a["restarts"], 2);
    assert_eq!(env.agent("once")["state"], "stopped");
    // An operator start clears it.
    let (code, _, _) = env.cli(&["start", "crasher"]);
    assert!(code == 0 || code == 1);
    let (code, out, _) = env.cli(&["logs", "crasher"]);
    assert_eq!(code, 0);
    assert!(out.contains("crash"), "{out}");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
}

#[test]
fn stop_and_start_one_agent() {
    let agents = [
        agent("a", workload::TERM_IGNORING, 2, ""),
        agent("b", workload::COOPERATIVE, 2, ""),
    ]
    .concat();
    let mut env = Env::new("", &agents);
    env.start();
    env.wait_procs(6);
    let (code, _, err) = env.cli(&["stop", "a"]);
    assert_eq!(code, 0, "{err}");
    env.wait_for("a stopped", T, || env.agent("a")["state"] == "stopped");
    assert_eq!(env.agent("b")["state"], "running");
    assert!(env.agent("a")["pids"].as_array().unwrap().is_empty());
    let (code, _, err) = env.cli(&["start", "a"]);
    assert_eq!(code, 0, "{err}");
    env.wait_for("a running", T, || env.agent("a")["state"] == "running");
    let (code, _, err) = env.cli(&["restart", "b"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = env.cli(&["stop", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no agent named"), "{err}");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn bad_socket_input_gets_clear_errors() {
    let mut env = Env::new("", "");
    env.start();
    let v = env.call("this is not json");
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("bad request"), "{v}");
    let v = env.call(r#"{"cmd":"launch-missiles"}"#);
    assert!(
        v["error"].as_str().unwrap().contains("launch-missiles"),
        "{v}"
    );
    let v = env.call(r#"{"cmd":"halt"}"#);
    assert!(v["error"].as_str().unwrap().contains("reason"), "{v}");
    let long = format!("{{\"cmd\":\"status\",\"x\":\"{}\"}}", "a".repeat(100_000));
    let v = env.call(&long);
    assert!(v["error"].as_str().unwrap().contains("longer than"), "{v}");
    // Still serving.
    assert_eq!(env.status()["daemon"]["state"], "running");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
}

#[test]
fn cli_errors_and_exit_codes() {
    let mut env = Env::new("", "");
    // No daemon: exit 3 with a clear message.
    let (code, _, err) = env.cli(&["status"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not running"), "{err}");
    // Usage errors: exit 2.
    let (code, _, _) = env.cli(&["halt"]);
    assert_eq!(code, 2);
    let (code, _, _) = env.cli(&["frobnicate"]);
    assert_eq!(code, 2);
    // Bad config: exit 4, names the key and line.
    let bad = env.path("bad.toml");
    std::fs::write(
        &bad,
        "grace = \"1s\"\n[[agent]]\nname = \"x\"\ncommand = [\"/bin/true\"]\nmemroy_max = \"1G\"\n",
    )
    .unwrap();
    let (code, _, err) = env.cli(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(code, 4);
    assert!(
        err.contains("memroy_max") && err.contains("line 5"),
        "{err}"
    );
    let (code, _, err) = env.cli(&["daemon", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 4, "{err}");
    let (code, out, _) = env.cli(&["check-config", env.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    // A second daemon on the same state directory: exit 5.
    env.start();
    let (code, _, err) = env.cli(&["daemon", "--config", env.config.to_str().unwrap()]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("already running"), "{err}");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
}

#[test]
fn demo_runs_and_reports_a_complete_halt() {
    common::require_root();
    let out = std::process::Command::new(common::bin())
        .args(["demo", "--halt-after", "3s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("=== HALT"), "{stdout}");
    assert!(stdout.contains("survivors : none"), "{stdout}");
    assert!(stdout.contains("hostile"), "{stdout}");
    // It cleans up after itself.
    let cfg = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("config    : "))
        .unwrap();
    let dir = std::path::Path::new(cfg).parent().unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// A copy of /sys/fs/cgroup made of bind mounts in a private mount namespace
/// of this test thread (the daemon, spawned from it, inherits it), with every
/// v1 hierarchy read-only and `unified` writable: what a container started by
/// systemd-nspawn sees on a hybrid host.
struct NspawnView {
    dir: tempfile::TempDir,
    mounted: Vec<std::path::PathBuf>,
}

impl NspawnView {
    fn new() -> NspawnView {
        use nix::mount::{mount, MsFlags};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .unwrap();
        let mut v = NspawnView {
            dir: tempfile::tempdir().unwrap(),
            mounted: vec![],
        };
        for h in [
            "memory", "pids", "cpu", "cpuacct", "freezer", "blkio", "unified",
        ] {
            let t = v.dir.path().join(h);
            std::fs::create_dir(&t).unwrap();
            let src = std::path::Path::new(common::CGROUP_MOUNT).join(h);
            mount(Some(&src), &t, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
            v.mounted.push(t.clone());
            if h != "unified" {
                let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                mount(None::<&str>, &t, None::<&str>, ro, None::<&str>).unwrap();
            }
        }
        v
    }
}

impl Drop for NspawnView {
    fn drop(&mut self) {
        for m in &self.mounted {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[test]
fn read_only_controllers_refuse_limits_unless_warn() {
    let view = NspawnView::new();
    let agents = [
        agent(
            "limited",
            workload::COOPERATIVE,
            2,
            "memory_max = \"64M\"\npids_max = 50",
        ),
        agent(
            "warned",
            workload::TERM_IGNORING,
            2,
            "memory_max = \"64M\"\nunenforced_limits = \"warn\"",
        ),
        agent("plain", workload::ESCAPEES, 2, ""),
    ]
    .concat();
    let mut env = Env::new("", &agents);
    env.set_top(
        "cgroup_mount",
        &toml::Value::String(view.dir.path().display().to_string()).to_string(),
    );
    env.start();
    env.wait_for("agents settled", T, || {
        env.agent("warned")["state"] == "running" && env.agent("plain")["state"] == "running"
    });
    let l = env.agent("limited");
    assert_eq!(l["state"], "failed", "{l}");
    let why = l["reason"].as_str().unwrap();
    assert!(
        why.contains("cannot enforce") && why.contains("memory_max") && why.contains("pids_max"),
        "{why}"
    );
    let w = env.agent("warned");
    assert_eq!(
        w["unenforced_limits"],
        serde_json::json!(["memory_max"]),
        "{w}"
    );
    let (_, out, _) = env.cli(&["agents"]);
    assert!(out.contains("UNENFORCED: memory_max"), "{out}");
    // Freeze and kill still work through the writable unified hierarchy.
    env.wait_procs(6);
    touch(&env.stop_file());
    env.wait_for("SAFE MODE", T, || {
        env.status()["daemon"]["state"] == "safe_mode"
    });
    env.assert_nothing_left();
    assert_eq!(env.status()["last_halt"]["frozen"], true);
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    drop(env);
    drop(view);
}
