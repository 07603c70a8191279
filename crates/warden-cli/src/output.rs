//! Talking to the daemon and printing answers, shared by the verbs.

use std::path::Path;
use std::time::Duration;

use warden_proto::control::client::{self, ClientError};
use warden_proto::control::{Request, Response};

use super::exit;

/// Sends `req`; on failure prints why and returns the exit code.
pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value, i32> {
    // A hard halt of many processes answers only once they are gone.
    let timeout = Duration::from_secs(60);
    match client::call(socket, req, timeout) {
        Ok(Response { ok: true, data, .. }) => Ok(data.unwrap_or(serde_json::Value::Null)),
        Ok(r) => {
            eprintln!(
                "warden: {}",
                r.error.unwrap_or_else(|| "request failed".into())
            );
            Err(exit::FAILED)
        }
        Err(e @ ClientError::NotRunning { .. }) => {
            eprintln!("warden: {e}");
            Err(exit::NOT_RUNNING)
        }
        Err(e @ ClientError::Permission { .. }) => {
            eprintln!("warden: {e}");
            Err(exit::PERMISSION)
        }
        Err(e) => {
            eprintln!("warden: {e}");
            Err(exit::FAILED)
        }
    }
}

pub fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn ms(us: &serde_json::Value) -> String {
    us.as_u64()
        .map(|u| format!("{:.2} ms", u as f64 / 1000.0))
        .unwrap_or_else(|| "-".into())
}

pub fn bytes(v: &serde_json::Value) -> String {
    v.as_u64()
        .map(|b| bytesize::ByteSize(b).to_string())
        .unwrap_or_else(|| "-".into())
}

/// `s` with every character that a terminal would act on instead of print
/// shown escaped (`\x1b`, `\r`, `\u{202e}`), as journalctl and less do: C0
/// and C1 controls, DEL, and the invisible format characters that reorder or
/// hide text (bidi overrides and isolates, zero-width marks). A backslash
/// stays as it is. Newlines and tabs are kept only with `keep_lines` (agent
/// output); operator text on one line escapes them too.
pub fn escape_control(s: &str, keep_lines: bool) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' if keep_lines => out.push(c),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || (0x7f..=0x9f).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Operator text (a reason, a note) for a human line: control characters
/// and newlines escaped.
pub fn text(v: &serde_json::Value) -> String {
    escape_control(v.as_str().unwrap_or(""), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_would_act_on() {
        assert_eq!(
            escape_control("a\x1b[2Jb\r\n\tc\u{7f}\u{9b}", true),
            "a\\x1b[2Jb\\r\n\tc\\x7f\\x9b"
        );
        assert_eq!(escape_control("x\ny\u{202e}z", false), "x\\ny\\u{202e}z");
        assert_eq!(
            escape_control("plain ünïcode \\ ok", false),
            "plain ünïcode \\ ok"
        );
    }
}
