//! The kill ladder as data, and the [`Plan`] that walks it.
//!
//! | level | action | destroys evidence? |
//! |---|---|---|
//! | 1 | revoke the target's credentials | no: the records stay, marked revoked |
//! | 2 | cut its network | no: sockets stay open in the processes, they just stop talking |
//! | 3 | freeze it | no: thawing undoes it, and a frozen tree is what evidence wants |
//! | 4 | kill it and verify its cgroup empty | yes: processes, memory, fds are gone |
//!
//! `--levels` takes a contiguous range inside 1..=4: `"1-3"`, `"2"`,
//! `"1,2,3"` (a list must be contiguous and ascending). It need not start at
//! 1: `--levels 3` (freeze only, to look) and `--levels 2` (isolate) are
//! useful on their own. Gaps (`"1,3"`) are refused: the ladder is "from this
//! rung to that one", and a skipped rung is more likely a typo than intent.
//!
//! Evidence is captured before the first level that destroys it
//! ([`LevelRange::first_destructive_level`]); the plan inserts a
//! [`Action::CaptureEvidence`] step right before it, so with levels 3-4 the
//! snapshot is taken from a frozen tree, as in the hard-halt ladder.
//!
//! The daemon implements [`Actuator`]. Its network cut sets both ends of an
//! `isolated` agent's veth link down (see [`warden_core::netns`]): the agent keeps
//! running and its sockets stay open, but no packet leaves. A `none` agent
//! has nothing to cut, which counts as done; a `host` agent shares the host's
//! namespace and cannot be cut, which `cut_network` returns as an error: the
//! plan records it as a failed step while the ladder goes on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One rung of the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    RevokeCredentials = 1,
    CutNetwork = 2,
    Freeze = 3,
    Kill = 4,
}

impl Level {
    pub const ALL: [Level; 4] = [
        Level::RevokeCredentials,
        Level::CutNetwork,
        Level::Freeze,
        Level::Kill,
    ];

    pub fn number(self) -> u8 {
        self as u8
    }

    pub fn from_number(n: u8) -> Option<Level> {
        Level::ALL.get(usize::from(n).checked_sub(1)?).copied()
    }

    /// Stable name, for the audit.
    pub fn name(self) -> &'static str {
        match self {
            Level::RevokeCredentials => "revoke_credentials",
            Level::CutNetwork => "cut_network",
            Level::Freeze => "freeze",
            Level::Kill => "kill",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Level::RevokeCredentials => "revoke the target's credentials",
            Level::CutNetwork => "cut the target's network",
            Level::Freeze => "freeze the target",
            Level::Kill => "kill the target and verify its cgroup empty",
        }
    }

    /// True when the level destroys state that evidence records (see the
    /// module doc for why only the kill does).
    pub fn destroys_evidence(self) -> bool {
        matches!(self, Level::Kill)
    }
}

/// A validated contiguous range of levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LevelRange {
    first: Level,
    last: Level,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LevelError {
    #[error("levels {0:?}: empty")]
    Empty(String),
    #[error("levels {text:?}: {part:?} is not a level (levels are 1 to 4)")]
    NotALevel { text: String, part: String },
    #[error("levels {0:?}: must be ascending and contiguous, e.g. \"1-3\" or \"1,2,3\"")]
    NotContiguous(String),
}

impl LevelRange {
    pub fn new(first: Level, last: Level) -> Option<LevelRange> {
        (first <= last).then_some(LevelRange { first, last })
    }

    /// All four levels.
    pub fn full() -> LevelRange {
        LevelRange {
            first: Level::RevokeCredentials,
            last: Level::Kill,
        }
    }

    pub fn first(&self) -> Level {
        self.first
    }

    pub fn last(&self) -> Level {
        self.last
    }

    pub fn levels(&self) -> impl Iterator<Item = Level> + '_ {
        Level::ALL
            .into_iter()
            .filter(|l| *l >= self.first && *l <= self.last)
    }

    pub fn contains(&self, level: Level) -> bool {
        level >= self.first && level <= self.last
    }

    /// The level before which evidence must be captured, if any is in range.
    pub fn first_destructive_level(&self) -> Option<Level> {
        self.levels().find(|l| l.destroys_evidence())
    }
}

impl FromStr for LevelRange {
    type Err = LevelError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let t = text.trim();
        if t.is_empty() {
            return Err(LevelError::Empty(text.into()));
        }
        let level = |part: &str| {
            part.trim()
                .parse::<u8>()
                .ok()
                .and_then(Level::from_number)
                .ok_or_else(|| LevelError::NotALevel {
                    text: text.into(),
                    part: part.trim().into(),
                })
        };
        let not_contiguous = || LevelError::NotContiguous(text.into());
        if let Some((a, b)) = t.split_once('-') {
            return LevelRange::new(level(a)?, level(b)?).ok_or_else(not_contiguous);
        }
        let list = t.split(',').map(level).collect::<Result<Vec<_>, _>>()?;
        if list.windows(2).any(|w| w[1].number() != w[0].number() + 1) {
            return Err(not_contiguous());
        }
        Ok(LevelRange {
            first: list[0],
            last: *list.last().expect("split yields at least one part"),
        })
    }
}

