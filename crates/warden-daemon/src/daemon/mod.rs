//! The daemon: start-up checks, then one loop that owns all state.
//!
//! Start-up, in order: capabilities, directories, the instance lock, the
//! running marker (an unclean end means SAFE MODE), the audit log, cgroups,
//! leftover agents from an earlier run (frozen, killed, recorded), the guard,
//! the stop file watch, the control socket. Then the loop: every turn checks
//! the stop file with an uncached `lstat`, and waits for inotify, signals,
//! commands and timers. Hard halts run inline in the loop: nothing else is
//! more urgent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::agent_socket::AgentCommand;
use crate::killswitch::heartbeat::HeartbeatWatch;
use crate::killswitch::oversight::OversightWatch;
use crate::monitor::{AgentWatch, Reading, Thresholds};
use warden_core::audit::{self, Audit};
use warden_core::cgroup::{self, Cgroup, Manager};
use warden_core::config::{AgentConfig, Config};
use warden_core::halt::{self};
use warden_core::logs::AgentLog;
use warden_core::protect::Watch;
use warden_core::stopfile::StopFile;
use warden_core::supervisor::{self};
use warden_core::watchdog::Pinger;

mod agent_requests;
mod agents;
mod broker;
mod commands;
mod event_loop;
mod fleet;
mod halting;
mod kernel;
mod kills;
mod mode;
mod monitoring;
mod protection;
mod reload;
mod shutdown;
mod startup;
mod status;
mod tokens;
mod web_reads;

