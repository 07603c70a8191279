use super::*;
use proptest::prelude::*;

use Action::*;

fn up() -> State {
    let mut s = State::new(false);
    s.daemon = Daemon::Up {
        healthy: true,
        fresh: true,
    };
    s
}

/// Feeds events in order; returns the final state and the last actions.
fn run(mut s: State, events: &[Event]) -> (State, Vec<Action>) {
    let mut last = vec![];
    for e in events {
        (s, last) = step(s, e.clone());
    }
    (s, last)
}

const STOP: Event = Event::StopFile {
    present: true,
    armed: true,
};
const NO_STOP: Event = Event::StopFile {
    present: false,
    armed: true,
};
const EMPTY: Event = Event::Observed {
    populated: false,
    readable: true,
};
const FULL: Event = Event::Observed {
    populated: true,
    readable: true,
};

fn msg(m: Msg) -> Event {
    Event::Daemon(m)
}

#[test]
fn stop_file_freezes_waits_then_kills_at_the_deadline() {
    let (s, a) = step(up(), STOP);
    assert_eq!(
        a,
        vec![
            Begin(Trigger::StopFile),
            Freeze,
            Notify(Reply::Frozen(Trigger::StopFile)),
            Latch {
                trigger: Trigger::StopFile,
                halt_id: None
            },
            ArmDeadline
        ]
    );
    assert_eq!(s.phase, Phase::Waiting(Trigger::StopFile));
    // Re-seen on every tick: nothing more.
    let (s, a) = step(s, STOP);
    assert!(a.is_empty());
    let (s, a) = step(s, Event::Deadline);
    assert_eq!(a, vec![Capture, Kill, Thaw, ArmDeadline, Observe]);
    assert_eq!(s.phase, Phase::Killing(Trigger::StopFile));
    let (s, a) = step(s, FULL);
    assert_eq!(a, vec![Freeze, Kill, Thaw]);
    let (s, a) = step(s, EMPTY);
    assert_eq!(a, vec![Disarm, Report { complete: true }]);
    assert_eq!(s.phase, Phase::Halted { survivors: false });
}

#[test]
fn stop_file_then_daemon_empty_then_resume() {
    let (s, _) = step(up(), STOP);
    let (s, a) = step(s, msg(Msg::Empty("h".into())));
    assert_eq!(a, vec![Observe]);
    // The daemon was wrong: refuse and keep waiting.
    let (s, a) = step(s, FULL);
    assert_eq!(a, vec![Notify(Reply::Refused("not_empty"))]);
    assert_eq!(s.phase, Phase::Waiting(Trigger::StopFile));
    let (s, _) = step(s, msg(Msg::Empty("h".into())));
    let (s, a) = step(s, EMPTY);
    assert_eq!(a, vec![Disarm, Thaw, Notify(Reply::Empty)]);
    assert_eq!(s.phase, Phase::Halted { survivors: false });
    // Resume refused while the stop file is there.
    let (s, a) = step(s, msg(Msg::Resume));
    assert_eq!(a, vec![Notify(Reply::Refused("stop_file"))]);
    assert_eq!(s.phase, Phase::Halted { survivors: false });
    let (s, a) = step(s, NO_STOP);
    assert!(a.is_empty());
    assert_eq!(s.phase, Phase::Halted { survivors: false });
    let (s, a) = step(s, msg(Msg::Resume));
    assert_eq!(a, vec![Thaw, Notify(Reply::Resumed)]);
    assert_eq!(s.phase, Phase::Running);
    assert!(!s.stop_seen);
}

#[test]
fn silence_halts_without_waiting() {
    let (s, a) = step(up(), Event::Silence);
    assert_eq!(
        a,
        vec![
            Begin(Trigger::Liveness),
            Freeze,
            Notify(Reply::Frozen(Trigger::Liveness)),
            Latch {
                trigger: Trigger::Liveness,
                halt_id: None
            },
            Capture,
            Kill,
            Thaw,
            ArmDeadline,
            Observe
        ]
    );
    assert_eq!(s.phase, Phase::Killing(Trigger::Liveness));
    // A daemon that never says hello is silent too.
    let (s, _) = step(State::new(false), Event::Silence);
    assert_eq!(s.phase, Phase::Killing(Trigger::Liveness));
}

#[test]
fn daemon_gone_kills_reports_and_exits() {
    let (s, a) = step(up(), Event::Eof);
    assert_eq!(a[0], Begin(Trigger::DaemonGone));
    assert!(a.contains(&Kill));
    let (s, a) = step(s, EMPTY);
    assert_eq!(a, vec![Disarm, Report { complete: true }, Exit(0)]);
    assert_eq!(s.phase, Phase::Done);
    // Nothing after exit.
    assert!(step(s, STOP).1.is_empty());
}

