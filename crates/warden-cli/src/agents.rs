//! `warden agents`

use std::path::Path;

use warden_proto::control::Request;

use super::output::{bytes, call, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the daemon's JSON answer.
    #[arg(long)]
    json: bool,
}

pub fn run(socket: &Path, a: Args) -> i32 {
    match call(socket, &Request::Agents) {
        Ok(v) if a.json => {
            print_json(&v);
            0
        }
        Ok(v) => {
            print_table(&v);
            0
        }
        Err(c) => c,
    }
}

pub fn print_table(agents: &serde_json::Value) {
    println!(
        "{:<20} {:<9} {:>8} {:>6} {:>10} {:>10} {:>8}  NOTE",
        "AGENT", "STATE", "PID", "PROCS", "CPU", "MEMORY", "RESTARTS"
    );
    for a in agents.as_array().into_iter().flatten() {
        let cpu = a["cpu_usec"]
            .as_u64()
            .map(|u| format!("{:.1}s", u as f64 / 1e6))
            .unwrap_or_else(|| "-".into());
        let mut note = String::new();
        if let Some(r) = a["reason"].as_str() {
            note.push_str(&super::output::escape_control(r, false));
        }
        if let Some(u) = a["unenforced_limits"].as_array().filter(|u| !u.is_empty()) {
            let names: Vec<&str> = u.iter().filter_map(|x| x.as_str()).collect();
            note.push_str(&format!("UNENFORCED: {}", names.join(", ")));
        }
        println!(
            "{:<20} {:<9} {:>8} {:>6} {:>10} {:>10} {:>8}  {}",
            a["name"].as_str().unwrap_or("?"),
            a["state"].as_str().unwrap_or("?"),
            a["pid"]
                .as_i64()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            a["pids"].as_array().map(|p| p.len()).unwrap_or(0),
            cpu,
            bytes(&a["memory_bytes"]),
            a["restarts"],
            note
        );
    }
}
