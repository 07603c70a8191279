//! `warden fleet run|halt|status|resume`: the fleet bridge and its commands
//! (crates/warden-fleet). They read the `[fleet]` table of the config and
//! reach the local daemon only through its control socket.

use std::path::{Path, PathBuf};

use warden_fleet::admin::{self, FleetStatus};
use warden_fleet::config::Settings;
use warden_fleet::Error;

use super::exit;
use super::output::print_json;

const DEFAULT_CONFIG: &str = "/etc/warden/warden.toml";

#[derive(Debug, clap::Subcommand)]
pub enum FleetCommand {
    /// The long-running bridge (systemd/warden-fleet.service): keeps this
    /// node's lease, publishes its state, relays fleet halts to the daemon.
    Run(ConfigArgs),
    /// Halt every node of the fleet (or --nodes), by writing a halt record.
    Halt(HaltArgs),
    /// Every node: alive, its state, its ack of the last halt and how long it took.
    Status(StatusArgs),
    /// Clear the fleet halt EPOCH and resume this host (as `warden resume`).
    /// Every other host stays halted until a human resumes it there.
    Resume(ResumeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// warden's config file, with its [fleet] table.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct HaltArgs {
    #[command(flatten)]
    c: ConfigArgs,
    /// Why; recorded in the halt record and every node's audit log.
    #[arg(long)]
    reason: String,
    /// Only these nodes (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    nodes: Option<Vec<String>>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    c: ConfigArgs,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    c: ConfigArgs,
    /// The epoch of the fleet halt (`warden fleet status` shows it).
    #[arg(long)]
    epoch: u64,
    /// Why it is safe to go on; recorded with your uid.
    #[arg(long)]
    reason: String,
    /// Signed authorization from `warden authorize-resume` (when the daemon
    /// is configured with `resume_key`).
    #[arg(long, value_name = "FILE")]
    authorization: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn settings(c: &ConfigArgs, socket: Option<&Path>) -> Result<Settings, i32> {
    match Settings::load(&c.config) {
        Ok(mut s) => {
            if let Some(p) = socket {
                s.socket = p.to_owned();
            }
            Ok(s)
        }
        Err(e) => {
            eprintln!("warden: {e}");
            Err(exit::CONFIG)
        }
    }
}

fn fail(e: Error) -> i32 {
    eprintln!("warden: {e}");
    match e {
        Error::Config(_) => exit::CONFIG,
        Error::Daemon(warden_fleet::daemon::DaemonError::Io { .. }) => exit::NOT_RUNNING,
        _ => exit::FAILED,
    }
}

pub fn run(socket: Option<&Path>, c: FleetCommand) -> i32 {
    match c {
        FleetCommand::Run(a) => {
            super::daemon::init_tracing();
            let s = match settings(&a, socket) {
                Ok(s) => s,
                Err(c) => return c,
            };
            match warden_fleet::bridge::run(s) {
                Ok(()) => exit::OK,
                Err(e) => fail(e),
            }
        }
        FleetCommand::Halt(a) => {
            if a.reason.trim().is_empty() {
                eprintln!("warden: --reason must not be empty");
                return exit::USAGE;
            }
            let s = match settings(&a.c, socket) {
                Ok(s) => s,
                Err(c) => return c,
            };
            match admin::block_on(admin::halt(&s, &a.reason, a.nodes)) {
                Ok(r) if a.json => {
                    print_json(&serde_json::to_value(&r).unwrap_or_default());
                    exit::OK
                }
                Ok(r) => {
                    let to = r
                        .targets
                        .as_ref()
                        .map(|t| t.join(", "))
                        .unwrap_or_else(|| "every node".into());
                    println!("fleet halt epoch {} issued to {to}", r.epoch);
                    println!("acks: `warden fleet status`; resume per host: `warden fleet resume --epoch {} --reason TEXT`", r.epoch);
                    exit::OK
                }
                Err(e) => fail(e),
            }
        }
        FleetCommand::Status(a) => {
            let s = match settings(&a.c, socket) {
                Ok(s) => s,
                Err(c) => return c,
            };
            let local = local_partition(&s);
            match admin::block_on(admin::status(&s)) {
                Ok(st) if a.json => {
                    let mut v = serde_json::to_value(&st).unwrap_or_default();
                    v["local"] = local.unwrap_or_default();
                    print_json(&v);
                    exit::OK
                }
                Ok(st) => {
                    print_local(&local);
                    print_status(&st);
                    exit::OK
                }
                Err(e) => {
                    print_local(&local);
                    fail(e)
                }
            }
        }
        FleetCommand::Resume(a) => {
            if a.reason.trim().is_empty() {
                eprintln!("warden: --reason must not be empty");
                return exit::USAGE;
            }
            let s = match settings(&a.c, socket) {
                Ok(s) => s,
                Err(c) => return c,
            };
            let authorization = match &a.authorization {
                None => None,
                Some(p) => match std::fs::read_to_string(p)
                    .map_err(|e| e.to_string())
                    .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("not JSON: {e}")))
                {
                    Ok(v) => Some(v),
                    Err(e) => {
                        eprintln!("warden: cannot read authorization {}: {e}", p.display());
                        return exit::FAILED;
                    }
                },
            };
            match admin::block_on(admin::resume(&s, a.epoch, &a.reason, authorization)) {
                Ok((r, local)) if a.json => {
                    print_json(&serde_json::json!({"cleared": r, "local": local}));
                    exit::OK
                }
                Ok((r, _)) => {
                    match r {
                        Some(_) => println!("fleet halt epoch {} cleared", a.epoch),
                        None => println!("fleet halt epoch {} was already cleared", a.epoch),
                    }
                    println!("this host ({}) resumed; every other host stays halted until a human resumes it", s.node);
                    exit::OK
                }
                Err(e) => fail(e),
            }
        }
    }
}

