//! THE state machine. Every decision of the kernel is made in [`step`] and
//! nowhere else: the loop in `run.rs` only observes (turns the pipe, the stop
//! file, cgroupfs and the clock into [`Event`]s) and performs the returned
//! [`Action`]s in order. `step` is pure, so every rule is unit-tested
//! without root, and a property test drives it with random event sequences.
//!
//! The safety rules it keeps (docs/kernel.md has the full table):
//! - a trigger freezes at once; a trigger the daemon can finish (stop file,
//!   `halt`) waits up to the deadline for its `empty`, others kill at once;
//! - once the stop file is seen nothing is thawed before `resume`, except a
//!   tree verified empty or one just SIGKILLed (v1: a SIGKILL to a frozen
//!   task stays pending until the thaw);
//! - every halt ends in a verified empty tree or a report of its survivors;
//! - daemon silence or death always halts.

use crate::protocol::{Msg, Reply};

/// Why the kernel halts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The stop file is present (or cannot be proven absent).
    StopFile,
    /// The daemon was silent for longer than the liveness timeout.
    Liveness,
    /// End of file on stdin: the daemon died, however.
    DaemonGone,
    /// The daemon does not speak our protocol version.
    Protocol,
    /// The daemon said `halt ID`.
    Halt,
    /// An agent appeared while the kernel was latched (halted, no `resume`).
    AgentWhileLatched,
    /// `clean` came with agents still running.
    CleanNotEmpty,
}

impl Trigger {
    /// The name on the wire (`frozen TRIGGER US`) and in reports.
    pub fn wire(self) -> &'static str {
        match self {
            Trigger::StopFile => "stop_file",
            Trigger::Liveness => "liveness",
            Trigger::DaemonGone => "daemon_gone",
            Trigger::Protocol => "protocol",
            Trigger::Halt => "halt",
            Trigger::AgentWhileLatched => "agent_while_latched",
            Trigger::CleanNotEmpty => "clean_not_empty",
        }
    }

    /// The name in the SAFE MODE latch (the daemon's vocabulary).
    pub fn latch_name(self) -> &'static str {
        match self {
            Trigger::Liveness => "kernel_liveness",
            Trigger::DaemonGone => "daemon_died",
            Trigger::Protocol => "kernel_protocol",
            t => t.wire(),
        }
    }

    /// The latch's human-readable reason.
    pub fn reason(self) -> &'static str {
        match self {
            Trigger::StopFile => "the stop file is present; the safety kernel froze the agents",
            Trigger::Liveness => "the warden daemon stopped answering; the safety kernel halted the agents",
            Trigger::DaemonGone => "the warden daemon ended without a clean shutdown; the safety kernel halted the agents",
            Trigger::Protocol => "the warden daemon does not speak the kernel protocol; the safety kernel halted the agents",
            Trigger::Halt => "the warden daemon began a hard halt",
            Trigger::AgentWhileLatched => "an agent ran while warden was halted; the safety kernel killed it",
            Trigger::CleanNotEmpty => "the daemon ended cleanly but agents were still running; the safety kernel killed them",
        }
    }

    /// Whether the daemon may finish this halt itself (with full evidence)
    /// before the kernel kills at the deadline.
    fn daemon_may_finish(self) -> bool {
        matches!(self, Trigger::StopFile | Trigger::Halt)
    }
}

/// Where the kernel is in a halt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No halt: agents may run.
    Running,
    /// Frozen; waiting up to the deadline for the daemon's `empty`.
    Waiting(Trigger),
    /// The kernel killed; waiting up to the deadline for an empty tree.
    Killing(Trigger),
    /// Latched: the tree was verified empty (or its survivors reported);
    /// stays so until `resume`. `survivors`: the last kill left some.
    Halted { survivors: bool },
    /// Exit was requested; nothing more happens.
    Done,
}

/// What the kernel knows of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// Before the daemon's `hello 1`.
    Greeting,
    /// Connected. `healthy`: its last `hb` said 1. `fresh`: it has spoken
    /// within the liveness timeout.
    Up { healthy: bool, fresh: bool },
    /// It said `clean`: an orderly exit.
    Closing,
    /// End of file without `clean`.
    Gone,
}

