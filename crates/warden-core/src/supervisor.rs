//! Each agent's lifecycle as an explicit state machine.
//!
//! [`Agent::handle`] is the one place that decides every transition: given the
//! current state and an event it returns the new state and the actions the
//! daemon must carry out. Restart, backoff and crash-loop decisions live here
//! and nowhere else, so they are tested without processes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::RestartPolicy;

/// A process that ran at least this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Not running and not wanted.
    Stopped,
    /// Waiting to be started again after an exit.
    Backoff {
        until: Instant,
    },
    Running {
        pid: i32,
        since: Instant,
    },
    /// Orderly stop: TERM sent; the kill ladder runs at `deadline` if the
    /// cgroup is not empty by then.
    Stopping {
        pid: Option<i32>,
        deadline: Instant,
        then_start: bool,
    },
    /// Crash loop, or a start that cannot succeed; an operator must start it.
    Failed {
        reason: String,
    },
    /// Taken down by a hard halt; starts again only on resume.
    Halted,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Backoff { .. } => "backoff",
            State::Running { .. } => "running",
            State::Stopping { .. } => "stopping",
            State::Failed { .. } => "failed",
            State::Halted => "halted",
        }
    }
    pub fn pid(&self) -> Option<i32> {
        match self {
            State::Running { pid, .. } => Some(*pid),
            State::Stopping { pid, .. } => *pid,
            _ => None,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Operator `start`, or autostart at daemon start / resume.
    Start,
    /// Operator `stop`, or the daemon's orderly shutdown.
    Stop,
    /// Operator `restart`.
    Restart,
    /// The process was forked and exec'd.
    Spawned { pid: i32 },
    /// The start failed before the agent's code ran.
    SpawnFailed { reason: String },
    /// The main process exited.
    Exited { status: ExitStatus },
    /// A timer fired (backoff over, or grace over).
    Tick,
    /// The agent's cgroup is empty (during an orderly stop).
    Empty,
    /// A hard halt took the agent down.
    Halted,
    /// SAFE MODE was cleared; agents with `autostart` start again.
    Resume { autostart: bool },
}

/// What the daemon must do after a transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Fork and exec the agent.
    Spawn,
    /// SIGTERM to the agent's process group and every member of its cgroup.
    Term,
    /// Freeze, capture evidence, kill, thaw, verify empty.
    KillLadder,
    /// Kill whatever the exited main process left behind in the cgroup.
    ReapLeftovers,
    /// Wake the machine again no later than this.
    WakeAt(Instant),
    /// Audit this note about the transition.
    Note(String),
}

/// Restart settings, from the config.
#[derive(Debug, Clone)]
pub struct Policy {
    pub restart: RestartPolicy,
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub crash_exits: u32,
    pub crash_window: Duration,
    pub grace: Duration,
}

/// One agent's supervision record.
#[derive(Debug)]
pub struct Agent {
    pub state: State,
    pub policy: Policy,
    /// Starts after the first.
    pub restarts: u32,
    /// Failed runs in a row; sets the backoff.
    pub consecutive_failures: u32,
    /// Exit times inside the crash-loop window.
    exits: VecDeque<Instant>,
    pub last_exit: Option<ExitStatus>,
    /// Has it been started at least once since the daemon (or resume) began.
    started_once: bool,
}

impl Agent {
    pub fn new(policy: Policy) -> Agent {
        Agent {
            state: State::Stopped,
            policy,
            restarts: 0,
            consecutive_failures: 0,
            exits: VecDeque::new(),
            last_exit: None,
            started_once: false,
        }
    }

    fn backoff(&self) -> Duration {
        let shift = self.consecutive_failures.saturating_sub(1).min(20);
        self.policy
            .backoff
            .saturating_mul(1u32 << shift)
            .min(self.policy.backoff_max)
    }

