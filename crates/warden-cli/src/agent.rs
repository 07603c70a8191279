//! `warden agent`: an agent talks to its own socket (`$WARDEN_SOCKET`).
//!
//! Exit codes: 0 ok, 1 the daemon refused or failed, 2 usage (no socket
//! given), 3 the socket is unreachable (absent, no daemon, or another
//! agent's). `propose` also: 0 only when the tool ran and exited 0, 4 the
//! call waits for an operator's approval, 5 the tool ran and failed
//! (non-zero exit, signal or timeout).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use warden_proto::agent::client;
use warden_proto::agent::AgentRequest;

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
    /// Seconds to wait for the answer (default 30; 900 for `propose` and
    /// `wait`, which last as long as a tool or an operator).
    #[arg(long, global = true)]
    timeout: Option<u64>,
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
        /// An approval token for this call (`wait` prints it).
        #[arg(long)]
        token: Option<String>,
        /// If the call needs approval, wait up to this many seconds for an
        /// operator, then propose again with the token.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
    /// Open a run towards a goal (prints its id).
    RunStart {
        /// What the run is for.
        goal: String,
    },
    /// End a run.
    RunEnd {
        /// The id `run-start` printed.
        run_id: String,
        /// completed, limit_exceeded, approval_required, policy_denied or
        /// error (default: from the run's last call).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Wait for an operator's decision on an approval request.
    Wait {
        /// The request id `propose` printed.
        request_id: String,
        /// Seconds to wait (the daemon waits at most 15 minutes).
        #[arg(long, default_value_t = 60)]
        secs: u64,
    },
}

/// `propose` exit codes beyond the common ones.
const PENDING: i32 = 4;
const TOOL_FAILED: i32 = 5;

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
        Message::RunStart { goal } => AgentRequest::RunStart { goal },
        Message::RunEnd { run_id, reason } => AgentRequest::RunEnd { run_id, reason },
        Message::Wait { request_id, secs } => AgentRequest::ApprovalWait {
            request_id,
            timeout_ms: Some(secs.saturating_mul(1000)),
        },
        Message::Heartbeat => AgentRequest::Heartbeat,
        Message::Task { description } => AgentRequest::Task { description },
        Message::Whoami => AgentRequest::Whoami,
        Message::Propose {
            tool,
            args,
            json_args,
            token,
            ..
        } => {
            let mut map = BTreeMap::new();
            for (k, v) in args.into_iter().chain(json_args) {
                if map.insert(k.clone(), v).is_some() {
                    return Err(format!("argument `{k}` given twice"));
                }
            }
            AgentRequest::Propose {
                tool,
                args: map,
                token,
            }
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
    let long = matches!(a.message, Message::Propose { .. } | Message::Wait { .. });
    let timeout = Duration::from_secs(a.timeout.unwrap_or(if long { 900 } else { 30 }));
    let wait = match &a.message {
        Message::Propose { wait, .. } => *wait,
        _ => None,
    };
    let req = match request(a.message) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warden agent: {e}");
            return exit::USAGE;
        }
    };
    let talk = |req: &AgentRequest| {
        client::call(&socket, req, timeout).map_err(|e| {
            eprintln!("warden agent: {e}");
            if e.is_unreachable() {
                exit::NOT_RUNNING
            } else {
                exit::FAILED
            }
        })
    };
    let mut resp = match talk(&req) {
        Ok(r) => r,
        Err(code) => return code,
    };
    // propose --wait: wait for the operator, then propose again with the token.
    if let (Some(secs), AgentRequest::Propose { tool, args, .. }) = (wait, &req) {
        if let Some(id) = pending_request(&resp) {
            eprintln!("warden agent: {tool}: waiting up to {secs}s for approval of request {id}");
            let w = AgentRequest::ApprovalWait {
                request_id: id,
                timeout_ms: Some(secs.saturating_mul(1000)),
            };
            let answer = match talk(&w) {
                Ok(r) => r,
                Err(code) => return code,
            };
            let d = answer.data.clone().unwrap_or_default();
            match d["state"].as_str() {
                Some("approved") => {
                    let again = AgentRequest::Propose {
                        tool: tool.clone(),
                        args: args.clone(),
                        token: d["token"].as_str().map(str::to_string),
                    };
                    resp = match talk(&again) {
                        Ok(r) => r,
                        Err(code) => return code,
                    };
                }
                _ => resp = answer,
            }
        }
    }
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
    exit_code(&req, &resp)
}

/// The request id of a proposal that waits for an operator.
fn pending_request(resp: &warden_proto::agent::AgentResponse) -> Option<String> {
    (resp.code == Some(warden_proto::agent::ErrorCode::PendingApproval))
        .then(|| {
            resp.data.as_ref()?["request_id"]
                .as_str()
                .map(str::to_string)
        })
        .flatten()
}

fn exit_code(req: &AgentRequest, resp: &warden_proto::agent::AgentResponse) -> i32 {
    let d = resp.data.clone().unwrap_or_default();
    match req {
        AgentRequest::Propose { .. } if pending_request(resp).is_some() => PENDING,
        AgentRequest::Propose { .. } if resp.ok => match d["state"].as_str() {
            // A wait that ended without approval.
            Some("pending") => PENDING,
            Some(_) => exit::FAILED,
            None if d["exit_code"] == 0 => exit::OK,
            None => TOOL_FAILED,
        },
        AgentRequest::ApprovalWait { .. } if resp.ok => match d["state"].as_str() {
            Some("approved") => exit::OK,
            Some("pending") => PENDING,
            _ => exit::FAILED,
        },
        _ if resp.ok => exit::OK,
        _ => exit::FAILED,
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
        // A tool's output goes where it would have gone.
        AgentRequest::Propose { .. } if d.get("stdout").is_some() => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(d["stdout"].as_str().unwrap_or("").as_bytes());
            let _ = std::io::stderr().write_all(d["stderr"].as_str().unwrap_or("").as_bytes());
            if d["timed_out"] == true {
                eprintln!("warden agent: tool timed out and was killed");
            } else if !d["signal"].is_null() {
                eprintln!("warden agent: tool killed by signal {}", d["signal"]);
            }
            if d["truncated"] == true {
                eprintln!("warden agent: output truncated at the tool's output cap");
            }
        }
        AgentRequest::Propose { .. } | AgentRequest::ApprovalWait { .. }
            if d.get("state").is_some() =>
        {
            match d["state"].as_str() {
                Some("approved") => println!("{}", d["token"].as_str().unwrap_or("")),
                Some("rejected") => eprintln!(
                    "warden agent: request {} rejected by uid {}: {}",
                    d["request_id"].as_str().unwrap_or("?"),
                    d["rejected_by"],
                    d["reason"].as_str().unwrap_or("")
                ),
                Some(st) => eprintln!(
                    "warden agent: request {} is {st}",
                    d["request_id"].as_str().unwrap_or("?")
                ),
                None => {}
            }
        }
        AgentRequest::RunStart { .. } => println!("{}", d["run_id"].as_str().unwrap_or("?")),
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
