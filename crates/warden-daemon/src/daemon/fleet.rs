//! The fleet bridge's verbs and its liveness, a health check when `[fleet]`
//! is configured. The bridge itself (`warden fleet run`, crates/warden-fleet)
//! is an unprivileged control-socket client; the daemon gains no network code.
//!
//! Liveness: after `fleet-hello`, a `fleet-beat` is due every ~250 ms. No
//! beat for [`BEAT_TIMEOUT`], or no hello within [`HELLO_GRACE`] of start,
//! means this host can no longer hear a fleet halt: hard halt (`fleet_lost`),
//! and `resume` is refused until the bridge is back.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::control_socket::Command;
use warden_proto::control::{ErrorKind, Request, Response};

/// Silence after which the fleet bridge counts as lost.
pub(super) const BEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after start the bridge has to say hello.
pub(super) const HELLO_GRACE: Duration = Duration::from_secs(10);

/// Halt triggers the bridge may ask for.
const TRIGGERS: [&str; 2] = ["fleet", "fleet_partition"];

/// What the daemon knows of its fleet bridge.
#[derive(Debug)]
pub(super) struct FleetLink {
    /// `[fleet]` is in the config: the bridge's liveness is a health check.
    configured: bool,
    /// The node name from the last hello.
    node: Option<String>,
    /// The daemon's start: the hello grace runs from it.
    since: Instant,
    /// Last hello or beat.
    last_beat: Option<Instant>,
    /// The bridge is lost, and since when (cleared by the next hello).
    lost: Option<(Instant, String)>,
    beats: u64,
}

impl FleetLink {
    pub(super) fn new(cfg: &Config) -> FleetLink {
        FleetLink {
            configured: cfg.fleet.is_some(),
            node: None,
            since: Instant::now(),
            last_beat: None,
            lost: None,
            beats: 0,
        }
    }

    /// Why the bridge counts as lost at `now`, if it does.
    fn silence(&self, now: Instant) -> Option<String> {
        if !self.configured {
            return None;
        }
        match self.last_beat {
            None if now.duration_since(self.since) > HELLO_GRACE => Some(format!(
                "warden fleet did not say hello within {} s of start",
                HELLO_GRACE.as_secs()
            )),
            Some(b) if now.duration_since(b) > BEAT_TIMEOUT => Some(format!(
                "warden fleet (node {}) silent for {} ms",
                self.node.as_deref().unwrap_or("?"),
                now.duration_since(b).as_millis()
            )),
            _ => None,
        }
    }

    /// When the loop must look again.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        if !self.configured || self.lost.is_some() {
            return None;
        }
        Some(
            match self.last_beat {
                None => self.since + HELLO_GRACE,
                Some(b) => b + BEAT_TIMEOUT,
            } + Duration::from_millis(5),
        )
    }

    pub(super) fn status_json(&self, now: Instant) -> serde_json::Value {
        json!({
            "configured": self.configured,
            "node": self.node,
            "last_beat_ms_ago": self.last_beat.map(|b| now.duration_since(b).as_millis() as u64),
            "beats": self.beats,
            "lost": self.lost.as_ref().map(|(_, r)| r),
        })
    }
}

impl Daemon {
    /// Verbs handled outside the generic audit-then-act path: a beat is not
    /// audited (it comes four times a second), an event is its own audit
    /// record, and a halt acts first. Returns the command back when it is
    /// not one of them.
    pub(super) fn fleet_command(&mut self, c: Command, now: Instant) -> Option<Command> {
        if let Request::FleetHalt {
            trigger,
            epoch,
            reason,
        } = &c.request
        {
            // A halt is the safe direction: it does not wait for a durable
            // audit append (the halt's own record carries trigger, reason,
            // uid and phases). The command is audited right after.
            let (trigger, epoch, reason) = (trigger.clone(), *epoch, reason.clone());
            let r = self.fleet_halt(&trigger, epoch, &reason, c.uid, now);
            let data = serde_json::to_value(&c.request).unwrap_or_default();
            if let Err(e) = self.audit.record(audit_event(
                "command",
                None,
                Some(c.uid),
                json!({"request": data, "pid": c.pid}),
            )) {
                self.audit_failed(&e.to_string());
            }
            let _ = c.reply.send(r);
            return None;
        }
        match c.request {
            Request::FleetBeat => {
                let r = self.fleet_beat(now);
                let _ = c.reply.send(r);
                None
            }
            Request::FleetEvent { kind, epoch, data } => {
                let r = self.fleet_event(&kind, epoch, data, c.uid, c.pid);
                let _ = c.reply.send(r);
                None
            }
            _ => Some(c),
        }
    }

