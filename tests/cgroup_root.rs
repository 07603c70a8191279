//! Root integration tests of `warden_core::cgroup` on the real hierarchies of
//! this host (hybrid: v1 controllers plus a cgroup2 `unified` mount), as the
//! hybrid layout, as forced pure v1 (unified ignored), and as pure v2 on the
//! unified mount. CI runs them as root; without root they fail, they never
//! skip.
//!
//! Each test uses its own root `/warden-test-cg-<pid>-<n>`. A guard kills
//! (by cgroup, never by name), reaps and removes everything it created even
//! when the test fails, then checks nothing is left.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use warden_core::cgroup::{Cgroup, Layout, Limits, Manager};

const MOUNT: &str = "/sys/fs/cgroup";
const DEADLINE: Duration = Duration::from_secs(10);

/// One test at a time: the guard reaps with waitpid(-1), and the halt
/// timings mean more on a quiet machine.
static SERIAL: Mutex<()> = Mutex::new(());
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A unique cgroup root for one test, cleaned up on drop.
struct Fixture {
    root: String,
    children: Vec<Child>,
    _serial: MutexGuard<'static, ()>,
}

impl Fixture {
    fn new() -> Fixture {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the cgroup_root tests need root (CI runs them as root)"
        );
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        // Orphans of our fork trees (pid 1 here does not reap) come to us.
        nix::sys::prctl::set_child_subreaper(true).unwrap();
        let root = format!(
            "/warden-test-cg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        Fixture {
            root,
            children: Vec::new(),
            _serial: serial,
        }
    }

    fn manager(&self, layout: Layout) -> Manager {
        let m = Manager::with_layout(Path::new(MOUNT), &self.root, layout).unwrap();
        assert_eq!(m.layout(), layout);
        m
    }

    /// Starts `sh -c SCRIPT` with stdin on a pipe: a script that begins with
    /// `read x` forks nothing until `release`, i.e. after it joined its cgroup.
    fn spawn(&mut self, script: &str) -> i32 {
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        self.children.push(child);
        pid
    }

    /// Like `spawn`, but the child joins `cg` through `join_fds` between fork
    /// and exec, as the daemon's children do.
    fn spawn_joined(&mut self, cg: &dyn Cgroup, script: &str) -> i32 {
        let fds = cg.join_fds().unwrap();
        let raw: Vec<i32> = fds.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec the closure only calls write(2), which
        // is async-signal-safe, on fds that the parent keeps open (`fds`
        // lives until after spawn returns); the fds are O_CLOEXEC so they
        // close at exec.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &raw {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(fds);
        let pid = child.id() as i32;
        self.children.push(child);
        pid
    }

    fn release(&mut self, pid: i32) {
        let child = self
            .children
            .iter_mut()
            .find(|c| c.id() as i32 == pid)
            .unwrap();
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }

    /// Reaps every child that has exited (ours and adopted orphans).
    fn reap(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// The test's cgroup directory in every hierarchy that has one.
    fn dirs(&self) -> Vec<PathBuf> {
        hierarchies()
            .iter()
            .map(|h| h.join(self.root.trim_start_matches('/')))
            .filter(|d| d.exists())
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let me = std::process::id() as i32;
        let start = Instant::now();
        loop {
            let mut members = 0;
            for top in self.dirs() {
                for cg in subtree(&top) {
                    let _ = std::fs::write(cg.join("cgroup.freeze"), "0");
                    let _ = std::fs::write(cg.join("freezer.state"), "THAWED");
                    let _ = std::fs::write(cg.join("cgroup.kill"), "1");
                    for pid in pids(&cg) {
                        members += 1;
                        if pid > 1 && pid != me {
                            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                        }
                    }
                }
            }
            self.reap();
            if members == 0 || start.elapsed() > DEADLINE {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.reap();
        for top in self.dirs() {
            for cg in subtree(&top).iter().rev() {
                let _ = std::fs::remove_dir(cg);
            }
        }
        let left = self.dirs();
        if !left.is_empty() && !std::thread::panicking() {
            panic!("cgroups left behind: {left:?}");
        }
    }
}

/// Every hierarchy mount under /sys/fs/cgroup (symlinks resolved, once).
fn hierarchies() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(MOUNT)
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::canonicalize(e.path()).ok())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

fn pids(cg: &Path) -> Vec<i32> {
    std::fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
        .trim()
        .to_owned()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
    start.elapsed()
}

/// The cgroup of `pid` in each hierarchy, from /proc/PID/cgroup:
/// (controllers, path), controllers "" for the v2 line.
fn proc_cgroups(pid: i32) -> Vec<(String, String)> {
    read(format!("/proc/{pid}/cgroup"))
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _ = it.next()?;
            Some((it.next()?.to_owned(), it.next()?.to_owned()))
        })
        .collect()
}

