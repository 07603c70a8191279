//! API tokens of `warden web`: `warden token create --name N --role R
//! [--expires 90d]` makes a random 32-byte secret, answers it once as
//! `wdn_web_<64 hex digits>` and keeps only its SHA-256, in the `web_tokens`
//! table of `warden.db`. The table is small and read at start into memory;
//! each change is written through at once (its own connection: the audit
//! writer owns the other, and SQLite's WAL serializes the two).

use std::path::Path;

use rusqlite::{params, Connection};
use serde::Serialize;
use subtle::ConstantTimeEq;

use warden_proto::control::{ErrorKind, OnBehalfOf, Request, Response, Role};

/// Prefix of every web token: tells a leaked string's origin at a glance.
pub const PREFIX: &str = "wdn_web_";
/// Longest token name.
const NAME_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("web tokens in {path}: {source}")]
    Db {
        path: String,
        source: rusqlite::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("no token named {0:?}")]
    NotFound(String),
    #[error("a token named {0:?} exists already (revoke it first)")]
    Exists(String),
}

/// One stored token: never the secret.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the secret; not shown by `list`.
    #[serde(skip)]
    pub sha256: String,
    pub created_at_ms: u64,
    /// uid that created it (SO_PEERCRED of the request).
    pub created_by_uid: Option<u32>,
    pub expires_at_ms: Option<u64>,
    pub revoked_at_ms: Option<u64>,
}

impl Token {
    fn usable(&self, now_ms: u64) -> bool {
        self.revoked_at_ms.is_none() && self.expires_at_ms.is_none_or(|t| now_ms < t)
    }
}

/// The caller a request was made for, once its token checked out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The token's name (audited; the secret never is).
    pub token: String,
    pub role: Role,
}

pub struct TokenStore {
    conn: Connection,
    path: String,
    tokens: Vec<Token>,
}

impl TokenStore {
    /// Opens the table in `state_dir/warden.db` (created by the audit's
    /// migrations, which run first).
    pub fn open(state_dir: &Path) -> Result<TokenStore, TokenError> {
        let db = state_dir.join(warden_core::audit::schema::DB_FILE);
        let path = db.display().to_string();
        let conn = warden_core::audit::schema::open_writer(&db)
            .map_err(|e| TokenError::Invalid(format!("web tokens: cannot open {path}: {e}")))?;
        let mut s = TokenStore {
            conn,
            path,
            tokens: Vec::new(),
        };
        s.tokens = s.load().map_err(|e| s.db(e))?;
        Ok(s)
    }

    fn db(&self, source: rusqlite::Error) -> TokenError {
        TokenError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn load(&self) -> rusqlite::Result<Vec<Token>> {
        let mut st = self.conn.prepare(
            "SELECT name, role, sha256, created_at_ms, created_by_uid, expires_at_ms, revoked_at_ms
             FROM web_tokens ORDER BY created_at_ms, name",
        )?;
        let rows = st.query_map([], |r| {
            let role: String = r.get(1)?;
            Ok(Token {
                name: r.get(0)?,
                // An unknown role in the file reads as the least one.
                role: role.parse().unwrap_or(Role::Viewer),
                sha256: r.get(2)?,
                created_at_ms: r.get::<_, i64>(3)? as u64,
                created_by_uid: r.get(4)?,
                expires_at_ms: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                revoked_at_ms: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
            })
        })?;
        rows.collect()
    }

    /// Makes a token; returns it and its secret (shown once).
    pub fn create(
        &mut self,
        name: &str,
        role: Role,
        expires: Option<&str>,
        uid: Option<u32>,
        now_ms: u64,
    ) -> Result<(Token, String), TokenError> {
        check_name(name)?;
        let expires_at_ms = match expires {
            None => None,
            Some(text) => {
                let d = humantime::parse_duration(text).map_err(|e| {
                    TokenError::Invalid(format!("expires {text:?}: {e} (e.g. 90d, 12h)"))
                })?;
                if d.is_zero() {
                    return Err(TokenError::Invalid("expires must be more than 0".into()));
                }
                Some(now_ms.saturating_add(d.as_millis() as u64))
            }
        };
        if self.tokens.iter().any(|t| t.name == name) {
            return Err(TokenError::Exists(name.into()));
        }
        let secret = format!("{PREFIX}{}", warden_core::crypto::random_hex(32));
        let token = Token {
            name: name.into(),
            role,
            sha256: warden_core::crypto::sha256_hex(secret.as_bytes()),
            created_at_ms: now_ms,
            created_by_uid: uid,
            expires_at_ms,
            revoked_at_ms: None,
        };
        self.conn
            .execute(
                "INSERT INTO web_tokens (name, role, sha256, created_at_ms, created_by_uid, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    token.name,
                    role.as_str(),
                    token.sha256,
                    now_ms as i64,
                    uid,
                    expires_at_ms.map(|v| v as i64)
                ],
            )
            .map_err(|e| self.db(e))?;
        self.tokens.push(token.clone());
        Ok((token, secret))
    }

