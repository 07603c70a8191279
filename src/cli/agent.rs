//! `warden agent`: an agent talks to its own socket (`$WARDEN_SOCKET`).
//!
//! Exit codes: 0 ok, 1 the daemon refused or failed, 2 usage (no socket
//! given), 3 the socket is unreachable (absent, no daemon, or another
//! agent's).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::agentapi::client;
use crate::agentapi::AgentRequest;

use super::exit;
use super::output::print_json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent socket (default: $WARDEN_SOCKET, set by the daemon).
    #[arg(long, global = true, value_name = "PATH")]
    agent_socket: Option<PathBuf>,
    /// Print the daemon's JSON answer.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for the answer.
    #[arg(long, global = true, default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    message: Message,
}

#[derive(Debug, clap::Subcommand)]
enum Message {
    /// Tell the daemon this agent is alive.
    Heartbeat,
    /// Report a task this agent generated (counted per day).
    Task {
        /// A short summary of the task.
        description: String,
    },
    /// Which agent this socket belongs to.
    Whoami,
    /// Ask the tool broker to run a tool.
    Propose {
        /// The tool's name.
        tool: String,
        /// An argument as a string: NAME=VALUE (repeatable).
        #[arg(long = "arg", value_name = "NAME=VALUE", value_parser = parse_string_arg)]
        args: Vec<(String, serde_json::Value)>,
        /// An argument as JSON: NAME=JSON (repeatable).
        #[arg(long = "json-arg", value_name = "NAME=JSON", value_parser = parse_json_arg)]
        json_args: Vec<(String, serde_json::Value)>,
    },
}

fn split(s: &str) -> Result<(&str, &str), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

fn parse_string_arg(s: &str) -> Result<(String, serde_json::Value), String> {
    let (k, v) = split(s)?;
    Ok((k.to_string(), serde_json::Value::String(v.to_string())))
}

fn parse_json_arg(s: &str) -> Result<(String, serde_json::Value), String> {
    let (k, v) = split(s)?;
    let v = serde_json::from_str(v).map_err(|e| format!("{k}: not JSON: {e}"))?;
    Ok((k.to_string(), v))
}

fn request(m: Message) -> Result<AgentRequest, String> {
    Ok(match m {
        Message::Heartbeat => AgentRequest::Heartbeat,
        Message::Task { description } => AgentRequest::Task { description },
        Message::Whoami => AgentRequest::Whoami,
        Message::Propose {
            tool,
            args,
            json_args,
        } => {
            let mut map = BTreeMap::new();
            for (k, v) in args.into_iter().chain(json_args) {
                if map.insert(k.clone(), v).is_some() {
                    return Err(format!("argument `{k}` given twice"));
                }
            }
            AgentRequest::Propose { tool, args: map }
        }
    })
}

pub fn run(a: Args) -> i32 {
    let Some(socket) = a
        .agent_socket
        .or_else(|| std::env::var_os("WARDEN_SOCKET").map(PathBuf::from))
    else {
        eprintln!(
            "warden agent: no socket: WARDEN_SOCKET is not set and --agent-socket is not given"
        );
        return exit::USAGE;
    };
    let req = match request(a.message) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warden agent: {e}");
            return exit::USAGE;
        }
    };
    let resp = match client::call(&socket, &req, Duration::from_secs(a.timeout)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warden agent: {e}");
            return if e.is_unreachable() {
                exit::NOT_RUNNING
            } else {
                exit::FAILED
            };
        }
    };
    if a.json {
        print_json(&serde_json::to_value(&resp).unwrap_or_default());
    } else if resp.ok {
        print_ok(&req, resp.data.as_ref().unwrap_or(&serde_json::Value::Null));
    } else {
        let code = resp
            .code
            .and_then(|c| serde_json::to_value(c).ok())
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "error".into());
        eprintln!(
            "warden agent: {}: {code}: {}",
            req.name(),
            resp.error.as_deref().unwrap_or("refused")
        );
    }
    if resp.ok {
        exit::OK
    } else {
        exit::FAILED
    }
}

fn print_ok(req: &AgentRequest, d: &serde_json::Value) {
    match req {
        AgentRequest::Whoami => println!(
            "agent {} (uid {}), protocol version {}",
            d["agent"].as_str().unwrap_or("?"),
            d["uid"],
            d["protocol_version"]
        ),
        _ if d.is_null() || d.as_object().is_some_and(|o| o.is_empty()) => {
            println!("{}: ok", req.name())
        }
        _ => println!("{}: ok {}", req.name(), d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        a: Args,
    }

    #[test]
    fn propose_arguments() {
        let t = T::try_parse_from([
            "t",
            "propose",
            "shell",
            "--arg",
            "cmd=ls -l",
            "--json-arg",
            "n=3",
            "--arg",
            "x=",
        ])
        .unwrap();
        let r = request(t.a.message).unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"type":"propose","tool":"shell","args":{"cmd":"ls -l","n":3,"x":""}})
        );
        assert!(T::try_parse_from(["t", "propose", "shell", "--arg", "nokey"]).is_err());
        assert!(T::try_parse_from(["t", "propose", "shell", "--json-arg", "k={"]).is_err());
        let t =
            T::try_parse_from(["t", "propose", "s", "--arg", "k=a", "--json-arg", "k=1"]).unwrap();
        assert!(request(t.a.message).unwrap_err().contains("twice"));
    }
}
