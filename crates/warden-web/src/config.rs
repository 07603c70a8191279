//! The `[web]` table of warden's config file, read by `warden web` itself
//! with its own strict struct (the daemon keeps the table opaque), and by
//! `warden check-config` through [`parse`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the daemon's control socket is when the file names none.
pub const DEFAULT_SOCKET: &str = "/run/warden/control.sock";
/// Default listen address: loopback only; put a TLS reverse proxy in front
/// for anything else (docs/web.md).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: [web]: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// `[web]`. Every key has a default, so an absent table runs the web on
/// loopback with the limits below.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Address to listen on (`127.0.0.1:8787`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The system user `warden web` runs as; the daemon accepts
    /// `on_behalf_of` only from it and root (read by the daemon too).
    #[serde(default = "default_user")]
    pub user: String,
    /// Requests per second each token may make, on average.
    #[serde(default = "default_rate")]
    pub rate_per_second: u32,
    /// Requests a token may make at once above the average.
    #[serde(default = "default_burst")]
    pub rate_burst: u32,
    /// Failed authentications per minute one peer address may make before
    /// it is refused without asking the daemon.
    #[serde(default = "default_failed_auth")]
    pub failed_auth_per_minute: u32,
    /// Live event streams open at once (each holds a daemon connection).
    #[serde(default = "default_streams")]
    pub max_streams: usize,
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("default listen address")
}
fn default_user() -> String {
    "warden-web".into()
}
fn default_rate() -> u32 {
    20
}
fn default_burst() -> u32 {
    100
}
fn default_failed_auth() -> u32 {
    10
}
fn default_streams() -> usize {
    64
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: default_listen(),
            user: default_user(),
            rate_per_second: default_rate(),
            rate_burst: default_burst(),
            failed_auth_per_minute: default_failed_auth(),
            max_streams: default_streams(),
        }
    }
}

/// What `warden web` needs from the whole file: `[web]` and the daemon's
/// top-level `socket`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub web: WebConfig,
    pub socket: PathBuf,
}

/// Parses `[web]` (and the top-level `socket`) out of the config text; other
/// tables are the daemon's and are not looked at.
pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_owned(),
        message,
    };
    let mut doc: toml::Table = toml::from_str(text)
        .map_err(|e| invalid(e.to_string().trim_end().replace('\n', "\n  ")))?;
    let web = match doc.remove("web") {
        None => WebConfig::default(),
        Some(toml::Value::Table(t)) => {
            WebConfig::deserialize(t).map_err(|e| invalid(e.to_string().trim_end().to_string()))?
        }
        Some(_) => return Err(invalid("must be a table".into())),
    };
    if web.rate_per_second == 0 || web.rate_burst == 0 {
        return Err(invalid(
            "rate_per_second and rate_burst must be at least 1".into(),
        ));
    }
    if web.max_streams == 0 {
        return Err(invalid("max_streams must be at least 1".into()));
    }
    let socket = match doc.get("socket") {
        Some(toml::Value::String(s)) => PathBuf::from(s),
        _ => PathBuf::from(DEFAULT_SOCKET),
    };
    Ok(Settings { web, socket })
}

/// Reads and parses the file.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_keys_and_refusals() {
        let p = Path::new("t.toml");
        let s = parse("state_dir = \"/x\"\n[[agent]]\nname = \"a\"\n", p).unwrap();
        assert_eq!(s.web, WebConfig::default());
        assert_eq!(s.socket, PathBuf::from(DEFAULT_SOCKET));
        let s = parse(
            "socket = \"/tmp/c.sock\"\n[web]\nlisten = \"127.0.0.1:9000\"\nuser = \"w\"\n",
            p,
        )
        .unwrap();
        assert_eq!(s.web.listen.port(), 9000);
        assert_eq!(s.web.user, "w");
        assert_eq!(s.socket, PathBuf::from("/tmp/c.sock"));
        let e = parse("[web]\nlisten = \"127.0.0.1:1\"\ntls = true\n", p).unwrap_err();
        assert!(e.to_string().contains("tls"), "{e}");
        assert!(parse("[web]\nlisten = \"nonsense\"\n", p).is_err());
        assert!(parse("[web]\nrate_per_second = 0\n", p).is_err());
    }
}
