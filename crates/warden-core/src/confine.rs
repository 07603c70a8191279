//! Brokered-mode confinement, parent side: everything an agent with
//! `exec = "brokered"` is confined by is built here before fork, and the
//! forked child only applies it with raw calls ([`crate::sys::confine`]).
//!
//! - Landlock: the agent may execute only the files on [`ConfineSpec::exec`]
//!   (its program, a script's interpreter chain, the ELF loader), read the
//!   trees on [`ConfineSpec::read`], and read and write under
//!   [`ConfineSpec::write`]. Every filesystem right of the kernel's ABI is
//!   handled, so anything not granted is refused with EACCES (or EXDEV for a
//!   rename across rules). A kernel without Landlock is an error: a brokered
//!   agent never runs unconfined.
//! - seccomp: a deny list ([`DENIED_SYSCALLS`], namespace flags of
//!   clone/unshare) answered with EPERM so that agents get a clear error;
//!   clone3 gets ENOSYS (its flags are behind a pointer that seccomp cannot
//!   read; libc then falls back to clone, whose flags we check). A foreign
//!   audit arch (i386 via int 0x80, arm32 compat) kills the process, and x32
//!   numbers on x86_64 get EPERM, so neither can bypass the list.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, ABI,
};

use crate::sys::confine::PreparedRaw;

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error(
        "landlock is not available on this kernel; refusing to start a brokered agent unconfined"
    )]
    NoLandlock,
    #[error("could not create the landlock ruleset: {0}")]
    Ruleset(#[source] landlock::RulesetError),
    #[error("could not open {path} for a landlock rule: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: landlock::PathFdError,
    },
    #[error("could not add the landlock rule for {path}: {source}")]
    Rule {
        path: PathBuf,
        #[source]
        source: landlock::RulesetError,
    },
    #[error("could not read {path} to find its interpreter: {source}")]
    Interp {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadInterp { path: PathBuf, reason: &'static str },
    #[error("cannot prepare writable directory {path} for a noexec mount: {reason}")]
    WritePath { path: PathBuf, reason: String },
    #[error("seccomp filtering is not built for this architecture")]
    UnsupportedArch,
}

/// What one brokered agent may execute, read and write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfineSpec {
    /// Files that may be executed (EXECUTE and READ_FILE on the exact file):
    /// the agent's command[0], the interpreters of a `#!` chain, the ELF
    /// loader. Use [`exec_closure`] to complete it.
    pub exec: Vec<PathBuf>,
    /// Trees that may be read (READ_FILE, READ_DIR): system libraries and
    /// configuration, plus what the agent's config allows.
    pub read: Vec<PathBuf>,
    /// The agent's own directories (every right but EXECUTE): its cwd, a
    /// tmp dir. May also name single files such as /dev/null.
    pub write: Vec<PathBuf>,
}

/// Read-only trees every brokered agent gets: libraries, data and
/// configuration, but not the program directories (`/usr/bin`, `/bin`,
/// `/sbin`, `/usr/libexec`...). Reading a program is all the ELF loader
/// needs to run it (`ld-linux-x86-64.so.2 /usr/bin/curl`), and the loader
/// must stay executable; programs on the exec list are readable through
/// their own rule.
pub const DEFAULT_READ: &[&str] = &[
    "/usr/lib",
    "/usr/lib64",
    "/usr/lib32",
    "/usr/share",
    "/usr/include",
    "/usr/local/lib",
    "/usr/local/share",
    "/lib",
    "/lib64",
    "/etc",
];

/// Devices nearly every program opens for writing.
pub const DEFAULT_WRITE: &[&str] = &["/dev/null"];

impl ConfineSpec {
    /// A spec for `program` with the default read trees, `write` dirs plus
    /// /dev/null, and the exec list completed by [`exec_closure`].
    pub fn for_program(program: &Path, write: &[PathBuf]) -> Result<Self, ConfineError> {
        let read = DEFAULT_READ
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect();
        let mut w: Vec<PathBuf> = write.to_vec();
        w.extend(DEFAULT_WRITE.iter().map(PathBuf::from));
        Ok(ConfineSpec {
            exec: exec_closure(program)?,
            read,
            write: w,
        })
    }
}

/// A ruleset fd and a compiled filter, made before fork.
#[derive(Debug)]
pub struct Prepared {
    /// Landlock ruleset with every rule added; close-on-exec.
    pub ruleset: OwnedFd,
    /// The Landlock ABI the ruleset was built for.
    pub abi: u32,
    /// The seccomp program.
    pub filter: Vec<libc::sock_filter>,
    /// The directories of [`ConfineSpec::write`], canonical, which the
    /// child remounts noexec in a mount namespace of its own
    /// (`sys::confine::noexec_writable`).
    pub noexec: Vec<std::ffi::CString>,
    /// Files of [`ConfineSpec::exec`] beneath a `noexec` directory: they
    /// stay executable (bind-mounted onto themselves first).
    pub keep_exec: Vec<std::ffi::CString>,
}

