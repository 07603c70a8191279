//! The protected paths (warden's binary, its config, its unit files, the
//! tool registry, the resume key, `protected_paths`) as the daemon sees
//! them.
//!
//! With fanotify every change comes with its writer: a change (or a refused
//! attempt) by a process in an agent's cgroup is a critical violation and a
//! hard halt; a change by anything else (an operator's editor, a package
//! upgrade) is audited as `config_changed_on_disk` with its uid, pid, exe
//! and the old and new SHA-256, and applied only by `warden reload`. A
//! writer that exited before it could be looked at is presumed an agent
//! when a running agent could have made that change (its uid owns the file
//! or its directory, or either is group- or world-writable, or it runs as
//! root), and an operator otherwise: agents hold no capabilities, so the
//! file's owner and mode bound who could. With inotify (no fanotify) any
//! change halts, as before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use super::*;
use crate::monitor::Breach;
use warden_core::protect::{Change, Finding};

/// Files larger than this (warden's own binary) are not hashed in the main
/// loop: it would stall for as long as hashing takes.
const HASH_MAX: u64 = 4 << 20;

/// SHA-256 of a file, hex; None if it cannot be read (deleted) or is larger
/// than [`HASH_MAX`].
pub(super) fn sha256_file(p: &Path) -> Option<String> {
    use sha2::Digest;
    if std::fs::metadata(p).ok()?.len() > HASH_MAX {
        return None;
    }
    std::fs::read(p)
        .ok()
        .map(|b| hex::encode(sha2::Sha256::digest(b)))
}

/// What the daemon remembers about its config and protected files.
#[derive(Debug, Default)]
pub(super) struct OnDisk {
    /// SHA-256 of each protected path when last seen.
    pub(super) sha: BTreeMap<PathBuf, Option<String>>,
    /// SHA-256 of the config text the daemon runs (start or last reload).
    pub(super) running_sha256: String,
}

impl OnDisk {
    pub(super) fn new(paths: &[PathBuf], running_sha256: String) -> OnDisk {
        OnDisk {
            sha: paths.iter().map(|p| (p.clone(), sha256_file(p))).collect(),
            running_sha256,
        }
    }
}

impl Daemon {
    /// Drains the watch of the protected paths.
    pub(super) fn on_protect(&mut self, now: Instant) {
        for f in self.protect.read() {
            match f {
                Finding::Unattributed(v) => self.breach(
                    Breach {
                        monitor: "self_modification".into(),
                        agent: None,
                        value: format!("{} {}", v.path.display(), v.what),
                        threshold: "no change while warden runs (inotify cannot name the writer)"
                            .into(),
                    },
                    now,
                ),
                Finding::Change(c) => self.on_change(c, now),
            }
        }
    }

    /// Could a running agent have made this change (for a writer that left
    /// before it could be named)?
    fn agent_could_have(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let meta = |p: &Path| std::fs::symlink_metadata(p).ok();
        let file = meta(path);
        let dir = path.parent().and_then(meta);
        self.slots.values().filter(|s| s.cgroup.is_some()).any(|s| {
            s.cfg.allow_root
                || s.uid == 0
                || [&file, &dir]
                    .into_iter()
                    .flatten()
                    .any(|m| m.uid() == s.uid || m.mode() & 0o022 != 0)
        })
    }

    fn on_change(&mut self, c: Change, now: Instant) {
        let lost = matches!(c.what, "events lost" | "watch lost");
        if c.by.agent.is_some() || lost || (c.by.exited && self.agent_could_have(&c.path)) {
            let who = match (&c.by.agent, c.by.exited) {
                (Some(a), _) => format!("agent {a}"),
                (None, true) => "a writer that exited before it could be named".into(),
                (None, false) => "unknown writer".into(),
            };
            let value = format!(
                "{} {} by {who}, pid {}, exe {}, uid {}",
                c.path.display(),
                c.what,
                c.by.pid,
                c.by.exe
                    .as_ref()
                    .map(|e| e.display().to_string())
                    .unwrap_or_else(|| "?".into()),
                c.by.uid
                    .map(|u| u.to_string())
                    .unwrap_or_else(|| "?".into()),
            );
            let _ = self.audit.record(audit_event(
                if c.refused {
                    "protected_write_refused"
                } else {
                    "protected_path_changed_by_agent"
                },
                c.by.agent.as_deref(),
                c.by.uid,
                json!({"path": c.path, "what": c.what, "pid": c.by.pid, "exe": c.by.exe,
                       "refused": c.refused, "writer_exited": c.by.exited}),
            ));
            self.breach(
                Breach {
                    monitor: "self_modification".into(),
                    agent: c.by.agent.clone(),
                    value,
                    threshold: "no agent may change warden's protected files".into(),
                },
                now,
            );
            return;
        }
        // Outside every agent: an operator. Audited, never a halt; a write
        // is audited when the file is closed.
        if c.what == "being written" {
            return;
        }
        let new = sha256_file(&c.path);
        let old = self.on_disk.sha.get(&c.path).cloned().flatten();
        if c.what == "written" && new.is_some() && new == old {
            return;
        }
        self.on_disk.sha.insert(c.path.clone(), new.clone());
        let is_config = std::fs::canonicalize(&self.opts.config_path)
            .map(|p| p == c.path)
            .unwrap_or(false);
        tracing::info!(
            "{} {} by pid {} (uid {:?}): audited; `warden reload` applies it",
            c.path.display(),
            c.what,
            c.by.pid,
            c.by.uid
        );
        if let Err(e) = self.audit.record(audit_event(
            "config_changed_on_disk",
            None,
            c.by.uid,
            json!({"path": c.path, "what": c.what, "pid": c.by.pid, "exe": c.by.exe,
                   "writer_exited": c.by.exited, "old_sha256": old, "new_sha256": new,
                   "is_config": is_config, "running_sha256": is_config.then(|| self.on_disk.running_sha256.clone())}),
        )) {
            self.audit_failed(&e.to_string());
        }
    }

    /// For `status`: the watch, and whether the config on disk is the one
    /// running.
    pub(super) fn protection_json(&self) -> serde_json::Value {
        let disk = sha256_file(&self.opts.config_path);
        json!({
            "watch": self.protect.describe(),
            "config": {
                "path": self.opts.config_path,
                "running_sha256": self.on_disk.running_sha256,
                "disk_sha256": disk,
                "differs": disk.as_deref() != Some(self.on_disk.running_sha256.as_str()),
            },
        })
    }
}
