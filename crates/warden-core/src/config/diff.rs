//! What a reload would do: the running config against a new one.
//!
//! Plain data in, plain data out: [`plan`] decides, per agent, whether it is
//! started (added), stopped (removed), restarted (anything but its kernel
//! limits changed), has its limits updated live (only `memory_max`,
//! `pids_max`, `cpu_max` changed) or is unchanged; and, for the daemon-wide
//! keys, which change live and which cannot change while the daemon runs
//! (those refuse the whole reload, each named with its line).

use serde::Serialize;

use super::{AgentConfig, Config, NetworkMode};

/// Daemon-wide keys that a reload may change; each takes effect at once
/// (grace, deadlines and backoff for the next stop or restart, thresholds
/// at the next sample, `unenforced_limits` at the next start).
pub const LIVE_KEYS: &[&str] = &[
    "grace",
    "empty_deadline",
    "unenforced_limits",
    "restart_backoff",
    "restart_backoff_max",
    "crash_loop",
    "crash_loop_action",
    "limits",
    "monitor_interval",
];

/// The per-agent keys a running agent's cgroup takes without a restart.
pub const LIVE_AGENT_KEYS: &[&str] = &["memory_max", "pids_max", "cpu_max"];

/// What happens to one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentChange {
    /// In the new config only: started (unless SAFE MODE, the stop file or
    /// `autostart = false` keep it down).
    Started,
    /// In the running config only: orderly stop, then forgotten.
    Stopped,
    /// Keys other than the live limits changed: orderly stop, start with the
    /// new config. `keys` names them.
    Restarted {
        keys: Vec<String>,
    },
    /// Only kernel limits changed: written to its cgroup, same processes.
    LimitsUpdated {
        keys: Vec<String>,
    },
    Unchanged,
}

impl AgentChange {
    pub fn word(&self) -> &'static str {
        match self {
            AgentChange::Started => "started",
            AgentChange::Stopped => "stopped",
            AgentChange::Restarted { .. } => "restarted",
            AgentChange::LimitsUpdated { .. } => "limits updated",
            AgentChange::Unchanged => "unchanged",
        }
    }
}

/// A daemon-wide key that cannot change while the daemon runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    pub key: String,
    /// Its line in the new file (0 when it is absent there: removed).
    pub line: usize,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// One entry per agent of either config, in the new config's order,
    /// then the removed ones.
    pub agents: Vec<(String, AgentChange)>,
    /// Daemon-wide keys that changed and apply live.
    pub live: Vec<String>,
    /// Daemon-wide keys that changed but cannot change live: the reload is
    /// refused while any is listed.
    pub refused: Vec<Refused>,
}

impl Plan {
    pub fn acceptable(&self) -> bool {
        self.refused.is_empty()
    }

    pub fn change_of(&self, agent: &str) -> Option<&AgentChange> {
        self.agents.iter().find(|(n, _)| n == agent).map(|(_, c)| c)
    }

    /// "cannot change while warden runs: state_dir (line 3), socket (line 5)"
    pub fn refusal(&self) -> Option<String> {
        if self.refused.is_empty() {
            return None;
        }
        let keys: Vec<String> = self
            .refused
            .iter()
            .map(|r| {
                if r.line > 0 {
                    format!("{} (line {})", r.key, r.line)
                } else {
                    r.key.clone()
                }
            })
            .collect();
        Some(format!(
            "cannot change while warden runs (restart the daemon for these): {}",
            keys.join(", ")
        ))
    }

    pub fn to_json(&self) -> serde_json::Value {
        let agents: Vec<serde_json::Value> = self
            .agents
            .iter()
            .map(|(n, c)| {
                let keys = match c {
                    AgentChange::Restarted { keys } | AgentChange::LimitsUpdated { keys } => {
                        keys.clone()
                    }
                    _ => vec![],
                };
                serde_json::json!({"agent": n, "change": c.word(), "keys": keys})
            })
            .collect();
        serde_json::json!({"agents": agents, "live": self.live, "refused": self.refused})
    }
}

/// The agent's keys that differ, by name.
fn agent_keys_changed(a: &AgentConfig, b: &AgentConfig) -> Vec<String> {
    let mut v = Vec::new();
    macro_rules! cmp {
        ($($f:ident),*) => {$(
            if a.$f != b.$f {
                v.push(stringify!($f).to_string());
            }
        )*};
    }
    cmp!(
        command,
        user,
        group,
        allow_root,
        env,
        cwd,
        umask,
        memory_max,
        pids_max,
        cpu_max,
        restart,
        unenforced_limits,
        rlimits,
        autostart,
        limits,
        heartbeat,
        missed,
        exec,
        read_paths,
        write_paths,
        network,
        api_rate,
        api_burst,
        broker
    );
    v
}

