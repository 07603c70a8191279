//! Approvals: pending requests, signed single-use tokens, and their journal.
//!
//! A call to a `write` or `execute` tool without a token becomes a pending
//! request. An operator approves it (`approve`), which signs a [`Token`] with
//! warden's key, or rejects it with a reason. Pending requests expire after
//! `pending_ttl` (default 15 minutes).
//!
//! Token binding, precisely:
//! - every token names the agent, the tool and the tool's scope at approval
//!   time, and carries the SHA-256 of the canonical JSON of the argument map
//!   the operator saw (`args_sha256`);
//! - a `write` token is checked against agent, tool and scope: it allows one
//!   schema-valid call of that tool, whatever its arguments (`args_sha256` is
//!   kept for the record only);
//! - an `execute` token is checked against agent, tool, scope and
//!   `args_sha256`: it allows exactly the call the operator saw;
//! - a token whose scope differs from the tool's current scope (the registry
//!   was reloaded) does not match;
//! - each token is usable once: its nonce is recorded as consumed, durably,
//!   before the call is allowed, and kept until the token expires (after
//!   that the expiry check refuses it anyway).
//!
//! The journal is a JSON-lines file (one [`Record`] a line, `v` = 1), opened
//! O_APPEND and fsynced after every line, replayed at start. It holds issued
//! tokens, which are bearer credentials: it is created 0600 and belongs in
//! state_dir.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::registry::{Scope, Tool};
use warden_core::crypto::{self, KeyPair};

/// Version of the signed token claims.
pub const TOKEN_VERSION: u32 = 1;
/// Version of a journal line.
pub const RECORD_VERSION: u32 = 1;
pub use warden_core::config::DEFAULT_PENDING_TTL;
/// Prefix of an encoded token, so a pasted token is recognisable.
const TOKEN_PREFIX: &str = "wt1.";

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("no approval request {0:?}")]
    NoSuchRequest(String),
    #[error("approval request {id} is {state}, not pending")]
    NotPending { id: String, state: &'static str },
    #[error("approval request {0} expired before it was decided")]
    RequestExpired(String),
    #[error("approval ttl must be longer than 0s")]
    ZeroTtl,
    #[error("a rejection needs a reason")]
    NoReason,
    #[error("failed to {op} approval journal {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("approval journal {path}: line {line}: {message}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// What warden signs when an operator approves a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenClaims {
    pub version: u32,
    pub request_id: String,
    pub agent: String,
    pub tool: String,
    /// SHA-256 of the canonical JSON of the argument map (see [`args_sha256`]).
    pub args_sha256: String,
    pub scope: Scope,
    /// Who approved, so every allowed call names its approver.
    pub approver_uid: u32,
    pub expires_at_ms: u64,
    /// Random; each is accepted once.
    pub nonce: String,
}

/// A signed approval, handed to the agent and presented with its retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub claims: TokenClaims,
    /// Hex Ed25519 signature over the canonical JSON of the claims.
    pub signature: String,
}

fn claims_bytes(c: &TokenClaims) -> Vec<u8> {
    crypto::canonical_json(&serde_json::to_value(c).expect("claims serialize")).into_bytes()
}

impl Token {
    /// `wt1.<hex of the canonical claims>.<hex signature>`: one opaque string
    /// an agent can pass back without parsing it.
    pub fn encode(&self) -> String {
        format!(
            "{TOKEN_PREFIX}{}.{}",
            hex::encode(claims_bytes(&self.claims)),
            self.signature
        )
    }

    /// The inverse of [`Token::encode`]; does not check the signature.
    pub fn decode(text: &str) -> Result<Token, String> {
        let rest = text
            .strip_prefix(TOKEN_PREFIX)
            .ok_or("not a warden approval token (no wt1. prefix)")?;
        let (claims_hex, signature) = rest.split_once('.').ok_or("token has no signature part")?;
        let bytes =
            crypto::decode_hex_lower(claims_hex).ok_or("token claims are not lower-case hex")?;
        let claims: TokenClaims = serde_json::from_slice(&bytes)
            .map_err(|e| format!("token claims are malformed: {e}"))?;
        Ok(Token {
            claims,
            signature: signature.to_string(),
        })
    }
}