    /// Applies `ev` at time `now`; returns the actions to carry out.
    #[must_use = "the actions are what the daemon must carry out"]
    pub fn handle(&mut self, ev: Event, now: Instant) -> Vec<Action> {
        use Action::*;
        use State::*;
        let state = std::mem::replace(&mut self.state, Stopped);
        let (next, actions) = match (state, ev) {
            // Starting.
            (Stopped | Failed { .. } | Halted | Backoff { .. }, Event::Start) => {
                self.exits.clear();
                self.consecutive_failures = 0;
                (Stopped, vec![Spawn])
            }
            (Backoff { until }, Event::Tick) => {
                if now >= until {
                    (Stopped, vec![Spawn])
                } else {
                    (Backoff { until }, vec![WakeAt(until)])
                }
            }
            (Stopped, Event::Spawned { pid }) => {
                if self.started_once {
                    self.restarts += 1;
                }
                self.started_once = true;
                (Running { pid, since: now }, vec![])
            }
            (_, Event::SpawnFailed { reason }) => (
                Failed {
                    reason: reason.clone(),
                },
                vec![Note(format!("start failed: {reason}"))],
            ),
            (Halted, Event::Resume { autostart: true }) => (Stopped, vec![Spawn]),
            (Halted, Event::Resume { autostart: false }) => (Stopped, vec![]),

            // Running.
            (Running { since, .. }, Event::Exited { status }) => {
                self.last_exit = Some(status);
                self.exits.push_back(now);
                while let Some(t) = self.exits.front() {
                    if now.duration_since(*t) > self.policy.crash_window {
                        self.exits.pop_front();
                    } else {
                        break;
                    }
                }
                if now.duration_since(since) >= STABLE_AFTER {
                    self.consecutive_failures = 0;
                }
                let restart = match self.policy.restart {
                    RestartPolicy::Never => false,
                    RestartPolicy::OnFailure => !status.success(),
                    RestartPolicy::Always => true,
                };
                let mut acts = vec![ReapLeftovers];
                if self.exits.len() as u32 >= self.policy.crash_exits {
                    let reason = format!(
                        "crash loop: {} exits within {}",
                        self.exits.len(),
                        humantime::format_duration(self.policy.crash_window)
                    );
                    acts.push(Note(reason.clone()));
                    (Failed { reason }, acts)
                } else if restart {
                    self.consecutive_failures += 1;
                    let until = now + self.backoff();
                    acts.push(WakeAt(until));
                    (Backoff { until }, acts)
                } else {
                    (Stopped, acts)
                }
            }
            (Running { pid, .. }, Event::Stop) => (
                Stopping {
                    pid: Some(pid),
                    deadline: now + self.policy.grace,
                    then_start: false,
                },
                vec![Term, WakeAt(now + self.policy.grace)],
            ),
            (Running { pid, .. }, Event::Restart) => (
                Stopping {
                    pid: Some(pid),
                    deadline: now + self.policy.grace,
                    then_start: true,
                },
                vec![Term, WakeAt(now + self.policy.grace)],
            ),
            (Stopped | Failed { .. } | Backoff { .. }, Event::Restart) => {
                self.exits.clear();
                self.consecutive_failures = 0;
                (Stopped, vec![Spawn])
            }

            // Orderly stop in progress.
            (
                Stopping {
                    deadline,
                    then_start,
                    ..
                },
                Event::Exited { status },
            ) => {
                self.last_exit = Some(status);
                (
                    Stopping {
                        pid: None,
                        deadline,
                        then_start,
                    },
                    vec![],
                )
            }
            (Stopping { then_start, .. }, Event::Empty) => {
                if then_start {
                    (Stopped, vec![Spawn])
                } else {
                    (Stopped, vec![])
                }
            }
            (
                Stopping {
                    pid,
                    deadline,
                    then_start,
                },
                Event::Tick,
            ) if now >= deadline => (
                Stopping {
                    pid,
                    deadline,
                    then_start,
                },
                vec![KillLadder],
            ),
            (
                Stopping {
                    pid,
                    deadline,
                    then_start: _,
                },
                Event::Stop,
            ) => (
                Stopping {
                    pid,
                    deadline,
                    then_start: false,
                },
                vec![],
            ),

            // Stopping something that is not running cancels restarts.
            (Backoff { .. } | Failed { .. }, Event::Stop) => (Stopped, vec![]),

            // A hard halt wins over everything.
            (_, Event::Halted) => (Halted, vec![]),

            // Everything else changes nothing.
            (s, _) => (s, vec![]),
        };
        self.state = next;
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(restart: RestartPolicy) -> Policy {
        Policy {
            restart,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            crash_exits: 4,
            crash_window: Duration::from_secs(10),
            grace: Duration::from_secs(5),
        }
    }

    fn run(a: &mut Agent, now: Instant, pid: i32) {
        assert_eq!(a.handle(Event::Start, now), vec![Action::Spawn]);
        assert!(a.handle(Event::Spawned { pid }, now).is_empty());
        assert_eq!(a.state.pid(), Some(pid));
    }

    #[test]
    fn on_failure_restarts_with_exponential_backoff() {
        let mut a = Agent::new(policy(RestartPolicy::OnFailure));
        let t0 = Instant::now();
        run(&mut a, t0, 10);
        let mut delays = vec![];
        let mut now = t0;
        for i in 0..3 {
            now += Duration::from_millis(10);
            let acts = a.handle(
                Event::Exited {
                    status: ExitStatus::Code(1),
                },
                now,
            );
            let until = match a.state {
                State::Backoff { until } => until,
                ref s => panic!("expected backoff, got {s:?}"),
            };
            assert!(acts.contains(&Action::WakeAt(until)));
            delays.push(until - now);
            // Too early: nothing happens.
            assert_eq!(a.handle(Event::Tick, now), vec![Action::WakeAt(until)]);
            assert_eq!(a.handle(Event::Tick, until), vec![Action::Spawn]);
            let _ = a.handle(Event::Spawned { pid: 11 + i }, until);
            now = until;
        }
        assert_eq!(
            delays,
            vec![
                Duration::from_millis(100),
                Duration::from_millis(200),
                Duration::from_millis(400)
            ]
        );
        assert_eq!(a.restarts, 3);
    }

    #[test]
    fn backoff_is_capped() {
        let mut a = Agent::new(policy(RestartPolicy::Always));
        a.consecutive_failures = 30;
        assert_eq!(a.backoff(), Duration::from_millis(1000));
    }

    #[test]
    fn on_failure_leaves_clean_exit_stopped() {
        let mut a = Agent::new(policy(RestartPolicy::OnFailure));
        let t = Instant::now();
        run(&mut a, t, 5);
        let _ = a.handle(
            Event::Exited {
                status: ExitStatus::Code(0),
            },
            t,
        );
        assert_eq!(a.state, State::Stopped);
    }

    #[test]
    fn never_does_not_restart() {
        let mut a = Agent::new(policy(RestartPolicy::Never));
        let t = Instant::now();
        run(&mut a, t, 5);
        let acts = a.handle(
            Event::Exited {
                status: ExitStatus::Signal(9),
            },
            t,
        );
        assert_eq!(acts, vec![Action::ReapLeftovers]);
        assert_eq!(a.state, State::Stopped);
    }

    #[test]
    fn crash_loop_breaker_trips_and_operator_start_clears_it() {
        let mut a = Agent::new(policy(RestartPolicy::Always));
        let mut now = Instant::now();
        run(&mut a, now, 1);
        for i in 0..4 {
            now += Duration::from_millis(50);
            let _ = a.handle(
                Event::Exited {
                    status: ExitStatus::Code(0),
                },
                now,
            );
            if i < 3 {
                let State::Backoff { until } = a.state else {
                    panic!("{:?}", a.state)
                };
                let _ = a.handle(Event::Tick, until);
                let _ = a.handle(Event::Spawned { pid: 2 + i }, until);
                now = until;
            }
        }
        assert!(matches!(&a.state, State::Failed { reason } if reason.contains("crash loop")));
        // Timers do not restart a failed agent.
        assert!(a
            .handle(Event::Tick, now + Duration::from_secs(100))
            .is_empty());
        assert_eq!(a.handle(Event::Start, now), vec![Action::Spawn]);
    }

    #[test]
    fn exits_outside_window_do_not_count() {
        let mut a = Agent::new(policy(RestartPolicy::Always));
        let mut now = Instant::now();
        run(&mut a, now, 1);
        for i in 0..10 {
            now += Duration::from_secs(11);
            let _ = a.handle(
                Event::Exited {
                    status: ExitStatus::Code(1),
                },
                now,
            );
            let State::Backoff { until } = a.state else {
                panic!("iteration {i}: {:?}", a.state)
            };
            let _ = a.handle(Event::Tick, until);
            let _ = a.handle(Event::Spawned { pid: 2 + i }, until);
        }
    }

    #[test]
    fn orderly_stop_terms_then_kills_at_deadline() {
        let mut a = Agent::new(policy(RestartPolicy::Always));
        let t = Instant::now();
        run(&mut a, t, 7);
        let acts = a.handle(Event::Stop, t);
        assert_eq!(acts[0], Action::Term);
        assert!(a.handle(Event::Tick, t + Duration::from_secs(1)).is_empty());
        let _ = a.handle(
            Event::Exited {
                status: ExitStatus::Signal(15),
            },
            t,
        );
        // Main process gone but the cgroup may still hold children.
        assert!(matches!(a.state, State::Stopping { pid: None, .. }));
        assert_eq!(
            a.handle(Event::Tick, t + Duration::from_secs(5)),
            vec![Action::KillLadder]
        );
        assert!(a.handle(Event::Empty, t).is_empty());
        assert_eq!(a.state, State::Stopped);
    }

    #[test]
    fn restart_waits_for_empty_then_spawns() {
        let mut a = Agent::new(policy(RestartPolicy::Never));
        let t = Instant::now();
        run(&mut a, t, 7);
        let _ = a.handle(Event::Restart, t);
        assert_eq!(a.handle(Event::Empty, t), vec![Action::Spawn]);
    }

    #[test]
    fn halt_wins_and_resume_restarts() {
        let mut a = Agent::new(policy(RestartPolicy::Never));
        let t = Instant::now();
        run(&mut a, t, 7);
        let _ = a.handle(Event::Halted, t);
        assert_eq!(a.state, State::Halted);
        // A late exit report does not resurrect it.
        let _ = a.handle(
            Event::Exited {
                status: ExitStatus::Signal(9),
            },
            t,
        );
        assert_eq!(a.state, State::Halted);
        assert_eq!(
            a.handle(Event::Resume { autostart: true }, t),
            vec![Action::Spawn]
        );
    }

    #[test]
    fn spawn_failure_is_failed_with_reason() {
        let mut a = Agent::new(policy(RestartPolicy::Always));
        let _ = a.handle(Event::Start, Instant::now());
        let _ = a.handle(
            Event::SpawnFailed {
                reason: "no such user".into(),
            },
            Instant::now(),
        );
        assert!(matches!(&a.state, State::Failed { reason } if reason == "no such user"));
    }
}
