//! The daemon's side of the agent sockets: one listener per agent, bounded
//! JSON lines, a rate limit per agent, and a bounded queue to the main loop.
//!
//! Nothing an agent sends can slow the daemon or another agent: each agent's
//! listener runs in its own task and each connection in its own task; a line
//! is refused (not buffered) past [`Limits::max_line`]; messages over the
//! agent's rate are answered `rate_limited` without reaching the main loop;
//! the main loop's queue is fed with `try_send`, so a full queue is answered
//! `busy` instead of making the agent wait on it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{decode_request, encode_response, AgentRequest, AgentResponse, ErrorCode};

/// Name of the socket file inside the agent's directory.
pub const SOCKET_NAME: &str = "agent.sock";
/// Where the daemon puts the agents' directories by default.
pub const DEFAULT_DIR: &str = "/run/warden/agents";

/// A message for the main loop: which agent sent it and where to answer.
#[derive(Debug)]
pub struct AgentCommand {
    /// The agent whose socket the message came in on (never from the message).
    pub agent: String,
    /// The parsed message; never `whoami`, which the server answers itself.
    pub request: AgentRequest,
    /// The sender's pid at connect time (SO_PEERCRED), for the audit log.
    pub peer_pid: Option<i32>,
    /// Where the main loop sends the answer; dropping it answers `failed`.
    pub reply: oneshot::Sender<AgentResponse>,
}

/// Per-agent bounds. The defaults suit an agent that heartbeats every second
/// and reports a few tasks a day, with a wide margin.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Longest line in bytes, newline included.
    pub max_line: usize,
    /// Sustained messages per second, over all of the agent's connections.
    pub rate_per_sec: f64,
    /// Messages allowed at once above the sustained rate.
    pub burst: u32,
    /// Connections the agent may hold open at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: super::MAX_LINE,
            rate_per_sec: 20.0,
            burst: 40,
            max_connections: 4,
        }
    }
}

/// What each agent's socket has seen, for `warden status` and the audit log.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted from the agent.
    pub connections: AtomicU64,
    /// Messages passed to the main loop (or answered locally: `whoami`).
    pub messages: AtomicU64,
    /// Messages dropped over the rate limit.
    pub rate_limited: AtomicU64,
    /// Messages dropped because the main loop's queue was full.
    pub busy: AtomicU64,
    /// Lines that did not parse, or broke a rule of the protocol.
    pub bad_requests: AtomicU64,
    /// Lines over `max_line` (each closes its connection).
    pub too_long: AtomicU64,
    /// Connections from a uid other than the agent's, refused.
    pub peer_refused: AtomicU64,
    /// Connections over `max_connections`, refused.
    pub connections_refused: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "connections": g(&self.connections),
            "messages": g(&self.messages),
            "rate_limited": g(&self.rate_limited),
            "busy": g(&self.busy),
            "bad_requests": g(&self.bad_requests),
            "too_long": g(&self.too_long),
            "peer_refused": g(&self.peer_refused),
            "connections_refused": g(&self.connections_refused),
        })
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A token bucket: `burst` tokens, refilled at `rate` a second.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: rate.max(0.0),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The agent's directory under `dir`.
pub fn agent_dir(dir: &Path, agent: &str) -> PathBuf {
    dir.join(agent)
}