/// Asserts `pid` is in `rel` in every hierarchy the layout uses.
fn assert_member(pid: i32, rel: &str, layout: Layout) {
    for (ctl, path) in proc_cgroups(pid) {
        let used = match ctl.as_str() {
            "" => layout != Layout::V1,
            c => {
                layout != Layout::V2
                    && c.split(',').any(|c| {
                        ["memory", "pids", "cpu", "cpuacct", "freezer", "blkio"].contains(&c)
                    })
            }
        };
        if used {
            assert_eq!(path, rel, "pid {pid} in hierarchy {ctl:?}");
        }
    }
}

fn is_zombie_or_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => true,
    }
}

const FORK_TREE: &str = "read x; sleep 1000 & sleep 1000 & wait";

fn limits() -> Limits {
    Limits {
        memory_max: Some(64 << 20),
        pids_max: Some(16),
        cpu_max: Some(0.5),
    }
}

// ---- tests ------------------------------------------------------------------

#[test]
fn detects_this_hybrid_host() {
    let fx = Fixture::new();
    let m = Manager::detect(Path::new(MOUNT), "auto").unwrap();
    assert_eq!(m.layout(), Layout::Hybrid);
    let own = read("/proc/self/cgroup");
    if own.lines().any(|l| l == "0::/") {
        assert_eq!(m.root(), "/warden");
    }
    let dirs = m.hierarchy_dirs();
    assert_eq!(dirs[0], Path::new(MOUNT).join("unified"));
    for c in ["memory", "pids", "freezer", "blkio"] {
        assert!(dirs.iter().any(|d| d.ends_with(c)), "{c} in {dirs:?}");
    }
    assert!(!dirs
        .iter()
        .any(|d| d.ends_with("cpuset") || d.ends_with("systemd")));
    let v1 = fx.manager(Layout::V1);
    assert!(!v1.hierarchy_dirs().iter().any(|d| d.ends_with("unified")));
    let on_unified = Manager::detect(&Path::new(MOUNT).join("unified"), &fx.root).unwrap();
    assert_eq!(on_unified.layout(), Layout::V2);
}

