//! The only module with `unsafe`: the four raw calls nix does not wrap
//! safely. Every block states the invariants it relies on.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

nix::ioctl_read!(wdioc_keepalive, b'W', 5, libc::c_int);

/// Only the pipe ends the kernel: a terminal's Ctrl-C or a stray TERM that
/// also reached the daemon must not take the kernel out first.
pub fn ignore_termination_signals() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        // SAFETY: SIG_IGN installs no handler code, so no async-signal-safety
        // question arises; the kernel is single-threaded, so no other thread
        // races on the disposition.
        let _ = unsafe { signal(s, SigHandler::SigIgn) };
    }
}

/// `sched_setscheduler(0, SCHED_FIFO | SCHED_RESET_ON_FORK, prio)`.
pub fn set_fifo(priority: i32) -> io::Result<()> {
    let p = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 is the calling thread; `p` is a valid, initialised
    // sched_param that outlives the call, and the kernel only reads it.
    let r =
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &p) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `setpriority(PRIO_PROCESS, 0, nice)`.
pub fn set_nice(nice: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments; who = 0 is the calling process. No
    // memory is passed.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// WDIOC_KEEPALIVE (Documentation/watchdog/watchdog-api.rst).
pub fn watchdog_keepalive(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut v: libc::c_int = 0;
    // SAFETY: the BorrowedFd keeps the descriptor open for the call, and
    // `v` is a live int the driver may write, as the ioctl's ABI specifies
    // (_IOR('W', 5, int)); drivers ignore its value.
    unsafe { wdioc_keepalive(fd.as_raw_fd(), &mut v) }?;
    Ok(())
}
