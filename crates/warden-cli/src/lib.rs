//! The `warden` command: one file per verb.
//!
//! Verbs that talk to the daemon use the control socket; `check-config`,
//! `audit verify`, `casepack verify` and `key show` read files only and work
//! without a daemon.

#![deny(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod agent;
mod agents;
mod arm;
pub mod audit;
mod authorize;
mod broker;
pub mod casepack;
mod check_config;
mod cred;
mod daemon;
mod demo;
pub mod demo_config;
mod fleet;
mod halt;
pub mod key;
mod lifecycle;
mod logs;
mod output;
mod reload;
mod resume;
mod status;
mod token;
mod web;

/// Exit codes, stable and documented in the README.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The daemon refused the request, or the operation failed.
    pub const FAILED: i32 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: i32 = 2;
    /// No daemon answers on the socket.
    pub const NOT_RUNNING: i32 = 3;
    /// The configuration file is invalid.
    pub const CONFIG: i32 = 4;
    /// Another daemon holds the state directory.
    pub const ALREADY_RUNNING: i32 = 5;
    /// Not allowed: not root, or not in group warden for the socket.
    pub const PERMISSION: i32 = 6;
    /// The daemon refused to start on unsafe state: a state or log
    /// directory others can write, or a lost audit chain (see
    /// `--new-audit-chain`).
    pub const UNSAFE_STATE: i32 = 7;
}

#[derive(Debug, Parser)]
#[command(
    name = "warden",
    version,
    about = "Keeps AI agents inside a boundary a human controls"
)]
pub struct Cli {
    /// Control socket (default: the `socket` of /etc/warden/warden.toml, else /run/warden/control.sock).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Run the supervisor in the foreground (root).
    Daemon(daemon::Args),
    /// Run the daemon on an embedded config with a well-behaved and a hostile agent.
    Demo(demo::Args),
    /// Check a configuration file without a daemon.
    CheckConfig(check_config::Args),
    /// Daemon state, each agent, and the last halt.
    Status(status::Args),
    /// One line per agent.
    Agents(agents::Args),
    /// Run by an agent: talk to its own socket ($WARDEN_SOCKET).
    Agent(agent::Args),
    /// An agent's output.
    Logs(logs::Args),
    /// Start an agent.
    Start(lifecycle::Args),
    /// Stop an agent: TERM, wait `grace`, then freeze and kill.
    Stop(lifecycle::Args),
    /// Stop, then start an agent.
    Restart(lifecycle::Args),
    /// Two-phase kill, phase one: authorise a kill of AGENT or --all, in levels.
    Arm(arm::ArmArgs),
    /// Two-phase kill, phase two: run an armed authorization, once.
    Execute(arm::IdArgs),
    /// Cancel an armed kill authorization.
    Disarm(arm::IdArgs),
    /// List kill authorizations.
    Authorizations(arm::ListArgs),
    /// Agents' credentials: issue (secret shown once), list, revoke, verify.
    #[command(subcommand)]
    Cred(cred::CredCommand),
    /// Tool calls waiting for an operator's approval.
    Approvals(broker::ListArgs),
    /// Approve a pending tool call (a signed, single-use token for the agent).
    Approve(broker::ApproveArgs),
    /// Refuse a pending tool call, with a reason.
    Reject(broker::RejectArgs),
    /// The tool broker's runs.
    Runs(broker::RunsArgs),
    /// One broker run with every call.
    #[command(subcommand)]
    Run(broker::RunCommand),
    /// Read the config again and apply what changed (also SIGHUP, `systemctl reload warden`).
    Reload(reload::Args),
    /// Tell warden a human is watching (resets the oversight timeout).
    Checkin(lifecycle::CheckinArgs),
    /// Hard halt: freeze, capture evidence, kill every agent; SAFE MODE.
    Halt(halt::Args),
    /// Leave SAFE MODE and start the agents (refused while the stop file exists).
    Resume(resume::Args),
    /// The audit log: verify, tail, show (reads the database; no daemon needed).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Case packs: export a halt's evidence and audit slice, verify anywhere.
    #[command(subcommand)]
    Casepack(casepack::CasepackCommand),
    /// The fleet: halt every host through etcd, status, resume (crates/warden-fleet).
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    /// warden's signing key.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Sign a resume authorization offline with the resume key.
    AuthorizeResume(authorize::Args),
    /// Make an Ed25519 key pair for resume authorizations.
    Keygen(authorize::KeygenArgs),
    /// Serve the REST API, live events, dashboard and metrics (unprivileged;
    /// run by warden-web.service).
    Web(web::Args),
    /// API tokens of `warden web`: create (secret shown once), list, revoke.
    #[command(subcommand)]
    Token(token::TokenCommand),
}

impl Cli {
    fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(warden_core::config::socket_from_system_config)
    }
}

/// Entry point of the binary; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
        }
    };
    let socket = cli.socket();
    match cli.verb {
        Verb::Daemon(a) => daemon::run(a),
        Verb::Demo(a) => demo::run(a),
        Verb::CheckConfig(a) => check_config::run(&socket, a),
        Verb::Status(a) => status::run(&socket, a),
        Verb::Agents(a) => agents::run(&socket, a),
        Verb::Agent(a) => agent::run(a),
        Verb::Logs(a) => logs::run(&socket, a),
        Verb::Start(a) => lifecycle::run(&socket, "start", a),
        Verb::Stop(a) => lifecycle::run(&socket, "stop", a),
        Verb::Restart(a) => lifecycle::run(&socket, "restart", a),
        Verb::Checkin(a) => lifecycle::checkin(&socket, a),
        Verb::Cred(c) => cred::run(&socket, c),
        Verb::Arm(a) => arm::arm(&socket, a),
        Verb::Execute(a) => arm::execute(&socket, a),
        Verb::Disarm(a) => arm::disarm(&socket, a),
        Verb::Authorizations(a) => arm::list(&socket, a),
        Verb::Approvals(a) => broker::approvals(&socket, a),
        Verb::Approve(a) => broker::approve(&socket, a),
        Verb::Reject(a) => broker::reject(&socket, a),
        Verb::Runs(a) => broker::runs(&socket, a),
        Verb::Run(c) => broker::run(&socket, c),
        Verb::Reload(a) => reload::run(&socket, a),
        Verb::Halt(a) => halt::run(&socket, a),
        Verb::Resume(a) => resume::run(&socket, a),
        Verb::Audit(c) => audit::run(c),
        Verb::Casepack(c) => casepack::run(c),
        Verb::Key(c) => key::run(c),
        Verb::AuthorizeResume(a) => authorize::run(a),
        Verb::Keygen(a) => authorize::keygen(a),
        Verb::Web(a) => web::run(a),
        Verb::Token(c) => token::run(&socket, c),
        Verb::Fleet(c) => fleet::run(cli.socket.as_deref(), c),
    }
}
