//! The pipe protocol between the daemon and the kernel: ASCII lines of at
//! most [`MAX_LINE`] bytes, opened by `hello 1` in each direction.
//! docs/kernel.md holds the complete table; this file is its code.

use crate::machine::Trigger;

/// The protocol version both sides announce in their `hello` line.
pub const VERSION: u32 = 1;
/// Longest line, newline excluded. Longer input is garbage, never a crash.
pub const MAX_LINE: usize = 256;
/// Longest halt id; ids are opaque tokens chosen by the daemon.
const MAX_ID: usize = 64;

/// A line from the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// `hello N`: the daemon speaks version N.
    Hello(u32),
    /// `hb 1` (healthy) or `hb 0 REASON` (unhealthy: stop the watchdog pings).
    Hb { healthy: bool },
    /// `halt ID`: the daemon began a hard halt.
    Halt(String),
    /// `empty ID`: the daemon verified every agent cgroup empty.
    Empty(String),
    /// `resume`: a human resume was recorded by the daemon.
    Resume,
    /// `clean`: orderly exit.
    Clean,
}

/// A line to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `hello 1`.
    Hello,
    /// `ready`: watches armed, loop about to start.
    Ready,
    /// `frozen TRIGGER US`: froze on its own trigger; US is filled in by the
    /// loop, which measured it.
    Frozen(Trigger),
    /// `killed PATH`: the kernel killed by itself; PATH is its report.
    Killed,
    /// `empty`: the kernel confirmed the daemon's `empty` and thawed.
    Empty,
    /// `resumed`: the kernel left its halted state.
    Resumed,
    /// `refused REASON`.
    Refused(&'static str),
}

/// Parses one line (without its newline). `None` = unknown or malformed.
pub fn parse(line: &[u8]) -> Option<Msg> {
    if line.len() > MAX_LINE || !line.iter().all(|b| (0x20..0x7f).contains(b)) {
        return None;
    }
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.splitn(3, ' ');
    let verb = words.next()?;
    let arg = words.next();
    let rest = words.next();
    match (verb, arg, rest) {
        ("hello", Some(v), None) => v.parse().ok().map(Msg::Hello),
        ("hb", Some("1"), None) => Some(Msg::Hb { healthy: true }),
        ("hb", Some("0"), Some(_)) => Some(Msg::Hb { healthy: false }),
        ("halt", Some(id), None) if valid_id(id) => Some(Msg::Halt(id.into())),
        ("empty", Some(id), None) if valid_id(id) => Some(Msg::Empty(id.into())),
        ("resume", None, None) => Some(Msg::Resume),
        ("clean", None, None) => Some(Msg::Clean),
        _ => None,
    }
}

/// Ids go into the latch and the logs: keep them short and plain.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Encodes a reply; `extra` is the measured microseconds (`frozen`) or the
/// report path (`killed`). Paths with bytes outside printable ASCII are
/// escaped so the line stays one ASCII line.
pub fn encode(r: &Reply, extra: &str) -> String {
    let mut s = match r {
        Reply::Hello => format!("hello {VERSION}"),
        Reply::Ready => "ready".into(),
        Reply::Frozen(t) => format!("frozen {} {extra}", t.wire()),
        Reply::Killed => format!("killed {}", ascii(extra)),
        Reply::Empty => "empty".into(),
        Reply::Resumed => "resumed".into(),
        Reply::Refused(why) => format!("refused {why}"),
    };
    s.truncate(MAX_LINE);
    s.push('\n');
    s
}

fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes with a
/// fixed buffer: a line too long is reported once as garbage and skipped up
/// to its newline, so a flood cannot grow memory.
#[derive(Debug, Default)]
pub struct LineReader {
    /// Bytes of the line being read.
    buf: Vec<u8>,
    /// True while skipping the rest of a line that was too long.
    skipping: bool,
}

/// One item from [`LineReader::feed`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A parsed message.
    Msg(Msg),
    /// A line that is unknown, malformed or too long (kept for the log,
    /// truncated).
    Garbage(String),
}

impl LineReader {
    /// Feeds bytes read from the pipe; returns the complete lines.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        for &b in data {
            if b == b'\n' {
                if self.skipping {
                    self.skipping = false;
                } else {
                    out.push(match parse(&self.buf) {
                        Some(m) => Line::Msg(m),
                        None => Line::Garbage(printable(&self.buf)),
                    });
                }
                self.buf.clear();
            } else if self.skipping {
            } else if self.buf.len() >= MAX_LINE {
                out.push(Line::Garbage(format!(
                    "line longer than {MAX_LINE} bytes: {}...",
                    printable(&self.buf[..32])
                )));
                self.buf.clear();
                self.skipping = true;
            } else {
                self.buf.push(b);
            }
        }
        out
    }
}

fn printable(b: &[u8]) -> String {
    b.iter()
        .take(64)
        .map(|&c| {
            if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_message() {
        assert_eq!(parse(b"hello 1"), Some(Msg::Hello(1)));
        assert_eq!(parse(b"hb 1"), Some(Msg::Hb { healthy: true }));
        assert_eq!(
            parse(b"hb 0 audit log not writable"),
            Some(Msg::Hb { healthy: false })
        );
        assert_eq!(parse(b"halt h-1"), Some(Msg::Halt("h-1".into())));
        assert_eq!(parse(b"empty h-1"), Some(Msg::Empty("h-1".into())));
        assert_eq!(parse(b"resume"), Some(Msg::Resume));
        assert_eq!(parse(b"clean"), Some(Msg::Clean));
    }

    #[test]
    fn rejects_garbage() {
        for l in [
            &b""[..],
            b"hb",
            b"hb 2",
            b"hb 0",
            b"hb 1 extra",
            b"halt",
            b"halt a b",
            b"halt a/b",
            b"resume now",
            b"clean\r",
            b"hello x",
            b"\xff\xfe",
        ] {
            assert_eq!(parse(l), None, "{l:?}");
        }
    }

    #[test]
    fn long_lines_are_garbage_and_bounded() {
        let mut r = LineReader::default();
        let mut data = vec![b'a'; 10_000];
        data.extend_from_slice(b"\nhb 1\n");
        let lines = r.feed(&data);
        assert_eq!(lines.len(), 2);
        assert!(matches!(lines[0], Line::Garbage(_)));
        assert_eq!(lines[1], Line::Msg(Msg::Hb { healthy: true }));
        assert!(r.buf.capacity() <= 2 * MAX_LINE);
    }

    #[test]
    fn lines_split_across_reads() {
        let mut r = LineReader::default();
        assert!(r.feed(b"hel").is_empty());
        assert_eq!(r.feed(b"lo 1\nre"), vec![Line::Msg(Msg::Hello(1))]);
        assert_eq!(r.feed(b"sume\n"), vec![Line::Msg(Msg::Resume)]);
    }

    #[test]
    fn encodes_replies() {
        assert_eq!(encode(&Reply::Hello, ""), "hello 1\n");
        assert_eq!(
            encode(&Reply::Frozen(Trigger::StopFile), "812"),
            "frozen stop_file 812\n"
        );
        assert_eq!(encode(&Reply::Killed, "/r/a b"), "killed /r/a?b\n");
        assert_eq!(
            encode(&Reply::Refused("stop_file"), ""),
            "refused stop_file\n"
        );
    }
}
