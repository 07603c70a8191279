//! The only module with `unsafe`: fork/exec of agents, and the few raw calls
//! that nix does not wrap. Every block states the invariant it relies on.
#![deny(clippy::undocumented_unsafe_blocks)]
// Each raw call inside an `unsafe fn` needs its own block and SAFETY note.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod confine;
pub mod exec;
pub mod fsattr;
pub mod watchdog;

use std::os::fd::OwnedFd;

/// The calling thread's errno. Async-signal-safe (a thread-local load), so the
/// forked child may use it.
#[inline]
pub(crate) fn errno() -> i32 {
    // SAFETY: __errno_location returns the address of the calling thread's
    // errno, which is thread-local, aligned and valid for as long as the
    // thread lives; reading it is a plain load (no lock, no allocation).
    unsafe { *libc::__errno_location() }
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub fn pipe_cloexec() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
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

/// `pidfd_open(pid, 0)`: a descriptor that becomes readable when our child
/// `pid` exits, so a task can await one process without reaping others.
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or
    // -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned `fd` as a new descriptor that nothing
    // else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
