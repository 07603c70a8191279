//! Agent output: drained from pipes into per-agent log files, with the last
//! bytes kept in memory for evidence.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bytes of output kept in memory per agent.
pub const TAIL_BYTES: usize = 16 * 1024;

/// The in-memory tail of an agent's output.
#[derive(Debug, Default)]
pub struct Tail {
    buf: VecDeque<u8>,
}

impl Tail {
    pub fn push(&mut self, data: &[u8]) {
        if data.len() >= TAIL_BYTES {
            self.buf.clear();
            self.buf.extend(&data[data.len() - TAIL_BYTES..]);
            return;
        }
        let over = (self.buf.len() + data.len()).saturating_sub(TAIL_BYTES);
        self.buf.drain(..over);
        self.buf.extend(data);
    }

    pub fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// Shared handle to one agent's log.
#[derive(Debug, Clone)]
pub struct AgentLog {
    pub path: PathBuf,
    pub tail: Arc<Mutex<Tail>>,
}

impl AgentLog {
    pub fn new(log_dir: &Path, agent: &str) -> AgentLog {
        AgentLog {
            path: log_dir.join("agents").join(format!("{agent}.log")),
            tail: Arc::new(Mutex::new(Tail::default())),
        }
    }

    pub fn tail_text(&self) -> String {
        self.tail.lock().map(|t| t.text()).unwrap_or_default()
    }

    /// Appends a line written by warden itself (start, exit, ...).
    pub fn note(&self, line: &str) {
        let l = format!("[warden] {line}\n");
        self.write(l.as_bytes());
    }

    fn write(&self, data: &[u8]) {
        if let Ok(mut t) = self.tail.lock() {
            t.push(data);
        }
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            let _ = f.write_all(data);
        }
    }

    /// Drains `fd` until end of file (the agent closed it or died).
    pub async fn drain(self, fd: OwnedFd) {
        use tokio::io::AsyncReadExt;
        let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
            return;
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        let mut buf = vec![0u8; 8192];
        loop {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Ok(mut t) = self.tail.lock() {
                        t.push(&buf[..n]);
                    }
                    if let Some(f) = file.as_mut() {
                        let _ = f.write_all(&buf[..n]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_bytes() {
        let mut t = Tail::default();
        for i in 0..10_000 {
            t.push(format!("line {i}\n").as_bytes());
        }
        let s = t.text();
        assert!(s.len() <= TAIL_BYTES);
        assert!(s.ends_with("line 9999\n"));
        t.push(&vec![b'x'; TAIL_BYTES * 2]);
        assert_eq!(t.text().len(), TAIL_BYTES);
    }
}