impl fmt::Display for LevelRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first.number())
        } else {
            write!(f, "{}-{}", self.first.number(), self.last.number())
        }
    }
}

impl TryFrom<String> for LevelRange {
    type Error = LevelError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<LevelRange> for String {
    fn from(r: LevelRange) -> String {
        r.to_string()
    }
}

/// What one step of a plan does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action", content = "level")]
pub enum Action {
    Level(Level),
    /// Snapshot the target before a destructive level.
    CaptureEvidence,
}

/// Where one step stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum StepState {
    Pending,
    Running {
        started_ms: u64,
    },
    Done {
        started_ms: u64,
        ended_ms: u64,
        detail: String,
    },
    Failed {
        started_ms: u64,
        ended_ms: u64,
        error: String,
    },
}

/// One step, with its timing and outcome for the audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub action: Action,
    pub state: StepState,
}

/// Does the work of each action; implemented by the daemon (and by a
/// recording mock in tests). `Ok` carries a short detail for the audit
/// ("2 credentials revoked", "cgroup empty after 23 ms").
pub trait Actuator {
    fn revoke_credentials(&mut self, target: &super::twophase::Target) -> Result<String, String>;
    /// Takes the target's network down without stopping it.
    fn cut_network(&mut self, target: &super::twophase::Target) -> Result<String, String>;
    fn freeze(&mut self, target: &super::twophase::Target) -> Result<String, String>;
    fn capture_evidence(&mut self, target: &super::twophase::Target) -> Result<String, String>;
    /// Kill and verify every target cgroup empty.
    fn kill(&mut self, target: &super::twophase::Target) -> Result<String, String>;
}

