//! `warden web`: the unprivileged REST API, live event stream, dashboard and
//! Prometheus metrics. It holds no authority of its own: every request
//! becomes one control-socket request made `on_behalf_of` the caller's
//! bearer token, and the daemon checks the token and its role.
//!
//! - [`config`]: the `[web]` table (its own strict parser).
//! - [`daemon`]: the control-socket client (one connection per request,
//!   one per event stream).
//! - [`auth`] and [`limits`]: bearer tokens, per-token rate limits,
//!   failed-authentication limits per peer.
//! - [`api`]: the REST endpoints; [`events`]: SSE; [`metrics`]: `/metrics`;
//!   [`openapi`]: `/api/openapi.json`; [`dashboard`]: `/` and its assets.
//! - [`error`]: the one error shape, `{"error": {"code", "message"}}`.
//!
//! Plain HTTP on loopback by default; TLS belongs to a reverse proxy in
//! front (docs/web.md).
#![deny(unsafe_code)]
// The OpenAPI document is one large json! literal.
#![recursion_limit = "512"]

pub mod api;
pub mod auth;
pub mod config;
pub mod daemon;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod limits;
pub mod metrics;
pub mod openapi;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue};
use axum::routing::get;
use axum::Router;

use crate::config::Settings;
use crate::daemon::Daemon;
use crate::error::ApiError;
use crate::limits::Limits;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What every handler shares.
pub struct AppState {
    /// The control socket.
    pub daemon: Daemon,
    /// Rate and failed-authentication limits.
    pub limits: Limits,
    /// Event streams open at once (each holds a daemon connection).
    pub streams: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The whole application for `settings`.
pub fn app(settings: &Settings) -> Router {
    let state = Arc::new(AppState {
        daemon: Daemon {
            socket: settings.socket.clone(),
        },
        limits: Limits::new(
            settings.web.rate_per_second,
            settings.web.rate_burst,
            settings.web.failed_auth_per_minute,
        ),
        streams: Arc::new(tokio::sync::Semaphore::new(settings.web.max_streams)),
    });
    api::routes()
        .route("/api/events", get(events::events))
        .route("/metrics", get(metrics::metrics))
        .route("/api/openapi.json", get(openapi::serve))
        .merge(dashboard::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// The dashboard's Content-Security-Policy: nothing inline, nothing from
/// elsewhere, no framing, no forms posting anywhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

async fn security_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    for (k, v) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            HeaderName::from_static("permissions-policy"),
            "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
        ),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    // Answers carry live state and secrets (a new token): never cached.
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

/// Serves on an already-bound listener until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app(&settings).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// `warden web --config FILE`: reads `[web]`, listens, serves until SIGTERM
/// or SIGINT.
pub fn run(config_path: &Path, listen: Option<SocketAddr>) -> Result<(), WebError> {
    let mut settings = config::load(config_path)?;
    if let Some(l) = listen {
        settings.web.listen = l;
    }
    // One thread: the web's work is waiting on sockets, and it shares the
    // host with the agents it watches.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = settings.web.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| WebError::Listen { addr, source })?;
        tracing::info!(
            "warden web listening on http://{} (control socket {})",
            listener.local_addr()?,
            settings.socket.display()
        );
        // SIGTERM/SIGINT stops accepting at once; open event streams never
        // end by themselves, so the rest get a moment, then the process ends.
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            if let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                let _ = tx.send(true);
            }
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        tokio::select! {
            r = serve(listener, settings, stopped(rx.clone())) => r?,
            _ = async {
                stopped(rx).await;
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            } => {}
        }
        Ok(())
    })
}
