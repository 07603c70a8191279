//! `warden reload [--dry-run]`: the daemon reads its config again and
//! applies what changed; also the plan printer `check-config
//! --against-running` shares.
//!
//! Exit codes: 0 applied (or planned); 1 refused for another reason (the
//! tool registry, or the daemon failed); 3 no daemon; 4 the new config does
//! not parse or validate, or changes a key that cannot change while the
//! daemon runs (the running config stays); 6 permission.

use std::path::Path;
use std::time::Duration;

use warden_proto::control::client::{self, ClientError};
use warden_proto::control::{ErrorKind, Request, Response};

use super::exit;
use super::output::print_json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print what would change, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the daemon's JSON answer.
    #[arg(long)]
    json: bool,
}

pub fn run(socket: &Path, a: Args) -> i32 {
    let req = Request::Reload {
        dry_run: a.dry_run,
        config_text: None,
    };
    match send(socket, &req) {
        Ok(v) if a.json => {
            print_json(&v);
            exit::OK
        }
        Ok(v) => {
            print_plan(&v);
            exit::OK
        }
        Err(c) => c,
    }
}

/// Sends a reload request; a refused config is exit 4.
pub fn send(socket: &Path, req: &Request) -> Result<serde_json::Value, i32> {
    match client::call(socket, req, Duration::from_secs(120)) {
        Ok(Response { ok: true, data, .. }) => Ok(data.unwrap_or_default()),
        Ok(r) => {
            eprintln!(
                "warden: {}",
                r.error.unwrap_or_else(|| "reload failed".into())
            );
            Err(if r.code == Some(ErrorKind::BadRequest) {
                exit::CONFIG
            } else {
                exit::FAILED
            })
        }
        Err(e @ ClientError::NotRunning { .. }) => {
            eprintln!("warden: {e}");
            Err(exit::NOT_RUNNING)
        }
        Err(e @ ClientError::Permission { .. }) => {
            eprintln!("warden: {e}");
            Err(exit::PERMISSION)
        }
        Err(e) => {
            eprintln!("warden: {e}");
            Err(exit::FAILED)
        }
    }
}

/// One line per agent: started, stopped, restarted, limits updated, unchanged.
pub fn print_plan(v: &serde_json::Value) {
    let dry = v["dry_run"].as_bool() == Some(true);
    let short = |s: &serde_json::Value| {
        s.as_str()
            .unwrap_or("?")
            .chars()
            .take(12)
            .collect::<String>()
    };
    println!(
        "config {}{} (sha256 {} -> {})",
        v["config"].as_str().unwrap_or("?"),
        if dry {
            ": plan, nothing changed"
        } else {
            " reloaded"
        },
        short(&v["old_sha256"]),
        short(&v["new_sha256"])
    );
    for a in v["agents"].as_array().into_iter().flatten() {
        let keys: Vec<&str> = a["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str())
            .collect();
        let mut line = format!(
            "  {}: {}",
            a["agent"].as_str().unwrap_or("?"),
            a["change"].as_str().unwrap_or("?")
        );
        if !keys.is_empty() {
            line += &format!(" ({})", keys.join(", "));
        }
        if let Some(r) = a["result"].as_str() {
            line += &format!(": {r}");
        }
        println!("{line}");
    }
    let live: Vec<&str> = v["live"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str())
        .collect();
    if !live.is_empty() {
        println!("  daemon-wide, applied live: {}", live.join(", "));
    }
    let t = &v["tools"];
    if !t.is_null() {
        match t["error"].as_str() {
            Some(e) => println!("  tool registry: {e}"),
            None => println!(
                "  tool registry {}: {} tools",
                t["path"].as_str().unwrap_or("?"),
                t["tools"].as_array().map(|a| a.len()).unwrap_or(0)
            ),
        }
    }
}
