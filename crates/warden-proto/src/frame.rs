//! One framing for every JSON-lines socket warden serves: the control socket
//! and each agent's socket.
//!
//! - A message is one JSON object on one line, `\n`-terminated.
//! - A line longer than the socket's bound is refused, never buffered: the
//!   reader stops at `max + 1` bytes ([`read_line`] answers
//!   [`Frame::TooLong`]) and the server answers with its error and closes.
//! - Every reply carries the protocol's version and has one shape
//!   ([`Reply`]): `ok`, `version`, then `data` on success, or `error` (for
//!   people) and `code` (for programs) on failure.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// The error codes of one protocol, and the version it speaks.
pub trait Codes: Copy {
    /// The protocol's version, sent in every reply.
    const VERSION: u32;
}

/// One answer to one request: the same shape on every socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, bound(deserialize = "C: Deserialize<'de>"))]
pub struct Reply<C> {
    /// Whether the request was done.
    pub ok: bool,
    /// The version of the protocol that answered.
    pub version: u32,
    /// What the request returns, when it succeeded (and some refusals'
    /// details, such as the broker's decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// Why it failed, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it failed, for programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<C>,
}

impl<C: Codes> Reply<C> {
    pub fn ok(data: serde_json::Value) -> Self {
        Reply {
            ok: true,
            version: C::VERSION,
            data: Some(data),
            error: None,
            code: None,
        }
    }

    pub fn err(code: C, msg: impl Into<String>) -> Self {
        Reply {
            ok: false,
            version: C::VERSION,
            data: None,
            error: Some(msg.into()),
            code: Some(code),
        }
    }

    /// A refusal that also carries data.
    pub fn err_with(code: C, msg: impl Into<String>, data: serde_json::Value) -> Self {
        Reply {
            data: Some(data),
            ..Reply::err(code, msg)
        }
    }
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line is in the buffer (its newline included, if it had one).
    Line,
    /// The line is longer than the bound; the rest was not read.
    TooLong,
    /// The peer closed the connection.
    Eof,
}

/// Reads one line of at most `max` bytes into `buf` (cleared first).
pub async fn read_line<R: AsyncBufRead + Unpin>(
    rd: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Frame> {
    buf.clear();
    let n = rd.take(max as u64 + 1).read_until(b'\n', buf).await?;
    Ok(if n == 0 {
        Frame::Eof
    } else if buf.len() > max {
        Frame::TooLong
    } else {
        Frame::Line
    })
}

/// Encodes one message as a line, newline included.
pub fn encode<T: Serialize>(msg: &T) -> String {
    let mut s = serde_json::to_string(msg).expect("wire messages serialize");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
    enum Code {
        Bad,
    }
    impl Codes for Code {
        const VERSION: u32 = 7;
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let data = b"short\nthis line is far too long\nlast".to_vec();
        let mut rd = tokio::io::BufReader::new(&data[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut rd, &mut buf, 10).await.unwrap(), Frame::Line);
        assert_eq!(buf, b"short\n");
        assert_eq!(
            read_line(&mut rd, &mut buf, 10).await.unwrap(),
            Frame::TooLong
        );
        assert_eq!(buf.len(), 11, "reads no more than the bound and one byte");
    }

    #[tokio::test]
    async fn eof_is_not_a_line() {
        let mut rd = tokio::io::BufReader::new(&b""[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut rd, &mut buf, 10).await.unwrap(), Frame::Eof);
    }

    #[test]
    fn replies_share_one_shape() {
        let r: Reply<Code> = Reply::err(Code::Bad, "nope");
        let line = encode(&r);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["version"], 7);
        assert_eq!(v["code"], "Bad");
        assert_eq!(v["error"], "nope");
        let ok: Reply<Code> = Reply::ok(serde_json::json!({"x": 1}));
        assert_eq!(
            serde_json::from_str::<Reply<Code>>(&encode(&ok)).unwrap(),
            ok
        );
    }
}
