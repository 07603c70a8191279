//! Two-phase kills as the daemon runs them: `arm` makes an authorization,
//! `execute` consumes it once and runs its levels in order, each audited
//! with its time; evidence is captured before the first destructive level.
//! The instant stop (stop file, `warden halt`) does not go through here.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::{audit_event, Daemon};
use crate::killswitch::levels::{Actuator, LevelRange, Plan};
use crate::killswitch::twophase::Target;
use warden_core::evidence::{self, AgentEvidence, Evidence};
use warden_core::halt;
use warden_core::supervisor::{Event, State};
use warden_proto::control::{ErrorKind, Response};

/// How long a provider's revoke command may take at level 1.
const REVOKE_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

impl Daemon {
    pub(super) fn arm(
        &mut self,
        agent: Option<String>,
        all: bool,
        levels: Option<String>,
        reason: &str,
        ttl: Option<String>,
        uid: u32,
    ) -> Response {
        let target = match (agent, all) {
            (Some(a), false) if self.slots.contains_key(&a) => Target::Agent(a),
            (Some(a), false) => {
                return Response::err(ErrorKind::NotFound, format!("no agent named {a:?}"))
            }
            (None, true) => Target::All,
            _ => {
                return Response::err(
                    ErrorKind::BadRequest,
                    "arm needs exactly one of an agent name or --all",
                )
            }
        };
        let levels: LevelRange = match levels.as_deref().unwrap_or("1-4").parse() {
            Ok(l) => l,
            Err(e) => return Response::err(ErrorKind::BadRequest, format!("levels: {e}")),
        };
        let ttl = match ttl.as_deref().map(humantime::parse_duration).transpose() {
            Ok(t) => t,
            Err(e) => return Response::err(ErrorKind::BadRequest, format!("ttl: {e}")),
        };
        if reason.trim().is_empty() {
            return Response::err(ErrorKind::BadRequest, "arm needs a reason");
        }
        match self.twophase.arm(
            target,
            levels,
            reason,
            uid,
            warden_core::clock::now_ms(),
            ttl,
        ) {
            Ok(a) => {
                let _ = self.audit.record(audit_event(
                    "kill_armed",
                    None,
                    Some(uid),
                    json!({ "authorization": a }),
                ));
                Response::ok(json!({ "authorization": a }))
            }
            Err(e) => Response::err(ErrorKind::Refused, format!("{e} ({})", e.code())),
        }
    }

    pub(super) fn execute(&mut self, id: &str, uid: u32) -> Response {
        let auth = match self.twophase.execute(id, uid, warden_core::clock::now_ms()) {
            Ok(a) => a,
            Err(e) => {
                let _ = self.audit.record(audit_event(
                    "kill_refused",
                    None,
                    Some(uid),
                    json!({"id": id, "code": e.code(), "why": e.to_string()}),
                ));
                return Response::err(ErrorKind::Refused, format!("{e} ({})", e.code()));
            }
        };
        let mut plan = Plan::new(auth.target.clone(), auth.levels);
        let reason = format!("two-phase kill {}: {}", auth.id, auth.reason);
        let mut clock = warden_core::clock::now_ms;
        plan.run(
            &mut Levels {
                d: self,
                reason: &reason,
            },
            &mut clock,
        );
        let _ = self.audit.record(audit_event(
            "kill_executed",
            None,
            Some(uid),
            json!({"authorization": auth, "plan": plan}),
        ));
        let _ = self.audit.checkpoint();
        self.notify_status();
        Response::ok(json!({"authorization": auth, "plan": plan}))
    }

    pub(super) fn disarm(&mut self, id: &str, uid: u32) -> Response {
        match self.twophase.disarm(id, uid, warden_core::clock::now_ms()) {
            Ok(a) => {
                let _ = self.audit.record(audit_event(
                    "kill_disarmed",
                    None,
                    Some(uid),
                    json!({ "authorization": a }),
                ));
                Response::ok(json!({ "authorization": a }))
            }
            Err(e) => Response::err(ErrorKind::Refused, format!("{e} ({})", e.code())),
        }
    }

    fn targets(&self, t: &Target) -> Vec<String> {
        match t {
            Target::Agent(a) => vec![a.clone()],
            Target::All => self.slots.keys().cloned().collect(),
        }
    }
}

/// The daemon's side of each level.
struct Levels<'a> {
    d: &'a mut Daemon,
    reason: &'a str,
}

