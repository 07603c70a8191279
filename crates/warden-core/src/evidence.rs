//! The snapshot of a frozen process tree, taken before anything is killed.
//!
//! Capture reads /proc only (no ptrace, nothing the frozen tasks must answer),
//! split across threads because it sits on the halt path between freeze and
//! kill. Sealing and storing happen after the kill.
//!
//! Capture is bounded in time and in size, because the tree being captured is
//! the adversary's: within `evidence_budget` it reads, in order of value,
//! pid, ppid, uid, state and cmdline of every process, then every exe, then
//! fds and sockets. What the budget leaves out is counted instead of listed
//! and named in [`Omitted`], with `complete: false`. Every field is capped
//! ([`CMDLINE_MAX`], [`FD_TARGET_MAX`]) and so is the whole record
//! ([`EVIDENCE_MAX`]), so that no tree can make evidence too large to store.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::stat::Mode;

use serde::{Deserialize, Serialize};

use crate::cgroup::Stats;

/// One open descriptor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fd {
    pub fd: i32,
    /// readlink of /proc/PID/fd/N: a path, `pipe:[..]`, `socket:[..]`, ...
    pub target: String,
}

/// One process of the tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    pub uid: Option<u32>,
    pub name: String,
    /// Task state from /proc/PID/status (a frozen task shows sleeping or
    /// stopped; the cgroup says frozen).
    pub state: String,
    pub cmdline: Vec<String>,
    pub exe: Option<String>,
    pub threads: Option<u32>,
    pub vm_rss_kib: Option<u64>,
    pub session: Option<i32>,
    pub pgrp: Option<i32>,
    /// Start time in clock ticks after boot: with the pid, names the process
    /// uniquely (pids are reused).
    pub start_time_ticks: Option<u64>,
    pub fds: Vec<Fd>,
    /// Open descriptors, counted even when they are not listed (the size of
    /// /proc/PID/fd, Linux 6.2 and later; the listed count before that).
    #[serde(default)]
    pub fd_count: Option<u64>,
    /// The cmdline was cut at [`CMDLINE_MAX`] bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cmdline_truncated: bool,
    /// Sockets among the fds, described from /proc/PID/net (protocol, local,
    /// remote, state), keyed by inode.
    pub sockets: Vec<Socket>,
}

/// Bytes of a process's cmdline kept (all arguments together).
pub const CMDLINE_MAX: usize = 4096;
/// Bytes of an fd's link target, and of an exe path, kept.
pub const FD_TARGET_MAX: usize = 256;
/// Bytes of an exe path kept.
pub const EXE_MAX: usize = 4096;
/// Largest evidence record, as JSON; past it lists are dropped for counts.
pub const EVIDENCE_MAX: usize = 8 << 20;

/// What a capture left out, and why: counts where lists would have been.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Omitted {
    /// Why anything was left out (`evidence_budget 50ms spent`, `size`...).
    pub reasons: Vec<String>,
    /// Processes of which only the pid is known (budget spent before their
    /// stat and cmdline were read).
    pub details: usize,
    /// Processes whose exe was not read.
    pub exe: usize,
    /// Processes whose fds are counted but not listed.
    pub fds: usize,
    /// Socket fds not resolved to their protocol and addresses.
    pub sockets: usize,
    /// Processes whose cmdline was cut at [`CMDLINE_MAX`].
    pub cmdlines_truncated: usize,
    /// Fd targets and exe paths cut at their cap.
    pub paths_truncated: usize,
    /// Processes dropped whole to fit [`EVIDENCE_MAX`] (their pids are kept
    /// in `dropped_pids`).
    pub processes_dropped: usize,
    pub dropped_pids: Vec<i32>,
}

impl Omitted {
    /// Nothing left out, nothing cut.
    pub fn is_empty(&self) -> bool {
        *self == Omitted::default()
    }

