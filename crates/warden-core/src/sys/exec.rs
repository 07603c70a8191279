//! fork and exec of an agent, with every step of its confinement done in the
//! child between the two.
//!
//! The daemon is multi-threaded (tokio), so after fork the child may only make
//! async-signal-safe calls: no allocation, no locks. Everything the child needs
//! is prepared in an [`ExecPlan`] before fork, and the child only issues raw
//! system calls on it. A failure is written as (step, errno) to a close-on-exec
//! pipe; end of file on that pipe means exec succeeded.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Everything the child needs, allocated before fork.
#[derive(Debug)]
pub struct ExecPlan {
    /// Program to execute (absolute path).
    pub path: CString,
    /// argv, NUL-terminated strings.
    pub argv: Vec<CString>,
    /// The complete environment, `KEY=VALUE`.
    pub envp: Vec<CString>,
    /// `cgroup.procs` of each hierarchy, to join by writing "0" before anything else.
    pub cgroup_procs: Vec<OwnedFd>,
    /// Descriptors that become the child's 0, 1 and 2.
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<libc::gid_t>,
    pub cwd: CString,
    pub umask: u32,
    /// (resource, soft, hard) for setrlimit.
    pub rlimits: Vec<(u32, u64, u64)>,
    /// Highest capability number (/proc/sys/kernel/cap_last_cap), for dropping
    /// the bounding set.
    pub cap_last: u32,
    /// Brokered mode: the Landlock ruleset and seccomp filter to apply last.
    pub confine: Option<crate::confine::Prepared>,
    /// The network namespace the agent runs in.
    pub netns: NetNs,
}

/// Which network namespace a child enters (while still privileged).
#[derive(Debug)]
pub enum NetNs {
    /// Stay in the daemon's: the host's network.
    Host,
    /// A new, empty one of its own, made by the child.
    New,
    /// One the daemon made: setns(2) on this descriptor.
    Join(OwnedFd),
}

/// The step of child setup that failed; its number is sent over the error pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    JoinCgroup = 1,
    Setsid = 2,
    Pdeathsig = 3,
    ParentGone = 4,
    Signals = 5,
    Stdio = 6,
    Rlimit = 7,
    DropBounding = 8,
    ClearAmbient = 9,
    Setgroups = 10,
    Setgid = 11,
    Setuid = 12,
    ClearCaps = 13,
    NoNewPrivs = 14,
    Chdir = 15,
    CloseFds = 16,
    Exec = 17,
    Landlock = 18,
    Seccomp = 19,
    Network = 20,
    Noexec = 21,
}

impl Step {
    fn from_u32(v: u32) -> Option<Step> {
        use Step::*;
        [
            JoinCgroup,
            Setsid,
            Pdeathsig,
            ParentGone,
            Signals,
            Stdio,
            Rlimit,
            DropBounding,
            ClearAmbient,
            Setgroups,
            Setgid,
            Setuid,
            ClearCaps,
            NoNewPrivs,
            Chdir,
            CloseFds,
            Exec,
            Landlock,
            Seccomp,
            Network,
            Noexec,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Step::JoinCgroup => "join the agent cgroup",
            Step::Setsid => "start a new session",
            Step::Pdeathsig => "set the parent-death signal",
            Step::ParentGone => "the daemon exited during start",
            Step::Signals => "reset signal dispositions",
            Step::Stdio => "connect stdin/stdout/stderr",
            Step::Rlimit => "apply rlimits",
            Step::DropBounding => "drop the capability bounding set",
            Step::ClearAmbient => "clear ambient capabilities",
            Step::Setgroups => "set supplementary groups",
            Step::Setgid => "set the group id",
            Step::Setuid => "set the user id",
            Step::ClearCaps => "clear capabilities",
            Step::NoNewPrivs => "set no_new_privs",
            Step::Chdir => "change to the working directory",
            Step::CloseFds => "close inherited descriptors",
            Step::Exec => "execute the command",
            Step::Landlock => "apply the landlock ruleset",
            Step::Seccomp => "install the seccomp filter",
            Step::Network => "enter its network namespace",
            Step::Noexec => "mount its writable directories noexec",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("fork failed: {0}")]
    Fork(std::io::Error),
    #[error("could not create the start-up pipe: {0}")]
    Pipe(std::io::Error),
    #[error("child could not {}: {source}", step.describe())]
    Child { step: Step, source: std::io::Error },
}

/// Forks and execs `plan`; returns the child's pid once exec has succeeded.
pub fn spawn(plan: ExecPlan) -> Result<i32, ExecError> {
    // Pointer arrays for execve, built before fork (no allocation after it).
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = plan.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let parent = std::process::id() as libc::pid_t;
    let (err_r, err_w) = super::pipe_cloexec().map_err(ExecError::Pipe)?;

    // SAFETY: fork has no memory-safety preconditions of its own. In the child
    // we call only async-signal-safe system calls on memory prepared above
    // (plan, argv, envp), then execve or _exit; we never return into Rust code
    // that could take a lock or allocate.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(ExecError::Fork(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: we are the freshly forked child; see child_after_fork.
        unsafe { child_after_fork(&plan, &argv, &envp, parent, err_w.as_raw_fd()) }
    }
    drop(err_w);
    // Our copies of the child's ends are no longer needed in the daemon.
    drop(plan);

    let mut buf = [0u8; 8];
    let n = read_full(err_r.as_raw_fd(), &mut buf);
    if n == 0 {
        return Ok(pid);
    }
    // The child failed before exec and has exited (or is about to): reap it.
    let mut status = 0;
    // SAFETY: waitpid on our own child pid with a valid status pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let step = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    Err(ExecError::Child {
        step: Step::from_u32(step).unwrap_or(Step::Exec),
        source: std::io::Error::from_raw_os_error(errno),
    })
}