/// The agent's socket: what the daemon puts in the agent's `WARDEN_SOCKET`.
pub fn socket_path(dir: &Path, agent: &str) -> PathBuf {
    agent_dir(dir, agent).join(SOCKET_NAME)
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

/// Binds `dir/AGENT/agent.sock` for the agent running as `uid`:`gid`.
///
/// `dir` is created 0755 root if missing. The agent's directory is owned by
/// root, group `gid`, mode 0750: the agent can reach its socket but cannot
/// replace it, and other agents cannot reach it unless they share the group.
/// The socket is owned by `uid`:`gid`, mode 0600 (connect needs write
/// permission on it). A stale socket is removed. The mode is a first fence
/// only: every connection's uid is checked again with SO_PEERCRED.
pub fn bind(
    dir: &Path,
    agent: &str,
    uid: u32,
    gid: u32,
) -> std::io::Result<std::os::unix::net::UnixListener> {
    if agent.is_empty() || agent == "." || agent == ".." || agent.contains('/') {
        return Err(invalid(format!("agent name {agent:?} cannot name a directory")));
    }
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let adir = agent_dir(dir, agent);
    match std::fs::symlink_metadata(&adir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(invalid(format!(
                "{} exists and is not a directory",
                adir.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(&adir)?,
        Err(e) => return Err(e),
    }
    nix::unistd::chown(&adir, Some(0.into()), Some(gid.into())).map_err(std::io::Error::from)?;
    std::fs::set_permissions(&adir, std::fs::Permissions::from_mode(0o750))?;
    let path = adir.join(SOCKET_NAME);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let l = std::os::unix::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    nix::unistd::chown(&path, Some(uid.into()), Some(gid.into())).map_err(std::io::Error::from)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Removes the agent's socket and directory (after its server has stopped).
pub fn unbind(dir: &Path, agent: &str) -> std::io::Result<()> {
    let adir = agent_dir(dir, agent);
    for r in [
        std::fs::remove_file(adir.join(SOCKET_NAME)),
        std::fs::remove_dir(&adir),
    ] {
        match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Serves one agent's socket with the default [`Limits`]; see [`serve_with`].
pub async fn serve(
    listener: UnixListener,
    agent_name: String,
    expected_uid: u32,
    tx: mpsc::Sender<AgentCommand>,
) {
    let counters = Arc::new(Counters::default());
    serve_with(listener, agent_name, expected_uid, Limits::default(), counters, tx).await
}

/// What every connection of one agent shares.
struct Ctx {
    agent: String,
    uid: u32,
    limits: Limits,
    bucket: Mutex<TokenBucket>,
    counters: Arc<Counters>,
    tx: mpsc::Sender<AgentCommand>,
}

/// Serves one agent's socket until the future is dropped (abort the task
/// running it to stop: its connections end with it).
///
/// A peer whose uid is not `expected_uid` is answered `peer_refused` and
/// closed. Root (uid 0) is the exception, for diagnostics: it may ask
/// `whoami` and nothing else, so it can never heartbeat or report tasks in
/// an agent's name.
pub async fn serve_with(
    listener: UnixListener,
    agent_name: String,
    expected_uid: u32,
    limits: Limits,
    counters: Arc<Counters>,
    tx: mpsc::Sender<AgentCommand>,
) {
    let ctx = Arc::new(Ctx {
        bucket: Mutex::new(TokenBucket::new(
            limits.rate_per_sec,
            limits.burst,
            Instant::now(),
        )),
        agent: agent_name,
        uid: expected_uid,
        counters,
        tx,
        limits,
    });
    let slots = Arc::new(Semaphore::new(ctx.limits.max_connections));
    // Dropping the set aborts every connection: they live no longer than this.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    if let Some((stream, uid, pid, permit)) = admit(&ctx, &slots, stream) {
                        conns.spawn(connection(stream, ctx.clone(), uid, pid, permit));
                    }
                }
                Err(e) => {
                    tracing::warn!(agent = %ctx.agent, "agent socket accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// The checks made before a connection gets a task: the peer's uid, and a
/// free connection slot. A refusal is written without waiting (the socket's
/// buffer is empty) and the connection is closed.
fn admit(
    ctx: &Ctx,
    slots: &Arc<Semaphore>,
    stream: UnixStream,
) -> Option<(UnixStream, u32, Option<i32>, OwnedSemaphorePermit)> {
    let refuse = |stream: &UnixStream, code, msg: String| {
        let _ = stream.try_write(encode_response(&AgentResponse::err(code, msg)).as_bytes());
    };
    let Ok(cred) = stream.peer_cred() else {
        return None;
    };
    let uid = cred.uid();
    if uid != ctx.uid && uid != 0 {
        bump(&ctx.counters.peer_refused);
        tracing::warn!(agent = %ctx.agent, uid, pid = ?cred.pid(), "agent socket: peer refused");
        refuse(
            &stream,
            ErrorCode::PeerRefused,
            format!("uid {uid} is not the uid of agent {}", ctx.agent),
        );
        return None;
    }
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        bump(&ctx.counters.connections_refused);
        refuse(
            &stream,
            ErrorCode::TooManyConnections,
            format!(
                "agent {} already has {} connections open",
                ctx.agent, ctx.limits.max_connections
            ),
        );
        return None;
    };
    bump(&ctx.counters.connections);
    Some((stream, uid, cred.pid(), permit))
}

async fn connection(
    stream: UnixStream,
    ctx: Arc<Ctx>,
    uid: u32,
    pid: Option<i32>,
    _permit: OwnedSemaphorePermit,
) {
    let diagnostic = uid != ctx.uid;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    let mut served: u32 = 0;
    loop {
        line.clear();
        // Bounded read: a line longer than max_line is refused, not buffered.
        let n = match (&mut rd)
            .take(ctx.limits.max_line as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        if line.len() > ctx.limits.max_line {
            bump(&ctx.counters.too_long);
            let r = AgentResponse::err(
                ErrorCode::TooLong,
                format!(
                    "line longer than {} bytes; closing the connection",
                    ctx.limits.max_line
                ),
            );
            let _ = wr.write_all(encode_response(&r).as_bytes()).await;
            return;
        }
        let (resp, close) = handle(&ctx, &line, uid, pid, diagnostic).await;
        if wr.write_all(encode_response(&resp).as_bytes()).await.is_err() || close {
            return;
        }
        // Lines already buffered are read without touching the socket, so
        // give the other agents a turn now and then during a flood.
        served = served.wrapping_add(1);
        if served % 32 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

/// The answer to one line, and whether to close the connection after it.
async fn handle(
    ctx: &Ctx,
    line: &[u8],
    uid: u32,
    pid: Option<i32>,
    diagnostic: bool,
) -> (AgentResponse, bool) {
    // The rate is charged before parsing: garbage costs the agent as much as
    // a message, and the daemon no more than a clock read.
    let allowed = ctx
        .bucket
        .lock()
        .map(|mut b| b.take(Instant::now()))
        .unwrap_or(false);
    if !allowed {
        bump(&ctx.counters.rate_limited);
        let r = AgentResponse::err(
            ErrorCode::RateLimited,
            format!(
                "over {} messages/s (burst {}); message dropped",
                ctx.limits.rate_per_sec, ctx.limits.burst
            ),
        );
        return (r, false);
    }
    let request = match std::str::from_utf8(line) {
        Err(_) => Err(AgentResponse::err(
            ErrorCode::BadRequest,
            "bad request: not UTF-8",
        )),
        Ok(s) => decode_request(s),
    };
    let request = match request {
        Ok(r) => r,
        Err(r) => {
            bump(&ctx.counters.bad_requests);
            return (r, false);
        }
    };
    if let AgentRequest::Whoami = request {
        bump(&ctx.counters.messages);
        return (whoami(ctx, uid, pid, diagnostic), false);
    }
    if diagnostic {
        let r = AgentResponse::err(
            ErrorCode::Refused,
            format!(
                "uid {uid} may only ask `whoami` on agent {}'s socket",
                ctx.agent
            ),
        );
        return (r, false);
    }
    let (reply, rx) = oneshot::channel();
    let cmd = AgentCommand {
        agent: ctx.agent.clone(),
        request,
        peer_pid: pid,
        reply,
    };
    match ctx.tx.try_send(cmd) {
        Ok(()) => bump(&ctx.counters.messages),
        Err(mpsc::error::TrySendError::Full(_)) => {
            bump(&ctx.counters.busy);
            let r = AgentResponse::err(ErrorCode::Busy, "daemon is busy; try again shortly");
            return (r, false);
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            let r = AgentResponse::err(ErrorCode::Failed, "daemon is shutting down");
            return (r, true);
        }
    }
    match rx.await {
        Ok(r) => (r, false),
        Err(_) => (
            AgentResponse::err(ErrorCode::Failed, "daemon dropped the request"),
            false,
        ),
    }
}

fn whoami(ctx: &Ctx, uid: u32, pid: Option<i32>, diagnostic: bool) -> AgentResponse {
    AgentResponse::ok(serde_json::json!({
        "agent": ctx.agent,
        "uid": ctx.uid,
        "peer_uid": uid,
        "peer_pid": pid,
        "diagnostic": diagnostic,
        "protocol_version": super::PROTOCOL_VERSION,
        "limits": {
            "max_line": ctx.limits.max_line,
            "rate_per_sec": ctx.limits.rate_per_sec,
            "burst": ctx.limits.burst,
            "max_connections": ctx.limits.max_connections,
        },
    }))
}
