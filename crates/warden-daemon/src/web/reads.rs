//! Audit reads for `warden web` (`audit-tail`, `audit-show`, `audit-verify`,
//! `casepack`): the same code as the CLI's offline verbs, on a read-only
//! connection. They can take long on a big log, so the daemon runs them on
//! a blocking thread, never on its main loop.

use std::path::Path;

use serde_json::json;
use warden_core::audit::{schema, store, verify};
use warden_proto::control::{ErrorKind, Request, Response, AUDIT_TAIL_MAX};

/// Whether `req` is one of these reads.
pub fn is_read(req: &Request) -> bool {
    matches!(
        req,
        Request::AuditTail { .. }
            | Request::AuditShow { .. }
            | Request::AuditVerify
            | Request::Casepack { .. }
    )
}

/// Answers one read against the database in `state_dir`.
pub fn answer(state_dir: &Path, req: &Request) -> Response {
    let db = || {
        schema::open_read_only(&state_dir.join(schema::DB_FILE))
            .map_err(|e| Response::err(ErrorKind::Failed, format!("audit log: {e}")))
    };
    let failed = |e: &dyn std::fmt::Display| Response::err(ErrorKind::Failed, e.to_string());
    match req {
        Request::AuditTail { n } => {
            let n = n.unwrap_or(50).min(AUDIT_TAIL_MAX);
            let conn = match db() {
                Ok(c) => c,
                Err(r) => return r,
            };
            match store::last_entries(&conn, n) {
                Ok(e) => Response::ok(json!({ "entries": e })),
                Err(e) => failed(&e),
            }
        }
        Request::AuditShow { seq } => {
            let conn = match db() {
                Ok(c) => c,
                Err(r) => return r,
            };
            match store::entry(&conn, *seq) {
                Ok(Some(e)) => Response::ok(json!({ "entry": e })),
                Ok(None) => Response::err(ErrorKind::NotFound, format!("no audit entry {seq}")),
                Err(e) => failed(&e),
            }
        }
        Request::AuditVerify => {
            let opts = verify::VerifyOptions {
                state_dir: state_dir.to_owned(),
                pubkey: None,
                against: None,
            };
            match verify::verify(&opts) {
                Ok(r) => Response::ok(json!({
                    "intact": true,
                    "entries": r.entries,
                    "head_hash": r.head_hash,
                    "checkpoints": r.checkpoints,
                    "last_checkpoint": r.last_checkpoint,
                    "evidence": r.evidence,
                    "key_id": r.key_id,
                })),
                // A damaged log is an answer, not an error of the request.
                Err(f) => Response::ok(json!({
                    "intact": false,
                    "finding": f.kind.label(),
                    "seq": f.seq,
                    "message": f.message,
                })),
            }
        }
        Request::Casepack { halt_id } => match warden_core::casepack::export(state_dir, halt_id) {
            // The file's exact bytes, as text: re-printing parsed JSON could
            // change what the signatures cover.
            Ok(p) => Response::ok(json!({
                "halt_id": halt_id,
                "file": String::from_utf8_lossy(&warden_core::casepack::to_bytes(&p)),
            })),
            Err(e) if e.starts_with("no halt") => Response::err(ErrorKind::NotFound, e),
            Err(e) => Response::err(ErrorKind::Failed, e),
        },
        _ => Response::err(ErrorKind::BadRequest, "not an audit read"),
    }
}
