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
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::agent_socket::AgentCommand;
use crate::control_socket::{self as server, Command};
use crate::guard::Guard;
use crate::killswitch::heartbeat::{HeartbeatConfig, HeartbeatWatch};
use crate::killswitch::oversight::OversightWatch;
use crate::monitor::{self, AgentWatch, Breach, Reading, Thresholds};
use warden_core::audit::{self, Audit, Safety};
use warden_core::cgroup::{self, Cgroup, Layout, Limits, Manager};
use warden_core::config::{AgentConfig, Config, Unenforced};
use warden_core::halt::{self, Member};
use warden_core::logs::AgentLog;
use warden_core::protect::Protect;
use warden_core::safemode::{self, Latch};
use warden_core::stopfile::StopFile;
use warden_core::supervisor::{self, Action, Event, ExitStatus, State};
use warden_core::watchdog::{Hardware, Health, Pinger};
use warden_proto::agent::{AgentRequest, AgentResponse, ErrorCode};
use warden_proto::control::{ErrorKind, Request, Response};

mod broker;
mod twophase;

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
}

/// The daemon's overall state.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Running,
    /// After a hard halt or an unclean end; only a human clears it.
    Safe(Latch),
    /// SIGTERM seen: stopping every agent, then exiting.
    ShuttingDown,
}

struct Slot {
    cfg: AgentConfig,
    sm: supervisor::Agent,
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
    slots: BTreeMap<String, Slot>,
    mode: Mode,
    last_halt: Option<halt::Report>,
    guard: Option<Guard>,
    started: Instant,
    /// Held for the daemon's lifetime: one instance per state directory.
    _lock: nix::fcntl::Flock<std::fs::File>,
    /// A halt whose cgroup did not empty: retried on every tick.
    pending_survivors: bool,
    /// Set when the loop should end (demo after a halt).
    exit_requested: bool,
    /// Self-modification watch.
    protect: Protect,
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
}

fn required_caps() -> Result<(), DaemonError> {
    use caps::{CapSet, Capability};
    let need = [
        Capability::CAP_SYS_ADMIN,
        Capability::CAP_KILL,
        Capability::CAP_SETUID,
        Capability::CAP_SETGID,
    ];
    let missing: Vec<String> = need
        .iter()
        .filter(|c| !caps::has_cap(None, CapSet::Effective, **c).unwrap_or(false))
        .map(|c| c.to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(DaemonError::NotPrivileged(missing.join(", ")))
    }
}

fn make_dir(path: &Path, mode: u32) -> Result<(), DaemonError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !path.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(io_err("cannot create directory", path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err("cannot set mode of", path))?;
    }
    Ok(())
}

fn lock(cfg: &Config) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    use std::io::{Read, Seek, Write};
    let path = cfg.lock_path();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("cannot open lock file", &path))?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut l) => {
            let _ = l.set_len(0);
            let _ = l.rewind();
            let _ = writeln!(*l, "{}", std::process::id());
            Ok(l)
        }
        Err((mut f, _)) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            let pid = pid.trim();
            Err(DaemonError::AlreadyRunning {
                dir: cfg.state_dir.clone(),
                lock: path,
                pid: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" by pid {pid}")
                },
            })
        }
    }
}

fn limits_of(a: &AgentConfig) -> Limits {
    Limits {
        memory_max: a.memory_max.map(|b| b.0),
        pids_max: a.pids_max,
        cpu_max: a.cpu_max,
    }
}

fn policy_of(cfg: &Config, a: &AgentConfig) -> supervisor::Policy {
    supervisor::Policy {
        restart: a.restart,
        backoff: cfg.restart_backoff.0,
        backoff_max: cfg.restart_backoff_max.0,
        crash_exits: cfg.crash_loop.exits,
        crash_window: cfg.crash_loop.window.0,
        grace: cfg.grace.0,
    }
}

fn ev(kind: &str, agent: Option<&str>, uid: Option<u32>, data: serde_json::Value) -> audit::Event {
    audit::Event {
        kind: kind.into(),
        agent: agent.map(str::to_string),
        uid,
        data,
    }
}

impl Daemon {
    /// Everything before the loop. Fails with a clear error, having started nothing.
    pub fn start(cfg: Config, opts: Options) -> Result<Daemon, DaemonError> {
        // warden never blocks its stop signals: a parent that started it
        // with SIGTERM or SIGINT blocked must not make it unstoppable. Done
        // before any thread exists, so every thread inherits the empty mask.
        let _ = nix::sys::signal::SigSet::all().thread_unblock();
        required_caps()?;
        make_dir(&cfg.state_dir, 0o700)?;
        make_dir(&cfg.log_dir, 0o750)?;
        make_dir(&cfg.log_dir.join("agents"), 0o750)?;
        let lock = lock(&cfg)?;
        let marker = cfg.clean_marker_path();
        let unclean = safemode::mark_running(&marker).map_err(io_err("cannot write", &marker))?;
        let audit = Audit::open_with(
            &cfg.state_dir,
            &cfg.log_dir,
            audit::AuditOptions {
                checkpoint_every: cfg.checkpoint_every.unwrap_or(64),
                witness_command: cfg.witness_command.clone(),
            },
        )?;
        let config_hash = std::fs::read(&opts.config_path)
            .map(|b| {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(b))
            })
            .unwrap_or_default();
        audit.record(ev(
            "daemon_start",
            None,
            Some(nix::unistd::getuid().as_raw()),
            json!({"pid": std::process::id(), "version": env!("CARGO_PKG_VERSION"),
                   "config": opts.config_path, "config_sha256": config_hash,
                   "agents": cfg.agents.iter().map(|a| a.name()).collect::<Vec<_>>()}),
        ))?;
        for a in cfg.agents.iter().filter(|a| a.allow_root) {
            audit.record(ev(
                "allow_root",
                Some(a.name()),
                None,
                json!({"user": a.user.get_ref()}),
            ))?;
        }

        let cg = Manager::detect(&cfg.cgroup_mount, &cfg.cgroup_root)?;
        cg.setup()?;
        tracing::info!(layout = ?cg.layout(), root = cg.root(), "cgroups ready");

