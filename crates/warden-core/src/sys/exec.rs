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
    let errno = super::errno();
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: async-signal-safe write(2) in the single-threaded forked child;
    // the kernel reads `buf.len()` bytes from the live stack buffer `buf`. A
    // bad `err_fd` only makes the write fail, and the result is ignored.
    unsafe { libc::write(err_fd, buf.as_ptr().cast(), buf.len()) };
    // SAFETY: _exit(2) is async-signal-safe and ends the forked child at once,
    // without running atexit handlers or flushing stdio buffers inherited
    // from the daemon.
    unsafe { libc::_exit(127) }
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
    // Every `fail` below relies on the same invariant: we are the
    // single-threaded forked child (this function's contract), so `fail` may
    // _exit, and `err` is the close-on-exec error pipe's write end.

    // 1. Join the cgroup first: nothing the agent runs may exist outside it.
    for fd in &plan.cgroup_procs {
        // SAFETY: async-signal-safe write(2) in the forked child; `fd` is an
        // open cgroup.procs descriptor owned by `plan` (alive until exec), and
        // the kernel reads 1 byte from the static literal "0".
        if unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
            // SAFETY: forked child, `err` is the error pipe (see above).
            unsafe { fail(err, Step::JoinCgroup) };
        }
    }
    // 2. Own session and process group, detached from any terminal.
    // SAFETY: setsid(2) is async-signal-safe, takes no arguments and touches
    // no memory of ours.
    if unsafe { libc::setsid() } < 0 {
        // SAFETY: forked child, `err` is the error pipe (see above).
        unsafe { fail(err, Step::Setsid) };
    }
    // 3. Die with the daemon. If it already died, getppid no longer names it.
    // SAFETY: prctl(PR_SET_PDEATHSIG) is a raw syscall taking only integers;
    // it touches no memory of ours and is async-signal-safe.
    if unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        // SAFETY: forked child, `err` is the error pipe (see above).
        unsafe { fail(err, Step::Pdeathsig) };
    }
    // SAFETY: getppid(2) is async-signal-safe, cannot fail and touches no
    // memory of ours.
    if unsafe { libc::getppid() } != parent {
        // SAFETY: forked child, `err` is the error pipe (see above).
        unsafe { fail(err, Step::ParentGone) };
    }
    // 4. Default dispositions and an empty mask: ignored signals (Rust ignores
    // SIGPIPE) and the mask survive execve (signal(7)).
    // SAFETY: sigset_t is a plain C bit array, for which all-zero bytes are a
    // valid value; this is a stack initialisation, no allocation.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset is async-signal-safe and only writes the live,
    // exclusively borrowed local `set`.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: async-signal-safe sigprocmask in the single-threaded child (so it
    // sets the mask of its only thread); the kernel reads the live local
    // `set`, and the old-mask pointer is NULL, so nothing is written back.
    if unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) } != 0 {
        // SAFETY: forked child, `err` is the error pipe (see above).
        unsafe { fail(err, Step::Signals) };
    }
    for sig in 1..libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: signal() is async-signal-safe; SIG_DFL installs no
            // handler code. A number the C library reserves only makes it
            // return SIG_ERR, which is ignored.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    // 5. stdio.
    for (from, to) in [(&plan.stdin, 0), (&plan.stdout, 1), (&plan.stderr, 2)] {
        // SAFETY: async-signal-safe dup2(2) in the forked child on integers
        // only; `from` is an open descriptor owned by `plan` (alive until exec).
        if unsafe { libc::dup2(from.as_raw_fd(), to) } < 0 {
            // SAFETY: forked child, `err` is the error pipe (see above).
            unsafe { fail(err, Step::Stdio) };
        }
    }
    // SAFETY: umask(2) is async-signal-safe, cannot fail and touches no memory
    // of ours.
    unsafe { libc::umask(plan.umask as libc::mode_t) };
    // 6. rlimits, while still privileged (raising a hard limit needs root).
    for &(res, soft, hard) in &plan.rlimits {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: async-signal-safe setrlimit(2) in the forked child; the
        // kernel only reads the live local `lim` (an invalid `res` is EINVAL).
        if unsafe { libc::setrlimit(res as _, &lim) } != 0 {
            // SAFETY: forked child, `err` is the error pipe (see above).
            unsafe { fail(err, Step::Rlimit) };
        }
    }
    // 6b. Its network namespace, while still privileged (CAP_SYS_ADMIN).
    let entered = match &plan.netns {
        NetNs::Host => 0,
        NetNs::New => {
            // SAFETY: unshare(2) takes only a flag and touches no memory of
            // ours; it moves just this (single-threaded) child into a new
            // network namespace.
            unsafe { libc::unshare(libc::CLONE_NEWNET) }
        }
        NetNs::Join(fd) => {
            // SAFETY: setns(2) on integers only; `fd` is an open namespace
            // descriptor owned by `plan` (alive until exec).
            unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) }
        }
    };
    if entered != 0 {
        // SAFETY: forked child, `err` is the error pipe (see above).
        unsafe { fail(err, Step::Network) };
    }
    // 7. Capabilities: the bounding set can only be dropped with CAP_SETPCAP,
    // so before setuid; ambient cleared so nothing is regained at exec.
    for cap in 0..=plan.cap_last {
        // SAFETY: prctl(PR_CAPBSET_DROP) is a raw syscall taking only
        // integers; it touches no memory of ours and is async-signal-safe.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0
            && super::errno() != libc::EINVAL
        {
            // SAFETY: forked child, `err` is the error pipe (see above).
            unsafe { fail(err, Step::DropBounding) };
        }
    }
    // SAFETY: prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL) is a raw syscall
    // taking only integers; it touches no memory of ours.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        // SAFETY: forked child, `err` is the error pipe (see above).
        unsafe { fail(err, Step::ClearAmbient) };
    }
    // 8. Identity: groups, then gid, then uid (setuid last: it gives up the
    // right to do the others).
    // SAFETY: the kernel reads exactly `groups.len()` gid_t values from the
    // buffer of `plan.groups`, allocated before fork and alive until exec (none
    // when empty, so the dangling pointer of an empty Vec is never read). In the
    // child, glibc's fork() has reset its thread list and the lock guarding it,
    // so its set*id broadcast reaches only this, the only thread (std's
    // Command makes the same calls after fork).
    if unsafe { libc::setgroups(plan.groups.len(), plan.groups.as_ptr()) } != 0 {
        // SAFETY: forked child, `err` is the error pipe (see above).
        unsafe { fail(err, Step::Setgroups) };
    }
    // SAFETY: setresgid takes only integers; single-threaded child, as for
    // setgroups above.
    if unsafe { libc::setresgid(plan.gid, plan.gid, plan.gid) } != 0 {
        // SAFETY: forked child, `err` is the error pipe (see above).
        unsafe { fail(err, Step::Setgid) };
    }
    // SAFETY: setresuid takes only integers; single-threaded child, as for
    // setgroups above.
    if unsafe { libc::setresuid(plan.uid, plan.uid, plan.uid) } != 0 {
        // SAFETY: forked child, `err` is the error pipe (see above).
        unsafe { fail(err, Step::Setuid) };
    }
    // 9. Empty effective, permitted and inheritable sets (matters for an
    // allow_root agent; for others setuid already cleared them).
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: raw capset(2) in the forked child. `hdr` is a live, exclusively
    // borrowed #[repr(C)] header (the kernel may write back its version, hence
    // *mut), and `data` is a live array of the two #[repr(C)] CapData structs
    // that version 3 reads. Both are locals that outlive the call.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) } != 0 {
        // SAFETY: forked child, `err` is the error pipe (see above).
        unsafe { fail(err, Step::ClearCaps) };
    }
    // 10. No privilege gain through setuid binaries or file capabilities.
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) is a raw syscall taking only
    // integers; it touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        // SAFETY: forked child, `err` is the error pipe (see above).
        unsafe { fail(err, Step::NoNewPrivs) };
    }
    // SAFETY: async-signal-safe chdir(2); `plan.cwd` is a NUL-terminated
    // CString allocated before fork and alive until exec.
    if unsafe { libc::chdir(plan.cwd.as_ptr()) } != 0 {
        // SAFETY: forked child, `err` is the error pipe (see above).
        unsafe { fail(err, Step::Chdir) };
    }
    // 10b. Brokered mode: Landlock, then seccomp (both need no_new_privs,
    // set above); nothing after this needs a denied call.
    if let Some(p) = &plan.confine {
        // `raw` only copies the ruleset's fd number and the filter's pointer and
        // length out of `p`: no allocation, so it is fine after fork.
        let raw = p.raw();
        // SAFETY: we are the single-threaded forked child and no_new_privs is
        // set (step 10); `raw` borrows the ruleset fd and filter of `p`, which
        // `plan` keeps alive until exec.
        if let Err((step, errno)) = unsafe { crate::sys::confine::apply_in_child(&raw) } {
            // SAFETY: errno is thread-local and its location is valid for the
            // calling thread (the child's only one); `fail` reports it.
            unsafe { *libc::__errno_location() = errno };
            // SAFETY: forked child, `err` is the error pipe (see above).
            unsafe {
                fail(
                    err,
                    match step {
                        crate::sys::confine::ConfineStep::Landlock => Step::Landlock,
                        crate::sys::confine::ConfineStep::Seccomp => Step::Seccomp,
                    },
                )
            };
        }
    }
    // 11. No inherited descriptors: mark everything from 3 up close-on-exec
    // (the error pipe already is, so it closes exactly at a successful exec).
    // SAFETY: raw close_range(2) taking only integers; with
    // CLOSE_RANGE_CLOEXEC it closes nothing now, so no descriptor `plan` still
    // owns is invalidated before exec.
    if unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } != 0
    {
        // SAFETY: forked child, `err` is the error pipe (see above).
        unsafe { fail(err, Step::CloseFds) };
    }
    // SAFETY: async-signal-safe execve(2). `plan.path` is a NUL-terminated
    // CString, and `argv`/`envp` are NULL-terminated arrays of pointers into
    // CStrings of `plan`, all built before fork and alive here (execve only
    // returns on failure).
    unsafe { libc::execve(plan.path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    // SAFETY: forked child, `err` is the error pipe (see above).
    unsafe { fail(err, Step::Exec) }
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
