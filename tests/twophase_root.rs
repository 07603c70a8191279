//! Root tests of the two-phase kill: the full ladder on a hostile workload,
//! stopping at the freeze, and every refused case.

mod common;

use std::time::Duration;

use common::{agent, workload, Env};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(30);

fn agents() -> String {
    [
        agent("hostile", workload::ESCAPEES, 4, ""),
        agent("bystander", workload::COOPERATIVE, 2, ""),
    ]
    .concat()
}

fn arm(env: &Env, args: &[&str]) -> String {
    let mut a = vec!["arm"];
    a.extend_from_slice(args);
    a.push("--json");
    let (code, out, err) = env.cli(&a);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["authorization"]["id"].as_str().unwrap().to_string()
}

fn unified_events(env: &Env, agent: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/unified{}/agents/{agent}/cgroup.events",
        common::CGROUP_MOUNT,
        env.root
    ))
    .unwrap_or_default()
}

#[test]
fn full_ladder_kills_only_the_target_and_records_each_level() {
    let mut env = Env::new("", &agents());
    env.start();
    env.wait_procs(9);
    let bystander_pids = env.agent("bystander")["pids"].as_array().unwrap().len();
    let id = arm(&env, &["hostile", "--reason", "exfiltration suspected"]);
    // Armed, not yet executed: nothing happened.
    assert_eq!(env.agent("hostile")["state"], "running");
    let (code, out, err) = env.cli(&["execute", &id, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let steps = v["plan"]["steps"].as_array().unwrap();
    let actions: Vec<String> = steps.iter().map(|s| s["action"].to_string()).collect();
    // Levels in order, evidence right before the kill.
    let joined = actions.join(" ");
    let order = ["revoke", "network", "freeze", "evidence", "kill"];
    let mut at = 0;
    for o in order {
        let p = joined[at..]
            .to_lowercase()
            .find(o)
            .unwrap_or_else(|| panic!("{o} missing or out of order in {joined}"));
        at += p;
    }
    // Level 2 cannot cut a host-network agent and says why; the ladder went on.
    let net = steps
        .iter()
        .find(|s| s["action"].to_string().to_lowercase().contains("network"))
        .unwrap();
    assert!(
        net["state"]
            .to_string()
            .contains("shares the host's network namespace"),
        "{net}"
    );
    let kill = steps
        .iter()
        .find(|s| s["action"].to_string().to_lowercase().contains("kill"))
        .unwrap();
    assert!(
        kill["state"].to_string().contains("verified empty"),
        "{kill}"
    );
    // The target is gone, escapees included; the bystander is untouched.
    env.wait_for("hostile gone", T, || {
        env.agent("hostile")["pids"].as_array().unwrap().is_empty()
    });
    assert_eq!(env.agent("hostile")["state"], "halted");
    assert_eq!(env.agent("bystander")["state"], "running");
    assert_eq!(
        env.agent("bystander")["pids"].as_array().unwrap().len(),
        bystander_pids
    );
    assert_eq!(env.status()["daemon"]["state"], "running");
    // Used once.
    let (code, _, err) = env.cli(&["execute", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("reused"), "{err}");
    let (_, out, _) = env.cli(&["authorizations"]);
    assert!(out.contains(&id) && out.contains("executed"), "{out}");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn levels_up_to_freeze_keep_the_agent_frozen_for_inspection() {
    let mut env = Env::new("", &agents());
    env.start();
    env.wait_procs(9);
    let pids = env.agent("hostile")["pids"].as_array().unwrap().len();
    let id = arm(&env, &["hostile", "--reason", "inspect", "--levels", "1-3"]);
    let (code, out, err) = env.cli(&["execute", &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(unified_events(&env, "hostile").contains("frozen 1"));
    let a = env.agent("hostile");
    assert_eq!(a["state"], "frozen", "{a}");
    assert_eq!(a["pids"].as_array().unwrap().len(), pids, "nothing killed");
    assert!(!unified_events(&env, "bystander").contains("frozen 1"));
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0, "{}", env.stderr());
    env.assert_nothing_left();
}

#[test]
fn refused_cases() {
    let mut env = Env::new("two_person = true", &agents());
    env.start();
    // Unknown.
    let (code, _, err) = env.cli(&["execute", "ks-0000000000000000"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown"), "{err}");
    // Same uid with two_person: root armed it, root may not execute it.
    let id = arm(&env, &["--all", "--reason", "test"]);
    let (code, _, err) = env.cli(&["execute", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("same_uid"), "{err}");
    // Cancelled.
    let (code, _, err) = env.cli(&["disarm", &id]);
    assert_eq!(code, 0, "{err}");
    let (_, _, err) = env.cli(&["execute", &id]);
    assert!(err.contains("cancelled"), "{err}");
    // Expired.
    let id = arm(&env, &["hostile", "--reason", "test", "--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1300));
    let (_, _, err) = env.cli(&["execute", &id]);
    assert!(err.contains("expired"), "{err}");
    // Bad requests.
    let (code, _, err) = env.cli(&["arm", "nope", "--reason", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("no agent named"), "{err}");
    let (code, _, err) = env.cli(&["arm", "hostile", "--reason", "x", "--levels", "5"]);
    assert_eq!(code, 1);
    assert!(err.contains("levels"), "{err}");
    let (code, _, _) = env.cli(&["arm", "--reason", "x"]);
    assert_eq!(code, 2);
    // Nothing was killed by any of it.
    assert_eq!(env.agent("hostile")["state"], "running");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

/// Every file below `dir`, as bytes (for "the secret appears nowhere").
fn all_bytes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((p, b));
            }
        }
    }
    out
}

#[test]
fn credentials_verify_until_revoked_and_never_leak() {
    // The agent prints the sha256 of its credential file, never the secret.
    let reader = "while :; do f=\"$WARDEN_CREDENTIALS_DIR/openai\"; \
                  if [ -r \"$f\" ]; then echo \"HAVE $(sha256sum < \"$f\" | cut -c1-64)\"; else echo NONE; fi; sleep 0.2; done";
    let agents = [
        agent("a", reader, 0, ""),
        agent("b", workload::COOPERATIVE, 1, "").replace("user = \"nobody\"", "user = \"65533\""),
    ]
    .concat();
    let mut env = Env::new("", &agents);
    env.start();
    env.wait_procs(3);
    let (code, out, err) = env.cli(&[
        "cred", "issue", "a", "--kind", "api-key", "--name", "openai",
    ]);
    assert_eq!(code, 0, "{err}");
    let secret = out.trim().to_string();
    assert!(secret.starts_with("wdn_apikey_"), "{secret}");
    // The file: 0400, owned by the agent's user, readable by it.
    let file = env.path("credentials/a/openai");
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&file).unwrap();
    assert_eq!(m.mode() & 0o777, 0o400);
    assert_eq!(m.uid(), 65534);
    // Its directory admits only that user (agent b runs as uid 65533).
    let dm = std::fs::metadata(env.path("credentials/a")).unwrap();
    assert_eq!((dm.mode() & 0o777, dm.uid()), (0o500, 65534));
    // ... and is a tmpfs of its own: the secret is in memory only.
    let fs = nix::sys::statfs::statfs(&env.path("credentials/a")).unwrap();
    assert_eq!(fs.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
    assert!(common::mounts_under(env.dir.path()).contains(&env.path("credentials/a")));
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(secret.as_bytes()))
    };
    env.wait_for("agent reads its credential", T, || {
        env.cli(&["logs", "a"])
            .1
            .contains(&format!("HAVE {digest}"))
    });
    // Verify: valid; another token is not.
    let verify = |tok: &str| {
        let mut c = std::process::Command::new(common::bin())
            .arg("--socket")
            .arg(env.socket())
            .args(["cred", "verify"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(tok.as_bytes()).unwrap();
        c.wait_with_output().unwrap().status.code().unwrap()
    };
    assert_eq!(verify(&secret), 0);
    let mut forged = secret.clone();
    forged.pop();
    forged.push(if secret.ends_with('0') { '1' } else { '0' });
    assert_eq!(verify(&forged), 1);
    // The secret is nowhere in warden's state, logs or audit (only its digest).
    for (p, b) in all_bytes(&env.path("state"))
        .into_iter()
        .chain(all_bytes(&env.path("log")))
    {
        assert!(
            !b.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "secret found in {}",
            p.display()
        );
    }
    // Revoke: verify fails at once and the file is gone.
    let (code, _, err) = env.cli(&["cred", "revoke", "--agent", "a"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(verify(&secret), 1);
    assert!(!file.exists());
    let (_, out, _) = env.cli(&["cred", "list"]);
    assert!(out.contains("revoked") && !out.contains(&secret), "{out}");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
    // A clean exit unmounts the agents' credential filesystems.
    assert!(common::mounts_under(env.dir.path()).is_empty());
}

#[test]
fn level_one_revokes_the_targets_credentials() {
    let mut env = Env::new("", &agents());
    env.start();
    env.wait_procs(9);
    let (code, out, err) = env.cli(&[
        "cred", "issue", "hostile", "--kind", "service", "--name", "db",
    ]);
    assert_eq!(code, 0, "{err}");
    let secret = out.trim().to_string();
    let id = arm(&env, &["hostile", "--reason", "leak", "--levels", "1"]);
    let (code, out, err) = env.cli(&["execute", &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 credentials revoked"), "{out}");
    let mut c = std::process::Command::new(common::bin())
        .arg("--socket")
        .arg(env.socket())
        .args(["cred", "verify"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(secret.as_bytes())
        .unwrap();
    assert_eq!(c.wait().unwrap().code(), Some(1));
    // Level 1 alone kills nothing.
    assert_eq!(env.agent("hostile")["state"], "running");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn brokered_agent_cannot_run_programs_by_itself() {
    // The agent's own program is python3 (no shell in between: in brokered
    // mode only the agent's program, its interpreter and loader may run).
    let probe = "import subprocess, time\n\
for argv in ([\"/bin/sh\", \"-c\", \"echo shell ran\"], [\"/usr/bin/curl\", \"--version\"]):\n    \
try:\n        subprocess.run(argv, capture_output=True)\n        print(\"RAN\", argv[0], flush=True)\n    \
except (PermissionError, FileNotFoundError) as e:\n        print(\"BLOCKED\", argv[0], type(e).__name__, flush=True)\n\
print(\"READ\", open(\"/etc/hostname\").read().strip() != \"\", flush=True)\ntime.sleep(1000)";
    let table = |name: &str, extra: &str| {
        format!(
            "[[agent]]\nname = \"{name}\"\ncommand = [\"/usr/bin/python3\", \"-c\", {}]\nuser = \"nobody\"\n\
             env = {{ WARDEN_TEST_MARK = \"{{M}}\" }}\n{extra}\n",
            toml::Value::String(probe.into())
        )
    };
    let agents = [table("boxed", "exec = \"brokered\""), table("free", "")].concat();
    let mut env = Env::new("", &agents);
    env.start();
    env.wait_for("probes", T, || {
        env.cli(&["logs", "boxed"]).1.contains("READ")
            && env.cli(&["logs", "free"]).1.contains("READ")
    });
    let (_, boxed, _) = env.cli(&["logs", "boxed"]);
    assert!(boxed.contains("BLOCKED /bin/sh PermissionError"), "{boxed}");
    assert!(!boxed.contains("RAN"), "{boxed}");
    assert!(boxed.contains("READ True"), "{boxed}");
    // The same program without brokered mode runs the shell.
    let (_, free, _) = env.cli(&["logs", "free"]);
    assert!(free.contains("RAN /bin/sh"), "{free}");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn network_none_has_no_route_to_the_host() {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let probe = format!(
        "exec python3 -c 'import socket, time\ntry:\n    socket.create_connection((\"127.0.0.1\", {port}), timeout=2)\n    print(\"CONNECTED\", flush=True)\nexcept OSError as e:\n    print(\"NO NETWORK\", e.errno, flush=True)\ntime.sleep(1000)'"
    );
    let agents = [
        agent("offline", &probe, 0, "network = \"none\""),
        agent("online", &probe, 0, ""),
    ]
    .concat();
    let mut env = Env::new("", &agents);
    env.start();
    env.wait_for("probes", T, || {
        let a = env.cli(&["logs", "offline"]).1;
        let b = env.cli(&["logs", "online"]).1;
        (a.contains("CONNECTED") || a.contains("NO NETWORK")) && b.contains("CONNECTED")
    });
    let (_, off, _) = env.cli(&["logs", "offline"]);
    assert!(
        off.contains("NO NETWORK") && !off.contains("CONNECTED"),
        "{off}"
    );
    // Kill level 2 on it: nothing to cut, reported as done.
    let id = arm(&env, &["offline", "--reason", "r", "--levels", "2"]);
    let (code, out, err) = env.cli(&["execute", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no network to cut"), "{out}");
    drop(server);
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}