/// SHA-256 hex of the canonical JSON of an argument map: what an execute
/// token is bound to.
pub fn args_sha256(args: &BTreeMap<String, Value>) -> String {
    let map: serde_json::Map<String, Value> =
        args.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    crypto::sha256_hex(crypto::canonical_json(&Value::Object(map)).as_bytes())
}

/// Why a presented token does not allow the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Malformed, altered, signed by another key, or of another version.
    Invalid(String),
    Expired {
        ago_ms: u64,
    },
    Reused,
    /// Valid, but for another agent, tool, scope or arguments.
    Mismatch(String),
}

/// Where a request is in its life. Pending → Approved → Used, or
/// Pending → Rejected, or Pending → Expired; nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RequestState {
    Pending,
    Approved {
        by_uid: u32,
        at_ms: u64,
        /// The encoded token, for the daemon to hand to the agent.
        token: String,
        token_expires_at_ms: u64,
    },
    Rejected {
        by_uid: u32,
        at_ms: u64,
        reason: String,
    },
    Expired {
        at_ms: u64,
    },
    /// Its token allowed a call.
    Used {
        at_ms: u64,
    },
}

impl RequestState {
    fn name(&self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved { .. } => "approved",
            RequestState::Rejected { .. } => "rejected",
            RequestState::Expired { .. } => "expired",
            RequestState::Used { .. } => "used",
        }
    }
}

/// One call waiting for (or past) an operator's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    pub agent: String,
    pub tool: String,
    pub scope: Scope,
    pub args: BTreeMap<String, Value>,
    pub args_sha256: String,
    pub created_at_ms: u64,
    /// When it stops waiting for an operator.
    pub expires_at_ms: u64,
    pub state: RequestState,
}

/// A pending request as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingView {
    pub id: String,
    pub agent: String,
    pub tool: String,
    pub scope: Scope,
    pub args: BTreeMap<String, Value>,
    pub age_ms: u64,
    pub expires_in_ms: u64,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub v: u32,
    #[serde(flatten)]
    pub entry: Entry,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    Request(Request),
    Approved {
        id: String,
        by_uid: u32,
        at_ms: u64,
        token: String,
        token_expires_at_ms: u64,
    },
    Rejected {
        id: String,
        by_uid: u32,
        at_ms: u64,
        reason: String,
    },
    Expired {
        id: String,
        at_ms: u64,
    },
    Consumed {
        nonce: String,
        request_id: String,
        expires_at_ms: u64,
        at_ms: u64,
    },
}

/// One journal line, without its newline.
pub fn encode_record(entry: &Entry) -> String {
    serde_json::to_string(&Record {
        v: RECORD_VERSION,
        entry: entry.clone(),
    })
    .expect("a record serializes")
}

pub fn decode_record(line: &str) -> Result<Entry, String> {
    let r: Record = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if r.v != RECORD_VERSION {
        return Err(format!("record version {} is not {RECORD_VERSION}", r.v));
    }
    Ok(r.entry)
}

struct Journal {
    path: PathBuf,
    file: File,
}

/// Every request and consumed nonce, in memory, optionally journaled.
pub struct ApprovalStore {
    /// warden's public key: tokens signed by anything else are invalid.
    key: VerifyingKey,
    pending_ttl: Duration,
    requests: HashMap<String, Request>,
    /// (agent, tool, args_sha256) → its newest request: keeps `decide` from
    /// scanning every request ever made.
    newest: HashMap<(String, String, String), String>,
    /// Nonce → its token's expiry.
    consumed: HashMap<String, u64>,
    journal: Option<Journal>,
}

impl ApprovalStore {
    /// An in-memory store (nothing survives a restart).
    pub fn new(key: VerifyingKey, pending_ttl: Duration) -> ApprovalStore {
        ApprovalStore {
            key,
            pending_ttl,
            requests: HashMap::new(),
            newest: HashMap::new(),
            consumed: HashMap::new(),
            journal: None,
        }
    }

