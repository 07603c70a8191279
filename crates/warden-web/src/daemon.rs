//! The web's side of the control socket: one connection per request (a Unix
//! socket connect costs microseconds and keeps no shared state to poison),
//! and one long-lived connection per event stream.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;
use warden_proto::control::{encode_line, OnBehalfOf, Request, Response, MAX_LINE};

/// A hard halt of many processes answers only once they are gone.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest response line read (a case pack can be large).
pub const MAX_RESPONSE: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("warden daemon unavailable at {path}: {message}")]
    Unavailable { path: String, message: String },
    #[error("daemon sent an unreadable response: {0}")]
    Protocol(String),
    #[error("daemon did not answer within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, Clone)]
pub struct Daemon {
    pub socket: PathBuf,
}

/// The reading end of a `subscribe` stream, after its first answer.
pub struct Subscription {
    pub lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    /// Kept so the daemon sees the connection open.
    pub _write: tokio::net::unix::OwnedWriteHalf,
}

impl Daemon {
    async fn connect(&self) -> Result<UnixStream, DaemonError> {
        UnixStream::connect(&self.socket)
            .await
            .map_err(|e| DaemonError::Unavailable {
                path: self.socket.display().to_string(),
                message: e.to_string(),
            })
    }

    /// Sends one request (for `who`, if given) and reads its answer.
    pub async fn call(
        &self,
        req: &Request,
        who: Option<&OnBehalfOf>,
    ) -> Result<Response, DaemonError> {
        let work = async {
            let stream = self.connect().await?;
            let (rd, mut wr) = stream.into_split();
            let line = encode_line(req, who);
            if line.len() > MAX_LINE {
                return Err(DaemonError::Protocol("request too long".into()));
            }
            wr.write_all(line.as_bytes())
                .await
                .map_err(|e| DaemonError::Unavailable {
                    path: self.socket.display().to_string(),
                    message: e.to_string(),
                })?;
            read_response(&mut BufReader::new(rd)).await
        };
        tokio::time::timeout(CALL_TIMEOUT, work)
            .await
            .map_err(|_| DaemonError::Timeout(CALL_TIMEOUT))?
    }

    /// Opens an event stream from `since`; the first answer says whether the
    /// daemon accepted it.
    pub async fn subscribe(
        &self,
        since: Option<u64>,
        who: &OnBehalfOf,
    ) -> Result<(Response, Option<Subscription>), DaemonError> {
        let stream = self.connect().await?;
        let (rd, mut wr) = stream.into_split();
        let line = encode_line(&Request::Subscribe { since }, Some(who));
        wr.write_all(line.as_bytes())
            .await
            .map_err(|e| DaemonError::Unavailable {
                path: self.socket.display().to_string(),
                message: e.to_string(),
            })?;
        let mut rd = BufReader::new(rd);
        let first = tokio::time::timeout(CALL_TIMEOUT, read_response(&mut rd))
            .await
            .map_err(|_| DaemonError::Timeout(CALL_TIMEOUT))??;
        if !first.ok {
            return Ok((first, None));
        }
        Ok((
            first,
            Some(Subscription {
                lines: rd.lines(),
                _write: wr,
            }),
        ))
    }
}

async fn read_response(rd: &mut BufReader<OwnedReadHalf>) -> Result<Response, DaemonError> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let n = (&mut *rd)
        .take(MAX_RESPONSE as u64)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| DaemonError::Protocol(e.to_string()))?;
    if n == 0 {
        return Err(DaemonError::Protocol(
            "connection closed without a response".into(),
        ));
    }
    serde_json::from_slice(&buf).map_err(|e| DaemonError::Protocol(e.to_string()))
}