/// The steps of one execution of the ladder against one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub target: super::twophase::Target,
    pub levels: LevelRange,
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn new(target: super::twophase::Target, levels: LevelRange) -> Plan {
        let destructive = levels.first_destructive_level();
        let mut steps = Vec::new();
        for level in levels.levels() {
            if Some(level) == destructive {
                steps.push(Action::CaptureEvidence);
            }
            steps.push(Action::Level(level));
        }
        Plan {
            target,
            levels,
            steps: steps
                .into_iter()
                .map(|action| Step {
                    action,
                    state: StepState::Pending,
                })
                .collect(),
        }
    }

    /// The index of the next pending step.
    pub fn next_pending(&self) -> Option<usize> {
        self.steps
            .iter()
            .position(|s| s.state == StepState::Pending)
    }

    pub fn start(&mut self, index: usize, now_ms: u64) {
        self.steps[index].state = StepState::Running { started_ms: now_ms };
    }

    pub fn finish(&mut self, index: usize, now_ms: u64, outcome: Result<String, String>) {
        let started_ms = match self.steps[index].state {
            StepState::Running { started_ms } => started_ms,
            _ => now_ms,
        };
        self.steps[index].state = match outcome {
            Ok(detail) => StepState::Done {
                started_ms,
                ended_ms: now_ms,
                detail,
            },
            Err(error) => StepState::Failed {
                started_ms,
                ended_ms: now_ms,
                error,
            },
        };
    }

    /// Runs every pending step in order. A failed step does not stop the
    /// ladder: a failed credential revocation or network cut must never keep
    /// an agent from being frozen and killed. `now` is the injected clock.
    pub fn run(&mut self, actuator: &mut dyn Actuator, now: &mut dyn FnMut() -> u64) {
        while let Some(i) = self.next_pending() {
            self.start(i, now());
            let target = &self.target;
            let outcome = match self.steps[i].action {
                Action::CaptureEvidence => actuator.capture_evidence(target),
                Action::Level(Level::RevokeCredentials) => actuator.revoke_credentials(target),
                Action::Level(Level::CutNetwork) => actuator.cut_network(target),
                Action::Level(Level::Freeze) => actuator.freeze(target),
                Action::Level(Level::Kill) => actuator.kill(target),
            };
            self.finish(i, now(), outcome);
        }
    }

    /// True when every step is done without failure.
    pub fn succeeded(&self) -> bool {
        self.steps
            .iter()
            .all(|s| matches!(s.state, StepState::Done { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::twophase::Target;
    use super::*;

    fn range(s: &str) -> Result<LevelRange, LevelError> {
        s.parse()
    }

    #[test]
    fn parses_ranges_single_levels_and_lists() {
        assert_eq!(
            range("1-3").unwrap(),
            LevelRange::new(Level::RevokeCredentials, Level::Freeze).unwrap()
        );
        assert_eq!(
            range("2").unwrap(),
            LevelRange::new(Level::CutNetwork, Level::CutNetwork).unwrap()
        );
        assert_eq!(range("1,2,3").unwrap(), range("1-3").unwrap());
        assert_eq!(range(" 3 - 4 ").unwrap().to_string(), "3-4");
        assert_eq!(range("4").unwrap().to_string(), "4");
        assert_eq!(range("1-4").unwrap(), LevelRange::full());
    }

    #[test]
    fn refuses_bad_levels() {
        assert!(matches!(range(""), Err(LevelError::Empty(_))));
        assert!(matches!(range("0"), Err(LevelError::NotALevel { .. })));
        assert!(matches!(range("5"), Err(LevelError::NotALevel { .. })));
        assert!(matches!(range("1-5"), Err(LevelError::NotALevel { .. })));
        assert!(matches!(range("x"), Err(LevelError::NotALevel { .. })));
        assert!(matches!(range("1,,2"), Err(LevelError::NotALevel { .. })));
        assert!(matches!(range("3-1"), Err(LevelError::NotContiguous(_))));
        assert!(matches!(range("1,3"), Err(LevelError::NotContiguous(_))));
        assert!(matches!(range("2,1"), Err(LevelError::NotContiguous(_))));
        assert!(matches!(range("1,1"), Err(LevelError::NotContiguous(_))));
    }

    #[test]
    fn serde_uses_the_text_form() {
        let v = serde_json::to_value(range("1-3").unwrap()).unwrap();
        assert_eq!(v, serde_json::json!("1-3"));
        let back: LevelRange = serde_json::from_value(v).unwrap();
        assert_eq!(back, range("1-3").unwrap());
        assert!(serde_json::from_value::<LevelRange>(serde_json::json!("1,3")).is_err());
    }

    #[test]
    fn evidence_comes_before_the_first_destructive_level() {
        assert_eq!(range("1-3").unwrap().first_destructive_level(), None);
        assert_eq!(
            range("1-4").unwrap().first_destructive_level(),
            Some(Level::Kill)
        );
        let actions = |s: &str| {
            Plan::new(Target::All, range(s).unwrap())
                .steps
                .iter()
                .map(|s| s.action)
                .collect::<Vec<_>>()
        };
        use Action as A;
        assert_eq!(
            actions("1-4"),
            vec![
                A::Level(Level::RevokeCredentials),
                A::Level(Level::CutNetwork),
                A::Level(Level::Freeze),
                A::CaptureEvidence,
                A::Level(Level::Kill),
            ]
        );
        assert_eq!(
            actions("4"),
            vec![A::CaptureEvidence, A::Level(Level::Kill)]
        );
        assert_eq!(actions("2"), vec![A::Level(Level::CutNetwork)]);
    }

    #[derive(Default)]
    struct Recorder(Vec<&'static str>);

    impl Actuator for Recorder {
        fn revoke_credentials(&mut self, _: &Target) -> Result<String, String> {
            self.0.push("revoke");
            Ok("1 revoked".into())
        }
        fn cut_network(&mut self, _: &Target) -> Result<String, String> {
            self.0.push("net");
            Err("network isolation is not implemented".into())
        }
        fn freeze(&mut self, _: &Target) -> Result<String, String> {
            self.0.push("freeze");
            Ok("frozen".into())
        }
        fn capture_evidence(&mut self, _: &Target) -> Result<String, String> {
            self.0.push("evidence");
            Ok("sealed".into())
        }
        fn kill(&mut self, _: &Target) -> Result<String, String> {
            self.0.push("kill");
            Ok("empty".into())
        }
    }

    #[test]
    fn run_records_every_step_and_goes_on_after_a_failure() {
        let mut plan = Plan::new(Target::Agent("a".into()), LevelRange::full());
        let mut rec = Recorder::default();
        let mut t = 0;
        let mut clock = || {
            t += 10;
            t
        };
        plan.run(&mut rec, &mut clock);
        assert_eq!(rec.0, vec!["revoke", "net", "freeze", "evidence", "kill"]);
        assert!(!plan.succeeded());
        assert_eq!(
            plan.steps[0].state,
            StepState::Done {
                started_ms: 10,
                ended_ms: 20,
                detail: "1 revoked".into()
            }
        );
        assert!(matches!(
            plan.steps[1].state,
            StepState::Failed {
                started_ms: 30,
                ended_ms: 40,
                ..
            }
        ));
        assert!(matches!(
            plan.steps[4].state,
            StepState::Done { ended_ms: 100, .. }
        ));
        assert_eq!(plan.next_pending(), None);
        // The plan is the audit record.
        let v = serde_json::to_value(&plan).unwrap();
        assert_eq!(v["levels"], "1-4");
        assert_eq!(v["steps"][3]["action"]["action"], "capture_evidence");
    }
}
