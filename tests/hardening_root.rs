//! #12 hardening, with the real daemon: agent output is rotated, paced and
//! counted against the agent's own disk budget; evidence is bounded in time
//! and size and a refused evidence record never stops the audit log; agent
//! output and operator text reach a terminal escaped. Needs root (cgroups);
//! CI runs as root, so these never skip.

mod common;

use std::time::{Duration, Instant};

use common::{agent, Env};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(30);

/// Every monitor off but `keep` (a busy CI host could trip another first).
fn monitors_only(keep: &[&str]) -> String {
    let off: Vec<String> = [
        "busy_loop",
        "memory",
        "fork_rate",
        "pids",
        "disk_write",
        "crash_loop",
        "disk_free",
        "host_memory",
        "host_load",
    ]
    .iter()
    .filter(|m| !keep.contains(m))
    .map(|m| format!("\"{m}\""))
    .collect();
    format!("[limits]\ndisable = [{}]\n", off.join(", "))
}

fn stop(mut env: Env) {
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0, "{}", env.stderr());
    env.assert_nothing_left();
}

/// Bytes of `NAME.log` and its rotated files.
fn log_files(env: &Env, name: &str) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(env.path("log/agents"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}.log"))
        })
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    v.sort();
    v
}

/// One status round trip, timed.
fn timed_status(env: &Env) -> Duration {
    let t = Instant::now();
    let v = env.call(r#"{"cmd":"status"}"#);
    assert_eq!(v["ok"], true, "{v}");
    t.elapsed()
}

/// A `yes` flood for 10 s: at most log_max × (log_keep + 1) on disk, the
/// drain held to log_rate (the agent blocks on its pipe), `status` answers
/// within 100 ms throughout, and the other agent runs on untouched.
#[test]
fn output_flood_is_rotated_paced_and_bounded() {
    let mut env = Env::new(
        &format!(
            "monitor_interval = \"200ms\"\nlog_max = \"256K\"\nlog_keep = 2\nlog_rate = \"1M\"\nlog_burst = \"1M\"\n{}",
            monitors_only(&[])
        ),
        &(agent("flood", "exec yes", 1, "") + &agent("quiet", "exec sleep 1000", 1, "")),
    );
    env.start();
    env.wait_for("both agents running", T, || {
        ["flood", "quiet"]
            .iter()
            .all(|a| env.agent(a)["state"] == "running")
    });
    let quiet_pid = env.agent("quiet")["pid"].clone();
    let t0 = Instant::now();
    let mut lat = Vec::new();
    while t0.elapsed() < Duration::from_secs(10) {
        lat.push(timed_status(&env));
        std::thread::sleep(Duration::from_millis(50));
    }
    lat.sort();
    let worst = *lat.last().unwrap();
    eprintln!(
        "status during the flood: {} samples, p50 {:?}, p90 {:?}, max {:?}",
        lat.len(),
        lat[lat.len() / 2],
        lat[lat.len() * 9 / 10],
        worst
    );
    let elapsed = t0.elapsed().as_secs_f64() + 1.0;
    let flood = env.agent("flood");
    assert_eq!(flood["state"], "running", "{flood}");
    let quiet = env.agent("quiet");
    assert_eq!(quiet["state"], "running", "{quiet}");
    assert_eq!(quiet["pid"], quiet_pid, "the other agent was not restarted");
    // Within 100 ms throughout, allowing 2 % of samples for the scheduler of
    // a shared CI host (2 cores under parallel builds show single 100-200 ms
    // stalls with no flood at all); never anywhere near the seconds a
    // draining loop would take.
    let p98 = lat[lat.len() * 98 / 100];
    assert!(
        p98 <= Duration::from_millis(100),
        "status took {p98:?} (98th percentile) during the flood"
    );
    assert!(
        worst <= Duration::from_millis(500),
        "status took {worst:?} during the flood"
    );

    // Paced: the burst plus the rate for the time it ran (and a margin for
    // the start-up before t0), not the gigabytes `yes` can write.
    let out = flood["output_bytes"].as_u64().unwrap();
    let bound = (1u64 << 20) + ((1u64 << 20) as f64 * (elapsed + 2.0)) as u64;
    assert!(out > 2 << 20, "the flood was drained at all: {out}");
    assert!(out <= bound, "output {out} over the paced bound {bound}");

    // Bounded on disk: the current file and two rotated ones, each at most log_max.
    let files = log_files(&env, "flood");
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["flood.log", "flood.log.1", "flood.log.2"],
        "{files:?}"
    );
    let total: u64 = files.iter().map(|(_, n)| n).sum();
    assert!(files.iter().all(|(_, n)| *n <= 256 << 10), "{files:?}");
    assert!(total <= (256 << 10) * 3, "{total} bytes on disk");

    // The daemon's memory stays bounded by the pipes, not the flood.
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", env.daemon_pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(rss_kib < 200 << 10, "daemon RSS {rss_kib} KiB");
    stop(env);
}

