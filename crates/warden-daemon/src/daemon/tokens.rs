//! `warden web`'s tokens: the `on_behalf_of` check every command passes,
//! and the `token-create`, `token-list` and `token-revoke` verbs.

use serde_json::json;

use super::*;
use crate::control_socket::Command;
use crate::web::tokens::{self, Principal, TokenError};
use warden_proto::control::{ErrorKind, Response, Role};

impl Daemon {
    /// `Ok(None)`: a CLI request; `Ok(Some)`: a web token allowed to make
    /// it; `Err`: the refusal to answer (audited).
    pub(super) fn authorize_web(&mut self, c: &Command) -> Result<Option<Principal>, Response> {
        let now = warden_core::clock::now_ms();
        let r = tokens::authorize(
            &self.tokens,
            self.web_peer,
            c.uid,
            c.on_behalf_of.as_ref(),
            &c.request,
            now,
        );
        if let Err(refusal) = &r {
            // Never the digest: it identifies the secret. Queued, not
            // awaited: a refusal changes nothing, and the loop must not wait
            // on the disk for someone guessing tokens (the web limits them
            // per peer address too).
            drop(self.audit.submit(audit_event(
                "web_refused",
                None,
                Some(c.uid),
                json!({
                    "command": c.request.name(),
                    "kind": refusal.code,
                    "why": refusal.error,
                }),
            )));
        }
        r
    }

    pub(super) fn token_create(
        &mut self,
        name: &str,
        role: Role,
        expires: Option<&str>,
        uid: u32,
    ) -> Response {
        let now = warden_core::clock::now_ms();
        match self.tokens.create(name, role, expires, Some(uid), now) {
            Ok((t, secret)) => {
                let _ = self.audit.record(audit_event(
                    "token_created",
                    None,
                    Some(uid),
                    json!({"name": t.name, "role": t.role, "expires_at_ms": t.expires_at_ms}),
                ));
                Response::ok(json!({"token": t, "secret": secret}))
            }
            Err(e) => token_err(e),
        }
    }

    pub(super) fn token_list(&self) -> Response {
        Response::ok(json!({"tokens": self.tokens.list()}))
    }

    pub(super) fn token_revoke(&mut self, name: &str, uid: u32) -> Response {
        let now = warden_core::clock::now_ms();
        match self.tokens.revoke(name, now) {
            Ok(t) => {
                let _ = self.audit.record(audit_event(
                    "token_revoked",
                    None,
                    Some(uid),
                    json!({"name": t.name, "role": t.role}),
                ));
                Response::ok(json!({"token": t}))
            }
            Err(e) => token_err(e),
        }
    }
}

fn token_err(e: TokenError) -> Response {
    let kind = match &e {
        TokenError::Invalid(_) => ErrorKind::BadRequest,
        TokenError::NotFound(_) => ErrorKind::NotFound,
        TokenError::Exists(_) => ErrorKind::Refused,
        TokenError::Db { .. } => ErrorKind::Failed,
    };
    Response::err(kind, e.to_string())
}
