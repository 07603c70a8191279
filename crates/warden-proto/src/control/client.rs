//! The CLI's side of the control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("warden daemon is not running (no socket at {path}: {source})")]
    NotRunning {
        path: String,
        source: std::io::Error,
    },
    #[error("permission denied on {path}: run as root or as a member of group warden")]
    Permission { path: String },
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("daemon sent an unreadable response: {0}")]
    Protocol(String),
}

/// Sends one request and waits for its response.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let stream = UnixStream::connect(socket).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning {
                path: path.clone(),
                source,
            }
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Permission { path: path.clone() },
        _ => ClientError::Io {
            path: path.clone(),
            source,
        },
    })?;
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_string(req).expect("request serializes");
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    let mut resp = String::new();
    BufReader::new(&stream).read_line(&mut resp).map_err(io)?;
    if resp.is_empty() {
        return Err(ClientError::Protocol(
            "connection closed without a response".into(),
        ));
    }
    serde_json::from_str(&resp).map_err(|e| ClientError::Protocol(e.to_string()))
}