/// This node's own view, readable when etcd is not.
fn local_partition(s: &Settings) -> Option<serde_json::Value> {
    let p = s.fleet.state_dir.join(format!("local-{}.json", s.node));
    std::fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn print_local(v: &Option<serde_json::Value>) {
    if let Some(v) = v {
        if v["partitioned"] == true {
            println!(
                "!!! THIS NODE ({}) IS CUT OFF FROM ETCD (on_partition = {}): it cannot hear fleet halts !!!",
                v["node"].as_str().unwrap_or("?"),
                v["on_partition"].as_str().unwrap_or("?")
            );
        }
    }
}

fn print_status(st: &FleetStatus) {
    match (&st.halt, &st.resumed) {
        (Some(h), _) => println!(
            "FLEET HALT epoch {} in force: {} (by {}, targets {})",
            h.epoch,
            h.reason,
            h.who,
            h.targets
                .as_ref()
                .map(|t| t.join(","))
                .unwrap_or_else(|| "all".into())
        ),
        (None, Some(r)) => println!(
            "no fleet halt in force; epoch {} was cleared by {} on {}: {}",
            r.epoch, r.who, r.node, r.reason
        ),
        (None, None) => println!("no fleet halt in force (last epoch {})", st.epoch),
    }
    println!(
        "{:<16} {:<6} {:<10} {:<7} {:<10} {:>9}  PARTITIONS",
        "NODE", "ALIVE", "STATE", "AGENTS", "ACK", "TOOK"
    );
    for r in &st.nodes {
        let state = r
            .state
            .as_ref()
            .and_then(|s| s.state.clone())
            .unwrap_or_else(|| "-".into());
        let agents = r
            .state
            .as_ref()
            .map(|s| {
                let up = s.agents.iter().filter(|a| a.state == "running").count();
                format!("{up}/{}", s.agents.len())
            })
            .unwrap_or_else(|| "-".into());
        let ack = match (&r.ack, r.targeted) {
            (Some(a), _) if a.missed => "missed".to_string(),
            (Some(_), _) => "acked".to_string(),
            (None, true) => "NOT ACKED".to_string(),
            (None, false) => "-".to_string(),
        };
        let took = r
            .took_ms
            .map(|t| format!("{t} ms"))
            .unwrap_or_else(|| "-".into());
        let parts = r
            .state
            .as_ref()
            .map(|s| {
                if s.partitions > 0 {
                    format!("{} (on_partition {})", s.partitions, s.on_partition)
                } else {
                    "0".into()
                }
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<16} {:<6} {:<10} {:<7} {:<10} {:>9}  {}",
            r.node,
            if r.alive { "yes" } else { "NO" },
            state,
            agents,
            ack,
            took,
            parts
        );
    }
    if !st.not_acked.is_empty() {
        println!(
            "not acked (epoch {}): {}",
            st.epoch,
            st.not_acked.join(", ")
        );
    }
}
