//! The snapshot of a frozen process tree, taken before anything is killed.
//!
//! Capture reads /proc only (no ptrace, nothing the frozen tasks must answer),
//! split across threads because it sits on the halt path between freeze and
//! kill. Sealing and storing happen after the kill.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

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

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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

fn capture_one(proc_root: &Path, pid: i32) -> Option<Process> {
    let dir = proc_root.join(pid.to_string());
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
    };
    let first_num =
        |k: &str| field(k).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
    let cmdline = std::fs::read(dir.join("cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let exe = std::fs::read_link(dir.join("exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let mut fds = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir.join("fd")) {
        for e in rd.flatten() {
            let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let target = std::fs::read_link(e.path())
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            fds.push(Fd { fd, target });
        }
    }
    fds.sort_by_key(|f| f.fd);
    // session and process group are fields 6 and 5 of stat, after the comm.
    let (pgrp, session) = std::fs::read_to_string(dir.join("stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(2)?.parse().ok(), f.get(3)?.parse().ok()))
        })
        .unwrap_or((None, None));
    Some(Process {
        pid,
        ppid: first_num("PPid:").unwrap_or(0) as i32,
        uid: first_num("Uid:").map(|u| u as u32),
        name: field("Name:").unwrap_or_default(),
        state: field("State:").unwrap_or_default(),
        cmdline,
        exe,
        threads: first_num("Threads:").map(|t| t as u32),
        vm_rss_kib: first_num("VmRSS:"),
        session,
        pgrp,
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
        std::fs::write(
            p.join("status"),
            "Name:\tagent\nState:\tS (sleeping)\nPPid:\t7\nUid:\t1000\t1000\t1000\t1000\nThreads:\t3\nVmRSS:\t 1234 kB\n",
        )
        .unwrap();
        std::fs::write(p.join("cmdline"), b"python3\0agent.py\0").unwrap();
        std::fs::write(p.join("stat"), "42 (a b) S 7 40 41 0").unwrap();
        let got = capture_processes(d.path(), &[42], 1);
        assert_eq!(got.len(), 1);
        let g = &got[0];
        assert_eq!(
            (g.ppid, g.uid, g.threads, g.vm_rss_kib),
            (7, Some(1000), Some(3), Some(1234))
        );
        assert_eq!(g.cmdline, vec!["python3", "agent.py"]);
        assert_eq!((g.pgrp, g.session), (Some(40), Some(41)));
        assert_eq!(g.name, "agent");
    }
}