#[test]
fn daemon_gone_while_waiting_kills_now() {
    let (s, _) = step(up(), STOP);
    let (s, a) = step(s, Event::Eof);
    assert_eq!(
        a,
        vec![
            Latch {
                trigger: Trigger::DaemonGone,
                halt_id: None
            },
            Capture,
            Kill,
            Thaw,
            ArmDeadline,
            Observe
        ]
    );
    assert_eq!(s.phase, Phase::Killing(Trigger::StopFile));
}

#[test]
fn protocol_version_mismatch_halts() {
    let (s, a) = step(State::new(false), msg(Msg::Hello(2)));
    assert_eq!(a[0], Notify(Reply::Refused("version")));
    assert_eq!(a[1], Begin(Trigger::Protocol));
    assert_eq!(s.phase, Phase::Killing(Trigger::Protocol));
    // Speaking before hello is the same.
    let (s, _) = step(State::new(false), msg(Msg::Hb { healthy: true }));
    assert_eq!(s.phase, Phase::Killing(Trigger::Protocol));
    // Garbage alone changes nothing (the silence timer decides).
    let (s, a) = step(up(), Event::Garbage);
    assert!(a.is_empty());
    assert_eq!(s, up());
}

#[test]
fn daemon_halt_waits_for_empty_and_does_not_kill() {
    let (s, a) = step(up(), msg(Msg::Halt("h7".into())));
    assert_eq!(
        a,
        vec![
            Begin(Trigger::Halt),
            Freeze,
            Latch {
                trigger: Trigger::Halt,
                halt_id: Some("h7".into())
            },
            ArmDeadline
        ]
    );
    let (s, _) = step(s, msg(Msg::Empty("h7".into())));
    let (s, a) = step(s, EMPTY);
    assert!(!a.contains(&Kill) && !a.iter().any(|a| matches!(a, Report { .. })));
    assert_eq!(s.phase, Phase::Halted { survivors: false });
    // No stop file: resume runs again.
    let (s, a) = step(s, msg(Msg::Resume));
    assert_eq!(a, vec![Thaw, Notify(Reply::Resumed)]);
    assert_eq!(s.phase, Phase::Running);
}

#[test]
fn survivors_are_reported_and_block_resume() {
    let (s, _) = run(up(), &[Event::Silence, FULL]);
    let (s, a) = step(s, Event::Deadline);
    assert_eq!(a, vec![Disarm, Report { complete: false }]);
    assert_eq!(s.phase, Phase::Halted { survivors: true });
    let (s, a) = step(s, msg(Msg::Resume));
    assert_eq!(a, vec![Notify(Reply::Refused("survivors"))]);
    // Quiet retries until they go.
    let (s, a) = step(s, FULL);
    assert_eq!(a, vec![Freeze, Kill, Thaw]);
    let (s, a) = step(s, EMPTY);
    assert!(a.is_empty());
    assert_eq!(s.phase, Phase::Halted { survivors: false });
}

#[test]
fn agent_while_latched_is_killed_again() {
    let (s, a) = step(State::new(true), FULL);
    assert_eq!(a[0], Begin(Trigger::AgentWhileLatched));
    assert!(a.contains(&Capture) && a.contains(&Kill));
    assert_eq!(s.phase, Phase::Killing(Trigger::AgentWhileLatched));
    let (s, _) = step(s, EMPTY);
    assert_eq!(s.phase, Phase::Halted { survivors: false });
}

#[test]
fn clean_exits_or_kills_first() {
    let (s, a) = step(up(), msg(Msg::Clean));
    assert_eq!(a, vec![Observe]);
    let (s2, a) = step(s.clone(), EMPTY);
    assert_eq!(a, vec![Exit(0)]);
    assert_eq!(s2.phase, Phase::Done);
    let (s, a) = step(s, FULL);
    assert_eq!(a[0], Begin(Trigger::CleanNotEmpty));
    assert!(a.contains(&Kill));
    let (s, a) = step(s, EMPTY);
    assert_eq!(a, vec![Disarm, Report { complete: true }, Exit(0)]);
    assert_eq!(s.phase, Phase::Done);
    // EOF after clean is not daemon_gone.
    let (s, _) = step(up(), msg(Msg::Clean));
    let (_, a) = step(s, Event::Eof);
    assert!(a.is_empty());
}

#[test]
fn lost_watch_is_a_present_stop_file() {
    let (s, a) = step(
        up(),
        Event::StopFile {
            present: false,
            armed: false,
        },
    );
    assert_eq!(a[0], Begin(Trigger::StopFile));
    assert!(s.stop_file && s.stop_seen && !s.watch_ok);
}

