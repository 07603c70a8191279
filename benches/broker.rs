//! Latency of the broker's policy decision (`decide`), p50/p99 per kind.
//!
//!     cargo bench --bench broker
//!
//! 100,000 decisions in a realistic mix, inside one open run with limits (so
//! every decision is also recorded in the run): 70 % read calls allowed,
//! 10 % bad arguments, 5 % unknown tool, 5 % tool not allowed, 5 % a repeat
//! of a call waiting for approval, 5 % execute calls with a fresh signed token
//! (Ed25519 verification). The approval store is in memory here; a second,
//! smaller pass measures token calls with the fsynced journal on the disk of
//! `WARDEN_BENCH_DIR` (default: target/tmp).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warden_core::crypto::KeyPair;
use warden_daemon::broker::{
    decide, AgentToolPolicy, ApprovalStore, Decision, Proposal, Registry, RunStore,
};

const TOOLS: &str = r#"
[[tool]]
name = "cat"
scope = "read"
program = "/bin/cat"
args = ["--", "{file}"]
timeout = "5s"
output_cap = "64K"
[tool.params.file]
type = "path"
prefix = "/srv/data"
max_len = 4096

[[tool]]
name = "grep"
scope = "read"
program = "/usr/bin/grep"
args = ["-n", "--max-count={max}", "--", "{pattern}", "{file}"]
timeout = "5s"
output_cap = "64K"
[tool.params.pattern]
type = "string"
max_len = 200
[tool.params.max]
type = "integer"
min = 1
max = 1000
required = false
[tool.params.file]
type = "path"
prefix = "/srv/data"

[[tool]]
name = "deploy"
scope = "execute"
program = "/usr/local/bin/deploy"
args = ["--env={env}", "--build={build}"]
timeout = "60s"
output_cap = "1M"
[tool.params.env]
type = "string"
allowed = ["staging", "prod"]
[tool.params.build]
type = "integer"
min = 0

[[tool]]
name = "shutdown"
scope = "execute"
program = "/sbin/shutdown"
args = []
timeout = "1s"
output_cap = 1
"#;

const N: usize = 100_000;

