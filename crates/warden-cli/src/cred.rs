//! `warden cred issue|list|revoke|verify`: agents' credentials. The secret is
//! printed once at issue; warden keeps only its SHA-256.

use std::io::Read;
use std::path::Path;

use warden_proto::control::Request;

use super::output::{call, print_json};

#[derive(Debug, clap::Subcommand)]
pub enum CredCommand {
    /// Issue a credential to AGENT; prints the secret once.
    Issue {
        agent: String,
        /// api-key, oauth or service.
        #[arg(long)]
        kind: String,
        /// Its name; also the file name in the agent's credentials directory.
        #[arg(long)]
        name: String,
        /// Command (argv) that revokes it at the provider, run at kill level 1.
        #[arg(long, num_args = 1.., value_name = "ARG")]
        revoke_command: Option<Vec<String>>,
        #[arg(long)]
        json: bool,
    },
    /// Every credential (never the secret).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke one credential, or all of an agent's.
    Revoke {
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        agent: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Check a token read from standard input; exit 0 if valid.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(socket: &Path, cmd: CredCommand) -> i32 {
    let (req, json) = match cmd {
        CredCommand::Issue {
            agent,
            kind,
            name,
            revoke_command,
            json,
        } => (
            Request::CredIssue {
                agent,
                kind,
                name,
                revoke_command,
            },
            json,
        ),
        CredCommand::List { json } => (Request::CredList, json),
        CredCommand::Revoke { id, agent, json } => {
            if id.is_none() && agent.is_none() {
                eprintln!("warden: name a credential id or give --agent");
                return super::exit::USAGE;
            }
            (Request::CredRevoke { id, agent }, json)
        }
        CredCommand::Verify { json } => {
            let mut token = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut token) {
                eprintln!("warden: cannot read the token from standard input: {e}");
                return super::exit::FAILED;
            }
            (
                Request::CredVerify {
                    token: token.trim().to_string(),
                },
                json,
            )
        }
    };
    let issue = matches!(req, Request::CredIssue { .. });
    let v = match call(socket, &req) {
        Ok(v) => v,
        Err(c) => return c,
    };
    if json {
        print_json(&v);
        return 0;
    }
    if issue {
        println!("{}", v["secret"].as_str().unwrap_or(""));
        eprintln!(
            "issued {} to {}; the secret above is shown once; the agent reads it from {}",
            v["credential"]["id"].as_str().unwrap_or("?"),
            v["credential"]["agent"].as_str().unwrap_or("?"),
            v["file"].as_str().unwrap_or("?")
        );
    } else if let Some(list) = v["credentials"].as_array() {
        println!(
            "{:<18} {:<16} {:<8} {:<20} STATE",
            "ID", "AGENT", "KIND", "NAME"
        );
        for c in list {
            println!(
                "{:<18} {:<16} {:<8} {:<20} {}",
                c["id"].as_str().unwrap_or("?"),
                c["agent"].as_str().unwrap_or("?"),
                c["kind"].as_str().unwrap_or("?"),
                c["name"].as_str().unwrap_or("?"),
                if c["revoked_at_ms"].is_null() {
                    "active"
                } else {
                    "revoked"
                }
            );
        }
    } else if let Some(r) = v["revoked"].as_array() {
        println!("revoked {} credential(s)", r.len());
    } else {
        println!(
            "valid: {} ({})",
            v["credential"]["id"].as_str().unwrap_or("?"),
            v["credential"]["agent"].as_str().unwrap_or("?")
        );
    }
    0
}