    /// A store journaled to `path`, replaying what it holds. A torn last line
    /// (a crash mid-append) is cut off; any other bad line is an error, since
    /// silently dropping a consumed nonce would let a token be used twice.
    pub fn open(
        path: &Path,
        key: VerifyingKey,
        pending_ttl: Duration,
    ) -> Result<ApprovalStore, ApprovalError> {
        let io = |op: &'static str| {
            move |source| ApprovalError::Io {
                op,
                path: path.to_owned(),
                source,
            }
        };
        let mut store = ApprovalStore::new(key, pending_ttl);
        let text = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io("read")(e)),
        };
        let mut good_len = 0usize;
        let mut offset = 0usize;
        for (i, raw) in text.split_inclusive(|&b| b == b'\n').enumerate() {
            offset += raw.len();
            // Only the last piece can lack its newline.
            let complete = raw.ends_with(b"\n");
            let parsed = std::str::from_utf8(raw)
                .map_err(|e| e.to_string())
                .and_then(|l| decode_record(l.trim_end_matches('\n')));
            match parsed {
                Ok(entry) => {
                    store
                        .apply(entry)
                        .map_err(|message| ApprovalError::Corrupt {
                            path: path.to_owned(),
                            line: i + 1,
                            message,
                        })?;
                    good_len = offset;
                }
                Err(_) if !complete => {
                    tracing::warn!(path = %path.display(), line = i + 1, "approval journal: cutting off a torn last line");
                }
                Err(message) => {
                    return Err(ApprovalError::Corrupt {
                        path: path.to_owned(),
                        line: i + 1,
                        message,
                    })
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(io("open"))?;
        if good_len < text.len() || (good_len > 0 && !text.ends_with(b"\n")) {
            // A complete last record without its newline still gets one, so
            // the next append starts on its own line.
            file.set_len(good_len as u64).map_err(io("truncate"))?;
            if good_len > 0 && !text[..good_len].ends_with(b"\n") {
                (&file).write_all(b"\n").map_err(io("write"))?;
            }
            file.sync_data().map_err(io("fsync"))?;
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync the directory of"))?;
        store.journal = Some(Journal {
            path: path.to_owned(),
            file,
        });
        Ok(store)
    }

    /// Applies one journal entry to memory (replay and live changes alike).
    fn apply(&mut self, entry: Entry) -> Result<(), String> {
        fn get<'a>(
            requests: &'a mut HashMap<String, Request>,
            id: &str,
        ) -> Result<&'a mut Request, String> {
            requests
                .get_mut(id)
                .ok_or_else(|| format!("entry for unknown request {id:?}"))
        }
        match entry {
            Entry::Request(r) => {
                let call = (r.agent.clone(), r.tool.clone(), r.args_sha256.clone());
                self.newest.insert(call, r.id.clone());
                self.requests.insert(r.id.clone(), r);
            }
            Entry::Approved {
                id,
                by_uid,
                at_ms,
                token,
                token_expires_at_ms,
            } => {
                get(&mut self.requests, &id)?.state = RequestState::Approved {
                    by_uid,
                    at_ms,
                    token,
                    token_expires_at_ms,
                }
            }
            Entry::Rejected {
                id,
                by_uid,
                at_ms,
                reason,
            } => {
                get(&mut self.requests, &id)?.state = RequestState::Rejected {
                    by_uid,
                    at_ms,
                    reason,
                }
            }
            Entry::Expired { id, at_ms } => {
                get(&mut self.requests, &id)?.state = RequestState::Expired { at_ms }
            }
            Entry::Consumed {
                nonce,
                request_id,
                expires_at_ms,
                at_ms,
            } => {
                // The request may be gone from an older journal; the nonce is what matters.
                if let Some(r) = self.requests.get_mut(&request_id) {
                    r.state = RequestState::Used { at_ms };
                }
                self.consumed.insert(nonce, expires_at_ms);
            }
        }
        Ok(())
    }

    /// Journals `entry` durably, then applies it: memory never runs ahead of
    /// the journal, so a failed write leaves the store as it was.
    fn commit(&mut self, entry: Entry) -> Result<(), ApprovalError> {
        if let Some(j) = &mut self.journal {
            let mut line = encode_record(&entry);
            line.push('\n');
            let io = |op| {
                let path = j.path.clone();
                move |source| ApprovalError::Io { op, path, source }
            };
            j.file.write_all(line.as_bytes()).map_err(io("append to"))?;
            j.file.sync_data().map_err(io("fsync"))?;
        }
        self.apply(entry).expect("live entries name known requests");
        Ok(())
    }

    pub fn pending_ttl(&self) -> Duration {
        self.pending_ttl
    }

    pub fn get(&self, id: &str) -> Option<&Request> {
        self.requests.get(id)
    }

    /// The newest request of `agent` for this exact call that still says
    /// something: pending, approved with a live token, or rejected within the
    /// last `pending_ttl` (so retrying a rejected call is refused for a while
    /// instead of nagging the operator again).
    pub fn find_live(
        &self,
        agent: &str,
        tool: &str,
        args_sha256: &str,
        now_ms: u64,
    ) -> Option<&Request> {
        let ttl = self.pending_ttl.as_millis() as u64;
        // A new request is only opened when none is live, so only the newest can be.
        let call = (agent.to_string(), tool.to_string(), args_sha256.to_string());
        let r = self.requests.get(self.newest.get(&call)?)?;
        let live = match &r.state {
            RequestState::Pending => now_ms < r.expires_at_ms,
            RequestState::Approved {
                token_expires_at_ms,
                ..
            } => now_ms < *token_expires_at_ms,
            RequestState::Rejected { at_ms, .. } => now_ms < at_ms.saturating_add(ttl),
            RequestState::Expired { .. } | RequestState::Used { .. } => false,
        };
        live.then_some(r)
    }

    /// Opens a pending request for a call; returns its id.
    pub fn request(
        &mut self,
        agent: &str,
        tool: &Tool,
        args: &BTreeMap<String, Value>,
        args_sha256: &str,
        now_ms: u64,
    ) -> Result<String, ApprovalError> {
        let id = format!("req-{}", warden_core::crypto::random_hex(8));
        self.commit(Entry::Request(Request {
            id: id.clone(),
            agent: agent.into(),
            tool: tool.name.clone(),
            scope: tool.scope,
            args: args.clone(),
            args_sha256: args_sha256.into(),
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(self.pending_ttl.as_millis() as u64),
            state: RequestState::Pending,
        }))?;
        Ok(id)
    }

    /// Marks pending requests past their time as expired; returns their ids.
    pub fn expire(&mut self, now_ms: u64) -> Result<Vec<String>, ApprovalError> {
        let mut due: Vec<String> = self
            .requests
            .values()
            .filter(|r| r.state == RequestState::Pending && now_ms >= r.expires_at_ms)
            .map(|r| r.id.clone())
            .collect();
        due.sort();
        for id in &due {
            self.commit(Entry::Expired {
                id: id.clone(),
                at_ms: now_ms,
            })?;
        }
        // A consumed nonce is only needed while its token could still verify.
        self.consumed.retain(|_, exp| *exp > now_ms);
        Ok(due)
    }

    /// Pending requests, oldest first.
    pub fn pending(&self, now_ms: u64) -> Vec<PendingView> {
        let mut v: Vec<PendingView> = self
            .requests
            .values()
            .filter(|r| r.state == RequestState::Pending && now_ms < r.expires_at_ms)
            .map(|r| PendingView {
                id: r.id.clone(),
                agent: r.agent.clone(),
                tool: r.tool.clone(),
                scope: r.scope,
                args: r.args.clone(),
                age_ms: now_ms.saturating_sub(r.created_at_ms),
                expires_in_ms: r.expires_at_ms - now_ms,
            })
            .collect();
        v.sort_by(|a, b| b.age_ms.cmp(&a.age_ms).then(a.id.cmp(&b.id)));
        v
    }

    fn pending_request(&self, id: &str, now_ms: u64) -> Result<&Request, ApprovalError> {
        let r = self
            .requests
            .get(id)
            .ok_or_else(|| ApprovalError::NoSuchRequest(id.into()))?;
        if r.state != RequestState::Pending {
            return Err(ApprovalError::NotPending {
                id: id.into(),
                state: r.state.name(),
            });
        }
        if now_ms >= r.expires_at_ms {
            return Err(ApprovalError::RequestExpired(id.into()));
        }
        Ok(r)
    }

    /// Approves a pending request: signs a token valid for `ttl`.
    pub fn approve(
        &mut self,
        id: &str,
        ttl: Duration,
        approver_uid: u32,
        key: &KeyPair,
        now_ms: u64,
    ) -> Result<Token, ApprovalError> {
        if ttl.is_zero() {
            return Err(ApprovalError::ZeroTtl);
        }
        let r = self.pending_request(id, now_ms)?;
        let claims = TokenClaims {
            version: TOKEN_VERSION,
            request_id: r.id.clone(),
            agent: r.agent.clone(),
            tool: r.tool.clone(),
            args_sha256: r.args_sha256.clone(),
            scope: r.scope,
            approver_uid,
            expires_at_ms: now_ms.saturating_add(ttl.as_millis() as u64),
            nonce: warden_core::crypto::random_hex(16),
        };
        let token = Token {
            signature: key.sign_hex(&claims_bytes(&claims)),
            claims,
        };
        self.commit(Entry::Approved {
            id: id.into(),
            by_uid: approver_uid,
            at_ms: now_ms,
            token: token.encode(),
            token_expires_at_ms: token.claims.expires_at_ms,
        })?;
        Ok(token)
    }

    /// Rejects a pending request; the agent's retries are denied with `reason`.
    pub fn reject(
        &mut self,
        id: &str,
        reason: &str,
        uid: u32,
        now_ms: u64,
    ) -> Result<(), ApprovalError> {
        if reason.trim().is_empty() {
            return Err(ApprovalError::NoReason);
        }
        self.pending_request(id, now_ms)?;
        self.commit(Entry::Rejected {
            id: id.into(),
            by_uid: uid,
            at_ms: now_ms,
            reason: reason.into(),
        })
    }

    /// Checks a presented token against the call, without consuming it.
    pub fn check_token(
        &self,
        text: &str,
        agent: &str,
        tool: &Tool,
        args_sha256: &str,
        now_ms: u64,
    ) -> Result<TokenClaims, TokenRefusal> {
        let token = Token::decode(text).map_err(TokenRefusal::Invalid)?;
        if !crypto::verify_hex(&self.key, &claims_bytes(&token.claims), &token.signature) {
            return Err(TokenRefusal::Invalid(
                "signature does not verify with warden's key (altered, or signed by another key)"
                    .into(),
            ));
        }
        let c = token.claims;
        if c.version != TOKEN_VERSION {
            return Err(TokenRefusal::Invalid(format!(
                "token version {} is not {TOKEN_VERSION}",
                c.version
            )));
        }
        if now_ms >= c.expires_at_ms {
            return Err(TokenRefusal::Expired {
                ago_ms: now_ms - c.expires_at_ms,
            });
        }
        if self.consumed.contains_key(&c.nonce) {
            return Err(TokenRefusal::Reused);
        }
        if c.agent != agent {
            return Err(TokenRefusal::Mismatch(format!(
                "token is for agent {:?}",
                c.agent
            )));
        }
        if c.tool != tool.name {
            return Err(TokenRefusal::Mismatch(format!(
                "token is for tool {:?}",
                c.tool
            )));
        }
        if c.scope != tool.scope {
            return Err(TokenRefusal::Mismatch(format!(
                "token is for scope {}, tool {} now has scope {}",
                c.scope.as_str(),
                tool.name,
                tool.scope.as_str()
            )));
        }
        if tool.scope == Scope::Execute && c.args_sha256 != args_sha256 {
            return Err(TokenRefusal::Mismatch(
                "token was approved for other arguments (execute tokens are bound to the exact arguments)".into(),
            ));
        }
        Ok(c)
    }

    /// Records a token's nonce as used, durably, before its call is allowed.
    pub fn consume(&mut self, claims: &TokenClaims, now_ms: u64) -> Result<(), ApprovalError> {
        self.commit(Entry::Consumed {
            nonce: claims.nonce.clone(),
            request_id: claims.request_id.clone(),
            expires_at_ms: claims.expires_at_ms,
            at_ms: now_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::registry::Registry;
    use serde_json::json;

    const TOOLS: &str = r#"
[[tool]]
name = "rm"
scope = "execute"
program = "/bin/rm"
args = ["--", "{file}"]
timeout = "1s"
output_cap = 100
[tool.params.file]
type = "path"
"#;

    fn tool() -> Tool {
        Registry::parse(TOOLS, Path::new("t"))
            .unwrap()
            .get("rm")
            .unwrap()
            .clone()
    }

    fn args(f: &str) -> BTreeMap<String, Value> {
        serde_json::from_value(json!({ "file": f })).unwrap()
    }

    #[test]
    fn args_hash_is_order_independent() {
        let a: BTreeMap<String, Value> = serde_json::from_str(r#"{"a":1,"b":"x"}"#).unwrap();
        let b: BTreeMap<String, Value> = serde_json::from_str(r#"{"b":"x","a":1}"#).unwrap();
        assert_eq!(args_sha256(&a), args_sha256(&b));
        assert_ne!(args_sha256(&a), args_sha256(&args("x")));
    }

    #[test]
    fn token_round_trips_and_altering_breaks_it() {
        let key = KeyPair::generate();
        let mut s = ApprovalStore::new(key.verifying_key(), DEFAULT_PENDING_TTL);
        let t = tool();
        let a = args("/tmp/x");
        let h = args_sha256(&a);
        let id = s.request("bot", &t, &a, &h, 1000).unwrap();
        let tok = s
            .approve(&id, Duration::from_secs(60), 1000, &key, 2000)
            .unwrap();
        let text = tok.encode();
        assert_eq!(Token::decode(&text).unwrap(), tok);
        assert!(s.check_token(&text, "bot", &t, &h, 3000).is_ok());
        // Re-sign altered claims with another key: invalid.
        let mut forged = tok.clone();
        forged.claims.agent = "evil".into();
        let e = s
            .check_token(&forged.encode(), "evil", &t, &h, 3000)
            .unwrap_err();
        assert!(matches!(e, TokenRefusal::Invalid(_)), "{e:?}");
        for junk in ["", "wt1.", "wt1.zz.aa", "hello"] {
            assert!(matches!(
                s.check_token(junk, "bot", &t, &h, 3000),
                Err(TokenRefusal::Invalid(_))
            ));
        }
    }

    #[test]
    fn approve_and_reject_only_pending() {
        let key = KeyPair::generate();
        let mut s = ApprovalStore::new(key.verifying_key(), Duration::from_secs(60));
        let t = tool();
        let a = args("/tmp/x");
        let h = args_sha256(&a);
        let id = s.request("bot", &t, &a, &h, 0).unwrap();
        assert!(matches!(
            s.reject(&id, " ", 0, 1),
            Err(ApprovalError::NoReason)
        ));
        s.reject(&id, "no deleting", 0, 1).unwrap();
        let e = s
            .approve(&id, Duration::from_secs(1), 0, &key, 2)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("approval request {id} is rejected, not pending")
        );
        assert!(matches!(
            s.approve("nope", Duration::from_secs(1), 0, &key, 2),
            Err(ApprovalError::NoSuchRequest(_))
        ));
        let id2 = s.request("bot", &t, &a, &h, 0).unwrap();
        assert!(matches!(
            s.approve(&id2, Duration::ZERO, 0, &key, 2),
            Err(ApprovalError::ZeroTtl)
        ));
    }

    #[test]
    fn pending_requests_expire() {
        let key = KeyPair::generate();
        let mut s = ApprovalStore::new(key.verifying_key(), Duration::from_secs(60));
        let t = tool();
        let a = args("/tmp/x");
        let h = args_sha256(&a);
        let id = s.request("bot", &t, &a, &h, 1_000).unwrap();
        let p = s.pending(31_000);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].age_ms, p[0].expires_in_ms), (30_000, 30_000));
        assert!(s.find_live("bot", "rm", &h, 31_000).is_some());
        assert!(s.pending(61_000).is_empty());
        assert!(s.find_live("bot", "rm", &h, 61_000).is_none());
        assert!(matches!(
            s.approve(&id, Duration::from_secs(1), 0, &key, 61_000),
            Err(ApprovalError::RequestExpired(_))
        ));
        assert_eq!(s.expire(61_000).unwrap(), vec![id.clone()]);
        assert!(matches!(
            s.get(&id).unwrap().state,
            RequestState::Expired { .. }
        ));
        assert!(s.expire(62_000).unwrap().is_empty());
    }

    #[test]
    fn journal_reloads_requests_decisions_and_nonces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("approvals.jsonl");
        let key = KeyPair::generate();
        let t = tool();
        let (a, b) = (args("/tmp/a"), args("/tmp/b"));
        let (ha, hb) = (args_sha256(&a), args_sha256(&b));
        let (ida, idb, tok);
        {
            let mut s =
                ApprovalStore::open(&path, key.verifying_key(), DEFAULT_PENDING_TTL).unwrap();
            ida = s.request("bot", &t, &a, &ha, 10).unwrap();
            idb = s.request("bot", &t, &b, &hb, 10).unwrap();
            tok = s
                .approve(&ida, Duration::from_secs(600), 1000, &key, 20)
                .unwrap();
            let c = s.check_token(&tok.encode(), "bot", &t, &ha, 30).unwrap();
            s.consume(&c, 30).unwrap();
            s.reject(&idb, "not today", 1001, 40).unwrap();
        }
        // A crash mid-append leaves a torn last line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"v\":1,\"kind\":\"exp").unwrap();
        drop(f);
        let mut s = ApprovalStore::open(&path, key.verifying_key(), DEFAULT_PENDING_TTL).unwrap();
        assert_eq!(
            s.check_token(&tok.encode(), "bot", &t, &ha, 50),
            Err(TokenRefusal::Reused)
        );
        assert!(matches!(
            s.get(&ida).unwrap().state,
            RequestState::Used { .. }
        ));
        assert!(
            matches!(&s.get(&idb).unwrap().state, RequestState::Rejected { reason, by_uid: 1001, .. } if reason == "not today")
        );
        // The torn line was cut off: appends continue on a clean line.
        let idc = s.request("bot", &t, &a, &ha, 60).unwrap();
        drop(s);
        let s = ApprovalStore::open(&path, key.verifying_key(), DEFAULT_PENDING_TTL).unwrap();
        assert_eq!(s.pending(70).len(), 1);
        assert_eq!(s.pending(70)[0].id, idc);
        // A bad line in the middle is an error, not silently skipped.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"kind\"", "\"kind_\"", 1)).unwrap();
        let e = ApprovalStore::open(&path, key.verifying_key(), DEFAULT_PENDING_TTL)
            .err()
            .unwrap();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn record_versions_are_checked() {
        let line = encode_record(&Entry::Expired {
            id: "r".into(),
            at_ms: 1,
        });
        assert_eq!(
            decode_record(&line).unwrap(),
            Entry::Expired {
                id: "r".into(),
                at_ms: 1
            }
        );
        let e = decode_record(&line.replace("\"v\":1", "\"v\":2")).unwrap_err();
        assert!(e.contains("version 2"), "{e}");
    }
}