/// With a small disk_write budget, a flood is a breach of that agent, by
/// name (the daemon's writes count as the agent's), never a host-wide
/// disk_free trip.
#[test]
fn output_flood_is_that_agents_disk_write_breach() {
    let mut env = Env::new(
        &format!(
            "monitor_interval = \"200ms\"\nlog_max = \"1M\"\nlog_keep = 1\n{}",
            monitors_only(&["disk_write", "disk_free"])
        ),
        &(agent(
            "flood",
            "exec yes",
            1,
            "[agent.limits]\ndisk_write = \"2M\"\ndisk_window = \"60s\"\n",
        ) + &agent("quiet", "exec sleep 1000", 1, "")),
    );
    env.start();
    env.wait_for("disk_write breach", T, || {
        env.status()["daemon"]["state"] == "safe_mode"
    });
    let st = env.status();
    let reason = st["daemon"]["safe_mode"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("disk_write monitor tripped by agent flood"),
        "{reason}"
    );
    env.assert_nothing_left();
    stop(env);
}

/// Reads the halt entries and evidence records of the audit database.
fn halts_and_evidence(env: &Env) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let conn = rusqlite::Connection::open_with_flags(
        env.path("state/warden.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let rows = |sql: &str| -> Vec<serde_json::Value> {
        let mut st = conn.prepare(sql).unwrap();
        st.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|s| serde_json::from_str(&s.unwrap()).unwrap())
            .collect()
    };
    (
        rows("SELECT data FROM audit_log WHERE kind = 'halt' ORDER BY seq"),
        rows("SELECT data FROM evidence ORDER BY timestamp"),
    )
}

