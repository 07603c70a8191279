//! The privileged building blocks that the daemon is made of. Nothing here
//! runs a loop of its own or talks to the network.
//!
//! - [`config`]: the TOML configuration, parsed strictly; plain data types
//!   (its submodules hold the monitors' thresholds, the tools policy and the
//!   isolated subnet) and [`units`] for sizes and durations.
//! - [`cgroup`]: v2, hybrid and v1 cgroups behind one trait: create, limit,
//!   freeze, kill, verify empty.
//! - [`spawn`]: what a child does between fork and exec (cgroup, session,
//!   PDEATHSIG, no_new_privs, capabilities, user, rlimits, fds, environment);
//!   the raw calls live in [`sys`], the only module with `unsafe`;
//!   [`confine`] builds the Landlock ruleset and seccomp filter of brokered
//!   agents.
//! - [`netns`]: each agent's network namespace and, for `isolated`, its veth
//!   link to the host; [`netlink`] is the small rtnetlink client it uses.
//! - [`supervisor`]: the explicit state machine of every agent: states,
//!   events, and the one function that decides each transition.
//! - [`halt`]: the ladder: freeze, capture evidence, kill, thaw, verify empty.
//! - [`evidence`]: the snapshot of a frozen tree; [`logs`] the agents' output.
//! - [`stopfile`]: the stop file watch (inotify plus an uncached stat).
//! - [`safemode`]: the SAFE MODE latch and the clean-shutdown marker.
//! - [`protect`]: the watch on warden's own files.
//! - [`watchdog`]: systemd watchdog pings, gated by health.
//! - [`clock`]: the one wall clock.
//! - [`audit`]: the hash-chained, signed audit log; [`crypto`] its keys and
//!   canonical JSON; [`casepack`] the self-contained evidence file;
//!   [`authz`] signed, single-use resume authorizations.
#![deny(unsafe_code)]

pub mod audit;
pub mod authz;
pub mod casepack;
pub mod cgroup;
pub mod clock;
pub mod config;
pub mod confine;
pub mod crypto;
pub mod evidence;
pub mod halt;
pub mod logs;
pub mod netlink;
pub mod netns;
pub mod protect;
pub mod safemode;
pub mod spawn;
pub mod stopfile;
pub mod supervisor;
#[allow(unsafe_code)]
pub mod sys;
pub mod units;
pub mod watchdog;