    /// Every token, oldest first.
    pub fn list(&self) -> &[Token] {
        &self.tokens
    }

    /// Revokes a token by name; a revoked token never works again.
    pub fn revoke(&mut self, name: &str, now_ms: u64) -> Result<Token, TokenError> {
        let i = self
            .tokens
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| TokenError::NotFound(name.into()))?;
        if self.tokens[i].revoked_at_ms.is_none() {
            self.conn
                .execute(
                    "UPDATE web_tokens SET revoked_at_ms = ?1 WHERE name = ?2",
                    params![now_ms as i64, name],
                )
                .map_err(|e| self.db(e))?;
            self.tokens[i].revoked_at_ms = Some(now_ms);
        }
        Ok(self.tokens[i].clone())
    }

    /// The usable token whose digest is `sha256_hex`. Every stored digest is
    /// compared, in constant time, whatever matches.
    pub fn lookup(&self, sha256_hex: &str, now_ms: u64) -> Option<&Token> {
        let mut found = None;
        for t in &self.tokens {
            let same: bool = t.sha256.as_bytes().ct_eq(sha256_hex.as_bytes()).into();
            if same {
                found = Some(t);
            }
        }
        found.filter(|t| t.usable(now_ms))
    }
}

fn check_name(name: &str) -> Result<(), TokenError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(TokenError::Invalid(format!(
            "token name {name:?}: 1 to {NAME_MAX} of A-Z a-z 0-9 . _ - @"
        )))
    }
}

/// Who may send requests on behalf of a token: root and the web user.
#[derive(Debug, Clone, Copy)]
pub struct WebPeer {
    /// uid of `[web] user`, if that user exists.
    pub uid: Option<u32>,
}

impl WebPeer {
    /// Resolves the user name once, at start; an unknown user leaves root
    /// as the only uid that may act on behalf of a token.
    pub fn resolve(user: &str) -> WebPeer {
        WebPeer {
            uid: nix::unistd::User::from_name(user)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw()),
        }
    }
}

