//! Durable appends per second and append latency of the audit writer, on
//! the real disk (group commit, `synchronous=FULL`).
//!
//!     cargo bench --bench audit
//!
//! The log goes to a temporary directory under `WARDEN_BENCH_DIR` (default:
//! cargo's target/tmp, i.e. the disk the build lives on). Every event is
//! acknowledged only after its transaction's fsync, exactly as in the
//! daemon.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_core::audit::{Audit, AuditOptions, Event};

fn event(i: u64) -> Event {
    Event {
        kind: "command".into(),
        agent: Some("agent-7".into()),
        uid: Some(1000),
        data: serde_json::json!({"verb": "status", "i": i, "elapsed_ms": 0.25}),
    }
}

struct Run {
    name: String,
    events: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn print(&mut self) {
        self.latencies.sort();
        let q = |p: f64| {
            let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
            self.latencies.get(i).copied().unwrap_or_default()
        };
        println!(
            "{:<34} {:>8} events {:>7.2} s {:>9.0} events/s   p50 {:>8.2} ms   p99 {:>8.2} ms",
            self.name,
            self.events,
            self.elapsed.as_secs_f64(),
            self.events as f64 / self.elapsed.as_secs_f64(),
            q(0.50).as_secs_f64() * 1e3,
            q(0.99).as_secs_f64() * 1e3,
        );
    }
}

/// `threads` callers each `record` in a loop for `duration`.
fn blocking_submitters(audit: &Audit, threads: usize, duration: Duration) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let audit = audit.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    audit.record(event(t as u64 * 1_000_000_000 + i)).unwrap();
                    lat.push(t0.elapsed());
                    i += 1;
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for h in handles {
        latencies.extend(h.join().unwrap());
    }
    Run {
        name: format!("record(), {threads} threads"),
        events: latencies.len() as u64,
        elapsed: started.elapsed(),
        latencies,
    }
}

/// One current-thread tokio task keeps `window` submits in flight.
fn async_submitter(audit: &Audit, total: u64, window: usize) -> Run {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let started = Instant::now();
        let mut in_flight = std::collections::VecDeque::new();
        let mut latencies = Vec::with_capacity(total as usize);
        for i in 0..total {
            if in_flight.len() >= window {
                let (t0, p): (Instant, warden_core::audit::Pending<_>) =
                    in_flight.pop_front().unwrap();
                p.await.unwrap();
                latencies.push(t0.elapsed());
            }
            in_flight.push_back((Instant::now(), audit.submit(event(i))));
        }
        for (t0, p) in in_flight {
            p.await.unwrap();
            latencies.push(t0.elapsed());
        }
        Run {
            name: format!("submit(), 1 task, {window} in flight"),
            events: total,
            elapsed: started.elapsed(),
            latencies,
        }
    })
}

fn fresh(base: &Path) -> (tempfile::TempDir, Audit) {
    let dir = tempfile::tempdir_in(base).unwrap();
    let audit = Audit::open_with(
        &dir.path().join("state"),
        &dir.path().join("log"),
        AuditOptions::default(),
    )
    .unwrap();
    (dir, audit)
}

fn cleanup(dir: tempfile::TempDir) {
    let _ = warden_core::sys::fsattr::clear_append_only_tree(dir.path());
    let _ = dir.close();
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let base = std::env::var_os("WARDEN_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_TARGET_TMPDIR").into());
    std::fs::create_dir_all(&base).unwrap();
    println!(
        "audit log in {} (synchronous=FULL, checkpoint_every=64)",
        base.display()
    );
    let secs = Duration::from_secs(3);
    for threads in [1usize, 4, 16, 64] {
        let (dir, audit) = fresh(&base);
        blocking_submitters(&audit, threads, secs).print();
        drop(audit);
        cleanup(dir);
    }
    for window in [64usize, 1024] {
        let (dir, audit) = fresh(&base);
        async_submitter(&audit, 20_000, window).print();
        drop(audit);
        cleanup(dir);
    }
    // The verify side: how long `audit verify` takes per entry.
    let (dir, audit) = fresh(&base);
    blocking_submitters(&audit, 16, Duration::from_secs(2));
    drop(audit);
    let t0 = Instant::now();
    let report = warden_core::audit::verify(&warden_core::audit::VerifyOptions {
        state_dir: dir.path().join("state"),
        ..Default::default()
    })
    .unwrap();
    println!(
        "verify: {} entries, {} checkpoints in {:.2} s",
        report.entries,
        report.checkpoints,
        t0.elapsed().as_secs_f64()
    );
    cleanup(dir);
}
