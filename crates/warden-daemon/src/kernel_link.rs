//! The daemon's side of the safety kernel (`warden-kernel`, docs/kernel.md):
//! starting it, speaking its line protocol, and hearing what it did.
//!
//! The kernel watches the stop file and the daemon's liveness by itself and
//! freezes the agents at once on either; the daemon, when healthy, then
//! captures the full evidence and kills, and says `empty`. The daemon beats
//! from its main loop, so a loop that stops turning (a deadlock, a blocked
//! write, SIGSTOP) is silence, and silence is a halt.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start the kernel.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The `warden` binary (the kernel runs as `warden kernel ...`).
    pub exe: PathBuf,
    pub stop_file: PathBuf,
    pub latch: PathBuf,
    /// Where the kernel writes the reports of halts it carried out itself.
    pub report_dir: PathBuf,
    /// The agents' parent cgroup in a cgroup2 hierarchy, if there is one.
    pub v2: Option<PathBuf>,
    /// The agents' parent in the v1 freezer hierarchy, if there is one.
    pub v1_freezer: Option<PathBuf>,
    /// Silence from the daemon longer than this is a halt.
    pub liveness: Duration,
    /// How long a halt waits for the daemon's `empty` before the kernel kills.
    pub deadline: Duration,
    /// A hardware watchdog device the kernel pings while all is healthy.
    pub watchdog: Option<PathBuf>,
}

/// What the kernel told us.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Hello(u32),
    Ready,
    /// It froze the agents on its own trigger, `us` after seeing it.
    Frozen {
        trigger: String,
        us: u64,
    },
    /// It killed by itself; its report is at this path (None: not written).
    Killed {
        report: Option<PathBuf>,
    },
    Empty,
    Resumed,
    Refused(String),
    /// A line this daemon does not know (logged, otherwise ignored).
    Unknown(String),
}

