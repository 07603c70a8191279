//! `warden resume --reason TEXT`

use std::path::Path;

use crate::control::Request;

use super::output::{call, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Why it is safe to go on; recorded in the audit log with your uid.
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
    match call(socket, &Request::Resume { reason: a.reason }) {
        Ok(v) if a.json => {
            print_json(&v);
            0
        }
        Ok(_) => {
            println!("resumed: SAFE MODE cleared, agents starting");
            0
        }
        Err(c) => c,
    }
}
