//! The daemon-wide mode (running, SAFE MODE, shutting down) and the one
//! function that decides its transitions. Each agent's own lifecycle is
//! [`warden_core::supervisor`]'s; this is the host's.

use warden_core::safemode::Latch;

/// The daemon's overall state.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Agents may run.
    Running,
    /// After a hard halt or an unclean end; only a human clears it.
    Safe(Latch),
    /// SIGTERM seen: stopping every agent, then exiting.
    ShuttingDown,
}

/// What can happen to the daemon as a whole.
#[derive(Debug, Clone, PartialEq)]
pub enum ModeEvent {
    /// SAFE MODE found on disk at start, or set there for an unclean end.
    Recovered(Latch),
    /// A hard halt latched SAFE MODE.
    Latched(Latch),
    /// SIGTERM: orderly stop of every agent, then exit.
    ShutdownRequested,
    /// A human resume was recorded in the audit log and the latch cleared.
    Resumed,
}

/// The outcome of one transition.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct Transition {
    pub mode: Mode,
    /// The daemon's loop should end after this turn.
    pub exit: bool,
}

impl Mode {
    /// Decides the next mode. `exit_after_halt` is the demo's option.
    /// A resume is the only way out of SAFE MODE, and only out of it.
    pub fn on(&self, event: ModeEvent, exit_after_halt: bool) -> Transition {
        let (mode, exit) = match (self, event) {
            // A halt during an orderly stop ends the daemon: nothing is left
            // to stop, and the latch keeps the next start halted.
            (Mode::ShuttingDown, ModeEvent::Latched(l)) => (Mode::Safe(l), true),
            (_, ModeEvent::Latched(l)) => (Mode::Safe(l), exit_after_halt),
            (_, ModeEvent::Recovered(l)) => (Mode::Safe(l), false),
            (Mode::Running, ModeEvent::ShutdownRequested) => (Mode::ShuttingDown, false),
            // Nothing runs in SAFE MODE: exit at once, leaving the latch.
            (Mode::Safe(l), ModeEvent::ShutdownRequested) => (Mode::Safe(l.clone()), true),
            (Mode::ShuttingDown, ModeEvent::ShutdownRequested) => (Mode::ShuttingDown, false),
            (Mode::Safe(_), ModeEvent::Resumed) => (Mode::Running, false),
            (m, ModeEvent::Resumed) => (m.clone(), false),
        };
        Transition { mode, exit }
    }

    pub fn is_safe(&self) -> bool {
        matches!(self, Mode::Safe(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latch() -> Latch {
        Latch::new("cli", "test", None, Some(0))
    }

    #[test]
    fn only_a_resume_leaves_safe_mode() {
        let safe = Mode::Safe(latch());
        assert!(safe.on(ModeEvent::Latched(latch()), false).mode.is_safe());
        assert!(safe.on(ModeEvent::ShutdownRequested, false).mode.is_safe());
        assert_eq!(safe.on(ModeEvent::Resumed, false).mode, Mode::Running);
    }

    #[test]
    fn a_resume_outside_safe_mode_changes_nothing() {
        let t = Mode::Running.on(ModeEvent::Resumed, false);
        assert_eq!(
            t,
            Transition {
                mode: Mode::Running,
                exit: false
            }
        );
        let t = Mode::ShuttingDown.on(ModeEvent::Resumed, false);
        assert_eq!(t.mode, Mode::ShuttingDown);
    }

    #[test]
    fn exits() {
        assert!(!Mode::Running.on(ModeEvent::Latched(latch()), false).exit);
        assert!(Mode::Running.on(ModeEvent::Latched(latch()), true).exit);
        assert!(
            Mode::ShuttingDown
                .on(ModeEvent::Latched(latch()), false)
                .exit
        );
        assert!(
            Mode::Safe(latch())
                .on(ModeEvent::ShutdownRequested, false)
                .exit
        );
        let t = Mode::Running.on(ModeEvent::ShutdownRequested, false);
        assert_eq!(
            t,
            Transition {
                mode: Mode::ShuttingDown,
                exit: false
            }
        );
    }
}
