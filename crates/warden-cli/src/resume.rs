//! `warden resume --reason TEXT`

use std::path::Path;

use warden_proto::control::Request;

use super::output::{call, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Why it is safe to go on; recorded in the audit log with your uid.
    #[arg(long)]
    reason: String,
    /// Signed authorization from `warden authorize-resume` (when the daemon
    /// is configured with `resume_key`).
    #[arg(long, value_name = "FILE")]
    authorization: Option<std::path::PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn run(socket: &Path, a: Args) -> i32 {
    if a.reason.trim().is_empty() {
        eprintln!("warden: --reason must not be empty");
        return super::exit::USAGE;
    }
    let authorization = match &a.authorization {
        None => None,
        Some(p) => match std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("not JSON: {e}")))
        {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("warden: cannot read authorization {}: {e}", p.display());
                return super::exit::FAILED;
            }
        },
    };
    match call(
        socket,
        &Request::Resume {
            reason: a.reason,
            authorization,
        },
    ) {
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
