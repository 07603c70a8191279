//! Linux watchdog ioctls (Documentation/watchdog/watchdog-api.rst).

use std::os::fd::AsRawFd;

nix::ioctl_read!(wdioc_keepalive, b'W', 5, libc::c_int);
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);

/// WDIOC_SETTIMEOUT; returns the timeout the driver actually set.
pub fn set_timeout(f: &std::fs::File, secs: i32) -> nix::Result<i32> {
    let mut v: libc::c_int = secs;
    // SAFETY: the fd is open for the duration of the call and `v` is a valid
    // int the driver reads and overwrites, as the ioctl's ABI specifies.
    unsafe { wdioc_settimeout(f.as_raw_fd(), &mut v) }?;
    Ok(v)
}

/// WDIOC_KEEPALIVE.
pub fn keepalive(f: &std::fs::File) -> nix::Result<()> {
    let mut v: libc::c_int = 0;
    // SAFETY: as above; the driver ignores the argument's value.
    unsafe { wdioc_keepalive(f.as_raw_fd(), &mut v) }?;
    Ok(())
}