        let stop = StopFile::new(&cfg.stop_file)?;
        let mut slots = BTreeMap::new();
        for a in &cfg.agents {
            slots.insert(
                a.name().to_string(),
                Slot {
                    cfg: a.clone(),
                    sm: supervisor::Agent::new(policy_of(&cfg, a)),
                    cgroup: None,
                    log: AgentLog::new(&cfg.log_dir, a.name()),
                    unenforced: Vec::new(),
                    wake: None,
                    watch: AgentWatch::new(a.name(), cfg.thresholds(a)),
                    limit_hits: (0, 0),
                    last_cpu: None,
                    cpu_counter: None,
                    api_task: None,
                    api_listener: None,
                    heartbeat: None,
                    uid: 0,
                    frozen: false,
                    api_counters: Default::default(),
                    net: None,
                },
            );
        }
        let mut protected = warden_core::protect::default_paths(&opts.config_path);
        protected.extend(cfg.protected_paths.iter().cloned());
        protected.extend(cfg.resume_key.iter().cloned());
        // The tool registry is policy: changed only while the agents are down.
        protected.extend(cfg.tools.iter().cloned());
        let protect = Protect::new(&protected)
            .map_err(io_err("cannot watch protected paths", Path::new("/")))?;
        let hardware = cfg.watchdog.as_ref().map(Hardware::open).transpose()?;
        let pinger = Pinger::new(hardware, cfg.watchdog_interval());
        audit.record(ev(
            "monitors",
            None,
            None,
            json!({"protected_paths": protect.paths, "limits": format!("{:?}", cfg.limits),
                   "watchdog": cfg.watchdog.as_ref().map(|w| w.device.clone()),
                   "systemd_watchdog": pinger.enabled()}),
        ))?;
        let host_limits = Thresholds::resolve(&[&cfg.limits]);
        let key =
            warden_core::crypto::load_or_generate(&cfg.state_dir.join("keys")).map_err(|e| {
                DaemonError::Io {
                    what: "cannot load the signing key in",
                    path: cfg.state_dir.join("keys"),
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
        let oversight = OversightWatch::new(
            cfg.oversight_timeout.map(|d| d.0),
            warden_core::evidence::now_ms(),
        );
        let ks_dir = cfg.state_dir.join("killswitch");
        make_dir(&ks_dir, 0o700)?;
        let store_err = |path: PathBuf| {
            move |e: String| DaemonError::Io {
                what: "cannot open",
                path,
                source: std::io::Error::other(e),
            }
        };
        let ks_auth = ks_dir.join("authorizations.json");
        let twophase = crate::killswitch::twophase::TwoPhase::open(&ks_auth, cfg.two_person)
            .map_err(|e| store_err(ks_auth.clone())(e.to_string()))?;
        let ks_creds = ks_dir.join("credentials.json");
        let creds = crate::killswitch::credentials::CredentialStore::open(&ks_creds)
            .map_err(|e| store_err(ks_creds.clone())(e.to_string()))?;
        let broker = broker::Broker::open(&cfg, &key)?;
        let mut d = Daemon {
            broker,
            twophase,
            creds,
            agent_tx: None,
            key,
            oversight,
            protect,
            pinger,
            host_limits,
            host_readings: BTreeMap::new(),
            next_monitor: Instant::now(),
            stop_watch_halted: false,
            mode: Mode::Running,
            cg,
            audit,
            stop,
            slots,
            last_halt: None,
            guard: None,
            started: Instant::now(),
            _lock: lock,
            pending_survivors: false,
            exit_requested: false,
            opts,
            cfg,
        };

        // Leftovers of an earlier run come down before anything else.
        let leftovers = d.cg.existing_agents()?;
        if !leftovers.is_empty() {
            d.kill_leftovers(&leftovers);
        }
        match warden_core::netns::remove_leftovers(&d.cfg) {
            Ok(links) if !links.is_empty() => {
                tracing::warn!("removed agent links of an earlier run: {links:?}")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot remove agent links of an earlier run: {e}"),
        }
        if let Some(l) = safemode::get(&d.cfg.latch_path()) {
            d.mode = Mode::Safe(l);
        } else if unclean || !leftovers.is_empty() {
            let reason = if unclean {
                "the previous daemon did not end cleanly (killed, crashed or power lost)"
                    .to_string()
            } else {
                format!(
                    "agent cgroups of an earlier run were found: {}",
                    leftovers.join(", ")
                )
            };
            let l = Latch::new("unclean_end", &reason, None, None);
            safemode::set(&d.cfg.latch_path(), &l)
                .map_err(io_err("cannot write", &d.cfg.latch_path()))?;
            d.audit.record_safety(
                ev(
                    "safe_mode_entered",
                    None,
                    None,
                    json!({"trigger": "unclean_end", "reason": reason}),
                ),
                d.safety("safe_mode_entered", &reason),
            )?;
            d.mode = Mode::Safe(l);
        }
        if let Mode::Safe(l) = &d.mode {
            tracing::warn!(
                "SAFE MODE: {} ({}); agents stay down until `warden resume`",
                l.reason,
                l.trigger
            );
            for s in d.slots.values_mut() {
                s.sm.state = State::Halted;
            }
        }
        let exe = std::fs::read_link("/proc/self/exe")
            .map_err(io_err("cannot read", Path::new("/proc/self/exe")))?;
        d.guard = Some(
            Guard::spawn(&exe, &d.cfg.cgroup_mount, d.cg.root(), &d.cfg.latch_path())
                .map_err(io_err("cannot start guard", &exe))?,
        );
        Ok(d)
    }

    fn safety(&self, event: &str, reason: &str) -> Safety {
        Safety {
            event: event.into(),
            reason: reason.into(),
            autonomy_state: match &self.mode {
                Mode::Running => "running",
                Mode::Safe(_) => "halted",
                Mode::ShuttingDown => "stopping",
            }
            .into(),
            governance_state: "supervised".into(),
            human_notified: true,
        }
    }

    fn kill_leftovers(&mut self, names: &[String]) {
        let cgs: Vec<(String, Box<dyn Cgroup>)> = names
            .iter()
            .map(|n| (n.clone(), self.cg.agent(n)))
            .collect();
        let members: Vec<Member<'_>> = cgs
            .iter()
            .map(|(n, c)| Member {
                name: n.clone(),
                cgroup: c.as_ref(),
                log: None,
            })
            .collect();
        let agents = self.cg.agents();
        let (report, evidence) = halt::run(
            agents.as_ref(),
            &members,
            "startup",
            "leftover agent cgroups from an earlier run",
            true,
            Instant::now(),
            self.cfg.empty_deadline.0,
        );
        for (_, c) in &cgs {
            if let Err(e) = c.remove() {
                tracing::warn!("{e}");
            }
        }
        tracing::warn!(
            "killed {} leftover processes of earlier agents {:?}",
            report.processes,
            names
        );
        self.seal_halt(&report, &evidence, None);
    }

    /// Stores evidence, audits the halt with its timings, signs a checkpoint.
    fn seal_halt(
        &mut self,
        report: &halt::Report,
        evidence: &warden_core::evidence::Evidence,
        uid: Option<u32>,
    ) {
        let value = serde_json::to_value(evidence).unwrap_or_default();
        let evidence_id = match self.audit.store_evidence(&report.id, &value) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::error!("cannot store evidence of halt {}: {e}", report.id);
                None
            }
        };
        let sha = audit::evidence_sha256(&value);
        let data = json!({
            "halt_id": report.id, "evidence_id": evidence_id, "evidence_sha256": sha,
            "trigger": report.trigger, "reason": report.reason, "hard": report.hard,
            "timings_us": report.timings, "processes": report.processes,
            "survivors": report.survivors, "agents": report.agents, "errors": report.errors,
        });
        let event = if report.hard {
            "safety_halt"
        } else {
            "orderly_stop"
        };
        let r = self.audit.record_safety(
            ev("halt", None, uid, data),
            self.safety(event, &report.reason),
        );
        if let Err(e) = r.and_then(|_| self.audit.checkpoint()) {
            tracing::error!("cannot audit halt {}: {e}", report.id);
        }
    }

    /// The main loop. Returns the exit code.
    pub fn run(mut self) -> i32 {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("cannot start runtime: {e}");
                return 1;
            }
        };
        rt.block_on(async move { self.main_loop().await })
    }

    async fn main_loop(&mut self) -> i32 {
        let listener = match server::bind(&self.cfg.socket, &self.cfg.socket_group)
            .and_then(tokio::net::UnixListener::from_std)
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(
                    "cannot bind control socket {}: {e}",
                    self.cfg.socket.display()
                );
                self.hard_halt(
                    "startup",
                    &format!("control socket unavailable: {e}"),
                    None,
                    Instant::now(),
                );
                return 1;
            }
        };
        let (tx, mut cmds) = mpsc::channel::<Command>(64);
        tokio::spawn(server::serve(listener, tx));
        let (agent_tx, mut agent_cmds) = mpsc::channel::<AgentCommand>(256);
        self.agent_tx = Some(agent_tx);
        let (tool_tx, mut tools_done) = mpsc::unbounded_channel::<broker::ToolDone>();
        self.broker.set_done_channel(tool_tx);
        let stop_fd: OwnedFd = match self.stop.inotify_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!("cannot watch stop file: {e}");
                return 1;
            }
        };
        let stop_async = match warden_core::sys::async_readable(stop_fd) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("cannot watch stop file: {e}");
                return 1;
            }
        };
        let (mut sigterm, mut sigint, mut sigchld, mut sighup) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::child()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
            _ => {
                tracing::error!("cannot install signal handlers");
                return 1;
            }
        };
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        self.notify_status();
        tracing::info!(
            "warden running: {} agents, stop file {}, socket {}",
            self.slots.len(),
            self.cfg.stop_file.display(),
            self.cfg.socket.display()
        );
        if self.mode == Mode::Running && !self.stop.present() {
            let names: Vec<String> = self
                .slots
                .iter()
                .filter(|(_, s)| s.cfg.autostart)
                .map(|(n, _)| n.clone())
                .collect();
            for n in names {
                self.dispatch(&n, Event::Start);
            }
        }

        let protect_async = match self
            .protect
            .fd()
            .try_clone_to_owned()
            .and_then(warden_core::sys::async_readable)
        {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("cannot watch protected paths: {e}");
                return 1;
            }
        };
        enum Wake {
            Protect,
            StopFile,
            Term,
            Int,
            Child,
            Hup,
            Cmd(Option<Command>),
            Agent(Option<AgentCommand>),
            ToolDone(Option<broker::ToolDone>),
            Timer,
        }
        loop {
            // Uncached check on every turn, whatever woke us.
            if self.stop.present() {
                self.on_stop_file(Instant::now());
            }
            if self.exit_requested {
                break;
            }
            if self.mode == Mode::ShuttingDown && self.all_down() {
                break;
            }
            let next = self.next_wake();
            let wake = tokio::select! {
                biased;
                r = stop_async.readable() => {
                    if let Ok(mut g) = r { g.clear_ready(); }
                    Wake::StopFile
                }
                r = protect_async.readable() => {
                    if let Ok(mut g) = r { g.clear_ready(); }
                    Wake::Protect
                }
                _ = sigint.recv() => Wake::Int,
                _ = sigterm.recv() => Wake::Term,
                _ = sigchld.recv() => Wake::Child,
                _ = sighup.recv() => Wake::Hup,
                c = cmds.recv() => Wake::Cmd(c),
                c = agent_cmds.recv() => Wake::Agent(c),
                d = tools_done.recv() => Wake::ToolDone(d),
                _ = tokio::time::sleep_until(next.into()) => Wake::Timer,
            };
            let now = Instant::now();
            match wake {
                Wake::Protect => {
                    if let Some(v) = self.protect.read() {
                        self.breach(
                            Breach {
                                monitor: "self_modification".into(),
                                agent: None,
                                value: format!("{} {}", v.path.display(), v.what),
                                threshold: "no change while warden runs".into(),
                            },
                            now,
                        );
                    }
                }
                Wake::StopFile => {
                    if self.stop.on_readable() {
                        self.on_stop_file(now);
                    }
                }
                Wake::Int => self.hard_halt("signal", "SIGINT received", None, now),
                Wake::Term => {
                    if self.mode == Mode::ShuttingDown {
                        self.hard_halt("signal", "second SIGTERM during orderly stop", None, now);
                        break;
                    }
                    self.begin_shutdown();
                }
                Wake::Child => self.reap(now),
                Wake::Hup => {
                    // SIGHUP reloads the tool registry, as `warden reload` does.
                    let r = self.reload(None);
                    if !r.ok {
                        tracing::error!("SIGHUP: {}", r.error.unwrap_or_default());
                    }
                }
                Wake::Cmd(Some(c)) => self.command(c, now),
                Wake::Cmd(None) => {}
                Wake::Agent(Some(c)) => self.agent_command(c, now),
                Wake::Agent(None) => {}
                Wake::ToolDone(Some(d)) => self.tool_done(d),
                Wake::ToolDone(None) => {}
                Wake::Timer => {}
            }
            // Timers, monitors and watchdog pings run on every turn that they
            // are due, whatever woke the loop.
            self.tick(Instant::now());
        }
        self.finish();
        0
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut next = (now + Duration::from_secs(1))
            .min(self.next_monitor)
            .min(self.pinger.next());
        if let Some(w) = self.broker.next_deadline() {
            next = next.min(w);
        }
        for s in self.slots.values() {
            if let Some(w) = s.wake {
                next = next.min(w);
            }
            if matches!(s.sm.state, State::Stopping { .. }) {
                next = next.min(now + Duration::from_millis(20));
            }
        }
        next.max(now)
    }

    fn all_down(&self) -> bool {
        self.slots.values().all(|s| {
            matches!(
                s.sm.state,
                State::Stopped | State::Failed { .. } | State::Halted
            )
        })
    }

    fn notify_status(&self) {
        let text = match &self.mode {
            Mode::Running => {
                let running = self
                    .slots
                    .values()
                    .filter(|s| matches!(s.sm.state, State::Running { .. }))
                    .count();
                format!("running: {running}/{} agents", self.slots.len())
            }
            Mode::Safe(l) => format!("SAFE MODE: {}", l.reason),
            Mode::ShuttingDown => "stopping agents".to_string(),
        };
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&text)]);
    }

    fn on_stop_file(&mut self, t0: Instant) {
        // Already down and latched: nothing to do unless something runs.
        let populated = self.cg.agents().populated().unwrap_or(true);
        if matches!(self.mode, Mode::Safe(_)) && !populated && self.all_down() {
            return;
        }
        let reason = format!("stop file {} present", self.cfg.stop_file.display());
        self.hard_halt("stop_file", &reason, None, t0);
    }

    /// Freeze, evidence, kill, verify empty for every agent; then SAFE MODE.
    pub fn hard_halt(&mut self, trigger: &str, reason: &str, uid: Option<u32>, t0: Instant) {
        let names: Vec<String> = self.slots.keys().cloned().collect();
        let scope = self.cg.agents();
        let members: Vec<Member<'_>> = self
            .slots
            .iter()
            .filter_map(|(n, s)| {
                s.cgroup.as_ref().map(|c| Member {
                    name: n.clone(),
                    cgroup: c.as_ref(),
                    log: Some(s.log.clone()),
                })
            })
            .collect();
        let (report, evidence) = halt::run(
            scope.as_ref(),
            &members,
            trigger,
            reason,
            true,
            t0,
            self.cfg.empty_deadline.0,
        );
        drop(members);
        // Latch first: from here on a crash still comes back halted.
        let latch = Latch::new(trigger, reason, Some(report.id.clone()), uid);
        if let Err(e) = safemode::set(&self.cfg.latch_path(), &latch) {
            tracing::error!(
                "cannot write SAFE MODE latch {}: {e}",
                self.cfg.latch_path().display()
            );
        }
        let was_shutting_down = self.mode == Mode::ShuttingDown;
        self.mode = Mode::Safe(latch);
        let now = Instant::now();
        for n in &names {
            let s = self.slots.get_mut(n).expect("slot");
            if let Some(pid) = s.sm.state.pid() {
                reap_pid(pid, true);
            }
            s.sm.handle(Event::Halted, now);
            s.wake = None;
            if let Some(c) = s.cgroup.take() {
                if let Err(e) = c.remove() {
                    tracing::warn!("{e}");
                    s.cgroup = Some(c);
                }
            }
            s.log.note(&format!("hard halt {}: {}", report.id, reason));
        }
        for n in &names {
            self.agent_down(n);
        }
        self.pending_survivors = !report.complete();
        self.print_report(&report);
        tracing::warn!(
            "hard halt {} ({trigger}: {reason}): {} processes, frozen {} us, killed {} us, empty {} us, survivors {:?}",
            report.id,
            report.processes,
            report.timings.frozen_us,
            report.timings.killed_us,
            report.timings.empty_us,
            report.survivors
        );
        self.seal_halt(&report, &evidence, uid);
        drop(evidence);
        warden_core::sys::release_free_memory();
        self.last_halt = Some(report);
        self.notify_status();
        if self.opts.exit_after_halt || was_shutting_down {
            self.exit_requested = true;
        }
    }

    fn print_report(&self, r: &halt::Report) {
        if !self.opts.print_reports {
            return;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        println!("\n=== HALT {} ===", r.id);
        println!("trigger   : {} ({})", r.trigger, r.reason);
        println!("agents    : {}", r.agents.join(", "));
        println!("processes : {} captured while frozen", r.processes);
        println!(
            "frozen    : {:>8.2} ms after the trigger (freeze requested at {:.2} ms)",
            ms(r.timings.frozen_us),
            ms(r.timings.freeze_requested_us)
        );
        println!("evidence  : {:>8.2} ms", ms(r.timings.evidence_us));
        println!("killed    : {:>8.2} ms", ms(r.timings.killed_us));
        println!("empty     : {:>8.2} ms", ms(r.timings.empty_us));
        println!(
            "survivors : {}",
            if r.survivors.is_empty() {
                "none".to_string()
            } else {
                format!("{:?}", r.survivors)
            }
        );
        for e in &r.errors {
            println!("note      : {e}");
        }
        println!("SAFE MODE latched: agents stay down until `warden resume --reason ...`");
    }

    fn begin_shutdown(&mut self) {
        tracing::info!("SIGTERM: orderly stop of every agent, then exit");
        let _ = self.audit.record(ev(
            "shutdown_requested",
            None,
            None,
            json!({"signal": "SIGTERM"}),
        ));
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        let was_safe = matches!(self.mode, Mode::Safe(_));
        let names: Vec<String> = self.slots.keys().cloned().collect();
        if !was_safe {
            self.mode = Mode::ShuttingDown;
        } else {
            // Nothing runs in SAFE MODE; leave the latch as it is.
            self.exit_requested = true;
        }
        for n in names {
            self.dispatch(&n, Event::Stop);
        }
        self.notify_status();
    }

    fn finish(&mut self) {
        // Anything still up (a failed kill, a demo exit) comes down now.
        if self.cg.agents().populated().unwrap_or(false) {
            let t0 = Instant::now();
            let scope = self.cg.agents();
            let (report, evidence) = halt::run(
                scope.as_ref(),
                &[],
                "exit",
                "daemon exiting",
                true,
                t0,
                self.cfg.empty_deadline.0,
            );
            self.seal_halt(&report, &evidence, None);
        }
        for s in self.slots.values_mut() {
            if let Some(c) = s.cgroup.take() {
                let _ = c.remove();
            }
            s.net = None;
        }
        for n in self.cg.existing_agents().unwrap_or_default() {
            let _ = self.cg.agent(&n).remove();
        }
        let _ = self.cg.teardown();
        for n in self.slots.keys() {
            twophase::release_cred_dir(&self.cfg.credentials_dir.join(n));
        }
        let _ = std::fs::remove_file(&self.cfg.socket);
        let _ = self
            .audit
            .record(ev("daemon_exit", None, None, json!({"clean": true})));
        let _ = self.audit.checkpoint();
        if let Err(e) = safemode::mark_clean_exit(&self.cfg.clean_marker_path()) {
            tracing::error!("cannot mark clean exit: {e}");
        }
        if let Some(g) = self.guard.take() {
            g.finish_clean();
        }
        if let Some(h) = self.pinger.hardware.take() {
            h.close_orderly();
        }
        tracing::info!("warden exited cleanly");
    }

    /// Feeds an event to one agent's state machine and carries out its actions.
    fn dispatch(&mut self, name: &str, event: Event) {
        let now = Instant::now();
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        let before = slot.sm.state.name();
        let actions = slot.sm.handle(event, now);
        slot.wake = None;
        for a in actions {
            match a {
                Action::Spawn => self.spawn(name),
                Action::Term => {
                    let slot = &self.slots[name];
                    if let Some(c) = &slot.cgroup {
                        let n = halt::term(c.as_ref(), slot.sm.state.pid());
                        slot.log.note(&format!("SIGTERM sent to {n} processes"));
                    }
                }
                Action::KillLadder => self.kill_one(name, "orderly", "grace period over"),
                Action::ReapLeftovers => self.reap_leftovers(name),
                Action::WakeAt(t) => {
                    if let Some(s) = self.slots.get_mut(name) {
                        s.wake = Some(t);
                    }
                }
                Action::Note(n) => {
                    let _ =
                        self.audit
                            .record(ev("agent_note", Some(name), None, json!({"note": n})));
                    if let Some(s) = self.slots.get(name) {
                        s.log.note(&n);
                    }
                }
            }
        }
        let after = self.slots[name].sm.state.name();
        if let State::Failed { reason } = &self.slots[name].sm.state {
            if before != "failed"
                && reason.starts_with("crash loop")
                && self.cfg.crash_loop_action == warden_core::config::CrashLoopAction::Halt
                && self.slots[name].watch.t.on("crash_loop")
            {
                let b = Breach {
                    monitor: "crash_loop".into(),
                    agent: Some(name.to_string()),
                    value: reason.clone(),
                    threshold: format!(
                        "{} exits within {}",
                        self.cfg.crash_loop.exits, self.cfg.crash_loop.window
                    ),
                };
                self.breach(b, now);
                return;
            }
        }
        if before != after {
            tracing::info!(agent = name, "{before} -> {after}");
            self.notify_status();
        }
    }

    fn spawn(&mut self, name: &str) {
        let refuse = match &self.mode {
            Mode::Safe(l) => Some(format!("SAFE MODE ({})", l.reason)),
            Mode::ShuttingDown => Some("daemon is shutting down".into()),
            Mode::Running if self.stop.present() => Some("stop file present".into()),
            Mode::Running => None,
        };
        if let Some(why) = refuse {
            let s = self.slots.get_mut(name).expect("slot");
            s.sm.state = State::Halted;
            tracing::warn!(agent = name, "not started: {why}");
            return;
        }
        let result = self.try_spawn(name);
        let now = Instant::now();
        let s = self.slots.get_mut(name).expect("slot");
        match result {
            Ok((pid, out, err)) => {
                s.sm.handle(Event::Spawned { pid }, now);
                s.watch.reset();
                s.limit_hits = (0, 0);
                s.last_cpu = None;
                s.cpu_counter = None;
                if let (Some(l), Some(tx)) = (s.api_listener.take(), self.agent_tx.clone()) {
                    match tokio::net::UnixListener::from_std(l) {
                        Ok(l) => {
                            let limits = crate::agent_socket::Limits {
                                rate_per_sec: s.cfg.api_rate,
                                burst: s.cfg.api_burst,
                                ..Default::default()
                            };
                            s.api_task = Some(tokio::spawn(crate::agent_socket::serve_with(
                                l,
                                name.to_string(),
                                s.uid,
                                limits,
                                s.api_counters.clone(),
                                tx,
                            )))
                        }
                        Err(e) => tracing::error!(agent = name, "cannot serve agent socket: {e}"),
                    }
                }
                s.heartbeat = s.cfg.heartbeat.and_then(|h| {
                    HeartbeatConfig::new(h.0, s.cfg.missed.unwrap_or(3))
                        .ok()
                        .map(|c| {
                            HeartbeatWatch::new(
                                name,
                                c,
                                self.key.clone(),
                                warden_core::evidence::now_ms(),
                            )
                        })
                });
                s.log.note(&format!("started pid {pid}"));
                tokio::spawn(s.log.clone().drain(out));
                tokio::spawn(s.log.clone().drain(err));
                let data = json!({"pid": pid, "cgroup": s.cgroup.as_ref().map(|c| c.path().to_string()),
                                  "restarts": s.sm.restarts, "unenforced_limits": s.unenforced,
                                  "command": s.cfg.command.get_ref(), "user": s.cfg.user.get_ref(),
                                  "network": warden_core::netns::status(&self.cfg, name, s.net.as_ref())});
                let kind = if s.sm.restarts > 0 {
                    "agent_restart"
                } else {
                    "agent_start"
                };
                if let Err(e) = self.audit.record(ev(kind, Some(name), None, data)) {
                    self.audit_failed(&e.to_string());
                }
            }
            Err(reason) => {
                tracing::error!(agent = name, "cannot start: {reason}");
                s.log.note(&format!("cannot start: {reason}"));
                if let Some(c) = s.cgroup.take() {
                    let _ = c.remove();
                }
                self.dispatch(name, Event::SpawnFailed { reason });
            }
        }
    }

    fn try_spawn(&mut self, name: &str) -> Result<(i32, OwnedFd, OwnedFd), String> {
        let policy = self.cfg.unenforced_limits;
        let s = self.slots.get_mut(name).expect("slot");
        let limits = limits_of(&s.cfg);
        let missing = self.cg.unenforceable(&limits);
        if !missing.is_empty() {
            match s.cfg.unenforced(policy) {
                Unenforced::Refuse => {
                    return Err(format!(
                        "this host cannot enforce {} (set unenforced_limits = \"warn\" to run without them)",
                        missing.join(", ")
                    ))
                }
                Unenforced::Warn => {
                    tracing::warn!(agent = name, "running without {}: the host cannot enforce them", missing.join(", "));
                }
            }
        }
        s.unenforced = missing;
        // A cgroup left from the last run of this agent must be empty first.
        let existing = self.cg.agent(name);
        if existing.populated().unwrap_or(false) {
            halt::clear(existing.as_ref(), self.cfg.empty_deadline.0).map_err(|e| e.to_string())?;
        }
        // A fresh namespace per run (the last run's link goes first), made
        // before the cgroup so that a failure leaves neither behind.
        s.net = None;
        let net = warden_core::netns::AgentNet::for_agent(&self.cfg, name)
            .map_err(|e| format!("cannot set up its network: {e}"))?;
        let cg = self
            .cg
            .create_agent(name, &limits)
            .map_err(|e| e.to_string())?;
        // The agent's own socket exists before its first instruction runs.
        let id = warden_core::spawn::resolve_identity(&s.cfg).map_err(|e| e.to_string())?;
        let listener = crate::agent_socket::bind(&self.cfg.agent_socket_dir, name, id.uid, id.gid)
            .map_err(|e| {
                format!(
                    "cannot bind its socket in {}: {e}",
                    self.cfg.agent_socket_dir.display()
                )
            })?;
        let sock = crate::agent_socket::socket_path(&self.cfg.agent_socket_dir, name);
        let cred_dir = self.cfg.credentials_dir.join(name);
        let extra = [
            ("WARDEN_SOCKET".to_string(), sock.display().to_string()),
            (
                crate::killswitch::credentials::ENV_DIR.to_string(),
                cred_dir.display().to_string(),
            ),
        ];
        twophase::prepare_cred_dir(&cred_dir, id.uid, id.gid)
            .map_err(|e| format!("cannot prepare {}: {e}", cred_dir.display()))?;
        s.api_listener = Some(listener);
        s.uid = id.uid;
        let netns = match &net {
            Some(n) => n
                .join()
                .map_err(|e| format!("cannot share its network namespace: {e}"))?,
            None => warden_core::sys::exec::NetNs::Host,
        };
        let extra: Vec<_> = extra
            .into_iter()
            .chain(net.iter().flat_map(|n| n.env()))
            .collect();
        let started = warden_core::spawn::start_in(&s.cfg, cg.as_ref(), &extra, netns);
        s.cgroup = Some(cg);
        let st = started.map_err(|e| e.to_string())?;
        s.net = net;
        Ok((st.pid, st.stdout, st.stderr))
    }

    /// The ladder on one agent (orderly stop after grace, operator kill).
    fn kill_one(&mut self, name: &str, trigger: &str, reason: &str) {
        match self.ladder_one(name, trigger, reason, false) {
            None => self.dispatch(name, Event::Empty),
            Some(report) => {
                self.slots[name].log.note(&format!(
                    "killed after grace: {} processes, empty after {} us",
                    report.processes, report.timings.empty_us
                ));
                if report.complete() {
                    self.dispatch(name, Event::Empty);
                }
            }
        }
    }

    /// The halt ladder on one agent's cgroup (evidence, kill, verify empty),
    /// then reaps its main process and seals the evidence; the cgroup is
    /// removed once empty, else the kill is retried. None if it has no cgroup.
    fn ladder_one(
        &mut self,
        name: &str,
        trigger: &str,
        reason: &str,
        hard: bool,
    ) -> Option<halt::Report> {
        let s = self.slots.get(name)?;
        let cg = s.cgroup.as_ref()?;
        let members = [Member {
            name: name.to_string(),
            cgroup: cg.as_ref(),
            log: Some(s.log.clone()),
        }];
        let (report, evidence) = halt::run(
            cg.as_ref(),
            &members,
            trigger,
            reason,
            hard,
            Instant::now(),
            self.cfg.empty_deadline.0,
        );
        if let Some(p) = s.sm.state.pid() {
            reap_pid(p, true);
        }
        self.seal_halt(&report, &evidence, None);
        if report.complete() {
            self.remove_cgroup(name);
        } else {
            self.pending_survivors = true;
        }
        Some(report)
    }

    /// The agent is down: stop serving its socket, forget its heartbeat.
    fn agent_down(&mut self, name: &str) {
        self.broker_agent_down(name);
        if let Some(s) = self.slots.get_mut(name) {
            if let Some(t) = s.api_task.take() {
                t.abort();
            }
            s.api_listener = None;
            s.heartbeat = None;
            s.frozen = false;
            s.net = None;
            let _ = crate::agent_socket::unbind(&self.cfg.agent_socket_dir, name);
        }
    }

    fn remove_cgroup(&mut self, name: &str) {
        self.agent_down(name);
        if let Some(s) = self.slots.get_mut(name) {
            if let Some(c) = s.cgroup.take() {
                if let Err(e) = c.remove() {
                    tracing::warn!("{e}");
                    s.cgroup = Some(c);
                }
            }
        }
    }

    fn reap_leftovers(&mut self, name: &str) {
        let Some(s) = self.slots.get(name) else {
            return;
        };
        let Some(cg) = s.cgroup.as_ref() else { return };
        if cg.populated().unwrap_or(false) {
            let n = cg.procs().map(|p| p.len()).unwrap_or(0);
            let _ = halt::clear(cg.as_ref(), self.cfg.empty_deadline.0);
            s.log.note(&format!(
                "main process exited; killed {n} processes it left behind"
            ));
            let _ = self.audit.record(ev(
                "agent_leftovers_killed",
                Some(name),
                None,
                json!({"processes": n}),
            ));
        }
        self.remove_cgroup(name);
    }

    fn reap(&mut self, now: Instant) {
        let pids: Vec<(String, i32)> = self
            .slots
            .iter()
            .filter_map(|(n, s)| s.sm.state.pid().map(|p| (n.clone(), p)))
            .collect();
        for (name, pid) in pids {
            if let Some(status) = reap_pid(pid, false) {
                let s = &self.slots[&name];
                s.log.note(&format!("pid {pid} ended: {status}"));
                let _ = self.audit.record(ev(
                    "agent_exit",
                    Some(&name),
                    None,
                    json!({"pid": pid, "status": status.to_string()}),
                ));
                self.dispatch(&name, Event::Exited { status });
            }
        }
        self.broker.reap_stragglers();
        if let Some(g) = self.guard.as_mut() {
            if !g.alive() {
                tracing::error!("guard process died");
                self.guard = None;
                if !matches!(self.mode, Mode::Safe(_)) {
                    self.hard_halt("guard", "the guard process died", None, now);
                }
                self.respawn_guard();
            }
        }
    }

    fn respawn_guard(&mut self) {
        match std::fs::read_link("/proc/self/exe").and_then(|exe| {
            Guard::spawn(
                &exe,
                &self.cfg.cgroup_mount,
                self.cg.root(),
                &self.cfg.latch_path(),
            )
        }) {
            Ok(g) => self.guard = Some(g),
            Err(e) => tracing::error!("cannot restart guard: {e}"),
        }
    }

    fn audit_failed(&mut self, err: &str) {
        tracing::error!("audit log failed: {err}");
        if !matches!(self.mode, Mode::Safe(_)) {
            self.hard_halt(
                "audit",
                &format!("audit log unwritable: {err}"),
                None,
                Instant::now(),
            );
        }
    }

    fn tick(&mut self, now: Instant) {
        if !self.stop.watch_alive {
            if !self.stop_watch_halted && !matches!(self.mode, Mode::Safe(_)) {
                self.stop_watch_halted = true;
                let reason = format!(
                    "stop file watch on {} lost",
                    self.cfg
                        .stop_file
                        .parent()
                        .unwrap_or(Path::new("/"))
                        .display()
                );
                self.hard_halt("stop_file_watch", &reason, None, now);
            }
            if self.stop.repair() {
                self.stop_watch_halted = false;
            }
        }
        let monitor_due = now >= self.next_monitor;
        if monitor_due {
            self.next_monitor = now + self.cfg.monitor_interval.0;
            if let Some(b) = self.sample_monitors(now) {
                self.breach(b, now);
            }
            for (name, b) in self.silent_agents() {
                self.halt_silent_agent(&name, b);
            }
            if let Some(b) = self.check_oversight() {
                self.breach(b, now);
            }
            if let Err(e) = self.twophase.expire(warden_core::evidence::now_ms()) {
                tracing::error!("cannot persist expired kill authorizations: {e}");
            }
        }
        // Parked approval waits every turn; request expiry with the monitors.
        self.broker_tick(now, monitor_due);
        if now >= self.pinger.next() {
            let health = self.health();
            self.pinger.tick(health, now);
        }
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for n in &names {
            let s = &self.slots[n];
            if let State::Stopping { .. } = s.sm.state {
                let empty = s
                    .cgroup
                    .as_ref()
                    .map(|c| !c.populated().unwrap_or(true))
                    .unwrap_or(true);
                if empty {
                    if let Some(p) = s.sm.state.pid() {
                        if let Some(st) = reap_pid(p, true) {
                            self.dispatch(n, Event::Exited { status: st });
                        }
                    }
                    self.remove_cgroup(n);
                    self.dispatch(n, Event::Empty);
                    continue;
                }
            }
            if self.slots[n].wake.is_some_and(|w| w <= now)
                || matches!(self.slots[n].sm.state, State::Stopping { .. })
            {
                self.dispatch(n, Event::Tick);
            }
        }
        if self.pending_survivors {
            let scope = self.cg.agents();
            if scope.populated().unwrap_or(true) {
                let (report, evidence) = halt::run(
                    scope.as_ref(),
                    &[],
                    "retry",
                    "survivors of an earlier halt",
                    true,
                    now,
                    self.cfg.empty_deadline.0,
                );
                self.pending_survivors = !report.complete();
                self.seal_halt(&report, &evidence, None);
            } else {
                self.pending_survivors = false;
            }
        }
        // In SAFE MODE nothing may run: anything found is halted again.
        if matches!(self.mode, Mode::Safe(_)) && self.cg.agents().populated().unwrap_or(false) {
            self.hard_halt(
                "safe_mode",
                "processes found in agent cgroups during SAFE MODE",
                None,
                now,
            );
        }
        if !self.audit.healthy() {
            self.audit_failed("writer stopped");
        }
    }

    /// Samples every running agent and the host; returns the first breach.
    fn sample_monitors(&mut self, now: Instant) -> Option<monitor::Breach> {
        let mut first = None;
        let mut hits = Vec::new();
        for (name, s) in self.slots.iter_mut() {
            let Some(cg) = s.cgroup.as_ref() else {
                continue;
            };
            if !matches!(s.sm.state, State::Running { .. } | State::Stopping { .. }) {
                continue;
            }
            if s.cpu_counter.is_none() {
                s.cpu_counter = cgroup::CpuCounter::open(cg.as_ref());
            }
            let cpu = match &s.cpu_counter {
                Some(c) => c.read(),
                None => cg.cpu_usage_usec().ok().flatten(),
            };
            if cpu.is_some() && cpu == s.last_cpu {
                s.watch.quiet(now);
                continue;
            }
            s.last_cpu = cpu;
            let stats = cg.stats().unwrap_or_default();
            let now_hits = (
                stats.memory_events_max.unwrap_or(0),
                stats.pids_events_max.unwrap_or(0),
            );
            if now_hits.0 > s.limit_hits.0 || now_hits.1 > s.limit_hits.1 {
                hits.push((
                    name.clone(),
                    now_hits.0 - s.limit_hits.0.min(now_hits.0),
                    now_hits.1 - s.limit_hits.1.min(now_hits.1),
                ));
            }
            s.limit_hits = now_hits;
            let pids = cg.procs().unwrap_or_default();
            let sample = monitor::Sample {
                cpu_usec: stats.cpu_usage_usec,
                cpu_stall_usec: stats.cpu_stall_usec,
                proc_io: monitor::proc_write_bytes(&pids),
                memory: stats.memory_current,
                memory_max: s.cfg.memory_max.map(|b| b.0),
                pids,
                pids_max: s.cfg.pids_max,
                io_write: stats.io_write_bytes,
            };
            if let Some(b) = s.watch.sample(&sample, now) {
                first.get_or_insert(b);
            }
        }
        // The kernel refused memory or a fork: audited, not itself a halt
        // (the memory and pids monitors decide that).
        for (name, mem, pids) in hits {
            let _ = self.audit.record(ev(
                "limit_hit",
                Some(&name),
                None,
                json!({"memory_max_events": mem, "pids_max_events": pids}),
            ));
        }
        let paths = [self.cfg.state_dir.as_path(), self.cfg.log_dir.as_path()];
        let host = monitor::sample_host(&paths);
        if let Some(b) = monitor::check_host(&self.host_limits, &host, &mut self.host_readings) {
            first.get_or_insert(b);
        }
        first
    }

    /// Dead man's switches: the silent agents, each with its breach.
    fn silent_agents(&self) -> Vec<(String, Breach)> {
        if matches!(self.mode, Mode::Safe(_)) {
            return Vec::new();
        }
        let now_ms = warden_core::evidence::now_ms();
        self.slots
            .iter()
            .filter(|(_, s)| matches!(s.sm.state, State::Running { .. }) && !s.frozen)
            .filter_map(|(n, s)| {
                s.heartbeat
                    .as_ref()
                    .and_then(|h| h.check(now_ms))
                    .map(|b| (n.clone(), b))
            })
            .collect()
    }

    /// Oversight: everything halts if no human checked in in time.
    fn check_oversight(&self) -> Option<Breach> {
        if matches!(self.mode, Mode::Safe(_)) {
            return None;
        }
        self.oversight.check(warden_core::evidence::now_ms())
    }

    /// A silent agent is hard-halted on its own: evidence from its frozen
    /// tree, kill, cgroup verified empty. It stays down (`halted`) until an
    /// operator starts it; the other agents and the host carry on.
    fn halt_silent_agent(&mut self, name: &str, b: Breach) {
        let reason = b.reason();
        tracing::error!(agent = name, "{reason}");
        if let Err(e) = self.audit.record_safety(
            ev("monitor_breach", Some(name), None, json!(b)),
            self.safety("agent_halted", &reason),
        ) {
            self.audit_failed(&e.to_string());
        }
        let report = self.ladder_one(name, "heartbeat", &reason, true);
        if let Some(r) = &report {
            self.slots[name].log.note(&format!(
                "halted: {reason}; {} processes, empty after {} us",
                r.processes, r.timings.empty_us
            ));
            if self.opts.print_reports {
                self.print_report(r);
            }
        }
        if let Some(s) = self.slots.get_mut(name) {
            s.sm.handle(Event::Halted, Instant::now());
            s.heartbeat = None;
        }
        self.last_halt = report;
        self.notify_status();
    }

    /// A message from an agent's own socket; its identity is the socket's.
    fn agent_command(&mut self, c: AgentCommand, now: Instant) {
        let name = c.agent.clone();
        let Some(s) = self.slots.get_mut(&name) else {
            let _ = c
                .reply
                .send(AgentResponse::err(ErrorCode::Refused, "unknown agent"));
            return;
        };
        let resp = match &c.request {
            AgentRequest::Heartbeat => match s.heartbeat.as_mut() {
                Some(h) => {
                    let token = h.beat(warden_core::evidence::now_ms());
                    AgentResponse::ok(json!({"token": token}))
                }
                None => AgentResponse::ok(
                    json!({"token": null, "note": "no heartbeat configured for this agent"}),
                ),
            },
            AgentRequest::Task { description } => {
                let breach = s.watch.task(now);
                let count = s
                    .watch
                    .readings
                    .get("tasks")
                    .map(|r| r.value)
                    .unwrap_or(0.0);
                let _ = self.audit.record(ev(
                    "agent_task",
                    Some(&name),
                    None,
                    json!({"description": description, "pid": c.peer_pid, "tasks_24h": count}),
                ));
                let _ = c.reply.send(AgentResponse::ok(json!({"tasks_24h": count})));
                if let Some(b) = breach {
                    self.breach(b, now);
                }
                return;
            }
            AgentRequest::Whoami => AgentResponse::err(
                ErrorCode::BadRequest,
                "whoami is answered by the agent socket itself",
            ),
            AgentRequest::Propose { tool, args, token } => {
                let p = crate::broker::Proposal {
                    tool: tool.clone(),
                    args: args.clone(),
                    token: token.clone(),
                };
                self.propose(&name, p, c.peer_pid, c.reply, now);
                return;
            }
            AgentRequest::RunStart { goal } => self.run_start(&name, goal),
            AgentRequest::RunEnd { run_id, reason } => {
                self.run_end(&name, run_id, reason.as_deref())
            }
            AgentRequest::ApprovalWait {
                request_id,
                timeout_ms,
            } => {
                self.approval_wait(&name, request_id, *timeout_ms, c.reply, now);
                return;
            }
        };
        let _ = c.reply.send(resp);
    }

    /// A monitor tripped: safety event, hard halt, SAFE MODE.
    fn breach(&mut self, b: Breach, now: Instant) {
        if matches!(self.mode, Mode::Safe(_)) && !self.cg.agents().populated().unwrap_or(true) {
            // Already halted and empty: record, do not halt again.
            let _ = self.audit.record_safety(
                ev("monitor_breach", b.agent.as_deref(), None, json!(b)),
                self.safety("runaway_detected", &b.reason()),
            );
            return;
        }
        let reason = b.reason();
        tracing::error!("{reason}");
        if let Err(e) = self.audit.record_safety(
            ev("monitor_breach", b.agent.as_deref(), None, json!(b)),
            self.safety("runaway_detected", &reason),
        ) {
            tracing::error!("cannot audit breach: {e}");
        }
        self.hard_halt("monitor", &reason, None, now);
    }

    /// Every health check that gates the watchdog pings.
    fn health(&self) -> Health {
        Health {
            main_loop: true,
            stop_file_watch: self.stop.watch_alive,
            audit: self.audit.healthy(),
            cgroupfs: self.cg.agents().populated().is_ok(),
            protect_watch: true,
        }
    }

    /// A task reported by an agent (agent API): feeds the tasks-per-day monitor.
    pub fn report_task(&mut self, agent: &str, now: Instant) {
        let b = self.slots.get_mut(agent).and_then(|s| s.watch.task(now));
        if let Some(b) = b {
            self.breach(b, now);
        }
    }

    /// A policy decision on an agent's request (tool broker): feeds the
    /// governance monitor.
    pub fn report_decision(&mut self, agent: &str, rejected: bool, now: Instant) {
        let b = self
            .slots
            .get_mut(agent)
            .and_then(|s| s.watch.governance(rejected));
        if let Some(b) = b {
            self.breach(b, now);
        }
    }

    fn command(&mut self, c: Command, now: Instant) {
        let req_name = c.request.name();
        let mut data = serde_json::to_value(&c.request).unwrap_or_default();
        // A token being checked is a secret: never into the audit log.
        if let Request::CredVerify { .. } = &c.request {
            data["token"] = json!("<redacted>");
        }
        if let Err(e) = self.audit.record(ev(
            "command",
            None,
            Some(c.uid),
            json!({"request": data, "pid": c.pid}),
        )) {
            // Fail closed: nothing that changes state runs unaudited. Reads
            // still answer, so a human can see why everything stopped.
            self.audit_failed(&e.to_string());
            if !c.request.is_read() {
                let _ = c.reply.send(Response::err(
                    ErrorKind::Failed,
                    format!("audit log unwritable, refusing {req_name}: {e}"),
                ));
                return;
            }
        }
        let resp = self.answer(c.request, c.uid, now);
        tracing::debug!(cmd = req_name, uid = c.uid, ok = resp.ok, "command");
        let _ = c.reply.send(resp);
    }

    fn answer(&mut self, req: Request, uid: u32, now: Instant) -> Response {
        match req {
            Request::Ping => Response::ok(json!({"pong": true})),
            Request::Status => Response::ok(self.status_json()),
            Request::Agents => Response::ok(json!(self.agents_json())),
            Request::Logs { agent, offset } => self.logs(&agent, offset),
            Request::Start { agent } | Request::Stop { agent } | Request::Restart { agent }
                if !self.slots.contains_key(&agent) =>
            {
                Response::err(ErrorKind::NotFound, format!("no agent named {agent:?}"))
            }
            Request::Start { agent } => {
                if let Err(r) = self.may_start() {
                    return r;
                }
                self.dispatch(&agent, Event::Start);
                self.agent_reply(&agent)
            }
            Request::Restart { agent } => {
                if let Err(r) = self.may_start() {
                    return r;
                }
                self.dispatch(&agent, Event::Restart);
                self.agent_reply(&agent)
            }
            Request::Stop { agent } => {
                self.dispatch(&agent, Event::Stop);
                self.agent_reply(&agent)
            }
            Request::Arm {
                agent,
                all,
                levels,
                reason,
                ttl,
            } => self.arm(agent, all, levels, &reason, ttl, uid),
            Request::Execute { id } => self.execute(&id, uid),
            Request::Disarm { id } => self.disarm(&id, uid),
            Request::Authorizations => {
                Response::ok(json!({"authorizations": self.twophase.list()}))
            }
            Request::CredIssue {
                agent,
                kind,
                name,
                revoke_command,
            } => self.cred_issue(&agent, &kind, &name, revoke_command, uid),
            Request::CredVerify { token } => self.cred_verify(&token),
            Request::CredList => Response::ok(json!({"credentials": self.creds.list()})),
            Request::CredRevoke { id, agent } => self.cred_revoke(id, agent, uid),
            Request::Checkin => {
                let c = self.oversight.checkin(uid, warden_core::evidence::now_ms());
                Response::ok(json!({"checked_in": c, "next_due_ms": self.oversight.due_ms()}))
            }
            Request::Approvals => self.approvals_list(),
            Request::Approve { id, ttl } => self.approve(&id, ttl, uid),
            Request::Reject { id, reason } => self.reject(&id, &reason, uid),
            Request::Runs { agent, reason } => self.runs_list(agent, reason),
            Request::RunShow { id } => self.run_show(&id),
            Request::Reload => self.reload(Some(uid)),
            Request::Halt { reason } => {
                if reason.trim().is_empty() {
                    return Response::err(ErrorKind::BadRequest, "halt needs a reason");
                }
                self.hard_halt("cli", &reason, Some(uid), now);
                Response::ok(json!({"halt": self.last_halt}))
            }
            Request::Resume {
                reason,
                authorization,
            } => self.resume(&reason, authorization, uid),
        }
    }

    fn may_start(&self) -> Result<(), Response> {
        match &self.mode {
            Mode::Safe(l) => Err(Response::err(
                ErrorKind::Refused,
                format!(
                    "SAFE MODE ({}): run `warden resume --reason ...` first",
                    l.reason
                ),
            )),
            Mode::ShuttingDown => Err(Response::err(ErrorKind::Refused, "daemon is shutting down")),
            Mode::Running if self.stop.present() => Err(Response::err(
                ErrorKind::Refused,
                format!("stop file {} is present", self.cfg.stop_file.display()),
            )),
            Mode::Running => Ok(()),
        }
    }

    fn resume(
        &mut self,
        reason: &str,
        authorization: Option<serde_json::Value>,
        uid: u32,
    ) -> Response {
        if reason.trim().is_empty() {
            return Response::err(ErrorKind::BadRequest, "resume needs a reason");
        }
        if self.stop.present() {
            return Response::err(
                ErrorKind::Refused,
                format!(
                    "stop file {} is present: remove it before resuming",
                    self.cfg.stop_file.display()
                ),
            );
        }
        let Mode::Safe(latch) = self.mode.clone() else {
            return Response::err(ErrorKind::Refused, "not in SAFE MODE: nothing to resume");
        };
        if self.pending_survivors || self.cg.agents().populated().unwrap_or(true) {
            return Response::err(
                ErrorKind::Refused,
                "agent cgroups are not empty yet: the halt is still being retried",
            );
        }
        let mut authorized_by = None;
        if let Some(key_path) = &self.cfg.resume_key {
            let checked = (|| {
                let a = warden_core::authz::parse(
                    authorization
                        .as_ref()
                        .ok_or(warden_core::authz::AuthzError::Missing)?,
                )?;
                let key = warden_core::authz::load_public(key_path)?;
                warden_core::authz::check(
                    &a,
                    &key,
                    &warden_core::authz::host_id(),
                    warden_core::evidence::now_ms(),
                )?;
                warden_core::authz::consume(
                    &self.cfg.state_dir.join("resume-nonces"),
                    &a.statement.nonce,
                )?;
                Ok::<_, warden_core::authz::AuthzError>(a)
            })();
            match checked {
                Ok(a) => authorized_by = Some(a.statement),
                Err(e) => {
                    let _ = self.audit.record(ev(
                        "resume_refused",
                        None,
                        Some(uid),
                        json!({"reason": reason, "why": e.to_string()}),
                    ));
                    return Response::err(ErrorKind::Refused, format!("resume refused: {e}"));
                }
            }
        }
        let r = self.audit.record_safety(
            ev(
                "safe_mode_left",
                None,
                Some(uid),
                json!({"reason": reason, "latch": latch, "authorization": authorized_by}),
            ),
            Safety {
                event: "resume".into(),
                reason: reason.into(),
                autonomy_state: "resuming".into(),
                governance_state: "human_authorized".into(),
                human_notified: true,
            },
        );
        if let Err(e) = r {
            return Response::err(
                ErrorKind::Failed,
                format!("cannot audit the resume, staying halted: {e}"),
            );
        }
        if let Err(e) = safemode::clear(&self.cfg.latch_path()) {
            return Response::err(ErrorKind::Failed, format!("cannot clear the latch: {e}"));
        }
        self.mode = Mode::Running;
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for n in names {
            let autostart = self.slots[&n].cfg.autostart;
            if autostart {
                self.dispatch(&n, Event::Resume);
            } else {
                self.slots.get_mut(&n).expect("slot").sm.state = State::Stopped;
            }
        }
        self.notify_status();
        Response::ok(json!({"resumed": true, "by_uid": uid, "reason": reason, "cleared": latch}))
    }

    fn agent_reply(&self, agent: &str) -> Response {
        let a = self.agent_json(agent, &self.slots[agent]);
        if let State::Failed { reason } = &self.slots[agent].sm.state {
            return Response::err(ErrorKind::Failed, format!("agent {agent} failed: {reason}"));
        }
        Response::ok(a)
    }

    fn logs(&self, agent: &str, offset: Option<u64>) -> Response {
        let Some(s) = self.slots.get(agent) else {
            return Response::err(ErrorKind::NotFound, format!("no agent named {agent:?}"));
        };
        match offset {
            None => Response::ok(
                json!({"data": s.log.tail_text(), "next_offset": file_len(&s.log.path)}),
            ),
            Some(off) => {
                use std::io::{Read, Seek, SeekFrom};
                let mut data = Vec::new();
                let mut next = off;
                if let Ok(mut f) = std::fs::File::open(&s.log.path) {
                    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                    let start = off.min(len);
                    if f.seek(SeekFrom::Start(start)).is_ok() {
                        let _ = (&mut f).take(64 * 1024).read_to_end(&mut data);
                    }
                    next = start + data.len() as u64;
                }
                Response::ok(json!({"data": String::from_utf8_lossy(&data), "next_offset": next}))
            }
        }
    }

    fn agent_json(&self, name: &str, s: &Slot) -> serde_json::Value {
        let (stats, pids) = match &s.cgroup {
            Some(c) => (c.stats().ok(), c.procs().unwrap_or_default()),
            None => (None, vec![]),
        };
        json!({
            "name": name,
            "state": twophase::state_name(&s.sm.state, s.frozen),
            "reason": match &s.sm.state { State::Failed { reason } => Some(reason.clone()), _ => None },
            "pid": s.sm.state.pid(),
            "pids": pids,
            "cgroup": s.cgroup.as_ref().map(|c| c.path().to_string()),
            "cpu_usec": stats.as_ref().and_then(|s| s.cpu_usage_usec),
            "memory_bytes": stats.as_ref().and_then(|s| s.memory_current),
            "restarts": s.sm.restarts,
            "last_exit": s.sm.last_exit.map(|e: ExitStatus| e.to_string()),
            "user": s.cfg.user.get_ref(),
            "limits": {"memory_max": s.cfg.memory_max.map(|b| b.0), "pids_max": s.cfg.pids_max, "cpu_max": s.cfg.cpu_max},
            "unenforced_limits": s.unenforced,
            "monitors": s.watch.readings,
            "heartbeat_deadline_ms": s.heartbeat.as_ref().map(|h| h.deadline_ms()),
            "socket": crate::agent_socket::socket_path(&self.cfg.agent_socket_dir, name),
            "api": s.api_counters.snapshot(),
            "network": warden_core::netns::status(&self.cfg, name, s.net.as_ref()),
        })
    }

    fn agents_json(&self) -> Vec<serde_json::Value> {
        self.slots
            .iter()
            .map(|(n, s)| self.agent_json(n, s))
            .collect()
    }

    fn status_json(&self) -> serde_json::Value {
        let (state, safe) = match &self.mode {
            Mode::Running => ("running", None),
            Mode::Safe(l) => ("safe_mode", Some(l.clone())),
            Mode::ShuttingDown => ("stopping", None),
        };
        json!({
            "daemon": {
                "pid": std::process::id(),
                "host_id": warden_core::authz::host_id(),
                "version": env!("CARGO_PKG_VERSION"),
                "state": state,
                "safe_mode": safe,
                "uptime_s": self.started.elapsed().as_secs(),
                "cgroup_layout": match self.cg.layout() { Layout::V2 => "v2", Layout::Hybrid => "hybrid", Layout::V1 => "v1" },
                "cgroup_root": self.cg.root(),
                "stop_file": self.cfg.stop_file,
                "stop_file_present": self.stop.present(),
                "stop_file_watch": self.stop.watch_alive,
                "guard_pid": self.guard.as_ref().map(|g| g.pid()),
                "audit_healthy": self.audit.healthy(),
                "config": self.opts.config_path,
            },
            "agents": self.agents_json(),
            "host_monitors": self.host_readings,
            "oversight": {"last_checkin": self.oversight.last(), "due_ms": self.oversight.due_ms()},
            "broker": self.broker.status_json(),
            "health": self.pinger.last,
            "watchdog": {
                "enabled": self.pinger.enabled(),
                "device": self.pinger.hardware.as_ref().map(|h| h.path().to_path_buf()),
                "pings": self.pinger.hardware.as_ref().map(|h| h.pings),
            },
            "last_halt": self.last_halt,
        })
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Reaps our child `pid` if it has exited. With `wait`, waits up to a second
/// (after a kill the zombie appears within microseconds).
fn reap_pid(pid: i32, wait: bool) -> Option<ExitStatus> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::Pid;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => return Some(ExitStatus::Code(c)),
            Ok(WaitStatus::Signaled(_, s, _)) => return Some(ExitStatus::Signal(s as i32)),
            Ok(WaitStatus::StillAlive) if wait && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(WaitStatus::StillAlive) => return None,
            Ok(_) => return None,
            // ECHILD: already reaped.
            Err(_) => return None,
        }
    }
}
