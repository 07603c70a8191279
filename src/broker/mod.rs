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
//! - [`run`]: runs (a goal, its limits, every call and its outcome) and the
//!   output cap helper.
//!
//! Time is milliseconds since the Unix epoch everywhere (`now_ms`): tokens
//! and persisted requests outlive the process, so a monotonic clock would not do.

pub mod approval;
pub mod policy;
pub mod registry;
pub mod run;
pub mod schema;

pub use approval::{
    args_sha256, ApprovalError, ApprovalStore, PendingView, Request, RequestState, Token,
    TokenClaims, DEFAULT_PENDING_TTL,
};
pub use policy::{decide, AgentToolPolicy, Decision, DenyCode, Proposal};
pub use registry::{ParamSpec, ParamType, Registry, RegistryError, Scope, Tool};
pub use run::{
    cap_output, CallRecord, ExecResult, Run, RunError, RunLimits, RunState, RunStore, RunSummary,
    StopReason,
};
pub use schema::{render_argv, validate_args, SchemaError, ValidArgs};

/// Milliseconds since the Unix epoch, the broker's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// 16 random hex digits, for request, run and nonce ids.
pub(crate) fn random_id() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}