    fn merge(&mut self, o: Omitted) {
        for r in o.reasons {
            if !self.reasons.contains(&r) {
                self.reasons.push(r);
            }
        }
        self.details += o.details;
        self.exe += o.exe;
        self.fds += o.fds;
        self.sockets += o.sockets;
        self.cmdlines_truncated += o.cmdlines_truncated;
        self.paths_truncated += o.paths_truncated;
        self.processes_dropped += o.processes_dropped;
        self.dropped_pids.extend(o.dropped_pids);
    }
}

/// Processes captured within a budget, and what was left out.
#[derive(Debug, Default)]
pub struct Capture {
    pub processes: Vec<Process>,
    pub omitted: Omitted,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Socket {
    pub inode: u64,
    pub proto: String,
    pub local: String,
    pub remote: String,
    pub state: String,
}

/// Evidence for one agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentEvidence {
    pub agent: String,
    pub cgroup: String,
    pub frozen: bool,
    pub stats: Stats,
    pub processes: Vec<Process>,
    /// Last lines of the agent's output.
    pub log_tail: String,
}

/// The whole snapshot of one halt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Evidence {
    pub version: u32,
    pub halt_id: String,
    pub trigger: String,
    pub reason: String,
    /// Unix time in milliseconds at capture.
    pub captured_at_ms: u64,
    pub host: String,
    pub agents: Vec<AgentEvidence>,
    /// Capture time in microseconds.
    pub capture_us: u64,
    /// False when the budget or a cap left something out (see `omitted`).
    #[serde(default = "yes")]
    pub complete: bool,
    /// What was left out or cut, when anything was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<Omitted>,
}

fn yes() -> bool {
    true
}

impl Evidence {
    /// Records what a capture left out; any omission makes it incomplete.
    pub fn note_omitted(&mut self, o: Omitted) {
        if o.is_empty() {
            return;
        }
        self.complete = false;
        self.omitted.get_or_insert_with(Omitted::default).merge(o);
    }

    /// Size as JSON, counted without building it.
    pub fn json_len(&self) -> usize {
        let mut w = CountingWriter(0);
        let _ = serde_json::to_writer(&mut w, self);
        w.0
    }

    /// Cuts the record to at most `max` bytes of JSON: first fd lists and
    /// sockets become counts, then cmdlines shrink to 256 bytes, then the
    /// largest processes are dropped whole (their pids kept). Every step is
    /// recorded in `omitted`.
    pub fn fit(&mut self, max: usize) {
        if self.json_len() <= max {
            return;
        }
        // Room for the `omitted` summary that is added at the end.
        let target = max.saturating_sub(1024);
        let reason = format!("evidence larger than {} bytes", max);
        let mut o = Omitted {
            reasons: vec![reason],
            ..Default::default()
        };
        for p in self.agents.iter_mut().flat_map(|a| a.processes.iter_mut()) {
            if !p.fds.is_empty() || !p.sockets.is_empty() {
                p.fd_count.get_or_insert(p.fds.len() as u64);
                p.fds = Vec::new();
                o.sockets += p.sockets.len();
                p.sockets = Vec::new();
                o.fds += 1;
            }
        }
        if self.json_len() > target {
            for p in self.agents.iter_mut().flat_map(|a| a.processes.iter_mut()) {
                let before = p.cmdline_truncated;
                truncate_args(&mut p.cmdline, 256, &mut p.cmdline_truncated);
                if p.cmdline_truncated && !before {
                    o.cmdlines_truncated += 1;
                }
            }
        }
        // Drop the largest processes until the excess is gone (their pids
        // stay as the trace); sizes are measured once per round, not per drop.
        loop {
            let len = self.json_len() + 12 * o.dropped_pids.len();
            if len <= target {
                break;
            }
            let mut sizes: Vec<(usize, usize, usize)> = self
                .agents
                .iter()
                .enumerate()
                .flat_map(|(ai, a)| {
                    a.processes.iter().enumerate().map(move |(pi, p)| {
                        let mut w = CountingWriter(0);
                        let _ = serde_json::to_writer(&mut w, p);
                        (w.0 + 1, ai, pi)
                    })
                })
                .collect();
            if sizes.is_empty() {
                // Nothing left to drop: the tails are the rest.
                for a in &mut self.agents {
                    a.log_tail = String::new();
                }
                break;
            }
            sizes.sort_unstable_by(|a, b| b.cmp(a));
            let mut excess = len - target;
            let mut drop: Vec<(usize, usize)> = Vec::new();
            for (size, ai, pi) in sizes {
                drop.push((ai, pi));
                // Each dropped pid costs a few bytes in `dropped_pids`.
                if size.saturating_sub(12) >= excess {
                    break;
                }
                excess -= size.saturating_sub(12);
            }
            // Highest index first, so the others stay valid.
            drop.sort_unstable_by(|a, b| b.cmp(a));
            for (ai, pi) in drop {
                let p = self.agents[ai].processes.remove(pi);
                o.processes_dropped += 1;
                o.dropped_pids.push(p.pid);
            }
        }
        self.note_omitted(o);
    }
}

