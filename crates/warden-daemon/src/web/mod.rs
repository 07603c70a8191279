//! What the daemon does for `warden web`, without any HTTP: its API tokens
//! and their roles ([`tokens`]), the counters behind `/metrics`
//! ([`metrics`]), the audit reads it answers off the main loop ([`reads`])
//! and the event stream of a `subscribe` connection ([`stream`]).
//!
//! The web process is unprivileged and holds no secret: it sends the SHA-256
//! of the bearer token it was given as `on_behalf_of`, and the daemon decides
//! ([`tokens::authorize`]).

pub mod metrics;
pub mod reads;
pub mod stream;
pub mod tokens;
