//! A fleet on one machine: one etcd in its own network namespace, and nodes,
//! each in its own namespace (daemon, agents and `warden fleet run`), linked
//! to etcd's namespace by a veth pair (10.250.N.1 on etcd's side, 10.250.N.2
//! on the node's). Mutual TLS with certificates made for the run. Every
//! address lives inside namespaces made here; processes are started with
//! `nsenter --net` (not `ip netns exec`, which remounts /sys and would hide
//! cgroupfs) and ended by pid. Drop order: fleet processes, daemons (the
//! common Env scrubs their cgroups), etcd, proxies, namespaces, files.
//!
//! etcd keeps its data on tmpfs (/dev/shm).
//!
//! This kernel has no sch_netem, so link delay is a userspace proxy in the
//! node's namespace that holds every chunk for `delay` in each direction.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{self, Env};

pub const ETCD_PORT: u16 = 2379;
static SEQ: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// A network namespace, deleted on drop (its veths go with it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
    /// A command that runs inside this namespace (network only).
    pub fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path())).arg("--").arg(prog);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process ended by pid on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub what: String,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A CA, a server certificate for etcd and a client certificate for the nodes.
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Certs {
    pub fn make(dir: &Path, ips: &[String]) -> Certs {
        let p = |n: &str| dir.join(n);
        let ossl = |args: &[&str]| run(Command::new("openssl").args(args).stderr(Stdio::piped()));
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let key = |k: &Path| {
            ossl(&[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &s(k),
            ])
        };
        key(&p("ca.key"));
        ossl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &s(&p("ca.key")),
            "-subj",
            "/CN=warden-test-ca",
            "-days",
            "2",
            "-out",
            &s(&p("ca.pem")),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        let leaf = |name: &str, cn: &str, ext: String| {
            key(&p(&format!("{name}.key")));
            ossl(&[
                "req",
                "-new",
                "-key",
                &s(&p(&format!("{name}.key"))),
                "-subj",
                &format!("/CN={cn}"),
                "-out",
                &s(&p(&format!("{name}.csr"))),
            ]);
            std::fs::write(p(&format!("{name}.ext")), ext).unwrap();
            ossl(&[
                "x509",
                "-req",
                "-in",
                &s(&p(&format!("{name}.csr"))),
                "-CA",
                &s(&p("ca.pem")),
                "-CAkey",
                &s(&p("ca.key")),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &s(&p(&format!("{name}.ext"))),
                "-out",
                &s(&p(&format!("{name}.pem"))),
            ]);
        };
        let sans: Vec<String> = ips.iter().map(|i| format!("IP:{i}")).collect();
        leaf(
            "server",
            "etcd",
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={}\n",
                sans.join(",")
            ),
        );
        leaf(
            "client",
            "warden-fleet",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n".into(),
        );
        Certs {
            ca: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
        }
    }
}

