//! Crash safety: a writer process is SIGKILLed at random moments, 200
//! times, while several threads append events, safety events, evidence and
//! checkpoints. After every kill the chain verifies and every event whose
//! `record` had returned (the child prints it, unbuffered) is in the log
//! with the hash its receipt named.
//!
//! The child is this same test binary re-executed with
//! `WARDEN_AUDIT_CRASH_CHILD=STATE:LOGS`, running [`child_writer_process`].

mod audit_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use audit_common::*;
use rand_core::{OsRng, RngCore};
use warden_core::audit::{schema, store, verify, Audit, AuditOptions, Event, VerifyOptions};

const CHILD_ENV: &str = "WARDEN_AUDIT_CRASH_CHILD";
const KILLS: usize = 200;
/// A fresh log every this many kills keeps the chain short enough to verify
/// after every kill on a debug build (where one Ed25519 verification takes
/// about 20 ms).
const KILLS_PER_LOG: usize = 20;

/// Not a test of its own: the body of the child process. Without the
/// environment variable it returns at once.
#[test]
fn child_writer_process() {
    let Ok(dirs) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (state, logs) = dirs.split_once(':').unwrap();
    let audit = Audit::open_with(
        Path::new(state),
        Path::new(logs),
        AuditOptions {
            checkpoint_every: 64,
            witness_command: None,
        },
    )
    .unwrap_or_else(|e| {
        eprintln!("child: open: {e}");
        std::process::exit(3)
    });
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let audit = audit.clone();
            std::thread::spawn(move || {
                for i in 0u64.. {
                    let receipt = match i % 64 {
                        5 | 21 | 37 => audit.record_safety(tick(i), safety()),
                        50 => {
                            let ev = serde_json::json!({"thread": t, "i": i});
                            let halt_id = format!("h{t}-{i}");
                            let id = audit.store_evidence(&halt_id, &ev).unwrap();
                            let r = audit.record(Event::new(
                                "halt",
                                serde_json::json!({"halt_id": halt_id, "evidence_id": id}),
                            ));
                            audit.checkpoint().unwrap();
                            r
                        }
                        _ => audit.record(tick(t * 1_000_000 + i)),
                    }
                    .unwrap();
                    // One write per line, flushed: what the parent reads was
                    // acknowledged before the kill.
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {} {}", receipt.seq, receipt.hash).unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Kills the child if the test fails half-way.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(s: &Scratch) -> ChildGuard {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args([
            "--exact",
            "child_writer_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD_ENV,
            format!("{}:{}", s.state().display(), s.logs().display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ChildGuard(child)
}

fn random_below(n: u64) -> u64 {
    OsRng.next_u64() % n
}

fn parse_acks(text: &str, acks: &mut Vec<(u64, String)>) {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("ack ") {
            let (seq, hash) = rest.split_once(' ').unwrap();
            acks.push((seq.parse().unwrap(), hash.to_string()));
        }
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let started = Instant::now();
    let mut total_acks = 0usize;
    let mut s = Scratch::new();
    for kill in 0..KILLS {
        if kill % KILLS_PER_LOG == 0 {
            s = Scratch::new();
        }
        let mut child = spawn_child(&s);
        let stdout = child.0.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let mut acks = Vec::new();
        if kill % KILLS_PER_LOG == 0 || random_below(4) == 0 {
            // Anywhere, including while the log is created or opened.
            std::thread::sleep(Duration::from_micros(random_below(40_000)));
        } else {
            // While events are flowing.
            let mut first = String::new();
            while !first.starts_with("ack ") {
                first.clear();
                if reader.read_line(&mut first).unwrap() == 0 {
                    panic!("child exited before acknowledging anything");
                }
            }
            parse_acks(&first, &mut acks);
            std::thread::sleep(Duration::from_micros(random_below(15_000)));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.0.wait().unwrap();
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        parse_acks(&rest, &mut acks);
        total_acks += acks.len();

        if !s.state().join("warden.db").exists() {
            continue; // killed before the database was created
        }
        let against = s.path().join("acks.jsonl");
        let mut lines = String::new();
        for (seq, hash) in &acks {
            lines.push_str(&format!("{{\"seq\":{seq},\"hash\":\"{hash}\"}}\n"));
        }
        std::fs::write(&against, lines).unwrap();
        let opts = VerifyOptions {
            state_dir: s.state(),
            pubkey: None,
            against: Some(against),
        };
        match verify(&opts) {
            Ok(_) => {}
            // Killed between creating the database file and its first
            // commit: the next open finishes the job. Nothing was acked.
            Err(f) if acks.is_empty() && !log_initialized(&s.state()) => {
                let _ = f;
            }
            Err(f) => panic!("after kill {kill}: {f} ({} acks)", acks.len()),
        }
        // The safety log lines name entries that exist, with their hashes.
        let safety = s.logs().join("safety_events.jsonl");
        // Killed before the first commit (excused above): the safety log is
        // there but empty, and there is no head to check it against.
        if safety.exists() && log_initialized(&s.state()) {
            let opts = VerifyOptions {
                state_dir: s.state(),
                pubkey: None,
                against: Some(safety),
            };
            if let Err(f) = verify(&opts) {
                panic!("after kill {kill}: safety log: {f}");
            }
        }
    }
    assert!(
        total_acks > KILLS,
        "too few events were acknowledged: {total_acks}"
    );
    eprintln!(
        "{KILLS} kills, {total_acks} acknowledged events, {:?}",
        started.elapsed()
    );
}

/// True once the first open committed the key and the head record.
fn log_initialized(state: &Path) -> bool {
    let Ok(conn) = schema::open_read_only(&state.join("warden.db")) else {
        return false;
    };
    matches!(store::head_record(&conn), Ok(Some(_)))
}
