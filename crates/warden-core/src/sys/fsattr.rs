//! Inode flags (`chattr`/`lsattr`) through `FS_IOC_GETFLAGS`/`FS_IOC_SETFLAGS`.
//!
//! warden sets the append-only flag (`FS_APPEND_FL`, `chattr +a`) on
//! `safety_events.jsonl`: once set, the file can only be opened with
//! `O_APPEND`, and cannot be truncated, renamed or unlinked, even by root,
//! unless the process has CAP_LINUX_IMMUTABLE to clear the flag first
//! (ioctl_iflags(2)). Not every filesystem has inode flags: tmpfs and
//! overlayfs answer ENOTTY or EOPNOTSUPP.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `FS_APPEND_FL` from linux/fs.h: writes may only append.
pub const FS_APPEND_FL: libc::c_int = 0x0000_0020;
/// `FS_IMMUTABLE_FL` from linux/fs.h: no change at all.
pub const FS_IMMUTABLE_FL: libc::c_int = 0x0000_0010;

/// Reads the inode flags of an open file.
pub fn get_flags(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    let mut flags: libc::c_int = 0;
    // SAFETY: `fd` is a live descriptor for the duration of the borrow, and
    // `flags` is a valid, writable c_int that outlives the call. The request
    // is declared with a `long` argument but every filesystem reads and
    // writes an `int` (ioctl_iflags(2)), which is what we pass.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags)
}

/// Replaces the inode flags of an open file.
pub fn set_flags(fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: as in `get_flags`; the kernel only reads the int behind the
    // pointer, which lives until the call returns.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets (`on`) or clears the append-only flag. Returns the error as is; use
/// [`is_unsupported`] to tell "this filesystem has no inode flags" apart.
pub fn set_append_only(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = get_flags(fd)?;
    let wanted = if on {
        flags | FS_APPEND_FL
    } else {
        flags & !FS_APPEND_FL
    };
    if wanted != flags {
        set_flags(fd, wanted)?;
    }
    Ok(())
}

/// True when the append-only flag is set.
pub fn is_append_only(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(get_flags(fd)? & FS_APPEND_FL != 0)
}

/// True for the errors a filesystem without inode flags returns.
pub fn is_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

/// Clears the append-only and immutable flags of every regular file under
/// `dir` (recursively), so that the tree can be deleted. For tests and for
/// an operator's tooling; errors on filesystems without flags are ignored.
pub fn clear_append_only_tree(dir: &std::path::Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            clear_append_only_tree(&entry.path())?;
        } else if ty.is_file() {
            // Read-only: an append-only file refuses a write open without
            // O_APPEND, and the ioctl needs no write access.
            let f = std::fs::OpenOptions::new().read(true).open(entry.path())?;
            let fd = std::os::fd::AsFd::as_fd(&f);
            match get_flags(fd) {
                Ok(flags) if flags & (FS_APPEND_FL | FS_IMMUTABLE_FL) != 0 => {
                    set_flags(fd, flags & !(FS_APPEND_FL | FS_IMMUTABLE_FL))?
                }
                Ok(_) => {}
                Err(e) if is_unsupported(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