fn limits_in_kernel_files(layout: Layout) {
    let fx = Fixture::new();
    let m = fx.manager(layout);
    m.setup().unwrap();
    assert!(m.unenforceable(&limits()).is_empty());
    let cg = m.create_agent("lim", &limits()).unwrap();
    let rel = format!("{}/agents/lim", fx.root);
    let dir = |h: &str| Path::new(MOUNT).join(h).join(rel.trim_start_matches('/'));
    assert_eq!(
        read(dir("memory").join("memory.limit_in_bytes")),
        "67108864"
    );
    let memsw = dir("memory").join("memory.memsw.limit_in_bytes");
    if memsw.exists() {
        assert_eq!(read(memsw), "67108864");
    }
    assert_eq!(read(dir("pids").join("pids.max")), "16");
    assert_eq!(read(dir("cpu").join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(dir("cpu").join("cpu.cfs_quota_us")), "50000");
    assert_eq!(dir("unified").exists(), layout == Layout::Hybrid);
    assert_eq!(m.existing_agents().unwrap(), vec!["lim"]);
    cg.remove().unwrap();
    assert!(m.existing_agents().unwrap().is_empty());
    m.teardown().unwrap();
    assert!(fx.dirs().is_empty(), "{:?}", fx.dirs());
}

#[test]
fn hybrid_limits_in_kernel_files() {
    limits_in_kernel_files(Layout::Hybrid);
}

#[test]
fn v1_limits_in_kernel_files() {
    limits_in_kernel_files(Layout::V1);
}

/// The halt ladder on one agent: freeze, read procs, kill, thaw, empty.
fn ladder(layout: Layout) {
    let mut fx = Fixture::new();
    let m = fx.manager(layout);
    m.setup().unwrap();
    let lim = if layout == Layout::V2 {
        Limits::default()
    } else {
        limits()
    };
    let cg = m.create_agent("web", &lim).unwrap();
    let rel = cg.path().to_owned();
    assert_eq!(cg.events_file().is_some(), layout != Layout::V1);

    // A fork tree joined before exec, and one moved in by pid.
    let joined = fx.spawn_joined(cg.as_ref(), FORK_TREE);
    let moved = fx.spawn(FORK_TREE);
    cg.add_pid(moved).unwrap();
    fx.release(joined);
    fx.release(moved);
    wait_until("6 members", || cg.procs().unwrap().len() == 6);
    assert!(cg.populated().unwrap());
    let members = cg.procs().unwrap();
    for pid in &members {
        assert_member(*pid, &rel, layout);
    }
    let stats = cg.stats().unwrap();
    assert_eq!(stats.pids_current, Some(6), "{stats:?}");

    let t0 = Instant::now();
    cg.freeze().unwrap();
    let frozen_in = wait_until("frozen", || cg.is_frozen().unwrap());
    assert_eq!(cg.procs().unwrap(), members, "procs of the frozen tree");
    cg.kill().unwrap();
    // How the freezer treats SIGKILL, measured rather than assumed.
    std::thread::sleep(Duration::from_millis(100));
    let alive_while_frozen = members.iter().filter(|p| !is_zombie_or_gone(**p)).count();
    if layout == Layout::V1 {
        eprintln!(
            "v1: {alive_while_frozen}/6 killed tasks still alive 100 ms after SIGKILL while FROZEN"
        );
    } else {
        // v2 freezer: a frozen task dies on SIGKILL, no thaw needed.
        assert_eq!(alive_while_frozen, 0, "v2 frozen tasks die on SIGKILL");
        assert!(!cg.populated().unwrap());
    }
    cg.thaw().unwrap();
    let empty_in = wait_until("empty", || !cg.populated().unwrap());
    eprintln!(
        "{layout:?}: frozen in {frozen_in:?}, empty {empty_in:?} after thaw, ladder {:?}",
        t0.elapsed()
    );
    assert!(cg.procs().unwrap().is_empty());
    cg.remove().unwrap();
    cg.remove().unwrap(); // a missing cgroup is not an error
    m.teardown().unwrap();
    fx.reap();
    for pid in members {
        assert!(is_zombie_or_gone(pid), "pid {pid} survived");
    }
}

#[test]
fn hybrid_ladder() {
    ladder(Layout::Hybrid);
}

#[test]
fn v1_ladder() {
    ladder(Layout::V1);
}

#[test]
fn unified_mount_as_pure_v2_ladder() {
    ladder(Layout::V2);
}

#[test]
fn unified_mount_enforces_no_limit() {
    let fx = Fixture::new();
    let m = fx.manager(Layout::V2);
    m.setup().unwrap();
    assert_eq!(
        m.unenforceable(&limits()),
        vec!["memory_max", "pids_max", "cpu_max"]
    );
    // The caller chose to run anyway: nothing is written, nothing fails.
    let cg = m.create_agent("nolimits", &limits()).unwrap();
    assert!(cg.stats().unwrap().cpu_usage_usec.is_some());
    cg.remove().unwrap();
    m.teardown().unwrap();
}

/// One write to `R/agents` takes down every agent.
fn parent_kill(layout: Layout) {
    let mut fx = Fixture::new();
    let m = fx.manager(layout);
    m.setup().unwrap();
    let mut all = Vec::new();
    for name in ["a", "b", "c"] {
        let cg = m.create_agent(name, &Limits::default()).unwrap();
        let pid = fx.spawn_joined(cg.as_ref(), FORK_TREE);
        fx.release(pid);
        wait_until("3 members", || cg.procs().unwrap().len() == 3);
        all.extend(cg.procs().unwrap());
    }
    all.sort_unstable();
    let agents = m.agents();
    assert_eq!(agents.procs().unwrap(), all);
    let t0 = Instant::now();
    agents.freeze().unwrap();
    wait_until("all frozen", || agents.is_frozen().unwrap());
    for name in ["a", "b", "c"] {
        assert!(
            m.agent(name).is_frozen().unwrap(),
            "{name} frozen with its parent"
        );
    }
    agents.kill().unwrap();
    agents.thaw().unwrap();
    wait_until("all empty", || !agents.populated().unwrap());
    eprintln!(
        "{layout:?}: 9 tasks in 3 agents halted in {:?}",
        t0.elapsed()
    );
    for name in m.existing_agents().unwrap() {
        assert!(!m.agent(&name).populated().unwrap());
        m.agent(&name).remove().unwrap();
    }
    m.teardown().unwrap();
    assert!(fx.dirs().is_empty());
}

#[test]
fn hybrid_parent_kill_takes_all_agents() {
    parent_kill(Layout::Hybrid);
}

#[test]
fn v1_parent_kill_takes_all_agents() {
    parent_kill(Layout::V1);
}

#[test]
fn unified_parent_kill_takes_all_agents() {
    parent_kill(Layout::V2);
}

fn pids_max_refuses_forks(layout: Layout) {
    let mut fx = Fixture::new();
    let m = fx.manager(layout);
    m.setup().unwrap();
    let lim = Limits {
        pids_max: Some(4),
        ..Limits::default()
    };
    let cg = m.create_agent("forky", &lim).unwrap();
    let pid = fx.spawn_joined(
        cg.as_ref(),
        "read x; for i in 1 2 3 4 5 6 7 8; do sleep 1000 & done; wait",
    );
    fx.release(pid);
    wait_until("a refused fork", || {
        cg.stats().unwrap().pids_events_max.unwrap_or(0) > 0
    });
    let s = cg.stats().unwrap();
    assert!(s.pids_current.unwrap() <= 4, "{s:?}");
    assert!(cg.procs().unwrap().len() <= 4);
    cg.freeze().unwrap();
    wait_until("frozen", || cg.is_frozen().unwrap());
    cg.kill().unwrap();
    cg.thaw().unwrap();
    wait_until("empty", || !cg.populated().unwrap());
    cg.remove().unwrap();
    m.teardown().unwrap();
}

#[test]
fn hybrid_pids_max_refuses_forks() {
    pids_max_refuses_forks(Layout::Hybrid);
}

#[test]
fn v1_pids_max_refuses_forks() {
    pids_max_refuses_forks(Layout::V1);
}

fn stats_are_sane(layout: Layout) {
    let mut fx = Fixture::new();
    let m = fx.manager(layout);
    m.setup().unwrap();
    let cg = m.create_agent("busy", &limits()).unwrap();
    let before = cg.stats().unwrap();
    assert_eq!(before.pids_current, Some(0), "{before:?}");
    let pid = fx.spawn_joined(
        cg.as_ref(),
        "read x; i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; exec sleep 1000",
    );
    fx.release(pid);
    wait_until("the busy loop to end", || {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p.ends_with("sleep"))
    });
    let s = cg.stats().unwrap();
    eprintln!("{layout:?} stats: {s:?}");
    assert!(s.cpu_usage_usec.unwrap() > 10_000, "{s:?}");
    assert!(s.memory_current.unwrap() > 0, "{s:?}");
    assert!(s.memory_current.unwrap() < 64 << 20, "{s:?}");
    assert_eq!(s.pids_current, Some(1), "{s:?}");
    assert!(s.io_write_bytes.is_some(), "{s:?}");
    assert_eq!(s.memory_events_max, Some(0), "{s:?}");
    assert_eq!(s.pids_events_max, Some(0), "{s:?}");
    cg.kill().unwrap();
    wait_until("empty", || !cg.populated().unwrap());
    cg.remove().unwrap();
    m.teardown().unwrap();
}

