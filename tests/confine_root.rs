//! Brokered-mode confinement on the real kernel: a confined python3 (and a
//! confined shell script) may run only what its spec allows, read the system
//! trees, write only its own dir, and gets EPERM from the denied syscalls.
//! Needs root and Landlock; without them these tests fail, never skip.
//!
//! The child is started with `Command::pre_exec`, which runs in the forked
//! child like the daemon's exec path: no_new_privs, then the child-side
//! functions of `warden_core::sys::confine` on data prepared before the fork.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use warden_core::confine::{self, ConfineSpec, Prepared};
use warden_core::sys::confine as child;

/// Which layers the child applies.
#[derive(Clone, Copy)]
enum Layers {
    None,
    SeccompOnly,
    /// Landlock and seccomp, without the noexec mounts.
    NoMounts,
    /// Everything the daemon applies: noexec mounts, Landlock, seccomp.
    Both,
}

fn require_root_and_landlock() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "confine_root tests must run as root"
    );
    let abi = confine::landlock_abi().expect("this kernel must have Landlock enabled");
    assert!(abi >= 1);
}

fn run(prog: &Path, args: &[&str], cwd: &Path, prepared: &Arc<Prepared>, layers: Layers) -> Output {
    let p = Arc::clone(prepared);
    let cwd_c = std::ffi::CString::new(cwd.as_os_str().as_encoded_bytes()).unwrap();
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", cwd)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child and only issues raw
    // syscalls (prctl, unshare, mount, chdir, landlock_restrict_self,
    // prctl(PR_SET_SECCOMP)) on the ruleset fd, filter and paths that `p`
    // and `cwd_c` own, allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let raw = p.raw();
            let r = match layers {
                Layers::None => Ok(()),
                Layers::SeccompOnly => child::install_seccomp(&raw),
                Layers::NoMounts => child::apply_in_child(&raw).map_err(|(_, e)| e),
                Layers::Both => child::noexec_writable(&raw)
                    // std changed directory before this closure: enter
                    // the new (noexec) mount of it, as the daemon does.
                    .and_then(|()| {
                        if libc::chdir(cwd_c.as_ptr()) == 0 {
                            Ok(())
                        } else {
                            Err(*libc::__errno_location())
                        }
                    })
                    .and_then(|()| child::apply_in_child(&raw).map_err(|(_, e)| e)),
            };
            r.map_err(std::io::Error::from_raw_os_error)
        });
    }
    cmd.output().expect("spawn the confined child")
}

