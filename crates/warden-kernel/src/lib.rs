//! warden's safety kernel: a tiny root process that halts the agents even
//! when the daemon hangs. It owns the halt path and nothing else. See
//! docs/kernel.md for the command line, the protocol and the failure matrix.
//!
//! Components:
//! - [`machine`]: THE state machine; every decision is made in `step`.
//! - [`run`]: the single-threaded poll loop that turns the world into events
//!   and performs the machine's actions.
//! - [`args`]: the command line.
//! - [`protocol`]: the line protocol on stdin/stdout.
//! - [`stopfile`]: the stop file, by inotify and an uncached lstat timer.
//! - [`cgroup`]: freeze, thaw, kill, populated, members of the v2 and v1
//!   freezer parents.
//! - [`latch`]: the SAFE MODE latch, written atomically.
//! - [`report`]: evidence of the frozen tree and the report file.
//! - [`watchdog`]: the hardware watchdog.
//! - [`sys`]: the only `unsafe` code.
#![deny(unsafe_code)]

pub mod args;
pub mod cgroup;
pub mod latch;
pub mod machine;
pub mod protocol;
pub mod report;
pub mod run;
pub mod stopfile;
pub mod sys;
pub mod watchdog;

/// Log line to stderr, with the prefix the daemon's log collector expects.
#[macro_export]
macro_rules! log {
    ($($t:tt)*) => { eprintln!("warden kernel: {}", format_args!($($t)*)) };
}

/// The binary's entry point; returns the exit code (docs/kernel.md: 0 done,
/// 1 failure or survivors, 2 bad arguments).
pub fn main_from_args<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> i32 {
    match args::parse(args.into_iter().skip(1)) {
        Ok(cfg) => run::run(cfg),
        Err(e) => {
            log!("{e}");
            2
        }
    }
}