#[test]
fn hybrid_stats_are_sane() {
    stats_are_sane(Layout::Hybrid);
}

#[test]
fn v1_stats_are_sane() {
    stats_are_sane(Layout::V1);
}

fn remove_refuses_populated(layout: Layout) {
    let mut fx = Fixture::new();
    let m = fx.manager(layout);
    m.setup().unwrap();
    let cg = m.create_agent("busy", &Limits::default()).unwrap();
    let pid = fx.spawn_joined(cg.as_ref(), "read x; exec sleep 1000");
    let e = cg.remove().unwrap_err();
    assert!(e.to_string().contains("populated"), "{e}");
    assert!(m.teardown().is_err(), "teardown must not hide a live agent");
    fx.release(pid);
    cg.kill().unwrap();
    wait_until("empty", || !cg.populated().unwrap());
    cg.remove().unwrap();
    m.teardown().unwrap();
    assert!(fx.dirs().is_empty());
}

#[test]
fn hybrid_remove_refuses_populated() {
    remove_refuses_populated(Layout::Hybrid);
}

#[test]
fn v1_remove_refuses_populated() {
    remove_refuses_populated(Layout::V1);
}

/// On v2, when R is the daemon's own cgroup, setup moves R's processes into
/// R/supervisor and teardown moves them back (simulated with a stand-in
/// process, on the unified mount).
#[test]
fn v2_supervisor_move_and_back() {
    let mut fx = Fixture::new();
    let r = Path::new(MOUNT)
        .join("unified")
        .join(fx.root.trim_start_matches('/'));
    std::fs::create_dir(&r).unwrap();
    let daemon = fx.spawn("exec sleep 1000");
    std::fs::write(r.join("cgroup.procs"), daemon.to_string()).unwrap();
    let m = Manager::with_own_cgroup(Path::new(MOUNT), "auto", Some(Layout::V2), Some(&fx.root))
        .unwrap();
    assert_eq!(m.root(), fx.root);
    m.setup().unwrap();
    let in_v2 = |pid| {
        proc_cgroups(pid)
            .into_iter()
            .find(|(c, _)| c.is_empty())
            .unwrap()
            .1
    };
    assert_eq!(in_v2(daemon), format!("{}/supervisor", fx.root));
    assert!(pids(&r).is_empty());
    assert!(r.join("agents").is_dir());
    m.teardown().unwrap();
    assert_eq!(in_v2(daemon), fx.root);
    assert!(!r.join("supervisor").exists() && !r.join("agents").exists());
    // R is the daemon's own cgroup: teardown leaves it.
    assert!(r.exists());
}

