//! `warden logs AGENT [-f]`

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use warden_proto::control::Request;

use super::output::{call, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    agent: String,
    /// Keep printing new output.
    #[arg(short, long)]
    follow: bool,
    /// Print the daemon's JSON answer (without --follow).
    #[arg(long)]
    json: bool,
}

pub fn run(socket: &Path, a: Args) -> i32 {
    let v = match call(
        socket,
        &Request::Logs {
            agent: a.agent.clone(),
            offset: None,
        },
    ) {
        Ok(v) => v,
        Err(c) => return c,
    };
    if a.json && !a.follow {
        print_json(&v);
        return 0;
    }
    print!("{}", v["data"].as_str().unwrap_or(""));
    let _ = std::io::stdout().flush();
    if !a.follow {
        return 0;
    }
    let mut offset = v["next_offset"].as_u64().unwrap_or(0);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        match call(
            socket,
            &Request::Logs {
                agent: a.agent.clone(),
                offset: Some(offset),
            },
        ) {
            Ok(v) => {
                print!("{}", v["data"].as_str().unwrap_or(""));
                let _ = std::io::stdout().flush();
                offset = v["next_offset"].as_u64().unwrap_or(offset);
            }
            Err(c) => return c,
        }
    }
}
