//! The daemon's side of the control socket: accepts connections, reads bounded
//! JSON lines, asks the main loop to act, writes the answer.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use warden_core::audit::Audit;
use warden_proto::control::{
    parse_line, salvage_halt, ErrorKind, OnBehalfOf, Request, Response, MAX_LINE,
};
use warden_proto::frame::{self, Frame};

/// A request for the main loop, with who sent it and where to answer.
#[derive(Debug)]
pub struct Command {
    pub request: Request,
    pub uid: u32,
    pub pid: Option<i32>,
    /// The web token the request is made for (`warden web`), checked by the
    /// main loop (`web::tokens::authorize`) before anything runs.
    pub on_behalf_of: Option<OnBehalfOf>,
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

/// Most control connections open at once. Each costs a descriptor; without
/// a cap, idle connections could use up the daemon's descriptors and with
/// them its ability to read cgroups during a halt. Over the cap a new
/// connection gets one error line and is closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections kept for root beyond [`MAX_CONNECTIONS`], so that members of
/// the socket's group cannot lock root out (`warden halt` by root works
/// while the cap is full).
pub const ROOT_RESERVE: usize = 8;
/// A connection that sends no complete request for this long is closed
/// (with an error line): clients that keep one open must reconnect.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Serves until the process ends; each connection gets its own task.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<Command>) {
    serve_with(listener, tx, None).await
}

/// As [`serve`]; with the audit handle, `subscribe` connections get the
/// event stream (see [`crate::web::stream`]).
pub async fn serve_with(listener: UnixListener, tx: mpsc::Sender<Command>, audit: Option<Audit>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let root_slots = Arc::new(Semaphore::new(ROOT_RESERVE));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let permit = slots.clone().try_acquire_owned().or_else(|e| {
                    match stream.peer_cred().map(|c| c.uid()) {
                        Ok(0) => root_slots.clone().try_acquire_owned(),
                        _ => Err(e),
                    }
                });
                match permit {
                    Ok(permit) => {
                        let tx = tx.clone();
                        let audit = audit.clone();
                        tokio::spawn(async move {
                            connection(stream, tx, audit).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tracing::warn!(
                            "control socket: {MAX_CONNECTIONS} connections open; refusing another"
                        );
                        tokio::spawn(refuse(stream));
                    }
                }
            }
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Tells a connection over the cap why it is closed, then closes it.
async fn refuse(stream: UnixStream) {
    let (_, mut wr) = stream.into_split();
    let r = Response::err(
        ErrorKind::Refused,
        format!(
            "too many control connections ({MAX_CONNECTIONS} open); close idle ones and try again"
        ),
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), write(&mut wr, &r)).await;
}

async fn connection(stream: UnixStream, tx: mpsc::Sender<Command>, audit: Option<Audit>) {
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
        let frame = {
            match tokio::time::timeout(IDLE_TIMEOUT, frame::read_line(&mut rd, &mut line, MAX_LINE))
                .await
            {
                Ok(Ok(Frame::Eof)) | Ok(Err(_)) => return,
                Ok(Ok(f)) => f,
                Err(_) => {
                    let r = Response::err(
                        ErrorKind::Refused,
                        format!(
                            "idle for {}; closing",
                            humantime::format_duration(IDLE_TIMEOUT)
                        ),
                    );
                    let _ = write(&mut wr, &r).await;
                    return;
                }
            }
        };
        if frame == Frame::TooLong {
            // A halt is never refused for its size; anything else is.
            let r = match salvage_halt(&line) {
                Some(request) => ask(&tx, request, uid, pid, None).await,
                None => Some(Response::err(
                    ErrorKind::BadRequest,
                    format!("bad request: line longer than {MAX_LINE} bytes"),
                )),
            };
            if let Some(r) = r {
                let _ = write(&mut wr, &r).await;
            }
            return;
        }
        let resp = match std::str::from_utf8(&line)
            .map_err(|_| "bad request: not UTF-8".to_string())
            .and_then(|s| parse_line(s.trim()))
        {
            Err(e) => Response::err(ErrorKind::BadRequest, e),
            Ok((request, on_behalf_of)) => {
                let since = match &request {
                    Request::Subscribe { since } => Some(*since),
                    _ => None,
                };
                // Listen before the main loop answers: nothing committed in
                // between is lost.
                let live = since.and(audit.as_ref()).map(crate::web::stream::listen);
                let Some(resp) = ask(&tx, request, uid, pid, on_behalf_of).await else {
                    return;
                };
                if let (Some(since), true) = (since, resp.ok) {
                    if write(&mut wr, &resp).await.is_err() {
                        return;
                    }
                    match (audit.as_ref(), live) {
                        (Some(audit), Some(live)) => {
                            crate::web::stream::run(&mut wr, audit, since, live).await
                        }
                        _ => {
                            let r = Response::err(ErrorKind::Failed, "no event feed");
                            let _ = write(&mut wr, &r).await;
                        }
                    }
                    return;
                }
                resp
            }
        };
        if write(&mut wr, &resp).await.is_err() {
            return;
        }
    }
}

/// Hands a request to the main loop and waits for its answer; None when the
/// loop is gone.
async fn ask(
    tx: &mpsc::Sender<Command>,
    request: Request,
    uid: u32,
    pid: Option<i32>,
    on_behalf_of: Option<OnBehalfOf>,
) -> Option<Response> {
    let (reply, rx) = oneshot::channel();
    tx.send(Command {
        request,
        uid,
        pid,
        on_behalf_of,
        reply,
    })
    .await
    .ok()?;
    Some(match rx.await {
        Ok(r) => r,
        Err(_) => Response::err(ErrorKind::Failed, "daemon is shutting down"),
    })
}

async fn write(wr: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> std::io::Result<()> {
    wr.write_all(frame::encode(r).as_bytes()).await
}