/// Everything the machine remembers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The halt phase.
    pub phase: Phase,
    /// The daemon's side of the pipe.
    pub daemon: Daemon,
    /// The stop file as of the last check (true also when unprovable).
    pub stop_file: bool,
    /// The stop file was seen since the last `resume`: no thaw of a live tree.
    pub stop_seen: bool,
    /// The stop-file watch is armed (a watchdog health check).
    pub watch_ok: bool,
    /// cgroupfs answered the last read (a watchdog health check).
    pub cgroup_ok: bool,
    /// The daemon said `empty` and the kernel is checking it.
    pub empty_claimed: bool,
}

impl State {
    /// The state at start. `latched`: a SAFE MODE latch is on disk, so the
    /// kernel starts halted and kills any agent until `resume`.
    pub fn new(latched: bool) -> State {
        State {
            phase: if latched {
                Phase::Halted { survivors: false }
            } else {
                Phase::Running
            },
            daemon: Daemon::Greeting,
            stop_file: false,
            stop_seen: false,
            watch_ok: true,
            cgroup_ok: true,
            empty_claimed: false,
        }
    }
}

/// Something the loop observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A valid line from the daemon.
    Daemon(Msg),
    /// An unknown, malformed or too long line: a missed heartbeat.
    Garbage,
    /// End of file on stdin.
    Eof,
    /// No valid line for longer than the liveness timeout.
    Silence,
    /// A stop-file check: inotify or the lstat timer. `armed`: the watch is
    /// in place; `present`: lstat answered anything but ENOENT, or the
    /// directory is not a real directory.
    StopFile { present: bool, armed: bool },
    /// A read of the parents: `populated` (true when unreadable: fail
    /// closed), `readable`.
    Observed { populated: bool, readable: bool },
    /// The deadline armed by [`Action::ArmDeadline`] passed.
    Deadline,
    /// Time for a hardware watchdog ping, if the checks allow.
    WatchdogDue,
}

/// What the loop must do, in order.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A halt starts: timestamp it (the report's `seen_at_ms`).
    Begin(Trigger),
    /// Freeze the parents.
    Freeze,
    /// Send a line to the daemon.
    Notify(Reply),
    /// Write the SAFE MODE latch, unless one exists.
    Latch {
        trigger: Trigger,
        halt_id: Option<String>,
    },
    /// (Re)arm the single deadline `--deadline-ms` from now.
    ArmDeadline,
    /// Cancel the deadline.
    Disarm,
    /// Record pid, ppid, uid, state, cmdline of every member (frozen).
    Capture,
    /// SIGKILL every member (v2 cgroup.kill, v1 kill(2) per pid).
    Kill,
    /// Thaw the parents.
    Thaw,
    /// Read whether the parents are populated and feed back `Observed`.
    Observe,
    /// Write the report file and tell the daemon `killed PATH`.
    Report { complete: bool },
    /// Ping the hardware watchdog.
    Ping,
    /// Exit the process with this code.
    Exit(i32),
}