fn prop(tool: &str, args: Value, token: Option<String>) -> Proposal {
    Proposal {
        tool: tool.into(),
        args: serde_json::from_value::<BTreeMap<String, Value>>(args).unwrap(),
        token,
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Signs `n` execute tokens for distinct builds, so each is fresh when used.
fn tokens(
    store: &mut ApprovalStore,
    reg: &Registry,
    policy: &AgentToolPolicy,
    key: &KeyPair,
    n: usize,
) -> Vec<Proposal> {
    (0..n)
        .map(|b| {
            let p = prop("deploy", json!({"env": "staging", "build": b}), None);
            let Decision::NeedsApproval { request_id } =
                decide(reg, policy, "bench", None, &p, store, 0)
            else {
                panic!("expected needs_approval")
            };
            let t = store
                .approve(&request_id, Duration::from_secs(3600), 1000, key, 0)
                .unwrap();
            prop(
                "deploy",
                json!({"env": "staging", "build": b}),
                Some(t.encode()),
            )
        })
        .collect()
}

fn main() {
    let reg = Registry::parse(TOOLS, Path::new("bench.toml")).unwrap();
    let policy = AgentToolPolicy {
        tools: vec!["cat".into(), "grep".into(), "deploy".into()],
        max_steps: Some(u32::MAX),
        max_tool_calls: Some(u32::MAX),
        max_runtime: Some(Duration::from_secs(86_400)),
    };
    // The same tools without run limits, for decisions made outside a run.
    let unlimited = AgentToolPolicy {
        tools: policy.tools.clone(),
        ..Default::default()
    };
    let key = KeyPair::generate();
    let mut store = ApprovalStore::new(key.verifying_key(), Duration::from_secs(3600));
    let mut token_calls = tokens(&mut store, &reg, &unlimited, &key, N / 20).into_iter();
    let waiting = prop("deploy", json!({"env": "prod", "build": 1}), None);
    assert!(matches!(
        decide(&reg, &unlimited, "bench", None, &waiting, &mut store, 0),
        Decision::NeedsApproval { .. }
    ));
    let mut runs = RunStore::new();
    let run = runs.start("bench", "bench", &policy, 0).unwrap();

    let kinds = [
        "read allow",
        "bad_arguments",
        "unknown_tool",
        "not_allowed",
        "needs_approval (repeat)",
        "execute with token",
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    let mut all = Vec::with_capacity(N);
    let start = Instant::now();
    for i in 0..N {
        let (kind, p) = match i % 20 {
            0..=13 => (
                0,
                if i % 2 == 0 {
                    prop(
                        "cat",
                        json!({"file": format!("/srv/data/dir/file-{i}.txt")}),
                        None,
                    )
                } else {
                    prop(
                        "grep",
                        json!({"pattern": "needle; $(x)", "max": 10, "file": "/srv/data/log"}),
                        None,
                    )
                },
            ),
            14 | 15 => (
                1,
                prop("cat", json!({"file": "/srv/data/../../etc/shadow"}), None),
            ),
            16 => (2, prop("rm", json!({"file": "/"}), None)),
            17 => (3, prop("shutdown", json!({}), None)),
            18 => (4, waiting.clone()),
            _ => (5, token_calls.next().unwrap()),
        };
        let t0 = Instant::now();
        let d = decide(
            &reg,
            &policy,
            "bench",
            runs.get_mut(&run),
            &p,
            &mut store,
            1,
        );
        let dt = t0.elapsed();
        let want = [
            "allow",
            "bad_arguments",
            "unknown_tool",
            "not_allowed",
            "needs_approval",
            "allow",
        ][kind];
        assert_eq!(d.code(), want, "{p:?}: {d:?}");
        times[kind].push(dt);
        all.push(dt);
    }
    let wall = start.elapsed();

    println!("## broker decision latency\n");
    println!(
        "{N} decisions in {:.2} s (wall, including building proposals), in one run with limits.\n",
        wall.as_secs_f64()
    );
    println!("| kind | n | p50 µs | p99 µs | max µs |");
    println!("|---|---:|---:|---:|---:|");
    all.sort();
    println!(
        "| all | {} | {:.1} | {:.1} | {:.1} |",
        all.len(),
        pct(&all, 0.5),
        pct(&all, 0.99),
        pct(&all, 1.0)
    );
    for (k, t) in kinds.iter().zip(times.iter_mut()) {
        t.sort();
        println!(
            "| {k} | {} | {:.1} | {:.1} | {:.1} |",
            t.len(),
            pct(t, 0.5),
            pct(t, 0.99),
            pct(t, 1.0)
        );
    }

    // Token calls with the journal: each consumes a nonce with an fsync.
    let dir = std::env::var_os("WARDEN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tmp"));
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = tempfile::tempdir_in(&dir).unwrap();
    let mut store = ApprovalStore::open(
        &tmp.path().join("approvals.jsonl"),
        key.verifying_key(),
        Duration::from_secs(3600),
    )
    .unwrap();
    let calls = tokens(&mut store, &reg, &unlimited, &key, 500);
    let mut t: Vec<Duration> = calls
        .iter()
        .map(|p| {
            let t0 = Instant::now();
            let d = decide(&reg, &unlimited, "bench", None, p, &mut store, 1);
            let dt = t0.elapsed();
            assert_eq!(d.code(), "allow");
            dt
        })
        .collect();
    t.sort();
    println!(
        "\nexecute with token, journaled (append + fdatasync on {}): n {} p50 {:.1} µs p99 {:.1} µs max {:.1} µs",
        dir.display(),
        t.len(),
        pct(&t, 0.5),
        pct(&t, 0.99),
        pct(&t, 1.0)
    );
}
