//! `GET /api/events`: Server-Sent Events, one per audit entry, `id` = its
//! seq. A client that reconnects with `Last-Event-ID` (or `?since=`) gets
//! every entry after it first. Each stream holds its own daemon connection
//! (`subscribe`) and a bounded queue: a client that does not keep up is
//! dropped (it reconnects and misses nothing); neither the web nor the
//! daemon ever waits for it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::mpsc;
use warden_proto::control::{ErrorKind, STREAM_END};

use crate::api::Query;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

/// Events queued for one client before it counts as too slow.
pub const QUEUE: usize = 256;
/// A comment line this often keeps proxies and clients from timing out.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Replay entries after this seq (`Last-Event-ID` wins if both).
    since: Option<u64>,
}

pub async fn events(
    State(st): State<Arc<AppState>>,
    c: Caller,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .or(q.since);
    let permit = st.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            "too many event streams are open; try again later",
        )
    })?;
    let (first, sub) = st.daemon.subscribe(since, &c.who).await?;
    let Some(mut sub) = sub else {
        if first.code == Some(ErrorKind::Unauthorized) {
            st.limits.failed(c.peer, Instant::now());
        }
        return Err(ApiError::from_kind(
            first.code,
            first.error.unwrap_or_else(|| "refused".into()),
        ));
    };
    let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
    tokio::spawn(async move {
        let _permit = permit;
        loop {
            tokio::select! {
                line = sub.lines.next_line() => {
                    let Ok(Some(line)) = line else { break };
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { break };
                    if v.get(STREAM_END).is_some() {
                        break;
                    }
                    let id = v["seq"].as_u64().unwrap_or(0);
                    let ev = Event::default().id(id.to_string()).data(line);
                    // Full queue: this client is too slow; drop it.
                    if tx.try_send(ev).is_err() {
                        break;
                    }
                }
                _ = tx.closed() => break,
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| o.map(Ok::<_, Infallible>))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEPALIVE))
        .into_response())
}
