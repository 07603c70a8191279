//! `warden web`: event latency, `/api/status` latency under load, resident
//! memory.
//!
//!     cargo bench --bench web            # as root
//!
//! - SSE: a client holds `/api/events`; the bench makes audit entries
//!   (operator `checkin` through the control socket, as root) and measures
//!   from just before the daemon is asked (an upper bound of the append) to
//!   the event's arrival at the client, `WEB_BENCH_EVENTS` times (default 200).
//! - `/api/status` with 50 agents running, 50 concurrent clients (one thread
//!   each, one connection per request, no keep-alive), `WEB_BENCH_REQS`
//!   requests per client (default 40): p50/p99/max.
//! - RSS of the web process (VmRSS, VmHWM) after both.
//!
//! The report is printed and written to `target/bench-web.md`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/web_common/mod.rs"]
mod web_common;

use std::time::{Duration, Instant};

use common::{agent, bin, workload, Env};
use web_common::{request, sse, token, Web};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn env_num(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn rss(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n_events = env_num("WEB_BENCH_EVENTS", 200);
    let n_reqs = env_num("WEB_BENCH_REQS", 40);
    let clients = 50;
    let agents: String = (0..50)
        .map(|i| agent(&format!("a{i:02}"), workload::COOPERATIVE, 1, ""))
        .collect();
    let mut env = Env::new(
        "\n[web]\nrate_per_second = 100000\nrate_burst = 100000\n",
        &agents,
    );
    env.start();
    env.wait_procs(100);
    let viewer = token(bin(), &env.socket(), "bench", "viewer");
    let web = Web::start(bin(), &env.config, &env.path("web.stderr"));
    let (rss0, _) = rss(web.child.id());

    // SSE latency.
    let (conn, rx) = sse(web.port, &viewer, None);
    env.call(r#"{"cmd":"checkin"}"#);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("stream live");
    while rx.try_recv().is_ok() {}
    let mut lat = Vec::with_capacity(n_events);
    for _ in 0..n_events {
        let t0 = Instant::now();
        env.call(r#"{"cmd":"checkin"}"#);
        // The command's own audit entry is the first to arrive.
        let (_, _, at) = rx.recv_timeout(Duration::from_secs(10)).expect("event");
        lat.push(at.saturating_duration_since(t0));
        std::thread::sleep(Duration::from_millis(5));
        while rx.try_recv().is_ok() {}
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let (sse_p50, sse_p99, sse_max) = (
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        *lat.iter().max().unwrap(),
    );

    // /api/status under 50 concurrent clients.
    let port = web.port;
    let t_all = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let tok = viewer.clone();
            std::thread::spawn(move || {
                let mut v = Vec::with_capacity(n_reqs);
                for _ in 0..n_reqs {
                    let t0 = Instant::now();
                    let (code, _, body) =
                        request(port, "GET", "/api/status", Some(&tok), None, &[]).unwrap();
                    assert_eq!(code, 200, "{body}");
                    v.push(t0.elapsed());
                }
                v
            })
        })
        .collect();
    let mut all: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let wall = t_all.elapsed();
    let total = all.len();
    let (p50, p99, max) = (
        pct(&mut all, 0.5),
        pct(&mut all, 0.99),
        *all.iter().max().unwrap(),
    );
    let (rss1, hwm) = rss(web.child.id());

    let report = format!(
        "# warden web benchmark\n\n\
         kernel {}, {} CPUs, 50 agents (100 processes)\n\n\
         | measure | p50 | p99 | max | target |\n|---|---|---|---|---|\n\
         | SSE: audit append -> client ({n_events} events) | {} | {} | {} | < 50 ms |\n\
         | GET /api/status, {clients} concurrent clients, {total} requests | {} | {} | {} | p99 < 10 ms |\n\n\
         Throughput: {:.0} status requests/s. Web RSS: {} KiB idle, {} KiB after the load (peak {} KiB); target < 20 MiB.\n",
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        ms(sse_p50), ms(sse_p99), ms(sse_max),
        ms(p50), ms(p99), ms(max),
        total as f64 / wall.as_secs_f64(),
        rss0, rss1, hwm,
    );
    println!("{report}");
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").into());
    let _ = std::fs::write(format!("{target}/bench-web.md"), &report);
    drop(web);
    env.signal(nix::sys::signal::Signal::SIGTERM);
    env.wait_exit(Duration::from_secs(60));
    env.assert_nothing_left();
}
