//! The `[fleet]` table of warden.toml, read by the fleet process with its own
//! strict struct. The daemon keeps the table opaque.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: there is no [fleet] table")]
    NoFleet { path: PathBuf },
    #[error("{path}: [fleet] {message}")]
    Invalid { path: PathBuf, message: String },
}

/// What a node does when it cannot renew its lease for `lease_ttl`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnPartition {
    /// Hard halt: a host that cannot hear a fleet halt stops itself.
    #[default]
    Halt,
    /// Keep running, and say so loudly (log, audit, status).
    Keep,
}

/// The `[fleet]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// etcd client URLs, e.g. `https://10.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// This node's name in the fleet (default: the hostname).
    pub node: Option<String>,
    /// Client certificate (PEM) for mutual TLS with etcd.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// CA (PEM) that signed etcd's server certificate.
    pub ca: Option<PathBuf>,
    /// A node that has no acknowledged keepalive for this long is cut off
    /// (its own clock); also the TTL of its etcd lease, rounded up to seconds.
    #[serde(default = "default_ttl", deserialize_with = "duration")]
    pub lease_ttl: Duration,
    /// `halt` (default) or `keep`.
    #[serde(default)]
    pub on_partition: OnPartition,
    /// The fleet process's own state (last seen revision and epoch).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Root of warden's keys in etcd.
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

fn default_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/warden-fleet")
}
fn default_prefix() -> String {
    "/warden".into()
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
}

/// The parts of warden.toml the fleet process reads; every other key is the
/// daemon's business.
#[derive(Debug, Deserialize)]
struct File {
    socket: Option<PathBuf>,
    fleet: Option<FleetConfig>,
}

/// Everything the fleet process needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub fleet: FleetConfig,
    /// The daemon's control socket.
    pub socket: PathBuf,
    /// This node's name.
    pub node: String,
}

impl Settings {
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        let fleet = file.fleet.ok_or_else(|| ConfigError::NoFleet {
            path: path.to_owned(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        if fleet.endpoints.is_empty() {
            return Err(invalid("endpoints: at least one etcd endpoint".into()));
        }
        let tls = [&fleet.cert, &fleet.key, &fleet.ca];
        let set = tls.iter().filter(|p| p.is_some()).count();
        if set != 0 && set != 3 {
            return Err(invalid(
                "cert, key and ca go together (mutual TLS): set all three or none".into(),
            ));
        }
        for e in &fleet.endpoints {
            let https = e.starts_with("https://");
            if !https && !e.starts_with("http://") {
                return Err(invalid(format!(
                    "endpoints: {e:?} needs a scheme, https:// (or http:// without TLS)"
                )));
            }
            if https != (set == 3) {
                return Err(invalid(format!(
                    "endpoints: {e:?} {}",
                    if https {
                        "is https:// but cert, key and ca are not set"
                    } else {
                        "is http:// but cert, key and ca are set: use https://"
                    }
                )));
            }
        }
        if fleet.lease_ttl < Duration::from_secs(1) {
            return Err(invalid(
                "lease_ttl: at least 1s (etcd leases count seconds)".into(),
            ));
        }
        if !fleet.prefix.starts_with('/') || fleet.prefix.ends_with('/') {
            return Err(invalid(format!(
                "prefix: {:?} must start with / and not end with one",
                fleet.prefix
            )));
        }
        let node = fleet.node.clone().unwrap_or_else(hostname);
        if node.is_empty() || node.contains(['/', ',']) || node.chars().any(char::is_whitespace) {
            return Err(invalid(format!(
                "node: {node:?} must be non-empty without '/', ',' or spaces"
            )));
        }
        Ok(Settings {
            socket: file
                .socket
                .unwrap_or_else(|| PathBuf::from("/run/warden/control.sock")),
            node,
            fleet,
        })
    }

    /// Whether etcd is reached over TLS.
    pub fn tls(&self) -> bool {
        self.fleet.ca.is_some()
    }

    /// The lease's TTL in whole seconds (rounded up).
    pub fn lease_secs(&self) -> i64 {
        let ms = self.fleet.lease_ttl.as_millis() as i64;
        (ms + 999) / 1000
    }
}

/// The kernel's hostname (the UTS namespace's).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Settings, ConfigError> {
        Settings::parse(t, Path::new("w.toml"))
    }

    #[test]
    fn defaults_and_daemon_keys_ignored() {
        let s = parse(
            "state_dir = \"/x\"\nsocket = \"/s.sock\"\n[fleet]\nendpoints = [\"http://10.0.0.1:2379\"]\nnode = \"n1\"\n[[agent]]\nname = \"a\"\n",
        )
        .unwrap();
        assert_eq!(s.node, "n1");
        assert_eq!(s.socket, PathBuf::from("/s.sock"));
        assert_eq!(s.fleet.lease_ttl, Duration::from_secs(5));
        assert_eq!(s.fleet.on_partition, OnPartition::Halt);
        assert_eq!(s.lease_secs(), 5);
        assert!(!s.tls());
    }

    #[test]
    fn strict_fleet_table() {
        let e = parse("[fleet]\nendpoints = [\"http://a:1\"]\nlease_tll = \"3s\"\n").unwrap_err();
        assert!(e.to_string().contains("lease_tll"), "{e}");
        let e =
            parse("[fleet]\nendpoints = [\"http://a:1\"]\non_partition = \"maybe\"\n").unwrap_err();
        assert!(e.to_string().contains("maybe"), "{e}");
        assert!(matches!(
            parse("socket = \"/s\"\n").unwrap_err(),
            ConfigError::NoFleet { .. }
        ));
    }

    #[test]
    fn tls_is_all_or_nothing_and_matches_the_scheme() {
        let e = parse("[fleet]\nendpoints = [\"https://a:1\"]\nca = \"/ca.pem\"\n").unwrap_err();
        assert!(e.to_string().contains("go together"), "{e}");
        let e = parse("[fleet]\nendpoints = [\"https://a:1\"]\n").unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
        let s = parse(
            "[fleet]\nendpoints = [\"https://a:1\"]\nca = \"/ca\"\ncert = \"/c\"\nkey = \"/k\"\nlease_ttl = \"1500ms\"\non_partition = \"keep\"\n",
        )
        .unwrap();
        assert!(s.tls());
        assert_eq!(s.lease_secs(), 2);
        assert_eq!(s.fleet.on_partition, OnPartition::Keep);
        assert!(parse("[fleet]\nendpoints = [\"a:1\"]\n").is_err());
        assert!(parse("[fleet]\nendpoints = []\n").is_err());
        assert!(parse("[fleet]\nendpoints = [\"http://a:1\"]\nlease_ttl = \"100ms\"\n").is_err());
        assert!(parse("[fleet]\nendpoints = [\"http://a:1\"]\nnode = \"a/b\"\n").is_err());
    }
}