struct CountingWriter(usize);

impl std::io::Write for CountingWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Cuts `args` so that their bytes add up to at most `max`.
fn truncate_args(args: &mut Vec<String>, max: usize, truncated: &mut bool) {
    let mut left = max;
    let mut keep = 0;
    for a in args.iter_mut() {
        if a.len() > left {
            cut(a, left);
            *truncated = true;
            keep += usize::from(!a.is_empty());
            break;
        }
        left -= a.len();
        keep += 1;
    }
    if keep < args.len() {
        *truncated = true;
        args.truncate(keep);
    }
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
fn cut(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s.truncate(at);
    true
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Captures every pid in `pids` under `proc_root` (normally /proc), using up to
/// `threads` threads, with no time budget (the fields are still capped).
/// Processes that vanish are skipped.
pub fn capture_processes(proc_root: &Path, pids: &[i32], threads: usize) -> Vec<Process> {
    capture(proc_root, pids, threads, None).processes
}

/// Captures every pid in `pids` under `proc_root` within `budget`: first the
/// essentials of every process, then every exe, then fds and sockets, each
/// pass for all processes before the next begins. What the budget leaves out
/// is counted in [`Capture::omitted`]. Processes that vanish are skipped.
pub fn capture(
    proc_root: &Path,
    pids: &[i32],
    threads: usize,
    budget: Option<Duration>,
) -> Capture {
    let deadline = budget.and_then(|b| Instant::now().checked_add(b));
    let threads = threads.clamp(1, 8);
    let mut o = Omitted::default();

    // 1. pid, ppid, uid, state, cmdline.
    let mut procs: Vec<Process> = Vec::with_capacity(pids.len());
    for (pid, got) in pids.iter().zip(par_map(pids, threads, deadline, |&p| {
        capture_basic(proc_root, p)
    })) {
        match got {
            Some(Some(p)) => procs.push(p),
            Some(None) => {} // vanished
            None => {
                o.details += 1;
                procs.push(Process::unread(*pid));
            }
        }
    }
    o.cmdlines_truncated = procs.iter().filter(|p| p.cmdline_truncated).count();
    let read: Vec<usize> = (0..procs.len())
        .filter(|&i| procs[i].state != UNREAD)
        .collect();
    // Lists stop early enough to leave time for the fd counts that replace
    // them (one stat per process, about 20 µs each on a loaded host).
    let reserve = budget.map_or(Duration::ZERO, |b| {
        (Duration::from_micros(20) * read.len() as u32 / threads as u32).min(b / 2)
    });
    let deadline_lists = deadline.map(|d| d.checked_sub(reserve).unwrap_or(d));

    // 2. exe.
    let exes = par_map(&read, threads, deadline_lists, |&i| {
        nix::fcntl::readlinkat(None, &proc_root.join(format!("{}/exe", procs[i].pid)))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    });
    for (&i, exe) in read.iter().zip(exes) {
        match exe {
            Some(mut e) => {
                if let Some(e) = e.as_mut() {
                    o.paths_truncated += usize::from(cut(e, EXE_MAX));
                }
                procs[i].exe = e;
            }
            None => o.exe += 1,
        }
    }

    // 3. fds; past the budget, their count only (one stat per process).
    let fds = par_map(&read, threads, deadline_lists, |&i| {
        capture_fds(proc_root, procs[i].pid, deadline_lists)
    });
    let mut unlisted = Vec::new();
    for (&i, got) in read.iter().zip(fds) {
        match got {
            Some(Some((fds, cut))) => {
                procs[i].fd_count = Some(fds.len() as u64);
                procs[i].fds = fds;
                o.paths_truncated += cut;
            }
            _ => unlisted.push(i),
        }
    }
    o.fds = unlisted.len();
    let counts = par_map(&unlisted, threads, None, |&i| {
        std::fs::metadata(proc_root.join(format!("{}/fd", procs[i].pid)))
            .ok()
            .map(|m| m.len())
    });
    for (&i, n) in unlisted.iter().zip(counts) {
        procs[i].fd_count = n.flatten();
    }

    // 4. sockets.
    o.sockets = attach_sockets(proc_root, &mut procs, deadline_lists);

    if deadline_lists.is_some_and(|d| Instant::now() >= d)
        && (o.details + o.exe + o.fds + o.sockets) > 0
    {
        let b = budget.unwrap_or_default();
        o.reasons.push(format!(
            "evidence_budget {} spent",
            humantime::format_duration(b)
        ));
    }
    if o.cmdlines_truncated + o.paths_truncated > 0 {
        o.reasons.push(format!(
            "fields capped (cmdline {CMDLINE_MAX} bytes, fd target {FD_TARGET_MAX} bytes)"
        ));
    }
    Capture {
        processes: procs,
        omitted: o,
    }
}

/// `f` over `items` on up to `threads` threads, in order; an item reached
/// after `deadline` is not processed (`None`).
fn par_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    deadline: Option<Instant>,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<Option<R>> {
    let run = |c: &[T]| -> Vec<Option<R>> {
        c.iter()
            .map(|x| {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    None
                } else {
                    Some(f(x))
                }
            })
            .collect()
    };
    if items.len() < 64 || threads == 1 {
        return run(items);
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items.chunks(chunk).map(|c| s.spawn(|| run(c))).collect();
        handles
            .into_iter()
            .zip(items.chunks(chunk))
            .flat_map(|(h, c)| {
                h.join()
                    .unwrap_or_else(|_| c.iter().map(|_| None).collect())
            })
            .collect()
    })
}

