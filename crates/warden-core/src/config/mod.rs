//! The daemon's configuration: one TOML file, parsed strictly.
//!
//! Unknown keys, bad values and duplicate agent names are errors that name the
//! key and its line. Sizes ("2G") and durations ("5s") are parsed while the TOML
//! is read, so their errors carry the line too.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod diff;
pub mod host;
pub mod limits;
pub mod net;
pub mod output;
pub mod tools;

pub use crate::units::{parse_bytes, Bytes, Dur};
pub use limits::{LimitsConfig, Thresholds};
pub use output::{LogKeys, LogPolicy};
pub use tools::{AgentToolPolicy, DEFAULT_PENDING_TTL};

/// The configuration used by `warden demo` and as the package's default.
pub const DEFAULT_SOCKET: &str = "/run/warden/control.sock";
/// Where the CLI looks for the socket path when `--socket` is not given.
pub const SYSTEM_CONFIG: &str = "/etc/warden/warden.toml";
/// Where the daemon puts the agents' socket directories by default.
pub const DEFAULT_AGENT_SOCKET_DIR: &str = "/run/warden/agents";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: line {line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// What to do with a limit the host cannot enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Unenforced {
    /// Refuse to start the agent (the default: never run without asked-for limits).
    #[default]
    Refuse,
    /// Start it, and show the unenforced limits in its status.
    Warn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Never,
    #[default]
    OnFailure,
    Always,
}

/// Per-process resource limits applied with setrlimit before exec.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rlimits {
    /// RLIMIT_NOFILE: open files.
    #[serde(default = "default_nofile")]
    pub nofile: u64,
    /// RLIMIT_CORE: core dumps are off by default (they leak memory contents).
    #[serde(default)]
    pub core: u64,
    /// RLIMIT_NPROC for the agent's uid, if set.
    pub nproc: Option<u64>,
    /// RLIMIT_FSIZE in bytes, if set.
    pub fsize: Option<Bytes>,
}

fn default_nofile() -> u64 {
    1024
}

impl Default for Rlimits {
    fn default() -> Self {
        Rlimits {
            nofile: default_nofile(),
            core: 0,
            nproc: None,
            fsize: None,
        }
    }
}

/// Crash-loop breaker: `exits` exits within `window` puts the agent in `failed`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CrashLoop {
    pub exits: u32,
    pub window: Dur,
}

impl Default for CrashLoop {
    fn default() -> Self {
        CrashLoop {
            exits: 5,
            window: Dur(Duration::from_secs(60)),
        }
    }
}

/// See [`Config::crash_loop_action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CrashLoopAction {
    #[default]
    Halt,
    Fail,
}

/// `watchdog = { device = "/dev/watchdog", timeout = "30s" }`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    pub device: PathBuf,
    /// Set with WDIOC_SETTIMEOUT; the machine resets this long after the last ping.
    #[serde(default = "default_wd_timeout")]
    pub timeout: Dur,
    /// Ping period while healthy (default: a quarter of the timeout, at most 1s).
    pub interval: Option<Dur>,
    /// Never disarm on exit (no magic close).
    #[serde(default)]
    pub nowayout: bool,
}

fn default_wd_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

fn default_credentials_dir() -> PathBuf {
    PathBuf::from("/run/warden/credentials")
}

fn default_agent_socket_dir() -> PathBuf {
    PathBuf::from(DEFAULT_AGENT_SOCKET_DIR)
}

fn default_monitor_interval() -> Dur {
    Dur(Duration::from_secs(1))
}

