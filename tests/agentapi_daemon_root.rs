//! Root tests of the agent API as the daemon serves it: heartbeats keep an
//! agent alive and their absence halts it; task reports feed the tasks
//! monitor; an agent cannot reach another agent's socket; oversight.

mod common;

use std::time::{Duration, Instant};

use common::{agent, Env};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(30);

/// A python agent that talks to $WARDEN_SOCKET directly.
fn py(body: &str) -> String {
    let prelude = "import json, os, socket, sys, time\n\
         def call(msg, path=None):\n    \
             s = socket.socket(socket.AF_UNIX)\n    \
             s.connect(path or os.environ[\"WARDEN_SOCKET\"])\n    \
             s.sendall((json.dumps(msg) + \"\\n\").encode())\n    \
             r = s.makefile().readline()\n    \
             s.close()\n    \
             return json.loads(r)\n";
    format!("exec python3 -c '{prelude}{body}'")
}

const BEAT_FOREVER: &str =
    "while True:\n    print(call({\"type\": \"heartbeat\"}), flush=True)\n    time.sleep(0.3)";

#[test]
fn heartbeats_keep_an_agent_alive_and_silence_halts_that_agent() {
    let agents = [
        agent(
            "beater",
            &py(BEAT_FOREVER),
            0,
            "heartbeat = \"1s\"\nmissed = 2",
        ),
        agent(
            "silent",
            common::workload::COOPERATIVE,
            1,
            "heartbeat = \"1s\"\nmissed = 2",
        ),
    ]
    .concat();
    let mut env = Env::new("", &agents);
    env.start();
    let t0 = Instant::now();
    env.wait_for("dead man's switch", T, || {
        env.agent("silent")["state"] == "halted"
    });
    let took = t0.elapsed();
    // Grace of one interval at start plus two missed intervals.
    assert!(
        took >= Duration::from_millis(2500),
        "tripped early: {took:?}"
    );
    // Only the silent agent: the host is not in SAFE MODE, the beater runs on.
    let st = env.status();
    assert_eq!(st["daemon"]["state"], "running", "{st}");
    assert_eq!(env.agent("beater")["state"], "running");
    let halt = &st["last_halt"];
    assert_eq!(halt["trigger"], "heartbeat", "{halt}");
    assert!(
        halt["reason"].as_str().unwrap().contains("heartbeat")
            && halt["agents"].to_string().contains("silent"),
        "{halt}"
    );
    assert_eq!(halt["processes"], 2, "evidence of sh and its sleep: {halt}");
    assert!(env.agent("silent")["pids"].as_array().unwrap().is_empty());
    // It stays down: no restart by policy.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(env.agent("silent")["state"], "halted");
    // The beater got signed health tokens.
    let (_, out, _) = env.cli(&["logs", "beater"]);
    assert!(
        out.contains("'token'") && out.contains("'signature'"),
        "{out}"
    );
    // An operator brings the silent one back.
    let (code, _, err) = env.cli(&["start", "silent"]);
    assert_eq!(code, 0, "{err}");
    env.wait_for("silent restarted", T, || {
        env.agent("silent")["state"] == "running"
    });
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn beating_agent_is_left_alone() {
    let mut env = Env::new(
        "",
        &agent(
            "beater",
            &py(BEAT_FOREVER),
            0,
            "heartbeat = \"1s\"\nmissed = 2",
        ),
    );
    env.start();
    std::thread::sleep(Duration::from_secs(4));
    let st = env.status();
    assert_eq!(st["daemon"]["state"], "running", "{st}");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn task_reports_feed_the_tasks_monitor() {
    let body = "for i in range(5):\n    print(call({\"type\": \"task\", \"description\": \"task %d\" % i}), flush=True)\n    time.sleep(0.2)\ntime.sleep(1000)";
    let mut env = Env::new(
        "[limits]\ntasks_per_day = 2\n",
        &agent("planner", &py(body), 0, ""),
    );
    env.start();
    env.wait_for("tasks breach", T, || {
        env.status()["daemon"]["state"] == "safe_mode"
    });
    let reason = env.status()["daemon"]["safe_mode"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.starts_with("tasks") && reason.contains("3 tasks"),
        "{reason}"
    );
    env.assert_nothing_left();
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
}

#[test]
fn an_agent_cannot_reach_another_agents_socket() {
    // Agent "a" runs as nobody, agent "b" as a uid of its own; "a" tries
    // b's socket and reports what happened.
    let probe = "import errno\nother = os.environ[\"WARDEN_SOCKET\"].replace(\"/a/\", \"/b/\")\ntry:\n    print(\"PROBE\", call({\"type\": \"heartbeat\"}, other), flush=True)\nexcept OSError as e:\n    print(\"PROBE refused\", errno.errorcode[e.errno], flush=True)\nprint(\"SELF\", call({\"type\": \"whoami\"}), flush=True)\ntime.sleep(1000)";
    // `agent()` sets user = "nobody"; give b its own uid.
    let agents = [
        agent("a", &py(probe), 0, ""),
        agent("b", common::workload::COOPERATIVE, 1, "")
            .replace("user = \"nobody\"", "user = \"65533\""),
    ]
    .concat();
    let mut env = Env::new("", &agents);
    env.start();
    env.wait_for("probe result", T, || {
        env.cli(&["logs", "a"]).1.contains("SELF")
    });
    let (_, out, _) = env.cli(&["logs", "a"]);
    assert!(out.contains("PROBE refused EACCES"), "{out}");
    assert!(out.contains("'agent': 'a'"), "{out}");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn oversight_going_dark_halts_and_checkins_keep_it_up() {
    let mut env = Env::new(
        "oversight_timeout = \"2s\"",
        &agent("a", common::workload::COOPERATIVE, 1, ""),
    );
    env.start();
    // Check in every 500 ms for 3 s: no halt.
    for _ in 0..6 {
        let (code, out, err) = env.cli(&["checkin"]);
        assert_eq!(code, 0, "{out}{err}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(env.status()["daemon"]["state"], "running");
    // Then nobody: everything halts.
    env.wait_for("oversight halt", T, || {
        env.status()["daemon"]["state"] == "safe_mode"
    });
    let reason = env.status()["daemon"]["safe_mode"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.starts_with("oversight"), "{reason}");
    env.assert_nothing_left();
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
}
