//! `warden arm|execute|disarm|authorizations`: deliberate, authorised kills
//! of one agent or all, in levels (1 revoke credentials, 2 cut network,
//! 3 freeze, 4 kill and verify empty).

use std::path::Path;

use warden_proto::control::Request;

use super::output::{call, print_json};

#[derive(Debug, clap::Args)]
pub struct ArmArgs {
    /// The agent to kill (or --all).
    agent: Option<String>,
    /// Every agent.
    #[arg(long, conflicts_with = "agent")]
    all: bool,
    /// Why; recorded with your uid.
    #[arg(long)]
    reason: String,
    /// Levels to run, e.g. "1-4" (default), "1-3" (keep it frozen), "3".
    #[arg(long)]
    levels: Option<String>,
    /// How long the authorization may wait for `execute` (default 5m).
    #[arg(long)]
    ttl: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// The authorization id `arm` printed.
    id: String,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[arg(long)]
    json: bool,
}

pub fn arm(socket: &Path, a: ArmArgs) -> i32 {
    if a.agent.is_none() && !a.all {
        eprintln!("warden: name an agent or give --all");
        return super::exit::USAGE;
    }
    let req = Request::Arm {
        agent: a.agent,
        all: a.all,
        levels: a.levels,
        reason: a.reason,
        ttl: a.ttl,
    };
    match call(socket, &req) {
        Ok(v) if a.json => {
            print_json(&v);
            0
        }
        Ok(v) => {
            let au = &v["authorization"];
            println!(
                "armed {} (levels {}); run `warden execute {}` before it expires",
                au["id"].as_str().unwrap_or("?"),
                au["levels"],
                au["id"].as_str().unwrap_or("?")
            );
            0
        }
        Err(c) => c,
    }
}

pub fn execute(socket: &Path, a: IdArgs) -> i32 {
    match call(socket, &Request::Execute { id: a.id }) {
        Ok(v) if a.json => {
            print_json(&v);
            0
        }
        Ok(v) => {
            for s in v["plan"]["steps"].as_array().into_iter().flatten() {
                println!("{}: {}", s["action"], s["state"]);
            }
            0
        }
        Err(c) => c,
    }
}

pub fn disarm(socket: &Path, a: IdArgs) -> i32 {
    match call(socket, &Request::Disarm { id: a.id }) {
        Ok(v) if a.json => {
            print_json(&v);
            0
        }
        Ok(v) => {
            println!(
                "disarmed {}",
                v["authorization"]["id"].as_str().unwrap_or("?")
            );
            0
        }
        Err(c) => c,
    }
}

pub fn list(socket: &Path, a: ListArgs) -> i32 {
    match call(socket, &Request::Authorizations) {
        Ok(v) if a.json => {
            print_json(&v);
            0
        }
        Ok(v) => {
            println!(
                "{:<22} {:<10} {:<16} {:>6}  REASON",
                "ID", "STATE", "TARGET", "BY"
            );
            for au in v["authorizations"].as_array().into_iter().flatten() {
                println!(
                    "{:<22} {:<10} {:<16} {:>6}  {}",
                    au["id"].as_str().unwrap_or("?"),
                    au["state"].as_str().unwrap_or("?"),
                    au["target"].to_string(),
                    au["armed_by_uid"],
                    au["reason"].as_str().unwrap_or("")
                );
            }
            0
        }
        Err(c) => c,
    }
}
