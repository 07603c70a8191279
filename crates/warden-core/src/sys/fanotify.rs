//! The raw fanotify calls (fanotify(7)) and `name_to_handle_at(2)`, which nix
//! does not wrap in the form we need; parsing the event stream is plain
//! byte-slice code in [`crate::fanotify`].

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `fanotify_init(flags, event_f_flags)`.
pub fn init(flags: u32, event_f_flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: fanotify_init takes two integers and returns a new descriptor
    // or -1; it touches no memory of ours.
    let fd = unsafe { libc::fanotify_init(flags, event_f_flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fanotify_mark(fd, flags, mask, AT_FDCWD, path)`.
pub fn mark(fd: BorrowedFd<'_>, flags: u32, mask: u64, path: &Path) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call; the
    // kernel only reads it. `fd` is a live fanotify descriptor.
    let r = unsafe { libc::fanotify_mark(fd.as_raw_fd(), flags, mask, libc::AT_FDCWD, c.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Longest file handle the kernel hands out (MAX_HANDLE_SZ in linux/exportfs.h).
const MAX_HANDLE_SZ: usize = 128;

/// What identifies a directory in a `FAN_REPORT_DFID_NAME` event: its
/// filesystem id, then the handle type and bytes, laid out exactly as the
/// event's fid record carries them (fsid, handle_type, f_handle), so that a
/// comparison of byte strings decides.
pub fn dir_key(path: &Path) -> io::Result<Vec<u8>> {
    let c = cpath(path)?;
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
    // in a buffer of u32s so that it is aligned for the header.
    let mut buf = [0u32; 2 + MAX_HANDLE_SZ / 4];
    buf[0] = MAX_HANDLE_SZ as u32;
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `buf` holds a file_handle header with handle_bytes set to the
    // room after it, so the kernel writes at most that many bytes; `c` is
    // NUL-terminated and `mount_id` is a valid int; all outlive the call.
    let r = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c.as_ptr(),
            buf.as_mut_ptr().cast::<libc::file_handle>(),
            &mut mount_id,
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let st = nix::sys::statfs::statfs(path).map_err(io::Error::from)?;
    let fsid = st.filesystem_id();
    // SAFETY: fsid_t is two i32s (`struct { int __val[2]; }`), the same size
    // and layout as [i32; 2]; every bit pattern is valid for both.
    let fsid: [i32; 2] = unsafe { std::mem::transmute(fsid) };
    let bytes = (buf[0] as usize).min(MAX_HANDLE_SZ);
    let mut key = Vec::with_capacity(12 + bytes);
    key.extend_from_slice(&fsid[0].to_ne_bytes());
    key.extend_from_slice(&fsid[1].to_ne_bytes());
    key.extend_from_slice(&(buf[1] as i32).to_ne_bytes());
    let raw: Vec<u8> = buf[2..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    key.extend_from_slice(&raw[..bytes]);
    Ok(key)
}
