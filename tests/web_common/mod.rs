//! Shared by the web tests and benchmark: start `warden web` against a test
//! daemon, a tiny HTTP/1.1 client, and an SSE reader. Plain std sockets so
//! the tests add no HTTP client to the dependency tree.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `warden web`; killed (by its pid) on drop.
pub struct Web {
    pub child: Child,
    pub port: u16,
}

impl Web {
    /// Starts `warden web --config FILE` on a free loopback port and waits
    /// for /api/health to answer.
    pub fn start(bin: &str, config: &Path, stderr: &Path) -> Web {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = std::fs::File::create(stderr).unwrap();
        let child = Command::new(bin)
            .args(["web", "--config"])
            .arg(config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let mut w = Web { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((200, ..)) = w.try_get("/api/health", None) {
                return w;
            }
            if let Some(st) = w.child.try_wait().unwrap() {
                panic!(
                    "warden web exited: {st}\n{}",
                    std::fs::read_to_string(stderr).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "warden web did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_get(&mut self, path: &str, token: Option<&str>) -> std::io::Result<Reply> {
        request(self.port, "GET", path, token, None, &[])
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Reply {
        request(self.port, "GET", path, token, None, &[]).unwrap()
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: Option<&str>) -> Reply {
        request(self.port, "POST", path, token, body, &[]).unwrap()
    }

    pub fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Reply {
        request(self.port, method, path, token, body, &[]).unwrap()
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (status, lower-case headers, body)
pub type Reply = (u16, HashMap<String, String>, String);

/// One request on its own connection (`Connection: close`).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(parse(&raw))
}

fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, headers, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// One SSE event as received: (id, the entry, when it arrived).
pub type Received = (u64, Value, Instant);

/// Opens `/api/events` and forwards each event to the returned channel from
/// a reader thread; the stream is closed (and the thread ends) when the
/// returned `TcpStream` is shut down.
pub fn sse(port: u16, token: &str, last_id: Option<u64>) -> (TcpStream, mpsc::Receiver<Received>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!(
        "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n"
    );
    if let Some(id) = last_id {
        req.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let reader = s.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(reader);
        let mut line = String::new();
        // Status line and headers.
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line.starts_with("HTTP/") {
                let _ = ready_tx.send(line.split(' ').nth(1).unwrap_or("0").to_string());
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut id = 0;
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let l = line.trim_end();
            if let Some(v) = l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")) {
                id = v.trim().parse().unwrap_or(0);
            } else if let Some(d) = l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")) {
                if let Ok(v) = serde_json::from_str::<Value>(d) {
                    if tx.send((id, v, Instant::now())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let status = ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("events: no answer");
    assert_eq!(status, "200", "events stream refused");
    (s, rx)
}

/// Creates a token through the CLI as root; returns its secret.
pub fn token(bin: &str, socket: &Path, name: &str, role: &str) -> String {
    let out = Command::new(bin)
        .arg("--socket")
        .arg(socket)
        .args(["token", "create", "--name", name, "--role", role, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["secret"].as_str().unwrap().to_string()
}
