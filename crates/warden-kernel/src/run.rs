//! The loop: one thread, one `poll()` on [inotify, stdin] with a timeout to
//! the nearest timer (stop-file lstat, liveness, halt deadline, watchdog).
//! It observes and performs; [`crate::machine::step`] decides.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::args::Config;
use crate::cgroup::Tree;
use crate::log;
use crate::machine::{step, Action, Daemon, Event, Phase, State};
use crate::protocol::{encode, Line, LineReader, Msg, Reply};
use crate::report::Record;
use crate::stopfile::StopFile;
use crate::watchdog::Watchdog;

/// The uncached lstat of the stop file, and the read of the parents.
const CHECK: Duration = Duration::from_millis(50);
/// The same while the kernel waits for its kill to empty the tree.
const CHECK_KILLING: Duration = Duration::from_millis(10);
/// How long the first freeze of a halt waits for `frozen` to be confirmed.
const FREEZE_CONFIRM: Duration = Duration::from_millis(200);
/// Unknown lines logged before the log goes quiet (a flood must not
/// become a flood of log lines).
const GARBAGE_LOGGED: u64 = 16;

/// Everything the loop holds.
struct Kernel {
    /// The command line.
    cfg: Config,
    /// The parents.
    tree: Tree,
    /// The stop file and its watches.
    stop: StopFile,
    /// The hardware watchdog, if any.
    watchdog: Option<Watchdog>,
    /// The machine's state; only `step` changes it.
    state: State,
    /// Splits stdin into lines.
    reader: LineReader,
    /// The kernel's own halt in progress (for the report).
    record: Option<Record>,
    /// The one deadline the machine arms.
    deadline: Option<Instant>,
    /// When the daemon last sent a valid line.
    last_line: Instant,
    /// Silence was reported for the current silence.
    silent: bool,
    /// stdin is still open.
    stdin_open: bool,
    /// Next stop-file and cgroup check.
    next_check: Instant,
    /// Next watchdog ping opportunity.
    next_ping: Instant,
    /// Reports written (the `<n>` of their names).
    reports: u32,
    /// Unknown lines seen.
    garbage: u64,
    /// Writing to the daemon failed: say so once.
    out_failed: bool,
    /// Set by `Action::Exit`.
    exit: Option<i32>,
}

/// Runs the kernel; returns the exit code.
pub fn run(cfg: Config) -> i32 {
    crate::sys::ignore_termination_signals();
    schedule(cfg.rt_priority);
    // The OOM killer must pick an agent, never the process that stops them.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        log!("cannot set oom_score_adj -1000: {e}");
    }
    for fd in [0, 1] {
        // stdout: a hung daemon that stops reading must not block the
        // kernel in write(2); a line that does not fit is dropped and logged.
        if let Err(e) = fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)) {
            log!("cannot make fd {fd} non-blocking: {e}");
        }
    }
    let stop = match StopFile::new(&cfg.stop_file) {
        Ok(s) => s,
        Err(e) => {
            log!("cannot create inotify instance: {e}");
            return 1;
        }
    };
    let watchdog = match cfg.watchdog.as_deref().map(Watchdog::open) {
        None => None,
        Some(Ok(w)) => Some(w),
        Some(Err(e)) => {
            log!(
                "cannot open watchdog {}: {e}",
                cfg.watchdog
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string())
            );
            return 1;
        }
    };
    let latched = crate::latch::exists(&cfg.latch);
    if latched {
        log!(
            "SAFE MODE latch {} is set: starting halted",
            cfg.latch.display()
        );
    }
    let now = Instant::now();
    let mut k = Kernel {
        tree: Tree {
            v2: cfg.v2.clone(),
            v1: cfg.v1_freezer.clone(),
        },
        cfg,
        stop,
        watchdog,
        state: State::new(latched),
        reader: LineReader::default(),
        record: None,
        deadline: None,
        last_line: now,
        silent: false,
        stdin_open: true,
        next_check: now,
        next_ping: now,
        reports: 0,
        garbage: 0,
        out_failed: false,
        exit: None,
    };
    k.send(&Reply::Hello, "");
    k.send(&Reply::Ready, "");
    k.run()
}

/// SCHED_FIFO so that a core full of agent busy-loops cannot delay the
/// freeze; nice -20 when refused (docs/kernel.md, "Scheduling").
fn schedule(prio: i32) {
    match crate::sys::set_fifo(prio) {
        Ok(()) => log!("running SCHED_FIFO priority {prio}"),
        Err(e) => {
            log!("SCHED_FIFO priority {prio} refused ({e}); using nice -20");
            if let Err(e) = crate::sys::set_nice(-20) {
                log!("nice -20 refused too ({e}); running at normal priority");
            }
        }
    }
}

