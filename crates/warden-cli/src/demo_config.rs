//! The embedded configuration of `warden demo`: a well-behaved agent and a
//! hostile one that ignores TERM, forks, and double-forks out of its session.

use std::path::Path;

/// The hostile agent: everything a runaway might do to outlive a stop.
pub const HOSTILE: &str = r#"trap '' TERM
echo "hostile: ignoring SIGTERM, forking workers, escaping my session"
for i in 1 2 3; do (trap '' TERM; while :; do sleep 1; done) & done
setsid sh -c 'trap "" TERM; while :; do sleep 1; done' </dev/null >/dev/null 2>&1 &
( setsid sh -c 'trap "" TERM; exec sleep 100000' </dev/null >/dev/null 2>&1 & )
while :; do echo "hostile: still here"; sleep 2; done
"#;

/// The well-behaved agent.
pub const POLITE: &str = r#"trap 'echo "polite: stopping"; exit 0' TERM
while :; do echo "polite: working"; sleep 2 & wait; done
"#;

/// The demo's configuration, with every path inside `dir`.
pub fn config(dir: &Path, cgroup_root: &str) -> String {
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    format!(
        r#"stop_file   = {stop}
state_dir   = {state}
log_dir     = {log}
socket      = {sock}
grace       = "2s"
cgroup_root = {root}
# A laptop or container may lack a controller; the demo runs anyway and says so.
unenforced_limits = "warn"

[[agent]]
name       = "polite"
command    = ["/bin/sh", "-c", {polite}]
user       = "nobody"
memory_max = "64M"
pids_max   = 16
cpu_max    = 0.5

[[agent]]
name       = "hostile"
command    = ["/bin/sh", "-c", {hostile}]
user       = "nobody"
memory_max = "64M"
pids_max   = 64
cpu_max    = 0.5
restart    = "always"
"#,
        stop = q(&dir.join("STOP").to_string_lossy()),
        state = q(&dir.join("state").to_string_lossy()),
        log = q(&dir.join("log").to_string_lossy()),
        sock = q(&dir.join("control.sock").to_string_lossy()),
        root = q(cgroup_root),
        polite = q(POLITE),
        hostile = q(HOSTILE),
    )
}