impl Prepared {
    /// Raw view for the child (`sys::confine::apply_in_child`); build it
    /// before fork.
    pub fn raw(&self) -> PreparedRaw<'_> {
        PreparedRaw::new(
            self.ruleset.as_fd(),
            &self.filter,
            &self.noexec,
            &self.keep_exec,
        )
    }
}

/// Highest Landlock ABI of the running kernel, None without Landlock.
pub fn landlock_abi() -> Option<u32> {
    crate::sys::confine::landlock_abi()
}

/// Builds the Landlock ruleset and the seccomp filter for `spec`.
pub fn prepare(spec: &ConfineSpec) -> Result<Prepared, ConfineError> {
    let abi_n = landlock_abi().ok_or(ConfineError::NoLandlock)?;
    let abi = ABI::from(abi_n as i32);
    let all = AccessFs::from_all(abi);
    let read = AccessFs::from_read(abi) & !AccessFs::Execute;
    let write = all & !AccessFs::Execute;
    let exec = AccessFs::Execute | AccessFs::ReadFile;

    // HardRequirement: every right we ask for must be enforced; we only ask
    // for rights of the kernel's own ABI, so this fails only on a broken
    // Landlock, never silently weakens.
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(all)
        .map_err(ConfineError::Ruleset)?
        .create()
        .map_err(ConfineError::Ruleset)?;

    let groups = [(&spec.read, read), (&spec.write, write), (&spec.exec, exec)];
    for (paths, access) in groups {
        for path in paths {
            let fd = PathFd::new(path).map_err(|e| ConfineError::Open {
                path: path.clone(),
                source: e,
            })?;
            // Landlock accepts only file-level rights on a non-directory
            // (EINVAL otherwise); keep those for files such as /dev/null.
            let access = if path.is_dir() {
                access
            } else {
                access & AccessFs::from_file(abi)
            };
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, access))
                .map_err(|e| ConfineError::Rule {
                    path: path.clone(),
                    source: e,
                })?;
        }
    }
    let fd: Option<OwnedFd> = ruleset.into();
    let ruleset = fd.ok_or(ConfineError::NoLandlock)?;
    let mut noexec = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for dir in spec.write.iter().filter(|p| p.is_dir()) {
        let bad = |reason: String| ConfineError::WritePath {
            path: dir.clone(),
            reason,
        };
        let canon = dir.canonicalize().map_err(|e| bad(e.to_string()))?;
        let c = std::ffi::CString::new(canon.as_os_str().as_bytes())
            .map_err(|_| bad("the path contains a NUL byte".into()))?;
        if !noexec.contains(&c) {
            noexec.push(c);
            dirs.push(canon);
        }
    }
    // exec_closure's paths are canonical already.
    let keep_exec = spec
        .exec
        .iter()
        .filter(|f| dirs.iter().any(|d| f.starts_with(d)))
        .filter_map(|f| std::ffi::CString::new(f.as_os_str().as_bytes()).ok())
        .collect();
    Ok(Prepared {
        ruleset,
        abi: abi_n,
        filter: seccomp_filter()?,
        noexec,
        keep_exec,
    })
}

/// Follows `#!` lines and PT_INTERP from `program` and returns every file the
/// kernel opens for execution to run it: the program, each interpreter (the
/// kernel allows four levels of `#!`), `env`'s target for `#!/usr/bin/env X`,
/// and the ELF loader of each binary. Paths are canonical (Landlock rules
/// apply to the file, not the symlink).
pub fn exec_closure(program: &Path) -> Result<Vec<PathBuf>, ConfineError> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut todo = vec![program.to_path_buf()];
    let mut steps = 0;
    while let Some(p) = todo.pop() {
        steps += 1;
        if steps > 16 {
            return Err(ConfineError::BadInterp {
                path: program.to_path_buf(),
                reason: "interpreter chain too long",
            });
        }
        let canon = p.canonicalize().map_err(|e| ConfineError::Interp {
            path: p.clone(),
            source: e,
        })?;
        if out.contains(&canon) {
            continue;
        }
        match interpreter_of(&canon)? {
            Interp::Script(mut chain) => todo.append(&mut chain),
            Interp::Elf(Some(loader)) => todo.push(loader),
            Interp::Elf(None) | Interp::Other => {}
        }
        out.push(canon);
    }
    Ok(out)
}

/// What the kernel runs in place of (or alongside) a file.
#[derive(Debug, PartialEq, Eq)]
pub enum Interp {
    /// A `#!` script: the interpreter (and for `env`, the program it runs).
    Script(Vec<PathBuf>),
    /// An ELF binary and its PT_INTERP loader, if dynamic.
    Elf(Option<PathBuf>),
    /// Neither; execve will decide.
    Other,
}

