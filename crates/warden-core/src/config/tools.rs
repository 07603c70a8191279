//! What one agent may do with tools, as the configuration states it: plain
//! data, read by the tool broker.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::units::Dur;

/// How long a request waits for an operator by default.
pub const DEFAULT_PENDING_TTL: Duration = Duration::from_secs(15 * 60);

/// What one agent may do with tools: the `[agent.broker]` table of its config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentToolPolicy {
    /// Names of registered tools this agent may propose; nothing else.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Proposals per run, whatever their outcome (a refused call is a step too).
    pub max_steps: Option<u32>,
    /// Allowed calls per run.
    pub max_tool_calls: Option<u32>,
    /// Wall-clock time from `run.start` after which no call is allowed.
    #[serde(
        default,
        deserialize_with = "de_opt_dur",
        serialize_with = "ser_opt_dur"
    )]
    pub max_runtime: Option<Duration>,
}

fn de_opt_dur<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Ok(Option::<Dur>::deserialize(d)?.map(|d| d.0))
}

fn ser_opt_dur<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => s.serialize_some(&Dur(*d).to_string()),
        None => s.serialize_none(),
    }
}

impl AgentToolPolicy {
    /// True when any run limit is set: such an agent must open a run first.
    pub fn has_limits(&self) -> bool {
        self.max_steps.is_some() || self.max_tool_calls.is_some() || self.max_runtime.is_some()
    }
}
