//! Two-phase kill: `warden kill arm` records an authorization, `warden kill
//! execute ID` carries it out, once. Arming first lets a second person (with
//! `two_person = true`, a different uid) confirm a kill of everything, and
//! gives a scripted kill an id the audit can follow from arm to execution.
//!
//! Every authorization is a small state machine ([`State`], [`Event`], one
//! [`transition`] function). The set is persisted to one JSON file, rewritten
//! atomically and durably before any change is acknowledged, so a restart
//! neither forgets an armed kill nor resurrects an executed or disarmed one.
//!
//! File format (`state_dir/killswitch/authorizations.json`, mode 0600):
//! `{"version":1,"authorizations":[Authorization, ...]}`; see
//! [`encode`]/[`decode`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::levels::LevelRange;

/// Version of the persisted file.
pub const VERSION: u32 = 1;
/// How long an armed kill waits for execution unless told otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);
/// An armed kill must not linger for days, waiting to be found by someone.
pub const MAX_TTL: Duration = Duration::from_secs(60 * 60);

/// What a kill is aimed at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Agent(String),
    All,
}

/// Where an authorization stands. Only `Armed` can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Armed,
    Executed,
    Disarmed,
    Expired,
}

/// What can happen to an authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Execute {
        uid: u32,
    },
    Disarm {
        uid: u32,
    },
    /// Time passed; expires it if due.
    Tick,
}

/// One armed (or formerly armed) kill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// Random, `ks-` and 16 hex digits; what `execute` names.
    pub id: String,
    pub target: Target,
    pub levels: LevelRange,
    /// Who armed it (SO_PEERCRED), checked against the executor with two_person.
    pub armed_by_uid: u32,
    pub reason: String,
    pub created_at: u64,
    /// Executing at or after this instant is refused.
    pub expires_at: u64,
    pub state: State,
    /// Who executed or disarmed it, and when: the audit's answer to "who".
    pub closed_by_uid: Option<u32>,
    pub closed_at: Option<u64>,
}

/// Why an execute or disarm was refused. [`Refusal::code`] is stable for
/// scripts and the control protocol.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("no kill authorization {0}")]
    Unknown(String),
    #[error("kill authorization {id} expired {ago} ago; arm a new one")]
    Expired { id: String, ago: String },
    #[error("kill authorization {id} was already executed by uid {by_uid}; it is single-use")]
    Reused { id: String, by_uid: u32 },
    #[error("kill authorization {id} was disarmed by uid {by_uid}")]
    Cancelled { id: String, by_uid: u32 },
    #[error(
        "two_person is on: execute must come from a different uid than arm (uid {0} armed it)"
    )]
    SameUid(u32),
    #[error("invalid kill authorization: {0}")]
    Invalid(String),
    #[error("cannot record the kill authorization durably: {0}")]
    Store(String),
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Unknown(_) => "unknown",
            Refusal::Expired { .. } => "expired",
            Refusal::Reused { .. } => "reused",
            Refusal::Cancelled { .. } => "cancelled",
            Refusal::SameUid(_) => "same_uid",
            Refusal::Invalid(_) => "invalid",
            Refusal::Store(_) => "store_failed",
        }
    }
}

/// Errors loading the file at start.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// The one place that decides every transition. Refusals leave the state as
/// it was, except that an execute or disarm of an overdue `Armed` one is
/// refused as expired (and the caller records it `Expired`).
pub fn transition(
    a: &Authorization,
    event: Event,
    now_ms: u64,
    two_person: bool,
) -> Result<State, Refusal> {
    let id = a.id.clone();
    let by_uid = a.closed_by_uid.unwrap_or(a.armed_by_uid);
    let expired = || Refusal::Expired {
        id: a.id.clone(),
        ago: super::human_ms(now_ms.saturating_sub(a.expires_at)),
    };
    match (a.state, event) {
        (State::Armed, Event::Tick) if now_ms >= a.expires_at => Ok(State::Expired),
        (state, Event::Tick) => Ok(state),
        (State::Armed, _) if now_ms >= a.expires_at => Err(expired()),
        (State::Armed, Event::Execute { uid }) if two_person && uid == a.armed_by_uid => {
            Err(Refusal::SameUid(uid))
        }
        (State::Armed, Event::Execute { .. }) => Ok(State::Executed),
        (State::Armed, Event::Disarm { .. }) => Ok(State::Disarmed),
        (State::Executed, _) => Err(Refusal::Reused { id, by_uid }),
        (State::Disarmed, _) => Err(Refusal::Cancelled { id, by_uid }),
        (State::Expired, _) => Err(expired()),
    }
}

