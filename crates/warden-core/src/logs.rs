//! Agent output: drained from pipes into per-agent log files, with the last
//! bytes kept in memory for evidence.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::LogPolicy;

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
///
/// Both of the agent's pipes and warden's own notes write through one
/// [`Sink`], which rotates the file past `log_max` and holds the token
/// bucket that paces the drains: past `log_rate` the drains stop reading, the
/// pipes fill, and the agent blocks on its own `write` (pipe(7)). Memory stays
/// at one read buffer per pipe however fast the agent writes.
#[derive(Debug, Clone)]
pub struct AgentLog {
    pub path: PathBuf,
    pub tail: Arc<Mutex<Tail>>,
    sink: Arc<Mutex<Sink>>,
    /// Bytes of the agent's output written to disk by the daemon since it
    /// was created: they count toward the agent's own `disk_write` budget.
    written: Arc<AtomicU64>,
}

/// The log file, its size, its rotation and the drain rate.
#[derive(Debug)]
struct Sink {
    path: PathBuf,
    policy: LogPolicy,
    file: Option<std::fs::File>,
    /// Bytes in the current file.
    size: u64,
    /// Token bucket: bytes that may be drained now (negative: owed).
    tokens: f64,
    refilled: Instant,
}

impl Sink {
    fn open(&mut self) -> Option<&mut std::fs::File> {
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok()?;
            self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
            set_log_mode(&f);
            self.file = Some(f);
        }
        self.file.as_mut()
    }

    /// Writes `data`, rotating whenever the file reaches `log_max`, so no
    /// file ever holds more than `log_max` bytes.
    fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.open().is_none() {
                return;
            }
            if self.size >= self.policy.max {
                self.rotate();
                continue;
            }
            let room = (self.policy.max - self.size) as usize;
            let (now, rest) = data.split_at(room.min(data.len()));
            if let Some(f) = self.file.as_mut() {
                if f.write_all(now).is_err() {
                    return;
                }
            }
            self.size += now.len() as u64;
            data = rest;
        }
    }

    /// `NAME.log.(k-1)` to `NAME.log.k`, ..., `NAME.log` to `NAME.log.1`,
    /// then a new `NAME.log`; the oldest beyond `log_keep` is replaced.
    fn rotate(&mut self) {
        self.file = None;
        let nth = |i: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        if self.policy.keep == 0 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            for i in (1..self.policy.keep).rev() {
                let _ = std::fs::rename(nth(i), nth(i + 1));
            }
            let _ = std::fs::rename(&self.path, nth(1));
        }
        // A file that cannot be rotated away is truncated rather than grown.
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)
            .ok();
        if let Some(f) = &f {
            set_log_mode(f);
        }
        self.size = 0;
        self.file = f;
    }

    /// How long the drains must wait before reading again.
    fn wait(&mut self, now: Instant) -> Duration {
        let rate = self.policy.rate.max(1) as f64;
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + dt * rate).min(self.policy.burst as f64);
        if self.tokens > 0.0 {
            Duration::ZERO
        } else {
            // At least a millisecond: the timer cannot do better, and
            // shorter sleeps only spin the loop.
            Duration::from_secs_f64(-self.tokens / rate).max(Duration::from_millis(1))
        }
    }
}

/// Agent logs are readable by the log directory's group (`warden`), whatever
/// the daemon's umask (the unit sets `UMask=0077`).
fn set_log_mode(f: &std::fs::File) {
    use std::os::unix::fs::PermissionsExt;
    let _ = f.set_permissions(std::fs::Permissions::from_mode(0o640));
}

impl AgentLog {
    pub fn new(log_dir: &Path, agent: &str, policy: LogPolicy) -> AgentLog {
        let path = log_dir.join("agents").join(format!("{agent}.log"));
        AgentLog {
            sink: Arc::new(Mutex::new(Sink {
                path: path.clone(),
                policy,
                file: None,
                size: 0,
                tokens: policy.burst as f64,
                refilled: Instant::now(),
            })),
            path,
            tail: Arc::new(Mutex::new(Tail::default())),
            written: Arc::new(AtomicU64::new(0)),
        }
    }

    /// New limits (a reload); they apply from the next write.
    pub fn set_policy(&self, policy: LogPolicy) {
        if let Ok(mut s) = self.sink.lock() {
            s.policy = policy;
            s.tokens = s.tokens.min(policy.burst as f64);
        }
    }

    /// Bytes of the agent's output written so far (never decreases).
    pub fn output_bytes(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
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
        if let Ok(mut s) = self.sink.lock() {
            s.write(data);
        }
    }

    /// Drains `fd` until end of file (the agent closed it or died), at most
    /// `log_rate` bytes per second on average.
    pub async fn drain(self, fd: OwnedFd) {
        use tokio::io::AsyncReadExt;
        let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
            return;
        };
        let mut buf = vec![0u8; 8192];
        loop {
            let wait = self
                .sink
                .lock()
                .map(|mut s| s.wait(Instant::now()))
                .unwrap_or_default();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Ok(mut t) = self.tail.lock() {
                        t.push(&buf[..n]);
                    }
                    if let Ok(mut s) = self.sink.lock() {
                        s.write(&buf[..n]);
                        s.tokens -= n as f64;
                    }
                    self.written.fetch_add(n as u64, Ordering::Relaxed);
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

    fn policy(max: u64, keep: u32) -> LogPolicy {
        LogPolicy {
            max,
            keep,
            ..Default::default()
        }
    }

    #[test]
    fn rotates_and_keeps_n_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("agents")).unwrap();
        let log = AgentLog::new(d.path(), "a", policy(10_000, 2));
        for _ in 0..100 {
            log.write(&[b'y'; 999]);
        }
        let mut files: Vec<(String, u64)> = std::fs::read_dir(d.path().join("agents"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        files.sort();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a.log", "a.log.1", "a.log.2"]);
        assert!(files.iter().all(|(_, len)| *len <= 10_000), "{files:?}");
        assert_eq!(files[1].1, 10_000);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&log.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        // 99,900 bytes: nine full files, the current one holds the rest.
        assert_eq!(files[0].1, 99_900 % 10_000);
    }

    #[test]
    fn keep_zero_truncates() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("agents")).unwrap();
        let log = AgentLog::new(d.path(), "a", policy(4096, 0));
        log.write(&[b'x'; 5000]);
        let n = std::fs::read_dir(d.path().join("agents")).unwrap().count();
        assert_eq!(n, 1);
        assert_eq!(std::fs::metadata(&log.path).unwrap().len(), 5000 - 4096);
    }

    #[test]
    fn bucket_paces_past_the_burst() {
        let d = tempfile::tempdir().unwrap();
        let log = AgentLog::new(
            d.path(),
            "a",
            LogPolicy {
                rate: 1000,
                burst: 2000,
                ..Default::default()
            },
        );
        let mut s = log.sink.lock().unwrap();
        let t = s.refilled;
        assert_eq!(s.wait(t), Duration::ZERO);
        s.tokens -= 2500.0;
        // 500 bytes owed at 1000/s: half a second.
        let w = s.wait(t);
        assert!(
            w >= Duration::from_millis(499) && w <= Duration::from_millis(501),
            "{w:?}"
        );
        assert_eq!(s.wait(t + Duration::from_secs(10)), Duration::ZERO);
        assert_eq!(s.tokens, 2000.0, "never more than the burst");
    }
}