/// State of a process whose details the budget left out.
const UNREAD: &str = "not captured (evidence budget)";

impl Process {
    fn unread(pid: i32) -> Process {
        Process {
            pid,
            ppid: 0,
            uid: None,
            name: String::new(),
            state: UNREAD.into(),
            cmdline: Vec::new(),
            exe: None,
            threads: None,
            vm_rss_kib: None,
            session: None,
            pgrp: None,
            start_time_ticks: None,
            fds: Vec::new(),
            fd_count: None,
            cmdline_truncated: false,
            sockets: Vec::new(),
        }
    }
}

/// Reads a small /proc file relative to an open directory, at most `max`
/// bytes (one more tells the caller it was longer).
fn read_at(dir: RawFd, name: &str, buf: &mut Vec<u8>, max: usize) -> Option<()> {
    use nix::fcntl::{openat, OFlag};
    buf.clear();
    let fd = openat(
        Some(dir),
        name,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut chunk = [0u8; 4096];
    let ok = loop {
        match nix::unistd::read(fd, &mut chunk) {
            Ok(0) => break true,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > max {
                    buf.truncate(max + 1);
                    break true;
                }
            }
            Err(nix::Error::EINTR) => continue,
            Err(_) => break false,
        }
    };
    let _ = nix::unistd::close(fd);
    ok.then_some(())
}