    pub(super) fn fleet_hello(&mut self, node: String, now: Instant) -> Response {
        if !self.fleet.configured {
            return Response::err(
                ErrorKind::Refused,
                "this daemon has no [fleet] table: its fleet bridge would not be watched",
            );
        }
        if let Some((t, why)) = self.fleet.lost.take() {
            tracing::warn!(
                "fleet bridge back after {} ms ({why})",
                now.duration_since(t).as_millis()
            );
        }
        tracing::info!("fleet bridge hello: node {node}");
        self.fleet.node = Some(node);
        self.fleet.last_beat = Some(now);
        Response::ok(self.fleet_state())
    }

    fn fleet_beat(&mut self, now: Instant) -> Response {
        if self.fleet.node.is_none() {
            return Response::err(ErrorKind::Refused, "fleet-beat before fleet-hello");
        }
        // A beat after the bridge was declared lost does not revive it: it
        // has to say hello again, on a new connection.
        if self.fleet.lost.is_some() {
            return Response::err(
                ErrorKind::Refused,
                "fleet bridge was declared lost: hello again",
            );
        }
        self.fleet.last_beat = Some(now);
        self.fleet.beats += 1;
        Response::ok(self.fleet_state())
    }

    /// What the bridge publishes for this node.
    fn fleet_state(&self) -> serde_json::Value {
        let (state, reason) = match &self.mode {
            Mode::Running => ("running", None),
            Mode::Safe(l) => ("safe_mode", Some(l.reason.clone())),
            Mode::ShuttingDown => ("stopping", None),
        };
        let agents: Vec<_> = self
            .slots
            .iter()
            .map(
                |(n, s)| json!({"name": n, "state": kills::state_name(&s.machine.state, s.frozen)}),
            )
            .collect();
        let last = self.last_halt.as_ref().map(|h| {
            json!({"id": h.id, "trigger": h.trigger, "reason": h.reason,
                   "started_at_ms": h.started_at_ms, "timings": h.timings,
                   "processes": h.processes, "survivors": h.survivors})
        });
        json!({"state": state, "safe_reason": reason, "agents": agents, "last_halt": last})
    }

    /// A halt relayed by the bridge: a fleet halt record or a partition.
    pub(super) fn fleet_halt(
        &mut self,
        trigger: &str,
        epoch: Option<u64>,
        reason: &str,
        uid: u32,
        now: Instant,
    ) -> Response {
        if !TRIGGERS.contains(&trigger) {
            return Response::err(
                ErrorKind::BadRequest,
                format!("fleet-halt trigger must be one of {TRIGGERS:?}, not {trigger:?}"),
            );
        }
        if reason.trim().is_empty() {
            return Response::err(ErrorKind::BadRequest, "fleet-halt needs a reason");
        }
        // Already halted and empty (e.g. a node that halted itself when cut
        // off, hearing the fleet halt later): nothing more to stop.
        let populated = self.cg.agents().populated().unwrap_or(true);
        if matches!(self.mode, Mode::Safe(_)) && !populated && self.all_down() {
            return Response::ok(
                json!({"halt": self.last_halt, "already_halted": true, "epoch": epoch}),
            );
        }
        self.hard_halt(trigger, reason, Some(uid), now);
        Response::ok(json!({"halt": self.last_halt, "already_halted": false, "epoch": epoch}))
    }

    /// A fleet event for the audit chain, with the bridge's uid and pid.
    fn fleet_event(
        &mut self,
        kind: &str,
        epoch: Option<u64>,
        data: serde_json::Value,
        uid: u32,
        pid: Option<i32>,
    ) -> Response {
        let ok = !kind.is_empty()
            && kind.len() <= 32
            && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if !ok {
            return Response::err(
                ErrorKind::BadRequest,
                format!("fleet-event kind {kind:?}: lower-case letters and '_', at most 32"),
            );
        }
        let ev = audit_event(
            &format!("fleet_{kind}"),
            None,
            Some(uid),
            json!({"node": self.fleet.node, "epoch": epoch, "pid": pid, "data": data}),
        );
        match self.audit.record(ev) {
            Ok(_) => Response::ok(json!({"recorded": true})),
            Err(e) => {
                self.audit_failed(&e.to_string());
                Response::err(ErrorKind::Failed, format!("audit log unwritable: {e}"))
            }
        }
    }

    /// Resume is refused while the bridge is lost: this host could not hear
    /// a fleet halt.
    pub(super) fn fleet_may_resume(&self, now: Instant) -> Result<(), Response> {
        match self.fleet.silence(now) {
            Some(why) => Err(Response::err(
                ErrorKind::Refused,
                format!("[fleet] is configured and its bridge is lost ({why}): start warden-fleet first"),
            )),
            None => Ok(()),
        }
    }

    /// On every turn: a lost bridge halts a running host.
    pub(super) fn fleet_tick(&mut self, now: Instant) {
        let Some(why) = self.fleet.silence(now) else {
            return;
        };
        if self.fleet.lost.is_none() {
            tracing::error!("fleet bridge lost: {why}");
            self.fleet.lost = Some((now, why.clone()));
        }
        if matches!(self.mode, Mode::Running) {
            self.hard_halt("fleet_lost", &why, None, now);
        }
    }
}
