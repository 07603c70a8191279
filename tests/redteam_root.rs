//! Red-team findings of issue #18 (items 4, 5, 7 and 9), each shown fixed
//! on the real daemon. Item 3 (the ELF loader in brokered mode) is in
//! tests/confine_root.rs. Needs root, like every `*_root` test.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::{agent, workload, Env};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// The monitors that would halt a test's workload by themselves.
const QUIET: &str = "[limits]\ndisable = [\"pids\", \"fork_rate\", \"busy_loop\", \"crash_loop\", \"memory\", \"stop_inodes\"]\n";

fn sleepers() -> String {
    agent("a", workload::COOPERATIVE, 2, "")
}

/// A tmpfs with room for `inodes` inodes on the test's stop-file directory;
/// Env's drop detaches it (every mount under the test's directory).
fn small_tmpfs(env: &Env, inodes: u32) {
    let dir = env.path("safety");
    std::fs::create_dir_all(&dir).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(format!("size=1m,nr_inodes={inodes},mode=0755").as_str()),
    )
    .expect("mount a tmpfs for the stop file");
}

fn unmount(env: &Env) {
    let _ = nix::mount::umount2(&env.path("safety"), nix::mount::MntFlags::MNT_DETACH);
}

/// Item 4: an agent that uses up the inodes of the stop file's filesystem
/// makes `touch STOP` fail with ENOSPC; moving the armed placeholder to STOP
/// needs no inode and halts everything. The placeholder itself halts nothing.
#[test]
fn moving_the_placeholder_halts_when_no_inode_is_left() {
    let mut env = Env::new(QUIET, &sleepers());
    small_tmpfs(&env, 32);
    env.start();
    env.wait_procs(2);
    let placeholder = env.path("safety/.STOP.armed");
    assert!(placeholder.exists(), "the daemon arms the placeholder");
    assert_eq!(env.status()["daemon"]["state"], "running");
    // Use up every inode, as an agent sharing the filesystem could.
    let mut made = 0;
    loop {
        match std::fs::write(env.path(&format!("safety/fill{made}")), b"") {
            Ok(()) => made += 1,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
        assert!(made < 1000, "the tmpfs has no inode limit");
    }
    let err = std::fs::write(env.stop_file(), b"").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "touch STOP: {err}");
    assert!(env.marked_pids().len() >= 2, "the agents still run");
    // `mv /safety/.STOP.armed /safety/STOP`
    std::fs::rename(&placeholder, env.stop_file()).unwrap();
    env.wait_for("SAFE MODE", T, || {
        env.status()["daemon"]["state"] == "safe_mode"
    });
    env.assert_nothing_left();
    assert!(env.latch().exists());
    assert_eq!(env.status()["daemon"]["safe_mode"]["trigger"], "stop_file");
    env.signal(nix::sys::signal::Signal::SIGTERM);
    env.wait_exit(T);
    unmount(&env);
}

/// Item 4: low inode headroom on the stop file's filesystem is itself a
/// monitor breach (a hard halt), before the operator needs the placeholder.
#[test]
fn low_inode_headroom_for_the_stop_file_halts() {
    let quiet = QUIET.replace(", \"stop_inodes\"", "");
    let mut env = Env::new(&format!("{quiet}stop_inodes_min = 100\n"), &sleepers());
    small_tmpfs(&env, 64);
    env.start();
    env.wait_for("SAFE MODE", T, || {
        env.status()["daemon"]["state"] == "safe_mode"
    });
    let reason = env.status()["daemon"]["safe_mode"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("inodes"), "{reason}");
    env.assert_nothing_left();
    env.signal(nix::sys::signal::Signal::SIGTERM);
    env.wait_exit(T);
    unmount(&env);
}

fn read_line(s: &UnixStream) -> Option<Value> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

/// Holds 64 idle connections as another user, then tries 10 more and
/// prints how many were refused; holds on until stdin closes.
const FLOOD: &str = r#"
import socket, sys, time
path = sys.argv[1]
held = []
for _ in range(64):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    held.append(s)
time.sleep(0.5)
refused = 0
for _ in range(10):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.settimeout(10)
    if "too many control connections" in s.makefile().readline():
        refused += 1
    s.close()
print(refused, flush=True)
sys.stdin.readline()
"#;

