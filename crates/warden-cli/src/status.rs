//! `warden status`

use std::path::Path;

use warden_proto::control::Request;

use super::output::{bytes, call, ms, print_json, text};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the daemon's JSON answer.
    #[arg(long)]
    json: bool,
}

pub fn run(socket: &Path, a: Args) -> i32 {
    let v = match call(socket, &Request::Status) {
        Ok(v) => v,
        Err(code) => return code,
    };
    if a.json {
        print_json(&v);
        return 0;
    }
    let d = &v["daemon"];
    println!(
        "warden {} pid {} up {}s",
        d["version"].as_str().unwrap_or("?"),
        d["pid"],
        d["uptime_s"]
    );
    match d["state"].as_str() {
        Some("safe_mode") => {
            let l = &d["safe_mode"];
            println!("state: SAFE MODE");
            println!("  why: {} ({})", text(&l["reason"]), text(&l["trigger"]));
            if let Some(h) = l["halt_id"].as_str() {
                println!("  halt: {h}");
            }
            println!("  resume with: warden resume --reason TEXT");
        }
        Some(s) => println!("state: {s}"),
        None => println!("state: ?"),
    }
    println!(
        "stop file: {} ({})",
        d["stop_file"].as_str().unwrap_or("?"),
        if d["stop_file_present"].as_bool() == Some(true) {
            "PRESENT"
        } else {
            "absent"
        }
    );
    println!(
        "cgroups: {} at {}",
        d["cgroup_layout"].as_str().unwrap_or("?"),
        d["cgroup_root"].as_str().unwrap_or("?")
    );
    let p = &v["protection"];
    if !p.is_null() {
        let w = &p["watch"];
        match (w["mechanism"].as_str(), w["permission_events"].as_bool()) {
            (Some("fanotify"), Some(true)) => println!(
                "protected paths: fanotify, writers named; agents' writes refused and halted, operators' changes audited"
            ),
            (Some("fanotify"), _) => println!(
                "protected paths: fanotify, writers named (no permission events: agents' writes halted after the fact)"
            ),
            _ => println!(
                "protected paths: inotify (fanotify unavailable): ANY change halts, whoever made it"
            ),
        }
        if p["config"]["differs"].as_bool() == Some(true) {
            println!(
                "config: {} on disk DIFFERS from the running config (`warden reload` applies it)",
                p["config"]["path"].as_str().unwrap_or("?")
            );
        }
    }
    let b = &v["broker"];
    if !b["registry"].is_null() {
        println!(
            "tools: {} from {}; {} waiting for approval, {} running, {} open runs",
            b["tools"].as_array().map(|a| a.len()).unwrap_or(0),
            b["registry"].as_str().unwrap_or("?"),
            b["pending_approvals"],
            b["running_tools"],
            b["open_runs"]
        );
    }
    println!();
    super::agents::print_table(&v["agents"]);
    let h = &v["last_halt"];
    if !h.is_null() {
        println!();
        println!(
            "last halt {}: {} ({})",
            h["id"].as_str().unwrap_or("?"),
            text(&h["trigger"]),
            text(&h["reason"])
        );
        let t = &h["timings"];
        println!(
            "  frozen {}  evidence {}  killed {}  empty {}  processes {}  survivors {}",
            ms(&t["frozen_us"]),
            ms(&t["evidence_us"]),
            ms(&t["killed_us"]),
            ms(&t["empty_us"]),
            h["processes"],
            h["survivors"].as_array().map(|a| a.len()).unwrap_or(0)
        );
    }
    let _ = bytes;
    0
}