#[test]
fn watchdog_pings_only_when_all_is_well() {
    assert_eq!(step(up(), Event::WatchdogDue).1, vec![Ping]);
    let sick = run(up(), &[msg(Msg::Hb { healthy: false })]).0;
    assert!(step(sick.clone(), Event::WatchdogDue).1.is_empty());
    let well = run(sick, &[msg(Msg::Hb { healthy: true })]).0;
    assert_eq!(step(well, Event::WatchdogDue).1, vec![Ping]);
    // Before hello, after silence, without the watch or cgroupfs: no ping.
    assert!(step(State::new(false), Event::WatchdogDue).1.is_empty());
    let silent = run(up(), &[Event::Silence]).0;
    assert!(step(silent, Event::WatchdogDue).1.is_empty());
    let mut s = up();
    s.watch_ok = false;
    assert!(step(s, Event::WatchdogDue).1.is_empty());
    let s = run(
        up(),
        &[Event::Observed {
            populated: true,
            readable: false,
        }],
    )
    .0;
    assert!(step(s, Event::WatchdogDue).1.is_empty());
    // Halted but healthy: keep pinging (a reset would not help).
    let halted = run(
        up(),
        &[
            msg(Msg::Halt("h".into())),
            msg(Msg::Empty("h".into())),
            EMPTY,
        ],
    )
    .0;
    assert_eq!(halted.phase, Phase::Halted { survivors: false });
    assert_eq!(step(halted, Event::WatchdogDue).1, vec![Ping]);
}

fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0u32..3).prop_map(|v| msg(Msg::Hello(v))),
        any::<bool>().prop_map(|healthy| msg(Msg::Hb { healthy })),
        Just(msg(Msg::Halt("h".into()))),
        Just(msg(Msg::Empty("h".into()))),
        Just(msg(Msg::Resume)),
        Just(msg(Msg::Clean)),
        Just(Event::Garbage),
        Just(Event::Eof),
        Just(Event::Silence),
        (any::<bool>(), prop::bool::weighted(0.9))
            .prop_map(|(present, armed)| Event::StopFile { present, armed }),
        (any::<bool>(), prop::bool::weighted(0.9)).prop_map(|(populated, readable)| {
            Event::Observed {
                populated,
                readable,
            }
        }),
        Just(Event::Deadline),
        Just(Event::WatchdogDue),
    ]
}

/// Tracks the invariants across one run of the real `step`.
#[derive(Default)]
struct Checker {
    /// The stop file was seen and no resume was accepted since.
    stop_seen: bool,
    /// A halt began and has not yet ended in `empty` or a report.
    open_halt: bool,
}

impl Checker {
    fn check(&mut self, before: &State, e: &Event, after: &State, a: &[Action]) {
        let resumed = a.contains(&Notify(Reply::Resumed));
        if matches!(
            e,
            Event::StopFile { present: true, .. } | Event::StopFile { armed: false, .. }
        ) {
            self.stop_seen = true;
        }
        if self.stop_seen && !resumed {
            // No thaw of a live tree: only right after a kill in the same
            // batch (v1 needs it to deliver SIGKILL) or of a tree verified
            // empty.
            if let Some(t) = a.iter().position(|x| *x == Thaw) {
                let killed = a[..t].contains(&Kill);
                let empty = a.contains(&Notify(Reply::Empty));
                assert!(
                    killed || empty,
                    "thaw after stop file: {before:?} {e:?} {a:?}"
                );
            }
            assert!(
                after.phase != Phase::Running,
                "running after stop file: {before:?} {e:?} {a:?}"
            );
        }
        if resumed {
            assert!(!after.stop_file && after.phase == Phase::Running);
            self.stop_seen = false;
        }
        // Silence or death of the daemon always halts.
        let daemon_alive = matches!(before.daemon, Daemon::Greeting | Daemon::Up { .. });
        if matches!(e, Event::Silence | Event::Eof)
            && daemon_alive
            && before.phase == Phase::Running
        {
            assert!(
                a.contains(&Freeze) && a.contains(&Kill),
                "{before:?} {e:?} {a:?}"
            );
            assert!(matches!(after.phase, Phase::Killing(_)));
        }
        for x in a {
            match x {
                Begin(_) => self.open_halt = true,
                Report { .. } | Notify(Reply::Empty) => self.open_halt = false,
                Exit(_) => assert_eq!(after.phase, Phase::Done),
                _ => {}
            }
        }
        if matches!(after.phase, Phase::Waiting(_) | Phase::Killing(_)) {
            assert!(self.open_halt);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_any_event_sequence(
        latched in any::<bool>(),
        events in prop::collection::vec(any_event(), 0..60),
        survivors in any::<bool>(),
    ) {
        let mut s = State::new(latched);
        let mut c = Checker::default();
        // Then time passes: every halt must end, in an empty tree or a
        // report of survivors.
        let obs = Event::Observed { populated: survivors, readable: true };
        let drain = [Event::Deadline, obs.clone(), Event::Deadline, obs.clone(), Event::Deadline, obs];
        for e in events.iter().chain(drain.iter()) {
            let (after, a) = step(s.clone(), e.clone());
            c.check(&s, e, &after, &a);
            s = after;
        }
        prop_assert!(!matches!(s.phase, Phase::Waiting(_) | Phase::Killing(_)), "{:?}", s);
        prop_assert!(!c.open_halt, "halt never ended: {:?}", s);
    }
}