/// One `[[agent]]` table. Equality ignores spans (line numbers): a
/// reload compares agents by what they ask for, not where they are written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Unique name, `[a-z0-9-]{1,32}`; names the cgroup and the log file.
    pub name: toml::Spanned<String>,
    /// argv; the first element is an absolute path to the program.
    pub command: toml::Spanned<Vec<String>>,
    /// User the agent runs as (name or numeric uid). Default `nobody`.
    #[serde(default = "default_user")]
    pub user: toml::Spanned<String>,
    /// Group override (name or gid); default the user's primary group.
    pub group: Option<String>,
    /// Running as root must be asked for explicitly; it is audited.
    #[serde(default)]
    pub allow_root: bool,
    /// Extra environment; the agent gets only these plus PATH, HOME, USER, LANG.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; default `/`.
    pub cwd: Option<PathBuf>,
    /// File mode creation mask, octal string like "027". Default "077".
    pub umask: Option<String>,
    /// memory.max (v2) / memory.limit_in_bytes (v1).
    pub memory_max: Option<Bytes>,
    /// pids.max.
    pub pids_max: Option<u64>,
    /// CPU quota in cores (1.5 = 150 ms per 100 ms period).
    pub cpu_max: Option<f64>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Overrides the daemon-wide `unenforced_limits`.
    pub unenforced_limits: Option<Unenforced>,
    #[serde(default)]
    pub rlimits: Rlimits,
    /// Start with the daemon (default true); otherwise only on `warden start`.
    #[serde(default = "yes")]
    pub autostart: bool,
    /// Safety-monitor thresholds for this agent, over the daemon's `[limits]`.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Dead man's switch: the agent must heartbeat over its socket at least
    /// this often, or after `missed` intervals it is halted.
    pub heartbeat: Option<Dur>,
    /// Intervals without a heartbeat that trip the switch (default 3).
    pub missed: Option<u32>,
    /// `free` (default) or `brokered`: a Landlock ruleset lets the agent
    /// execute only its own program (and its interpreter and loader), write
    /// only its `cwd` and `write_paths`, read the library, data and
    /// configuration trees (not /usr/bin) and `read_paths`; its writable
    /// directories are mounted noexec; a seccomp filter refuses ptrace,
    /// mount, modules, keyrings and the like.
    #[serde(default)]
    pub exec: ExecMode,
    /// Brokered mode: more trees the agent may read.
    #[serde(default)]
    pub read_paths: Vec<PathBuf>,
    /// Brokered mode: more directories the agent may write.
    #[serde(default)]
    pub write_paths: Vec<PathBuf>,
    /// `host` (default): the host's network; `none`: an empty network
    /// namespace of its own (no interface but a down loopback); `isolated`:
    /// a namespace of its own joined to the host by a veth link (see
    /// [`crate::netns`]).
    #[serde(default)]
    pub network: NetworkMode,
    /// Messages per second the agent's socket accepts, sustained (default 20).
    #[serde(default = "default_api_rate")]
    pub api_rate: f64,
    /// Messages the agent may send at once above `api_rate` (default 40).
    #[serde(default = "default_api_burst")]
    pub api_burst: u32,
    /// `[agent.broker]`: the tools it may propose and its per-run limits.
    #[serde(default)]
    pub broker: AgentToolPolicy,
    /// Size of its log file before rotation; overrides the top-level key.
    pub log_max: Option<Bytes>,
    /// Rotated log files kept; overrides the top-level key.
    pub log_keep: Option<u32>,
    /// Output drained per second, sustained; overrides the top-level key.
    pub log_rate: Option<Bytes>,
    /// Output drained at once above `log_rate`; overrides the top-level key.
    pub log_burst: Option<Bytes>,
}

/// Which network an agent sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Host,
    None,
    Isolated,
}

/// How freely an agent may run programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExecMode {
    #[default]
    Free,
    Brokered,
}

fn yes() -> bool {
    true
}

fn default_api_rate() -> f64 {
    20.0
}

fn default_api_burst() -> u32 {
    40
}

fn default_user() -> toml::Spanned<String> {
    toml::Spanned::new(0..0, "nobody".to_string())
}