/// The persisted bytes of a set of authorizations.
pub fn encode(auths: &[Authorization]) -> Vec<u8> {
    super::encode_list(VERSION, "authorizations", auths)
}

/// Parses [`encode`]'s output; any other version is refused, never guessed.
pub fn decode(bytes: &[u8]) -> Result<Vec<Authorization>, String> {
    super::decode_list(bytes, VERSION, "authorizations")
}

/// The authorizations of this host, backed by their file.
#[derive(Debug)]
pub struct TwoPhase {
    path: PathBuf,
    /// From the config: executor must differ from the armer.
    two_person: bool,
    /// By id; ordered so `list()` and the file are stable.
    auths: BTreeMap<String, Authorization>,
}

impl TwoPhase {
    /// Loads `path` (a missing file is an empty set). A corrupt file is an
    /// error: guessing could resurrect an executed kill or drop an armed one.
    pub fn open(path: &Path, two_person: bool) -> Result<TwoPhase, StoreError> {
        let auths = match std::fs::read(path) {
            Ok(b) => decode(&b).map_err(|message| StoreError::Corrupt {
                path: path.into(),
                message,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(StoreError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        Ok(TwoPhase {
            path: path.into(),
            two_person,
            auths: auths.into_iter().map(|a| (a.id.clone(), a)).collect(),
        })
    }

    fn save(&self) -> Result<(), Refusal> {
        let all: Vec<Authorization> = self.auths.values().cloned().collect();
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Refusal::Store(format!("{}: {e}", dir.display())))?;
        }
        super::write_durable(&self.path, &encode(&all), 0o600)
            .map_err(|e| Refusal::Store(format!("{}: {e}", self.path.display())))
    }

    /// Puts `a` in the set and persists the set; on a failed write the set is
    /// rolled back, so memory never claims what disk does not.
    fn commit(&mut self, a: Authorization) -> Result<Authorization, Refusal> {
        let before = self.auths.insert(a.id.clone(), a.clone());
        if let Err(e) = self.save() {
            match before {
                Some(b) => self.auths.insert(b.id.clone(), b),
                None => self.auths.remove(&a.id),
            };
            return Err(e);
        }
        Ok(a)
    }

    /// Arms a kill. `ttl` defaults to [`DEFAULT_TTL`] and may not exceed
    /// [`MAX_TTL`].
    pub fn arm(
        &mut self,
        target: Target,
        levels: LevelRange,
        reason: &str,
        uid: u32,
        now_ms: u64,
        ttl: Option<Duration>,
    ) -> Result<Authorization, Refusal> {
        let ttl = ttl.unwrap_or(DEFAULT_TTL);
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(Refusal::Invalid(format!(
                "ttl {} must be above 0 and at most {}",
                humantime::format_duration(ttl),
                humantime::format_duration(MAX_TTL)
            )));
        }
        if reason.trim().is_empty() {
            return Err(Refusal::Invalid("a reason is required".into()));
        }
        if let Target::Agent(name) = &target {
            if name.is_empty() {
                return Err(Refusal::Invalid("empty agent name".into()));
            }
        }
        self.commit(Authorization {
            id: format!("ks-{}", warden_core::crypto::random_hex(8)),
            target,
            levels,
            armed_by_uid: uid,
            reason: reason.into(),
            created_at: now_ms,
            expires_at: now_ms + ttl.as_millis() as u64,
            state: State::Armed,
            closed_by_uid: None,
            closed_at: None,
        })
    }

    fn apply(&mut self, id: &str, event: Event, now_ms: u64) -> Result<Authorization, Refusal> {
        let a = self
            .auths
            .get(id)
            .ok_or_else(|| Refusal::Unknown(id.into()))?
            .clone();
        match transition(&a, event, now_ms, self.two_person) {
            Ok(state) => {
                let uid = match event {
                    Event::Execute { uid } | Event::Disarm { uid } => Some(uid),
                    Event::Tick => None,
                };
                self.commit(Authorization {
                    state,
                    closed_by_uid: uid,
                    closed_at: Some(now_ms),
                    ..a
                })
            }
            Err(refusal) => {
                if a.state == State::Armed && matches!(refusal, Refusal::Expired { .. }) {
                    // Record what the refusal found; a failed write changes
                    // nothing, as the refusal stands either way.
                    let _ = self.commit(Authorization {
                        state: State::Expired,
                        closed_at: Some(now_ms),
                        ..a
                    });
                }
                Err(refusal)
            }
        }
    }

    /// Consumes the authorization: it is `Executed` on disk before this
    /// returns `Ok`, so the kill it permits happens at most once.
    pub fn execute(&mut self, id: &str, uid: u32, now_ms: u64) -> Result<Authorization, Refusal> {
        self.apply(id, Event::Execute { uid }, now_ms)
    }

    /// Cancels an armed kill. Any operator may disarm: it is the safe way.
    pub fn disarm(&mut self, id: &str, uid: u32, now_ms: u64) -> Result<Authorization, Refusal> {
        self.apply(id, Event::Disarm { uid }, now_ms)
    }

    /// Marks overdue armed kills expired; returns those it changed (for the
    /// audit). The daemon calls it on its main loop's turn.
    pub fn expire(&mut self, now_ms: u64) -> Result<Vec<Authorization>, Refusal> {
        let due: Vec<String> = self
            .auths
            .values()
            .filter(|a| transition(a, Event::Tick, now_ms, self.two_person) == Ok(State::Expired))
            .map(|a| a.id.clone())
            .collect();
        due.iter()
            .map(|id| self.apply(id, Event::Tick, now_ms))
            .collect()
    }

    /// Every authorization, oldest first.
    pub fn list(&self) -> Vec<Authorization> {
        let mut v: Vec<Authorization> = self.auths.values().cloned().collect();
        v.sort_by_key(|a| (a.created_at, a.id.clone()));
        v
    }

    /// Drops closed authorizations closed before `before_ms` (the audit log
    /// keeps their history), so the file stays small.
    pub fn prune(&mut self, before_ms: u64) -> Result<usize, Refusal> {
        let old = self.auths.clone();
        self.auths
            .retain(|_, a| a.state == State::Armed || a.closed_at.is_none_or(|t| t >= before_ms));
        let n = old.len() - self.auths.len();
        if n > 0 {
            if let Err(e) = self.save() {
                self.auths = old;
                return Err(e);
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn store(two_person: bool) -> (tempfile::TempDir, TwoPhase) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("killswitch/authorizations.json");
        let t = TwoPhase::open(&p, two_person).unwrap();
        (d, t)
    }

    fn arm(t: &mut TwoPhase, uid: u32, now: u64) -> Authorization {
        t.arm(
            Target::Agent("alpha".into()),
            "1-4".parse().unwrap(),
            "runaway",
            uid,
            now,
            None,
        )
        .unwrap()
    }

    #[test]
    fn arm_then_execute_once() {
        let (_d, mut t) = store(false);
        let a = arm(&mut t, 1000, 0);
        assert_eq!(a.state, State::Armed);
        assert_eq!(a.expires_at, 5 * MIN);
        assert!(a.id.starts_with("ks-") && a.id.len() == 19);
        let done = t.execute(&a.id, 1000, MIN).unwrap();
        assert_eq!(done.state, State::Executed);
        assert_eq!(done.closed_by_uid, Some(1000));
        let again = t.execute(&a.id, 1000, MIN).unwrap_err();
        assert_eq!(again.code(), "reused");
        assert!(again.to_string().contains("single-use"), "{again}");
    }

    #[test]
    fn every_refusal_has_its_code() {
        let (_d, mut t) = store(true);
        assert_eq!(t.execute("ks-nope", 1, 0).unwrap_err().code(), "unknown");

        let a = arm(&mut t, 1000, 0);
        let same = t.execute(&a.id, 1000, 1).unwrap_err();
        assert_eq!(same.code(), "same_uid");
        assert_eq!(
            same.to_string(),
            "two_person is on: execute must come from a different uid than arm (uid 1000 armed it)"
        );
        // Still armed: another person may execute.
        t.execute(&a.id, 1001, 2).unwrap();

        let b = arm(&mut t, 1000, 0);
        assert_eq!(
            t.execute(&b.id, 1001, 5 * MIN).unwrap_err().code(),
            "expired"
        );
        assert_eq!(
            t.list().iter().find(|x| x.id == b.id).unwrap().state,
            State::Expired
        );
        assert_eq!(
            t.execute(&b.id, 1001, 6 * MIN).unwrap_err().code(),
            "expired"
        );

        let c = arm(&mut t, 1000, 0);
        t.disarm(&c.id, 1002, 1).unwrap();
        let e = t.execute(&c.id, 1001, 2).unwrap_err();
        assert_eq!(e.code(), "cancelled");
        assert!(e.to_string().contains("uid 1002"));
        assert_eq!(t.disarm(&c.id, 1002, 3).unwrap_err().code(), "cancelled");

        assert_eq!(
            t.arm(
                Target::All,
                LevelRange::full(),
                "x",
                0,
                0,
                Some(Duration::from_secs(7200))
            )
            .unwrap_err()
            .code(),
            "invalid"
        );
        assert_eq!(
            t.arm(Target::All, LevelRange::full(), " ", 0, 0, None)
                .unwrap_err()
                .code(),
            "invalid"
        );
    }

    #[test]
    fn reload_neither_forgets_nor_resurrects() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("auth.json");
        let (armed, executed, disarmed);
        {
            let mut t = TwoPhase::open(&p, false).unwrap();
            armed = arm(&mut t, 1, 0);
            executed = arm(&mut t, 1, 0);
            disarmed = arm(&mut t, 1, 0);
            t.execute(&executed.id, 1, 1).unwrap();
            t.disarm(&disarmed.id, 1, 1).unwrap();
        }
        let mut t = TwoPhase::open(&p, false).unwrap();
        assert_eq!(t.list().len(), 3);
        assert_eq!(t.execute(&executed.id, 1, 2).unwrap_err().code(), "reused");
        assert_eq!(
            t.execute(&disarmed.id, 1, 2).unwrap_err().code(),
            "cancelled"
        );
        assert_eq!(t.execute(&armed.id, 1, 2).unwrap().state, State::Executed);

        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&p).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
    }

    #[test]
    fn expire_and_prune() {
        let (_d, mut t) = store(false);
        let a = arm(&mut t, 1, 0);
        assert!(t.expire(MIN).unwrap().is_empty());
        let gone = t.expire(5 * MIN).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].id, a.id);
        assert_eq!(gone[0].state, State::Expired);
        let b = arm(&mut t, 1, 10 * MIN);
        assert_eq!(t.prune(6 * MIN).unwrap(), 1);
        assert_eq!(t.list().len(), 1);
        assert_eq!(t.list()[0].id, b.id);
    }

    #[test]
    fn corrupt_or_unknown_versions_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("auth.json");
        std::fs::write(&p, b"{\"version\":2,\"authorizations\":[]}").unwrap();
        let e = TwoPhase::open(&p, false).unwrap_err().to_string();
        assert!(e.contains("unsupported version 2"), "{e}");
        std::fs::write(&p, b"{not json").unwrap();
        assert!(matches!(
            TwoPhase::open(&p, false),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
    }
}
