//! `warden halt --reason TEXT`

use std::path::Path;

use warden_proto::control::Request;

use super::output::{call, ms, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Why; recorded in the audit log with your uid.
    #[arg(long)]
    reason: String,
    #[arg(long)]
    json: bool,
}

pub fn run(socket: &Path, a: Args) -> i32 {
    if a.reason.trim().is_empty() {
        eprintln!("warden: --reason must not be empty");
        return super::exit::USAGE;
    }
    match call(socket, &Request::Halt { reason: a.reason }) {
        Ok(v) if a.json => {
            print_json(&v);
            0
        }
        Ok(v) => {
            let h = &v["halt"];
            let t = &h["timings"];
            println!(
                "halted {}: {} processes; frozen {}, killed {}, empty {}; survivors {}",
                h["id"].as_str().unwrap_or("?"),
                h["processes"],
                ms(&t["frozen_us"]),
                ms(&t["killed_us"]),
                ms(&t["empty_us"]),
                h["survivors"].as_array().map(|s| s.len()).unwrap_or(0)
            );
            println!("SAFE MODE: resume with `warden resume --reason TEXT`");
            if h["survivors"].as_array().is_some_and(|s| !s.is_empty()) {
                return super::exit::FAILED;
            }
            0
        }
        Err(c) => c,
    }
}