fn default_stop_file() -> PathBuf {
    PathBuf::from("/safety/STOP")
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/warden")
}
fn default_log_dir() -> PathBuf {
    PathBuf::from("/var/log/warden")
}
fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_grace() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_cgroup_root() -> String {
    "auto".into()
}
fn default_socket_group() -> String {
    "warden".into()
}
fn default_backoff() -> Dur {
    Dur(Duration::from_millis(500))
}
fn default_backoff_max() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_empty_deadline() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_liveness_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_kernel_deadline() -> Dur {
    Dur(Duration::from_millis(500))
}
fn default_cgroup_mount() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Its presence halts everything; while it exists nothing starts.
    #[serde(default = "default_stop_file")]
    pub stop_file: PathBuf,
    /// Lock file, latch, database, keys.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Per-agent logs and safety_events.jsonl.
    #[serde(default = "default_log_dir")]
    pub log_dir: PathBuf,
    /// The control socket.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Group allowed to use the control socket (mode 0660); root-only if it does not exist.
    #[serde(default = "default_socket_group")]
    pub socket_group: String,
    /// Orderly stop: TERM, wait this long, then freeze and kill.
    #[serde(default = "default_grace")]
    pub grace: Dur,
    /// How long a killed cgroup may take to report empty before it is reported
    /// loudly and the kill retried.
    #[serde(default = "default_empty_deadline")]
    pub empty_deadline: Dur,
    /// The safety kernel halts everything when the daemon's main loop has
    /// been silent this long (a hang, a deadlock, a blocked disk).
    #[serde(default = "default_liveness_timeout")]
    pub liveness_timeout: Dur,
    /// How long the safety kernel waits, after freezing for the stop file,
    /// for the daemon to capture evidence and kill before it kills by itself.
    #[serde(default = "default_kernel_deadline")]
    pub kernel_deadline: Dur,
    /// Path of warden's cgroup below each hierarchy's mount. "auto": the
    /// daemon's own cgroup when it is delegated to it (systemd), else "/warden".
    #[serde(default = "default_cgroup_root")]
    pub cgroup_root: String,
    /// Where cgroup hierarchies are mounted (tests point this elsewhere).
    #[serde(default = "default_cgroup_mount")]
    pub cgroup_mount: PathBuf,
    /// Default for limits the host cannot enforce.
    #[serde(default)]
    pub unenforced_limits: Unenforced,
    /// First restart delay; doubles per consecutive failure.
    #[serde(default = "default_backoff")]
    pub restart_backoff: Dur,
    /// Cap on the restart delay.
    #[serde(default = "default_backoff_max")]
    pub restart_backoff_max: Dur,
    #[serde(default)]
    pub crash_loop: CrashLoop,
    /// What a crash loop does: `halt` (hard halt, SAFE MODE) or `fail` (only
    /// that agent goes to `failed`).
    #[serde(default)]
    pub crash_loop_action: CrashLoopAction,
    /// Safety-monitor thresholds for every agent and the host.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How often the monitors sample the kernel.
    #[serde(default = "default_monitor_interval")]
    pub monitor_interval: Dur,
    /// Extra paths whose change while the daemon runs is a critical violation
    /// (warden's binary, its config and unit file are always protected).
    #[serde(default)]
    pub protected_paths: Vec<PathBuf>,
    /// Hardware watchdog, pinged only while every health check passes.
    pub watchdog: Option<WatchdogConfig>,
    /// Ed25519 public key (PEM) whose signed authorization `resume` requires.
    pub resume_key: Option<PathBuf>,
    /// Sign the audit head into a checkpoint every this many entries.
    pub checkpoint_every: Option<u64>,
    /// Command (argv) that receives each signed checkpoint as JSON on stdin.
    pub witness_command: Option<Vec<String>>,
    /// Where each agent's own socket lives (`DIR/NAME/agent.sock`).
    #[serde(default = "default_agent_socket_dir")]
    pub agent_socket_dir: PathBuf,
    /// If no human checks in (`warden checkin`) within this, everything halts.
    pub oversight_timeout: Option<Dur>,
    /// Two-phase kills: `execute` must come from another uid than `arm`.
    #[serde(default)]
    pub two_person: bool,
    /// Where each agent's credentials appear as files (`DIR/NAME/CRED`,
    /// 0400, owned by the agent); keep it on a tmpfs such as /run.
    #[serde(default = "default_credentials_dir")]
    pub credentials_dir: PathBuf,
    /// The tool registry (`docs/broker.md`). Read at start and on `warden
    /// reload`; without it every proposal is refused.
    pub tools: Option<PathBuf>,
    /// How long a tool call waits for an operator's approval before its
    /// request expires (default 15m).
    pub approval_timeout: Option<Dur>,
    /// Where `network = "isolated"` agents get their addresses: the agent of
    /// the Nth `[[agent]]` table gets the Nth /30 of it.
    #[serde(default)]
    pub isolated_subnet: net::Subnet,
    /// Every agent's log file is rotated past this size (default 64M).
    pub log_max: Option<Bytes>,
    /// Rotated log files kept per agent (default 3).
    pub log_keep: Option<u32>,
    /// Output drained per agent per second, sustained (default 1M); past it
    /// the agent blocks on its own writes.
    pub log_rate: Option<Bytes>,
    /// Output drained at once above `log_rate` (default 4M).
    pub log_burst: Option<Bytes>,
    /// Time evidence capture may take between freeze and kill (default
    /// 50ms); past it counts replace lists and the evidence says so.
    pub evidence_budget: Option<Dur>,
    /// The `[fleet]` table, kept opaque: `warden fleet` (the unprivileged
    /// etcd bridge) reads it with its own strict struct. The daemon only
    /// needs to know it is there: then the fleet process's liveness is a
    /// health check, and its silence halts the agents.
    #[serde(default)]
    pub fleet: Option<toml::Table>,
    #[serde(default, rename = "agent")]
    pub agents: Vec<AgentConfig>,
    /// `[web]`: read by `warden web` itself (and checked by `warden
    /// check-config` with its parser); the daemon keeps it opaque so it
    /// links none of the web's code. Only `user` matters here (see
    /// [`Config::web_user`]).
    pub web: Option<toml::Table>,
}

/// The web service's default system user (`[web] user`).
pub const DEFAULT_WEB_USER: &str = "warden-web";

impl Config {
    /// The user `warden web` runs as: the only uid besides root whose
    /// requests may carry `on_behalf_of` a web token.
    pub fn web_user(&self) -> String {
        self.web
            .as_ref()
            .and_then(|t| t.get("user"))
            .and_then(|v| v.as_str())
            .unwrap_or(DEFAULT_WEB_USER)
            .to_string()
    }