/// Compares the running config with `new`; `new_text` (the new file's
/// text) only gives refused keys their line.
pub fn plan(old: &Config, new: &Config, new_text: &str) -> Plan {
    let mut agents = Vec::new();
    // An isolated agent's address comes from its table's position.
    let isolated_index = |c: &Config, name: &str| {
        c.agents
            .iter()
            .position(|a| a.name() == name)
            .filter(|i| c.agents[*i].network == NetworkMode::Isolated)
    };
    for b in &new.agents {
        let name = b.name().to_string();
        let change = match old.agent(&name) {
            None => AgentChange::Started,
            Some(a) => {
                let mut keys = agent_keys_changed(a, b);
                if keys.is_empty() && isolated_index(old, &name) != isolated_index(new, &name) {
                    keys.push("position (isolated_subnet link)".into());
                }
                if keys.is_empty() {
                    AgentChange::Unchanged
                } else if keys.iter().all(|k| LIVE_AGENT_KEYS.contains(&k.as_str())) {
                    AgentChange::LimitsUpdated { keys }
                } else {
                    AgentChange::Restarted { keys }
                }
            }
        };
        agents.push((name, change));
    }
    for a in &old.agents {
        if new.agent(a.name()).is_none() {
            agents.push((a.name().to_string(), AgentChange::Stopped));
        }
    }

    let mut changed: Vec<&'static str> = Vec::new();
    macro_rules! top {
        ($($f:ident),*) => {$(
            if old.$f != new.$f {
                changed.push(stringify!($f));
            }
        )*};
    }
    top!(
        stop_file,
        state_dir,
        log_dir,
        socket,
        socket_group,
        grace,
        empty_deadline,
        cgroup_root,
        cgroup_mount,
        unenforced_limits,
        restart_backoff,
        restart_backoff_max,
        crash_loop,
        crash_loop_action,
        limits,
        monitor_interval,
        protected_paths,
        watchdog,
        resume_key,
        checkpoint_every,
        witness_command,
        agent_socket_dir,
        oversight_timeout,
        two_person,
        credentials_dir,
        tools,
        approval_timeout,
        isolated_subnet
    );
    let (live, refused): (Vec<&str>, Vec<&str>) =
        changed.into_iter().partition(|k| LIVE_KEYS.contains(k));
    Plan {
        agents,
        live: live.into_iter().map(str::to_string).collect(),
        refused: refused
            .into_iter()
            .map(|k| Refused {
                key: k.to_string(),
                line: super::find_key_line(new_text, k),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(t: &str) -> Config {
        Config::parse(t, Path::new("t.toml")).unwrap()
    }

    const BASE: &str = "grace = \"5s\"\n\
        [[agent]]\nname = \"a1\"\ncommand = [\"/bin/sleep\", \"100\"]\n\
        [[agent]]\nname = \"a2\"\ncommand = [\"/bin/sleep\", \"100\"]\nmemory_max = \"64M\"\n\
        [[agent]]\nname = \"a4\"\ncommand = [\"/bin/true\"]\n";

    #[test]
    fn comments_and_moved_lines_change_nothing() {
        let old = cfg(BASE);
        let new = cfg(&format!("# edited by hand\n\n{BASE}# the end\n"));
        let p = plan(&old, &new, "");
        assert!(p.acceptable());
        assert!(p.live.is_empty());
        assert!(
            p.agents.iter().all(|(_, c)| *c == AgentChange::Unchanged),
            "{p:?}"
        );
    }

    #[test]
    fn added_removed_changed_and_limits() {
        let old = cfg(BASE);
        let text = "grace = \"2s\"\n\
        [[agent]]\nname = \"a1\"\ncommand = [\"/bin/sleep\", \"100\"]\npids_max = 10\n\
        [[agent]]\nname = \"a2\"\ncommand = [\"/bin/sleep\", \"200\"]\nmemory_max = \"64M\"\n\
        [[agent]]\nname = \"a3\"\ncommand = [\"/bin/true\"]\n";
        let p = plan(&old, &cfg(text), text);
        assert_eq!(
            p.change_of("a1"),
            Some(&AgentChange::LimitsUpdated {
                keys: vec!["pids_max".into()]
            })
        );
        assert_eq!(
            p.change_of("a2"),
            Some(&AgentChange::Restarted {
                keys: vec!["command".into()]
            })
        );
        assert_eq!(p.change_of("a3"), Some(&AgentChange::Started));
        assert_eq!(p.change_of("a4"), Some(&AgentChange::Stopped));
        assert_eq!(p.live, vec!["grace".to_string()]);
        assert!(p.acceptable());
    }

    #[test]
    fn fixed_keys_are_refused_with_their_line() {
        let old = cfg(BASE);
        let text = format!("state_dir = \"/elsewhere\"\nsocket = \"/run/x.sock\"\n{BASE}");
        let p = plan(&old, &cfg(&text), &text);
        assert!(!p.acceptable());
        let msg = p.refusal().unwrap();
        assert!(
            msg.contains("state_dir (line 1)") && msg.contains("socket (line 2)"),
            "{msg}"
        );
    }
}
