//! The daemon's side of the control socket: accepts connections, reads bounded
//! JSON lines, asks the main loop to act, writes the answer.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use warden_proto::control::{parse_request, ErrorKind, Request, Response, MAX_LINE};
use warden_proto::frame::{self, Frame};

/// A request for the main loop, with who sent it and where to answer.
#[derive(Debug)]
pub struct Command {
    pub request: Request,
    pub uid: u32,
    pub pid: Option<i32>,
    pub reply: oneshot::Sender<Response>,
}

/// Binds the socket: removes a stale one, mode 0660, group `group` if it exists.
pub fn bind(path: &Path, group: &str) -> std::io::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let l = std::os::unix::net::UnixListener::bind(path)?;
    let gid = nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .map(|g| g.gid);
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(gid)).map_err(std::io::Error::from)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serves until the process ends; each connection gets its own task.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<Command>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, tx.clone()));
            }
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, tx: mpsc::Sender<Command>) {
    let Ok(cred) = stream.peer_cred() else {
        return;
    };
    let uid = cred.uid();
    let pid = cred.pid();
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        // Bounded read: a line longer than MAX_LINE is refused, not buffered.
        let frame = match frame::read_line(&mut rd, &mut line, MAX_LINE).await {
            Ok(Frame::Eof) | Err(_) => return,
            Ok(f) => f,
        };
        let resp = if frame == Frame::TooLong {
            let r = Response::err(
                ErrorKind::BadRequest,
                format!("bad request: line longer than {MAX_LINE} bytes"),
            );
            let _ = write(&mut wr, &r).await;
            return;
        } else {
            match std::str::from_utf8(&line)
                .map_err(|_| "bad request: not UTF-8".to_string())
                .and_then(|s| parse_request(s.trim()))
            {
                Err(e) => Response::err(ErrorKind::BadRequest, e),
                Ok(request) => {
                    let (reply, rx) = oneshot::channel();
                    if tx
                        .send(Command {
                            request,
                            uid,
                            pid,
                            reply,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    match rx.await {
                        Ok(r) => r,
                        Err(_) => Response::err(ErrorKind::Failed, "daemon is shutting down"),
                    }
                }
            }
        };
        if write(&mut wr, &resp).await.is_err() {
            return;
        }
    }
}

async fn write(wr: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> std::io::Result<()> {
    wr.write_all(frame::encode(r).as_bytes()).await
}
