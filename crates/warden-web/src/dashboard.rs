//! The dashboard at `/`: one page, plain JavaScript, no framework, its
//! three files compiled into the binary. The strict CSP (lib.rs) allows
//! scripts and styles from these files only: nothing inline.
//!
//! The token is typed once and kept in `sessionStorage` (gone with the tab;
//! never a cookie, so no request carries authority the page did not add).
//! The live log reads `/api/events` with `fetch()` and a streamed body
//! rather than `EventSource`, because `EventSource` cannot send an
//! `Authorization` header, and the alternatives (a token in the URL, a
//! cookie) would leak it into logs and history or make it ambient.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::AppState;

pub const INDEX: &str = include_str!("assets/index.html");
pub const SCRIPT: &str = include_str!("assets/app.js");
pub const STYLE: &str = include_str!("assets/app.css");
pub const ICON: &str = include_str!("assets/icon.svg");

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/assets/app.js",
            get(|| async { page(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/app.css",
            get(|| async { page(STYLE, "text/css; charset=utf-8") }),
        )
        .route(
            "/assets/icon.svg",
            get(|| async { page(ICON, "image/svg+xml") }),
        )
        .route(
            "/favicon.ico",
            get(|| async { page(ICON, "image/svg+xml") }),
        )
}

fn page(body: &'static str, kind: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, kind)], body)
}
