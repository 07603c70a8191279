//! Root tests of the tool broker as the daemon runs it: every guard refuses
//! what it should and only that; the approval flow end to end; tools run as
//! the agent's user inside its cgroup, with timeout and output cap; a halt
//! during a running tool leaves nothing; brokered mode blocks direct
//! execution while the broker runs the same action once approved; reload;
//! a flood of proposals does not stall the daemon.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{agent, Env};
use nix::sys::signal::Signal;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const NOBODY: u32 = 65534;

/// An agent that only sleeps (the test speaks for it on its socket).
fn idle(name: &str, extra: &str) -> String {
    agent(name, "exec sleep 1000", 0, extra)
}

/// Writes the registry (root-owned, 0644) and points the config at it.
fn registry(env: &Env, text: &str) -> PathBuf {
    let p = env.path("tools.toml");
    std::fs::write(
        &p,
        text.replace("{DIR}", &env.dir.path().display().to_string()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Top of the file: `tools = [...]` inside [agent.broker] is another key.
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("tools = {:?}\n{cfg}", p.display().to_string()),
    )
    .unwrap();
    p
}

/// A world-writable work directory for tools that write files as nobody.
fn workdir(env: &Env) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let w = env.path("work");
    std::fs::create_dir_all(&w).unwrap();
    std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o777)).unwrap();
    w
}

const TOOLS: &str = r#"
[[tool]]
name = "echo"
scope = "read"
program = "/bin/echo"
args = ["{msg}"]
timeout = "5s"
output_cap = "4K"
[tool.params.msg]
type = "string"
max_len = 64

[[tool]]
name = "whoami"
scope = "read"
program = "/bin/sh"
args = ["-c", "id -u; cat /proc/self/cgroup"]
timeout = "5s"
output_cap = "4K"

[[tool]]
name = "flood"
scope = "read"
program = "/usr/bin/yes"
args = []
timeout = "1s"
output_cap = 1000

[[tool]]
name = "touch"
scope = "write"
program = "/usr/bin/touch"
args = ["--", "{file}"]
timeout = "5s"
output_cap = "4K"
[tool.params.file]
type = "path"
prefix = "{DIR}/work"

[[tool]]
name = "rm"
scope = "execute"
program = "/bin/rm"
args = ["-f", "--", "{file}"]
timeout = "5s"
output_cap = "4K"
[tool.params.file]
type = "path"
prefix = "{DIR}/work"

[[tool]]
name = "secret"
scope = "read"
program = "/bin/cat"
args = ["/etc/shadow"]
timeout = "5s"
output_cap = "4K"

[[tool]]
name = "netns"
scope = "read"
program = "/bin/readlink"
args = ["/proc/self/ns/net"]
timeout = "5s"
output_cap = "4K"

[[tool]]
name = "sleeper"
scope = "read"
program = "/bin/sh"
args = ["-c", "sleep 1000 & sleep 1000 & echo started; wait"]
timeout = "60s"
output_cap = "4K"
"#;