/// The transition function: the one place that decides.
#[must_use]
pub fn step(mut s: State, e: Event) -> (State, Vec<Action>) {
    let mut a = Vec::new();
    if s.phase == Phase::Done {
        return (s, a);
    }
    match e {
        Event::Daemon(m) => on_msg(&mut s, m, &mut a),
        Event::Garbage => {}
        Event::Eof => {
            if s.daemon != Daemon::Closing {
                s.daemon = Daemon::Gone;
                halt(&mut s, Trigger::DaemonGone, None, &mut a);
            }
        }
        Event::Silence => match s.daemon {
            Daemon::Greeting | Daemon::Up { .. } => {
                s.daemon = Daemon::Up {
                    healthy: false,
                    fresh: false,
                };
                halt(&mut s, Trigger::Liveness, None, &mut a);
            }
            Daemon::Closing | Daemon::Gone => {}
        },
        Event::StopFile { present, armed } => {
            s.watch_ok = armed;
            s.stop_file = present || !armed;
            if s.stop_file {
                s.stop_seen = true;
                halt(&mut s, Trigger::StopFile, None, &mut a);
            }
        }
        Event::Observed {
            populated,
            readable,
        } => {
            s.cgroup_ok = readable;
            on_observed(&mut s, populated, &mut a);
        }
        Event::Deadline => match s.phase {
            Phase::Waiting(t) => kill(&mut s, t, &mut a),
            Phase::Killing(_) => finish(&mut s, false, &mut a),
            _ => {}
        },
        Event::WatchdogDue => {
            if s.daemon
                == (Daemon::Up {
                    healthy: true,
                    fresh: true,
                })
                && s.watch_ok
                && s.cgroup_ok
            {
                a.push(Action::Ping);
            }
        }
    }
    (s, a)
}

fn on_msg(s: &mut State, m: Msg, a: &mut Vec<Action>) {
    match (s.daemon, m) {
        (Daemon::Greeting, Msg::Hello(v)) if v == crate::protocol::VERSION => {
            s.daemon = Daemon::Up {
                healthy: false,
                fresh: true,
            }
        }
        // A daemon that does not open with our version cannot be trusted to
        // understand anything we say: fail closed.
        (Daemon::Greeting, _) => {
            a.push(Action::Notify(Reply::Refused("version")));
            s.daemon = Daemon::Up {
                healthy: false,
                fresh: true,
            };
            halt(s, Trigger::Protocol, None, a);
        }
        (Daemon::Closing | Daemon::Gone, _) => {}
        (Daemon::Up { healthy, .. }, m) => {
            s.daemon = Daemon::Up {
                healthy,
                fresh: true,
            };
            match m {
                Msg::Hello(_) => {}
                Msg::Hb { healthy } => {
                    s.daemon = Daemon::Up {
                        healthy,
                        fresh: true,
                    }
                }
                Msg::Halt(id) => halt(s, Trigger::Halt, Some(id), a),
                Msg::Empty(_) => match s.phase {
                    Phase::Waiting(_) => {
                        s.empty_claimed = true;
                        a.push(Action::Observe);
                    }
                    Phase::Halted { survivors: false } => a.push(Action::Notify(Reply::Empty)),
                    _ => a.push(Action::Notify(Reply::Refused("not_halting"))),
                },
                Msg::Resume => {
                    let refusal = match s.phase {
                        _ if s.stop_file => Some("stop_file"),
                        Phase::Waiting(_) | Phase::Killing(_) => Some("halt_in_progress"),
                        Phase::Halted { survivors: true } => Some("survivors"),
                        _ => None,
                    };
                    match refusal {
                        Some(r) => a.push(Action::Notify(Reply::Refused(r))),
                        None => {
                            if s.phase != Phase::Running {
                                a.push(Action::Thaw);
                            }
                            s.phase = Phase::Running;
                            s.stop_seen = false;
                            a.push(Action::Notify(Reply::Resumed));
                        }
                    }
                }
                Msg::Clean => {
                    s.daemon = Daemon::Closing;
                    match s.phase {
                        // The daemon leaves before finishing its halt: the
                        // kernel finishes it.
                        Phase::Waiting(t) => kill(s, t, a),
                        Phase::Running | Phase::Halted { .. } => a.push(Action::Observe),
                        Phase::Killing(_) | Phase::Done => {}
                    }
                }
            }
        }
    }
}