    /// Reads and validates a config file.
    /// Besides [`Config::parse`], checks the file against the host: not
    /// readable by others while an agent has `env` secrets, and a
    /// `socket_group` that no agent belongs to.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        use std::os::unix::fs::MetadataExt;
        let read = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(read)?;
        let cfg = Self::parse(&text, path)?;
        let mode = std::fs::metadata(path).map_err(read)?.mode();
        host::check_file_mode(&cfg, mode).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        host::check_socket_group(&cfg).map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            line: find_key_line(&text, "socket_group"),
            message,
        })?;
        Ok(cfg)
    }

    /// Parses and validates config text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        cfg.validate(text, path)?;
        Ok(cfg)
    }

    fn validate(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let invalid = |span: std::ops::Range<usize>, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_of(text, span.start),
            message,
        };
        let top = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: find_key_line(text, key),
            message: format!("{key}: {message}"),
        };
        for (key, p) in [
            ("stop_file", &self.stop_file),
            ("state_dir", &self.state_dir),
            ("log_dir", &self.log_dir),
            ("socket", &self.socket),
            ("cgroup_mount", &self.cgroup_mount),
        ] {
            if !p.is_absolute() {
                return Err(top(
                    key,
                    format!("must be an absolute path, got {}", p.display()),
                ));
            }
        }
        if self.stop_file.parent().is_none() || self.stop_file.file_name().is_none() {
            return Err(top(
                "stop_file",
                "must name a file inside a directory".into(),
            ));
        }
        if self.cgroup_root != "auto"
            && (!self.cgroup_root.starts_with('/')
                || self.cgroup_root.contains("..")
                || self.cgroup_root == "/")
        {
            return Err(top(
                "cgroup_root",
                format!(
                    "must be \"auto\" or an absolute cgroup path other than /, got {:?}",
                    self.cgroup_root
                ),
            ));
        }
        let ms = |d: &Dur| d.0.as_millis();
        if !(100..=60_000).contains(&ms(&self.liveness_timeout)) {
            return Err(top(
                "liveness_timeout",
                format!(
                    "must be between 100ms and 60s, got {}",
                    self.liveness_timeout
                ),
            ));
        }
        if !(100..=600_000).contains(&ms(&self.kernel_deadline)) {
            return Err(top(
                "kernel_deadline",
                format!(
                    "must be between 100ms and 10m, got {}",
                    self.kernel_deadline
                ),
            ));
        }
        if self.stop_file.parent() == Some(Path::new("/")) {
            return Err(top(
                "stop_file",
                "must not be directly in / (the safety kernel watches its directory and that directory's parent)".into(),
            ));
        }
        if self.crash_loop.exits == 0 {
            return Err(top("exits", "crash_loop.exits must be at least 1".into()));
        }
        if self.restart_backoff.0 > self.restart_backoff_max.0 {
            return Err(top(
                "restart_backoff",
                "must not exceed restart_backoff_max".into(),
            ));
        }
        if let Err(e) = Thresholds::validate(&self.limits) {
            return Err(top("limits", e));
        }
        if self.monitor_interval.0 < Duration::from_millis(10) {
            return Err(top("monitor_interval", "must be at least 10ms".into()));
        }
        for p in &self.protected_paths {
            if !p.is_absolute() {
                return Err(top(
                    "protected_paths",
                    format!("must be absolute paths, got {}", p.display()),
                ));
            }
        }
        if let Some(w) = &self.watchdog {
            if !w.device.is_absolute() {
                return Err(top("watchdog", "device must be an absolute path".into()));
            }
            if w.timeout.0 < Duration::from_secs(1) {
                return Err(top("watchdog", "timeout must be at least 1s".into()));
            }
            if w.interval
                .is_some_and(|i| i.0.is_zero() || i.0 >= w.timeout.0)
            {
                return Err(top(
                    "watchdog",
                    "interval must be shorter than timeout".into(),
                ));
            }
        }
        if self.witness_command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(top("witness_command", "must not be empty".into()));
        }
        if !self.credentials_dir.is_absolute() {
            return Err(top("credentials_dir", "must be an absolute path".into()));
        }
        if !self.agent_socket_dir.is_absolute() {
            return Err(top("agent_socket_dir", "must be an absolute path".into()));
        }
        if self
            .oversight_timeout
            .is_some_and(|d| d.0 < Duration::from_secs(1))
        {
            return Err(top("oversight_timeout", "must be at least 1s".into()));
        }
        if self.tools.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err(top("tools", "must be an absolute path".into()));
        }
        if self
            .approval_timeout
            .is_some_and(|d| d.0 < Duration::from_secs(1))
        {
            return Err(top("approval_timeout", "must be at least 1s".into()));
        }
        if let Err(e) = LogPolicy::validate(&self.log_keys()) {
            let key = e.split(' ').next().unwrap_or("log_max");
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                line: find_key_line(text, key),
                message: e,
            });
        }
        if let Err(e) = output::validate_evidence_budget(self.evidence_budget) {
            return Err(top("evidence_budget", e));
        }
        if self.checkpoint_every == Some(0) {
            return Err(top("checkpoint_every", "must be at least 1".into()));
        }
        let mut seen = HashSet::new();
        for a in &self.agents {
            let name = a.name.get_ref();
            if !valid_agent_name(name) {
                return Err(invalid(
                    a.name.span(),
                    format!(
                        "agent name {name:?} is invalid: use 1 to 32 characters from [a-z0-9-]"
                    ),
                ));
            }
            if !seen.insert(name.clone()) {
                return Err(invalid(
                    a.name.span(),
                    format!("duplicate agent name {name:?}"),
                ));
            }
            let cmd = a.command.get_ref();
            match cmd.first() {
                None => {
                    return Err(invalid(
                        a.command.span(),
                        format!("agent {name}: command is empty"),
                    ))
                }
                Some(p) if !p.starts_with('/') => {
                    return Err(invalid(
                        a.command.span(),
                        format!("agent {name}: command[0] must be an absolute path, got {p:?}"),
                    ))
                }
                _ => {}
            }
            if cmd.iter().any(|s| s.contains('\0')) {
                return Err(invalid(
                    a.command.span(),
                    format!("agent {name}: command contains a NUL byte"),
                ));
            }
            let user = a.user.get_ref();
            if (user == "root" || user == "0") && !a.allow_root {
                return Err(invalid(
                    a.user.span(),
                    format!("agent {name}: user root needs allow_root = true"),
                ));
            }
            if a.group.as_deref().is_some_and(|g| g == "root" || g == "0") && !a.allow_root {
                return Err(invalid(
                    a.name.span(),
                    format!("agent {name}: group root needs allow_root = true"),
                ));
            }
            if let Some(cpu) = a.cpu_max {
                if !(cpu.is_finite() && cpu > 0.0 && cpu <= 4096.0) {
                    return Err(invalid(
                        a.name.span(),
                        format!(
                            "agent {name}: cpu_max must be a positive number of cores, got {cpu}"
                        ),
                    ));
                }
            }
            if a.pids_max == Some(0) {
                return Err(invalid(
                    a.name.span(),
                    format!("agent {name}: pids_max must be at least 1"),
                ));
            }
            if let Some(m) = &a.memory_max {
                if m.0 < 1 << 20 {
                    return Err(invalid(
                        a.name.span(),
                        format!("agent {name}: memory_max must be at least 1M"),
                    ));
                }
            }
            if let Some(h) = a.heartbeat {
                if h.0 < Duration::from_secs(1) {
                    return Err(invalid(
                        a.name.span(),
                        format!("agent {name}: heartbeat must be at least 1s"),
                    ));
                }
            }
            if a.read_paths
                .iter()
                .chain(&a.write_paths)
                .any(|p| !p.is_absolute())
            {
                return Err(invalid(
                    a.name.span(),
                    format!("agent {name}: read_paths and write_paths must be absolute"),
                ));
            }
            // Brokered mode mounts every writable directory noexec: a system
            // tree there would stop the agent's own libraries from loading,
            // and would let it replace them.
            if a.exec == ExecMode::Brokered {
                if let Some(p) = a.cwd.iter().chain(&a.write_paths).find(|p| {
                    p.as_path() == Path::new("/")
                        || ["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc"]
                            .iter()
                            .any(|t| p.starts_with(t))
                }) {
                    return Err(invalid(
                        a.name.span(),
                        format!(
                            "agent {name}: brokered mode cannot make {} writable (it would be mounted noexec and writable by the agent); give it a directory of its own",
                            p.display()
                        ),
                    ));
                }
            }
            if a.missed == Some(0) {
                return Err(invalid(
                    a.name.span(),
                    format!("agent {name}: missed must be at least 1"),
                ));
            }
            if let Err(e) = LogPolicy::validate(&a.log_keys()) {
                return Err(invalid(a.name.span(), format!("agent {name}: {e}")));
            }
            if let Err(e) = Thresholds::validate(&a.limits) {
                return Err(invalid(a.name.span(), format!("agent {name}: limits: {e}")));
            }
            if let Some(u) = &a.umask {
                if u32::from_str_radix(u, 8).map(|v| v > 0o777).unwrap_or(true) {
                    return Err(invalid(
                        a.name.span(),
                        format!("agent {name}: umask {u:?} is not an octal mode like \"027\""),
                    ));
                }
            }
            if let Some(c) = &a.cwd {
                if !c.is_absolute() {
                    return Err(invalid(
                        a.name.span(),
                        format!("agent {name}: cwd must be an absolute path"),
                    ));
                }
            }
            for k in a.env.keys() {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    return Err(invalid(
                        a.name.span(),
                        format!("agent {name}: invalid environment variable name {k:?}"),
                    ));
                }
            }
            if !(a.api_rate.is_finite() && a.api_rate > 0.0 && a.api_rate <= 100_000.0)
                || a.api_burst == 0
            {
                return Err(invalid(
                    a.name.span(),
                    format!(
                        "agent {name}: api_rate must be in (0, 100000] messages/s and api_burst at least 1"
                    ),
                ));
            }
            let b = &a.broker;
            if !b.tools.is_empty() && self.tools.is_none() {
                return Err(invalid(
                    a.name.span(),
                    format!(
                        "agent {name}: [agent.broker] lists tools but no tool registry is configured (set `tools`)"
                    ),
                ));
            }
            if b.max_steps == Some(0) || b.max_tool_calls == Some(0) {
                return Err(invalid(
                    a.name.span(),
                    format!("agent {name}: broker max_steps and max_tool_calls must be at least 1"),
                ));
            }
            if b.max_runtime.is_some_and(|d| d.is_zero()) {
                return Err(invalid(
                    a.name.span(),
                    format!("agent {name}: broker max_runtime must be longer than 0s"),
                ));
            }
            if a.env.values().any(|v| v.contains('\0')) {
                return Err(invalid(
                    a.name.span(),
                    format!("agent {name}: environment value contains a NUL byte"),
                ));
            }
        }
        let links = self.isolated_subnet.links();
        if let Some((i, a)) = self
            .agents
            .iter()
            .enumerate()
            .filter(|(_, a)| a.network == NetworkMode::Isolated)
            .find(|(i, _)| *i as u64 >= links)
        {
            return Err(top(
                "isolated_subnet",
                format!(
                    "{} holds {links} /30 link(s), one per [[agent]] table in order, but isolated agent {} is table number {}; use a shorter prefix",
                    self.isolated_subnet,
                    a.name(),
                    i + 1
                ),
            ));
        }
        Ok(())
    }

    /// How long an approval request stays pending.
    pub fn approval_ttl(&self) -> Duration {
        self.approval_timeout
            .map(|d| d.0)
            .unwrap_or(DEFAULT_PENDING_TTL)
    }

    /// The agent named `name`.
    pub fn agent(&self, name: &str) -> Option<&AgentConfig> {
        self.agents.iter().find(|a| a.name.get_ref() == name)
    }

    pub fn lock_path(&self) -> PathBuf {
        self.state_dir.join("warden.lock")
    }
    pub fn latch_path(&self) -> PathBuf {
        self.state_dir.join("safe-mode.latch")
    }
    pub fn clean_marker_path(&self) -> PathBuf {
        self.state_dir.join("running")
    }
    /// Thresholds of one agent: defaults, `[limits]`, then its own.
    pub fn thresholds(&self, a: &AgentConfig) -> Thresholds {
        Thresholds::resolve(&[&self.limits, &a.limits])
    }
    /// Output limits of one agent: defaults, top-level keys, then its own.
    pub fn log_policy(&self, a: &AgentConfig) -> LogPolicy {
        LogPolicy::resolve(&[self.log_keys(), a.log_keys()])
    }
    fn log_keys(&self) -> LogKeys {
        LogKeys {
            log_max: self.log_max,
            log_keep: self.log_keep,
            log_rate: self.log_rate,
            log_burst: self.log_burst,
        }
    }
    /// How long evidence capture may take.
    pub fn evidence_budget(&self) -> Duration {
        self.evidence_budget
            .map(|d| d.0)
            .unwrap_or(output::DEFAULT_EVIDENCE_BUDGET)
    }
    /// The watchdog ping period.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.as_ref().map(|w| {
            w.interval
                .map(|i| i.0)
                .unwrap_or_else(|| (w.timeout.0 / 4).min(Duration::from_secs(1)))
        })
    }
}

