//! Root tests of the agent sockets: two agents with different uids, each on
//! its own socket, served by the real server on a current-thread runtime
//! whose "main loop" answers like the daemon's.
//!
//! The agents' sides run as their uids in child processes: this test binary
//! re-run with `AGENTAPI_HELPER` set (see `helper_process`), or the `warden`
//! CLI. std drops supplementary groups when root sets a uid.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use warden_daemon::agent_socket::{self as server, AgentCommand, Counters, Limits};
use warden_proto::agent::AgentResponse;

/// Agent A runs as nobody, agent B as a uid no account uses.
const A: (&str, u32) = ("alpha", 65534);
const B: (&str, u32) = ("beta", 65533);

/// One test at a time: the flood test measures latency on shared cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root; CI runs it as root"
    );
}

/// Both agents' sockets, served on a thread that plays the daemon.
struct Harness {
    tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    counters: Vec<Arc<Counters>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Harness {
    fn start() -> Harness {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        // The agents must traverse it to reach their sockets.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = tmp.path().join("agents");
        let listeners: Vec<_> = [A, B]
            .iter()
            .map(|&(name, uid)| (name, uid, server::bind(&dir, name, uid, uid).unwrap()))
            .collect();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let counters: Vec<_> = (0..2).map(|_| Arc::new(Counters::default())).collect();
        let (stop, stopped) = oneshot::channel::<()>();
        let (seen2, counters2) = (seen.clone(), counters.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (tx, mut rx) = mpsc::channel::<AgentCommand>(64);
                for ((name, uid, l), c) in listeners.into_iter().zip(counters2) {
                    let l = tokio::net::UnixListener::from_std(l).unwrap();
                    tokio::spawn(server::serve_with(
                        l,
                        name.to_string(),
                        uid,
                        Limits::default(),
                        c,
                        tx.clone(),
                    ));
                }
                drop(tx);
                let main_loop = async {
                    while let Some(c) = rx.recv().await {
                        seen2
                            .lock()
                            .unwrap()
                            .push((c.agent.clone(), c.request.name().to_string()));
                        let r = if c.request.is_broker() {
                            AgentResponse::err_with(
                                warden_proto::agent::ErrorCode::Denied,
                                "no tools in this test",
                                json!({"decision": "unknown_tool"}),
                            )
                        } else {
                            AgentResponse::ok(json!({ "agent": c.agent }))
                        };
                        let _ = c.reply.send(r);
                    }
                };
                tokio::select! {
                    _ = main_loop => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops the servers and their connections.
        });
        Harness {
            tmp: Some(tmp),
            dir,
            seen,
            counters,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn socket(&self, agent: &str) -> PathBuf {
        server::socket_path(&self.dir, agent)
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut errors = vec![];
        for (name, _) in [A, B] {
            errors.extend(server::unbind(&self.dir, name).err());
        }
        errors.extend(std::fs::remove_dir(&self.dir).err());
        let tmp = self.tmp.take().unwrap();
        let path = tmp.path().to_path_buf();
        errors.extend(tmp.close().err());
        // Not a second panic while a failed test unwinds: TempDir's removal
        // above still ran.
        if !std::thread::panicking() {
            assert!(errors.is_empty(), "cleanup: {errors:?}");
            assert!(!path.exists(), "left {} behind", path.display());
        }
    }
}

/// Runs this test binary as `uid` in helper mode (see `helper_process`).
fn helper(uid: u32, mode: &str, socket: &Path, arg: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("AGENTAPI_HELPER", mode)
        .env("AGENTAPI_SOCKET", socket)
        .env("AGENTAPI_ARG", arg)
        .uid(uid)
        .gid(uid)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn result(child: std::process::Child) -> Value {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("helper gave no result: {stdout}"));
    serde_json::from_str(line).unwrap()
}

fn monotonic_us() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000
}

/// Not a test: the body of the helper processes, which run as an agent's uid.
/// Run without `AGENTAPI_HELPER` it does nothing.
#[test]
fn helper_process() {
    let Ok(mode) = std::env::var("AGENTAPI_HELPER") else {
        return;
    };
    let socket = PathBuf::from(std::env::var("AGENTAPI_SOCKET").unwrap());
    let arg = std::env::var("AGENTAPI_ARG").unwrap();
    let out = match mode.as_str() {
        // One heartbeat: the connect error, or the answer.
        "call" => match UnixStream::connect(&socket) {
            Err(e) => json!({ "connect_error": format!("{:?}", e.kind()) }),
            Ok(s) => {
                // A refused peer may find the connection closed already.
                let _ = (&s).write_all(arg.as_bytes());
                let mut l = String::new();
                BufReader::new(&s).read_line(&mut l).unwrap();
                json!({ "response": serde_json::from_str::<Value>(&l).unwrap() })
            }
        },
        // `arg` heartbeats 40 ms apart: each one's start and round trip.
        "beats" => {
            let s = UnixStream::connect(&socket).unwrap();
            let mut rd = BufReader::new(&s);
            let mut beats = vec![];
            for _ in 0..arg.parse::<u32>().unwrap() {
                let at = monotonic_us();
                let t = Instant::now();
                (&s).write_all(b"{\"type\":\"heartbeat\"}\n").unwrap();
                let mut l = String::new();
                rd.read_line(&mut l).unwrap();
                let us = t.elapsed().as_micros() as u64;
                let ok = serde_json::from_str::<Value>(&l).unwrap()["ok"] == true;
                beats.push(json!({ "at": at, "us": us, "ok": ok }));
                std::thread::sleep(Duration::from_millis(40));
            }
            json!({ "beats": beats })
        }
        // `arg` garbage lines over each of 4 connections at once, reading every answer.
        "flood" => {
            let n: usize = arg.parse().unwrap();
            let start = monotonic_us();
            let conns: Vec<_> = (0..4)
                .map(|i| {
                    let s = UnixStream::connect(&socket).unwrap();
                    std::thread::spawn(move || {
                        let w = s.try_clone().unwrap();
                        let writer = std::thread::spawn(move || {
                            for j in 0..n {
                                let junk = format!("garbage {i} {j} {{{}\n", "#".repeat(j % 300));
                                if (&w).write_all(junk.as_bytes()).is_err() {
                                    break;
                                }
                            }
                        });
                        let mut codes = std::collections::BTreeMap::<String, u64>::new();
                        let mut rd = BufReader::new(&s);
                        for _ in 0..n {
                            let mut l = String::new();
                            if rd.read_line(&mut l).unwrap_or(0) == 0 {
                                break;
                            }
                            let v: Value = serde_json::from_str(&l).unwrap();
                            let code = v["code"].as_str().unwrap_or("ok").to_string();
                            *codes.entry(code).or_default() += 1;
                        }
                        writer.join().unwrap();
                        codes
                    })
                })
                .collect();
            let mut total = std::collections::BTreeMap::<String, u64>::new();
            for c in conns {
                for (k, v) in c.join().unwrap() {
                    *total.entry(k).or_default() += v;
                }
            }
            json!({ "codes": total, "start": start, "end": monotonic_us() })
        }
        m => panic!("unknown helper mode {m}"),
    };
    println!("RESULT {out}");
}

#[test]
fn sockets_are_private_to_their_agent() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let h = Harness::start();
    for (name, uid) in [A, B] {
        let d = std::fs::metadata(h.dir.join(name)).unwrap();
        assert_eq!((d.uid(), d.gid(), d.mode() & 0o7777), (0, uid, 0o750));
        let s = std::fs::metadata(h.socket(name)).unwrap();
        assert_eq!((s.uid(), s.gid(), s.mode() & 0o7777), (uid, uid, 0o600));
    }
    let hb = "{\"type\":\"heartbeat\"}\n";
    // A on its own socket: served.
    let r = result(helper(A.1, "call", &h.socket(A.0), hb));
    assert_eq!(r["response"]["ok"], true, "{r}");
    // A on B's socket: the file system says no.
    let r = result(helper(A.1, "call", &h.socket(B.0), hb));
    assert_eq!(r["connect_error"], "PermissionDenied", "{r}");
    let cli = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["agent", "heartbeat"])
        .env("WARDEN_SOCKET", h.socket(B.0))
        .uid(A.1)
        .gid(A.1)
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(3), "{cli:?}");
    assert!(String::from_utf8_lossy(&cli.stderr).contains("permission denied"));
    // Even with the modes opened up, SO_PEERCRED refuses A on B's socket.
    let open = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    open(&h.dir.join(B.0), 0o755).unwrap();
    open(&h.socket(B.0), 0o666).unwrap();
    let r = result(helper(A.1, "call", &h.socket(B.0), hb));
    open(&h.dir.join(B.0), 0o750).unwrap();
    open(&h.socket(B.0), 0o600).unwrap();
    assert_eq!(r["response"]["code"], "peer_refused", "{r}");
    assert_eq!(
        h.counters[1]
            .peer_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(h.seen(), [("alpha".to_string(), "heartbeat".to_string())]);
}

