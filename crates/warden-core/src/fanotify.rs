//! Who changed a protected file: fanotify(7) with the writer's pid.
//!
//! Two fanotify groups, each read by a thread of its own, never by the
//! daemon's main loop:
//!
//! - **permission** (`FAN_CLASS_CONTENT`, `FAN_REPORT_TID`): `FAN_OPEN_PERM`
//!   on each protected file's inode. The opener is blocked until answered,
//!   so its cgroup, uid and open flags are read while it still exists. An
//!   open for writing (or truncating) by a process in an agent's cgroup is
//!   refused with `FAN_DENY` and reported; every other open is allowed at
//!   once, and a write-open by anyone else is remembered for a while so the
//!   write it leads to can be attributed even after the writer has exited.
//!   A watchdog thread answers `FAN_ALLOW` for any event still unanswered
//!   after [`ANSWER_DEADLINE`], so nothing (a slow /proc read, a stuck
//!   thread) can wedge an operator's editor or a root process; an agent's
//!   write let through that way is still seen by the other group.
//! - **notification** (`FAN_REPORT_DFID_NAME`): each protected file's
//!   directory, for writes, attribute changes, creates, deletes and renames
//!   of its children, reported as (directory, name). Matching by name makes
//!   a file replaced by rename (a new inode) watched as before, and the
//!   permission mark is re-armed on the new inode at once.
//!
//! Classic (non-FID) groups cannot report renames, deletes or attribute
//! changes, and FID groups cannot carry permission events: hence two.
//! Requires CAP_SYS_ADMIN; where `fanotify_init` fails the caller falls
//! back to the inotify watch ([`crate::protect`]).

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sys::fanotify as raw;

/// An unanswered permission event is allowed after this long.
pub const ANSWER_DEADLINE: Duration = Duration::from_millis(500);
/// How long a write-open by a non-agent process attributes later events.
const RECENT_FOR: Duration = Duration::from_secs(10);

const FAN_CLOEXEC: u32 = 0x1;
const FAN_CLASS_NOTIF: u32 = 0x0;
const FAN_CLASS_CONTENT: u32 = 0x4;
const FAN_REPORT_TID: u32 = 0x100;
/// The directories marked may be busy (`/usr/bin` during an upgrade): a
/// lost event is a halt, so the queue is not bounded (CAP_SYS_ADMIN).
const FAN_UNLIMITED_QUEUE: u32 = 0x10;
const FAN_REPORT_DFID_NAME: u32 = 0x400 | 0x800;
const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_ONLYDIR: u32 = 0x8;
const FAN_MODIFY: u64 = 0x2;
const FAN_ATTRIB: u64 = 0x4;
const FAN_CLOSE_WRITE: u64 = 0x8;
const FAN_MOVED_FROM: u64 = 0x40;
const FAN_MOVED_TO: u64 = 0x80;
const FAN_CREATE: u64 = 0x100;
const FAN_DELETE: u64 = 0x200;
const FAN_Q_OVERFLOW: u64 = 0x4000;
const FAN_OPEN_PERM: u64 = 0x10000;
const FAN_EVENT_ON_CHILD: u64 = 0x0800_0000;
const FAN_ALLOW: u32 = 0x1;
const FAN_DENY: u32 = 0x2;
const FAN_EVENT_INFO_TYPE_DFID_NAME: u8 = 2;
const METADATA_LEN: usize = 24;

/// Who did it, as far as /proc could tell.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Writer {
    pub pid: i32,
    pub uid: Option<u32>,
    pub exe: Option<PathBuf>,
    /// The agent whose cgroup the writer is in.
    pub agent: Option<String>,
    /// The writer was gone before it could be looked at, and no earlier
    /// write-open of it was remembered: nothing above but the pid is known.
    pub exited: bool,
}

/// One change (or refused attempt) on a protected path.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Change {
    pub path: PathBuf,
    /// "written" (closed after writing), "being written", "attributes
    /// changed", "replaced", "renamed away",
    /// "deleted", "open for writing refused", "events lost".
    pub what: &'static str,
    pub by: Writer,
    /// A permission event answered FAN_DENY: nothing was changed.
    pub refused: bool,
}

/// Where the agents' cgroups are: `R/agents/NAME` in every hierarchy.
#[derive(Debug, Clone)]
pub struct AgentCgroups {
    /// `R/agents/`, with the trailing slash.
    prefix: String,
}

