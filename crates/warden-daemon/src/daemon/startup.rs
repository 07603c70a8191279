//! Start-up, in order: capabilities, directories, the instance lock, the
//! running marker (an unclean end means SAFE MODE), the audit log, cgroups,
//! leftover agents from an earlier run (frozen, killed, recorded), the guard,
//! the stop file watch. Everything fails with a clear error, having started nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use super::*;
use crate::killswitch::oversight::OversightWatch;
use crate::monitor::{AgentWatch, Thresholds};
use warden_core::audit::{self, Audit};
use warden_core::cgroup::{Cgroup, Manager};
use warden_core::config::Config;
use warden_core::halt::{self, Member};
use warden_core::logs::AgentLog;
use warden_core::protect::{AgentCgroups, Watch};
use warden_core::safemode::{self, Latch};
use warden_core::stopfile::StopFile;
use warden_core::supervisor::{self, Event};
use warden_core::watchdog::{Hardware, Pinger};

pub(super) fn required_caps() -> Result<(), DaemonError> {
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

pub(super) fn make_dir(path: &Path, mode: u32) -> Result<(), DaemonError> {
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

/// Refuses a state or log directory that anyone but root can write: whoever
/// can write there can replace the latch, the database or the logs.
pub(super) fn check_private_dir(
    key: &'static str,
    path: &Path,
    fix: &'static str,
) -> Result<(), DaemonError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(io_err("cannot stat", path))?;
    let problem = if m.mode() & 0o022 != 0 {
        format!(
            "writable by {} (mode {:04o})",
            if m.mode() & 0o002 != 0 {
                "every user"
            } else {
                "its group"
            },
            m.mode() & 0o7777
        )
    } else if m.uid() != nix::unistd::geteuid().as_raw() {
        format!("owned by uid {}", m.uid())
    } else {
        return Ok(());
    };
    Err(DaemonError::InsecureDir {
        key,
        path: path.to_owned(),
        problem,
        fix,
    })
}

/// What became of the audit database since the last start, if it is gone.
/// A state directory with keys has run warden before, so a missing or empty
/// database there is a lost chain, not a first start.
pub(super) fn lost_audit_chain(state_dir: &Path) -> Option<(PathBuf, &'static str)> {
    let db = state_dir.join(audit::schema::DB_FILE);
    if !state_dir.join("keys").exists() {
        return None;
    }
    match std::fs::metadata(&db) {
        Err(_) => Some((db, "missing")),
        Ok(m) if m.len() == 0 => Some((db, "empty")),
        Ok(_) => None,
    }
}

/// Moves an unreadable database (and its WAL files) aside, for
/// `--new-audit-chain`; returns where it went.
fn move_aside(db: &Path) -> Option<PathBuf> {
    let to = db.with_extension(format!("db.broken-{}", warden_core::clock::now_ms()));
    std::fs::rename(db, &to).ok()?;
    for ext in ["-wal", "-shm"] {
        let mut from = db.as_os_str().to_owned();
        from.push(ext);
        let mut dst = to.as_os_str().to_owned();
        dst.push(ext);
        let _ = std::fs::rename(&from, &dst);
    }
    Some(to)
}

pub(super) fn lock(cfg: &Config) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
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

impl Daemon {
    /// Everything before the loop. Fails with a clear error, having started nothing.
    pub fn start(cfg: Config, opts: Options) -> Result<Daemon, DaemonError> {
        // warden never blocks its stop signals: a parent that started it
        // with SIGTERM or SIGINT blocked must not make it unstoppable. Done
        // before any thread exists, so every thread inherits the empty mask.
        let _ = nix::sys::signal::SigSet::all().thread_unblock();
        required_caps()?;
        // Room for descriptors: control connections are capped, and a halt
        // must never run out of them (#18 item 5).
        match warden_core::sys::raise_nofile(65536) {
            Ok(n) => tracing::debug!("open file limit {n}"),
            Err(e) => tracing::warn!("cannot raise the open file limit: {e}"),
        }
        make_dir(&cfg.state_dir, 0o700)?;
        make_dir(&cfg.log_dir, 0o750)?;
        make_dir(&cfg.log_dir.join("agents"), 0o750)?;
        check_private_dir("state_dir", &cfg.state_dir, "0700")?;
        check_private_dir("log_dir", &cfg.log_dir, "0750")?;
        let lock = lock(&cfg)?;
        let lost = lost_audit_chain(&cfg.state_dir);
        if let (Some((path, problem)), false) = (&lost, opts.new_audit_chain) {
            return Err(DaemonError::AuditChainLost {
                path: path.clone(),
                problem,
            });
        }
        let marker = cfg.clean_marker_path();
        let unclean = safemode::mark_running(&marker).map_err(io_err("cannot write", &marker))?;
        let audit_opts = || audit::AuditOptions {
            checkpoint_every: cfg.checkpoint_every.unwrap_or(64),
            witness_command: cfg.witness_command.clone(),
        };
        let mut moved = None;
        let audit = match Audit::open_with(&cfg.state_dir, &cfg.log_dir, audit_opts()) {
            Err(e @ audit::AuditError::Store { .. }) if opts.new_audit_chain => {
                let db = cfg.state_dir.join(audit::schema::DB_FILE);
                tracing::error!(
                    "audit database unusable ({e}); --new-audit-chain: moving it aside"
                );
                moved = move_aside(&db);
                Audit::open_with(&cfg.state_dir, &cfg.log_dir, audit_opts())?
            }
            Err(e @ audit::AuditError::Store { .. }) => {
                tracing::error!(
                    "if the audit database is corrupt, `warden daemon --new-audit-chain` moves it aside and begins a new chain"
                );
                return Err(e.into());
            }
            r => r?,
        };
        if opts.new_audit_chain && (lost.is_some() || moved.is_some()) {
            audit.record_safety(
                audit_event(
                    "new_audit_chain",
                    None,
                    Some(nix::unistd::getuid().as_raw()),
                    json!({"previous": lost.as_ref().map(|l| l.1).unwrap_or("unreadable"),
                           "moved_to": moved}),
                ),
                audit::Safety {
                    event: "new_audit_chain".into(),
                    reason: "started with --new-audit-chain: the previous audit chain is lost"
                        .into(),
                    autonomy_state: "starting".into(),
                    governance_state: "supervised".into(),
                    human_notified: true,
                },
            )?;
        }
        let config_hash = std::fs::read(&opts.config_path)
            .map(|b| {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(b))
            })
            .unwrap_or_default();
        audit.record(audit_event(
            "daemon_start",
            None,
            Some(nix::unistd::getuid().as_raw()),
            json!({"pid": std::process::id(), "version": env!("CARGO_PKG_VERSION"),
                   "config": opts.config_path, "config_sha256": config_hash,
                   "agents": cfg.agents.iter().map(|a| a.name()).collect::<Vec<_>>()}),
        ))?;
        for a in cfg.agents.iter().filter(|a| a.allow_root) {
            audit.record(audit_event(
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
        if let Err(e) = warden_core::stopfile::arm_placeholder(&cfg.stop_file) {
            tracing::warn!(
                "cannot create the stop placeholder {}: {e}",
                warden_core::stopfile::placeholder_path(&cfg.stop_file).display()
            );
        }
        let mut slots = BTreeMap::new();
        for a in &cfg.agents {
            slots.insert(
                a.name().to_string(),
                AgentRecord {
                    cfg: a.clone(),
                    machine: supervisor::Agent::new(policy_of(&cfg, a)),
                    cgroup: None,
                    log: AgentLog::new(&cfg.log_dir, a.name(), cfg.log_policy(a)),
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
        // The daemon writes its state and logs itself, on every turn: a mark
        // there would feed its own writes back to it (and each would wait
        // for a permission answer).
        protected.retain(|p| {
            let own = [&cfg.state_dir, &cfg.log_dir].iter().any(|d| {
                p.starts_with(d) || std::fs::canonicalize(p).is_ok_and(|c| c.starts_with(d))
            });
            if own {
                tracing::warn!(
                    "protected path {} is in warden's own state or log directory: not watched",
                    p.display()
                );
            }
            !own
        });
        let protect = Watch::new(&protected, AgentCgroups::new(cg.root()))
            .map_err(io_err("cannot watch protected paths", Path::new("/")))?;
        let on_disk = protection::OnDisk::new(protect.paths(), config_hash.clone());
        let hardware = cfg.watchdog.as_ref().map(Hardware::open).transpose()?;
        let pinger = Pinger::new(hardware, cfg.watchdog_interval());
        audit.record(audit_event(
            "monitors",
            None,
            None,
            json!({"protected_paths": protect.paths(), "protect_watch": protect.describe(), "limits": cfg.limits,
                   "evidence_budget_ms": cfg.evidence_budget().as_millis() as u64,
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
            warden_core::clock::now_ms(),
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
        let tokens = crate::web::tokens::TokenStore::open(&cfg.state_dir)
            .map_err(|e| store_err(cfg.state_dir.join("warden.db"))(e.to_string()))?;
        let web_peer = crate::web::tokens::WebPeer::resolve(&cfg.web_user());
        let mut d = Daemon {
            tokens,
            web_peer,
            metrics: Default::default(),
            fleet: fleet::FleetLink::new(&cfg),
            broker,
            twophase,
            creds,
            agent_tx: None,
            key,
            oversight,
            protect,
            on_disk,
            retiring: Default::default(),
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
            kernel: None,
            next_kernel_beat: Instant::now(),
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
            d.change_mode(ModeEvent::Recovered(l));
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
                audit_event(
                    "safe_mode_entered",
                    None,
                    None,
                    json!({"trigger": "unclean_end", "reason": reason}),
                ),
                d.safety("safe_mode_entered", &reason),
            )?;
            d.change_mode(ModeEvent::Recovered(l));
        }
        if let Mode::Safe(l) = &d.mode {
            tracing::warn!(
                "SAFE MODE: {} ({}); agents stay down until `warden resume`",
                l.reason,
                l.trigger
            );
            let names: Vec<String> = d.slots.keys().cloned().collect();
            for n in names {
                d.dispatch(&n, Event::Halted);
            }
        }
        // Halts the kernel carried out while no daemon listened.
        make_dir(&d.kernel_report_dir(), 0o700)?;
        d.import_kernel_reports();
        d.start_kernel().map_err(|e| DaemonError::Io {
            what: "cannot start the safety kernel",
            path: PathBuf::from("/proc/self/exe"),
            source: std::io::Error::other(e),
        })?;
        Ok(d)
    }

    pub(super) fn kill_leftovers(&mut self, names: &[String]) {
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
        let (report, evidence) = halt::run(&halt::Request {
            id: None,
            scope: agents.as_ref(),
            members: &members,
            trigger: "startup",
            reason: "leftover agent cgroups from an earlier run",
            hard: true,
            seen_at: Instant::now(),
            empty_deadline: self.cfg.empty_deadline.0,
            evidence_budget: self.cfg.evidence_budget(),
        });
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
}
