//! The wire protocols that cross warden's trust boundaries, and nothing else.
//!
//! - [`frame`]: one framing for every JSON-lines socket: a bounded line, a
//!   version, one error shape.
//! - [`control`]: the control socket between the daemon and its clients
//!   (`warden` CLI, `warden web`, `warden fleet`).
//! - [`agent`]: each agent's own socket (heartbeat, tasks, the broker's
//!   messages).
//!
//! The unprivileged processes (`warden web`, `warden fleet`) depend on this
//! crate only, never on the daemon's internals.
#![deny(unsafe_code)]

pub mod agent;
pub mod control;
pub mod frame;
