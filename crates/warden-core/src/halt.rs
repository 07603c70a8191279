//! The halt ladder: freeze, capture evidence, kill, thaw, verify empty.
//!
//! Freezing first is what makes fork storms, TERM-ignorers and double-forked
//! `setsid` escapees harmless: they all stay in the cgroup and cannot run while
//! it is frozen. The same order works on every layout: on v2 a frozen task dies
//! on SIGKILL; on v1 the SIGKILL stays pending until the thaw (see
//! Documentation/admin-guide/cgroup-v1/freezer-subsystem.rst), and nothing can
//! fork in between because the pids were read while frozen.
//!
//! Every phase is timed from the moment the trigger was seen.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;
use crate::evidence::{self, AgentEvidence, Evidence};

/// How long to wait for the freeze before killing anyway.
pub const FREEZE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Kill attempts before giving up loudly (the daemon keeps retrying later).
pub const KILL_ATTEMPTS: u32 = 5;

/// Microseconds from the trigger to the end of each phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    /// The freeze was requested.
    pub freeze_requested_us: u64,
    /// The kernel reported the tree frozen (or the freeze timed out).
    pub frozen_us: u64,
    /// Evidence captured from the frozen tree.
    pub evidence_us: u64,
    /// SIGKILL delivered to every member.
    pub killed_us: u64,
    /// The cgroup reported empty.
    pub empty_us: u64,
}

/// What a halt did and found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub id: String,
    /// `stop_file`, `cli`, `signal`, `monitor`, `orderly`, ...
    pub trigger: String,
    pub reason: String,
    pub hard: bool,
    pub started_at_ms: u64,
    pub timings: Timings,
    pub frozen: bool,
    /// Processes present when frozen.
    pub processes: usize,
    /// Pids still present after every attempt (should be empty).
    pub survivors: Vec<i32>,
    pub kill_attempts: u32,
    pub agents: Vec<String>,
    /// Problems met on the way; the ladder goes on past each.
    pub errors: Vec<String>,
}

impl Report {
    pub fn complete(&self) -> bool {
        self.survivors.is_empty()
    }
}

/// One agent inside the scope being halted.
pub struct Member<'a> {
    pub name: String,
    pub cgroup: &'a dyn Cgroup,
    /// The agent's output, whose tail goes into the evidence.
    pub log: Option<crate::logs::AgentLog>,
}

fn us(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

/// A unique id for a halt.
pub fn new_id() -> String {
    format!(
        "h{}-{}",
        crate::clock::now_ms(),
        crate::crypto::random_hex(4)
    )
}

/// What to halt, and why.
pub struct Request<'a> {
    /// The halt's id, when the caller named it first (the safety kernel
    /// hears it before the ladder starts); a new one otherwise.
    pub id: Option<&'a str>,
    /// The cgroup to empty: one agent's, or the parent of all.
    pub scope: &'a dyn Cgroup,
    /// The agents inside it whose processes and output go into the evidence.
    pub members: &'a [Member<'a>],
    /// `stop_file`, `cli`, `signal`, `monitor`, `orderly`, ...
    pub trigger: &'a str,
    pub reason: &'a str,
    /// A hard halt (SAFE MODE follows) rather than the end of an orderly stop.
    pub hard: bool,
    /// When the trigger was seen: every phase is timed from here.
    pub seen_at: Instant,
    /// How long to wait for `populated 0` after each kill.
    pub empty_deadline: Duration,
}