impl Message {
    pub fn parse(line: &str) -> Message {
        let mut w = line.split(' ');
        match (w.next(), w.next(), w.next()) {
            (Some("hello"), Some(v), None) => v
                .parse()
                .map(Message::Hello)
                .unwrap_or_else(|_| Message::Unknown(line.into())),
            (Some("ready"), None, None) => Message::Ready,
            (Some("frozen"), Some(t), Some(us)) => Message::Frozen {
                trigger: t.into(),
                us: us.parse().unwrap_or(0),
            },
            (Some("killed"), Some("-"), None) => Message::Killed { report: None },
            (Some("killed"), Some(p), None) => Message::Killed {
                report: Some(PathBuf::from(p)),
            },
            (Some("empty"), None, None) => Message::Empty,
            (Some("resumed"), None, None) => Message::Resumed,
            (Some("refused"), Some(r), None) => Message::Refused(r.into()),
            _ => Message::Unknown(line.into()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot start the safety kernel {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("the safety kernel did not say ready within {0:?}: {1}")]
    NotReady(Duration, String),
    #[error("safety kernel pipe: {0}")]
    Pipe(#[from] std::io::Error),
}

/// A running kernel.
#[derive(Debug)]
pub struct Kernel {
    child: Child,
    /// Our write end of its stdin. Dropping it without `clean` is a halt.
    to: Option<std::fs::File>,
    /// The read end of its stdout, non-blocking.
    from: OwnedFd,
    /// Bytes of a line not yet complete.
    partial: Vec<u8>,
    /// Messages read while waiting for a particular answer.
    queued: Vec<Message>,
    /// When the next heartbeat is due.
    next_beat: Instant,
    beat_every: Duration,
    /// Its stdout reached end of file: the kernel is gone.
    pub eof: bool,
}

impl Kernel {
    /// Starts the kernel and waits for it to say `ready` (its watches are armed).
    pub fn spawn(spec: &Spec) -> Result<Kernel, KernelError> {
        let (in_r, in_w) = warden_core::sys::pipe_cloexec()?;
        let (out_r, out_w) = warden_core::sys::pipe_cloexec()?;
        let mut cmd = Command::new(&spec.exe);
        cmd.arg("kernel")
            .arg("--stop-file")
            .arg(&spec.stop_file)
            .arg("--latch")
            .arg(&spec.latch)
            .arg("--report-dir")
            .arg(&spec.report_dir)
            .arg("--liveness-timeout-ms")
            .arg(spec.liveness.as_millis().to_string())
            .arg("--deadline-ms")
            .arg(spec.deadline.as_millis().to_string());
        if let Some(d) = &spec.v2 {
            cmd.arg("--v2").arg(d);
        }
        if let Some(d) = &spec.v1_freezer {
            cmd.arg("--v1-freezer").arg(d);
        }
        if let Some(w) = &spec.watchdog {
            cmd.arg("--watchdog").arg(w);
        }
        // Stdio::from dup2s each end onto fd 0 and 1 (clearing close-on-exec
        // there only); every other descriptor of ours stays close-on-exec, so
        // no agent ever holds the write end and EOF means we are gone.
        let child = cmd
            .stdin(Stdio::from(in_r))
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| KernelError::Spawn {
                exe: spec.exe.clone(),
                source,
            })?;
        set_nonblocking(&out_r)?;
        let mut k = Kernel {
            child,
            to: Some(std::fs::File::from(in_w)),
            from: out_r,
            partial: Vec::new(),
            queued: Vec::new(),
            next_beat: Instant::now(),
            beat_every: spec.liveness / 4,
            eof: false,
        };
        k.send("hello 1")?;
        let wait = Duration::from_secs(5);
        match k.wait_for(wait, |m| matches!(m, Message::Ready)) {
            Some(_) => {}
            None => {
                let why = match k.child.try_wait() {
                    Ok(Some(st)) => format!("it exited ({st})"),
                    _ => "no answer".to_string(),
                };
                let _ = k.child.kill();
                let _ = k.child.wait();
                return Err(KernelError::NotReady(wait, why));
            }
        }
        k.send("hb 1")?;
        Ok(k)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// True while the kernel process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A descriptor that becomes readable when the kernel writes, for the loop.
    pub fn readable_fd(&self) -> std::io::Result<OwnedFd> {
        self.from.try_clone()
    }

    fn send(&mut self, line: &str) -> std::io::Result<()> {
        let Some(to) = self.to.as_mut() else {
            return Err(std::io::Error::other("pipe to the kernel is closed"));
        };
        let mut l = line.replace(['\n', '\r'], " ");
        l.truncate(256);
        l.push('\n');
        to.write_all(l.as_bytes())
    }

    /// Heartbeat, when due: `hb 1`, or `hb 0 REASON` while a health check
    /// fails. Returns when the next one is due.
    pub fn beat(&mut self, unhealthy: Option<&str>, now: Instant) -> Instant {
        if now >= self.next_beat {
            let r = match unhealthy {
                None => self.send("hb 1"),
                Some(why) => self.send(&format!("hb 0 {why}")),
            };
            if let Err(e) = r {
                tracing::error!("cannot reach the safety kernel: {e}");
            }
            self.next_beat = now + self.beat_every;
        }
        self.next_beat
    }

    /// A hard halt begins: the kernel freezes too and arms its deadline.
    pub fn halt(&mut self, id: &str) {
        if let Err(e) = self.send(&format!("halt {id}")) {
            tracing::error!("cannot tell the safety kernel about halt {id}: {e}");
        }
    }

    /// The halt's cgroups are verified empty.
    pub fn empty(&mut self, id: &str) {
        if let Err(e) = self.send(&format!("empty {id}")) {
            tracing::error!("cannot tell the safety kernel halt {id} is done: {e}");
        }
    }

    /// A human resume was recorded: asks the kernel to leave its halted
    /// state. Ok once it says `resumed`; the refusal's reason otherwise.
    pub fn resume(&mut self) -> Result<(), String> {
        self.send("resume").map_err(|e| e.to_string())?;
        match self.wait_for(Duration::from_secs(2), |m| {
            matches!(m, Message::Resumed | Message::Refused(_))
        }) {
            Some(Message::Resumed) => Ok(()),
            Some(Message::Refused(r)) => Err(r),
            _ => Err("no answer from the safety kernel".into()),
        }
    }

    /// Orderly end: the kernel verifies the tree empty and exits.
    pub fn finish_clean(mut self) {
        let _ = self.send("clean");
        self.to = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::error!("the safety kernel did not exit after `clean`; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Every complete message available now (never blocks), queued ones first.
    pub fn read(&mut self) -> Vec<Message> {
        let mut out = std::mem::take(&mut self.queued);
        let mut buf = [0u8; 1024];
        loop {
            match nix::unistd::read(self.from.as_raw_fd(), &mut buf) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            out.push(Message::parse(&text));
        }
        // A kernel never sends long lines; do not buffer a broken one forever.
        if self.partial.len() > 4096 {
            self.partial.clear();
        }
        out
    }

    /// Waits up to `timeout` for a message matching `want`; others are kept
    /// for the loop's next [`Kernel::read`].
    fn wait_for(&mut self, timeout: Duration, want: impl Fn(&Message) -> bool) -> Option<Message> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut found = None;
            for m in self.read() {
                if found.is_none() && want(&m) {
                    found = Some(m);
                } else {
                    self.queued.push(m);
                }
            }
            if found.is_some() {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut fds = [nix::poll::PollFd::new(
                self.from.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = u16::try_from(left.as_millis().clamp(1, 1000)).unwrap_or(1000);
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).is_err() {
                return None;
            }
            if fds[0]
                .revents()
                .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP))
                && self.partial.is_empty()
            {
                // The kernel is gone; whatever it said was read above.
                let rest = self.read();
                self.queued.extend(rest);
                if !self.alive() {
                    return None;
                }
            }
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(())
}

/// The kernel's reports of halts it carried out by itself, oldest first.
pub fn reports(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kernel-report-") && n.ends_with(".json"))
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_kernel_says() {
        assert_eq!(Message::parse("hello 1"), Message::Hello(1));
        assert_eq!(Message::parse("ready"), Message::Ready);
        assert_eq!(
            Message::parse("frozen stop_file 812"),
            Message::Frozen {
                trigger: "stop_file".into(),
                us: 812
            }
        );
        assert_eq!(
            Message::parse("killed /s/kernel-report-1-0.json"),
            Message::Killed {
                report: Some("/s/kernel-report-1-0.json".into())
            }
        );
        assert_eq!(Message::parse("killed -"), Message::Killed { report: None });
        assert_eq!(
            Message::parse("refused stop_file"),
            Message::Refused("stop_file".into())
        );
        assert!(matches!(Message::parse("frozen"), Message::Unknown(_)));
        assert!(matches!(Message::parse("explode now"), Message::Unknown(_)));
    }

    #[test]
    fn reports_are_listed_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "kernel-report-2-0.json",
            "kernel-report-1-0.json",
            "other.json",
        ] {
            std::fs::write(d.path().join(n), "{}").unwrap();
        }
        let r = reports(d.path());
        let names: Vec<_> = r
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["kernel-report-1-0.json", "kernel-report-2-0.json"]);
    }
}
