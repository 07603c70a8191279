//! The snapshot of a frozen process tree, taken before anything is killed.
//!
//! Capture reads /proc only (no ptrace, nothing the frozen tasks must answer),
//! split across threads because it sits on the halt path between freeze and
//! kill. Sealing and storing happen after the kill.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

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
    /// Sockets among the fds, described from /proc/PID/net (protocol, local,
    /// remote, state), keyed by inode.
    pub sockets: Vec<Socket>,
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
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Captures every pid in `pids` under `proc_root` (normally /proc), using up to
/// `threads` threads. Processes that vanish are skipped.
pub fn capture_processes(proc_root: &Path, pids: &[i32], threads: usize) -> Vec<Process> {
    let threads = threads.clamp(1, 8);
    let mut out: Vec<Process> = if pids.len() < 64 || threads == 1 {
        pids.iter()
            .filter_map(|&p| capture_one(proc_root, p))
            .collect()
    } else {
        let chunk = pids.len().div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = pids
                .chunks(chunk)
                .map(|c| {
                    s.spawn(move || {
                        c.iter()
                            .filter_map(|&p| capture_one(proc_root, p))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    };
    attach_sockets(proc_root, &mut out);
    out
}

/// Reads a small /proc file relative to an open directory.
fn read_at(dir: RawFd, name: &str, buf: &mut Vec<u8>) -> Option<()> {
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
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
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

/// One process, with as few system calls as /proc allows: the directory is
/// opened once and everything else is read relative to it (no path walks);
/// `stat` replaces `status` (which the kernel builds field by field).
fn capture_one(proc_root: &Path, pid: i32) -> Option<Process> {
    let dir = std::fs::File::open(proc_root.join(pid.to_string())).ok()?;
    let dfd = dir.as_raw_fd();
    let uid = nix::sys::stat::fstat(dfd).ok().map(|st| st.st_uid);
    let mut buf = Vec::with_capacity(512);
    read_at(dfd, "stat", &mut buf)?;
    let stat = String::from_utf8_lossy(&buf).into_owned();
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let f: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
    let page_kib = 4;
    read_at(dfd, "cmdline", &mut buf);
    let cmdline = buf
        .split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let exe = nix::fcntl::readlinkat(Some(dfd), "exe")
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let mut fds = Vec::new();
    if let Ok(mut fd_dir) = nix::dir::Dir::openat(
        Some(dfd),
        "fd",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        let fd_dfd = fd_dir.as_raw_fd();
        for e in fd_dir.iter().flatten() {
            let name = e.file_name();
            let Some(fd) = name.to_str().ok().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let target = nix::fcntl::readlinkat(Some(fd_dfd), name)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            fds.push(Fd { fd, target });
        }
    }
    fds.sort_by_key(|f| f.fd);
    Some(Process {
        pid,
        ppid: num(1).unwrap_or(0) as i32,
        uid,
        name,
        state: state_name(f.first().copied().unwrap_or("?")),
        cmdline,
        exe,
        threads: num(17).map(|t| t as u32),
        vm_rss_kib: num(21).map(|p| p.max(0) as u64 * page_kib),
        session: num(3).map(|v| v as i32),
        pgrp: num(2).map(|v| v as i32),
        start_time_ticks: num(19).map(|v| v as u64),
        fds,
        sockets: Vec::new(),
    })
}

/// Resolves `socket:[inode]` fds through each network namespace's tables.
fn attach_sockets(proc_root: &Path, procs: &mut [Process]) {
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
        return;
    }
    // One table read per network namespace.
    let mut tables: HashMap<String, BTreeMap<u64, Socket>> = HashMap::new();
    for &(i, ino) in &wanted {
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