use agents::{policy_of, reap_pid};
use startup::make_dir;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("warden daemon must run as root with CAP_SYS_ADMIN, CAP_KILL, CAP_SETUID and CAP_SETGID (missing {0})")]
    NotPrivileged(String),
    #[error("another warden daemon is already running with state directory {dir} (lock {lock} held{pid})")]
    AlreadyRunning {
        dir: PathBuf,
        lock: PathBuf,
        pid: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error(transparent)]
    StopFile(#[from] warden_core::stopfile::StopFileError),
    #[error(transparent)]
    Watchdog(#[from] warden_core::watchdog::WatchdogError),
    #[error("tool broker: {0}")]
    Broker(String),
    #[error("{key} {path} is {problem}; warden keeps its state and logs where only root can write (chmod {fix} {path} and chown root)")]
    InsecureDir {
        key: &'static str,
        path: PathBuf,
        problem: String,
        fix: &'static str,
    },
    #[error("the audit database {path} is {problem} although this state directory has run warden before (its keys exist): refusing to start a new audit chain silently; restore the database, or start with `warden daemon --new-audit-chain` to begin a new chain (audited as such)")]
    AuditChainLost {
        path: PathBuf,
        problem: &'static str,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError {
    let path = path.to_owned();
    move |source| DaemonError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// How the daemon was started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The config file, for messages and the audit.
    pub config_path: PathBuf,
    /// Print each halt's report on stdout (the demo).
    pub print_reports: bool,
    /// Exit after the first hard halt (the demo).
    pub exit_after_halt: bool,
    /// Start a new audit chain when the database is missing, empty or
    /// unreadable (`--new-audit-chain`); the new chain's first entries say so.
    pub new_audit_chain: bool,
}

pub use mode::{Mode, ModeEvent};

/// Everything the daemon holds for one configured agent.
struct AgentRecord {
    cfg: AgentConfig,
    machine: supervisor::Agent,
    cgroup: Option<Box<dyn Cgroup>>,
    log: AgentLog,
    /// Limits asked for that the host cannot enforce (started with `warn`).
    unenforced: Vec<&'static str>,
    wake: Option<Instant>,
    /// Safety monitors of this agent.
    watch: AgentWatch,
    /// Kernel limit-hit counters at the last sample (memory.max, pids.max).
    limit_hits: (u64, u64),
    /// CPU usage at the last sample: unchanged means nothing ran.
    last_cpu: Option<u64>,
    /// The agent cgroup's CPU-usage file, kept open while it runs.
    cpu_counter: Option<cgroup::CpuCounter>,
    /// The task serving the agent's own socket while it runs.
    api_task: Option<tokio::task::JoinHandle<()>>,
    /// Its socket listener, bound before the agent starts, served after.
    api_listener: Option<std::os::unix::net::UnixListener>,
    /// Dead man's switch, when the agent has `heartbeat` configured.
    heartbeat: Option<HeartbeatWatch>,
    /// The uid its socket accepts.
    uid: u32,
    /// Frozen by a two-phase kill and held for inspection.
    frozen: bool,
    /// What its socket has seen (connections, rate-limited, bad lines...).
    api_counters: std::sync::Arc<crate::agent_socket::Counters>,
    /// Its network namespace and link (`none`, `isolated`) while it runs;
    /// dropping it removes the link.
    net: Option<warden_core::netns::AgentNet>,
}

pub struct Daemon {
    cfg: Config,
    opts: Options,
    cg: Manager,
    audit: Audit,
    stop: StopFile,
    slots: BTreeMap<String, AgentRecord>,
    mode: Mode,
    last_halt: Option<halt::Report>,
    /// The safety kernel; None while it is being restarted (no agent runs).
    kernel: Option<crate::kernel_link::Kernel>,
    /// When the kernel expects the next heartbeat.
    next_kernel_beat: Instant,
    started: Instant,
    /// Held for the daemon's lifetime: one instance per state directory.
    _lock: nix::fcntl::Flock<std::fs::File>,
    /// A halt whose cgroup did not empty: retried on every tick.
    pending_survivors: bool,
    /// Set when the loop should end (demo after a halt).
    exit_requested: bool,
    /// Self-modification watch (fanotify names the writer; inotify where
    /// fanotify is missing).
    protect: Watch,
    /// The config and protected files as last seen on disk, and the hash of
    /// the config text running.
    on_disk: protection::OnDisk,
    /// Agents removed by a reload, forgotten once down.
    retiring: reload::Retiring,
    /// systemd and hardware watchdogs.
    pinger: Pinger,
    /// Host monitors: thresholds and current readings.
    host_limits: Thresholds,
    host_readings: BTreeMap<String, Reading>,
    next_monitor: Instant,
    /// The stop file watch was lost and the halt for it already ran.
    stop_watch_halted: bool,
    /// Messages from agents' own sockets to the main loop.
    agent_tx: Option<mpsc::Sender<AgentCommand>>,
    /// warden's signing key, for heartbeat health tokens.
    key: warden_core::crypto::KeyPair,
    /// Human oversight: everything halts if nobody checks in in time.
    oversight: OversightWatch,
    /// Armed, executed and cancelled two-phase kill authorizations.
    twophase: crate::killswitch::twophase::TwoPhase,
    /// Agents' credentials (digests only); revoked at kill level 1.
    creds: crate::killswitch::credentials::CredentialStore,
    /// Tool registry, approvals, runs and the tools running now.
    broker: broker::Broker,
    /// `warden web`'s API tokens (digests only) and their roles.
    tokens: crate::web::tokens::TokenStore,
    /// The uid besides root that may send requests on behalf of a token.
    web_peer: crate::web::tokens::WebPeer,
    /// Halt counters and phase timings for `/metrics`.
    metrics: crate::web::metrics::Metrics,
    /// The fleet bridge (`warden fleet`): its node and liveness.
    fleet: fleet::FleetLink,
}

impl Daemon {
    /// The one place where the daemon's mode changes; the decision is
    /// [`Mode::on`]'s.
    fn change_mode(&mut self, event: ModeEvent) {
        let t = self.mode.on(event, self.opts.exit_after_halt);
        self.mode = t.mode;
        self.exit_requested |= t.exit;
    }
}

fn audit_event(
    kind: &str,
    agent: Option<&str>,
    uid: Option<u32>,
    data: serde_json::Value,
) -> audit::Event {
    audit::Event {
        kind: kind.into(),
        agent: agent.map(str::to_string),
        uid,
        data,
    }
}