fn state_name(c: &str) -> String {
    let name = match c {
        "R" => "running",
        "S" => "sleeping",
        "D" => "disk sleep",
        "T" => "stopped",
        "t" => "tracing stop",
        "Z" => "zombie",
        "X" => "dead",
        "I" => "idle",
        _ => "unknown",
    };
    format!("{c} ({name})")
}

/// The essentials of one process, with as few system calls as /proc allows:
/// the directory is opened once and everything else is read relative to it
/// (no path walks); `stat` replaces `status` (which the kernel builds field
/// by field). The cmdline is read up to [`CMDLINE_MAX`] bytes only.
fn capture_basic(proc_root: &Path, pid: i32) -> Option<Process> {
    let dir = std::fs::File::open(proc_root.join(pid.to_string())).ok()?;
    let dfd = dir.as_raw_fd();
    let uid = nix::sys::stat::fstat(dfd).ok().map(|st| st.st_uid);
    let mut buf = Vec::with_capacity(512);
    read_at(dfd, "stat", &mut buf, 4096)?;
    let stat = String::from_utf8_lossy(&buf).into_owned();
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let f: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
    let page_kib = 4;
    read_at(dfd, "cmdline", &mut buf, CMDLINE_MAX);
    let truncated = buf.len() > CMDLINE_MAX;
    buf.truncate(CMDLINE_MAX);
    let cmdline = buf
        .split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    Some(Process {
        pid,
        ppid: num(1).unwrap_or(0) as i32,
        uid,
        name,
        state: state_name(f.first().copied().unwrap_or("?")),
        cmdline,
        exe: None,
        threads: num(17).map(|t| t as u32),
        vm_rss_kib: num(21).map(|p| p.max(0) as u64 * page_kib),
        session: num(3).map(|v| v as i32),
        pgrp: num(2).map(|v| v as i32),
        start_time_ticks: num(19).map(|v| v as u64),
        fds: Vec::new(),
        fd_count: None,
        cmdline_truncated: truncated,
        sockets: Vec::new(),
    })
}

/// Lists one process's fds with their targets (each cut at
/// [`FD_TARGET_MAX`]) and how many were cut; `None` if the process is gone
/// or the deadline passed before the list was complete.
fn capture_fds(proc_root: &Path, pid: i32, deadline: Option<Instant>) -> Option<(Vec<Fd>, usize)> {
    let mut fd_dir = nix::dir::Dir::open(
        &proc_root.join(format!("{pid}/fd")),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let fd_dfd = fd_dir.as_raw_fd();
    let mut fds = Vec::new();
    let mut cut_count = 0;
    for (i, e) in fd_dir.iter().flatten().enumerate() {
        if i % 64 == 63 && deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let name = e.file_name();
        let Some(fd) = name.to_str().ok().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let mut target = nix::fcntl::readlinkat(Some(fd_dfd), name)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        cut_count += usize::from(cut(&mut target, FD_TARGET_MAX));
        fds.push(Fd { fd, target });
    }
    fds.sort_by_key(|f| f.fd);
    Some((fds, cut_count))
}

/// Resolves `socket:[inode]` fds through each network namespace's tables;
/// returns how many the deadline left unresolved.
fn attach_sockets(proc_root: &Path, procs: &mut [Process], deadline: Option<Instant>) -> usize {
    let wanted: Vec<(usize, u64)> = procs
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            p.fds.iter().filter_map(move |f| {
                f.target
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                    .and_then(|s| s.parse().ok())
                    .map(|ino| (i, ino))
            })
        })
        .collect();
    if wanted.is_empty() {
        return 0;
    }
    // One table read per network namespace.
    let mut tables: HashMap<String, BTreeMap<u64, Socket>> = HashMap::new();
    for (n, &(i, ino)) in wanted.iter().enumerate() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return wanted.len() - n;
        }
        let pid = procs[i].pid;
        let ns = std::fs::read_link(proc_root.join(format!("{pid}/ns/net")))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let table = tables
            .entry(ns)
            .or_insert_with(|| socket_table(&proc_root.join(format!("{pid}/net"))));
        if let Some(s) = table.get(&ino) {
            procs[i].sockets.push(s.clone());
        }
    }
    0
}

