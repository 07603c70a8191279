//! The guard: a small process that outlives the daemon just long enough to
//! take every agent down if the daemon dies.
//!
//! PR_SET_PDEATHSIG reaches only the daemon's direct children; a double-forked
//! grandchild would survive a SIGKILL of the daemon. The guard holds the read
//! end of a pipe whose only write end is in the daemon: end of file means the
//! daemon is gone, however it went. If it did not say "clean" first, the guard
//! sets the SAFE MODE latch, then freezes and kills the agents' cgroup.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warden_core::cgroup::Manager;
use warden_core::safemode::{self, Latch};

/// The daemon's handle on its guard.
#[derive(Debug)]
pub struct Guard {
    pub child: Child,
    pipe: Option<OwnedFd>,
}

impl Guard {
    /// Starts `exe __guard ...` with the read end of a pipe as its stdin.
    pub fn spawn(
        exe: &Path,
        cgroup_mount: &Path,
        cgroup_root: &str,
        latch: &Path,
    ) -> std::io::Result<Guard> {
        let (r, w) = warden_core::sys::pipe_cloexec()?;
        let child = Command::new(exe)
            .arg("__guard")
            .arg("--cgroup-mount")
            .arg(cgroup_mount)
            .arg("--cgroup-root")
            .arg(cgroup_root)
            .arg("--latch")
            .arg(latch)
            .stdin(Stdio::from(r))
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Guard {
            child,
            pipe: Some(w),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// True while the guard runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Tells the guard the daemon ends cleanly, and waits for it.
    pub fn finish_clean(mut self) {
        if let Some(w) = self.pipe.take() {
            let mut f = std::fs::File::from(w);
            let _ = f.write_all(b"clean\n");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guard process itself (`warden __guard`). Returns its exit code.
pub fn run(cgroup_mount: PathBuf, cgroup_root: String, latch: PathBuf) -> i32 {
    // Only the pipe ends the guard: a terminal's Ctrl-C or a stray TERM that
    // also reached the daemon must not take the guard out first.
    warden_core::sys::ignore_termination_signals();
    let mut buf = Vec::new();
    let _ = std::io::stdin().lock().read_to_end(&mut buf);
    let clean = buf.starts_with(b"clean");
    let mgr = match Manager::detect(&cgroup_mount, &cgroup_root) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("warden guard: cannot open cgroups to clean up: {e}");
            return 1;
        }
    };
    let agents = mgr.agents();
    let populated = agents.populated().unwrap_or(true);
    if clean && !populated {
        return 0;
    }
    if !clean {
        let l = Latch::new(
            "daemon_died",
            "the warden daemon ended without a clean shutdown; its guard killed the agents",
            None,
            None,
        );
        if let Err(e) = safemode::set(&latch, &l) {
            eprintln!(
                "warden guard: cannot write SAFE MODE latch {}: {e}",
                latch.display()
            );
        }
    }
    if !populated {
        return 0;
    }
    let (report, _ev) = warden_core::halt::run(&warden_core::halt::Request {
        scope: agents.as_ref(),
        members: &[],
        trigger: "guard",
        reason: "daemon ended",
        hard: true,
        seen_at: Instant::now(),
        empty_deadline: Duration::from_secs(5),
    });
    eprintln!(
        "warden guard: daemon ended {}; killed {} agent processes in {} us; survivors {:?}",
        if clean { "cleanly" } else { "uncleanly" },
        report.processes,
        report.timings.empty_us,
        report.survivors
    );
    for name in mgr.existing_agents().unwrap_or_default() {
        let _ = mgr.agent(&name).remove();
    }
    if report.complete() {
        0
    } else {
        1
    }
}
