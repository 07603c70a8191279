//! The privileged daemon: it spawns and supervises agents and serves the
//! control and agent sockets. The halt path's backstop is the separate safety
//! kernel (`warden-kernel`); everything here is the supervisor's own.
//!
//! - [`daemon`]: one struct that owns the state and one loop that turns it.
//! - [`monitor`]: the safety monitors (CPU, memory, forks, disk, host,
//!   tasks, governance), pure logic over samples.
//! - [`killswitch`]: heartbeats, human oversight, two-phase kills, the kill
//!   levels and the agents' revocable credentials.
//! - [`broker`]: the tool broker: registry, argument schemas, the policy
//!   decision, approvals and runs.
//! - [`control_socket`] and [`agent_socket`]: the servers of the control
//!   socket and of each agent's socket.
//! - [`kernel_link`]: the daemon's side of the safety kernel's protocol.
#![deny(unsafe_code)]

pub mod agent_socket;
pub mod broker;
pub mod control_socket;
pub mod daemon;
pub mod kernel_link;
pub mod killswitch;
pub mod monitor;
