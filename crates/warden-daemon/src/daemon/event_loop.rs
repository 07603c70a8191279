//! The one loop that turns the daemon: every turn checks the stop file with
//! an uncached `lstat`, then waits for inotify, signals, commands, agents' and
//! tools' messages and timers, hands each to its room, and runs the timers.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use super::*;
use crate::agent_socket::AgentCommand;
use crate::control_socket::{self as server, Command};
use warden_core::supervisor::{Event, State};

impl Daemon {
    /// The main loop. Returns the exit code.
    pub fn run(mut self) -> i32 {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("cannot start runtime: {e}");
                return 1;
            }
        };
        rt.block_on(async move { self.main_loop().await })
    }

    pub(super) async fn main_loop(&mut self) -> i32 {
        let listener = match server::bind(&self.cfg.socket, &self.cfg.socket_group)
            .and_then(tokio::net::UnixListener::from_std)
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(
                    "cannot bind control socket {}: {e}",
                    self.cfg.socket.display()
                );
                self.hard_halt(
                    "startup",
                    &format!("control socket unavailable: {e}"),
                    None,
                    Instant::now(),
                );
                return 1;
            }
        };
        let (tx, mut cmds) = mpsc::channel::<Command>(64);
        tokio::spawn(server::serve_with(listener, tx, Some(self.audit.clone())));
        let (agent_tx, mut agent_cmds) = mpsc::channel::<AgentCommand>(256);
        self.agent_tx = Some(agent_tx);
        let (tool_tx, mut tools_done) = mpsc::unbounded_channel::<broker::ToolDone>();
        self.broker.set_done_channel(tool_tx);
        let stop_fd: OwnedFd = match self.stop.inotify_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!("cannot watch stop file: {e}");
                return 1;
            }
        };
        let stop_async = match warden_core::sys::async_readable(stop_fd) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("cannot watch stop file: {e}");
                return 1;
            }
        };
        let (mut sigterm, mut sigint, mut sigchld, mut sighup) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::child()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
            _ => {
                tracing::error!("cannot install signal handlers");
                return 1;
            }
        };
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        self.notify_status();
        tracing::info!(
            "warden running: {} agents, stop file {}, socket {}",
            self.slots.len(),
            self.cfg.stop_file.display(),
            self.cfg.socket.display()
        );
        if self.mode == Mode::Running && !self.stop.present() {
            let names: Vec<String> = self
                .slots
                .iter()
                .filter(|(_, s)| s.cfg.autostart)
                .map(|(n, _)| n.clone())
                .collect();
            for n in names {
                self.dispatch(&n, Event::Start);
            }
        }

        let protect_async = match self
            .protect
            .fd()
            .try_clone_to_owned()
            .and_then(warden_core::sys::async_readable)
        {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("cannot watch protected paths: {e}");
                return 1;
            }
        };
        // The kernel's stdout, registered anew whenever a new kernel starts.
        let mut kernel_async: Option<(i32, tokio::io::unix::AsyncFd<OwnedFd>)> = None;
        enum Wake {
            Kernel,
            Protect,
            StopFile,
            Term,
            Int,
            Child,
            Hup,
            Cmd(Option<Command>),
            Agent(Option<AgentCommand>),
            ToolDone(Option<broker::ToolDone>),
            Timer,
        }
        loop {
            // Uncached check on every turn, whatever woke us.
            if self.stop.present() {
                self.on_stop_file(Instant::now());
            }
            if self.exit_requested {
                break;
            }
            if self.mode == Mode::ShuttingDown && self.all_down() {
                break;
            }
            let pid = self.kernel.as_ref().map(|k| k.pid());
            if kernel_async.as_ref().map(|(p, _)| *p) != pid {
                kernel_async = self.kernel.as_ref().and_then(|k| {
                    let fd = k.readable_fd().ok()?;
                    Some((k.pid(), warden_core::sys::async_readable(fd).ok()?))
                });
            }
            let next = self.next_wake();
            let kernel_readable = async {
                match &kernel_async {
                    Some((_, a)) => {
                        if let Ok(mut g) = a.readable().await {
                            g.clear_ready();
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let wake = tokio::select! {
                biased;
                _ = kernel_readable => Wake::Kernel,
                r = stop_async.readable() => {
                    if let Ok(mut g) = r { g.clear_ready(); }
                    Wake::StopFile
                }
                r = protect_async.readable() => {
                    if let Ok(mut g) = r { g.clear_ready(); }
                    Wake::Protect
                }
                _ = sigint.recv() => Wake::Int,
                _ = sigterm.recv() => Wake::Term,
                _ = sigchld.recv() => Wake::Child,
                _ = sighup.recv() => Wake::Hup,
                c = cmds.recv() => Wake::Cmd(c),
                c = agent_cmds.recv() => Wake::Agent(c),
                d = tools_done.recv() => Wake::ToolDone(d),
                _ = tokio::time::sleep_until(next.into()) => Wake::Timer,
            };
            let now = Instant::now();
            match wake {
                Wake::Kernel => self.kernel_readable(now),
                Wake::Protect => self.on_protect(now),
                Wake::StopFile => {
                    if self.stop.on_readable() {
                        self.on_stop_file(now);
                    }
                }
                Wake::Int => self.hard_halt("signal", "SIGINT received", None, now),
                Wake::Term => {
                    if self.mode == Mode::ShuttingDown {
                        self.hard_halt("signal", "second SIGTERM during orderly stop", None, now);
                        break;
                    }
                    self.begin_shutdown();
                }
                Wake::Child => self.reap(now),
                Wake::Hup => {
                    // SIGHUP reloads the whole config, as `warden reload` does.
                    let r = self.reload_config(None, "SIGHUP", false, None);
                    if !r.ok {
                        tracing::error!("SIGHUP: {}", r.error.unwrap_or_default());
                    }
                }
                Wake::Cmd(Some(c)) => self.command(c, now),
                Wake::Cmd(None) => {}
                Wake::Agent(Some(c)) => self.agent_command(c, now),
                Wake::Agent(None) => {}
                Wake::ToolDone(Some(d)) => self.tool_done(d),
                Wake::ToolDone(None) => {}
                Wake::Timer => {}
            }
            // Timers, monitors and watchdog pings run on every turn that they
            // are due, whatever woke the loop.
            self.tick(Instant::now());
            self.retire_done();
        }
        self.finish();
        0
    }

    pub(super) fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut next = (now + Duration::from_secs(1))
            .min(self.next_monitor)
            .min(self.pinger.next())
            .min(self.next_kernel_beat);
        if let Some(w) = self.broker.next_deadline() {
            next = next.min(w);
        }
        if let Some(w) = self.fleet.next_deadline() {
            next = next.min(w);
        }
        for s in self.slots.values() {
            if let Some(w) = s.wake {
                next = next.min(w);
            }
            if matches!(s.machine.state, State::Stopping { .. }) {
                next = next.min(now + Duration::from_millis(20));
            }
        }
        next.max(now)
    }
}
