//! Proposals per second through a real daemon's agent socket, and their
//! round-trip latency, with the operator's `status` answered alongside.
//!
//!     cargo bench --bench proposals        (root: it runs the daemon)
//!
//! One agent (root, so this process may speak on its socket; its rate limit
//! raised for the measurement) and three kinds of proposal, each sent by 1
//! and by 4 connections at once for `PROPOSALS_BENCH_SECS` seconds (default 5):
//!
//! - `needs_approval (repeat)`: the decision only (no fork, no journal write);
//! - `bad_arguments`: a refusal (governance threshold raised for the bench);
//! - `read allow`: decision, fork/exec of `/bin/true` in the agent's cgroup,
//!   wait, output capture, three audit entries.
//!
//! Every proposal is audited, so the audit log's durable write rate bounds
//! the figures as much as the broker does.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TOOLS: &str = r#"
[[tool]]
name = "true"
scope = "read"
program = "/bin/true"
args = ["{x}"]
timeout = "5s"
output_cap = "4K"
[tool.params.x]
type = "string"
max_len = 16

[[tool]]
name = "deploy"
scope = "execute"
program = "/bin/true"
args = ["{env}"]
timeout = "5s"
output_cap = "4K"
[tool.params.env]
type = "string"
allowed = ["prod"]
"#;

struct Result {
    kind: &'static str,
    conns: usize,
    n: usize,
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    status_max_ms: f64,
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e6
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("proposals bench: needs root (it runs the daemon)");
        std::process::exit(2);
    }
    let secs: u64 = std::env::var("PROPOSALS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let agent = "[[agent]]\nname = \"bench\"\ncommand = [\"/bin/sleep\", \"1000\"]\nuser = \"root\"\nallow_root = true\napi_rate = 100000.0\napi_burst = 100000\nenv = { WARDEN_TEST_MARK = \"{M}\" }\n[agent.broker]\ntools = [\"true\", \"deploy\"]\n";
    let mut env = common::Env::new("[limits]\ngovernance_rejections = 4000000000\n", agent);
    let reg = env.path("tools.toml");
    std::fs::write(&reg, TOOLS).unwrap();
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("tools = {:?}\n{cfg}", reg.display().to_string()),
    )
    .unwrap();
    env.start();
    env.wait_for("agent running", Duration::from_secs(30), || {
        env.agent("bench")["state"] == "running"
    });
    let sock = env.path("agents/bench/agent.sock");
    let kinds: [(&'static str, Value); 3] = [
        (
            "needs_approval (repeat)",
            json!({"type": "propose", "tool": "deploy", "args": {"env": "prod"}}),
        ),
        (
            "bad_arguments",
            json!({"type": "propose", "tool": "true", "args": {"y": "1"}}),
        ),
        (
            "read allow (fork+exec)",
            json!({"type": "propose", "tool": "true", "args": {"x": "1"}}),
        ),
    ];
    let mut results = Vec::new();
    for (kind, msg) in &kinds {
        for conns in [1usize, 4] {
            let line = format!("{msg}\n");
            let deadline = Instant::now() + Duration::from_secs(secs);
            let t0 = Instant::now();
            let workers: Vec<_> = (0..conns)
                .map(|_| {
                    let sock = sock.clone();
                    let line = line.clone();
                    std::thread::spawn(move || {
                        let s = UnixStream::connect(&sock).unwrap();
                        let mut rd = BufReader::new(s.try_clone().unwrap());
                        let mut w = s;
                        let mut lat = Vec::new();
                        let mut resp = String::new();
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            w.write_all(line.as_bytes()).unwrap();
                            resp.clear();
                            rd.read_line(&mut resp).unwrap();
                            lat.push(t.elapsed());
                            assert!(
                                !resp.contains("rate_limited") && !resp.contains("\"busy\""),
                                "{resp}"
                            );
                        }
                        lat
                    })
                })
                .collect();
            // The operator keeps asking for status meanwhile.
            let mut status_max = Duration::ZERO;
            while Instant::now() < deadline {
                let t = Instant::now();
                env.status();
                status_max = status_max.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut lat: Vec<Duration> = workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect();
            let took = t0.elapsed();
            let n = lat.len();
            results.push(Result {
                kind,
                conns,
                n,
                per_sec: n as f64 / took.as_secs_f64(),
                p50_us: pct(&mut lat, 0.50),
                p99_us: pct(&mut lat, 0.99),
                status_max_ms: status_max.as_secs_f64() * 1e3,
            });
            let r = results.last().unwrap();
            eprintln!(
                "{kind}, {conns} conn: {n} in {took:?}, {:.0}/s, p50 {:.0} us, p99 {:.0} us, status max {:.1} ms",
                r.per_sec, r.p50_us, r.p99_us, r.status_max_ms
            );
        }
    }
    assert_eq!(env.status()["daemon"]["state"], "running");
    env.signal(nix::sys::signal::Signal::SIGTERM);
    env.wait_exit(Duration::from_secs(30));
    println!("| kind | connections | proposals | per second | p50 µs | p99 µs | `status` max ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} |",
            r.kind, r.conns, r.n, r.per_sec, r.p50_us, r.p99_us, r.status_max_ms
        );
    }
}
