//! `warden token create|list|revoke`: API tokens of `warden web`. The secret
//! is printed once at create; the daemon keeps only its SHA-256.

use std::path::Path;

use warden_proto::control::{Request, Role};

use super::output::{call, print_json};

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token; prints its secret once.
    Create {
        #[arg(long)]
        name: String,
        /// viewer (read), operator (+ start, stop, restart, approve, reject,
        /// checkin) or admin (+ halt, arm, execute, disarm, resume, cred,
        /// reload, tokens).
        #[arg(long)]
        role: Role,
        /// e.g. 90d; default: never.
        #[arg(long)]
        expires: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Every token (never a secret).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by name: it stops working at once.
    Revoke {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(socket: &Path, cmd: TokenCommand) -> i32 {
    let (req, json) = match cmd {
        TokenCommand::Create {
            name,
            role,
            expires,
            json,
        } => (
            Request::TokenCreate {
                name,
                role,
                expires,
            },
            json,
        ),
        TokenCommand::List { json } => (Request::TokenList, json),
        TokenCommand::Revoke { name, json } => (Request::TokenRevoke { name }, json),
    };
    let v = match call(socket, &req) {
        Ok(v) => v,
        Err(code) => return code,
    };
    if json {
        print_json(&v);
        return 0;
    }
    match req {
        Request::TokenCreate { .. } => {
            println!(
                "token {} ({}) created; its secret, shown only now:",
                v["token"]["name"].as_str().unwrap_or_default(),
                v["token"]["role"].as_str().unwrap_or_default()
            );
            println!("{}", v["secret"].as_str().unwrap_or_default());
        }
        Request::TokenList => {
            let list = v["tokens"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no tokens");
            }
            for t in list {
                let state = if !t["revoked_at_ms"].is_null() {
                    "revoked".to_string()
                } else if let Some(e) = t["expires_at_ms"].as_u64() {
                    format!("expires {}", fmt_ms(e))
                } else {
                    "no expiry".to_string()
                };
                println!(
                    "{:<24} {:<9} created {}  {}",
                    t["name"].as_str().unwrap_or_default(),
                    t["role"].as_str().unwrap_or_default(),
                    fmt_ms(t["created_at_ms"].as_u64().unwrap_or(0)),
                    state
                );
            }
        }
        _ => println!(
            "token {} revoked",
            v["token"]["name"].as_str().unwrap_or_default()
        ),
    }
    0
}

fn fmt_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}