impl AgentCgroups {
    /// `root` is the cgroup manager's root `R`, e.g. `/warden`.
    pub fn new(root: &str) -> AgentCgroups {
        AgentCgroups {
            prefix: format!("{}/agents/", root.trim_end_matches('/')),
        }
    }

    /// The agent whose cgroup a `/proc/PID/cgroup` text names, if any.
    pub fn agent_of(&self, proc_cgroup: &str) -> Option<String> {
        proc_cgroup.lines().find_map(|l| {
            let path = l.splitn(3, ':').nth(2)?;
            let rest = path.strip_prefix(&self.prefix)?;
            let name = rest.split('/').next()?;
            (!name.is_empty()).then(|| name.to_string())
        })
    }
}

struct Dir {
    key: Vec<u8>,
    path: PathBuf,
    names: Vec<OsString>,
}

struct Shared {
    queue: Mutex<Vec<Change>>,
    wake_tx: OwnedFd,
    agents: AgentCgroups,
    /// Write-opens by non-agent processes, by tgid.
    recent: Mutex<HashMap<i32, (Writer, Instant)>>,
    dirs: Vec<Dir>,
    perm: Option<OwnedFd>,
    /// The permission event being decided, and since when.
    inflight: Mutex<Option<(RawFd, Instant, bool)>>,
}

impl Shared {
    fn push(&self, c: Change) {
        tracing::debug!(?c, "protected path event");
        if let Ok(mut q) = self.queue.lock() {
            q.push(c);
        }
        let _ = nix::unistd::write(&self.wake_tx, b"x");
    }
}

/// The fanotify watch of the protected paths.
pub struct FanWatch {
    shared: Arc<Shared>,
    wake_rx: OwnedFd,
    /// The paths watched (canonical).
    pub paths: Vec<PathBuf>,
    /// Agents' write-opens are refused before they happen.
    pub permission: bool,
    /// Why permission events are not used, when they are not.
    pub permission_error: Option<String>,
}

impl FanWatch {
    /// Marks every existing path of `paths` (missing ones are skipped with a
    /// warning) and starts the reader threads. Fails when the kernel has no
    /// usable fanotify (the caller falls back to inotify).
    pub fn new(paths: &[PathBuf], agents: AgentCgroups) -> std::io::Result<FanWatch> {
        let notif_flags = FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME | FAN_CLOEXEC;
        let f_flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u32;
        let notif = raw::init(notif_flags | FAN_UNLIMITED_QUEUE, f_flags)
            .or_else(|_| raw::init(notif_flags, f_flags))?;
        let (perm, permission_error) = match raw::init(
            FAN_CLASS_CONTENT | FAN_REPORT_TID | FAN_CLOEXEC,
            (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_LARGEFILE) as u32,
        ) {
            Ok(fd) => (Some(fd), None),
            Err(e) => (
                None,
                Some(format!("fanotify permission events unavailable: {e}")),
            ),
        };
        let mut canon: Vec<PathBuf> = Vec::new();
        let mut by_dir: HashMap<PathBuf, Vec<OsString>> = HashMap::new();
        for p in paths {
            let Ok(c) = std::fs::canonicalize(p) else {
                tracing::warn!("protected path {} does not exist; not watched", p.display());
                continue;
            };
            if canon.contains(&c) {
                continue;
            }
            if let (Some(d), Some(n)) = (c.parent(), c.file_name()) {
                by_dir
                    .entry(d.to_path_buf())
                    .or_default()
                    .push(n.to_owned());
            }
            canon.push(c);
        }
        let mut dirs = Vec::new();
        for (dir, names) in by_dir {
            raw::mark(
                notif.as_fd(),
                FAN_MARK_ADD | FAN_MARK_ONLYDIR,
                FAN_EVENT_ON_CHILD
                    | FAN_MODIFY
                    | FAN_CLOSE_WRITE
                    | FAN_ATTRIB
                    | FAN_CREATE
                    | FAN_DELETE
                    | FAN_MOVED_FROM
                    | FAN_MOVED_TO,
                &dir,
            )?;
            dirs.push(Dir {
                key: raw::dir_key(&dir)?,
                path: dir,
                names,
            });
        }
        let (perm, permission_error) = match perm {
            Some(fd) => match canon
                .iter()
                .try_for_each(|p| raw::mark(fd.as_fd(), FAN_MARK_ADD, FAN_OPEN_PERM, p))
            {
                Ok(()) => (Some(fd), None),
                Err(e) => (
                    None,
                    Some(format!("cannot mark for permission events: {e}")),
                ),
            },
            None => (None, permission_error),
        };
        let (wake_rx, wake_tx) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(std::io::Error::from)?;
        let permission = perm.is_some();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Vec::new()),
            wake_tx,
            agents,
            recent: Mutex::new(HashMap::new()),
            dirs,
            perm,
            inflight: Mutex::new(None),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("protect-notify".into())
            .spawn(move || notify_loop(&s, notif))?;
        if permission {
            let s = shared.clone();
            std::thread::Builder::new()
                .name("protect-perm".into())
                .spawn(move || perm_loop(&s))?;
            let s = shared.clone();
            std::thread::Builder::new()
                .name("protect-deadline".into())
                .spawn(move || deadline_loop(&s))?;
        }
        Ok(FanWatch {
            shared,
            wake_rx,
            paths: canon,
            permission,
            permission_error,
        })
    }

    /// Readable when changes are waiting.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake_rx.as_fd()
    }

    /// Takes the changes seen so far.
    pub fn read(&mut self) -> Vec<Change> {
        let mut buf = [0u8; 256];
        while matches!(nix::unistd::read(self.wake_rx.as_raw_fd(), &mut buf), Ok(n) if n > 0) {}
        self.shared
            .queue
            .lock()
            .map(|mut q| std::mem::take(&mut *q))
            .unwrap_or_default()
    }
}