const PROBE: &str = r#"
import ctypes, errno, json, os, subprocess, sys
nrs = json.loads(sys.argv[1])
inside, outside = sys.argv[2], sys.argv[3]
out = {}
def probe(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
def execv_sh():
    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/bin/sh", ["sh", "-c", "true"])
        except OSError as e:
            os._exit(e.errno)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code:
        raise OSError(code, "execv")
def write(path):
    with open(path, "w") as f:
        f.write("x")
def read(path):
    with open(path) as f:
        f.read()
probe("execv_sh", execv_sh)
probe("subprocess_sh", lambda: subprocess.run(["/bin/sh", "-c", "true"], check=True))
probe("curl", lambda: subprocess.run(["/usr/bin/curl", "--version"], check=True, capture_output=True))
probe("self", lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
probe("read_hostname", lambda: read("/etc/hostname"))
probe("read_outside", lambda: read(os.path.join(outside, "secret")))
probe("write_inside", lambda: write(os.path.join(inside, "new")))
probe("write_outside", lambda: write(os.path.join(outside, "new")))
probe("mkdir_outside", lambda: os.mkdir(os.path.join(outside, "d")))
libc = ctypes.CDLL(None, use_errno=True)
def sysc(*a):
    def f():
        if libc.syscall(*a) == -1:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    return f
probe("ptrace_traceme", sysc(nrs["ptrace"], 0, 0, 0, 0))
# A mount point that does not exist: unconfined root gets ENOENT, not a mount.
probe("mount", sysc(nrs["mount"], b"none", b"/nonexistent-warden-test", b"tmpfs", 0, None))
# KEYCTL_GET_KEYRING_ID of the session keyring, without creating one.
probe("keyctl", sysc(nrs["keyctl"], 0, ctypes.c_int(-3), 0))
probe("unshare_newuser", sysc(nrs["unshare"], 0x10000000))
probe("bpf", sysc(nrs["bpf"], 0, None, 0))
print(json.dumps(out))
"#;

fn probe(layers: Layers) -> serde_json::Value {
    let inside = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "s").unwrap();
    let script = inside.path().join("probe.py");
    std::fs::write(&script, PROBE).unwrap();
    let python = PathBuf::from("/usr/bin/python3");
    let spec = ConfineSpec::for_program(&python, &[inside.path().to_path_buf()]).unwrap();
    let prepared = Arc::new(confine::prepare(&spec).unwrap());
    let nrs = serde_json::json!({
        "ptrace": libc::SYS_ptrace,
        "mount": libc::SYS_mount,
        "keyctl": libc::SYS_keyctl,
        "unshare": libc::SYS_unshare,
        "bpf": libc::SYS_bpf,
    })
    .to_string();
    let out = run(
        &python,
        &[
            script.to_str().unwrap(),
            &nrs,
            inside.path().to_str().unwrap(),
            outside.path().to_str().unwrap(),
        ],
        inside.path(),
        &prepared,
        layers,
    );
    assert!(
        out.status.success(),
        "probe failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn unconfined_control_can_do_everything_the_probe_tries() {
    require_root_and_landlock();
    let r = probe(Layers::None);
    for k in [
        "execv_sh",
        "subprocess_sh",
        "curl",
        "self",
        "read_hostname",
        "read_outside",
        "write_inside",
        "write_outside",
        "ptrace_traceme",
        "keyctl",
        "unshare_newuser",
    ] {
        assert_eq!(r[k], "ok", "{k} in {r}");
    }
    assert_eq!(r["mount"], "ENOENT", "{r}");
}

#[test]
fn brokered_python_runs_only_itself_and_writes_only_its_dir() {
    require_root_and_landlock();
    let r = probe(Layers::Both);
    let expect = [
        ("execv_sh", "EACCES"),
        ("subprocess_sh", "EACCES"),
        ("curl", "EACCES"),
        ("self", "ok"),
        ("read_hostname", "ok"),
        ("read_outside", "EACCES"),
        ("write_inside", "ok"),
        ("write_outside", "EACCES"),
        ("mkdir_outside", "EACCES"),
        ("ptrace_traceme", "EPERM"),
        ("mount", "EPERM"),
        ("keyctl", "EPERM"),
        ("unshare_newuser", "EPERM"),
        ("bpf", "EPERM"),
    ];
    for (k, v) in expect {
        assert_eq!(r[k], v, "{k} in {r}");
    }
}

#[test]
fn seccomp_alone_refuses_mount_and_namespaces_with_eperm() {
    // Landlock also refuses mount with EPERM, so show the filter on its own.
    require_root_and_landlock();
    let r = probe(Layers::SeccompOnly);
    for k in [
        "ptrace_traceme",
        "mount",
        "keyctl",
        "unshare_newuser",
        "bpf",
    ] {
        assert_eq!(r[k], "EPERM", "{k} in {r}");
    }
    // Without Landlock the filesystem is open, and fork/exec still work
    // (clone3 gets ENOSYS and libc falls back to clone).
    assert_eq!(r["subprocess_sh"], "ok", "{r}");
    assert_eq!(r["write_outside"], "ok", "{r}");
}

#[test]
fn brokered_shell_script_runs_its_interpreter_but_no_other_program() {
    require_root_and_landlock();
    let inside = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let script = inside.path().join("agent.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             read host < /etc/hostname && echo read-ok\n\
             echo x > ./mine && echo write-inside-ok\n\
             echo x > {out}/theirs || echo write-outside-refused\n\
             /usr/bin/cat /etc/hostname || echo cat-refused\n",
            out = outside.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let spec = ConfineSpec::for_program(&script, &[inside.path().to_path_buf()]).unwrap();
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    assert!(spec.exec.contains(&sh), "{:?}", spec.exec);
    assert_eq!(
        spec.exec.len(),
        3,
        "script, sh and the loader: {:?}",
        spec.exec
    );
    let prepared = Arc::new(confine::prepare(&spec).unwrap());
    let out = run(&script, &[], inside.path(), &prepared, Layers::Both);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "read-ok",
        "write-inside-ok",
        "write-outside-refused",
        "cat-refused",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line}: {stdout}\n{stderr}"
        );
    }
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(!outside.path().join("theirs").exists());
    assert!(inside.path().join("mine").exists());
}