/// v1 membership is per hierarchy: the kill walk also finds a member that is
/// only in a non-freezer hierarchy.
#[test]
fn v1_kill_walks_every_hierarchy() {
    let mut fx = Fixture::new();
    let m = fx.manager(Layout::V1);
    m.setup().unwrap();
    let cg = m.create_agent("partial", &Limits::default()).unwrap();
    let pid = fx.spawn("exec sleep 1000");
    let pids_dir = Path::new(MOUNT)
        .join("pids")
        .join(cg.path().trim_start_matches('/'));
    std::fs::write(pids_dir.join("cgroup.procs"), pid.to_string()).unwrap();
    assert_eq!(cg.procs().unwrap(), vec![pid]);
    assert!(cg.populated().unwrap());
    cg.kill().unwrap();
    wait_until("dead", || {
        fx.reap();
        is_zombie_or_gone(pid)
    });
    assert!(!cg.populated().unwrap());
    cg.remove().unwrap();
    m.teardown().unwrap();
}

/// A copy of /sys/fs/cgroup built from bind mounts in a private mount
/// namespace of this test thread, with some v1 hierarchies read-only: what
/// systemd-nspawn shows a container on a hybrid host.
struct ReadOnlyView {
    dir: tempfile::TempDir,
    mounted: Vec<PathBuf>,
}

