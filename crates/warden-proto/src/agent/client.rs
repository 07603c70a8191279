//! The agent's side of its socket, used by `warden agent`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{decode_response, encode_request, AgentRequest, AgentResponse};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent socket {path} is unreachable: {source}")]
    Unreachable {
        path: String,
        source: std::io::Error,
    },
    #[error("permission denied on agent socket {path}: it belongs to another agent")]
    Permission { path: String },
    #[error("agent socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("daemon sent an unreadable response: {0}")]
    Protocol(String),
}

impl ClientError {
    /// True when no daemon could be reached at all (as opposed to an error
    /// in the middle of a conversation).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. } | ClientError::Permission { .. }
        )
    }
}

/// Sends one request and waits for its response.
pub fn call(
    socket: &Path,
    req: &AgentRequest,
    timeout: Duration,
) -> Result<AgentResponse, ClientError> {
    let path = socket.display().to_string();
    let stream = UnixStream::connect(socket).map_err(|source| match source.kind() {
        std::io::ErrorKind::PermissionDenied => ClientError::Permission { path: path.clone() },
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::Unreachable {
                path: path.clone(),
                source,
            }
        }
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
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    (&stream)
        .write_all(encode_request(req).as_bytes())
        .map_err(io)?;
    let mut resp = String::new();
    BufReader::new(&stream).read_line(&mut resp).map_err(io)?;
    if resp.is_empty() {
        return Err(ClientError::Protocol(
            "connection closed without a response".into(),
        ));
    }
    decode_response(&resp).map_err(ClientError::Protocol)
}
