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
    // The daemon cuts long reasons too; cutting here keeps the request
    // under the socket's line limit.
    let reason = warden_proto::control::truncate_reason(&a.reason);
    match call(socket, &Request::Halt { reason }) {
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
            if h["verified_empty"] == false {
                println!(
                    "NOT VERIFIED EMPTY: {}",
                    h["errors"]
                        .as_array()
                        .map(|e| e
                            .iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join("; "))
                        .unwrap_or_default()
                );
                return super::exit::FAILED;
            }
            if h["survivors"].as_array().is_some_and(|s| !s.is_empty()) {
                return super::exit::FAILED;
            }
            0
        }
        Err(c) => c,
    }
}