impl AgentConfig {
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }
    /// The effective policy for unenforceable limits.
    pub fn unenforced(&self, daemon: Unenforced) -> Unenforced {
        self.unenforced_limits.unwrap_or(daemon)
    }
    fn log_keys(&self) -> LogKeys {
        LogKeys {
            log_max: self.log_max,
            log_keep: self.log_keep,
            log_rate: self.log_rate,
            log_burst: self.log_burst,
        }
    }
    pub fn umask_bits(&self) -> u32 {
        self.umask
            .as_deref()
            .and_then(|u| u32::from_str_radix(u, 8).ok())
            .unwrap_or(0o077)
    }
}

/// `[a-z0-9-]{1,32}`.
pub fn valid_agent_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn find_key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .map(|r| r.trim_start().starts_with('='))
                .unwrap_or(false)
        })
        .map(|i| i + 1)
        .unwrap_or(0)
}

/// Reads the `socket` key of the system config, for the CLI's default.
pub fn socket_from_system_config() -> PathBuf {
    std::fs::read_to_string(SYSTEM_CONFIG)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("socket").and_then(|v| v.as_str()).map(PathBuf::from))
        .unwrap_or_else(default_socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("test.toml"))
    }

    const GOOD: &str = r#"
stop_file = "/safety/STOP"
state_dir = "/var/lib/warden"
log_dir   = "/var/log/warden"
socket    = "/run/warden/control.sock"
grace     = "5s"

