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

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use warden_proto::agent::{
    decode_request, encode_response, AgentRequest, AgentResponse, ErrorCode,
};
use warden_proto::frame::{self, Frame};

/// Name of the socket file inside the agent's directory.
pub const SOCKET_NAME: &str = "agent.sock";
/// Where the daemon puts the agents' directories by default.
pub const DEFAULT_DIR: &str = warden_core::config::DEFAULT_AGENT_SOCKET_DIR;

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
            max_line: warden_proto::agent::MAX_LINE,
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
        return Err(invalid(format!(
            "agent name {agent:?} cannot name a directory"
        )));
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
    serve_with(
        listener,
        agent_name,
        expected_uid,
        Limits::default(),
        counters,
        tx,
    )
    .await
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
        // Bounded read: a line longer than max_line is refused, not buffered.
        let frame = match frame::read_line(&mut rd, &mut line, ctx.limits.max_line).await {
            Ok(Frame::Eof) | Err(_) => return,
            Ok(f) => f,
        };
        if frame == Frame::TooLong {
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
        if wr
            .write_all(encode_response(&resp).as_bytes())
            .await
            .is_err()
            || close
        {
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
        "protocol_version": warden_proto::agent::PROTOCOL_VERSION,
        "limits": {
            "max_line": ctx.limits.max_line,
            "rate_per_sec": ctx.limits.rate_per_sec,
            "burst": ctx.limits.burst,
            "max_connections": ctx.limits.max_connections,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        counters: Arc<Counters>,
        rx: mpsc::Receiver<AgentCommand>,
        server: tokio::task::JoinHandle<()>,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    fn me() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    fn start(uid: u32, limits: Limits, queue: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET_NAME);
        let l = UnixListener::bind(&path).unwrap();
        let (tx, rx) = mpsc::channel(queue);
        let counters = Arc::new(Counters::default());
        let server = tokio::spawn(serve_with(
            l,
            "a1".into(),
            uid,
            limits,
            counters.clone(),
            tx,
        ));
        Fixture {
            _dir: dir,
            path,
            counters,
            rx,
            server,
        }
    }

    struct Conn {
        rd: BufReader<tokio::net::unix::OwnedReadHalf>,
        wr: tokio::net::unix::OwnedWriteHalf,
    }

    impl Conn {
        async fn open(p: &Path) -> Conn {
            let (rd, wr) = UnixStream::connect(p).await.unwrap().into_split();
            Conn {
                rd: BufReader::new(rd),
                wr,
            }
        }
        async fn send(&mut self, line: &str) {
            self.wr.write_all(line.as_bytes()).await.unwrap();
        }
        /// The next response, or None at end of stream.
        async fn recv(&mut self) -> Option<AgentResponse> {
            let mut s = String::new();
            let n = tokio::time::timeout(Duration::from_secs(5), self.rd.read_line(&mut s))
                .await
                .expect("answer in time")
                .unwrap_or(0);
            (n > 0).then(|| warden_proto::agent::decode_response(&s).unwrap())
        }
        async fn call(&mut self, line: &str) -> AgentResponse {
            self.send(line).await;
            self.recv().await.expect("a response")
        }
    }

    /// Answers every command `ok` with the message's type.
    fn main_loop(mut rx: mpsc::Receiver<AgentCommand>) -> tokio::task::JoinHandle<Vec<String>> {
        tokio::spawn(async move {
            let mut seen = vec![];
            while let Some(c) = rx.recv().await {
                seen.push(format!("{}:{}", c.agent, c.request.name()));
                let _ = c.reply.send(AgentResponse::ok(serde_json::json!({})));
            }
            seen
        })
    }

    fn code(r: &AgentResponse) -> Option<ErrorCode> {
        r.code
    }

    #[tokio::test]
    async fn messages_reach_the_main_loop_tagged_with_the_socket_agent() {
        let mut f = start(me(), Limits::default(), 8);
        let rx = std::mem::replace(&mut f.rx, mpsc::channel(1).1);
        let ml = main_loop(rx);
        let mut c = Conn::open(&f.path).await;
        assert!(c.call("{\"type\":\"heartbeat\"}\n").await.ok);
        assert!(
            c.call("{\"type\":\"task\",\"description\":\"write tests\"}\n")
                .await
                .ok
        );
        let w = c.call("{\"type\":\"whoami\",\"version\":1}\n").await;
        let d = w.data.unwrap();
        assert_eq!(d["agent"], "a1");
        assert_eq!(d["uid"], me());
        assert_eq!(d["peer_pid"], std::process::id());
        // Garbage gets an error and the connection stays usable.
        assert_eq!(
            code(&c.call("garbage\n").await),
            Some(ErrorCode::BadRequest)
        );
        let r = c.call("{\"type\":\"heartbeat\",\"agent\":\"a2\"}\n").await;
        assert!(r.error.unwrap().contains("unknown field `agent`"));
        assert_eq!(
            code(&c.call("\u{0}\u{ff}\n").await),
            Some(ErrorCode::BadRequest)
        );
        assert!(c.call("{\"type\":\"heartbeat\"}\n").await.ok);
        drop(c);
        f.server.abort();
        let _ = (&mut f.server).await;
        // The aborted server dropped its sender: the main loop ends.
        let seen = ml.await.unwrap();
        assert_eq!(seen, ["a1:heartbeat", "a1:task", "a1:heartbeat"]);
        assert_eq!(f.counters.bad_requests.load(Ordering::Relaxed), 3);
        assert_eq!(f.counters.messages.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn a_long_line_is_refused_and_closes_the_connection() {
        let limits = Limits {
            max_line: 64,
            ..Limits::default()
        };
        let mut f = start(me(), limits, 8);
        let rx = std::mem::replace(&mut f.rx, mpsc::channel(1).1);
        let _ml = main_loop(rx);
        let mut c = Conn::open(&f.path).await;
        // Exactly at the limit, newline included: accepted.
        let pad = 64 - "{\"type\":\"task\",\"description\":\"\"}\n".len();
        let fits = format!(
            "{{\"type\":\"task\",\"description\":\"{}\"}}\n",
            "x".repeat(pad)
        );
        assert_eq!(fits.len(), 64);
        assert!(c.call(&fits).await.ok);
        let r = c.call(&format!("{}\n", "y".repeat(4096))).await;
        assert_eq!(code(&r), Some(ErrorCode::TooLong));
        assert!(c.recv().await.is_none(), "closed after too_long");
        assert_eq!(f.counters.too_long.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn over_the_rate_is_dropped_before_the_main_loop() {
        let limits = Limits {
            rate_per_sec: 0.0,
            burst: 3,
            ..Limits::default()
        };
        let mut f = start(me(), limits, 8);
        let rx = std::mem::replace(&mut f.rx, mpsc::channel(1).1);
        let ml = main_loop(rx);
        let mut c = Conn::open(&f.path).await;
        let mut c2 = Conn::open(&f.path).await;
        assert!(c.call("{\"type\":\"heartbeat\"}\n").await.ok);
        assert!(c2.call("{\"type\":\"heartbeat\"}\n").await.ok);
        assert_eq!(
            code(&c.call("garbage\n").await),
            Some(ErrorCode::BadRequest)
        );
        // The bucket is the agent's, shared by its connections.
        for c in [&mut c, &mut c2] {
            let r = c.call("{\"type\":\"heartbeat\"}\n").await;
            assert_eq!(code(&r), Some(ErrorCode::RateLimited), "{r:?}");
        }
        f.server.abort();
        let _ = (&mut f.server).await;
        assert_eq!(ml.await.unwrap().len(), 2);
        assert_eq!(f.counters.rate_limited.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn token_bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 2, t0);
        assert!(b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(!b.take(t0 + Duration::from_millis(50)));
        assert!(b.take(t0 + Duration::from_millis(101)));
        assert!(!b.take(t0 + Duration::from_millis(101)));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        assert!(b.take(later) && b.take(later));
        assert!(!b.take(later));
    }

    #[tokio::test]
    async fn a_full_main_loop_queue_answers_busy() {
        // The main loop never reads: the first message fills the queue.
        let f = start(me(), Limits::default(), 1);
        let mut c = Conn::open(&f.path).await;
        c.send("{\"type\":\"heartbeat\"}\n").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut c2 = Conn::open(&f.path).await;
        let r = c2.call("{\"type\":\"heartbeat\"}\n").await;
        assert_eq!(code(&r), Some(ErrorCode::Busy));
        // whoami needs no main loop.
        assert!(c2.call("{\"type\":\"whoami\"}\n").await.ok);
        assert_eq!(f.counters.busy.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_refused() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let f = start(me(), limits, 8);
        let mut held = vec![];
        for _ in 0..2 {
            let mut c = Conn::open(&f.path).await;
            assert!(c.call("{\"type\":\"whoami\"}\n").await.ok);
            held.push(c);
        }
        let mut c = Conn::open(&f.path).await;
        let r = c.recv().await.expect("a refusal");
        assert_eq!(code(&r), Some(ErrorCode::TooManyConnections));
        assert!(c.recv().await.is_none());
        // A closed connection frees its slot.
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut c = Conn::open(&f.path).await;
        assert!(c.call("{\"type\":\"whoami\"}\n").await.ok);
        assert_eq!(f.counters.connections_refused.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn another_uid_never_speaks_for_the_agent() {
        let other = me() + 4242;
        let mut f = start(other, Limits::default(), 8);
        let mut c = Conn::open(&f.path).await;
        let r = c.call("{\"type\":\"heartbeat\"}\n").await;
        if me() == 0 {
            // Root may diagnose (whoami) but not act for the agent.
            assert_eq!(code(&r), Some(ErrorCode::Refused));
            let w = c.call("{\"type\":\"whoami\"}\n").await.data.unwrap();
            assert_eq!(w["diagnostic"], true);
            assert_eq!(w["uid"], other);
        } else {
            assert_eq!(code(&r), Some(ErrorCode::PeerRefused));
            assert!(c.recv().await.is_none());
            assert_eq!(f.counters.peer_refused.load(Ordering::Relaxed), 1);
        }
        assert!(f.rx.try_recv().is_err(), "nothing reached the main loop");
    }
}