fn read_full(fd: RawFd, buf: &mut [u8; 8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the unfilled tail of a live stack buffer.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    got
}

/// Reports a failed step to the parent and exits. Async-signal-safe.
///
/// # Safety
/// Only to be called in the forked child.
unsafe fn fail(err_fd: RawFd, step: Step) -> ! {
    let errno = *libc::__errno_location();
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    libc::write(err_fd, buf.as_ptr().cast(), buf.len());
    libc::_exit(127)
}

/// The child's side: join the cgroup, then confine, then exec.
///
/// # Safety
/// Must be called only in a child right after fork. Uses only async-signal-safe
/// calls; `argv` and `envp` are NULL-terminated arrays of pointers into `plan`.
unsafe fn child_after_fork(
    plan: &ExecPlan,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    parent: libc::pid_t,
    err: RawFd,
) -> ! {
    // 1. Join the cgroup first: nothing the agent runs may exist outside it.
    for fd in &plan.cgroup_procs {
        if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
            fail(err, Step::JoinCgroup);
        }
    }
    // 2. Own session and process group, detached from any terminal.
    if libc::setsid() < 0 {
        fail(err, Step::Setsid);
    }
    // 3. Die with the daemon. If it already died, getppid no longer names it.
    if libc::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        0,
        0,
        0,
    ) != 0
    {
        fail(err, Step::Pdeathsig);
    }
    if libc::getppid() != parent {
        fail(err, Step::ParentGone);
    }
    // 4. Default dispositions and an empty mask: ignored signals (Rust ignores
    // SIGPIPE) and the mask survive execve (signal(7)).
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
        fail(err, Step::Signals);
    }
    for sig in 1..libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    // 5. stdio.
    for (from, to) in [(&plan.stdin, 0), (&plan.stdout, 1), (&plan.stderr, 2)] {
        if libc::dup2(from.as_raw_fd(), to) < 0 {
            fail(err, Step::Stdio);
        }
    }
    libc::umask(plan.umask as libc::mode_t);
    // 6. rlimits, while still privileged (raising a hard limit needs root).
    for &(res, soft, hard) in &plan.rlimits {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        if libc::setrlimit(res as _, &lim) != 0 {
            fail(err, Step::Rlimit);
        }
    }
    // 6b. Its network namespace, while still privileged (CAP_SYS_ADMIN).
    let entered = match &plan.netns {
        NetNs::Host => 0,
        NetNs::New => libc::unshare(libc::CLONE_NEWNET),
        NetNs::Join(fd) => libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET),
    };
    if entered != 0 {
        fail(err, Step::Network);
    }
    // 6c. Brokered mode: its writable directories noexec in a mount
    // namespace of its own (CAP_SYS_ADMIN, so before the capabilities go;
    // the chdir below then lands in the new mounts).
    if let Some(p) = &plan.confine {
        if let Err(errno) = crate::sys::confine::noexec_writable(&p.raw()) {
            *libc::__errno_location() = errno;
            fail(err, Step::Noexec);
        }
    }
    // 7. Capabilities: the bounding set can only be dropped with CAP_SETPCAP,
    // so before setuid; ambient cleared so nothing is regained at exec.
    for cap in 0..=plan.cap_last {
        if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
            && *libc::__errno_location() != libc::EINVAL
        {
            fail(err, Step::DropBounding);
        }
    }
    if libc::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
        0,
        0,
    ) != 0
    {
        fail(err, Step::ClearAmbient);
    }
    // 8. Identity: groups, then gid, then uid (setuid last: it gives up the
    // right to do the others).
    if libc::setgroups(plan.groups.len(), plan.groups.as_ptr()) != 0 {
        fail(err, Step::Setgroups);
    }
    if libc::setresgid(plan.gid, plan.gid, plan.gid) != 0 {
        fail(err, Step::Setgid);
    }
    if libc::setresuid(plan.uid, plan.uid, plan.uid) != 0 {
        fail(err, Step::Setuid);
    }
    // 9. Empty effective, permitted and inheritable sets (matters for an
    // allow_root agent; for others setuid already cleared them).
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    if libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) != 0 {
        fail(err, Step::ClearCaps);
    }
    // 10. No privilege gain through setuid binaries or file capabilities.
    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
        fail(err, Step::NoNewPrivs);
    }
    if libc::chdir(plan.cwd.as_ptr()) != 0 {
        fail(err, Step::Chdir);
    }
    // 10b. Brokered mode: Landlock, then seccomp (both need no_new_privs,
    // set above); nothing after this needs a denied call.
    if let Some(p) = &plan.confine {
        let raw = p.raw();
        if let Err((step, errno)) = crate::sys::confine::apply_in_child(&raw) {
            *libc::__errno_location() = errno;
            fail(
                err,
                match step {
                    crate::sys::confine::ConfineStep::Landlock => Step::Landlock,
                    crate::sys::confine::ConfineStep::Seccomp => Step::Seccomp,
                    crate::sys::confine::ConfineStep::Noexec => Step::Noexec,
                },
            );
        }
    }
    // 11. No inherited descriptors: mark everything from 3 up close-on-exec
    // (the error pipe already is, so it closes exactly at a successful exec).
    if libc::syscall(
        libc::SYS_close_range,
        3u32,
        u32::MAX,
        libc::CLOSE_RANGE_CLOEXEC,
    ) != 0
    {
        fail(err, Step::CloseFds);
    }
    libc::execve(plan.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
    fail(err, Step::Exec)
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
