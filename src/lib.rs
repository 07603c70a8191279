//! warden: a privileged supervisor that keeps AI agents inside a boundary a
//! human controls.
//!
//! A map of the components:
//!
//! - [`config`]: the TOML configuration, parsed strictly.
//! - [`cgroup`]: v2, hybrid and v1 cgroups behind one trait: create, limit,
//!   freeze, kill, verify empty.
//! - [`spawn`]: what a child does between fork and exec (cgroup, session,
//!   PDEATHSIG, no_new_privs, capabilities, user, rlimits, fds, environment);
//!   the raw calls live in [`sys`], the only module with `unsafe`.
//! - [`netns`]: each agent's network namespace and, for `isolated`, its veth
//!   link to the host; [`netlink`] is the small rtnetlink client it uses.
//! - [`supervisor`]: the explicit state machine of every agent: states,
//!   events, and the one function that decides each transition.
//! - [`halt`]: the ladder: freeze, capture evidence, kill, thaw, verify empty.
//! - [`evidence`]: the snapshot of a frozen tree.
//! - [`stopfile`]: the stop file watch (inotify plus an uncached stat).
//! - [`safemode`]: the SAFE MODE latch and the clean-shutdown marker.
//! - [`guard`]: a small process that kills every agent if the daemon dies.
//! - [`monitor`]: the safety monitors (CPU, memory, forks, disk, host,
//!   tasks, governance); [`protect`] watches warden's own files.
//! - [`watchdog`]: systemd and hardware watchdog pings, gated by health.
//! - [`authz`]: signed, single-use resume authorizations.
//! - [`killswitch`]: heartbeats, human oversight, two-phase kills, the kill
//!   levels and the agents' revocable credentials.
//! - [`broker`]: the tool broker: registry, argument schemas, the policy
//!   decision, approvals and runs.
//! - [`audit`]: the hash-chained, signed audit log.
//! - [`control`]: the JSON-lines protocol of the control socket and its server.
//! - [`agentapi`]: each agent's own socket (heartbeat, tasks, the broker's
//!   messages): protocol, bounded and rate-limited server, client.
//! - [`daemon`]: wires the above into the main loop.
//! - [`cli`]: the `warden` command, one file per verb.
#![deny(unsafe_code)]

pub mod agentapi;
pub mod audit;
pub mod authz;
pub mod broker;
pub mod casepack;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod confine;
pub mod control;
pub mod crypto;
pub mod daemon;
pub mod demo;
pub mod evidence;
pub mod guard;
pub mod halt;
pub mod killswitch;
pub mod logs;
pub mod monitor;
pub mod netlink;
pub mod netns;
pub mod protect;
pub mod safemode;
pub mod spawn;
pub mod stopfile;
pub mod supervisor;
#[allow(unsafe_code)]
pub mod sys;
pub mod watchdog;
