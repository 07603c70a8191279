//! `warden fleet run`: the long-running bridge between etcd and this host's
//! daemon. Three tasks:
//!
//! - **beat**: one long-lived control connection: `fleet-hello`, then a
//!   `fleet-beat` every [`BEAT`]. The daemon hard-halts when the beats stop
//!   (fail closed); each answer carries the daemon's state to publish.
//! - **partition watchdog**: measures, on this host's monotonic clock, how
//!   long ago the last acknowledged lease keepalive was sent. Past
//!   `lease_ttl` the node is cut off: under `halt` it halts itself (before
//!   etcd can expire its lease), under `keep` it says so loudly.
//! - **session**: connect, take a lease, publish the node's state under it,
//!   watch `P/fleet/` from the persisted cursor, halt and ack. Any error
//!   ends the session; a new one starts at once and catches up from the
//!   cursor, so a halt issued while the node was away is still handled
//!   (and recorded as missed).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use serde_json::{json, Value};
use warden_proto::control::Request;

use crate::config::{OnPartition, Settings};
use crate::cursor::Cursor;
use crate::daemon::{self, Conn};
use crate::etcd::{connect, within};
use crate::record::{self, Ack, AgentState, HaltRecord, Keys, Member, NodeState, ResumeRecord};
use crate::{now_ms, Error};

/// How often the fleet process tells the daemon it is alive.
pub const BEAT: Duration = Duration::from_millis(250);
/// How long a daemon call may take (a halt waits for the cgroups to empty).
const DAEMON_CALL: Duration = Duration::from_secs(30);

/// What every task shares.
struct Shared {
    s: Settings,
    keys: Keys,
    cursor_path: PathBuf,
    /// Where `warden fleet status` finds this node's partition state even
    /// when etcd is out of reach.
    local_path: PathBuf,
    cursor: Mutex<Cursor>,
    /// Send time of the last keepalive that etcd acknowledged: the lease
    /// lives at least `lease_ttl` past it.
    last_ack: Mutex<Instant>,
    partition: Mutex<Partition>,
    /// The daemon's last beat answer.
    daemon: Mutex<Option<Value>>,
    daemon_up: AtomicBool,
}

#[derive(Debug, Default, Clone)]
struct Partition {
    /// Cut off now (declared by the watchdog, ended by a new session).
    active: bool,
    since_ms: Option<u64>,
    /// Episodes since this process started.
    count: u64,
}

impl Shared {
    fn ttl(&self) -> Duration {
        self.s.fleet.lease_ttl
    }
    /// Bound on one unary etcd call: well inside the lease.
    fn op_timeout(&self) -> Duration {
        (self.ttl() / 2).clamp(Duration::from_millis(300), Duration::from_secs(2))
    }

    async fn event(&self, kind: &str, epoch: Option<u64>, data: Value) {
        let req = Request::FleetEvent {
            kind: kind.into(),
            epoch,
            data,
        };
        if let Err(e) = daemon::call(&self.s.socket, &req, DAEMON_CALL).await {
            tracing::error!("cannot record fleet event {kind} in the audit log: {e}");
        }
    }