/// #18: processes with huge argv of control bytes. The halt entry is
/// written, the evidence is cut and says so, the audit writer stays healthy
/// and resume works.
#[test]
fn huge_argv_evidence_is_capped_and_the_writer_survives() {
    // Four processes, each with 15 arguments of 100 KiB of control bytes
    // (one argument may hold at most 128 KiB: MAX_ARG_STRLEN).
    let script = "for i in 1 2 3 4; do python3 -c 'import os; os.execv(\"/bin/sleep\", [\"sleep\", \"1000\"] + [\"\\x01\\x1b\" * 51200] * 15)' & done; wait";
    let mut env = Env::new(&monitors_only(&[]), &agent("argv", script, 1, ""));
    env.start();
    env.wait_procs(5);
    // Let the four python processes become the sleeps with the huge argv.
    std::thread::sleep(Duration::from_secs(1));
    let (code, _, err) = env.cli(&["halt", "--reason", "huge argv"]);
    assert_eq!(code, 0, "{err}");
    env.assert_nothing_left();
    let st = env.status();
    assert_eq!(st["daemon"]["state"], "safe_mode", "{st}");
    assert_eq!(st["daemon"]["audit_healthy"], true, "{st}");

    let (halts, evidence) = halts_and_evidence(&env);
    let halt = halts.last().expect("a halt entry");
    assert!(halt["evidence_error"].is_null(), "{halt}");
    assert_eq!(halt["evidence_complete"], false, "{halt}");
    let ev = evidence.last().expect("an evidence record");
    assert_eq!(ev["complete"], false);
    assert!(
        ev["omitted"]["cmdlines_truncated"].as_u64().unwrap() >= 4,
        "{}",
        ev["omitted"]
    );
    let procs = ev["agents"][0]["processes"].as_array().unwrap();
    let sleepers: Vec<_> = procs.iter().filter(|p| p["name"] == "sleep").collect();
    assert_eq!(sleepers.len(), 4);
    for p in sleepers {
        assert_eq!(p["cmdline_truncated"], true);
        let len: usize = p["cmdline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().len())
            .sum();
        assert!(len <= warden_core::evidence::CMDLINE_MAX, "{len}");
    }
    let size = serde_json::to_string(ev).unwrap().len();
    assert!(size <= warden_core::evidence::EVIDENCE_MAX, "{size}");

    // The writer took the halt; it takes the resume too.
    let (code, out, err) = env.cli(&["resume", "--reason", "checked the evidence"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(env.status()["daemon"]["state"], "running");
    stop(env);
}

/// Past evidence_budget, fds are counted instead of listed and the
/// evidence says `complete: false`; every process is still named.
#[test]
fn evidence_budget_counts_instead_of_lists() {
    // 50 processes with 1,000 open fds each.
    let script = "exec python3 -c 'import os, time\nfds = [os.open(\"/dev/null\", os.O_RDONLY) for _ in range(1000)]\nfor _ in range(49):\n    if os.fork() == 0:\n        break\ntime.sleep(1000)'";
    let mut env = Env::new(
        &format!("evidence_budget = \"1ms\"\n{}", monitors_only(&[])),
        &agent("fds", script, 1, "[agent.rlimits]\nnofile = 1500\n"),
    );
    env.start();
    env.wait_procs(50);
    // Let every child open its fds (they inherit them; give the parent a moment).
    std::thread::sleep(Duration::from_millis(300));
    let (code, _, err) = env.cli(&["halt", "--reason", "budget"]);
    assert_eq!(code, 0, "{err}");
    env.assert_nothing_left();
    let (halts, evidence) = halts_and_evidence(&env);
    assert_eq!(halts.last().unwrap()["evidence_complete"], false);
    let ev = evidence.last().unwrap();
    assert_eq!(ev["complete"], false, "{ev}");
    let o = &ev["omitted"];
    assert!(
        o["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("evidence_budget 1ms"),
        "{o}"
    );
    let procs = ev["agents"][0]["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 50, "every pid is named");
    let left_out = o["details"].as_u64().unwrap() + o["fds"].as_u64().unwrap();
    assert!(left_out > 0, "{o}");
    // Where fds were not listed, they were counted.
    for p in procs
        .iter()
        .filter(|p| p["fds"].as_array().unwrap().is_empty())
    {
        if p["state"].as_str().unwrap().starts_with("not captured") {
            continue;
        }
        assert!(p["fd_count"].as_u64().unwrap() >= 1000, "{p}");
    }
    stop(env);
}

/// Runs `warden ARGS` under a pseudo-terminal (util-linux `script`), so its
/// stdout is a terminal; returns what the terminal received.
fn under_pty(env: &Env, args: &str) -> String {
    let cmd = format!(
        "{} --socket {} {args}",
        common::bin(),
        env.socket().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Agent output with escape sequences reaches a terminal escaped; `--raw`
/// and pipes get the bytes. Operator text in `status` is escaped too.
#[test]
fn logs_and_status_escape_control_characters_on_a_terminal() {
    let script = "printf 'red \\033[31mX\\033[0m title \\033]0;pwned\\007 end\\n'; exec sleep 1000";
    let mut env = Env::new(&monitors_only(&[]), &agent("esc", script, 1, ""));
    env.start();
    env.wait_for("output", T, || env.cli(&["logs", "esc"]).1.contains(" end"));
    let tty = under_pty(&env, "logs esc");
    assert!(
        tty.contains("red \\x1b[31mX\\x1b[0m title \\x1b]0;pwned\\x07 end"),
        "{tty:?}"
    );
    assert!(!tty.contains('\x1b'), "{tty:?}");
    let raw = under_pty(&env, "logs --raw esc");
    assert!(raw.contains("\x1b[31mX\x1b[0m"), "{raw:?}");
    // A pipe gets the bytes as they are.
    let (_, piped, _) = env.cli(&["logs", "esc"]);
    assert!(piped.contains("\x1b]0;pwned\x07"), "{piped:?}");

    let (code, _, err) = env.cli(&["halt", "--reason", "line one\nline two \x1b[2J"]);
    assert_eq!(code, 0, "{err}");
    let (_, status, _) = env.cli(&["status"]);
    assert!(status.contains("line one\\nline two \\x1b[2J"), "{status}");
    assert!(!status.contains('\x1b'), "{status:?}");
    stop(env);
}
