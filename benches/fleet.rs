//! Fleet halt benchmark (root): `warden fleet halt` → the last node's agents
//! "empty", for 3 and 10 nodes in network namespaces, with and without link
//! delay, next to one RTT and a local stop-file halt measured in the same run.
//!
//! Topology and cleanup are the root tests' (tests/fleet_common): one etcd
//! in its own namespace, each node in its own (daemon, agents, `warden fleet
//! run`), mutual TLS. Link delay is a userspace proxy in each node's
//! namespace that holds every chunk `delay` each way (this kernel has no
//! sch_netem), so one RTT is 2 × delay plus the veth's own round trip.
//!
//! Times: *fleet* from the halt record's `issued_ms` (written by the CLI right
//! before its etcd transaction) to the moment this process sees the last
//! node's `agents/cgroup.events` say `populated 0` (same host, same wall
//! clock; polled every 1 ms). *command*: the same end, from just before the
//! `warden fleet halt` process is spawned (adds process start and the TLS
//! handshake). *local*: one node's stop file created → its agents empty.
//! Target: fleet ≤ local + one RTT + 50 ms.
//!
//! `cargo bench --bench fleet` (as root); `FLEET_BENCH_REPS=N` (default 3),
//! `FLEET_BENCH_NODES=3,10`, `FLEET_BENCH_DELAY_MS=20`. The report is printed
//! and written to `target/bench-fleet.md`; see docs/fleet.md.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/fleet_common/mod.rs"]
mod fleet_common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use fleet_common::{Cluster, Options, ETCD_PORT};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn env_list(var: &str, default: &str) -> Vec<u64> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect()
}

