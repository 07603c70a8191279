//! `warden approvals|approve|reject|runs|run show`: the operator's
//! side of the tool broker.

use std::path::Path;

use warden_proto::control::Request;

use super::output::{call, print_json};

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// The request id (`warden approvals`).
    id: String,
    /// How long the single-use token stays valid (default 10m).
    #[arg(long)]
    ttl: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RejectArgs {
    /// The request id (`warden approvals`).
    id: String,
    /// Why; the agent is told, and it is recorded with your uid.
    #[arg(long)]
    reason: String,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunsArgs {
    /// Only this agent's runs.
    #[arg(long)]
    agent: Option<String>,
    /// Only runs that ended with this reason: completed, limit_exceeded,
    /// approval_required, policy_denied, error.
    #[arg(long)]
    reason: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum RunCommand {
    /// One run with every call: proposed, decided, approved by, executed,
    /// result size, time.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

fn age(ms: &serde_json::Value) -> String {
    let s = ms.as_u64().unwrap_or(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

pub fn approvals(socket: &Path, a: ListArgs) -> i32 {
    match call(socket, &Request::Approvals) {
        Ok(v) if a.json => {
            print_json(&v);
            0
        }
        Ok(v) => {
            let list = v["pending"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no tool call waits for approval");
            } else {
                println!(
                    "{:<20} {:<16} {:<14} {:<8} {:>7} {:>8}  ARGS",
                    "ID", "AGENT", "TOOL", "SCOPE", "AGE", "EXPIRES"
                );
            }
            for p in list {
                println!(
                    "{:<20} {:<16} {:<14} {:<8} {:>7} {:>8}  {}",
                    p["id"].as_str().unwrap_or("?"),
                    p["agent"].as_str().unwrap_or("?"),
                    p["tool"].as_str().unwrap_or("?"),
                    p["scope"].as_str().unwrap_or("?"),
                    age(&p["age_ms"]),
                    age(&p["expires_in_ms"]),
                    p["args"]
                );
            }
            0
        }
        Err(c) => c,
    }
}

pub fn approve(socket: &Path, a: ApproveArgs) -> i32 {
    match call(
        socket,
        &Request::Approve {
            id: a.id,
            ttl: a.ttl,
        },
    ) {
        Ok(v) if a.json => {
            print_json(&v);
            0
        }
        Ok(v) => {
            println!(
                "approved {}: agent {} may call {} once; the agent receives the token through approval.wait",
                v["request_id"].as_str().unwrap_or("?"),
                v["agent"].as_str().unwrap_or("?"),
                v["tool"].as_str().unwrap_or("?"),
            );
            0
        }
        Err(c) => c,
    }
}

pub fn reject(socket: &Path, a: RejectArgs) -> i32 {
    match call(
        socket,
        &Request::Reject {
            id: a.id,
            reason: a.reason,
        },
    ) {
        Ok(v) if a.json => {
            print_json(&v);
            0
        }
        Ok(v) => {
            println!("rejected {}", v["request_id"].as_str().unwrap_or("?"));
            0
        }
        Err(c) => c,
    }
}

pub fn runs(socket: &Path, a: RunsArgs) -> i32 {
    match call(
        socket,
        &Request::Runs {
            agent: a.agent,
            reason: a.reason,
        },
    ) {
        Ok(v) if a.json => {
            print_json(&v);
            0
        }
        Ok(v) => {
            let list = v["runs"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no runs");
            } else {
                println!(
                    "{:<24} {:<16} {:>5} {:>5}  {:<18} GOAL",
                    "ID", "AGENT", "STEPS", "CALLS", "STATE"
                );
            }
            for r in list {
                let state = match r["state"]["state"].as_str() {
                    Some("ended") => r["state"]["reason"].as_str().unwrap_or("ended"),
                    Some(s) => s,
                    None => "?",
                };
                println!(
                    "{:<24} {:<16} {:>5} {:>5}  {:<18} {}",
                    r["id"].as_str().unwrap_or("?"),
                    r["agent"].as_str().unwrap_or("?"),
                    r["steps"],
                    r["tool_calls"],
                    state,
                    r["goal"].as_str().unwrap_or("")
                );
            }
            0
        }
        Err(c) => c,
    }
}

pub fn run(socket: &Path, c: RunCommand) -> i32 {
    let RunCommand::Show { id, json } = c;
    match call(socket, &Request::RunShow { id }) {
        Ok(v) if json => {
            print_json(&v);
            0
        }
        Ok(v) => {
            let r = &v["run"];
            println!(
                "run {} of agent {}: {}",
                r["id"].as_str().unwrap_or("?"),
                r["agent"].as_str().unwrap_or("?"),
                r["goal"].as_str().unwrap_or("")
            );
            println!(
                "state: {}  steps {}  tool calls {}  limits {}",
                r["state"], r["steps"], r["tool_calls"], r["limits"]
            );
            for c in r["calls"].as_array().cloned().unwrap_or_default() {
                let mut line = format!(
                    "  #{} {} {} -> {}",
                    c["seq"],
                    c["tool"].as_str().unwrap_or("?"),
                    c["args"],
                    c["decision"].as_str().unwrap_or("?")
                );
                if let Some(r) = c["reason"].as_str() {
                    line += &format!(" ({r})");
                }
                if let Some(r) = c["request_id"].as_str() {
                    line += &format!(" request {r}");
                }
                if !c["approved_by"].is_null() {
                    line += &format!(" approved by uid {}", c["approved_by"]);
                }
                if c["executed"] == true {
                    line += &format!(
                        "; exit {} {} bytes{} in {} ms",
                        c["exit_code"],
                        c["result_bytes"],
                        if c["truncated"] == true {
                            " (truncated)"
                        } else {
                            ""
                        },
                        c["duration_ms"]
                    );
                }
                println!("{line}");
            }
            0
        }
        Err(c) => c,
    }
}
