//! The only module with `unsafe`: fork/exec of agents, and the few raw calls
//! that nix does not wrap. Every block states the invariant it relies on.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod confine;
pub mod exec;
pub mod fsattr;
pub mod watchdog;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub fn pipe_cloexec() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// `pidfd_open(2)`: a descriptor that becomes readable when `pid` exits.
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new fd or
    // -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Marks a descriptor close-on-exec or not.
pub fn set_cloexec(fd: &impl AsRawFd, on: bool) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(flags)).map_err(std::io::Error::from)?;
    Ok(())
}

/// `prctl(PR_SET_CHILD_SUBREAPER)` for the guard, so that it can reap what it kills.
pub fn set_child_subreaper() -> std::io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag; no pointers.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `prctl(PR_SET_PDEATHSIG, sig)` for the calling thread's process.
pub fn set_parent_death_signal(sig: i32) -> std::io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; no pointers.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Ignores SIGINT, SIGTERM, SIGHUP and SIGQUIT (for the guard).
pub fn ignore_termination_signals() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        // SAFETY: SIG_IGN installs no handler code, so no async-signal-safety
        // requirement arises; called from a single-threaded process.
        let _ = unsafe { signal(s, SigHandler::SigIgn) };
    }
}

/// Registers an owned descriptor with the tokio reactor for readability.
pub fn async_readable(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of `fd`; an OwnedFd stays open and
    // returns the same descriptor from as_raw_fd until it is dropped, which
    // happens only when the AsyncFd is dropped or unwrapped.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

/// Gives freed heap memory back to the kernel (a halt's evidence of
/// thousands of processes is large and short-lived).
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own allocator state under its
    // own locks; it takes no pointers from us.
    unsafe {
        libc::malloc_trim(0);
    }
}
