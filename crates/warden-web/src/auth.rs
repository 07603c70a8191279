//! Bearer tokens: taken from `Authorization: Bearer`, never from a cookie
//! (no ambient authority, so no CSRF), hashed at once, and the digest sent
//! to the daemon as `on_behalf_of`; the daemon decides (role, expiry,
//! revocation, constant-time lookup). The web only rate-limits: per token,
//! and failed authentications per peer address. Tokens are never logged.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use warden_proto::control::OnBehalfOf;

use crate::error::ApiError;
use crate::AppState;

/// Longest bearer token looked at.
const TOKEN_MAX: usize = 256;

/// An authenticated-looking caller: a bearer token within its rate.
pub struct Caller {
    pub who: OnBehalfOf,
    pub peer: IpAddr,
}

pub fn peer_of(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, ApiError> {
        let peer = peer_of(parts);
        let now = Instant::now();
        if st.limits.blocked(peer, now) {
            return Err(ApiError::rate_limited(
                "too many failed authentications from this address; wait a minute",
            ));
        }
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= TOKEN_MAX);
        let Some(token) = token else {
            st.limits.failed(peer, now);
            return Err(ApiError::unauthorized(
                "missing bearer token: send Authorization: Bearer <token>",
            ));
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if !st.limits.allow(&digest, now) {
            return Err(ApiError::rate_limited(
                "this token's request rate is exceeded",
            ));
        }
        Ok(Caller {
            who: OnBehalfOf {
                token_sha256: hex::encode(digest),
            },
            peer,
        })
    }
}