impl ReadOnlyView {
    fn new(read_only: &[&str]) -> ReadOnlyView {
        use nix::mount::{mount, MsFlags};
        use nix::sched::{unshare, CloneFlags};
        // Per-thread: libtest runs each test on its own thread.
        unshare(CloneFlags::CLONE_NEWNS).unwrap();
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .unwrap();
        let mut view = ReadOnlyView {
            dir: tempfile::tempdir().unwrap(),
            mounted: Vec::new(),
        };
        for h in [
            "memory", "pids", "cpu", "cpuacct", "freezer", "blkio", "unified",
        ] {
            let target = view.dir.path().join(h);
            std::fs::create_dir(&target).unwrap();
            let src = Path::new(MOUNT).join(h);
            mount(
                Some(&src),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap();
            view.mounted.push(target.clone());
            if read_only.contains(&h) {
                view.make_read_only(h);
            }
        }
        view
    }

    fn make_read_only(&self, h: &str) {
        use nix::mount::{mount, MsFlags};
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(
            None::<&str>,
            &self.dir.path().join(h),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .unwrap();
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ReadOnlyView {
    fn drop(&mut self) {
        for m in &self.mounted {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Inside systemd-nspawn on a hybrid host the v1 hierarchies are read-only
/// and `unified` is writable: limits are unenforceable, but agents can still
/// be created, frozen, killed and verified empty.
#[test]
fn hybrid_with_read_only_v1_hierarchies() {
    let mut fx = Fixture::new();
    let ro = ["memory", "pids", "cpu", "cpuacct", "freezer", "blkio"];
    let view = ReadOnlyView::new(&ro);
    let m = Manager::detect(view.path(), &fx.root).unwrap();
    assert_eq!(m.layout(), Layout::Hybrid);
    assert_eq!(
        m.unenforceable(&limits()),
        vec!["memory_max", "pids_max", "cpu_max"]
    );
    m.setup().unwrap();
    // The caller chose `unenforced_limits = "warn"`: the agent still starts.
    let cg = m.create_agent("nspawned", &limits()).unwrap();
    assert_eq!(cg.join_fds().unwrap().len(), 1, "unified only");
    let pid = fx.spawn_joined(cg.as_ref(), FORK_TREE);
    fx.release(pid);
    wait_until("3 members", || cg.procs().unwrap().len() == 3);
    cg.freeze().unwrap();
    wait_until("frozen", || cg.is_frozen().unwrap());
    cg.kill().unwrap();
    cg.thaw().unwrap();
    wait_until("empty", || !cg.populated().unwrap());
    cg.remove().unwrap();
    m.teardown().unwrap();
    // Pure v1 cannot freeze without its freezer.
    let v1 = Manager::with_layout(view.path(), &fx.root, Layout::V1).unwrap();
    let e = v1.setup().unwrap_err();
    assert!(e.to_string().contains("freezer"), "{e}");
    drop(view);
}

/// A hierarchy that turns read-only after detection shows as EROFS on
/// mkdir: it is skipped, and a limit that needed it fails the creation
/// instead of silently not applying.
#[test]
fn erofs_on_mkdir_marks_a_hierarchy_read_only() {
    let fx = Fixture::new();
    let view = ReadOnlyView::new(&[]);
    let m = Manager::detect(view.path(), &fx.root).unwrap();
    assert_eq!(m.layout(), Layout::Hybrid);
    m.setup().unwrap();
    assert!(m.unenforceable(&limits()).is_empty());
    view.make_read_only("memory");
    let e = m.create_agent("late", &limits()).unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
    assert_eq!(m.unenforceable(&limits()), vec!["memory_max"]);
    let lim = Limits {
        memory_max: None,
        ..limits()
    };
    let cg = m.create_agent("late", &lim).unwrap();
    assert_eq!(cg.join_fds().unwrap().len(), 6, "unified + 5 writable v1");
    cg.remove().unwrap();
    // R stays in the now read-only memory hierarchy (the fixture removes it
    // through /sys/fs/cgroup); teardown leaves it alone.
    m.teardown().unwrap();
    drop(view);
}
