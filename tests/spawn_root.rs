//! Root tests of what a child does between fork and exec: user, capabilities,
//! no_new_privs, session, descriptors, environment, rlimits, umask.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use warden_core::cgroup::{Cgroup, Result as CgResult, Stats};
use warden_core::config::Config;

/// A cgroup that joins nothing: these tests look at the process, not the cgroup.
#[derive(Debug)]
struct NoCgroup;

impl Cgroup for NoCgroup {
    fn path(&self) -> &str {
        "/none"
    }
    fn join_fds(&self) -> CgResult<Vec<OwnedFd>> {
        Ok(vec![])
    }
    fn add_pid(&self, _pid: i32) -> CgResult<()> {
        Ok(())
    }
    fn freeze(&self) -> CgResult<()> {
        Ok(())
    }
    fn is_frozen(&self) -> CgResult<bool> {
        Ok(false)
    }
    fn thaw(&self) -> CgResult<()> {
        Ok(())
    }
    fn kill(&self) -> CgResult<()> {
        Ok(())
    }
    fn procs(&self) -> CgResult<Vec<i32>> {
        Ok(vec![])
    }
    fn populated(&self) -> CgResult<bool> {
        Ok(false)
    }
    fn events_file(&self) -> Option<std::path::PathBuf> {
        None
    }
    fn stats(&self) -> CgResult<Stats> {
        Ok(Stats::default())
    }
    fn remove(&self) -> CgResult<()> {
        Ok(())
    }
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (CI runs them as root)"
    );
}

fn agent(extra: &str, script: &str) -> Config {
    let text = format!(
        "[[agent]]\nname = \"t\"\ncommand = [\"/bin/sh\", \"-c\", {}]\n{extra}\n",
        toml::Value::String(script.into())
    );
    Config::parse(&text, Path::new("t.toml")).unwrap()
}

/// Runs the agent to completion and returns its stdout.
fn run(cfg: &Config) -> String {
    let st = warden_core::spawn::start(&cfg.agents[0], &NoCgroup, &[]).expect("spawn");
    let mut out = String::new();
    std::fs::File::from(st.stdout)
        .read_to_string(&mut out)
        .unwrap();
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(st.pid), None).unwrap();
    assert!(
        matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)),
        "{status:?}: {out}"
    );
    out
}

fn status_field(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} missing in {out}"))
        .trim()
        .to_string()
}

#[test]
fn child_is_confined() {
    require_root();
    std::env::set_var("WARDEN_TEST_SECRET", "leak");
    let cfg = agent(
        "user = \"nobody\"\nenv = { MODEL = \"small\" }\numask = \"027\"\nrlimits = { nofile = 77 }",
        "cat /proc/self/status; echo SID=$(cut -d' ' -f6 /proc/self/stat) PID=$$; \
         echo FDS=$(ls /proc/self/fd | tr '\\n' ' '); env | sed 's/^/ENV:/'; \
         echo UMASK=$(umask); echo NOFILE=$(ulimit -n); echo CWD=$(pwd)",
    );
    let out = run(&cfg);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let uid = status_field(&out, "Uid:");
    assert!(
        uid.split_whitespace()
            .all(|u| u == nobody.uid.as_raw().to_string()),
        "{uid}"
    );
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(
            status_field(&out, cap),
            "0000000000000000",
            "{cap} not empty"
        );
    }
    assert_eq!(status_field(&out, "NoNewPrivs:"), "1");
    // `cat` is a child of the shell: its session is the shell's pid.
    let sid = status_field(&out, "SID=");
    let (sid, pid) = sid.split_once(" PID=").unwrap();
    assert_eq!(sid, pid, "agent leads its own session");
    // Only 0, 1, 2 and the descriptor `ls` opened for the directory.
    let fds = status_field(&out, "FDS=");
    let n: Vec<&str> = fds.split_whitespace().collect();
    assert!(n.len() <= 4 && n[..3] == ["0", "1", "2"], "fds: {fds}");
    assert!(!out.contains("WARDEN_TEST_SECRET"), "environment leaked");
    assert!(out.contains("ENV:MODEL=small"));
    assert!(out.contains("ENV:WARDEN_AGENT=t"));
    assert!(out.contains(&format!("ENV:PATH={}", warden_core::spawn::AGENT_PATH)));
    assert_eq!(status_field(&out, "UMASK="), "0027");
    assert_eq!(status_field(&out, "NOFILE="), "77");
    assert_eq!(status_field(&out, "CWD="), "/");
}

#[test]
fn allow_root_agent_still_has_no_capabilities() {
    require_root();
    let cfg = agent(
        "user = \"root\"\nallow_root = true",
        "grep -E '^(Uid|Cap|NoNewPrivs)' /proc/self/status",
    );
    let out = run(&cfg);
    assert!(status_field(&out, "Uid:").starts_with('0'));
    for cap in ["CapPrm:", "CapEff:", "CapBnd:", "CapAmb:", "CapInh:"] {
        assert_eq!(status_field(&out, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(status_field(&out, "NoNewPrivs:"), "1");
}

#[test]
fn start_errors_name_the_step() {
    require_root();
    let cfg = agent("user = \"nobody\"\ncwd = \"/nonexistent-dir\"", "true");
    let e = warden_core::spawn::start(&cfg.agents[0], &NoCgroup, &[]).unwrap_err();
    assert!(
        e.to_string().contains("change to the working directory"),
        "{e}"
    );
    let text = "[[agent]]\nname = \"t\"\ncommand = [\"/nonexistent/bin\"]\nuser = \"nobody\"\n";
    let cfg = Config::parse(text, Path::new("t.toml")).unwrap();
    let e = warden_core::spawn::start(&cfg.agents[0], &NoCgroup, &[]).unwrap_err();
    assert!(
        e.to_string().contains("execute the command") && e.to_string().contains("No such file"),
        "{e}"
    );
    let cfg = agent("user = \"no-such-user-xyz\"", "true");
    let e = warden_core::spawn::start(&cfg.agents[0], &NoCgroup, &[]).unwrap_err();
    assert!(e.to_string().contains("unknown user"), "{e}");
}