fn describe(mask: u64) -> &'static str {
    if mask & FAN_CLOSE_WRITE != 0 {
        "written"
    } else if mask & FAN_MODIFY != 0 {
        // Still open: an operator's change is audited at its close.
        "being written"
    } else if mask & FAN_MOVED_FROM != 0 {
        "renamed away"
    } else if mask & (FAN_MOVED_TO | FAN_CREATE) != 0 {
        "replaced"
    } else if mask & FAN_DELETE != 0 {
        "deleted"
    } else if mask & FAN_ATTRIB != 0 {
        "attributes changed"
    } else {
        "changed"
    }
}

/// One event of a read buffer: (mask, fd, pid, the bytes after the metadata).
fn events(buf: &[u8]) -> Vec<(u64, i32, i32, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while buf.len() - off >= METADATA_LEN {
        let b = &buf[off..];
        let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
        let meta_len = u16::from_ne_bytes(b[6..8].try_into().unwrap()) as usize;
        if len < METADATA_LEN || len > b.len() || meta_len > len {
            break;
        }
        let mask = u64::from_ne_bytes(b[8..16].try_into().unwrap());
        let fd = i32::from_ne_bytes(b[16..20].try_into().unwrap());
        let pid = i32::from_ne_bytes(b[20..24].try_into().unwrap());
        out.push((mask, fd, pid, &b[meta_len..len]));
        off += len;
    }
    out
}

/// The (directory key, name) of a `FAN_EVENT_INFO_TYPE_DFID_NAME` record.
fn dfid_name(info: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut off = 0;
    while info.len() - off >= 4 {
        let r = &info[off..];
        let ty = r[0];
        let len = u16::from_ne_bytes(r[2..4].try_into().ok()?) as usize;
        if len < 4 || len > r.len() {
            return None;
        }
        if ty == FAN_EVENT_INFO_TYPE_DFID_NAME && len >= 4 + 8 + 8 {
            let body = &r[4..len];
            // fsid (8), handle_bytes (4), handle_type (4), f_handle, name\0
            let hb = u32::from_ne_bytes(body[8..12].try_into().ok()?) as usize;
            if 16 + hb > body.len() {
                return None;
            }
            let mut key = Vec::with_capacity(12 + hb);
            key.extend_from_slice(&body[0..8]);
            key.extend_from_slice(&body[12..16]);
            key.extend_from_slice(&body[16..16 + hb]);
            let rest = &body[16 + hb..];
            let name = rest.split(|c| *c == 0).next().unwrap_or(&[]);
            // The same layout as raw::dir_key builds.
            return Some((key, name));
        }
        off += len;
    }
    None
}

/// What /proc says about `pid` now; None once it is gone.
fn look(agents: &AgentCgroups, pid: i32) -> Option<(Writer, i32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<i64>().ok())
    };
    let tgid = field("Tgid:").unwrap_or(pid as i64) as i32;
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    Some((
        Writer {
            pid: tgid,
            uid: field("Uid:").map(|u| u as u32),
            exe: std::fs::read_link(format!("/proc/{pid}/exe")).ok(),
            agent: agents.agent_of(&cg),
            exited: false,
        },
        tgid,
    ))
}

