//! The fleet process's side of the control socket: JSON lines, as the CLI
//! speaks them, but async, with one long-lived connection for beats.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use warden_proto::control::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: no answer within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("control socket {path}: {message}")]
    Protocol { path: PathBuf, message: String },
    #[error("daemon refused {verb}: {message}")]
    Refused { verb: &'static str, message: String },
}

/// One connection to the daemon; requests are answered in order.
pub struct Conn {
    path: PathBuf,
    rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    wr: tokio::net::unix::OwnedWriteHalf,
    line: String,
}

impl Conn {
    pub async fn connect(path: &Path) -> Result<Conn, DaemonError> {
        let s = UnixStream::connect(path)
            .await
            .map_err(|source| DaemonError::Io {
                path: path.into(),
                source,
            })?;
        let (rd, wr) = s.into_split();
        Ok(Conn {
            path: path.into(),
            rd: BufReader::new(rd),
            wr,
            line: String::new(),
        })
    }

    /// Sends one request and waits at most `timeout` for its answer.
    pub async fn call(
        &mut self,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, DaemonError> {
        let path = self.path.clone();
        let io = |source| DaemonError::Io {
            path: path.clone(),
            source,
        };
        let mut out = serde_json::to_vec(req).expect("request serializes");
        out.push(b'\n');
        let exchange = async {
            self.wr.write_all(&out).await.map_err(io)?;
            self.line.clear();
            let n = self.rd.read_line(&mut self.line).await.map_err(io)?;
            if n == 0 {
                return Err(DaemonError::Protocol {
                    path: path.clone(),
                    message: "connection closed without a response".into(),
                });
            }
            serde_json::from_str::<Response>(&self.line).map_err(|e| DaemonError::Protocol {
                path: path.clone(),
                message: e.to_string(),
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(DaemonError::Timeout {
                path: self.path.clone(),
                timeout,
            }),
        }
    }

    /// Like [`Conn::call`], but a refusal is an error and the answer's data
    /// is returned.
    pub async fn ok(
        &mut self,
        req: &Request,
        timeout: Duration,
    ) -> Result<serde_json::Value, DaemonError> {
        let r = self.call(req, timeout).await?;
        if r.ok {
            Ok(r.data.unwrap_or_default())
        } else {
            Err(DaemonError::Refused {
                verb: req.name(),
                message: r.error.unwrap_or_default(),
            })
        }
    }
}

/// One request on a connection of its own.
pub async fn call(
    path: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, DaemonError> {
    let fut = async {
        let mut c = Conn::connect(path).await?;
        c.ok(req, timeout).await
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(DaemonError::Timeout {
            path: path.into(),
            timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn call_roundtrip_and_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("c.sock");
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (rd, mut wr) = s.into_split();
            let mut rd = BufReader::new(rd);
            let mut line = String::new();
            let mut n = 0;
            while rd.read_line(&mut line).await.unwrap() > 0 {
                let req = warden_proto::control::parse_request(line.trim()).unwrap();
                let resp = if n == 0 {
                    Response::ok(serde_json::json!({"cmd": req.name()}))
                } else {
                    Response::err(warden_proto::control::ErrorKind::Refused, "no")
                };
                n += 1;
                let mut b = serde_json::to_vec(&resp).unwrap();
                b.push(b'\n');
                wr.write_all(&b).await.unwrap();
                line.clear();
            }
        });
        let mut c = Conn::connect(&sock).await.unwrap();
        let t = Duration::from_secs(2);
        let d = c.ok(&Request::FleetBeat, t).await.unwrap();
        assert_eq!(d["cmd"], "fleet-beat");
        let e = c.ok(&Request::FleetBeat, t).await.unwrap_err();
        assert!(e.to_string().contains("refused fleet-beat: no"), "{e}");
        assert!(Conn::connect(&dir.path().join("none")).await.is_err());
    }
}
