//! One-shot commands: `warden fleet halt`, `status` and `resume`.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::Serialize;
use warden_proto::control::Request;

use crate::config::Settings;
use crate::etcd::{connect, within};
use crate::record::{self, Ack, HaltRecord, Keys, Member, NodeState, ResumeRecord};
use crate::{daemon, now_ms, who, Error};

const T: Duration = Duration::from_secs(5);

async fn client(s: &Settings) -> Result<Client, Error> {
    connect(s, T).await
}

async fn get_one(c: &mut Client, key: &str) -> Result<Option<(Vec<u8>, i64)>, Error> {
    let r = within(T, "get", c.get(key, None)).await?;
    Ok(r.kvs()
        .first()
        .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
}

async fn get_prefix(c: &mut Client, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let r = within(
        T,
        "get",
        c.get(prefix, Some(GetOptions::new().with_prefix())),
    )
    .await?;
    Ok(r.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        })
        .collect())
}

fn bad(e: record::RecordError) -> Error {
    Error::EtcdOther(e.to_string())
}

/// Writes a new halt record (the next epoch) and returns it.
pub async fn halt(
    s: &Settings,
    reason: &str,
    nodes: Option<Vec<String>>,
) -> Result<HaltRecord, Error> {
    if reason.trim().is_empty() {
        return Err(Error::Refused("a fleet halt needs a reason".into()));
    }
    let keys = Keys::new(&s.fleet.prefix);
    let mut c = client(s).await?;
    if let Some(n) = &nodes {
        // A misspelt node would be a halt that stops nothing.
        let known: Vec<String> = get_prefix(&mut c, &keys.members())
            .await?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix(&keys.members()).map(str::to_string))
            .collect();
        let unknown: Vec<&String> = n.iter().filter(|n| !known.contains(n)).collect();
        if n.is_empty() || !unknown.is_empty() {
            return Err(Error::Refused(format!(
                "--nodes names no node of this fleet: {unknown:?} (known: {})",
                known.join(", ")
            )));
        }
    }
    for _ in 0..20 {
        let (epoch, rev) = match get_one(&mut c, &keys.epoch()).await? {
            Some((v, rev)) => (
                String::from_utf8_lossy(&v)
                    .trim()
                    .parse::<u64>()
                    .map_err(|e| {
                        Error::EtcdOther(format!("{}: not a number: {e}", keys.epoch()))
                    })?,
                rev,
            ),
            None => (0, 0),
        };
        let rec = HaltRecord {
            v: record::VERSION,
            epoch: epoch + 1,
            reason: reason.into(),
            who: who(),
            targets: nodes.clone(),
            issued_ms: now_ms(),
        };
        // Two operators halting at once get two epochs, never one twice.
        let txn = Txn::new()
            .when([Compare::mod_revision(keys.epoch(), CompareOp::Equal, rev)])
            .and_then([
                TxnOp::put(keys.epoch(), rec.epoch.to_string(), None),
                TxnOp::put(keys.halt(), record::encode(&rec), None),
            ]);
        if within(T, "txn", c.txn(txn)).await?.succeeded() {
            return Ok(rec);
        }
    }
    Err(Error::EtcdOther(
        "could not take the next epoch (contention)".into(),
    ))
}

/// One row of `warden fleet status`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    pub node: String,
    /// Its lease is alive (its fleet process talks to etcd).
    pub alive: bool,
    pub state: Option<NodeState>,
    /// Whether the halt of `FleetStatus::epoch` names it.
    pub targeted: bool,
    pub ack: Option<Ack>,
    /// From the record's issue to the ack (wall clocks of two hosts).
    pub took_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    /// The halt record in force.
    pub halt: Option<HaltRecord>,
    /// The epoch the acks are for: the one in force, else the last one.
    pub epoch: u64,
    /// How the last epoch ended, when it was resumed.
    pub resumed: Option<ResumeRecord>,
    pub nodes: Vec<NodeRow>,
    /// Targeted nodes without an ack for `epoch`.
    pub not_acked: Vec<String>,
}

