//! `warden fleet`: the unprivileged bridge between etcd and one host's daemon.
//!
//! One command stops every host, and a host cut off from etcd stops itself.
//! This crate knows the daemon only through its control socket (it never
//! links warden-core or warden-daemon), so the privileged daemon gains no
//! gRPC or TLS code.
//!
//! - [`config`]: the `[fleet]` table, read with its own strict struct.
//! - [`record`]: what lives in etcd (halt, ack, node state, resume), keys and
//!   paired encode/decode with a version.
//! - [`daemon`]: an async control-socket client: calls and the beat line.
//! - [`etcd`]: connecting with mutual TLS.
//! - [`cursor`]: the last seen revision and epoch, persisted so a restart
//!   cannot miss a halt.
//! - [`bridge`]: `warden fleet run`, the long-running process: lease,
//!   published state, the halt watch, acks, partition detection.
//! - [`admin`]: `warden fleet halt|status|resume`, one-shot commands.
#![deny(unsafe_code)]

pub mod admin;
pub mod bridge;
pub mod config;
pub mod cursor;
pub mod daemon;
pub mod etcd;
pub mod record;

/// Everything that can go wrong in the fleet process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd: {0}")]
    EtcdOther(String),
    #[error(transparent)]
    Daemon(#[from] daemon::DaemonError),
    #[error(transparent)]
    Cursor(#[from] cursor::CursorError),
    #[error("{0}")]
    Refused(String),
    #[error("timed out: {0}")]
    Timeout(String),
}

/// Milliseconds since the Unix epoch (wall clock; only for records and
/// display, never for deadlines).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Who runs this command: uid and host, for halt and resume records.
pub fn who() -> String {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_else(|| "?".into());
    format!("uid {uid} on {}", config::hostname())
}