/// Runs the ladder. Blocks until the scope is empty or every attempt failed.
/// Returns the report and the evidence (captured before the kill, from the
/// frozen tree; when the freeze failed, the kill comes first, since a tree
/// that still runs must not be given the time a capture takes).
pub fn run(req: &Request<'_>) -> (Report, Evidence) {
    let Request {
        id: given_id,
        scope,
        members,
        trigger,
        reason,
        hard,
        seen_at: t0,
        empty_deadline,
    } = *req;
    let mut errors = Vec::new();
    let mut t = Timings::default();
    let started_at_ms = crate::clock::now_ms().saturating_sub(t0.elapsed().as_millis() as u64);

    // 1. Freeze: nothing in the tree runs, forks or flees from here on.
    if let Err(e) = scope.freeze() {
        errors.push(format!("freeze: {e}"));
    }
    t.freeze_requested_us = us(t0);
    let frozen = wait_until(scope, FREEZE_TIMEOUT, |c| c.is_frozen().unwrap_or(false));
    t.frozen_us = us(t0);
    let mut killed_early = false;
    if !frozen {
        errors.push(format!(
            "not frozen after {}; killed before the evidence",
            humantime::format_duration(FREEZE_TIMEOUT)
        ));
        if let Err(e) = scope.kill() {
            errors.push(format!("kill before evidence: {e}"));
        }
        killed_early = true;
        t.killed_us = us(t0);
    }

    // 2. Evidence from the frozen tree: every process of every agent, read
    // from /proc by one thread per core. Nothing is killed before all of it is
    // taken. (Killing each agent right after its own capture was measured
    // slower on two cores: the dying tasks and the capture fight for the
    // same CPUs and locks.)
    let cap_start = Instant::now();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let per_agent: Vec<Vec<i32>> = members
        .iter()
        .map(|m| {
            m.cgroup.procs().unwrap_or_else(|e| {
                errors.push(format!("{}: list processes: {e}", m.name));
                Vec::new()
            })
        })
        .collect();
    let all: Vec<i32> = per_agent.iter().flatten().copied().collect();
    let mut by_pid: std::collections::HashMap<i32, evidence::Process> =
        evidence::capture_processes(Path::new("/proc"), &all, threads)
            .into_iter()
            .map(|p| (p.pid, p))
            .collect();
    let processes = by_pid.len();
    let mut agents: Vec<AgentEvidence> = members
        .iter()
        .zip(&per_agent)
        .map(|(m, pids)| AgentEvidence {
            agent: m.name.clone(),
            cgroup: m.cgroup.path().to_string(),
            frozen,
            stats: m.cgroup.stats().unwrap_or_default(),
            processes: pids.iter().filter_map(|p| by_pid.remove(p)).collect(),
            log_tail: String::new(),
        })
        .collect();
    let id = given_id.map(str::to_string).unwrap_or_else(new_id);
    let mut ev = Evidence {
        version: 1,
        halt_id: id.clone(),
        trigger: trigger.to_string(),
        reason: reason.to_string(),
        captured_at_ms: crate::clock::now_ms(),
        host: evidence::hostname(),
        agents: Vec::new(),
        capture_us: cap_start.elapsed().as_micros() as u64,
    };
    t.evidence_us = us(t0);

    // 3. Kill, thaw, and wait for empty; retry loudly until it is. The thaw
    // follows the kill at once on every layout: on v1 the kill is pending
    // until the thaw; on v2 frozen tasks do die on SIGKILL, but waiting for
    // empty before thawing was measured slower (each killed task leaves the
    // frozen state on its own instead of all at once).
    let mut attempts = 0;
    let mut survivors = Vec::new();
    while attempts < KILL_ATTEMPTS {
        attempts += 1;
        if let Err(e) = scope.kill() {
            errors.push(format!("kill (attempt {attempts}): {e}"));
        }
        if attempts == 1 && !killed_early {
            t.killed_us = us(t0);
        }
        if let Err(e) = scope.thaw() {
            errors.push(format!("thaw: {e}"));
        }
        if wait_until(scope, empty_deadline, |c| !c.populated().unwrap_or(true)) {
            survivors.clear();
            break;
        }
        survivors = scope.procs().unwrap_or_default();
        tracing::error!(
            "halt {id}: cgroup {} not empty after {} (attempt {attempts}); survivors: {survivors:?}",
            scope.path(),
            humantime::format_duration(empty_deadline)
        );
        errors.push(format!(
            "not empty after attempt {attempts}: survivors {survivors:?}"
        ));
        // Freeze again so nothing can fork between reading pids and killing.
        let _ = scope.freeze();
        wait_until(scope, FREEZE_TIMEOUT, |c| c.is_frozen().unwrap_or(false));
    }
    t.empty_us = us(t0);
    // The output tails are warden's own memory, not the agents': added after
    // the kill, off the critical path.
    for (a, m) in agents.iter_mut().zip(members) {
        a.log_tail = m.log.as_ref().map(|l| l.tail_text()).unwrap_or_default();
    }
    ev.agents = agents;
    let report = Report {
        id,
        trigger: trigger.to_string(),
        reason: reason.to_string(),
        hard,
        started_at_ms,
        timings: t,
        frozen,
        processes,
        survivors,
        kill_attempts: attempts,
        agents: members.iter().map(|m| m.name.clone()).collect(),
        errors,
    };
    (report, ev)
}