/// Red-team finding: the ELF loader, which every dynamic program needs
/// (Landlock's EXECUTE right is checked when the kernel opens a PT_INTERP
/// too, so it cannot be withheld), runs any file it can map when called
/// directly. The noexec mounts stop it for everything the agent can write,
/// and the program directories are not readable; an executable under the
/// library trees (here libc.so.6 itself, which prints its version) stays
/// runnable through it, which SECURITY.md states as a limit.
#[test]
fn brokered_loader_cannot_run_a_binary_the_agent_wrote() {
    require_root_and_landlock();
    let inside = tempfile::tempdir().unwrap();
    let mycat = inside.path().join("mycat");
    std::fs::copy("/usr/bin/cat", &mycat).unwrap();
    std::fs::write(inside.path().join("data"), "secret-data\n").unwrap();
    let script = inside.path().join("agent.sh");
    let spec_for =
        |script: &Path| ConfineSpec::for_program(script, &[inside.path().to_path_buf()]).unwrap();
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let loader = spec_for(&script)
        .exec
        .iter()
        .find(|p| p.to_string_lossy().contains("ld-linux"))
        .cloned()
        .expect("the loader is on the exec list");
    let libc_so = [
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/aarch64-linux-gnu/libc.so.6",
    ]
    .iter()
    .map(Path::new)
    .find(|p| p.exists())
    .expect("glibc's libc.so.6")
    .to_path_buf();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             ./mycat data 2>/dev/null && echo direct-ran || echo direct-refused\n\
             {ld} ./mycat data 2>/dev/null && echo loader-copied-ran || echo loader-copied-refused\n\
             {ld} /usr/bin/cat data 2>/dev/null && echo loader-system-ran || echo loader-system-refused\n\
             {ld} {libc} >/dev/null 2>&1 && echo loader-lib-ran || echo loader-lib-refused\n",
            ld = loader.display(),
            libc = libc_so.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let spec = spec_for(&script);
    let prepared = Arc::new(confine::prepare(&spec).unwrap());
    assert_eq!(
        prepared.keep_exec.len(),
        1,
        "the agent's own script stays executable"
    );
    let lines = |layers| {
        let out = run(&script, &[], inside.path(), &prepared, layers);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    // Unconfined, all three run.
    let free = lines(Layers::None);
    for l in [
        "direct-ran",
        "loader-copied-ran",
        "loader-system-ran",
        "loader-lib-ran",
    ] {
        assert!(free.lines().any(|x| x == l), "{l}: {free}");
    }
    // Landlock alone stops the direct exec, not the loader: the finding.
    let landlock = lines(Layers::NoMounts);
    for l in ["direct-refused", "loader-copied-ran"] {
        assert!(landlock.lines().any(|x| x == l), "{l}: {landlock}");
    }
    // With the noexec mounts the copied binary cannot be mapped, and
    // /usr/bin is not readable; an executable in a library tree still runs
    // through the loader (the limit).
    let confined = lines(Layers::Both);
    for l in [
        "direct-refused",
        "loader-copied-refused",
        "loader-system-refused",
        "loader-lib-ran",
    ] {
        assert!(confined.lines().any(|x| x == l), "{l}: {confined}");
    }
    // Nothing was mounted in the test's own namespace.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&inside.path().to_string_lossy().to_string()));
}

#[test]
fn python_exec_closure_has_the_loader() {
    let c = confine::exec_closure(Path::new("/usr/bin/python3")).unwrap();
    assert!(c.len() >= 2, "{c:?}");
    assert!(
        c.iter().any(|p| p.to_string_lossy().contains("ld-linux")),
        "{c:?}"
    );
}

#[test]
fn a_missing_path_is_an_error_that_names_it() {
    require_root_and_landlock();
    let spec = ConfineSpec {
        exec: vec![],
        read: vec![],
        write: vec![PathBuf::from("/nonexistent-warden-confine")],
    };
    let err = confine::prepare(&spec).unwrap_err().to_string();
    assert!(err.contains("/nonexistent-warden-confine"), "{err}");
}