pub async fn status(s: &Settings) -> Result<FleetStatus, Error> {
    let keys = Keys::new(&s.fleet.prefix);
    let mut c = client(s).await?;
    let halt: Option<HaltRecord> = match get_one(&mut c, &keys.halt()).await? {
        Some((v, _)) => Some(record::decode(&keys.halt(), &v).map_err(bad)?),
        None => None,
    };
    let epoch = match &halt {
        Some(h) => h.epoch,
        None => get_one(&mut c, &keys.epoch())
            .await?
            .and_then(|(v, _)| String::from_utf8_lossy(&v).trim().parse().ok())
            .unwrap_or(0),
    };
    let resumed: Option<ResumeRecord> = match get_one(&mut c, &keys.resume(epoch)).await? {
        Some((v, _)) if halt.is_none() => {
            Some(record::decode(&keys.resume(epoch), &v).map_err(bad)?)
        }
        _ => None,
    };
    let record = halt
        .clone()
        .or_else(|| resumed.as_ref().map(|r| r.halt.clone()));
    let mut rows: BTreeMap<String, NodeRow> = BTreeMap::new();
    let row = |node: &str| NodeRow {
        node: node.into(),
        alive: false,
        state: None,
        targeted: record.as_ref().is_some_and(|h| h.targets(node)),
        ack: None,
        took_ms: None,
    };
    for (k, v) in get_prefix(&mut c, &keys.members()).await? {
        let m: Member = record::decode(&k, &v).map_err(bad)?;
        rows.insert(m.node.clone(), row(&m.node));
    }
    for (k, v) in get_prefix(&mut c, &keys.nodes()).await? {
        let st: NodeState = record::decode(&k, &v).map_err(bad)?;
        let r = rows.entry(st.node.clone()).or_insert_with(|| row(&st.node));
        r.alive = true;
        r.state = Some(st);
    }
    if epoch > 0 {
        for (k, v) in get_prefix(&mut c, &keys.acks(epoch)).await? {
            let a: Ack = record::decode(&k, &v).map_err(bad)?;
            let r = rows.entry(a.node.clone()).or_insert_with(|| row(&a.node));
            r.took_ms = record
                .as_ref()
                .map(|h| a.acked_ms as i64 - h.issued_ms as i64);
            r.ack = Some(a);
        }
    }
    let not_acked = rows
        .values()
        .filter(|r| record.is_some() && r.targeted && r.ack.is_none())
        .map(|r| r.node.clone())
        .collect();
    Ok(FleetStatus {
        halt,
        epoch,
        resumed,
        nodes: rows.into_values().collect(),
        not_acked,
    })
}

/// Clears the fleet halt of `epoch` and resumes this host as `warden resume`
/// does. The local resume comes first: the daemon checks the stop file and
/// the signed authorization, so someone it refuses cannot clear the fleet
/// record either. Every other host stays halted until a human resumes it.
pub async fn resume(
    s: &Settings,
    epoch: u64,
    reason: &str,
    authorization: Option<serde_json::Value>,
) -> Result<(Option<ResumeRecord>, serde_json::Value), Error> {
    if reason.trim().is_empty() {
        return Err(Error::Refused("resume needs a reason".into()));
    }
    let keys = Keys::new(&s.fleet.prefix);
    let mut c = client(s).await?;
    let current = get_one(&mut c, &keys.halt()).await?;
    let halt: Option<(HaltRecord, i64)> = match current {
        Some((v, rev)) => Some((record::decode(&keys.halt(), &v).map_err(bad)?, rev)),
        None => None,
    };
    match &halt {
        Some((h, _)) if h.epoch != epoch => {
            return Err(Error::Refused(format!(
                "the fleet halt in force is epoch {}, not {epoch}",
                h.epoch
            )))
        }
        Some(_) => {}
        None => {
            if get_one(&mut c, &keys.resume(epoch)).await?.is_none() {
                return Err(Error::Refused(format!(
                    "there is no fleet halt epoch {epoch} (none in force, none resumed)"
                )));
            }
        }
    }
    let local = daemon::call(
        &s.socket,
        &Request::Resume {
            reason: reason.into(),
            authorization,
        },
        Duration::from_secs(30),
    )
    .await?;
    let Some((h, rev)) = halt else {
        return Ok((None, local));
    };
    let r = ResumeRecord {
        v: record::VERSION,
        epoch,
        reason: reason.into(),
        who: who(),
        node: s.node.clone(),
        at_ms: now_ms(),
        halt: h,
    };
    let txn = Txn::new()
        .when([Compare::mod_revision(keys.halt(), CompareOp::Equal, rev)])
        .and_then([
            TxnOp::delete(keys.halt(), None),
            TxnOp::put(keys.resume(epoch), record::encode(&r), None),
        ]);
    if !within(T, "txn", c.txn(txn)).await?.succeeded() {
        return Err(Error::Refused(
            "this host resumed, but the fleet record changed meanwhile (a new halt?): run `warden fleet status`".into(),
        ));
    }
    Ok((Some(r), local))
}

/// Runs an async command on a runtime of its own (the CLI is synchronous).
pub fn block_on<T>(f: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::EtcdOther(format!("runtime: {e}")))?
        .block_on(f)
}
