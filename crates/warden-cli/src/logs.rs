//! `warden logs AGENT [-f]`
//!
//! Agent output is the agent's to shape: on a terminal it is shown with
//! control characters escaped (an agent must not be able to move the cursor,
//! retitle the window or hide lines on an operator's screen); into a pipe or
//! a file, and with `--raw`, it is copied as it is.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use warden_proto::control::Request;

use super::output::{call, escape_control, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    agent: String,
    /// Keep printing new output.
    #[arg(short, long)]
    follow: bool,
    /// Print the daemon's JSON answer (without --follow).
    #[arg(long)]
    json: bool,
    /// Copy the output as it is, escape sequences included, even to a terminal.
    #[arg(long)]
    raw: bool,
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
    let escape = !a.raw && std::io::stdout().is_terminal();
    let show = |v: &serde_json::Value| {
        let data = v["data"].as_str().unwrap_or("");
        let mut out = std::io::stdout().lock();
        let _ = if escape {
            out.write_all(escape_control(data, true).as_bytes())
        } else {
            out.write_all(data.as_bytes())
        };
        let _ = out.flush();
    };
    show(&v);
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
                show(&v);
                offset = v["next_offset"].as_u64().unwrap_or(offset);
            }
            Err(c) => return c,
        }
    }
}