impl Actuator for Levels<'_> {
    fn revoke_credentials(&mut self, target: &Target) -> Result<String, String> {
        let mut revoked = 0;
        let mut failures = Vec::new();
        for name in self.d.targets(target) {
            let creds = self
                .d
                .creds
                .revoke_agent(&name, warden_core::clock::now_ms())
                .map_err(|e| e.to_string())?;
            revoked += creds.len();
            for c in creds {
                if let Some(cmd) = &c.revoke_command {
                    if let Err(e) = crate::killswitch::credentials::run_revoke_command(
                        cmd,
                        REVOKE_COMMAND_TIMEOUT,
                    ) {
                        failures.push(format!("{}: {e}", c.id));
                    }
                }
            }
        }
        if failures.is_empty() {
            Ok(format!("{revoked} credentials revoked"))
        } else {
            Err(format!(
                "{revoked} credentials revoked; provider revocation failed: {}",
                failures.join("; ")
            ))
        }
    }

    fn cut_network(&mut self, target: &Target) -> Result<String, String> {
        use warden_core::config::NetworkMode;
        let (mut cut, mut nothing, mut shared, mut failed) = (vec![], vec![], vec![], vec![]);
        for name in self.d.targets(target) {
            let s = self.d.slots.get_mut(&name).expect("slot");
            match (s.cfg.network, s.net.as_mut()) {
                (NetworkMode::Host, _) => shared.push(name),
                (NetworkMode::None, _) => nothing.push(format!("{name} (network = \"none\")")),
                (NetworkMode::Isolated, None) => nothing.push(format!("{name} (not running)")),
                (NetworkMode::Isolated, Some(net)) => match net.cut() {
                    Ok(Some(what)) => cut.push(format!("{name}: {what}")),
                    Ok(None) => nothing.push(name),
                    Err(e) => failed.push(format!("{name}: {e}")),
                },
            }
        }
        let mut parts = vec![];
        if !cut.is_empty() {
            parts.push(format!("cut {}", cut.join("; ")));
        }
        if !nothing.is_empty() {
            parts.push(format!("no network to cut: {}", nothing.join(", ")));
        }
        if !failed.is_empty() {
            parts.push(format!("cut failed for {}", failed.join("; ")));
        }
        if !shared.is_empty() {
            parts.push(format!(
                "cannot cut {}: network = \"host\" shares the host's network namespace, so there is no link of the agent's own to take down (use network = \"isolated\")",
                shared.join(", ")
            ));
        }
        let text = parts.join("; ");
        if failed.is_empty() && shared.is_empty() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    fn freeze(&mut self, target: &Target) -> Result<String, String> {
        let mut frozen = Vec::new();
        for name in self.d.targets(target) {
            let s = self.d.slots.get_mut(&name).expect("slot");
            let Some(cg) = s.cgroup.as_ref() else {
                continue;
            };
            cg.freeze().map_err(|e| e.to_string())?;
            if !halt::wait_until(cg.as_ref(), halt::FREEZE_TIMEOUT, |c| {
                c.is_frozen().unwrap_or(false)
            }) {
                return Err(format!(
                    "{name}: not frozen after {:?}",
                    halt::FREEZE_TIMEOUT
                ));
            }
            // A frozen agent cannot heartbeat: its dead man's switch is off
            // while it is held for inspection.
            s.frozen = true;
            s.heartbeat = None;
            frozen.push(name);
        }
        Ok(format!("frozen: {}", frozen.join(", ")))
    }

    fn capture_evidence(&mut self, target: &Target) -> Result<String, String> {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut agents = Vec::new();
        for name in self.d.targets(target) {
            let s = &self.d.slots[&name];
            let Some(cg) = s.cgroup.as_ref() else {
                continue;
            };
            let pids = cg.procs().unwrap_or_default();
            agents.push(AgentEvidence {
                agent: name.clone(),
                cgroup: cg.path().to_string(),
                frozen: cg.is_frozen().unwrap_or(false),
                stats: cg.stats().unwrap_or_default(),
                processes: evidence::capture_processes(Path::new("/proc"), &pids, threads),
                log_tail: s.log.tail_text(),
            });
        }
        let id = halt::new_id();
        let e = Evidence {
            version: 1,
            halt_id: id.clone(),
            trigger: "two_phase".into(),
            reason: self.reason.into(),
            captured_at_ms: warden_core::clock::now_ms(),
            host: evidence::hostname(),
            agents,
            capture_us: 0,
        };
        let value = serde_json::to_value(&e).map_err(|e| e.to_string())?;
        self.d
            .audit
            .store_evidence(&id, &value)
            .map_err(|e| e.to_string())
    }

    fn kill(&mut self, target: &Target) -> Result<String, String> {
        let mut killed = 0;
        let mut survivors = Vec::new();
        for name in self.d.targets(target) {
            let Some(report) = self.d.ladder_one(&name, "two_phase", self.reason, true) else {
                continue;
            };
            killed += report.processes;
            survivors.extend(report.survivors.iter().copied());
            // Down until an operator starts it again; not restarted.
            self.d.dispatch(&name, Event::Halted);
            self.d.slots.get_mut(&name).expect("slot").frozen = false;
        }
        if survivors.is_empty() {
            Ok(format!("{killed} processes killed; cgroups verified empty"))
        } else {
            Err(format!(
                "survivors {survivors:?}; the kill is being retried"
            ))
        }
    }
}

/// Agents frozen by a two-phase kill show in status.
pub(super) fn state_name(state: &State, frozen: bool) -> &'static str {
    if frozen {
        "frozen"
    } else {
        state.name()
    }
}

