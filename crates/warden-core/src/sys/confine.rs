//! Child side of brokered-mode confinement: the two raw calls that turn a
//! prepared Landlock ruleset and seccomp program (see [`crate::confine`]) into
//! restrictions on the calling process.
//!
//! These run in the forked child of a multi-threaded daemon, so they only issue
//! raw system calls on memory and descriptors prepared before fork: no
//! allocation, no locks, no errno formatting.
//!
//! Required order in the child (see `sys::exec::child_after_fork`):
//! setuid -> capset -> `PR_SET_NO_NEW_PRIVS` -> chdir -> [`restrict_landlock`]
//! -> [`install_seccomp`] -> close_range -> execve. Both calls need
//! no_new_privs (or CAP_SYS_ADMIN, which an agent no longer has). Landlock goes
//! first so the seccomp filter never has to allow the landlock syscalls, and
//! seccomp goes last so the fewest of our own calls run under it.

use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// `landlock_create_ruleset` flag: return the highest supported ABI instead of
/// creating a ruleset (Documentation/userspace-api/landlock.rst).
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;

/// The confinement step that failed in the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ConfineStep {
    /// `landlock_restrict_self` failed.
    Landlock = 1,
    /// `prctl(PR_SET_SECCOMP)` failed.
    Seccomp = 2,
}

impl ConfineStep {
    pub fn describe(self) -> &'static str {
        match self {
            ConfineStep::Landlock => "apply the landlock ruleset",
            ConfineStep::Seccomp => "install the seccomp filter",
        }
    }
}

/// What the child needs, as raw values borrowed from a [`crate::confine::Prepared`].
/// Built before fork; the borrow keeps the ruleset fd and the filter alive
/// until the child has used them.
#[derive(Debug)]
pub struct PreparedRaw<'a> {
    /// Landlock ruleset descriptor (close-on-exec, so the agent never sees it).
    ruleset_fd: RawFd,
    /// The seccomp program, pointing into the borrowed filter.
    prog: libc::sock_fprog,
    _borrow: PhantomData<&'a [libc::sock_filter]>,
}

impl<'a> PreparedRaw<'a> {
    /// Borrows a ruleset fd and a filter. The filter must be non-empty and at
    /// most `u16::MAX` instructions (`prepare` guarantees both).
    pub fn new(ruleset: BorrowedFd<'a>, filter: &'a [libc::sock_filter]) -> Self {
        PreparedRaw {
            ruleset_fd: ruleset.as_raw_fd(),
            prog: libc::sock_fprog {
                len: u16::try_from(filter.len()).unwrap_or(u16::MAX),
                // The kernel only reads through this pointer (it copies the
                // program in); sock_fprog declares it mutable.
                filter: filter.as_ptr().cast_mut(),
            },
            _borrow: PhantomData,
        }
    }
}

/// Highest Landlock ABI the kernel supports, or None if Landlock is absent or
/// disabled (ENOSYS / EOPNOTSUPP).
pub fn landlock_abi() -> Option<u32> {
    // SAFETY: with a NULL attribute pointer, size 0 and the VERSION flag the
    // kernel reads no memory of ours and only returns an integer.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v <= 0 {
        None
    } else {
        u32::try_from(v).ok()
    }
}

/// `landlock_restrict_self(ruleset_fd, 0)`. Async-signal-safe.
///
/// # Safety
/// Meant for the forked child: it restricts the calling thread only (the
/// child has exactly one), and `p` must have been built before fork from a
/// live ruleset fd. Returns the errno on failure.
pub unsafe fn restrict_landlock(p: &PreparedRaw<'_>) -> Result<(), i32> {
    // SAFETY: raw landlock_restrict_self(2) taking only integers, so it reads
    // no memory of ours; `p` borrows the ruleset from a live `Prepared`, so
    // `ruleset_fd` is still open. It restricts the calling thread, which in the
    // forked child is the only one.
    let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, p.ruleset_fd, 0u32) };
    if r != 0 {
        return Err(super::errno());
    }
    Ok(())
}

/// `prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)`. Async-signal-safe.
///
/// # Safety
/// Meant for the forked child after no_new_privs; `p.prog` points into a
/// filter that the borrow in `PreparedRaw` keeps alive. Returns the errno on
/// failure.
pub unsafe fn install_seccomp(p: &PreparedRaw<'_>) -> Result<(), i32> {
    // SAFETY: `&p.prog` is a live sock_fprog whose `filter` points at `len`
    // instructions that the borrow in `PreparedRaw` keeps alive; the kernel
    // only reads them, copying the program in before the call returns. Without
    // no_new_privs the call fails with EACCES, it does not misbehave.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &p.prog as *const libc::sock_fprog,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(super::errno());
    }
    Ok(())
}

/// Both steps in the required order: Landlock, then seccomp.
///
/// # Safety
/// As for [`restrict_landlock`] and [`install_seccomp`]; no_new_privs must
/// already be set.
pub unsafe fn apply_in_child(p: &PreparedRaw<'_>) -> Result<(), (ConfineStep, i32)> {
    // SAFETY: the caller upholds restrict_landlock's contract (see # Safety):
    // forked child, `p` built from a live ruleset fd.
    unsafe { restrict_landlock(p) }.map_err(|e| (ConfineStep::Landlock, e))?;
    // SAFETY: the caller upholds install_seccomp's contract (see # Safety):
    // no_new_privs set, and `p` keeps the filter alive.
    unsafe { install_seccomp(p) }.map_err(|e| (ConfineStep::Seccomp, e))?;
    Ok(())
}