/// Reads the start of `path` and says what it needs to run.
pub fn interpreter_of(path: &Path) -> Result<Interp, ConfineError> {
    let io = |e| ConfineError::Interp {
        path: path.to_path_buf(),
        source: e,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut head = [0u8; 256];
    let n = read_up_to(&mut f, &mut head).map_err(io)?;
    let head = &head[..n];
    if head.starts_with(b"#!") {
        return parse_shebang(head).ok_or(ConfineError::BadInterp {
            path: path.to_path_buf(),
            reason: "unreadable #! line",
        });
    }
    if head.starts_with(b"\x7fELF") {
        let data = std::fs::read(path).map_err(io)?;
        return elf_interp(&data)
            .map(Interp::Elf)
            .ok_or(ConfineError::BadInterp {
                path: path.to_path_buf(),
                reason: "malformed ELF program headers",
            });
    }
    Ok(Interp::Other)
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// `#!interp [arg]` (binfmt_script: one optional argument, the rest of the
/// line). For `env`, the first non-option word is looked up in a fixed PATH.
fn parse_shebang(head: &[u8]) -> Option<Interp> {
    let line = head[2..].split(|&b| b == b'\n').next()?;
    let mut words = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|w| !w.is_empty());
    let interp = PathBuf::from(OsStr::from_bytes(words.next()?));
    let mut chain = vec![interp.clone()];
    if interp.file_name() == Some(OsStr::new("env")) {
        let target = words.find(|w| !w.starts_with(b"-") && !w.contains(&b'='))?;
        let target = Path::new(OsStr::from_bytes(target));
        let found = if target.is_absolute() {
            Some(target.to_path_buf())
        } else {
            ["/usr/local/bin", "/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(target))
                .find(|p| p.is_file())
        };
        chain.push(found?);
    }
    Some(Interp::Script(chain))
}

/// PT_INTERP of a 64-bit little-endian ELF (x86_64 and aarch64), None if the
/// headers are malformed; Some(None) for a static binary.
fn elf_interp(data: &[u8]) -> Option<Option<PathBuf>> {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?));
    // ELFCLASS64, ELFDATA2LSB.
    if data.get(4) != Some(&2) || data.get(5) != Some(&1) {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? != PT_INTERP {
            continue;
        }
        let off = usize::try_from(u64_at(ph + 8)?).ok()?;
        let len = usize::try_from(u64_at(ph + 32)?).ok()?;
        let raw = data.get(off..off.checked_add(len)?)?;
        let raw = raw.split(|&b| b == 0).next()?;
        return Some(Some(PathBuf::from(OsStr::from_bytes(raw))));
    }
    Some(None)
}

/// Syscalls refused with EPERM for every brokered agent, by name (for docs
/// and logs) and number for this architecture. Why each: it debugs or reads
/// another process (ptrace, process_vm_*, kcmp), changes the mount table or
/// root (mount API, pivot_root, chroot), loads kernel code (modules, bpf,
/// kexec), reaches kernel-wide state (keyrings, perf, swap, reboot, clocks,
/// hostname, acct, quota, syslog), is a classic escape or exploit aid
/// (open_by_handle_at, userfaultfd, io_uring, which also runs calls outside
/// seccomp's view), or enters namespaces (setns; unshare and clone are checked
/// by flag instead).
pub const DENIED_SYSCALLS: &[(&str, libc::c_long)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("kcmp", libc::SYS_kcmp),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("keyctl", libc::SYS_keyctl),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("setns", libc::SYS_setns),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("quotactl_fd", libc::SYS_quotactl_fd),
    ("syslog", libc::SYS_syslog),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("vhangup", libc::SYS_vhangup),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
];

/// CLONE_NEW* flags refused in unshare(2). CLONE_NEWTIME (0x80) is only a
/// namespace flag for unshare; in clone(2) those bits are the exit signal.
const NS_FLAGS_UNSHARE: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32
    | 0x80;
const NS_FLAGS_CLONE: u32 = NS_FLAGS_UNSHARE & !0x80;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
/// x32 syscalls are x86_64 numbers with this bit (asm/unistd.h).
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF opcodes and seccomp_data offsets (linux/filter.h, linux/seccomp.h).
const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
#[cfg(target_arch = "x86_64")]
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of args[0] (both supported arches are little-endian).
const OFF_ARG0_LO: u32 = 16;