fn percentile(mut v: Vec<u64>, p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
fn a_flood_from_one_agent_does_not_delay_the_other() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let h = Harness::start();
    let beats = helper(B.1, "beats", &h.socket(B.0), "60");
    std::thread::sleep(Duration::from_millis(300));
    // 4 connections x 2,500 lines = 10,000 garbage lines.
    let flood = helper(A.1, "flood", &h.socket(A.0), "2500");
    let flood = result(flood);
    let beats = result(beats);
    let codes = &flood["codes"];
    let answered: u64 = codes
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(answered, 10_000, "every garbage line answered: {flood}");
    assert_eq!(codes.get("ok"), None, "{flood}");
    assert!(codes["rate_limited"].as_u64().unwrap() >= 9_000, "{flood}");
    assert!(codes["bad_request"].as_u64().unwrap() >= 40, "{flood}");
    let (start, end) = (
        flood["start"].as_u64().unwrap(),
        flood["end"].as_u64().unwrap(),
    );
    let all: Vec<&Value> = beats["beats"].as_array().unwrap().iter().collect();
    assert!(all.iter().all(|b| b["ok"] == true), "{beats}");
    let during: Vec<u64> = all
        .iter()
        .filter(|b| (start..=end).contains(&b["at"].as_u64().unwrap()))
        .map(|b| b["us"].as_u64().unwrap())
        .collect();
    let us: Vec<u64> = all.iter().map(|b| b["us"].as_u64().unwrap()).collect();
    eprintln!(
        "flood {} ms, {} beats during it; beat p50 {} us, p99 {} us, max {} us",
        (end - start) / 1000,
        during.len(),
        percentile(us.clone(), 0.5),
        percentile(us.clone(), 0.99),
        us.iter().max().unwrap()
    );
    assert!(!during.is_empty(), "no heartbeat overlapped the flood");
    assert!(percentile(us, 0.99) < 50_000, "{beats}");
    // Nothing of the flood reached the main loop; every heartbeat did.
    let seen = h.seen();
    assert!(seen.iter().all(|(a, _)| a == "beta"), "{seen:?}");
    assert_eq!(seen.len(), 60);
}