/// `warden agent --json ARGS` as the agent's uid on its socket.
fn as_agent(env: &Env, name: &str, args: &[&str]) -> (i32, Value) {
    let out: Output = Command::new(common::bin())
        .arg("agent")
        .arg("--json")
        .arg("--agent-socket")
        .arg(env.path(&format!("agents/{name}/agent.sock")))
        .args(args)
        .env_clear()
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn propose(
    env: &Env,
    name: &str,
    tool: &str,
    args: &[(&str, &str)],
    token: Option<&str>,
) -> (i32, Value) {
    let mut a = vec!["propose".to_string(), tool.to_string()];
    for (k, v) in args {
        a.push("--arg".into());
        a.push(format!("{k}={v}"));
    }
    if let Some(t) = token {
        a.push("--token".into());
        a.push(t.into());
    }
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    as_agent(env, name, &a)
}

fn decision(v: &Value) -> &str {
    v["data"]["decision"].as_str().unwrap_or("")
}

/// Operator CLI with --json, asserting success.
fn op(env: &Env, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let (code, out, err) = env.cli(&a);
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn wait_running(env: &Env, names: &[&str]) {
    env.wait_for("agents running", T, || {
        names
            .iter()
            .all(|n| env.agent(n)["state"].as_str() == Some("running"))
    });
}

fn audit_kinds(env: &Env) -> Vec<Value> {
    let (code, out, err) = env.cli(&[
        "audit",
        "tail",
        "-n",
        "1000",
        "--json",
        "--state-dir",
        &env.path("state").display().to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

#[test]
fn each_guard_refuses_what_it_should_and_only_that() {
    let agents = [
        idle(
            "worker",
            "[agent.broker]\ntools = [\"echo\", \"whoami\", \"flood\", \"touch\", \"rm\"]\nmax_steps = 100",
        ),
        idle(
            "calls",
            "[agent.broker]\ntools = [\"echo\", \"touch\"]\nmax_tool_calls = 2",
        ),
        idle("steps", "[agent.broker]\ntools = [\"echo\"]\nmax_steps = 2"),
        idle("runtime", "[agent.broker]\ntools = [\"echo\"]\nmax_runtime = \"1s\""),
    ]
    .concat();
    // Many refusals in a row are the point here; governance has its own test.
    let mut env = Env::new("[limits]\ngovernance_rejections = 1000\n", &agents);
    registry(&env, TOOLS);
    let work = workdir(&env);
    env.start();
    wait_running(&env, &["worker", "calls", "steps", "runtime"]);

    // An agent with limits must open a run first.
    let (code, v) = propose(&env, "worker", "echo", &[("msg", "hi")], None);
    assert_eq!((code, decision(&v)), (1, "not_allowed"), "{v}");
    let (code, v) = as_agent(&env, "worker", &["run-start", "guard tour"]);
    assert_eq!(code, 0, "{v}");
    let run = v["data"]["run_id"].as_str().unwrap().to_string();

    // read: runs at once, as the agent's user, inside the agent's cgroup.
    let (code, v) = propose(&env, "worker", "echo", &[("msg", "hello; rm -rf /")], None);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["data"]["stdout"], "hello; rm -rf /\n", "no shell: {v}");
    let (code, v) = propose(&env, "worker", "whoami", &[], None);
    assert_eq!(code, 0, "{v}");
    let out = v["data"]["stdout"].as_str().unwrap();
    assert!(out.starts_with(&format!("{NOBODY}\n")), "{out}");
    assert!(
        out.contains(&format!("{}/agents/worker", env.root)),
        "{out}"
    );

    // Registered? Allowed for this agent? Arguments per the schema?
    let (code, v) = propose(&env, "worker", "nope", &[], None);
    assert_eq!((code, decision(&v)), (1, "unknown_tool"), "{v}");
    let (_, v) = propose(&env, "worker", "secret", &[], None);
    assert_eq!(decision(&v), "not_allowed", "{v}");
    let long = "x".repeat(65);
    for bad in [
        vec![("msg", long.as_str())],
        vec![("msg", "-rf")],
        vec![("msg", "a"), ("extra", "b")],
        vec![],
    ] {
        let (_, v) = propose(&env, "worker", "echo", &bad, None);
        assert_eq!(decision(&v), "bad_arguments", "{bad:?}: {v}");
    }
    let (_, v) = propose(&env, "worker", "touch", &[("file", "/etc/passwd")], None);
    assert_eq!(decision(&v), "bad_arguments", "{v}");
    let (_, v) = propose(
        &env,
        "worker",
        "touch",
        &[("file", &format!("{}/../x", work.display()))],
        None,
    );
    assert_eq!(decision(&v), "bad_arguments", "{v}");

    // Timeout and output cap.
    let (code, v) = propose(&env, "worker", "flood", &[], None);
    assert_eq!(code, 5, "{v}");
    let d = &v["data"];
    assert_eq!(d["timed_out"], true, "{v}");
    assert_eq!(d["signal"], 9, "{v}");
    assert_eq!(d["truncated"], true, "{v}");
    assert_eq!(d["stdout"].as_str().unwrap().len(), 1000);
    assert!(d["stdout_bytes"].as_u64().unwrap() > 1000, "{v}");

    // write: without a token the call waits for an operator, once.
    let a = work.join("a").display().to_string();
    let b = work.join("b").display().to_string();
    let (code, v) = propose(&env, "worker", "touch", &[("file", &a)], None);
    assert_eq!((code, decision(&v)), (4, "needs_approval"), "{v}");
    let r1 = v["data"]["request_id"].as_str().unwrap().to_string();
    let (_, v) = propose(&env, "worker", "touch", &[("file", &a)], None);
    assert_eq!(
        v["data"]["request_id"],
        r1.as_str(),
        "same call, same request"
    );
    assert!(!Path::new(&a).exists());
    let pending = op(&env, &["approvals"]);
    let p = pending["pending"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == r1.as_str())
        .expect("listed");
    assert_eq!(
        (p["agent"].as_str(), p["tool"].as_str()),
        (Some("worker"), Some("touch"))
    );
    assert_eq!(p["args"]["file"], a.as_str());
    let granted = op(&env, &["approve", &r1]);
    let token = granted["token"].as_str().unwrap().to_string();
    // The agent collects the token by waiting on its request.
    let (code, v) = as_agent(&env, "worker", &["wait", &r1, "--secs", "5"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["data"]["state"], "approved");
    assert_eq!(v["data"]["token"], token.as_str());
    assert_eq!(v["data"]["approved_by"], 0);
    // A write token is bound to agent, tool and scope, not to the arguments.
    let (code, v) = propose(&env, "worker", "touch", &[("file", &b)], Some(&token));
    assert_eq!(code, 0, "{v}");
    let meta = std::fs::metadata(&b).expect("the broker ran touch");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.uid(), NOBODY, "tools run as the agent's user");
    let (_, v) = propose(&env, "worker", "touch", &[("file", &a)], Some(&token));
    assert_eq!(decision(&v), "token_reused", "{v}");
    // A token is bound to its agent: another agent cannot use it.
    let (_, v) = propose(&env, "worker", "touch", &[("file", &a)], None);
    let r5 = v["data"]["request_id"].as_str().unwrap().to_string();
    assert_ne!(r5, r1, "a used request is not reopened");
    let t5 = op(&env, &["approve", &r5])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, v) = as_agent(&env, "calls", &["run-start", "borrow"]);
    assert_eq!(v["ok"], true, "{v}");
    let (_, v) = propose(&env, "calls", "touch", &[("file", &a)], Some(&t5));
    assert_eq!(decision(&v), "token_mismatch", "{v}");
    assert!(v["error"].as_str().unwrap().contains("worker"), "{v}");
    assert!(!Path::new(&a).exists());

    // execute: the token is bound to the exact arguments.
    let (code, v) = propose(&env, "worker", "rm", &[("file", &b)], None);
    assert_eq!(code, 4, "{v}");
    let r2 = v["data"]["request_id"].as_str().unwrap().to_string();
    let t2 = op(&env, &["approve", &r2])["token"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(&a, "keep").unwrap();
    let (_, v) = propose(&env, "worker", "rm", &[("file", &a)], Some(&t2));
    assert_eq!(decision(&v), "token_mismatch", "{v}");
    assert!(
        Path::new(&a).exists(),
        "nothing ran for the other arguments"
    );
    let (code, v) = propose(&env, "worker", "rm", &[("file", &b)], Some(&t2));
    assert_eq!(code, 0, "{v}");
    assert!(!Path::new(&b).exists(), "rm ran");

    // Expired token.
    let c = work.join("c").display().to_string();
    let (_, v) = propose(&env, "worker", "rm", &[("file", &c)], None);
    let r3 = v["data"]["request_id"].as_str().unwrap().to_string();
    let t3 = op(&env, &["approve", &r3, "--ttl", "1s"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(1200));
    let (_, v) = propose(&env, "worker", "rm", &[("file", &c)], Some(&t3));
    assert_eq!(decision(&v), "token_expired", "{v}");
    // Forged or garbled token.
    let mut forged = t3.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let (_, v) = propose(&env, "worker", "rm", &[("file", &c)], Some(&forged));
    assert_eq!(decision(&v), "token_invalid", "{v}");
    let (_, v) = propose(&env, "worker", "rm", &[("file", &c)], Some("wt1.zz"));
    assert_eq!(decision(&v), "token_invalid", "{v}");

    // Rejection: the waiting agent is told why, and the same call stays refused.
    let d4 = work.join("d").display().to_string();
    let (_, v) = propose(&env, "worker", "rm", &[("file", &d4)], None);
    let r4 = v["data"]["request_id"].as_str().unwrap().to_string();
    let waiter = {
        let sock = env.path("agents/worker/agent.sock");
        let r4 = r4.clone();
        std::thread::spawn(move || {
            let out = Command::new(common::bin())
                .args(["agent", "--json", "--agent-socket"])
                .arg(sock)
                .args(["wait", &r4, "--secs", "20"])
                .env_clear()
                .uid(NOBODY)
                .gid(NOBODY)
                .output()
                .unwrap();
            (
                out.status.code(),
                serde_json::from_slice::<Value>(&out.stdout).unwrap(),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    op(&env, &["reject", &r4, "--reason", "not on a Friday"]);
    let (code, v) = waiter.join().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the wait was released by the decision"
    );
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["data"]["state"], "rejected");
    assert_eq!(v["data"]["reason"], "not on a Friday");
    let (_, v) = propose(&env, "worker", "rm", &[("file", &d4)], None);
    assert_eq!(decision(&v), "approval_required", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("not on a Friday"),
        "{v}"
    );
    // Decided requests cannot be decided again.
    let (code, _, err) = env.cli(&["approve", &r4]);
    assert_eq!(code, 1);
    assert!(err.contains("rejected"), "{err}");
    let (code, _, err) = env.cli(&["approve", "req-nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no approval request"), "{err}");

    // Run limits, one per agent.
    for m in ["1", "2"] {
        let (_, v) = propose(&env, "calls", "echo", &[("msg", m)], None);
        assert_eq!(v["ok"], true, "{v}");
    }
    let (_, v) = propose(&env, "calls", "echo", &[("msg", "3")], None);
    assert_eq!(decision(&v), "limit_exceeded", "{v}");
    let (_, v) = propose(&env, "calls", "echo", &[("msg", "4")], None);
    assert_eq!(decision(&v), "not_allowed", "the run ended: {v}");
    let ended = op(
        &env,
        &["runs", "--agent", "calls", "--reason", "limit_exceeded"],
    );
    assert_eq!(ended["runs"].as_array().unwrap().len(), 1, "{ended}");

    as_agent(&env, "steps", &["run-start", "two steps"]);
    let (_, v) = propose(&env, "steps", "echo", &[("msg", "1")], None);
    assert_eq!(v["ok"], true, "{v}");
    let (_, v) = propose(&env, "steps", "echo", &[], None);
    assert_eq!(
        decision(&v),
        "bad_arguments",
        "a refused call is a step: {v}"
    );
    let (_, v) = propose(&env, "steps", "echo", &[("msg", "3")], None);
    assert_eq!(decision(&v), "limit_exceeded", "{v}");

    as_agent(&env, "runtime", &["run-start", "one second"]);
    let (_, v) = propose(&env, "runtime", "echo", &[("msg", "1")], None);
    assert_eq!(v["ok"], true, "{v}");
    std::thread::sleep(Duration::from_millis(1100));
    let (_, v) = propose(&env, "runtime", "echo", &[("msg", "2")], None);
    assert_eq!(decision(&v), "limit_exceeded", "{v}");

    // The run keeps every call; it ends once.
    let shown = op(&env, &["run", "show", &run]);
    let calls = shown["run"]["calls"].as_array().unwrap();
    let approved: Vec<&Value> = calls
        .iter()
        .filter(|c| c["tool"] == "touch" && c["executed"] == true)
        .collect();
    assert_eq!(approved.len(), 1, "{shown}");
    assert_eq!(approved[0]["approved_by"], 0);
    assert!(calls
        .iter()
        .any(|c| c["tool"] == "flood" && c["truncated"] == true));
    assert!(calls.iter().any(|c| c["decision"] == "token_reused"));
    let (code, v) = as_agent(&env, "worker", &["run-end", &run, "--reason", "completed"]);
    assert_eq!(code, 0, "{v}");
    let (code, v) = as_agent(&env, "worker", &["run-end", &run]);
    assert_eq!(code, 1, "{v}");
    let (code, v) = as_agent(&env, "calls", &["run-end", &run]);
    assert_eq!(code, 1, "another agent's run: {v}");
    // The human forms of the same.
    let (code, out, _) = env.cli(&["runs", "--agent", "worker"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&run) && out.contains("completed") && out.contains("guard tour"),
        "{out}"
    );
    let (code, out, _) = env.cli(&["run", "show", &run]);
    assert_eq!(code, 0);
    assert!(
        out.contains("touch") && out.contains("approved by uid 0"),
        "{out}"
    );
    assert!(
        out.contains("token_reused") && out.contains("(truncated)"),
        "{out}"
    );
    let (code, out, _) = env.cli(&["approvals"]);
    assert_eq!(code, 0);
    assert!(out.contains("no tool call waits"), "{out}");
    let (code, out, _) = env.cli(&["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("tools: 8 from") && out.contains("0 waiting for approval"),
        "{out}"
    );
    let (code, _, err) = env.cli(&["runs", "--reason", "bogus"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown reason"), "{err}");

    // Every decision is audited; tokens never are.
    let entries = audit_kinds(&env);
    let decisions = entries
        .iter()
        .filter(|e| e["kind"] == "tool_decision")
        .count();
    assert!(decisions >= 30, "{decisions} decisions audited");
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains(&token[4..]), "a token reached the audit log");
    assert!(entries.iter().any(|e| e["kind"] == "approval_granted"));
    assert!(entries.iter().any(|e| e["kind"] == "approval_rejected"));
    assert!(entries.iter().any(|e| e["kind"] == "tool_result"));

    assert_eq!(env.status()["daemon"]["state"], "running");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn consecutive_rejections_halt_through_the_governance_monitor() {
    let mut env = Env::new("", &idle("eager", "[agent.broker]\ntools = [\"echo\"]"));
    registry(&env, TOOLS);
    env.start();
    wait_running(&env, &["eager"]);
    let (_, v) = propose(&env, "eager", "echo", &[("msg", "fine")], None);
    assert_eq!(v["ok"], true, "{v}");
    for i in 0..3 {
        let (_, v) = propose(&env, "eager", "secret", &[], None);
        assert_eq!(decision(&v), "not_allowed", "{i}: {v}");
        assert_eq!(env.status()["daemon"]["state"], "running", "{i}");
    }
    let _ = propose(&env, "eager", "nope", &[], None);
    env.wait_for("governance halt", T, || {
        env.status()["daemon"]["state"] == "safe_mode"
    });
    let reason = env.status()["daemon"]["safe_mode"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("governance"), "{reason}");
    env.assert_nothing_left();
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
}

#[test]
fn a_halt_during_a_running_tool_leaves_no_tool_process() {
    let mut env = Env::new("", &idle("runner", "[agent.broker]\ntools = [\"sleeper\"]"));
    registry(&env, TOOLS);
    env.start();
    wait_running(&env, &["runner"]);
    let sock = env.path("agents/runner/agent.sock");
    let caller = std::thread::spawn(move || {
        Command::new(common::bin())
            .args(["agent", "--json", "--agent-socket"])
            .arg(sock)
            .args(["propose", "sleeper"])
            .env_clear()
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap()
    });
    // The tool and its two children run in the agent's cgroup.
    env.wait_for("tool processes", T, || env.pids_in_root().len() >= 4);
    assert_eq!(env.status()["broker"]["running_tools"], 1);
    let (code, _, err) = env.cli(&["halt", "--reason", "tool under way"]);
    assert_eq!(code, 0, "{err}");
    env.assert_nothing_left();
    let out = caller.join().unwrap();
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    env.wait_for("tool result recorded", T, || {
        env.status()["broker"]["running_tools"] == 0
    });
    let r = audit_kinds(&env)
        .into_iter()
        .find(|e| e["kind"] == "tool_result")
        .expect("tool_result audited");
    assert_eq!(r["data"]["signal"], 9, "{r}");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
}

/// A python agent in brokered mode: it tries to run /bin/sh and curl itself
/// (Landlock refuses), then asks the broker for the same action, waits for
/// the operator, and runs it with the token.
const BROKERED: &str = r#"
import json, os, socket, subprocess, sys, time
def call(msg):
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.environ["WARDEN_SOCKET"])
    s.sendall((json.dumps(msg) + "\n").encode())
    r = s.makefile().readline()
    s.close()
    return json.loads(r)
def say(k, v):
    print("RESULT " + json.dumps({"k": k, "v": v}), flush=True)
for prog in ["/bin/sh", "/usr/bin/curl"]:
    try:
        subprocess.run([prog, "--version"], capture_output=True)
        say("direct " + prog, "ran")
    except OSError as e:
        say("direct " + prog, e.errno)
r = call({"type": "propose", "tool": "shell", "args": {"word": "alpha"}})
say("first", r)
rid = r["data"]["request_id"]
w = call({"type": "approval.wait", "request_id": rid, "timeout_ms": 60000})
say("wait", w)
r = call({"type": "propose", "tool": "shell", "args": {"word": "alpha"}, "token": w["data"]["token"]})
say("second", r)
say("done", True)
time.sleep(1000)
"#;

const SHELL_TOOL: &str = r#"
[[tool]]
name = "shell"
scope = "execute"
program = "/bin/sh"
args = ["-c", "echo ran-{word}; /usr/bin/curl --version | head -c 4"]
timeout = "10s"
output_cap = "4K"
[tool.params.word]
type = "string"
allowed = ["alpha", "beta"]
"#;

fn results(env: &Env, name: &str) -> Vec<(String, Value)> {
    let (_, out, _) = env.cli(&["logs", name]);
    out.lines()
        .filter_map(|l| l.find("RESULT ").map(|i| &l[i + 7..]))
        .filter_map(|j| serde_json::from_str::<Value>(j).ok())
        .map(|v| (v["k"].as_str().unwrap_or("").to_string(), v["v"].clone()))
        .collect()
}

#[test]
fn brokered_agent_cannot_run_programs_but_the_broker_runs_them_once_approved() {
    let script = toml::Value::String(BROKERED.to_string());
    let agents = format!(
        "[[agent]]\nname = \"confined\"\ncommand = [\"/usr/bin/python3\", \"-c\", {script}]\nuser = \"nobody\"\nexec = \"brokered\"\nenv = {{ WARDEN_TEST_MARK = \"{{M}}\" }}\n[agent.broker]\ntools = [\"shell\"]\n"
    );
    let mut env = Env::new("", &agents);
    registry(&env, SHELL_TOOL);
    env.start();
    env.wait_for("approval request", T, || {
        op(&env, &["approvals"])["pending"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    let pending = op(&env, &["approvals"]);
    let id = pending["pending"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(pending["pending"][0]["agent"], "confined");
    op(&env, &["approve", &id]);
    env.wait_for("agent done", T, || {
        results(&env, "confined").iter().any(|(k, _)| k == "done")
    });
    let r: std::collections::BTreeMap<String, Value> =
        results(&env, "confined").into_iter().collect();
    // EACCES: Landlock refuses to execute anything but the agent's own program.
    assert_eq!(r["direct /bin/sh"], 13, "{r:?}");
    assert_eq!(r["direct /usr/bin/curl"], 13, "{r:?}");
    assert_eq!(r["first"]["code"], "pending_approval", "{r:?}");
    assert_eq!(r["wait"]["data"]["state"], "approved", "{r:?}");
    let second = &r["second"];
    assert_eq!(second["ok"], true, "{r:?}");
    assert_eq!(second["data"]["exit_code"], 0, "{r:?}");
    assert_eq!(second["data"]["stdout"], "ran-alpha\ncurl", "{r:?}");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn reload_takes_a_good_registry_and_refuses_a_bad_one() {
    let mut env = Env::new("", &idle("user", "[agent.broker]\ntools = [\"echo\"]"));
    let path = registry(&env, TOOLS);
    env.start();
    wait_running(&env, &["user"]);
    let (_, v) = propose(&env, "user", "echo", &[("msg", "a")], None);
    assert_eq!(v["ok"], true, "{v}");
    // The registry is a protected path: an operator's change (this test is
    // outside every agent) is audited with its writer, not a halt; it takes
    // effect only on reload.
    std::fs::write(&path, SHELL_TOOL).unwrap();
    env.wait_for("registry change audited", T, || {
        audit_kinds(&env)
            .iter()
            .any(|e| e["kind"] == "config_changed_on_disk")
    });
    assert_eq!(env.status()["daemon"]["state"], "running");
    let (code, _, err) = env.cli(&["halt", "--reason", "registry change"]);
    assert_eq!(code, 0, "{err}");
    env.assert_nothing_left();
    // With the agents down the operator reloads. A registry without a tool
    // an agent is configured with is refused.
    let (code, _, err) = env.cli(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("echo") && err.contains("stays"), "{err}");
    // Broken TOML names the line.
    std::fs::write(&path, "[[tool]]\nname = \"echo\"\nscope = \"sometimes\"\n").unwrap();
    let (code, _, err) = env.cli(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("line 3") || err.contains("scope"), "{err}");
    // A registry that others could write is refused.
    std::fs::write(&path, TOOLS.replace("{DIR}", "/tmp")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, _, err) = env.cli(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("writable by group or others"), "{err}");
    // A good one: the echo tool now adds a prefix.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let changed = TOOLS
        .replace("{DIR}", "/tmp")
        .replace("args = [\"{msg}\"]", "args = [\"said:\", \"{msg}\"]");
    std::fs::write(&path, changed).unwrap();
    let v = op(&env, &["reload"]);
    let t = &v["tools"];
    assert!(
        t["sha256"].is_string() && t["sha256"] != t["old_sha256"],
        "{v}"
    );
    let resume = |why: &str| {
        let (code, _, err) = env.cli(&["resume", "--reason", why]);
        assert_eq!(code, 0, "{err}");
        wait_running(&env, &["user"]);
    };
    resume("registry: echo prefixes");
    let (_, v) = propose(&env, "user", "echo", &[("msg", "c")], None);
    assert_eq!(v["data"]["stdout"], "said: c\n", "{v}");
    // SIGHUP reloads too.
    let (code, _, err) = env.cli(&["halt", "--reason", "registry change"]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(
        &path,
        TOOLS
            .replace("{DIR}", "/tmp")
            .replace("args = [\"{msg}\"]", "args = [\"hup:\", \"{msg}\"]"),
    )
    .unwrap();
    env.signal(Signal::SIGHUP);
    env.wait_for("SIGHUP reload", T, || {
        audit_kinds(&env)
            .iter()
            .filter(|e| e["kind"] == "tools_reloaded")
            .count()
            == 2
    });
    resume("registry: hup");
    let (_, v) = propose(&env, "user", "echo", &[("msg", "d")], None);
    assert_eq!(v["data"]["stdout"], "hup: d\n", "{v}");
    let kinds = audit_kinds(&env);
    assert_eq!(
        kinds
            .iter()
            .filter(|e| e["kind"] == "reload_refused")
            .count(),
        3,
        "a registry that does not load refuses the whole reload"
    );
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn a_bad_registry_stops_the_daemon_at_start_with_a_config_error() {
    let env = Env::new(
        "",
        &idle("user", "[agent.broker]\ntools = [\"echo\", \"missing\"]"),
    );
    registry(&env, TOOLS);
    let out = Command::new(common::bin())
        .args(["daemon", "--config"])
        .arg(&env.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing") && err.contains("user"), "{err}");
    let (code, _, err) = env.cli(&["check-config", &env.config.display().to_string()]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("missing"), "{err}");
    env.assert_nothing_left();
}

#[test]
fn a_flood_of_proposals_does_not_stall_the_daemon() {
    // One agent floods its socket from several connections; the daemon keeps
    // answering the operator and the other agent.
    let flood = r#"
import json, os, socket, threading, time
def flood():
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.environ["WARDEN_SOCKET"])
    f = s.makefile("rw")
    while True:
        f.write(json.dumps({"type": "propose", "tool": "echo", "args": {"msg": "x"}}) + "\n")
        f.flush()
        f.readline()
for i in range(4):
    threading.Thread(target=flood, daemon=True).start()
time.sleep(1000)
"#;
    let agents = format!(
        "[[agent]]\nname = \"flooder\"\ncommand = [\"/usr/bin/python3\", \"-c\", {}]\nuser = \"nobody\"\nenv = {{ WARDEN_TEST_MARK = \"{{M}}\" }}\n[agent.broker]\ntools = [\"echo\"]\n{}",
        toml::Value::String(flood.into()),
        idle("calm", "[agent.broker]\ntools = [\"echo\"]")
    );
    let mut env = Env::new("", &agents);
    registry(&env, TOOLS);
    env.start();
    wait_running(&env, &["flooder", "calm"]);
    std::thread::sleep(Duration::from_secs(1));
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t0 = Instant::now();
        env.status();
        let (_, v) = propose(&env, "calm", "echo", &[("msg", "still here")], None);
        assert_eq!(v["data"]["stdout"], "still here\n", "{v}");
        worst = worst.max(t0.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Generous: this asserts "not stalled", not a speed (see the benchmark).
    assert!(worst < Duration::from_secs(5), "worst round trip {worst:?}");
    let st = env.agent("flooder");
    assert!(
        st["api"]["rate_limited"].as_u64().unwrap_or(0) > 0,
        "the flood met the rate limit: {st}"
    );
    assert_eq!(env.status()["daemon"]["state"], "running");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn tools_run_in_the_agents_network_namespace() {
    let agents = [
        idle(
            "boxed",
            "network = \"none\"\n[agent.broker]\ntools = [\"netns\"]",
        ),
        idle("open", "[agent.broker]\ntools = [\"netns\"]"),
    ]
    .concat();
    let mut env = Env::new("", &agents);
    registry(&env, TOOLS);
    env.start();
    wait_running(&env, &["boxed", "open"]);
    let ns_of = |pid: i64| {
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .display()
            .to_string()
    };
    let host = ns_of(std::process::id() as i64);
    for (name, same_as_host) in [("boxed", false), ("open", true)] {
        let pid = env.agent(name)["pid"].as_i64().unwrap();
        let agent_ns = ns_of(pid);
        let (code, v) = propose(&env, name, "netns", &[], None);
        assert_eq!(code, 0, "{v}");
        let tool_ns = v["data"]["stdout"].as_str().unwrap().trim().to_string();
        assert_eq!(
            tool_ns, agent_ns,
            "{name}: the tool shares the agent's network"
        );
        assert_eq!(
            tool_ns == host,
            same_as_host,
            "{name}: {tool_ns} vs host {host}"
        );
    }
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn pending_requests_expire() {
    let mut env = Env::new(
        "approval_timeout = \"1s\"\n",
        &idle("patient", "[agent.broker]\ntools = [\"rm\"]"),
    );
    registry(&env, TOOLS);
    let work = workdir(&env);
    env.start();
    wait_running(&env, &["patient"]);
    let f = work.join("x").display().to_string();
    let (code, v) = propose(&env, "patient", "rm", &[("file", &f)], None);
    assert_eq!(code, 4, "{v}");
    let id = v["data"]["request_id"].as_str().unwrap().to_string();
    // A wait longer than the request's life ends with it.
    let t0 = Instant::now();
    let (code, v) = as_agent(&env, "patient", &["wait", &id, "--secs", "20"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["data"]["state"], "expired", "{v}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(op(&env, &["approvals"])["pending"]
        .as_array()
        .unwrap()
        .is_empty());
    let (code, _, err) = env.cli(&["approve", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("expired"), "{err}");
    assert!(audit_kinds(&env)
        .iter()
        .any(|e| e["kind"] == "approval_expired" && e["data"]["request_id"] == id.as_str()));
    // The same call again opens a new request.
    let (code, v) = propose(&env, "patient", "rm", &[("file", &f)], None);
    assert_eq!(code, 4, "{v}");
    assert_ne!(v["data"]["request_id"], id.as_str());
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}
