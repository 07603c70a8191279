//! `warden start|stop|restart AGENT`

use std::path::Path;

use warden_proto::control::Request;

use super::output::{call, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    agent: String,
    /// Print the daemon's JSON answer.
    #[arg(long)]
    json: bool,
}

pub fn run(socket: &Path, verb: &str, a: Args) -> i32 {
    let req = match verb {
        "start" => Request::Start {
            agent: a.agent.clone(),
        },
        "stop" => Request::Stop {
            agent: a.agent.clone(),
        },
        _ => Request::Restart {
            agent: a.agent.clone(),
        },
    };
    match call(socket, &req) {
        Ok(v) if a.json => {
            print_json(&v);
            0
        }
        Ok(v) => {
            println!("{}: {}", a.agent, v["state"].as_str().unwrap_or("?"));
            0
        }
        Err(c) => c,
    }
}

#[derive(Debug, clap::Args)]
pub struct CheckinArgs {
    #[arg(long)]
    json: bool,
}

pub fn checkin(socket: &Path, a: CheckinArgs) -> i32 {
    match call(socket, &Request::Checkin) {
        Ok(v) if a.json => {
            print_json(&v);
            0
        }
        Ok(v) => {
            match v["next_due_ms"].as_u64() {
                Some(due) => {
                    let left = due.saturating_sub(warden_core::clock::now_ms()) / 1000;
                    println!("checked in; next check-in due within {left}s");
                }
                None => println!("checked in (no oversight_timeout is configured)"),
            }
            0
        }
        Err(c) => c,
    }
}