const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Compiles the brokered-mode seccomp program for this architecture.
pub fn seccomp_filter() -> Result<Vec<libc::sock_filter>, ConfineError> {
    if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        return Err(ConfineError::UnsupportedArch);
    }
    let mut f = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, RET_KILL),
        stmt(BPF_LD_W_ABS, OFF_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    f.extend([
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, RET_EPERM),
    ]);
    let mut deny = |nr: libc::c_long, ret: u32| {
        f.push(jump(BPF_JEQ_K, nr as u32, 0, 1));
        f.push(stmt(BPF_RET_K, ret));
    };
    for &(_, nr) in DENIED_SYSCALLS {
        deny(nr, RET_EPERM);
    }
    deny(libc::SYS_clone3, RET_ENOSYS);
    // unshare and clone: refuse only when a namespace flag is set. The
    // accumulator holds the argument after the test, so reload the number.
    for (nr, mask) in [
        (libc::SYS_unshare, NS_FLAGS_UNSHARE),
        (libc::SYS_clone, NS_FLAGS_CLONE),
    ] {
        f.extend([
            jump(BPF_JEQ_K, nr as u32, 0, 3),
            stmt(BPF_LD_W_ABS, OFF_ARG0_LO),
            jump(BPF_JSET_K, mask, 0, 1),
            stmt(BPF_RET_K, RET_EPERM),
            stmt(BPF_LD_W_ABS, OFF_NR),
        ]);
    }
    f.push(stmt(BPF_RET_K, RET_ALLOW));
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the classic-BPF subset we emit against a fake seccomp_data.
    fn run(f: &[libc::sock_filter], arch: u32, nr: u32, arg0: u32) -> u32 {
        let mut pc = 0;
        let mut a = 0u32;
        loop {
            let i = f[pc];
            match i.code {
                BPF_LD_W_ABS => {
                    a = match i.k {
                        OFF_NR => nr,
                        OFF_ARCH => arch,
                        OFF_ARG0_LO => arg0,
                        k => panic!("load at {k}"),
                    };
                    pc += 1;
                }
                BPF_RET_K => return i.k,
                c => {
                    let t = match c {
                        BPF_JEQ_K => a == i.k,
                        BPF_JSET_K => a & i.k != 0,
                        #[cfg(target_arch = "x86_64")]
                        BPF_JGE_K => a >= i.k,
                        c => panic!("opcode {c}"),
                    };
                    pc += 1 + usize::from(if t { i.jt } else { i.jf });
                }
            }
        }
    }

    #[test]
    fn filter_denies_listed_and_allows_the_rest() {
        let f = seccomp_filter().unwrap();
        for &(name, nr) in DENIED_SYSCALLS {
            assert_eq!(run(&f, AUDIT_ARCH, nr as u32, 0), RET_EPERM, "{name}");
        }
        for nr in [libc::SYS_read, libc::SYS_openat, libc::SYS_execve] {
            assert_eq!(run(&f, AUDIT_ARCH, nr as u32, 0), RET_ALLOW);
        }
        let un = libc::SYS_unshare as u32;
        assert_eq!(
            run(&f, AUDIT_ARCH, un, libc::CLONE_NEWUSER as u32),
            RET_EPERM
        );
        assert_eq!(run(&f, AUDIT_ARCH, un, 0x80), RET_EPERM);
        assert_eq!(run(&f, AUDIT_ARCH, un, libc::CLONE_FILES as u32), RET_ALLOW);
        let cl = libc::SYS_clone as u32;
        assert_eq!(
            run(&f, AUDIT_ARCH, cl, libc::CLONE_NEWNET as u32),
            RET_EPERM
        );
        // fork(): SIGCHLD in the exit-signal bits must pass.
        assert_eq!(run(&f, AUDIT_ARCH, cl, libc::SIGCHLD as u32), RET_ALLOW);
        assert_eq!(run(&f, AUDIT_ARCH, libc::SYS_clone3 as u32, 0), RET_ENOSYS);
        assert_eq!(run(&f, 0x4000_0003, 0, 0), RET_KILL);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(run(&f, AUDIT_ARCH, 0x4000_0000 | 101, 0), RET_EPERM);
        assert!(f.len() < usize::from(u16::MAX));
    }

    #[test]
    fn shebang_lines() {
        assert_eq!(
            parse_shebang(b"#!/bin/sh -e\necho\n"),
            Some(Interp::Script(vec![PathBuf::from("/bin/sh")]))
        );
        match parse_shebang(b"#!/usr/bin/env -S python3 -u\n") {
            Some(Interp::Script(c)) => {
                assert_eq!(c[0], PathBuf::from("/usr/bin/env"));
                assert!(c[1].ends_with("python3"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_shebang(b"#!\n"), None);
    }

    #[test]
    fn elf_loader_of_sh() {
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        match interpreter_of(&sh).unwrap() {
            Interp::Elf(Some(l)) => assert!(l.to_string_lossy().contains("ld-"), "{l:?}"),
            other => panic!("{other:?}"),
        }
        let closure = exec_closure(&sh).unwrap();
        assert_eq!(closure.len(), 2, "{closure:?}");
        assert!(elf_interp(b"\x7fELF").is_none());
    }
}