fn warden_agent(uid: u32, socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("agent")
        .args(args)
        .env_clear()
        .env("WARDEN_SOCKET", socket)
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap()
}

#[test]
fn the_cli_talks_to_its_socket() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let h = Harness::start();
    let sock = h.socket(B.0);
    let out = warden_agent(B.1, &sock, &["whoami"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "agent beta (uid 65533), protocol version 1"
    );
    let out = warden_agent(B.1, &sock, &["whoami", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data"]["agent"], "beta");
    assert_eq!(v["data"]["peer_uid"], B.1);
    assert_eq!(v["data"]["diagnostic"], false);
    let out = warden_agent(B.1, &sock, &["heartbeat"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = warden_agent(B.1, &sock, &["task", "index the wiki"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = warden_agent(B.1, &sock, &["propose", "shell", "--arg", "cmd=ls"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("denied: no tools in this test"));
    // Root may ask whoami for diagnostics, and nothing else.
    let out = warden_agent(0, &sock, &["whoami", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data"]["diagnostic"], true);
    let out = warden_agent(0, &sock, &["heartbeat"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // No socket: usage; a socket nobody serves: unreachable.
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["agent", "whoami"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = warden_agent(B.1, &h.dir.join("nothing.sock"), &["whoami"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(
        h.seen(),
        [
            ("beta".to_string(), "heartbeat".to_string()),
            ("beta".to_string(), "task".to_string()),
            ("beta".to_string(), "propose".to_string()),
        ]
    );
}