/// Polls until every node's agents are gone; the wall clock (ms) of the last.
fn last_empty(c: &Cluster) -> u64 {
    let mut at = vec![None; c.nodes.len()];
    let deadline = Instant::now() + Duration::from_secs(30);
    while at.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "a node did not halt\n{}",
            c.logs()
        );
        for (i, n) in c.nodes.iter().enumerate() {
            if at[i].is_none() && !n.populated() {
                at[i] = Some((now_ms(), Instant::now()));
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    at.into_iter().map(|t| t.unwrap().0).max().unwrap()
}

fn running(c: &Cluster) -> bool {
    c.nodes
        .iter()
        .all(|n| n.populated() && n.state() == "running")
}

/// One TCP connect from node 1 to etcd across its veth (one round trip), best of 5.
fn veth_rtt(c: &Cluster) -> Duration {
    let ns = c.nodes[0].ns.path();
    std::thread::spawn(move || {
        let f = std::fs::File::open(ns).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        (0..5)
            .map(|_| {
                let t = Instant::now();
                let s = std::net::TcpStream::connect(("10.250.1.1", ETCD_PORT)).unwrap();
                let d = t.elapsed();
                drop(s);
                d
            })
            .min()
            .unwrap()
    })
    .join()
    .unwrap()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Row {
    nodes: usize,
    delay_ms: u64,
    rtt_ms: f64,
    local: Vec<f64>,
    fleet: Vec<f64>,
    command: Vec<f64>,
    /// Issue → the slowest node saw the record.
    seen: Vec<f64>,
    /// The slowest daemon halt call.
    call: Vec<f64>,
}

fn run_one(nodes: usize, delay_ms: u64, reps: usize) -> Row {
    let delay = (delay_ms > 0).then(|| Duration::from_millis(delay_ms));
    let c = Cluster::start(Options {
        nodes,
        delay,
        ..Options::default()
    });
    let rtt = veth_rtt(&c) + 2 * delay.unwrap_or_default();
    let mut row = Row {
        nodes,
        delay_ms,
        rtt_ms: rtt.as_secs_f64() * 1000.0,
        local: vec![],
        fleet: vec![],
        command: vec![],
        seen: vec![],
        call: vec![],
    };
    for rep in 0..reps {
        // Local: node 1's stop file.
        let n1 = &c.nodes[0];
        let stop = n1.env.stop_file();
        std::fs::create_dir_all(stop.parent().unwrap()).unwrap();
        let t0 = Instant::now();
        std::fs::write(&stop, b"bench").unwrap();
        while n1.populated() {
            assert!(t0.elapsed() < Duration::from_secs(30), "local halt stuck");
            std::thread::sleep(Duration::from_millis(1));
        }
        row.local.push(t0.elapsed().as_secs_f64() * 1000.0);
        std::fs::remove_file(&stop).unwrap();
        c.wait("n1 in SAFE MODE", Duration::from_secs(10), || {
            n1.state() == "safe_mode"
        });
        let (rc, o, e) = n1.env.cli(&["resume", "--reason", "bench"]);
        assert_eq!(rc, 0, "{o}{e}");
        c.wait("every node running", Duration::from_secs(30), || {
            running(&c)
        });

        // Fleet.
        let t0 = Instant::now();
        let t0_ms = now_ms();
        let (rc, out, err) = c.admin(&["halt", "--reason", &format!("bench {rep}"), "--json"]);
        assert_eq!(rc, 0, "{out}{err}");
        let rec: serde_json::Value = serde_json::from_str(&out).unwrap();
        let issued = rec["issued_ms"].as_u64().unwrap();
        let epoch = rec["epoch"].as_u64().unwrap().to_string();
        let end = last_empty(&c);
        let _ = t0;
        row.fleet.push(end.saturating_sub(issued) as f64);
        row.command.push(end.saturating_sub(t0_ms) as f64);
        eprintln!(
            "  {nodes} nodes, delay {delay_ms} ms, run {}: local {:.1} ms, fleet {} ms, command {} ms",
            rep + 1,
            row.local.last().unwrap(),
            end.saturating_sub(issued),
            end.saturating_sub(t0_ms)
        );
        c.wait("every node acked", Duration::from_secs(10), || {
            c.status_json()["not_acked"] == serde_json::json!([])
        });
        // Where the time went, from the acks: issue → the node saw the
        // record (wall clocks of one host), and the daemon's halt call.
        let st = c.status_json();
        let (mut seen, mut call) = (0u64, 0f64);
        for r in st["nodes"].as_array().unwrap() {
            let a = &r["ack"];
            seen = seen.max(a["seen_ms"].as_u64().unwrap_or(0).saturating_sub(issued));
            call = call.max(a["halt_ms"].as_f64().unwrap_or(0.0));
        }
        row.seen.push(seen as f64);
        row.call.push(call);
        eprintln!("    slowest node: issue → seen {seen} ms; daemon halt call {call:.1} ms");
        for n in &c.nodes {
            let (rc, o, e) = n.fleet_cli(&["resume", "--epoch", &epoch, "--reason", "bench"]);
            assert_eq!(rc, 0, "{}: {o}{e}", n.name);
        }
        c.wait("every node running", Duration::from_secs(30), || {
            running(&c)
        });
    }
    row
}

fn main() {
    common::require_root();
    let reps = env_list("FLEET_BENCH_REPS", "3")
        .first()
        .copied()
        .unwrap_or(3)
        .max(1) as usize;
    let sizes = env_list("FLEET_BENCH_NODES", "3,10");
    let delay = env_list("FLEET_BENCH_DELAY_MS", "20")[0];
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .next()
        .unwrap_or("?")
        .to_string();
    let t = Instant::now();
    let mut rows = vec![];
    for &n in &sizes {
        for d in [0, delay] {
            eprintln!("fleet bench: {n} nodes, delay {d} ms each way, {reps} runs");
            rows.push(run_one(n as usize, d, reps));
        }
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Fleet halt, median / max of {reps} runs (ms); binary {}; {:.0} s in all; load average before {load} (2 cores shared).\n",
        common::bin(),
        t.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        md,
        "| nodes | delay each way | one RTT | local stop-file halt | fleet halt → last node empty | from the command | issue → seen (slowest node) | daemon halt call (slowest) | target (local + RTT + 50) | met |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|:--:|");
    for r in &mut rows {
        let lmax = r.local.iter().cloned().fold(0.0, f64::max);
        let fmax = r.fleet.iter().cloned().fold(0.0, f64::max);
        let cmax = r.command.iter().cloned().fold(0.0, f64::max);
        let (l, f, cm) = (
            median(&mut r.local),
            median(&mut r.fleet),
            median(&mut r.command),
        );
        let (s, hc) = (median(&mut r.seen), median(&mut r.call));
        let target = l + r.rtt_ms + 50.0;
        let _ = writeln!(
            md,
            "| {} | {} ms | {:.1} | {l:.1} / {lmax:.1} | {f:.0} / {fmax:.0} | {cm:.0} / {cmax:.0} | {s:.0} | {hc:.1} | {target:.0} | {} |",
            r.nodes,
            r.delay_ms,
            r.rtt_ms,
            if f <= target { "yes" } else { "NO" }
        );
    }
    print!("{md}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-fleet.md");
    let _ = std::fs::create_dir_all(out.parent().unwrap());
    let _ = std::fs::write(&out, &md);
}