/// Forwards TCP from `listen` (in the node's namespace) to `upstream`,
/// holding each chunk `delay` in each direction.
pub struct DelayProxy {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn enter(ns_path: &str) {
    let f = std::fs::File::open(ns_path).unwrap();
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

impl DelayProxy {
    pub fn start(ns: &Netns, listen: &str, upstream: &str, delay: Duration) -> DelayProxy {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (ns_path, listen, upstream) = (ns.path(), listen.to_string(), upstream.to_string());
        let st = stop.clone();
        let t = std::thread::spawn(move || {
            // This thread (and the sockets it makes) live in the node's namespace.
            enter(&ns_path);
            let l = TcpListener::bind(&listen).unwrap();
            l.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            let mut conns = vec![];
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((down, _)) => {
                        let Ok(up) = TcpStream::connect_timeout(
                            &upstream.parse().unwrap(),
                            Duration::from_secs(1),
                        ) else {
                            continue;
                        };
                        for (a, b) in [
                            (down.try_clone().unwrap(), up.try_clone().unwrap()),
                            (up, down),
                        ] {
                            conns.extend(pipe(a, b, delay, st.clone()));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        DelayProxy {
            stop,
            threads: vec![t],
        }
    }
}

/// One direction: a reader stamps chunks, a writer sends each at stamp + delay.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    delay: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    from.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let st = stop.clone();
    let r = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while !st.load(Ordering::SeqCst) {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        let _ = from.shutdown(std::net::Shutdown::Read);
    });
    let w = std::thread::spawn(move || {
        while let Ok((t, b)) = rx.recv() {
            let due = t + delay;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&b).is_err() || stop.load(Ordering::SeqCst) {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
    vec![r, w]
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One warden host: its namespace, daemon (with agents) and fleet bridge.
pub struct Node {
    pub name: String,
    pub index: usize,
    pub fleet: Proc,
    pub env: Env,
    pub ns: Netns,
    pub proxy: Option<DelayProxy>,
    pub fleet_log: PathBuf,
}

impl Node {
    /// `agents/cgroup.events` in the unified hierarchy.
    pub fn events(&self) -> PathBuf {
        Path::new(common::CGROUP_MOUNT)
            .join("unified")
            .join(self.env.root.trim_start_matches('/'))
            .join("agents/cgroup.events")
    }
    /// Whether any agent process runs (from cgroup.events; missing = empty).
    pub fn populated(&self) -> bool {
        std::fs::read_to_string(self.events())
            .map(|t| t.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    }
    pub fn state(&self) -> String {
        self.env.status()["daemon"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    pub fn fleet_stderr(&self) -> String {
        std::fs::read_to_string(&self.fleet_log).unwrap_or_default()
    }
    /// `warden fleet ARGS --config CFG` inside this node's namespace.
    pub fn fleet_cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .ns
            .cmd(common::bin())
            .arg("--socket")
            .arg(self.env.socket())
            .arg("fleet")
            .args(args)
            .arg("--config")
            .arg(&self.env.config)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }
    /// Starts (again) the fleet bridge.
    pub fn start_fleet(&mut self) {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.fleet_log)
            .unwrap();
        let child = self
            .ns
            .cmd(common::bin())
            .args(["fleet", "run", "--config"])
            .arg(&self.env.config)
            .env("WARDEN_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        self.fleet = Proc {
            child: Some(child),
            what: format!("fleet {}", self.name),
        };
    }
    /// Audit events of one kind, newest last (`warden audit` reads the database).
    pub fn audit_kinds(&self) -> Vec<String> {
        let db = self.env.path("state/warden.db");
        let c =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        let mut st = c
            .prepare("SELECT kind FROM audit_log ORDER BY seq")
            .unwrap();
        let kinds = st
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        kinds
    }
    pub fn link(&self, up: bool) {
        ip(&[
            "-n",
            &self.ns.name,
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The bridge first: the daemon would halt on its loss anyway.
        self.fleet.kill();
        self.proxy.take();
    }
}

pub struct Options {
    pub nodes: usize,
    pub lease_ttl: &'static str,
    pub on_partition: &'static str,
    /// Link delay each way (a proxy in each node's namespace).
    pub delay: Option<Duration>,
    /// Agent processes per node.
    pub procs: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            nodes: 3,
            lease_ttl: "2s",
            on_partition: "halt",
            delay: None,
            procs: 3,
        }
    }
}

pub struct Cluster {
    // Field order is drop order.
    pub nodes: Vec<Node>,
    pub etcd: Proc,
    pub ens: Netns,
    /// etcd's data, on tmpfs: the tests time warden's path, not this shared
    /// disk's fsync (etcd syncs its WAL on every commit).
    pub etcd_data: tempfile::TempDir,
    pub dir: tempfile::TempDir,
    pub certs: Certs,
    pub tag: String,
}

impl Cluster {
    pub fn start(o: Options) -> Cluster {
        common::require_root();
        let tag = format!(
            "wfl{}x{}",
            std::process::id() % 100000,
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::Builder::new()
            .prefix("warden-fleet-test-")
            .tempdir()
            .unwrap();
        let ens = Netns::new(format!("{tag}-etcd"));
        let mut ips: Vec<String> = vec!["127.0.0.1".into()];
        ips.extend((1..=o.nodes).map(|i| format!("10.250.{i}.1")));
        let certs = Certs::make(dir.path(), &ips);
        let mut nss = vec![];
        for i in 1..=o.nodes {
            let ns = Netns::new(format!("{tag}-n{i}"));
            let e = format!("eth{i}");
            ip(&[
                "-n", &ens.name, "link", "add", &e, "type", "veth", "peer", "name", "eth0",
                "netns", &ns.name,
            ]);
            ip(&[
                "-n",
                &ens.name,
                "addr",
                "add",
                &format!("10.250.{i}.1/24"),
                "dev",
                &e,
            ]);
            ip(&["-n", &ens.name, "link", "set", &e, "up"]);
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("10.250.{i}.2/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
            nss.push(ns);
        }
        let urls: Vec<String> = ips
            .iter()
            .map(|i| format!("https://{i}:{ETCD_PORT}"))
            .collect();
        let etcd_log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let etcd_data = tempfile::Builder::new()
            .prefix("warden-fleet-etcd-")
            .tempdir_in("/dev/shm")
            .unwrap();
        let child = ens
            .cmd("etcd")
            .args(["--name", "e", "--data-dir"])
            .arg(etcd_data.path().join("data"))
            .args(["--listen-client-urls", &urls.join(",")])
            .args(["--advertise-client-urls", &urls[0]])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-cluster", "e=http://127.0.0.1:2380"])
            .arg("--cert-file")
            .arg(&certs.server_cert)
            .arg("--key-file")
            .arg(&certs.server_key)
            .arg("--trusted-ca-file")
            .arg(&certs.ca)
            .arg("--client-cert-auth")
            .stdout(Stdio::null())
            .stderr(etcd_log)
            .spawn()
            .unwrap();
        let mut c = Cluster {
            nodes: vec![],
            etcd: Proc {
                child: Some(child),
                what: "etcd".into(),
            },
            ens,
            etcd_data,
            dir,
            certs,
            tag,
        };
        c.wait_etcd();
        for (k, ns) in nss.into_iter().enumerate() {
            let i = k + 1;
            let proxy = o.delay.map(|d| {
                DelayProxy::start(
                    &ns,
                    &format!("127.0.0.1:{ETCD_PORT}"),
                    &format!("10.250.{i}.1:{ETCD_PORT}"),
                    d,
                )
            });
            let endpoint = match o.delay {
                Some(_) => format!("https://127.0.0.1:{ETCD_PORT}"),
                None => format!("https://10.250.{i}.1:{ETCD_PORT}"),
            };
            c.add_node(i, ns, proxy, &endpoint, &o);
        }
        c.wait_members(o.nodes);
        c
    }

    fn add_node(
        &mut self,
        i: usize,
        ns: Netns,
        proxy: Option<DelayProxy>,
        endpoint: &str,
        o: &Options,
    ) {
        let name = format!("n{i}");
        let agents = common::agent("work", common::workload::COOPERATIVE, o.procs, "");
        let q = |p: &Path| toml::Value::String(p.to_string_lossy().into()).to_string();
        // Placeholder paths: the Env's directory is made by Env::new.
        let mut env = Env::new("", &agents);
        let fleet = format!(
            "[fleet]\nendpoints = [\"{endpoint}\"]\nnode = \"{name}\"\ncert = {}\nkey = {}\nca = {}\nlease_ttl = \"{}\"\non_partition = \"{}\"\nstate_dir = {}\n",
            q(&self.certs.client_cert),
            q(&self.certs.client_key),
            q(&self.certs.ca),
            o.lease_ttl,
            o.on_partition,
            q(&env.path("fleet-state")),
        );
        let text = std::fs::read_to_string(&env.config).unwrap();
        // [fleet] before the [[agent]] tables.
        let at = text.find("[[agent]]").unwrap();
        std::fs::write(
            &env.config,
            format!("{}{fleet}\n{}", &text[..at], &text[at..]),
        )
        .unwrap();
        start_daemon_in(&mut env, &ns);
        let fleet_log = env.path("fleet.stderr");
        let mut node = Node {
            name,
            index: i,
            fleet: Proc {
                child: None,
                what: String::new(),
            },
            env,
            ns,
            proxy,
            fleet_log,
        };
        node.start_fleet();
        self.nodes.push(node);
    }

    /// `warden fleet ARGS` from etcd's namespace (loopback: no link delay).
    pub fn admin(&self, args: &[&str]) -> (i32, String, String) {
        let cfg = self.dir.path().join("admin.toml");
        if !cfg.exists() {
            let q = |p: &Path| toml::Value::String(p.to_string_lossy().into()).to_string();
            std::fs::write(
                &cfg,
                format!(
                    "[fleet]\nendpoints = [\"https://127.0.0.1:{ETCD_PORT}\"]\nnode = \"admin\"\ncert = {}\nkey = {}\nca = {}\nstate_dir = {}\n",
                    q(&self.certs.client_cert),
                    q(&self.certs.client_key),
                    q(&self.certs.ca),
                    q(&self.dir.path().join("admin-state"))
                ),
            )
            .unwrap();
        }
        let out = self
            .ens
            .cmd(common::bin())
            .arg("fleet")
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    pub fn status_json(&self) -> Value {
        let (rc, out, err) = self.admin(&["status", "--json"]);
        assert_eq!(rc, 0, "fleet status: {out}{err}");
        serde_json::from_str(&out).unwrap()
    }

    fn wait_etcd(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = self
                .ens
                .cmd("etcdctl")
                .args(["--endpoints", &format!("https://127.0.0.1:{ETCD_PORT}")])
                .arg("--cacert")
                .arg(&self.certs.ca)
                .arg("--cert")
                .arg(&self.certs.client_cert)
                .arg("--key")
                .arg(&self.certs.client_key)
                .args(["endpoint", "health"])
                .env("ETCDCTL_API", "3")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(self.etcd.alive(), "etcd exited:\n{}", self.etcd_log());
            assert!(
                Instant::now() < deadline,
                "etcd did not come up:\n{}",
                self.etcd_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn etcd_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Waits until every node's bridge has published its state with its
    /// agents running.
    fn wait_members(&self, n: usize) {
        self.wait(
            "every node alive with agents running",
            Duration::from_secs(30),
            || {
                let v = self.status_json();
                let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
                nodes.len() == n
                    && nodes.iter().all(|r| {
                        r["alive"] == true
                            && r["state"]["agents"].as_array().is_some_and(|a| {
                                !a.is_empty() && a.iter().all(|a| a["state"] == "running")
                            })
                    })
                    && self.nodes.iter().all(|n| n.populated())
            },
        );
    }

    /// Polls `f` until it holds; on timeout, panics with every log.
    pub fn wait(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            s += &format!(
                "--- {} daemon ---\n{}\n--- {} fleet ---\n{}\n",
                n.name,
                tail(&n.env.stderr(), 40),
                n.name,
                tail(&n.fleet_stderr(), 40)
            );
        }
        s + &format!("--- etcd ---\n{}", tail(&self.etcd_log(), 15))
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }
}

fn tail(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

/// Like `Env::start`, inside `ns`.
pub fn start_daemon_in(env: &mut Env, ns: &Netns) {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&env.stderr_path)
        .unwrap();
    let child = ns
        .cmd(common::bin())
        .args(["daemon", "--config"])
        .arg(&env.config)
        .env("WARDEN_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    env.daemon = Some(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.try_call(r#"{"cmd":"ping"}"#).is_none() {
        if let Some(st) = env.daemon.as_mut().unwrap().try_wait().unwrap() {
            panic!("daemon exited at start: {st}\n{}", env.stderr());
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not come up\n{}",
            env.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
