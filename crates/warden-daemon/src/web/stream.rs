//! A `subscribe` connection: every audit entry after `since` from the
//! database, then each new one from the audit writer's live feed, one JSON
//! line each, in seq order without gaps or repeats.
//!
//! The daemon is never slowed by a subscriber: the feed is a bounded
//! broadcast that the writer sends into without waiting; a subscriber more
//! than [`FEED_CAPACITY`](warden_core::audit::FEED_CAPACITY) entries behind,
//! or whose socket takes no data for [`WRITE_TIMEOUT`], gets an end line and
//! is disconnected. It reconnects with the last seq it saw and misses
//! nothing. Every stream also ends after [`MAX_LIFETIME`], so that the
//! token behind it is checked again on the reconnect.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast::{self, error::RecvError};
use warden_core::audit::{schema, store, Audit, Entry};
use warden_proto::control::STREAM_END;

/// A write that takes longer ends the stream.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A stream ends after this long: the client reconnects (missing nothing),
/// and its token is checked again, so a revoked token's stream does not
/// outlive the revocation by more than this.
pub const MAX_LIFETIME: Duration = Duration::from_secs(300);
/// Entries read from the database per query while replaying.
const REPLAY_CHUNK: u64 = 500;

/// The live feed, taken before the request is answered so that nothing
/// committed in between is lost (the replay and the feed overlap; repeats
/// are skipped by seq).
pub fn listen(audit: &Audit) -> broadcast::Receiver<Arc<Entry>> {
    audit.subscribe()
}

/// Streams until the peer goes, lags, or the daemon ends.
pub async fn run<W: AsyncWriteExt + Unpin>(
    wr: &mut W,
    audit: &Audit,
    since: Option<u64>,
    mut live: broadcast::Receiver<Arc<Entry>>,
) {
    let deadline = tokio::time::Instant::now() + MAX_LIFETIME;
    let mut last = since.unwrap_or_else(|| audit.head_seq());
    if since.is_some() {
        let state_dir = audit.state_dir().to_owned();
        loop {
            let from = last + 1;
            let chunk = tokio::task::spawn_blocking({
                let state_dir = state_dir.clone();
                move || -> Result<Vec<Entry>, String> {
                    let conn = schema::open_read_only(&state_dir.join(schema::DB_FILE))
                        .map_err(|e| e.to_string())?;
                    store::entries(&conn, from, from + REPLAY_CHUNK - 1).map_err(|e| e.to_string())
                }
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return end(wr, &format!("cannot read the audit log: {e}")).await,
            };
            if chunk.is_empty() {
                break;
            }
            for e in &chunk {
                if !send(wr, e).await {
                    return;
                }
                last = e.seq;
            }
        }
    }
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline, live.recv()).await else {
            return end(wr, "stream lifetime reached: reconnect with the last id").await;
        };
        match next {
            Ok(e) if e.seq <= last => {}
            Ok(e) => {
                if !send(wr, &e).await {
                    return;
                }
                last = e.seq;
            }
            Err(RecvError::Lagged(n)) => {
                return end(
                    wr,
                    &format!("subscriber fell {n} entries behind; reconnect with since={last}"),
                )
                .await
            }
            Err(RecvError::Closed) => return end(wr, "the audit writer stopped").await,
        }
    }
}

async fn send<W: AsyncWriteExt + Unpin>(wr: &mut W, e: &Entry) -> bool {
    let mut line = serde_json::to_vec(e).expect("an entry serializes");
    line.push(b'\n');
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&line)).await,
        Ok(Ok(()))
    )
}

async fn end<W: AsyncWriteExt + Unpin>(wr: &mut W, why: &str) {
    let mut line =
        serde_json::to_vec(&serde_json::json!({ STREAM_END: true, "error": why })).expect("json");
    line.push(b'\n');
    let _ = tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&line)).await;
}