    fn write_local(&self) {
        let p = self.partition.lock().unwrap().clone();
        let v = json!({
            "v": 1,
            "node": self.s.node,
            "partitioned": p.active,
            "since_ms": p.since_ms,
            "partitions": p.count,
            "on_partition": on_partition(self.s.fleet.on_partition),
            "updated_ms": now_ms(),
        });
        let tmp = self.local_path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, v.to_string())
            .and_then(|_| std::fs::rename(&tmp, &self.local_path))
        {
            tracing::warn!("cannot write {}: {e}", self.local_path.display());
        }
    }

    fn node_state(&self) -> NodeState {
        let d = self.daemon.lock().unwrap().clone().unwrap_or_default();
        let p = self.partition.lock().unwrap().clone();
        let state = d["state"].as_str().map(str::to_string);
        NodeState {
            v: record::VERSION,
            node: self.s.node.clone(),
            daemon_up: self.daemon_up.load(Ordering::SeqCst),
            safe_mode: state.as_deref() == Some("safe_mode"),
            state,
            safe_reason: d["safe_reason"].as_str().map(str::to_string),
            agents: d["agents"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|a| AgentState {
                            name: a["name"].as_str().unwrap_or_default().into(),
                            state: a["state"].as_str().unwrap_or_default().into(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            last_halt: d.get("last_halt").filter(|v| !v.is_null()).cloned(),
            epoch: self.cursor.lock().unwrap().epoch,
            on_partition: on_partition(self.s.fleet.on_partition).into(),
            partitions: p.count,
            last_partition_ms: p.since_ms,
            updated_ms: 0,
        }
    }
}

fn on_partition(p: OnPartition) -> &'static str {
    match p {
        OnPartition::Halt => "halt",
        OnPartition::Keep => "keep",
    }
}

/// Runs the bridge until the process is killed.
pub fn run(s: Settings) -> Result<(), Error> {
    std::fs::create_dir_all(&s.fleet.state_dir)
        .map_err(|e| Error::EtcdOther(format!("state dir {}: {e}", s.fleet.state_dir.display())))?;
    let cursor_path = Cursor::path(&s.fleet.state_dir, &s.node);
    let cursor = Cursor::load(&cursor_path)?;
    let sh = Arc::new(Shared {
        keys: Keys::new(&s.fleet.prefix),
        local_path: s.fleet.state_dir.join(format!("local-{}.json", s.node)),
        cursor_path,
        cursor: Mutex::new(cursor),
        // Start-up counts as the last acknowledgement: a node that never
        // reaches etcd is cut off after lease_ttl like any other.
        last_ack: Mutex::new(Instant::now()),
        partition: Mutex::new(Partition::default()),
        daemon: Mutex::new(None),
        daemon_up: AtomicBool::new(false),
        s,
    });
    sh.write_local();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::EtcdOther(format!("runtime: {e}")))?;
    rt.block_on(async move {
        tracing::info!(
            "fleet node {} on {} (lease_ttl {:?}, on_partition {}), cursor revision {} epoch {}",
            sh.s.node,
            sh.s.fleet.endpoints.join(","),
            sh.ttl(),
            on_partition(sh.s.fleet.on_partition),
            cursor.revision,
            cursor.epoch
        );
        tokio::spawn(beat(sh.clone()));
        tokio::spawn(watchdog(sh.clone()));
        let mut last_err = String::new();
        loop {
            if let Err(e) = session(&sh).await {
                let e = e.to_string();
                if e != last_err {
                    tracing::warn!("fleet session ended: {e}");
                    last_err = e;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The daemon's liveness line.
async fn beat(sh: Arc<Shared>) {
    let mut warned = false;
    loop {
        let r: Result<(), daemon::DaemonError> = async {
            let mut c = Conn::connect(&sh.s.socket).await?;
            c.ok(
                &Request::FleetHello {
                    node: sh.s.node.clone(),
                },
                Duration::from_secs(5),
            )
            .await?;
            tracing::info!("hello to the daemon at {}", sh.s.socket.display());
            warned = false;
            loop {
                let d = c.ok(&Request::FleetBeat, Duration::from_secs(2)).await?;
                *sh.daemon.lock().unwrap() = Some(d);
                sh.daemon_up.store(true, Ordering::SeqCst);
                tokio::time::sleep(BEAT).await;
            }
        }
        .await;
        sh.daemon_up.store(false, Ordering::SeqCst);
        if let Err(e) = r {
            if !warned {
                tracing::warn!("daemon beat: {e}");
                warned = true;
            }
        }
        tokio::time::sleep(BEAT).await;
    }
}

/// Declares a partition when no keepalive has been acknowledged for lease_ttl.
async fn watchdog(sh: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        let silent = sh.last_ack.lock().unwrap().elapsed();
        if silent < sh.ttl() {
            continue;
        }
        {
            let mut p = sh.partition.lock().unwrap();
            if p.active {
                continue;
            }
            p.active = true;
            p.count += 1;
            p.since_ms = Some(now_ms().saturating_sub(silent.as_millis() as u64));
        }
        sh.write_local();
        let policy = sh.s.fleet.on_partition;
        let reason = format!(
            "fleet partition: node {} has had no etcd keepalive acknowledged for {} ms (lease_ttl {} ms)",
            sh.s.node,
            silent.as_millis(),
            sh.ttl().as_millis()
        );
        tracing::error!("{reason}; on_partition = {}", on_partition(policy));
        let mut data = json!({
            "silent_ms": silent.as_millis() as u64,
            "lease_ttl_ms": sh.ttl().as_millis() as u64,
            "on_partition": on_partition(policy),
        });
        if policy == OnPartition::Halt {
            let t0 = Instant::now();
            let r = daemon::call(
                &sh.s.socket,
                &Request::FleetHalt {
                    trigger: "fleet_partition".into(),
                    epoch: None,
                    reason: reason.clone(),
                },
                DAEMON_CALL,
            )
            .await;
            data["halt_ms"] = json!(t0.elapsed().as_secs_f64() * 1000.0);
            match r {
                Ok(v) => data["halt"] = v["halt"].clone(),
                Err(e) => {
                    tracing::error!("partition halt failed: {e}");
                    data["error"] = json!(e.to_string());
                }
            }
        }
        sh.event("partition", None, data).await;
    }
}

/// One connection to etcd, from connect to the first error.
async fn session(sh: &Arc<Shared>) -> Result<(), Error> {
    let t = sh.op_timeout();
    let ttl = sh.ttl();
    let mut c = connect(&sh.s, t).await?;
    let sent = Instant::now();
    let lease = within(t, "lease grant", c.lease_grant(sh.s.lease_secs(), None))
        .await?
        .id();
    let (mut keeper, mut ka) = within(t, "lease keepalive", c.lease_keep_alive(lease)).await?;
    // The grant is an acknowledgement too: the lease runs from it.
    *sh.last_ack.lock().unwrap() = sent;
    register(sh, &mut c).await?;
    let mut published = publish(sh, &mut c, lease, None).await?;

    // Catch up, then watch.
    let was_cut = {
        let mut p = sh.partition.lock().unwrap();
        let was = p.active;
        p.active = false;
        was.then(|| p.since_ms)
    };
    let snap = within(
        t,
        "get",
        c.get(sh.keys.fleet(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let sync_rev = snap.header().map(|h| h.revision()).unwrap_or(0);
    if let Some(since) = was_cut {
        sh.write_local();
        tracing::warn!("fleet partition over: etcd reached again, catching up");
        sh.event(
            "partition_end",
            None,
            json!({"since_ms": since, "cut_ms": since.map(|s| now_ms().saturating_sub(s))}),
        )
        .await;
    }
    let missed = was_cut.is_some();
    let from = sh.cursor.lock().unwrap().revision;
    let start = if from > 0 && from < sync_rev {
        from + 1
    } else {
        // First start (or nothing new): the snapshot is the state.
        for kv in snap.kvs() {
            handle(sh, &mut c, kv, missed, sync_rev).await?;
        }
        // From now on a restart replays from here.
        let mut cur = sh.cursor.lock().unwrap();
        if sync_rev > cur.revision {
            cur.revision = sync_rev;
            cur.store(&sh.cursor_path)?;
        }
        drop(cur);
        sync_rev + 1
    };
    let mut watch = within(
        t,
        "watch",
        c.watch(
            sh.keys.fleet(),
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        ),
    )
    .await?;

    let mut ka_tick = tokio::time::interval((ttl / 5).max(Duration::from_millis(100)));
    ka_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pub_tick = tokio::time::interval(Duration::from_millis(500));
    let mut outstanding: VecDeque<Instant> = VecDeque::new();
    loop {
        tokio::select! {
            _ = ka_tick.tick() => {
                // A keepalive unanswered for lease_ttl: the link is gone;
                // start over rather than wait on a dead connection.
                if outstanding.front().is_some_and(|s| s.elapsed() > ttl) {
                    return Err(Error::Timeout("lease keepalive unanswered".into()));
                }
                keeper.keep_alive().await?;
                outstanding.push_back(Instant::now());
            }
            m = ka.message() => {
                match m? {
                    Some(r) if r.ttl() > 0 => {
                        if let Some(s) = outstanding.pop_front() {
                            *sh.last_ack.lock().unwrap() = s;
                        }
                    }
                    Some(_) => return Err(Error::EtcdOther(format!("lease {lease:x} expired"))),
                    None => return Err(Error::EtcdOther("keepalive stream ended".into())),
                }
            }
            m = watch.message() => {
                let r = m?.ok_or_else(|| Error::EtcdOther("watch stream ended".into()))?;
                if r.canceled() {
                    if r.compact_revision() > 0 {
                        // The history since our cursor is gone: take the
                        // snapshot next time.
                        tracing::warn!("watch from revision {start} compacted (now {}): reading the current state", r.compact_revision());
                        sh.cursor.lock().unwrap().revision = 0;
                    }
                    return Err(Error::EtcdOther(format!("watch canceled: {}", r.cancel_reason())));
                }
                for ev in r.events() {
                    if ev.event_type() != EventType::Put {
                        continue;
                    }
                    if let Some(kv) = ev.kv() {
                        handle(sh, &mut c, kv, missed, sync_rev).await?;
                    }
                }
            }
            _ = pub_tick.tick() => {
                published = publish(sh, &mut c, lease, Some(published)).await?;
            }
        }
    }
}

/// First join: `P/members/NODE`, never leased, so a dead node still shows.
async fn register(sh: &Shared, c: &mut Client) -> Result<(), Error> {
    let key = sh.keys.member(&sh.s.node);
    let m = Member {
        v: record::VERSION,
        node: sh.s.node.clone(),
        joined_ms: now_ms(),
    };
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, record::encode(&m), None)]);
    within(sh.op_timeout(), "register", c.txn(txn)).await?;
    Ok(())
}

/// Puts the node's state under its lease when it changed.
async fn publish(
    sh: &Shared,
    c: &mut Client,
    lease: i64,
    last: Option<NodeState>,
) -> Result<NodeState, Error> {
    let st = sh.node_state();
    if last.as_ref() == Some(&st) {
        return Ok(st);
    }
    let mut out = st.clone();
    out.updated_ms = now_ms();
    within(
        sh.op_timeout(),
        "publish",
        c.put(
            sh.keys.node(&sh.s.node),
            record::encode(&out),
            Some(PutOptions::new().with_lease(lease)),
        ),
    )
    .await?;
    Ok(st)
}

/// One put under `P/fleet/`: a halt record or a resume record.
async fn handle(
    sh: &Shared,
    c: &mut Client,
    kv: &KeyValue,
    was_cut: bool,
    sync_rev: i64,
) -> Result<(), Error> {
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    let rev = kv.mod_revision();
    let cur = *sh.cursor.lock().unwrap();
    if key == sh.keys.halt() {
        match record::decode::<HaltRecord>(&key, kv.value()) {
            Ok(rec) if rec.epoch > cur.epoch => {
                // Came in the catch-up after a cut: this node was away when
                // it was issued (or when it landed).
                let missed = was_cut && rev <= sync_rev;
                halt(sh, c, &rec, missed).await?;
            }
            Ok(_) => {}
            Err(e) => tracing::error!("{e}"),
        }
    } else if key.starts_with(&sh.keys.resumes()) {
        match record::decode::<ResumeRecord>(&key, kv.value()) {
            Ok(r) if r.epoch > cur.resumed => {
                tracing::warn!(
                    "fleet halt epoch {} cleared by {} on {}: {}; this host stays halted until a human resumes it here",
                    r.epoch, r.who, r.node, r.reason
                );
                sh.event(
                    "resume",
                    Some(r.epoch),
                    json!({"who": r.who, "node": r.node, "reason": r.reason, "at_ms": r.at_ms}),
                )
                .await;
                sh.cursor.lock().unwrap().resumed = r.epoch;
            }
            Ok(_) => {}
            Err(e) => tracing::error!("{e}"),
        }
    }
    let mut cur = sh.cursor.lock().unwrap();
    if rev > cur.revision {
        cur.revision = rev;
    }
    cur.store(&sh.cursor_path)?;
    Ok(())
}

/// A halt record for this epoch: halt the daemon, ack, audit.
async fn halt(sh: &Shared, c: &mut Client, rec: &HaltRecord, missed: bool) -> Result<(), Error> {
    let seen_ms = now_ms();
    let node = &sh.s.node;
    if !rec.targets(node) {
        tracing::info!("fleet halt epoch {} does not name this node", rec.epoch);
        sh.event(
            "halt_not_targeted",
            Some(rec.epoch),
            json!({"reason": rec.reason, "who": rec.who, "targets": rec.targets}),
        )
        .await;
        sh.cursor.lock().unwrap().epoch = rec.epoch;
        return Ok(());
    }
    let t0 = Instant::now();
    let reason = format!(
        "fleet halt epoch {} by {}: {}",
        rec.epoch, rec.who, rec.reason
    );
    let r = daemon::call(
        &sh.s.socket,
        &Request::FleetHalt {
            trigger: "fleet".into(),
            epoch: Some(rec.epoch),
            reason,
        },
        DAEMON_CALL,
    )
    .await;
    let halt_ms = t0.elapsed().as_secs_f64() * 1000.0;
    // Logged after the halt: nothing ahead of it on the critical path.
    tracing::warn!(
        "fleet halt epoch {} by {}: {}{}; seen {} ms after issue (wall clocks), daemon halt call {halt_ms:.1} ms",
        rec.epoch,
        rec.who,
        rec.reason,
        if missed { " (issued while this node was cut off)" } else { "" },
        seen_ms as i64 - rec.issued_ms as i64,
    );
    let data = match r {
        Ok(d) => d,
        Err(e) => {
            // Not acknowledged and not advanced: the next session retries.
            tracing::error!("fleet halt epoch {}: daemon: {e}", rec.epoch);
            return Err(e.into());
        }
    };
    let h = &data["halt"];
    let ack = Ack {
        v: record::VERSION,
        node: node.clone(),
        epoch: rec.epoch,
        seen_ms,
        acked_ms: now_ms(),
        halt_ms,
        halt_id: h["id"].as_str().map(str::to_string),
        frozen_us: h["timings"]["frozen_us"].as_u64(),
        killed_us: h["timings"]["killed_us"].as_u64(),
        empty_us: h["timings"]["empty_us"].as_u64(),
        processes: h["processes"].as_u64(),
        survivors: h["survivors"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default(),
        missed,
        error: None,
    };
    within(
        sh.op_timeout(),
        "ack",
        c.put(sh.keys.ack(rec.epoch, node), record::encode(&ack), None),
    )
    .await?;
    if missed {
        tracing::warn!(
            "fleet halt epoch {} was issued while this node was cut off; recorded as missed",
            rec.epoch
        );
    }
    sh.event(
        if missed { "halt_missed" } else { "halt" },
        Some(rec.epoch),
        json!({
            "reason": rec.reason, "who": rec.who, "targets": rec.targets,
            "issued_ms": rec.issued_ms, "ack": ack,
        }),
    )
    .await;
    sh.cursor.lock().unwrap().epoch = rec.epoch;
    Ok(())
}