fn socket_table(net: &Path) -> BTreeMap<u64, Socket> {
    let mut map = BTreeMap::new();
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(net.join(proto)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            if let Ok(ino) = f[9].parse::<u64>() {
                map.insert(
                    ino,
                    Socket {
                        inode: ino,
                        proto: proto.into(),
                        local: f[1].into(),
                        remote: f[2].into(),
                        state: tcp_state(f[3]).into(),
                    },
                );
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(net.join("unix")) {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 7 {
                continue;
            }
            if let Ok(ino) = f[6].parse::<u64>() {
                map.insert(
                    ino,
                    Socket {
                        inode: ino,
                        proto: "unix".into(),
                        local: f.get(7).copied().unwrap_or("").into(),
                        remote: String::new(),
                        state: f[5].into(),
                    },
                );
            }
        }
    }
    map
}

fn tcp_state(hex: &str) -> &'static str {
    match hex {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "03" => "SYN_RECV",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        "06" => "TIME_WAIT",
        "07" => "CLOSE",
        "08" => "CLOSE_WAIT",
        "09" => "LAST_ACK",
        "0A" => "LISTEN",
        "0B" => "CLOSING",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_self() {
        let me = std::process::id() as i32;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let procs = capture_processes(Path::new("/proc"), &[me, i32::MAX], 1);
        assert_eq!(procs.len(), 1, "a vanished pid is skipped");
        let p = &procs[0];
        assert_eq!(p.pid, me);
        assert_eq!(p.uid, Some(nix::unistd::getuid().as_raw()));
        assert!(!p.cmdline.is_empty());
        assert!(p.exe.is_some());
        assert!(p.fds.iter().any(|f| f.fd == 0));
        let port = format!("{:04X}", l.local_addr().unwrap().port());
        assert!(
            p.sockets
                .iter()
                .any(|s| s.state == "LISTEN" && s.local.ends_with(&port)),
            "{:?}",
            p.sockets
        );
    }

    fn fake_proc(root: &Path, pid: i32, cmdline: &[u8], fds: usize) {
        let p = root.join(pid.to_string());
        std::fs::create_dir_all(p.join("fd")).unwrap();
        std::fs::write(p.join("cmdline"), cmdline).unwrap();
        std::fs::write(
            p.join("stat"),
            format!("{pid} (x) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 9 1000 10 0"),
        )
        .unwrap();
        for i in 0..fds {
            std::os::unix::fs::symlink(format!("/{}", "t".repeat(1000)), p.join(format!("fd/{i}")))
                .unwrap();
        }
    }

    #[test]
    fn fields_are_capped() {
        let d = tempfile::tempdir().unwrap();
        let mut argv = vec![0x1bu8; 100_000];
        argv.extend_from_slice(b"\0tail\0");
        fake_proc(d.path(), 5, &argv, 3);
        let c = capture(d.path(), &[5], 1, None);
        let p = &c.processes[0];
        assert!(p.cmdline_truncated);
        assert_eq!(p.cmdline.concat().len(), CMDLINE_MAX);
        assert_eq!(p.fds.len(), 3);
        assert!(p.fds.iter().all(|f| f.target.len() == FD_TARGET_MAX));
        assert_eq!(p.fd_count, Some(3));
        assert_eq!(
            (c.omitted.cmdlines_truncated, c.omitted.paths_truncated),
            (1, 3)
        );
        assert!(!c.omitted.reasons.is_empty());
    }

    #[test]
    fn spent_budget_keeps_pids_and_counts() {
        let d = tempfile::tempdir().unwrap();
        for pid in 1..=100 {
            fake_proc(d.path(), pid, b"a\0", 2);
        }
        let pids: Vec<i32> = (1..=100).collect();
        let c = capture(d.path(), &pids, 2, Some(Duration::ZERO));
        assert_eq!(c.processes.len(), 100, "every pid is kept");
        assert_eq!(c.omitted.details, 100);
        assert!(c.processes.iter().all(|p| p.state == UNREAD));
        assert!(
            c.omitted.reasons[0].starts_with("evidence_budget"),
            "{:?}",
            c.omitted
        );
        let full = capture(d.path(), &pids, 2, Some(Duration::from_secs(60)));
        let o = &full.omitted;
        assert_eq!((o.details, o.exe, o.fds, o.sockets), (0, 0, 0, 0), "{o:?}");
        assert!(full.processes.iter().all(|p| p.fds.len() == 2));
    }

    #[test]
    fn fit_drops_lists_then_processes() {
        let d = tempfile::tempdir().unwrap();
        for pid in 1..=20 {
            fake_proc(d.path(), pid, &[b'a'; 4000], 50);
        }
        let pids: Vec<i32> = (1..=20).collect();
        let c = capture(d.path(), &pids, 1, None);
        let mut ev = Evidence {
            version: 2,
            halt_id: "h".into(),
            trigger: "t".into(),
            reason: "r".into(),
            captured_at_ms: 0,
            host: "x".into(),
            agents: vec![AgentEvidence {
                agent: "a".into(),
                cgroup: "/a".into(),
                frozen: true,
                stats: Stats::default(),
                processes: c.processes,
                log_tail: String::new(),
            }],
            capture_us: 0,
            complete: true,
            omitted: None,
        };
        let before = ev.json_len();
        assert!(before > 200_000, "{before}");
        ev.fit(100_000);
        assert!(ev.json_len() <= 100_000);
        assert!(!ev.complete);
        let o = ev.omitted.as_ref().unwrap();
        assert_eq!(o.fds, 20);
        assert_eq!(o.processes_dropped, 0);
        assert!(ev.agents[0]
            .processes
            .iter()
            .all(|p| p.fd_count == Some(50)));
        ev.fit(10_000);
        assert!(ev.json_len() <= 10_000);
        let o = ev.omitted.as_ref().unwrap();
        assert!(o.processes_dropped > 0 && o.dropped_pids.len() == o.processes_dropped);
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["complete"], false);
        let back: Evidence = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn fake_proc_tree() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("42");
        std::fs::create_dir_all(p.join("fd")).unwrap();
        std::fs::write(p.join("cmdline"), b"python3\0agent.py\0").unwrap();
        std::fs::write(
            p.join("stat"),
            "42 (a b) S 7 40 41 0 -1 4194560 1 0 0 0 5 6 0 0 20 0 3 0 777 1000 308 18446744073709551615",
        )
        .unwrap();
        let got = capture_processes(d.path(), &[42], 1);
        assert_eq!(got.len(), 1);
        let g = &got[0];
        assert_eq!(
            (g.ppid, g.uid, g.threads, g.vm_rss_kib, g.start_time_ticks),
            (
                7,
                Some(nix::unistd::getuid().as_raw()),
                Some(3),
                Some(308 * 4),
                Some(777)
            )
        );
        assert_eq!(g.state, "S (sleeping)");
        assert_eq!(g.cmdline, vec!["python3", "agent.py"]);
        assert_eq!((g.pgrp, g.session), (Some(40), Some(41)));
        assert_eq!(g.name, "a b");
    }
}
