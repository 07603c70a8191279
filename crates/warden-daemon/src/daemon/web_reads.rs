//! What `warden web` reads: the event stream's start, the metrics
//! counters, and the audit reads, which run on a blocking thread so a long
//! `audit-verify` never holds up the loop (and with it a halt).

use serde_json::json;
use tokio::sync::oneshot;

use super::*;
use warden_proto::control::{ErrorKind, Request, Response};

impl Daemon {
    /// The connection's task streams once this answers (control_socket.rs).
    pub(super) fn subscribe(&self) -> Response {
        Response::ok(json!({"subscribed": true, "head": self.audit.head_seq()}))
    }

    pub(super) fn metrics_json(&self) -> Response {
        Response::ok(self.metrics.to_json(self.audit.head_seq()))
    }

    pub(super) fn answer_read_off_loop(&self, req: Request, reply: oneshot::Sender<Response>) {
        let state_dir = self.cfg.state_dir.clone();
        tokio::spawn(async move {
            let resp =
                tokio::task::spawn_blocking(move || crate::web::reads::answer(&state_dir, &req))
                    .await
                    .unwrap_or_else(|e| Response::err(ErrorKind::Failed, e.to_string()));
            let _ = reply.send(resp);
        });
    }
}