/// The agent's credentials directory: 0500, owned by the agent, inside a
/// root-owned 0755 parent. Existing secret files stay (they were issued to
/// this agent and are revoked by removing them).
pub(super) fn prepare_cred_dir(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = dir.parent() {
        if !parent.is_dir() {
            std::fs::create_dir_all(parent)?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    if !dir.is_dir() {
        std::fs::create_dir(dir)?;
    }
    // Secrets live in memory only: a small tmpfs of the agent's own, so they
    // never reach a disk whatever filesystem credentials_dir is on.
    if !is_mountpoint(dir)? {
        use nix::mount::{mount, MsFlags};
        let data = format!("size=1m,nr_inodes=1024,mode=0500,uid={uid},gid={gid}");
        if let Err(e) = mount(
            Some("warden-credentials"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(data.as_str()),
        ) {
            // Where mounting is not allowed (some containers), a directory on
            // a tmpfs already is still memory only; anything else is refused.
            let on_tmpfs = nix::sys::statfs::statfs(dir)
                .map(|f| f.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
                .unwrap_or(false);
            if !on_tmpfs {
                return Err(std::io::Error::other(format!(
                    "cannot mount a tmpfs for the agent's credentials ({e}), and {} is not on a tmpfs",
                    dir.display()
                )));
            }
            tracing::warn!(
                "cannot mount a tmpfs on {} ({e}); using the tmpfs it is on",
                dir.display()
            );
        }
    }
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500))
}

/// Whether `dir` is the root of a mount (another device than its parent).
pub(super) fn is_mountpoint(dir: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    Ok(std::fs::metadata(dir)?.dev() != std::fs::metadata(parent)?.dev())
}

/// Unmounts an agent's credentials tmpfs (its secrets are gone with it) and
/// removes the directory.
pub(super) fn release_cred_dir(dir: &Path) {
    if is_mountpoint(dir).unwrap_or(false) {
        if let Err(e) = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!("cannot unmount {}: {e}", dir.display());
            return;
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Daemon {
    pub(super) fn cred_issue(
        &mut self,
        agent: &str,
        kind: &str,
        name: &str,
        revoke_command: Option<Vec<String>>,
        uid: u32,
    ) -> Response {
        use crate::killswitch::credentials::{materialize, Kind};
        let Some(slot) = self.slots.get(agent) else {
            return Response::err(ErrorKind::NotFound, format!("no agent named {agent:?}"));
        };
        let kind: Kind = match kind.parse() {
            Ok(k) => k,
            Err(e) => return Response::err(ErrorKind::BadRequest, e.to_string()),
        };
        let id = match warden_core::spawn::resolve_identity(&slot.cfg) {
            Ok(i) => i,
            Err(e) => return Response::err(ErrorKind::Failed, e.to_string()),
        };
        let (info, secret) = match self.creds.issue(
            agent,
            kind,
            name,
            revoke_command,
            warden_core::clock::now_ms(),
        ) {
            Ok(x) => x,
            Err(e) => return Response::err(ErrorKind::BadRequest, e.to_string()),
        };
        let dir = self.cfg.credentials_dir.join(agent);
        let delivered = prepare_cred_dir(&dir, id.uid, id.gid)
            .and_then(|_| materialize(&dir, id.uid, id.gid, &[(&info, &secret)]));
        let _ = self.audit.record(audit_event(
            "credential_issued",
            Some(agent),
            Some(uid),
            json!({"credential": info, "delivered": delivered.is_ok()}),
        ));
        if let Err(e) = delivered {
            return Response::err(
                ErrorKind::Failed,
                format!(
                    "issued {} but cannot write it to {}: {e}",
                    info.id,
                    dir.display()
                ),
            );
        }
        Response::ok(json!({
            "credential": info,
            "secret": secret.expose(),
            "file": dir.join(&info.name),
        }))
    }

    pub(super) fn cred_verify(&self, token: &str) -> Response {
        match self.creds.verify(token.trim()) {
            Ok(info) => Response::ok(json!({ "valid": true, "credential": info })),
            Err(e) => Response::err(ErrorKind::Refused, e.to_string()),
        }
    }

    pub(super) fn cred_revoke(
        &mut self,
        id: Option<String>,
        agent: Option<String>,
        uid: u32,
    ) -> Response {
        let now = warden_core::clock::now_ms();
        let revoked = match (id, agent) {
            (Some(id), None) => self.creds.revoke(&id, now).map(|i| vec![i]),
            (None, Some(agent)) => self
                .creds
                .revoke_agent(&agent, now)
                .map(|v| v.iter().map(|c| c.info()).collect()),
            _ => {
                return Response::err(
                    ErrorKind::BadRequest,
                    "revoke needs exactly one of a credential id or --agent",
                )
            }
        };
        match revoked {
            Ok(infos) => {
                for i in &infos {
                    let _ =
                        std::fs::remove_file(self.cfg.credentials_dir.join(&i.agent).join(&i.name));
                }
                let _ = self.audit.record(audit_event(
                    "credential_revoked",
                    None,
                    Some(uid),
                    json!({ "credentials": infos }),
                ));
                Response::ok(json!({ "revoked": infos }))
            }
            Err(e) => Response::err(ErrorKind::Refused, e.to_string()),
        }
    }
}
