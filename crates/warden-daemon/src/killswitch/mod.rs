//! The kill switch: the ways a human (or the absence of one) stops agents
//! short of, or on the way to, a hard halt.
//!
//! - [`heartbeat`]: a dead man's switch per agent; no heartbeat for `missed`
//!   intervals is a [`Breach`](crate::monitor::Breach).
//! - [`oversight`]: no human check-in within `oversight_timeout` is a breach.
//! - [`twophase`]: arm, then execute (once) a kill of one agent or all; the
//!   authorizations persist across restarts.
//! - [`levels`]: the ladder (revoke credentials, cut network, freeze, kill)
//!   as data, and the [`Plan`](levels::Plan) the daemon runs step by step.
//! - [`credentials`]: agent credentials whose secret is shown once and stored
//!   only as a SHA-256 digest; revoking them is level 1.
//!
//! Everything here is pure logic with injected time (`now_ms`, milliseconds
//! since the Unix epoch) except the durable files and [`credentials`]'
//! `materialize` and `run_revoke_command`. The daemon owns the clock, the
//! control socket, the audit log and the actual halting.

pub mod credentials;
pub mod heartbeat;
pub mod levels;
pub mod oversight;
pub mod twophase;

use std::path::Path;

/// Writes `data` durably (temp file, fsync, rename, fsync of the directory),
/// then narrows the mode. The content is never secret (secrets are stored
/// as digests only), so the moment before the chmod exposes nothing; the
/// mode keeps digests and records away from agents anyway.
pub(crate) fn write_durable(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    warden_core::safemode::write_atomic(path, data)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// `{"version": N, "<key>": [...]}`: the persisted form of a list of records,
/// pretty JSON with a final newline. Paired with [`decode_list`].
pub(crate) fn encode_list<T: serde::Serialize>(version: u32, key: &str, items: &[T]) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert("version".into(), version.into());
    map.insert(
        key.into(),
        serde_json::to_value(items).expect("records serialize"),
    );
    let mut out = serde_json::to_vec_pretty(&map).expect("records serialize");
    out.push(b'\n');
    out
}

/// Parses [`encode_list`]'s output; any other version, or any other key, is
/// refused rather than guessed.
pub(crate) fn decode_list<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    version: u32,
    key: &str,
) -> Result<Vec<T>, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    match obj.get("version").and_then(|v| v.as_u64()) {
        Some(n) if n == version as u64 => {}
        Some(n) => {
            return Err(format!(
                "unsupported version {n} (this warden reads {version})"
            ))
        }
        None => return Err("no version".into()),
    }
    if let Some(k) = obj.keys().find(|k| *k != "version" && *k != key) {
        return Err(format!("unknown field `{k}`"));
    }
    let items = obj
        .get(key)
        .cloned()
        .ok_or(format!("missing field `{key}`"))?;
    serde_json::from_value(items).map_err(|e| e.to_string())
}

/// `1m 35s`-style text of a span of milliseconds, rounded down to seconds.
pub(crate) fn human_ms(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
}