/// Item 5: idle control connections are capped; the ones over the cap are
/// told why and closed; root keeps a reserve of its own, and the socket
/// answers everyone again once connections close.
#[test]
fn control_connections_are_capped_and_the_socket_recovers() {
    use std::os::unix::process::CommandExt;
    const ROOT_RESERVE: usize = 8;
    // A socket group that no agent is in (there are none) and the flooder is.
    let mut env = Env::new("socket_group = \"nogroup\"", "");
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    std::fs::set_permissions(
        env.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    env.start();
    let mut flood = std::process::Command::new("/usr/bin/python3")
        .args(["-c", FLOOD])
        .arg(env.socket())
        .uid(nobody.uid.as_raw())
        .gid(nogroup.gid.as_raw())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut refused = String::new();
    BufReader::new(flood.stdout.as_mut().unwrap())
        .read_line(&mut refused)
        .unwrap();
    assert_eq!(
        refused.trim(),
        "10",
        "extra connections over the cap refused"
    );
    // The cap is full of another user's connections; root still gets in.
    assert_eq!(env.call(r#"{"cmd":"status"}"#)["ok"], true);
    let held: Vec<UnixStream> = (0..ROOT_RESERVE)
        .map(|_| UnixStream::connect(env.socket()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Reserve used up too: root is refused with the same clear line (read
    // only: the daemon closes the connection at once).
    let s = UnixStream::connect(env.socket()).unwrap();
    let v = read_line(&s).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["error"].as_str().unwrap().contains("too many"), "{v}");
    // The held ones still work.
    (&held[0]).write_all(b"{\"cmd\":\"ping\"}\n").unwrap();
    assert_eq!(read_line(&held[0]).unwrap()["ok"], true);
    // The flooder goes away: the socket answers again.
    drop(flood.stdin.take());
    flood.wait().unwrap();
    env.wait_for("status answered again", T, || {
        env.try_call(r#"{"cmd":"status"}"#)
            .is_some_and(|v| v["ok"] == true)
    });
    drop(held);
    env.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
}

/// Item 9: a reason over the line limit never stops a halt: the CLI cuts
/// it, the daemon cuts it, and a raw over-long halt line still halts.
#[test]
fn halts_with_huge_reasons_still_halt() {
    let mut env = Env::new(QUIET, &sleepers());
    env.start();
    env.wait_procs(2);
    let huge = "r".repeat(100 * 1024);
    let (code, out, err) = env.cli(&["halt", "--reason", &huge]);
    assert_eq!(code, 0, "{out}\n{err}");
    env.assert_nothing_left();
    let st = env.status();
    let reason = st["daemon"]["safe_mode"]["reason"].as_str().unwrap();
    assert!(reason.len() < 8 * 1024, "{}", reason.len());
    assert!(reason.contains("truncated"), "{reason}");
    // A raw line over 64 KiB that is a halt: answered as a halt.
    let s = UnixStream::connect(env.socket()).unwrap();
    let line = format!("{{\"cmd\":\"halt\",\"reason\":\"{huge}\"}}\n");
    // The daemon reads only the first 64 KiB and answers; the rest may
    // not be read, so a broken pipe here is fine.
    let _ = (&s).write_all(line.as_bytes());
    let v = read_line(&s).expect("an answer to the long halt");
    assert_eq!(v["ok"], true, "{v}");
    let reason = v["data"]["halt"]["reason"].as_str().unwrap();
    assert!(reason.contains("longer than 65536 bytes"), "{reason}");
    env.signal(nix::sys::signal::Signal::SIGTERM);
    env.wait_exit(T);
}

/// Item 9: reads are not audited (`logs -f` asks four times a second);
/// changes still are.
#[test]
fn reads_are_not_audited_but_commands_are() {
    let mut env = Env::new(QUIET, &sleepers());
    env.start();
    let count = |env: &Env, kind: &str| {
        let (code, out, err) = env.cli(&[
            "audit",
            "tail",
            "-n",
            "100000",
            "--json",
            "--state-dir",
            &env.path("state").display().to_string(),
        ]);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.to_string().contains(kind))
            .count()
    };
    let before = count(&env, "\"command\"");
    for _ in 0..20 {
        env.status();
        env.call(r#"{"cmd":"logs","agent":"a"}"#);
    }
    assert_eq!(count(&env, "\"command\""), before, "reads were audited");
    let (code, _, err) = env.cli(&["stop", "a"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(count(&env, "\"command\""), before + 1);
    env.signal(nix::sys::signal::Signal::SIGTERM);
    env.wait_exit(T);
}

fn start_code(env: &Env, extra: &[&str]) -> (i32, String) {
    let (code, _, err) =
        env.cli(&[&["daemon", "--config", env.config.to_str().unwrap()], extra].concat());
    (code, err)
}

/// Items 7 and 9: configurations and state the daemon refuses to start on,
/// each with its exit code and an error that names the problem.
#[test]
fn unsafe_configs_and_state_are_refused() {
    let env = Env::new("", &sleepers());
    let original = std::fs::read_to_string(&env.config).unwrap();
    let reset = |extra: &str| {
        std::fs::write(&env.config, format!("{extra}\n{original}")).unwrap();
    };

    // A socket_group the agent belongs to (nobody's primary group).
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let group = nix::unistd::Group::from_gid(nobody.gid).unwrap().unwrap();
    reset(&format!("socket_group = {:?}", group.name));
    let (code, err) = start_code(&env, &[]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains(&group.name) && err.contains("agent a"),
        "{err}"
    );

    // A duration that overflows.
    reset("");
    env.set_top("grace", "\"99999999999999999999s\"");
    let (code, err) = start_code(&env, &[]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("invalid duration"), "{err}");

    // The config readable by everyone while an agent has env secrets.
    reset("");
    std::fs::set_permissions(
        &env.config,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let (code, err) = start_code(&env, &[]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("readable by every user"), "{err}");
    std::fs::set_permissions(
        &env.config,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();

    // A world-writable state directory.
    let state = env.path("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let (code, err) = start_code(&env, &[]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("state_dir") && err.contains("0777"), "{err}");
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    assert!(env.cgroup_dirs().is_empty());
}

/// Item 9: a deleted audit database is not replaced silently; with
/// `--new-audit-chain` the daemon starts a new chain and says so.
#[test]
fn a_deleted_audit_database_needs_new_audit_chain() {
    let mut env = Env::new("", "");
    env.start();
    env.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    let db = env.path("state/warden.db");
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    let (code, err) = start_code(&env, &[]);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("missing") && err.contains("--new-audit-chain"),
        "{err}"
    );
    assert!(!db.exists(), "nothing was created");

    // An emptied (truncated) database is the same.
    std::fs::write(&db, b"").unwrap();
    let (code, err) = start_code(&env, &[]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("empty"), "{err}");

    // A corrupt one: refused, naming it; with the flag it is moved aside.
    std::fs::write(&db, vec![0x5a; 8192]).unwrap();
    let (code, err) = start_code(&env, &[]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("warden.db") && err.contains("--new-audit-chain"),
        "{err}"
    );

    // With the flag: a new chain, recorded as such.
    let child = std::process::Command::new(common::bin())
        .args(["daemon", "--new-audit-chain", "--config"])
        .arg(&env.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    env.daemon = Some(child);
    env.wait_for("daemon up", T, || {
        env.try_call(r#"{"cmd":"ping"}"#).is_some()
    });
    let events = std::fs::read_to_string(env.path("log/safety_events.jsonl")).unwrap();
    assert!(events.contains("new_audit_chain"), "{events}");
    let moved = std::fs::read_dir(env.path("state"))
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("warden.db.broken-")
        });
    assert!(moved, "the corrupt database is kept aside");
    env.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
    let (code, out, err) = env.cli(&[
        "audit",
        "verify",
        "--state-dir",
        &env.path("state").display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(Path::new(&db).exists());
}

/// Item 3 through the real daemon: a brokered agent cannot run a binary in
/// its own directory through the ELF loader (its cwd is a noexec mount in
/// its own mount namespace), nor a system program (/usr/bin is not among
/// its read trees).
#[test]
fn brokered_agent_cannot_use_the_loader_on_its_own_files() {
    let loader = warden_core::confine::exec_closure(Path::new("/bin/sh"))
        .unwrap()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("ld-"))
        .expect("the loader of /bin/sh");
    let script = format!(
        "L={ld}; $L ./mycat data >/dev/null 2>&1 && echo LOADER-COPIED-RAN || echo LOADER-COPIED-REFUSED; \
         $L /usr/bin/cat data >/dev/null 2>&1 && echo LOADER-SYSTEM-RAN || echo LOADER-SYSTEM-REFUSED;",
        ld = loader.display()
    );
    let mut env = Env::new(
        QUIET,
        "[[agent]]\nname = \"b\"\ncommand = [\"/bin/sh\", \"-c\", SCRIPT]\nuser = \"nobody\"\nexec = \"brokered\"\ncwd = WORK\nenv = { WARDEN_TEST_MARK = \"{M}\" }\n",
    );
    let work = env.path("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::copy("/usr/bin/cat", work.join("mycat")).unwrap();
    std::fs::write(work.join("data"), "d\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    // (sleep is not on a brokered agent's exec list: it just exits 0.)
    // Let the agent's user reach its cwd inside the test's 0700 directory.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("SCRIPT", &toml::Value::String(script).to_string())
        .replace(
            "WORK",
            &toml::Value::String(work.display().to_string()).to_string(),
        );
    std::fs::write(&env.config, text).unwrap();
    env.start();
    let log = |env: &Env| {
        env.call(r#"{"cmd":"logs","agent":"b"}"#)["data"]["data"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    env.wait_for("the agent's verdicts", T, || {
        log(&env).contains("LOADER-SYSTEM-")
    });
    let out = log(&env);
    assert!(out.contains("LOADER-COPIED-REFUSED"), "{out}");
    assert!(out.contains("LOADER-SYSTEM-REFUSED"), "{out}");
    env.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0);
}