fn ms_until(t: Instant, now: Instant) -> u16 {
    let d = t.saturating_duration_since(now);
    // Round up: waking a millisecond early would only spin.
    d.as_micros().div_ceil(1000).min(u128::from(u16::MAX)) as u16
}

impl Kernel {
    fn run(&mut self) -> i32 {
        let mut buf = [0u8; 512];
        loop {
            if let Some(code) = self.exit {
                return code;
            }
            let now = Instant::now();
            let mut wake = self.next_check;
            if self.watchdog.is_some() {
                wake = wake.min(self.next_ping);
            }
            if self.stdin_open && !self.silent {
                wake = wake.min(self.last_line + self.cfg.liveness_timeout);
            }
            if let Some(d) = self.deadline {
                wake = wake.min(d);
            }
            let (ino_ready, stdin_ready) = {
                let mut fds = vec![PollFd::new(self.stop.fd(), PollFlags::POLLIN)];
                let stdin = std::io::stdin();
                if self.stdin_open {
                    fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, PollTimeout::from(ms_until(wake, now))) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(e) => {
                        log!("poll failed: {e}");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), fds.get(1).is_some_and(ready))
            };
            if ino_ready {
                let c = self.stop.on_readable();
                self.feed(Event::StopFile {
                    present: c.present,
                    armed: c.armed,
                });
            }
            if stdin_ready {
                self.read_stdin(&mut buf);
            }
            let now = Instant::now();
            if now >= self.next_check {
                let c = self.stop.check();
                self.feed(Event::StopFile {
                    present: c.present,
                    armed: c.armed,
                });
                let e = self.observed();
                self.feed(e);
                let every = if matches!(self.state.phase, Phase::Killing(_)) {
                    CHECK_KILLING
                } else {
                    CHECK
                };
                self.next_check = now + every;
            }
            if self.stdin_open && !self.silent && now >= self.last_line + self.cfg.liveness_timeout
            {
                self.silent = true;
                log!(
                    "no line from the daemon for {} ms",
                    self.cfg.liveness_timeout.as_millis()
                );
                self.feed(Event::Silence);
            }
            if self.deadline.is_some_and(|d| now >= d) {
                self.deadline = None;
                self.feed(Event::Deadline);
            }
            if self.watchdog.is_some() && now >= self.next_ping {
                self.next_ping = now + self.cfg.watchdog_interval;
                self.feed(Event::WatchdogDue);
            }
        }
    }

    fn read_stdin(&mut self, buf: &mut [u8]) {
        match nix::unistd::read(std::io::stdin().as_raw_fd(), buf) {
            Ok(0) => {
                self.stdin_open = false;
                if self.state.daemon != Daemon::Closing {
                    log!("end of file from the daemon");
                }
                self.feed(Event::Eof);
            }
            Ok(n) => {
                for line in self.reader.feed(&buf[..n]) {
                    match line {
                        Line::Msg(m) => {
                            self.last_line = Instant::now();
                            self.silent = false;
                            // A resume is decided on the stop file as it is
                            // now (uncached), not as the last timer saw it.
                            if matches!(m, Msg::Resume) {
                                let c = self.stop.check();
                                self.feed(Event::StopFile {
                                    present: c.present,
                                    armed: c.armed,
                                });
                            }
                            self.feed(Event::Daemon(m));
                        }
                        Line::Garbage(g) => {
                            self.garbage += 1;
                            if self.garbage <= GARBAGE_LOGGED {
                                log!("ignoring a line from the daemon (a missed heartbeat): {g:?}");
                            }
                            self.feed(Event::Garbage);
                        }
                    }
                }
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => {
                log!("cannot read from the daemon: {e}; treating it as gone");
                self.stdin_open = false;
                self.feed(Event::Eof);
            }
        }
    }

    /// Reads the parents: the `Observed` event (populated when unreadable:
    /// fail closed). Also timestamps the empty tree of a kill in progress.
    fn observed(&mut self) -> Event {
        let r = self.tree.populated();
        if let Err(e) = &r {
            log!("cannot read the agents' cgroups: {e}");
        }
        if r == Ok(false) {
            if let Some(rec) = self
                .record
                .as_mut()
                .filter(|r| r.killed_us.is_some() && r.empty_us.is_none())
            {
                rec.empty_us = Some(rec.since_us());
            }
        }
        Event::Observed {
            populated: r.clone().unwrap_or(true),
            readable: r.is_ok(),
        }
    }

    /// Steps the machine with `e` and everything its actions feed back.
    fn feed(&mut self, e: Event) {
        let mut q = VecDeque::from([e]);
        while let Some(e) = q.pop_front() {
            let (s, actions) = step(self.state.clone(), e);
            self.state = s;
            for a in actions {
                if a == Action::Observe {
                    let e = self.observed();
                    q.push_back(e);
                } else {
                    self.perform(a);
                }
            }
        }
    }

    fn errors(&mut self, what: &str, errs: Vec<String>) {
        for e in errs {
            log!("{what}: {e}");
            if let Some(r) = self.record.as_mut() {
                r.errors.push(format!("{what}: {e}"));
            }
        }
    }

    fn perform(&mut self, a: Action) {
        match a {
            Action::Begin(t) => {
                log!("halt: trigger {}", t.wire());
                self.record = Some(Record::new(t));
            }
            Action::Freeze => {
                let errs = self.tree.freeze();
                self.errors("freeze", errs);
                if let Some(rec) = self.record.as_mut().filter(|r| !r.confirm_waited) {
                    rec.confirm_waited = true;
                    let until = Instant::now() + FREEZE_CONFIRM;
                    while !self.tree.frozen() && Instant::now() < until {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                    if self.tree.frozen() {
                        rec.frozen_us = Some(rec.since_us());
                        log!("frozen in {} us", rec.since_us());
                    } else {
                        let e = format!("not frozen after {} ms", FREEZE_CONFIRM.as_millis());
                        log!("freeze: {e}");
                        rec.errors.push(e);
                    }
                }
            }
            Action::Notify(r) => {
                let us = self
                    .record
                    .as_ref()
                    .map_or(0, |rec| rec.frozen_us.unwrap_or_else(|| rec.since_us()));
                self.send(&r, &us.to_string());
            }
            Action::Latch { trigger, halt_id } => {
                let json = crate::latch::encode(
                    trigger.latch_name(),
                    trigger.reason(),
                    halt_id.as_deref(),
                    crate::report::now_ms(),
                );
                match crate::latch::set_if_absent(&self.cfg.latch, &json) {
                    Ok(true) => log!(
                        "SAFE MODE latch {} set: {}",
                        self.cfg.latch.display(),
                        trigger.latch_name()
                    ),
                    Ok(false) => {}
                    Err(e) => {
                        let e = format!(
                            "cannot write SAFE MODE latch {}: {e}",
                            self.cfg.latch.display()
                        );
                        self.errors("latch", vec![e]);
                    }
                }
            }
            Action::ArmDeadline => self.deadline = Some(Instant::now() + self.cfg.deadline),
            Action::Disarm => self.deadline = None,
            Action::Capture => match self.tree.pids() {
                Ok(pids) => {
                    if let Some(rec) = self.record.as_mut() {
                        rec.capture(&pids);
                    }
                }
                Err(e) => self.errors("capture", vec![e]),
            },
            Action::Kill => {
                let errs = self.tree.kill();
                if let Some(rec) = self.record.as_mut().filter(|r| r.killed_us.is_none()) {
                    rec.killed_us = Some(rec.since_us());
                }
                self.errors("kill", errs);
            }
            Action::Thaw => {
                let errs = self.tree.thaw();
                self.errors("thaw", errs);
            }
            Action::Observe => {}
            Action::Report { complete } => self.report(complete),
            Action::Ping => {
                if let Some(w) = self.watchdog.as_mut() {
                    w.ping();
                }
            }
            Action::Exit(code) => {
                log!("exiting with code {code}");
                if code == 0 && self.state.daemon == Daemon::Closing {
                    if let Some(w) = self.watchdog.take() {
                        w.disarm();
                    }
                }
                self.exit = Some(code);
            }
        }
    }

    fn report(&mut self, complete: bool) {
        let Some(rec) = self.record.take() else {
            return;
        };
        let survivors = if complete {
            vec![]
        } else {
            self.tree.pids().unwrap_or_default()
        };
        if !complete {
            log!(
                "HALT INCOMPLETE: {} survivors after {} ms: {survivors:?}",
                survivors.len(),
                self.cfg.deadline.as_millis()
            );
        }
        let json = rec.to_json(&survivors, complete);
        match crate::report::write(&self.cfg.report_dir, &json, &mut self.reports) {
            Ok(p) => {
                log!(
                    "killed {} processes (trigger {}); report {}",
                    rec.processes_total,
                    rec.trigger.wire(),
                    p.display()
                );
                self.send(&Reply::Killed, &p.to_string_lossy());
            }
            Err(e) => {
                log!(
                    "cannot write report into {}: {e}; the report follows",
                    self.cfg.report_dir.display()
                );
                log!("{}", json.trim_end());
                self.send(&Reply::Killed, "-");
            }
        }
    }

    /// One line to the daemon; never blocks.
    fn send(&mut self, r: &Reply, extra: &str) {
        let line = encode(r, extra);
        match nix::unistd::write(std::io::stdout().as_fd(), line.as_bytes()) {
            Ok(n) if n == line.len() => self.out_failed = false,
            r => {
                if !self.out_failed {
                    log!("cannot tell the daemon {:?}: {r:?}", line.trim_end());
                }
                self.out_failed = true;
            }
        }
    }
}