fn attribute(s: &Shared, pid: i32) -> Writer {
    if let Some((w, _)) = look(&s.agents, pid) {
        return w;
    }
    if let Some((w, _)) = s.recent.lock().ok().and_then(|r| r.get(&pid).cloned()) {
        return w;
    }
    Writer {
        pid,
        exited: true,
        ..Default::default()
    }
}

fn notify_loop(s: &Shared, fd: OwnedFd) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("fanotify read failed: {e}; protected paths unwatched");
                s.push(Change {
                    path: PathBuf::from("(all protected paths)"),
                    what: "watch lost",
                    by: Writer::default(),
                    refused: false,
                });
                return;
            }
        };
        for (mask, _fd, pid, info) in events(&buf[..n]) {
            if mask & FAN_Q_OVERFLOW != 0 {
                s.push(Change {
                    path: PathBuf::from("(all protected paths)"),
                    what: "events lost",
                    by: Writer::default(),
                    refused: false,
                });
                continue;
            }
            let Some((key, name)) = dfid_name(info) else {
                continue;
            };
            let Some(dir) = s
                .dirs
                .iter()
                .find(|d| d.key == key && d.names.iter().any(|x| x.as_bytes() == name))
            else {
                continue;
            };
            let path = dir.path.join(std::ffi::OsStr::from_bytes(name));
            if mask & (FAN_MOVED_TO | FAN_CREATE) != 0 {
                // A new inode under the protected name: the permission mark
                // was on the old one (#18: re-arm on every replace).
                if let Some(p) = &s.perm {
                    if let Err(e) = raw::mark(p.as_fd(), FAN_MARK_ADD, FAN_OPEN_PERM, &path) {
                        tracing::warn!("cannot re-arm {}: {e}", path.display());
                    }
                }
            }
            s.push(Change {
                what: describe(mask),
                by: attribute(s, pid),
                path,
                refused: false,
            });
        }
    }
}

/// Is the blocked `tid` opening for writing? Some(false) for a read-only
/// open or an exec, None when its syscall cannot be read or is not one we
/// know (the caller refuses an agent then).
fn opens_for_write(tid: i32) -> Option<bool> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/syscall")).ok()?;
    let mut it = text.split_whitespace();
    let nr: i64 = it.next()?.parse().ok()?;
    let args: Vec<u64> = it
        .take(6)
        .filter_map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
        .collect();
    let write = |flags: u64| {
        let f = flags as i32;
        Some((f & libc::O_ACCMODE) != libc::O_RDONLY || f & libc::O_TRUNC != 0)
    };
    #[cfg(target_arch = "x86_64")]
    let (open, openat, openat2, by_handle, exec, execat, creat) =
        (Some(2), 257, 437, 304, 59, 322, Some(85));
    #[cfg(target_arch = "aarch64")]
    let (open, openat, openat2, by_handle, exec, execat, creat) =
        (None::<i64>, 56, 437, 265, 221, 281, None::<i64>);
    match nr {
        n if Some(n) == open => write(*args.get(1)?),
        n if n == openat || n == by_handle => write(*args.get(2)?),
        n if Some(n) == creat => Some(true),
        n if n == exec || n == execat => Some(false),
        n if n == openat2 => {
            // struct open_how { u64 flags; ... } in the opener's memory.
            use std::os::unix::fs::FileExt;
            let mem = std::fs::File::open(format!("/proc/{tid}/mem")).ok()?;
            let mut b = [0u8; 8];
            mem.read_exact_at(&mut b, *args.get(2)?).ok()?;
            write(u64::from_ne_bytes(b))
        }
        _ => None,
    }
}

fn respond(s: &Shared, fd: RawFd, response: u32) {
    let Some(perm) = &s.perm else { return };
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&fd.to_ne_bytes());
    b[4..8].copy_from_slice(&response.to_ne_bytes());
    // ENOENT: already answered (by the deadline thread).
    let _ = nix::unistd::write(perm, &b);
}

fn perm_loop(s: &Shared) {
    let Some(perm) = &s.perm else { return };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match nix::unistd::read(perm.as_raw_fd(), &mut buf) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                // Closing nothing here: the kernel answers pending events
                // only when the group is closed, which the process exit does.
                tracing::error!("fanotify permission read failed: {e}");
                return;
            }
        };
        for (mask, fd, tid, _) in events(&buf[..n]) {
            if fd < 0 {
                continue;
            }
            if let Ok(mut g) = s.inflight.lock() {
                *g = Some((fd, Instant::now(), false));
            }
            let (answer, change) = decide(s, mask, fd, tid);
            if let Ok(mut g) = s.inflight.lock() {
                if !matches!(*g, Some((_, _, true))) {
                    respond(s, fd, answer);
                }
                *g = None;
            }
            let _ = nix::unistd::close(fd);
            if let Some(c) = change {
                s.push(c);
            }
        }
    }
}