[[agent]]
name       = "researcher"
command    = ["/usr/bin/python3", "/opt/agents/researcher.py"]
user       = "agent"
env        = { MODEL = "small" }
cwd        = "/var/lib/agents/researcher"
memory_max = "2G"
pids_max   = 256
cpu_max    = 1.5
restart    = "on-failure"
"#;

    #[test]
    fn issue_example_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.grace.0, Duration::from_secs(5));
        let a = &c.agents[0];
        assert_eq!(a.name(), "researcher");
        assert_eq!(a.memory_max, Some(Bytes(2 << 30)));
        assert_eq!(a.pids_max, Some(256));
        assert_eq!(a.cpu_max, Some(1.5));
        assert_eq!(a.restart, RestartPolicy::OnFailure);
        assert_eq!(a.env["MODEL"], "small");
    }

    #[test]
    fn output_keys() {
        let c = parse(
            "log_max = \"1M\"\nlog_keep = 2\nevidence_budget = \"20ms\"\n\n[[agent]]\nname = \"a\"\ncommand = [\"/bin/true\"]\nlog_rate = \"64K\"\n",
        )
        .unwrap();
        let p = c.log_policy(&c.agents[0]);
        assert_eq!((p.max, p.keep, p.rate), (1 << 20, 2, 64 << 10));
        assert_eq!(c.evidence_budget(), Duration::from_millis(20));
        assert_eq!(
            parse("").unwrap().evidence_budget(),
            Duration::from_millis(50)
        );
        let e = err("grace = \"1s\"\nlog_max = \"1K\"\n");
        assert!(e.contains("line 2") && e.contains("log_max"), "{e}");
        let e = err("[[agent]]\nname = \"a\"\ncommand = [\"/bin/true\"]\nlog_keep = 1000\n");
        assert!(e.contains("agent a: log_keep"), "{e}");
        let e = err("evidence_budget = \"0s\"\n");
        assert!(e.contains("evidence_budget"), "{e}");
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.stop_file, PathBuf::from("/safety/STOP"));
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert!(c.agents.is_empty());
    }

    fn err(t: &str) -> String {
        parse(t).unwrap_err().to_string()
    }

    #[test]
    fn brokered_agents_cannot_write_system_trees() {
        let a = "[[agent]]\nname = \"a\"\ncommand = [\"/bin/true\"]\nexec = \"brokered\"\n";
        for bad in [
            "cwd = \"/\"",
            "write_paths = [\"/usr/local\"]",
            "cwd = \"/etc\"",
        ] {
            let e = err(&format!("{a}{bad}\n"));
            assert!(e.contains("brokered mode cannot make"), "{e}");
        }
        assert!(parse(&format!("{a}cwd = \"/srv/agent\"\n")).is_ok());
        // Free agents may use / as their cwd, as before.
        assert!(parse("[[agent]]\nname = \"a\"\ncommand = [\"/bin/true\"]\ncwd = \"/\"\n").is_ok());
    }

    #[test]
    fn group_root_needs_allow_root() {
        let a = "[[agent]]\nname = \"a\"\ncommand = [\"/bin/true\"]\n";
        for g in ["root", "0"] {
            let e = err(&format!("{a}group = \"{g}\"\n"));
            assert!(e.contains("group root needs allow_root"), "{e}");
        }
        assert!(parse(&format!("{a}group = \"root\"\nallow_root = true\n")).is_ok());
    }

    #[test]
    fn durations_that_overflow_are_refused_with_their_line() {
        for d in ["99999999999999999999s", "500000000y"] {
            let e = err(&format!("grace = \"1s\"\nempty_deadline = \"{d}\"\n"));
            assert!(e.contains("line 2") && e.contains(d), "{e}");
        }
        let e = err(
            "[[agent]]\nname = \"a\"\ncommand = [\"/bin/true\"]\nheartbeat = \"400000000000y\"\n",
        );
        assert!(e.contains("invalid duration"), "{e}");
    }

    #[test]
    fn fleet_table_is_accepted_and_kept_opaque() {
        assert!(parse("").unwrap().fleet.is_none());
        let c = parse(&format!(
            "[fleet]\nendpoints = [\"https://e:2379\"]\nwhatever = 1\n{}",
            GOOD.split_once("[[agent]]")
                .map(|(_, a)| format!("[[agent]]{a}"))
                .unwrap()
        ))
        .unwrap();
        assert_eq!(c.fleet.unwrap()["whatever"].as_integer(), Some(1));
        assert_eq!(c.agents.len(), 1);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err("grace = \"1s\"\nfrobnicate = 3\n");
        assert!(e.contains("frobnicate") && e.contains("line 2"), "{e}");
        let e = err("[[agent]]\nname = \"a\"\ncommand = [\"/bin/true\"]\nmemroy_max = \"1G\"\n");
        assert!(e.contains("memroy_max") && e.contains("line 4"), "{e}");
    }

    #[test]
    fn bad_values_name_line() {
        let e = err("grace = \"soon\"\n");
        assert!(
            e.contains("line 1") && e.contains("invalid duration"),
            "{e}"
        );
        let e = err("\n[[agent]]\nname = \"a\"\ncommand = [\"/bin/true\"]\nmemory_max = \"2X\"\n");
        assert!(e.contains("line 5") && e.contains("unknown unit"), "{e}");
        let e =
            err("[[agent]]\nname = \"a\"\ncommand = [\"/bin/true\"]\nrestart = \"sometimes\"\n");
        assert!(e.contains("line 4") && e.contains("sometimes"), "{e}");
        let e = err("[[agent]]\nname = \"a\"\ncommand = [\"/bin/true\"]\npids_max = -1\n");
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn duplicate_and_bad_names() {
        let e = err("[[agent]]\nname = \"a\"\ncommand = [\"/bin/true\"]\n[[agent]]\nname = \"a\"\ncommand = [\"/bin/true\"]\n");
        assert!(
            e.contains("duplicate agent name") && e.contains("line 5"),
            "{e}"
        );
        let e = err("[[agent]]\nname = \"Bad_Name\"\ncommand = [\"/bin/true\"]\n");
        assert!(e.contains("line 2") && e.contains("invalid"), "{e}");
        let e = err(&format!(
            "[[agent]]\nname = \"{}\"\ncommand = [\"/bin/true\"]\n",
            "a".repeat(33)
        ));
        assert!(e.contains("invalid"), "{e}");
    }

    #[test]
    fn root_needs_allow_root() {
        let e = err("[[agent]]\nname = \"a\"\ncommand = [\"/bin/true\"]\nuser = \"root\"\n");
        assert!(e.contains("allow_root") && e.contains("line 4"), "{e}");
        parse("[[agent]]\nname = \"a\"\ncommand = [\"/bin/true\"]\nuser = \"root\"\nallow_root = true\n").unwrap();
    }

    #[test]
    fn command_checks() {
        let e = err("[[agent]]\nname = \"a\"\ncommand = []\n");
        assert!(e.contains("empty") && e.contains("line 3"), "{e}");
        let e = err("[[agent]]\nname = \"a\"\ncommand = [\"python3\"]\n");
        assert!(e.contains("absolute"), "{e}");
        let e = err("[[agent]]\nname = \"a\"\n");
        assert!(e.contains("command"), "{e}");
    }

    #[test]
    fn relative_paths_refused() {
        let e = err("state_dir = \"var/lib\"\n");
        assert!(e.contains("state_dir") && e.contains("line 1"), "{e}");
        let e = err("cgroup_root = \"warden\"\n");
        assert!(e.contains("cgroup_root"), "{e}");
    }

    #[test]
    fn safety_keys() {
        let c = parse(
            "monitor_interval = \"250ms\"\nprotected_paths = [\"/etc/x\"]\n\
             watchdog = { device = \"/dev/watchdog\", timeout = \"10s\" }\n\
             [limits]\nbusy_loop = \"30s\"\nfork_rate = 20\n\
             [[agent]]\nname = \"a\"\ncommand = [\"/bin/true\"]\n[agent.limits]\nfork_rate = 5\n",
        )
        .unwrap();
        let t = c.thresholds(&c.agents[0]);
        assert_eq!(t.fork_rate, 5.0);
        assert_eq!(t.busy_loop, Duration::from_secs(30));
        assert_eq!(c.watchdog_interval(), Some(Duration::from_millis(1000)));
        let e = err("[limits]\nbusy_cpu = 2.0\n");
        assert!(e.contains("busy_cpu"), "{e}");
        let e = err("[limits]\nbusy_lop = \"1s\"\n");
        assert!(e.contains("busy_lop") && e.contains("line 2"), "{e}");
        let e = err(
            "watchdog = { device = \"/dev/watchdog\", timeout = \"10s\", interval = \"20s\" }\n",
        );
        assert!(e.contains("interval"), "{e}");
        let e = err("crash_loop_action = \"explode\"\n");
        assert!(e.contains("explode"), "{e}");
    }

    #[test]
    fn network_modes_and_isolated_subnet() {
        let agent = |n: &str, net: &str| {
            format!("[[agent]]\nname = \"{n}\"\ncommand = [\"/bin/true\"]\nnetwork = \"{net}\"\n")
        };
        let c = parse(&agent("a", "isolated")).unwrap();
        assert_eq!(c.agents[0].network, NetworkMode::Isolated);
        assert_eq!(c.isolated_subnet.to_string(), "10.213.0.0/16");
        let e = err("grace = \"1s\"\nisolated_subnet = \"10.1.0.0/33\"\n");
        assert!(e.contains("line 2") && e.contains("isolated_subnet"), "{e}");
        let e = err("isolated_subnet = \"10.1.0.1/24\"\n");
        assert!(e.contains("line 1") && e.contains("host bits"), "{e}");
        let e = err("isolated_subnet = \"nonsense\"\n");
        assert!(e.contains("line 1") && e.contains("IPv4 block"), "{e}");
        let e = err(&agent("a", "bridged"));
        assert!(e.contains("line 4") && e.contains("bridged"), "{e}");
        // A /30 holds one link: the first table fits, the second does not.
        let two = format!("{}{}", agent("a", "isolated"), agent("b", "isolated"));
        let e = err(&format!("\nisolated_subnet = \"10.1.0.0/30\"\n{two}"));
        assert!(
            e.contains("line 2") && e.contains("isolated_subnet") && e.contains("agent b"),
            "{e}"
        );
        parse(&format!(
            "isolated_subnet = \"10.1.0.0/30\"\n{}{}",
            agent("a", "isolated"),
            agent("b", "none")
        ))
        .unwrap();
        parse(&format!("isolated_subnet = \"10.1.0.0/29\"\n{two}")).unwrap();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert!(parse_bytes("-1G").is_err());
        assert!(parse_bytes("G").is_err());
        assert!(parse_bytes("0").is_err());
    }

    #[test]
    fn names() {
        assert!(valid_agent_name("a-1"));
        assert!(!valid_agent_name(""));
        assert!(!valid_agent_name("../x"));
        assert!(!valid_agent_name("A"));
    }
}