/// Waits until `cond` holds, waking on the cgroup's events file where it has
/// one (v2 `cgroup.events` signals populated and frozen changes as a file
/// modification, Documentation/admin-guide/cgroup-v2.rst), else polling every
/// millisecond. Returns whether it held before `timeout`.
pub fn wait_until(cg: &dyn Cgroup, timeout: Duration, cond: impl Fn(&dyn Cgroup) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    if cond(cg) {
        return true;
    }
    let notify = cg.events_file().and_then(|path| {
        let ino = inotify::Inotify::init().ok()?;
        ino.watches().add(&path, inotify::WatchMask::MODIFY).ok()?;
        Some(ino)
    });
    let mut buf = [0u8; 1024];
    loop {
        if cond(cg) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        match &notify {
            Some(ino) => {
                use std::os::fd::AsFd;
                // The kernel rate-limits cgroup.events notifications (about
                // one per 10 ms per file), so look every millisecond too.
                let left = (deadline - now).min(Duration::from_millis(1));
                let mut fds = [nix::poll::PollFd::new(
                    ino.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                let ms = nix::poll::PollTimeout::try_from(left.as_millis().max(1) as u64 as i32)
                    .unwrap_or(nix::poll::PollTimeout::MAX);
                let _ = nix::poll::poll(&mut fds, ms);
                // Drain; the content does not matter, only that something changed.
                let mut ino_ref = ino;
                let _ = read_nonblocking(&mut ino_ref, &mut buf);
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn read_nonblocking(ino: &mut &inotify::Inotify, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let fd = ino.as_raw_fd();
    nix::unistd::read(fd, buf).map_err(std::io::Error::from)
}

/// Freeze, kill, thaw and wait for empty, without evidence: for what an
/// exited main process left behind, or a stale cgroup before a start.
/// Returns whether the cgroup emptied in time; an error only if the kill
/// could not be sent.
pub fn clear(cg: &dyn Cgroup, deadline: Duration) -> crate::cgroup::Result<bool> {
    let _ = cg.freeze();
    wait_until(cg, FREEZE_TIMEOUT, |c| c.is_frozen().unwrap_or(false));
    let killed = cg.kill();
    let _ = cg.thaw();
    killed?;
    Ok(wait_until(cg, deadline, |c| !c.populated().unwrap_or(true)))
}

/// SIGTERM to the process group of `pid` and to every member of the cgroup
/// (members that left the group or session are reached through the cgroup).
pub fn term(cg: &dyn Cgroup, pid: Option<i32>) -> usize {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    if let Some(p) = pid {
        let _ = killpg(Pid::from_raw(p), Signal::SIGTERM);
    }
    let procs = cg.procs().unwrap_or_default();
    for p in &procs {
        let _ = kill(Pid::from_raw(*p), Signal::SIGTERM);
    }
    procs.len()
}