fn decide(s: &Shared, mask: u64, fd: RawFd, tid: i32) -> (u32, Option<Change>) {
    if mask & FAN_OPEN_PERM == 0 {
        return (FAN_ALLOW, None);
    }
    let Some((w, tgid)) = look(&s.agents, tid) else {
        // Killed while waiting: nothing to protect from.
        return (FAN_ALLOW, None);
    };
    if w.agent.is_none() {
        // Remembered whatever the open's mode: it only ever attributes a
        // later change to a process outside every agent, which it is. The
        // opener's syscall is not read (on kernels that open an exec'd
        // file under cred_guard_mutex, /proc/TID/syscall would wait on it).
        if let Ok(mut r) = s.recent.lock() {
            let now = Instant::now();
            r.retain(|_, (_, t)| now.duration_since(*t) < RECENT_FOR);
            r.insert(tgid, (w, now));
        }
        return (FAN_ALLOW, None);
    }
    if opens_for_write(tid) == Some(false) {
        return (FAN_ALLOW, None);
    }
    let path = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
    (
        FAN_DENY,
        Some(Change {
            path,
            what: "open for writing refused",
            by: w,
            refused: true,
        }),
    )
}

fn deadline_loop(s: &Shared) {
    loop {
        std::thread::sleep(ANSWER_DEADLINE / 4);
        if let Ok(mut g) = s.inflight.lock() {
            if let Some((fd, since, answered)) = g.as_mut() {
                if !*answered && since.elapsed() >= ANSWER_DEADLINE {
                    tracing::warn!("permission event not decided in time: allowed");
                    respond(s, *fd, FAN_ALLOW);
                    *answered = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_of_reads_every_layout() {
        let a = AgentCgroups::new("/warden");
        assert_eq!(a.agent_of("0::/warden/agents/web\n"), Some("web".into()));
        assert_eq!(
            a.agent_of("4:memory:/warden/agents/db/x\n0::/\n"),
            Some("db".into())
        );
        assert_eq!(a.agent_of("0::/warden/supervisor\n"), None);
        assert_eq!(a.agent_of("0::/wardenx/agents/a\n"), None);
        assert_eq!(a.agent_of("0::/user.slice\n"), None);
    }

    fn wait(w: &mut FanWatch, what: &str) -> Vec<Change> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = w.read();
            if v.iter().any(|c| c.what == what) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: nothing seen");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Needs CAP_SYS_ADMIN (CI runs as root); a host without fanotify fails.
    #[test]
    fn names_the_writer_and_follows_a_replaced_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("warden.toml");
        std::fs::write(&f, "a = 1\n").unwrap();
        let mut w = FanWatch::new(std::slice::from_ref(&f), AgentCgroups::new("/nowhere")).unwrap();
        assert!(w.permission, "{:?}", w.permission_error);
        std::fs::write(d.path().join("other"), "x").unwrap();
        std::fs::write(&f, "a = 2\n").unwrap();
        let v = wait(&mut w, "written");
        let c = v.iter().find(|c| c.what == "written").unwrap();
        assert_eq!(c.by.pid, std::process::id() as i32);
        assert_eq!(c.by.uid, Some(nix::unistd::getuid().as_raw()));
        assert_eq!(c.by.agent, None);
        assert!(c.path.ends_with("warden.toml"));
        assert!(v.iter().all(|c| !c.path.ends_with("other")));
        // Replaced by rename (a new inode), then written: still seen.
        let t = d.path().join("warden.toml.new");
        std::fs::write(&t, "a = 3\n").unwrap();
        std::fs::rename(&t, &f).unwrap();
        wait(&mut w, "replaced");
        std::fs::write(&f, "a = 4\n").unwrap();
        wait(&mut w, "written");
        std::fs::remove_file(&f).unwrap();
        wait(&mut w, "deleted");
    }

    #[test]
    fn describes() {
        assert_eq!(describe(FAN_MODIFY), "being written");
        assert_eq!(describe(FAN_MODIFY | FAN_CLOSE_WRITE), "written");
        assert_eq!(describe(FAN_MOVED_TO), "replaced");
        assert_eq!(describe(FAN_DELETE), "deleted");
        assert_eq!(describe(FAN_ATTRIB), "attributes changed");
    }
}
