//! Root tests of live reconfiguration and of who changed a protected file:
//! an operator's edit and `warden reload` (unchanged agents keep their
//! pids, changed ones restart, added ones start, removed ones stop; no
//! SAFE MODE; every step audited), limits changed live, broken configs
//! refused with the running agents untouched, and an agent's write to a
//! protected file refused and halted, named in the safety event.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{agent, workload, Env};

const T: Duration = Duration::from_secs(30);

/// The monitors would (rightly) notice some of these workloads; these tests
/// are about reload and protection.
const QUIET: &str = "[limits]\ndisable = [\"pids\", \"fork_rate\", \"busy_loop\", \"crash_loop\", \"memory\", \"disk_write\", \"disk_free\", \"host_memory\", \"host_load\"]\n";

/// (kind, agent, uid, data) of every audit entry so far.
fn audit(env: &Env) -> Vec<(String, Option<String>, Option<i64>, serde_json::Value)> {
    let db = rusqlite::Connection::open_with_flags(
        env.path("state/warden.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut st = db
        .prepare("SELECT kind, agent, uid, data FROM audit_log ORDER BY seq")
        .unwrap();
    st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, Option<i64>>(2)?,
            serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn wait_audit(
    env: &Env,
    kind: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut found = None;
    env.wait_for(&format!("audit {kind}"), T, || {
        found = audit(env)
            .into_iter()
            .find(|(k, _, _, d)| k == kind && pred(d))
            .map(|(_, _, _, d)| d);
        found.is_some()
    });
    found.unwrap()
}

fn pid(env: &Env, name: &str) -> Option<i64> {
    env.agent(name)["pid"].as_i64()
}

fn wait_running(env: &Env, names: &[&str]) {
    for n in names {
        env.wait_for(&format!("{n} running"), T, || {
            env.status()["agents"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["name"] == *n && a["state"] == "running")
        });
    }
}

fn not_safe(env: &Env) {
    let st = env.status();
    assert_eq!(st["daemon"]["state"], "running", "{st}");
}

fn edit(env: &Env, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, f(text)).unwrap();
}

fn uses_fanotify(env: &Env) -> bool {
    env.status()["protection"]["watch"]["mechanism"] == "fanotify"
}

#[test]
fn operator_edit_and_reload_keeps_what_did_not_change() {
    let a1 = agent("a1", workload::COOPERATIVE, 1, "");
    let a2 = agent("a2", workload::COOPERATIVE, 1, "");
    let a4 = agent("a4", workload::COOPERATIVE, 1, "");
    let mut env = Env::new(QUIET, &format!("{a1}{a2}{a4}"));
    env.start();
    wait_running(&env, &["a1", "a2", "a4"]);
    assert!(uses_fanotify(&env), "{}", env.status()["protection"]);
    let (p1, p2) = (pid(&env, "a1").unwrap(), pid(&env, "a2").unwrap());
    let marker = env.marker.clone();

    // The operator edits the config: a comment, a2's command, a3 added, a4 gone.
    let old_sha = env.status()["protection"]["config"]["running_sha256"].clone();
    let a2_new = agent("a2", workload::COOPERATIVE, 2, "").replace("{M}", &marker);
    let a3 = agent("a3", workload::COOPERATIVE, 1, "").replace("{M}", &marker);
    let a4_text = a4.replace("{M}", &marker);
    let a2_text = a2.replace("{M}", &marker);
    edit(&env, |t| {
        format!(
            "# edited by the operator\n{}{a3}",
            t.replace(&a2_text, &a2_new).replace(&a4_text, "")
        )
    });
    // Audited with the writer (this test) and both hashes; no halt.
    let me = std::process::id() as i64;
    let d = wait_audit(&env, "config_changed_on_disk", |d| d["is_config"] == true);
    assert_eq!(d["pid"], me, "{d}");
    assert_eq!(d["old_sha256"], old_sha, "{d}");
    assert_ne!(d["new_sha256"], old_sha, "{d}");
    assert!(d["exe"].as_str().is_some(), "{d}");
    let entry = audit(&env)
        .into_iter()
        .find(|(k, _, _, _)| k == "config_changed_on_disk")
        .unwrap();
    assert_eq!(entry.2, Some(0), "uid of the writer");
    std::thread::sleep(Duration::from_millis(500));
    not_safe(&env);
    assert_eq!(env.status()["protection"]["config"]["differs"], true);

    // The plan changes nothing.
    let (code, out, err) = env.cli(&["reload", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    for want in [
        "a1: unchanged",
        "a2: restarted (command)",
        "a3: started",
        "a4: stopped",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    let (code, out, err) = env.cli(&[
        "check-config",
        env.config.to_str().unwrap(),
        "--against-running",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("a2: restarted (command)") && out.contains("a4: stopped"),
        "{out}"
    );
    assert_eq!(pid(&env, "a2"), Some(p2));
    assert!(env.status()["agents"].as_array().unwrap().len() == 3);

    let (code, out, err) = env.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("a1: unchanged") && out.contains("a3: started"),
        "{out}"
    );
    wait_running(&env, &["a2", "a3"]);
    env.wait_for("a4 removed", T, || {
        env.status()["agents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["name"] != "a4")
    });
    assert_eq!(pid(&env, "a1"), Some(p1), "a1 kept its process");
    let p2b = pid(&env, "a2").unwrap();
    assert_ne!(p2b, p2, "a2 restarted");
    env.wait_for("a2 with its new command", T, || {
        env.agent("a2")["pids"].as_array().unwrap().len() == 3
    });
    not_safe(&env);
    let st = env.status();
    assert_eq!(st["protection"]["config"]["differs"], false, "{st}");

    // The audit trail holds every step.
    let r = wait_audit(&env, "config_reloaded", |_| true);
    assert_eq!(r["old_sha256"], old_sha, "{r}");
    assert_eq!(
        r["new_sha256"], st["protection"]["config"]["running_sha256"],
        "{r}"
    );
    let log = audit(&env);
    let kinds: Vec<(&str, Option<&str>)> = log
        .iter()
        .map(|(k, a, _, _)| (k.as_str(), a.as_deref()))
        .collect();
    for want in [
        ("config_reloaded", None),
        ("agent_added", Some("a3")),
        ("agent_start", Some("a3")),
        ("agent_restart", Some("a2")),
        ("agent_removed", Some("a4")),
    ] {
        assert!(kinds.contains(&want), "{want:?} not in {kinds:?}");
    }
    let reloaded = log
        .iter()
        .find(|(k, _, _, _)| k == "config_reloaded")
        .unwrap();
    assert_eq!(reloaded.2, Some(0), "caller uid");
    assert!(!kinds
        .iter()
        .any(|(k, _)| *k == "safe_mode_entered" || *k == "monitor_breach"));

    // SIGHUP does the same: a5 added.
    let a5 = agent("a5", workload::COOPERATIVE, 1, "").replace("{M}", &marker);
    edit(&env, |t| format!("{t}{a5}"));
    env.signal(nix::sys::signal::Signal::SIGHUP);
    wait_running(&env, &["a5"]);
    assert_eq!(pid(&env, "a1"), Some(p1));
    not_safe(&env);
    env.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn limits_change_live_and_bind_at_once() {
    // Holds 60 MiB; on SIGUSR1 takes 60 MiB more.
    let hog = "import signal, time\n\
def fill(n):\n    b = bytearray(n)\n    for i in range(0, n, 4096):\n        b[i] = 1\n    return b\n\
a = fill(60 << 20)\n\
grow = []\n\
signal.signal(signal.SIGUSR1, lambda *x: grow.append(1))\n\
while not grow:\n    time.sleep(0.05)\n\
b = fill(60 << 20)\n\
while True:\n    time.sleep(1)\n";
    let cmd = format!(
        "[[agent]]\nname = \"hog\"\ncommand = [\"/usr/bin/python3\", \"-c\", {}]\nuser = \"nobody\"\nenv = {{ WARDEN_TEST_MARK = \"{{M}}\" }}\nrestart = \"never\"\nmemory_max = \"256M\"\npids_max = 64\ncpu_max = 1.0\n",
        toml::Value::String(hog.into())
    );
    let mut env = Env::new(QUIET, &cmd);
    env.start();
    wait_running(&env, &["hog"]);
    env.wait_for("hog holding 60M", T, || {
        env.agent("hog")["memory_bytes"].as_u64().unwrap_or(0) > 60 << 20
    });
    let p = pid(&env, "hog").unwrap();
    edit(&env, |t| {
        t.replace("memory_max = \"256M\"", "memory_max = \"100M\"")
            .replace("pids_max = 64", "pids_max = 32")
            .replace("cpu_max = 1.0", "cpu_max = 0.5")
    });
    let (code, out, err) = env.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("hog: limits updated (memory_max, pids_max, cpu_max)"),
        "{out}"
    );
    // Same process, new limits in its cgroup.
    assert_eq!(pid(&env, "hog"), Some(p));
    let a = env.agent("hog");
    assert_eq!(a["restarts"], 0, "{a}");
    assert_eq!(a["limits"]["memory_max"], 100 << 20, "{a}");
    let cg = a["cgroup"]
        .as_str()
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    let limit = ["memory/{}/memory.limit_in_bytes", "{}/memory.max"]
        .iter()
        .map(|f| Path::new(common::CGROUP_MOUNT).join(f.replace("{}", &cg)))
        .find(|p| p.exists())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .unwrap();
    assert_eq!(limit.trim(), (100u64 << 20).to_string());
    let read = |files: &[&str]| {
        files
            .iter()
            .map(|f| Path::new(common::CGROUP_MOUNT).join(f.replace("{}", &cg)))
            .find(|p| p.exists())
            .map(|p| std::fs::read_to_string(p).unwrap().trim().to_string())
            .unwrap()
    };
    assert_eq!(read(&["pids/{}/pids.max", "{}/pids.max"]), "32");
    let cpu = read(&[
        "cpu/{}/cpu.cfs_quota_us",
        "cpu,cpuacct/{}/cpu.cfs_quota_us",
        "{}/cpu.max",
    ]);
    assert!(cpu.starts_with("50000"), "{cpu}");
    wait_audit(&env, "agent_limits_updated", |d| d["pid"] == p);
    // It grows past the new limit (it fit under the old one): OOM-killed.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    let exit = wait_audit(&env, "agent_exit", |d| d["pid"] == p);
    assert!(
        exit["status"].as_str().unwrap().contains('9')
            || exit["status"].as_str().unwrap().contains("KILL"),
        "{exit}"
    );
    let log = audit(&env);
    let restart_before_exit = log
        .iter()
        .take_while(|(k, _, _, d)| !(k == "agent_exit" && d["pid"] == p))
        .any(|(k, _, _, _)| k == "agent_restart");
    assert!(!restart_before_exit, "restarted before the OOM kill");
    not_safe(&env);
    env.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn broken_configs_are_refused_and_agents_untouched() {
    let mut env = Env::new(
        QUIET,
        &agent("a1", workload::COOPERATIVE, 1, "pids_max = 16"),
    );
    env.start();
    wait_running(&env, &["a1"]);
    let p = pid(&env, "a1");
    let good = std::fs::read_to_string(&env.config).unwrap();
    let dup = agent("a1", workload::COOPERATIVE, 2, "").replace("{M}", &env.marker);
    let cases = [
        (good.replace("pids_max = 16", "pids_max = -3"), "pids_max"),
        (
            good.replace("pids_max = 16", "pids_max = 16\nmemroy_max = \"1G\""),
            "memroy_max",
        ),
        (format!("{good}{dup}"), "duplicate agent name"),
        (
            good.replace("grace = \"1s\"", "grace = \"1s\"\nsocket_group = \"wheel\""),
            "socket_group",
        ),
    ];
    for (text, key) in cases {
        std::fs::write(&env.config, &text).unwrap();
        let (code, out, err) = env.cli(&["reload"]);
        assert_eq!(code, 4, "{key}: {out}{err}");
        assert!(
            err.contains(key) && err.contains("line ") && err.contains("running config stays"),
            "{key}: {err}"
        );
        let (code, _, err2) = env.cli(&["reload", "--dry-run"]);
        assert_eq!(code, 4, "{err2}");
        assert_eq!(pid(&env, "a1"), p, "{key}");
        not_safe(&env);
    }
    let refused = audit(&env)
        .into_iter()
        .filter(|(k, _, _, _)| k == "reload_refused")
        .count();
    assert_eq!(refused, 4);
    std::fs::write(&env.config, &good).unwrap();
    let (code, out, err) = env.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("a1: unchanged"), "{out}");
    assert_eq!(pid(&env, "a1"), p);
    env.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    env.assert_nothing_left();
}

#[test]
fn an_agents_write_to_a_protected_file_is_refused_and_halts() {
    let dir = tempfile::Builder::new()
        .prefix("warden-prot-")
        .tempdir()
        .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "x = 1\n").unwrap();
    let go = dir.path().join("go");
    // Reading a protected file and running warden's (protected) binary are
    // allowed; only the write is not.
    let script = format!(
        "cat {p} >/dev/null && {bin} --version >/dev/null && echo reads-ok; \
         while [ ! -e {g} ]; do sleep 0.05; done; echo evil >> {p}; echo \"write exit $?\"; sleep 1000",
        g = go.display(),
        p = policy.display(),
        bin = common::bin()
    );
    let mut env = Env::new(
        &format!("protected_paths = [\"{}\"]\n{QUIET}", policy.display()),
        &format!(
            "[[agent]]\nname = \"rogue\"\ncommand = {}\nuser = \"root\"\nallow_root = true\nenv = {{ WARDEN_TEST_MARK = \"{{M}}\" }}\n",
            common::sh(&script, 0)
        ),
    );
    env.start();
    wait_running(&env, &["rogue"]);
    assert!(uses_fanotify(&env));
    let perm = env.status()["protection"]["watch"]["permission_events"] == true;
    // The operator replaces the file (a new inode): audited, no halt, and
    // the new file is as protected as the old one (#18 item 6).
    let tmp = dir.path().join("policy.toml.new");
    std::fs::write(&tmp, "x = 2\n").unwrap();
    std::fs::rename(&tmp, &policy).unwrap();
    let d = wait_audit(&env, "config_changed_on_disk", |d| d["what"] == "replaced");
    assert_eq!(d["pid"], std::process::id() as i64, "{d}");
    not_safe(&env);
    env.wait_for("reads allowed", T, || {
        std::fs::read_to_string(env.path("log/agents/rogue.log"))
            .unwrap_or_default()
            .contains("reads-ok")
    });
    not_safe(&env);
    // The agent tries to write it.
    std::fs::write(&go, "").unwrap();
    env.wait_for("halt", T, || env.status()["daemon"]["state"] == "safe_mode");
    let st = env.status();
    let reason = st["daemon"]["safe_mode"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.starts_with("self_modification"), "{reason}");
    assert!(
        reason.contains("agent rogue") && reason.contains("policy.toml") && reason.contains("pid "),
        "{reason}"
    );
    assert!(reason.contains("exe /"), "{reason}");
    if perm {
        assert!(reason.contains("open for writing refused"), "{reason}");
        assert_eq!(
            std::fs::read_to_string(&policy).unwrap(),
            "x = 2\n",
            "the write was refused"
        );
        let logs = std::fs::read_to_string(env.path("log/agents/rogue.log")).unwrap_or_default();
        assert!(!logs.contains("write exit 0"), "{logs}");
    }
    let events = std::fs::read_to_string(env.path("log/safety_events.jsonl")).unwrap();
    assert!(
        events.contains("agent rogue") && events.contains("policy.toml"),
        "{events}"
    );
    assert!(audit(&env).iter().any(|(k, a, _, _)| {
        (k == "protected_write_refused" || k == "protected_path_changed_by_agent")
            && a.as_deref() == Some("rogue")
    }));
    env.assert_nothing_left();
}

#[test]
fn an_agents_rename_over_a_protected_file_halts() {
    // No open for writing of the protected file: the rename itself is the
    // change, seen after the fact and attributed to the agent (or, if `mv`
    // is gone by then, to a writer a root agent could have been).
    let dir = tempfile::Builder::new()
        .prefix("warden-prot-")
        .tempdir()
        .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "x = 1\n").unwrap();
    let script = format!(
        "sleep 0.5; echo 'x = 9' > {d}/evil; mv {d}/evil {p}; sleep 1000",
        d = dir.path().display(),
        p = policy.display()
    );
    let mut env = Env::new(
        &format!("protected_paths = [\"{}\"]\n{QUIET}", policy.display()),
        &format!(
            "[[agent]]\nname = \"mover\"\ncommand = {}\nuser = \"root\"\nallow_root = true\nenv = {{ WARDEN_TEST_MARK = \"{{M}}\" }}\n",
            common::sh(&script, 0)
        ),
    );
    env.start();
    env.wait_for("halt", T, || env.status()["daemon"]["state"] == "safe_mode");
    let reason = env.status()["daemon"]["safe_mode"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.starts_with("self_modification") && reason.contains("policy.toml replaced"),
        "{reason}"
    );
    assert!(
        reason.contains("agent mover") || reason.contains("exited before it could be named"),
        "{reason}"
    );
    env.assert_nothing_left();
}