/// Decides whether the request may run: `Ok(None)` is the CLI's way (socket
/// permissions and SO_PEERCRED), `Ok(Some)` a web token whose role allows
/// the verb; `Err` is the answer to send instead.
pub fn authorize(
    store: &TokenStore,
    web: WebPeer,
    peer_uid: u32,
    who: Option<&OnBehalfOf>,
    req: &Request,
    now_ms: u64,
) -> Result<Option<Principal>, Response> {
    let from_web = web.uid == Some(peer_uid) && peer_uid != 0;
    let Some(who) = who else {
        // The web service itself holds no authority: only its liveness check
        // goes without a token.
        if from_web && !matches!(req, Request::Ping) {
            return Err(Response::err(
                ErrorKind::Unauthorized,
                "requests from the web service must name a token (on_behalf_of)",
            ));
        }
        return Ok(None);
    };
    if peer_uid != 0 && !from_web {
        return Err(Response::err(
            ErrorKind::Unauthorized,
            "on_behalf_of is accepted only from root and the web service's user",
        ));
    }
    let Some(t) = store.lookup(&who.token_sha256, now_ms) else {
        return Err(Response::err(
            ErrorKind::Unauthorized,
            "unknown, revoked or expired token",
        ));
    };
    let need = req.required_role();
    if t.role < need {
        return Err(Response::err(
            ErrorKind::Forbidden,
            format!(
                "token {:?} has role {}; {} needs {}",
                t.name,
                t.role.as_str(),
                req.name(),
                need.as_str()
            ),
        ));
    }
    Ok(Some(Principal {
        token: t.name.clone(),
        role: t.role,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, TokenStore) {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join(warden_core::audit::schema::DB_FILE);
        drop(warden_core::audit::schema::open_writer(&db).unwrap());
        let s = TokenStore::open(d.path()).unwrap();
        (d, s)
    }

    fn who(secret: &str) -> OnBehalfOf {
        OnBehalfOf {
            token_sha256: warden_core::crypto::sha256_hex(secret.as_bytes()),
        }
    }

    #[test]
    fn secret_is_kept_only_as_its_digest_and_survives_reopen() {
        let (d, mut s) = store();
        let (t, secret) = s
            .create("ci", Role::Operator, Some("90d"), Some(0), 1000)
            .unwrap();
        assert!(secret.starts_with(PREFIX) && secret.len() == PREFIX.len() + 64);
        assert_eq!(t.expires_at_ms, Some(1000 + 90 * 86_400_000));
        let db = std::fs::read(d.path().join("warden.db")).unwrap();
        assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));
        drop(s);
        let s = TokenStore::open(d.path()).unwrap();
        assert_eq!(
            s.lookup(&who(&secret).token_sha256, 2000).unwrap().name,
            "ci"
        );
        assert!(s
            .lookup(&who(&secret).token_sha256, 1000 + 90 * 86_400_000)
            .is_none());
        assert!(serde_json::to_string(&s.list())
            .unwrap()
            .find("sha256")
            .is_none());
    }

    #[test]
    fn roles_web_uid_revocation() {
        let (_d, mut s) = store();
        let (_, viewer) = s.create("v", Role::Viewer, None, None, 1).unwrap();
        let (_, admin) = s.create("a", Role::Admin, None, None, 1).unwrap();
        assert!(matches!(
            s.create("a", Role::Admin, None, None, 1),
            Err(TokenError::Exists(_))
        ));
        assert!(s.create("bad name", Role::Admin, None, None, 1).is_err());
        let web = WebPeer { uid: Some(990) };
        let halt = Request::Halt { reason: "x".into() };
        let kind = |r: Result<Option<Principal>, Response>| r.err().and_then(|r| r.code);
        // CLI: no token, today's rules.
        assert_eq!(authorize(&s, web, 1000, None, &halt, 5).unwrap(), None);
        // The web user without a token: only ping.
        assert_eq!(
            kind(authorize(&s, web, 990, None, &halt, 5)),
            Some(ErrorKind::Unauthorized)
        );
        assert!(authorize(&s, web, 990, None, &Request::Ping, 5).is_ok());
        // A token from another uid is refused.
        assert_eq!(
            kind(authorize(&s, web, 1000, Some(&who(&admin)), &halt, 5)),
            Some(ErrorKind::Unauthorized)
        );
        assert_eq!(
            kind(authorize(&s, web, 990, Some(&who(&viewer)), &halt, 5)),
            Some(ErrorKind::Forbidden)
        );
        let p = authorize(&s, web, 0, Some(&who(&admin)), &halt, 5)
            .unwrap()
            .unwrap();
        assert_eq!(p.token, "a");
        assert!(authorize(&s, web, 990, Some(&who(&viewer)), &Request::Status, 5).is_ok());
        s.revoke("v", 6).unwrap();
        assert_eq!(
            kind(authorize(
                &s,
                web,
                990,
                Some(&who(&viewer)),
                &Request::Status,
                7
            )),
            Some(ErrorKind::Unauthorized)
        );
        assert_eq!(
            kind(authorize(
                &s,
                web,
                990,
                Some(&who("wdn_web_nope")),
                &Request::Status,
                7
            )),
            Some(ErrorKind::Unauthorized)
        );
    }
}