/// A trigger: freeze at once, latch, then wait for the daemon or kill.
fn halt(s: &mut State, t: Trigger, halt_id: Option<String>, a: &mut Vec<Action>) {
    let daemon_up = matches!(s.daemon, Daemon::Up { .. });
    match s.phase {
        Phase::Running => {
            a.push(Action::Begin(t));
            a.push(Action::Freeze);
            if t != Trigger::Halt {
                a.push(Action::Notify(Reply::Frozen(t)));
            }
            a.push(Action::Latch {
                trigger: t,
                halt_id,
            });
            if t.daemon_may_finish() && daemon_up {
                s.phase = Phase::Waiting(t);
                s.empty_claimed = false;
                a.push(Action::ArmDeadline);
            } else {
                kill(s, t, a);
            }
        }
        // Waiting for a daemon that died or fell silent: kill now.
        Phase::Waiting(w) if !t.daemon_may_finish() || !daemon_up => {
            a.push(Action::Latch {
                trigger: t,
                halt_id,
            });
            kill(s, w, a);
        }
        Phase::Halted { .. } => {
            if !matches!(t, Trigger::StopFile) {
                a.push(Action::Latch {
                    trigger: t,
                    halt_id,
                });
            }
            // Halted means empty: check, and kill whatever is there.
            a.push(Action::Observe);
        }
        Phase::Waiting(_) | Phase::Killing(_) | Phase::Done => {}
    }
}

/// Evidence from the frozen tree, then SIGKILL, then thaw (v1 delivers the
/// pending SIGKILL only on thaw), then wait for empty until the deadline.
fn kill(s: &mut State, t: Trigger, a: &mut Vec<Action>) {
    s.phase = Phase::Killing(t);
    s.empty_claimed = false;
    a.extend([
        Action::Capture,
        Action::Kill,
        Action::Thaw,
        Action::ArmDeadline,
        Action::Observe,
    ]);
}

/// The kernel's own kill is over: report it, latch stays.
fn finish(s: &mut State, complete: bool, a: &mut Vec<Action>) {
    a.push(Action::Disarm);
    a.push(Action::Report { complete });
    s.phase = Phase::Halted {
        survivors: !complete,
    };
    exit_if_orphaned(s, a);
}

/// Without a daemon nobody can resume: once the tree is handled, exit. The
/// next daemon starts a new kernel, which finds the latch.
fn exit_if_orphaned(s: &mut State, a: &mut Vec<Action>) {
    if let Phase::Halted { survivors } = s.phase {
        if matches!(s.daemon, Daemon::Gone | Daemon::Closing) {
            a.push(Action::Exit(i32::from(survivors)));
            s.phase = Phase::Done;
        }
    }
}

fn on_observed(s: &mut State, populated: bool, a: &mut Vec<Action>) {
    match s.phase {
        Phase::Running => {
            if s.daemon == Daemon::Closing {
                if populated {
                    halt(s, Trigger::CleanNotEmpty, None, a);
                } else {
                    a.push(Action::Exit(0));
                    s.phase = Phase::Done;
                }
            }
        }
        Phase::Waiting(_) => {
            if s.empty_claimed {
                s.empty_claimed = false;
                if populated {
                    a.push(Action::Notify(Reply::Refused("not_empty")));
                } else {
                    a.push(Action::Disarm);
                    a.push(Action::Thaw);
                    a.push(Action::Notify(Reply::Empty));
                    s.phase = Phase::Halted { survivors: false };
                    exit_if_orphaned(s, a);
                }
            }
        }
        Phase::Killing(_) => {
            if populated {
                // Retry: freeze again so no new member runs between the
                // read of cgroup.procs and the kill.
                a.extend([Action::Freeze, Action::Kill, Action::Thaw]);
            } else {
                finish(s, true, a);
            }
        }
        Phase::Halted { survivors } => {
            if !populated {
                s.phase = Phase::Halted { survivors: false };
                exit_if_orphaned(s, a);
            } else if survivors {
                // Already reported: keep killing, quietly; without a
                // daemon, exit (1) after this last try.
                a.extend([Action::Freeze, Action::Kill, Action::Thaw]);
                exit_if_orphaned(s, a);
            } else {
                let t = Trigger::AgentWhileLatched;
                a.extend([
                    Action::Begin(t),
                    Action::Freeze,
                    Action::Notify(Reply::Frozen(t)),
                ]);
                kill(s, t, a);
            }
        }
        Phase::Done => {}
    }
}

#[cfg(test)]
mod tests;
