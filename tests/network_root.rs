//! Root tests of `network = "isolated"`: the agent's view of its link, kill
//! level 2 on a live connection, and that no link outlives the daemon.
//!
//! Each test takes a /24 of its own (from the pid and a counter), so its
//! addresses and host interface names are its own too.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Env;
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(30);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A /24 no other test uses.
fn subnet() -> String {
    format!(
        "10.{}.{}.0/24",
        100 + std::process::id() % 100,
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// A port that was free a moment ago (the agent must know it before the
/// server can bind: the host end's address exists only once the agent runs).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An `[[agent]]` running a python script, with PORT in its environment.
fn py_agent(name: &str, network: &str, script: &str, port: u16) -> String {
    format!(
        "[[agent]]\nname = \"{name}\"\ncommand = [\"/usr/bin/python3\", \"-c\", {}]\nuser = \"nobody\"\n\
         network = \"{network}\"\nenv = {{ WARDEN_TEST_MARK = \"{{M}}\", PORT = \"{port}\" }}\n",
        toml::Value::String(script.into())
    )
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Deletes the named host links if a failed test left them.
struct Links(Vec<String>);

impl Drop for Links {
    fn drop(&mut self) {
        for n in &self.0 {
            if link_exists(n) {
                let _ = std::process::Command::new("ip")
                    .args(["link", "del", n])
                    .status();
            }
        }
    }
}

/// The interfaces of the namespace `pid` is in, from its /proc/PID/net/dev.
fn interfaces(pid: i64) -> Vec<String> {
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let mut v: Vec<String> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_string())
        .collect();
    v.sort();
    v
}

fn logs(env: &Env, name: &str) -> String {
    env.cli(&["logs", name]).1
}

fn arm(env: &Env, args: &[&str]) -> String {
    let mut a = vec!["arm"];
    a.extend_from_slice(args);
    a.push("--json");
    let (code, out, err) = env.cli(&a);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["authorization"]["id"].as_str().unwrap().to_string()
}

/// A TCP server in the host's namespace that counts connections and lines.
struct Server {
    conns: Arc<AtomicUsize>,
    lines: Arc<AtomicUsize>,
    peers: Arc<std::sync::Mutex<Vec<(Ipv4Addr, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(addr: Ipv4Addr, port: u16) -> Server {
        let l = TcpListener::bind((addr, port)).unwrap();
        l.set_nonblocking(true).unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let lines = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(std::sync::Mutex::new(vec![]));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, n, p, s) = (conns.clone(), lines.clone(), peers.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((sock, peer)) => {
                        c.fetch_add(1, Ordering::SeqCst);
                        let (n, p, s) = (n.clone(), p.clone(), s.clone());
                        let ip = match peer.ip() {
                            std::net::IpAddr::V4(v) => v,
                            std::net::IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
                        };
                        std::thread::spawn(move || {
                            sock.set_nonblocking(false).unwrap();
                            sock.set_read_timeout(Some(Duration::from_millis(100)))
                                .unwrap();
                            let mut r = BufReader::new(sock);
                            let mut line = String::new();
                            while !s.load(Ordering::SeqCst) {
                                match r.read_line(&mut line) {
                                    Ok(0) => return,
                                    Ok(_) if line.ends_with('\n') => {
                                        n.fetch_add(1, Ordering::SeqCst);
                                        p.lock().unwrap().push((ip, line.trim().to_string()));
                                        line.clear();
                                    }
                                    Ok(_) => {}
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::WouldBlock
                                                | std::io::ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => return,
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Server {
            conns,
            lines,
            peers,
            stop,
            thread: Some(thread),
        }
    }
    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
    fn lines(&self) -> usize {
        self.lines.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The agent's network as `status` shows it: (interface, address, gateway).
fn net_of(env: &Env, name: &str) -> (String, Ipv4Addr, Ipv4Addr) {
    let n = env.agent(name)["network"].clone();
    assert_eq!(n["mode"], "isolated", "{n}");
    let addr = n["address"].as_str().unwrap();
    let addr = addr.strip_suffix("/30").unwrap_or_else(|| panic!("{n}"));
    (
        n["interface"].as_str().unwrap().to_string(),
        addr.parse().unwrap(),
        n["gateway"].as_str().unwrap().parse().unwrap(),
    )
}

fn wait_running(env: &Env, name: &str) -> i64 {
    env.wait_for(&format!("{name} running"), T, || {
        env.agent(name)["pid"].as_i64().is_some()
    });
    env.agent(name)["pid"].as_i64().unwrap()
}

const HELLO: &str = r#"
import os, socket, time
names = sorted(n for _, n in socket.if_nameindex())
print("IFACES", ",".join(names), flush=True)
print("ENV", os.environ["WARDEN_NET_ADDR"], os.environ["WARDEN_NET_PREFIX"], os.environ["WARDEN_NET_GATEWAY"], flush=True)
gw, port = os.environ["WARDEN_NET_GATEWAY"], int(os.environ["PORT"])
while True:
    try:
        s = socket.create_connection((gw, port), timeout=1)
        s.sendall(("hello from " + os.environ["WARDEN_NET_ADDR"] + "\n").encode())
        print("CONNECTED", flush=True)
        break
    except OSError:
        time.sleep(0.1)
time.sleep(1000)
"#;

#[test]
fn isolated_agent_sees_only_its_link_and_reaches_the_host_end() {
    let port = free_port();
    let mut env = Env::new(
        &format!("isolated_subnet = \"{}\"", subnet()),
        &py_agent("iso", "isolated", HELLO, port),
    );
    env.start();
    let pid = wait_running(&env, "iso");
    let (ifname, addr, gw) = net_of(&env, "iso");
    let _links = Links(vec![ifname.clone()]);
    assert!(ifname.starts_with("wd") && ifname.len() < 16, "{ifname}");
    assert!(link_exists(&ifname), "host end {ifname} missing");
    assert_eq!(u32::from(gw) + 1, u32::from(addr));
    // The host end names the agent it serves.
    let alias = std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifalias")).unwrap();
    assert_eq!(alias.trim(), "warden agent iso");
    // Its namespace: lo and eth0, nothing of the host's.
    assert_eq!(interfaces(pid), ["eth0", "lo"]);
    let trie = std::fs::read_to_string(format!("/proc/{pid}/net/fib_trie")).unwrap();
    assert!(trie.contains(&addr.to_string()), "{trie}");
    assert!(!trie.contains("192.0.2."), "host address visible: {trie}");
    // Default route via the host end on eth0 (hex, in network byte order as
    // the kernel prints a u32 in host order).
    let route = std::fs::read_to_string(format!("/proc/{pid}/net/route")).unwrap();
    let gw_hex = format!("{:08X}", u32::from_ne_bytes(gw.octets()));
    assert!(
        route
            .lines()
            .any(|l| l.starts_with("eth0\t00000000\t") && l.contains(&gw_hex)),
        "{route}"
    );
    let server = Server::start(gw, port);
    env.wait_for("the agent's hello", T, || server.lines() >= 1);
    let peers = server.peers.lock().unwrap().clone();
    assert_eq!(peers[0], (addr, format!("hello from {addr}")), "{peers:?}");
    let log = logs(&env, "iso");
    assert!(log.contains("IFACES eth0,lo"), "{log}");
    assert!(log.contains(&format!("ENV {addr} 30 {gw}")), "{log}");
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0, "{}", env.stderr());
    assert!(!link_exists(&ifname), "{ifname} left behind");
    env.assert_nothing_left();
}

const CHATTY: &str = r#"
import os, socket, time
gw, port = os.environ["WARDEN_NET_GATEWAY"], int(os.environ["PORT"])
s = None
while s is None:
    try:
        s = socket.create_connection((gw, port), timeout=1)
    except OSError:
        time.sleep(0.1)
s.settimeout(0.2)
i = 0
while True:
    i += 1
    try:
        s.sendall(b"line %d\n" % i)
    except OSError:
        pass
    if i % 5 == 0:
        try:
            socket.create_connection((gw, port), timeout=0.5).close()
            print("NEWCONN ok", i, flush=True)
        except OSError as e:
            print("NEWCONN failed", i, e.errno, flush=True)
    print("TICK", i, flush=True)
    time.sleep(0.1)
"#;

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

#[test]
fn level_2_cuts_a_live_connection_and_the_agent_keeps_running() {
    let port = free_port();
    let agents = [
        py_agent("chatty", "isolated", CHATTY, port),
        py_agent("quiet", "none", "import time\ntime.sleep(1000)", port),
    ]
    .concat();
    let mut env = Env::new(&format!("isolated_subnet = \"{}\"", subnet()), &agents);
    env.start();
    let pid = wait_running(&env, "chatty");
    let (ifname, _, gw) = net_of(&env, "chatty");
    let _links = Links(vec![ifname.clone()]);
    let server = Server::start(gw, port);
    // Talking: lines on the first connection, and new connections succeed.
    env.wait_for("lines and a second connection", T, || {
        server.lines() >= 10 && server.conns() >= 2
    });
    assert!(count(&logs(&env, "chatty"), "NEWCONN ok") >= 1);
    let id = arm(
        &env,
        &["chatty", "--levels", "2", "--reason", "exfiltration"],
    );
    let (code, out, err) = env.cli(&["execute", &id, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let steps = v["plan"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{v}");
    let state = steps[0]["state"].to_string();
    assert!(
        state.contains("set down") && state.contains(&ifname),
        "{state}"
    );
    assert!(!state.contains("fail"), "{state}");
    // Within a second the server hears nothing more, for good.
    std::thread::sleep(Duration::from_secs(1));
    let (lines, conns) = (server.lines(), server.conns());
    let ticks = count(&logs(&env, "chatty"), "TICK");
    let failed = count(&logs(&env, "chatty"), "NEWCONN failed");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(server.lines(), lines, "lines still arriving after the cut");
    assert_eq!(server.conns(), conns, "new connections after the cut");
    // The agent still runs, unfrozen: same pid, still ticking, and its new
    // connection attempts fail.
    let a = env.agent("chatty");
    assert_eq!(a["state"], "running", "{a}");
    assert_eq!(a["pid"].as_i64(), Some(pid));
    assert_eq!(a["network"]["cut"], true, "{a}");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let st = stat.rsplit(')').next().unwrap().split_whitespace().next();
    assert!(matches!(st, Some("S") | Some("R")), "{stat}");
    let log = logs(&env, "chatty");
    assert!(
        count(&log, "TICK") >= ticks + 3,
        "agent stopped ticking:\n{log}"
    );
    assert!(count(&log, "NEWCONN failed") > failed, "{log}");
    assert!(link_exists(&ifname));
    let oper = std::fs::read_to_string(format!("/sys/class/net/{ifname}/operstate")).unwrap();
    assert_eq!(oper.trim(), "down");
    // A `none` agent has nothing to cut; that is not a failure.
    let id = arm(&env, &["quiet", "--levels", "2", "--reason", "r"]);
    let (code, out, err) = env.cli(&["execute", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no network to cut"), "{out}");
    drop(server);
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0, "{}", env.stderr());
    assert!(!link_exists(&ifname), "{ifname} left behind");
    env.assert_nothing_left();
}

#[test]
fn leftover_links_are_removed_and_none_outlive_the_daemon() {
    let net = subnet();
    let s: warden_core::netns::Subnet = net.parse().unwrap();
    // Agent tables 0 and 2 are isolated; 1 has no network at all.
    let agents = [
        py_agent("first", "isolated", "import time\ntime.sleep(1000)", 1),
        py_agent("empty", "none", "import time\ntime.sleep(1000)", 1),
        py_agent("third", "isolated", "import time\ntime.sleep(1000)", 1),
    ]
    .concat();
    let first = s.link(0).unwrap().host_if;
    let third = s.link(2).unwrap().host_if;
    let stale_peer = format!("{first}p");
    let _links = Links(vec![first.clone(), third.clone(), stale_peer.clone()]);
    // What a crashed run would leave: a pair named like the first agent's link.
    let ok = std::process::Command::new("ip")
        .args([
            "link",
            "add",
            &first,
            "type",
            "veth",
            "peer",
            "name",
            &stale_peer,
        ])
        .status()
        .expect("ip (iproute2) is needed to stage a leftover link");
    assert!(ok.success());
    assert!(link_exists(&stale_peer));
    let mut env = Env::new(&format!("isolated_subnet = \"{net}\""), &agents);
    env.start();
    let p1 = wait_running(&env, "first");
    let p2 = wait_running(&env, "empty");
    let p3 = wait_running(&env, "third");
    // The stale pair is gone (deleting one end deletes both); the agents' are there.
    assert!(!link_exists(&stale_peer), "leftover {stale_peer} kept");
    assert!(link_exists(&first) && link_exists(&third));
    assert_eq!(net_of(&env, "third").0, third);
    assert_eq!(interfaces(p1), ["eth0", "lo"]);
    assert_eq!(interfaces(p2), ["lo"]);
    assert_eq!(interfaces(p3), ["eth0", "lo"]);
    assert_eq!(env.agent("empty")["network"]["mode"], "none");
    // Each run of an agent gets a fresh link: stop and start one.
    let (code, _, err) = env.cli(&["stop", "third"]);
    assert_eq!(code, 0, "{err}");
    env.wait_for("third stopped", T, || !link_exists(&third));
    let (code, _, err) = env.cli(&["start", "third"]);
    assert_eq!(code, 0, "{err}");
    let p3b = wait_running(&env, "third");
    assert_ne!(p3, p3b);
    assert!(link_exists(&third));
    assert_eq!(interfaces(p3b), ["eth0", "lo"]);
    env.signal(Signal::SIGTERM);
    assert_eq!(env.wait_exit(T), 0, "{}", env.stderr());
    for n in [&first, &third] {
        assert!(!link_exists(n), "{n} left behind");
    }
    env.assert_nothing_left();
}
