//! The tool broker: agents propose actions, warden decides and (in the daemon)
//! executes them. Everything here is pure: no process is spawned and no
//! socket is read; the daemon feeds proposals in and runs the argv that comes
//! out, inside the agent's cgroup, as the agent's user.
//!
//! A map:
//!
//! - [`registry`]: the tool registry (`tools.toml`), parsed strictly; each
//!   tool's scope, program, argv template, argument schema, timeout and
//!   output cap. Read at start and on reload, never changed by an agent.
//! - [`schema`]: checks a proposal's arguments against a tool's schema and
//!   renders the argv (one template element, one argv element; no shell).
//! - [`policy`]: [`AgentToolPolicy`] (per agent) and [`decide`], the one
//!   function that turns a proposal into a [`Decision`].
//! - [`approval`]: pending requests, signed single-use approval tokens, and
//!   their JSON-lines persistence.
//! - [`run`]: runs (a goal, its limits, every call and its outcome).
//!
//! Time is milliseconds since the Unix epoch everywhere (`now_ms`): tokens
//! and persisted requests outlive the process, so a monotonic clock would not do.

pub mod approval;
pub mod policy;
pub mod registry;
pub mod run;
pub mod schema;

use std::path::Path;

pub use approval::{
    args_sha256, ApprovalError, ApprovalStore, PendingView, Request, RequestState, Token,
    TokenClaims, DEFAULT_PENDING_TTL,
};
pub use policy::{decide, AgentToolPolicy, Decision, DenyCode, Proposal};
pub use registry::{ParamSpec, ParamType, Registry, RegistryError, Scope, Tool};
pub use run::{
    CallRecord, ExecResult, Run, RunError, RunLimits, RunState, RunStore, RunSummary, StopReason,
};
pub use schema::{render_argv, validate_args, SchemaError, ValidArgs};

/// Refuses a registry file that someone other than root could have written.
fn check_registry_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if m.uid() != 0 && m.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!(
            "{} is owned by uid {}; the tool registry must belong to root",
            path.display(),
            m.uid()
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by group or others (mode {:o}); make it 0644 or stricter",
            path.display(),
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Reads the registry and checks every agent's `[agent.broker] tools`
/// against it. Answers the registry and its file's SHA-256.
pub fn load_registry(
    cfg: &warden_core::config::Config,
    path: &Path,
) -> Result<(Registry, String), String> {
    check_registry_file(path)?;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text =
        String::from_utf8(bytes.clone()).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    let reg = Registry::parse(&text, path).map_err(|e| e.to_string())?;
    for a in &cfg.agents {
        let unknown = policy::unknown_tools(&a.broker, &reg);
        if !unknown.is_empty() {
            return Err(format!(
                "agent {}: [agent.broker] tools not in {}: {}",
                a.name(),
                path.display(),
                unknown.join(", ")
            ));
        }
    }
    Ok((reg, warden_core::crypto::sha256_hex(&bytes)))
}

/// Milliseconds since the Unix epoch, the broker's clock (the daemon's).
pub use warden_core::clock::now_ms;
