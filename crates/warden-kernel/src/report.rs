//! Minimal evidence of the frozen tree and the kernel's report file.
//!
//! The daemon captures full, signed evidence when it can; the kernel's job is
//! the record of a halt the daemon could not finish: who was running (pid,
//! ppid, uid, state, cmdline; each field bounded, the whole within a budget,
//! with counts of what did not fit), when each phase ended, who survived.

use std::fmt::Write as _;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::machine::Trigger;

/// Most bytes kept of one process's cmdline.
pub const FIELD_MAX: usize = 4096;
/// Most bytes of process records in one report, so RSS stays small.
pub const BUDGET: usize = 128 * 1024;

/// One member of the frozen tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Process id.
    pub pid: i32,
    /// Parent's pid (0 when unreadable).
    pub ppid: i32,
    /// Real uid (u32::MAX when unreadable).
    pub uid: u32,
    /// One-letter state from /proc/PID/stat ('?' when unreadable).
    pub state: char,
    /// Arguments joined by spaces, at most [`FIELD_MAX`] bytes.
    pub cmdline: String,
}

/// Everything known about one halt of the kernel's own.
#[derive(Debug)]
pub struct Record {
    /// What started it.
    pub trigger: Trigger,
    /// Wall clock when the trigger was seen (ms since the epoch).
    pub seen_at_ms: u64,
    /// Monotonic clock at the same instant; the timings count from here.
    pub t0: Instant,
    /// Trigger seen → frozen confirmed.
    pub frozen_us: Option<u64>,
    /// The first freeze waited for its confirmation (once per halt: the
    /// retries of a kill do not wait again).
    pub confirm_waited: bool,
    /// Trigger seen → first kill issued.
    pub killed_us: Option<u64>,
    /// Trigger seen → tree verified empty.
    pub empty_us: Option<u64>,
    /// The captured members, within the budget.
    pub processes: Vec<Proc>,
    /// Members seen at capture, including those over the budget.
    pub processes_total: usize,
    /// Bytes used of the budget.
    used: usize,
    /// Everything that went wrong, for the report (and the log).
    pub errors: Vec<String>,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Record {
    /// A halt starting now.
    pub fn new(trigger: Trigger) -> Record {
        Record {
            trigger,
            seen_at_ms: now_ms(),
            t0: Instant::now(),
            frozen_us: None,
            confirm_waited: false,
            killed_us: None,
            empty_us: None,
            processes: Vec::new(),
            processes_total: 0,
            used: 0,
            errors: Vec::new(),
        }
    }

    /// Microseconds since the trigger was seen.
    pub fn since_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    /// Records the members (read from /proc while the tree is frozen).
    pub fn capture(&mut self, pids: &[i32]) {
        for &pid in pids {
            if self.processes.iter().any(|p| p.pid == pid) {
                continue;
            }
            self.processes_total += 1;
            if self.used >= BUDGET {
                continue;
            }
            let p = read_proc(pid);
            self.used += 64 + p.cmdline.len();
            self.processes.push(p);
        }
    }

    /// The report as JSON.
    pub fn to_json(&self, survivors: &[i32], complete: bool) -> String {
        let opt = |v: Option<u64>| v.map_or_else(|| "null".to_string(), |v| v.to_string());
        let mut s = String::with_capacity(256 + self.used);
        let _ = write!(
            s,
            "{{\"version\":1,\"trigger\":{},\"seen_at_ms\":{},\"timings_us\":{{\"frozen\":{},\"killed\":{},\"empty\":{}}},\"processes\":[",
            json_str(self.trigger.wire()),
            self.seen_at_ms,
            opt(self.frozen_us),
            opt(self.killed_us),
            opt(self.empty_us),
        );
        for (i, p) in self.processes.iter().enumerate() {
            let _ = write!(
                s,
                "{}{{\"pid\":{},\"ppid\":{},\"uid\":{},\"state\":{},\"cmdline\":{}}}",
                if i > 0 { "," } else { "" },
                p.pid,
                p.ppid,
                p.uid,
                json_str(&p.state.to_string()),
                json_str(&p.cmdline)
            );
        }
        let list = |v: &[i32]| v.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        let errors: Vec<String> = self.errors.iter().map(|e| json_str(e)).collect();
        let _ = writeln!(
            s,
            "],\"processes_total\":{},\"processes_omitted\":{},\"survivors\":[{}],\"complete\":{complete},\"errors\":[{}]}}",
            self.processes_total,
            self.processes_total - self.processes.len(),
            list(survivors),
            errors.join(","),
        );
        s
    }
}

/// Writes a report into `dir` atomically as `kernel-report-<ms>-<n>.json`.
pub fn write(dir: &Path, json: &str, n: &mut u32) -> io::Result<PathBuf> {
    let ms = now_ms();
    loop {
        *n += 1;
        let p = dir.join(format!("kernel-report-{ms}-{n}.json"));
        if !crate::latch::exists(&p) {
            crate::latch::write_atomic(&p, json.as_bytes())?;
            return Ok(p);
        }
    }
}

/// Reads at most `max` bytes of a file.
fn read_bounded(path: &str, max: usize) -> Option<Vec<u8>> {
    let mut v = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(max as u64)
        .read_to_end(&mut v)
        .ok()?;
    Some(v)
}

fn read_proc(pid: i32) -> Proc {
    let mut p = Proc {
        pid,
        ppid: 0,
        uid: u32::MAX,
        state: '?',
        cmdline: String::new(),
    };
    if let Some(stat) = read_bounded(&format!("/proc/{pid}/stat"), 1024) {
        // "pid (comm) S ppid ...": comm may hold spaces and parens, so
        // split after the last ')'.
        let stat = String::from_utf8_lossy(&stat);
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let mut f = rest.split_whitespace();
            p.state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
            p.ppid = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        }
    }
    if let Some(status) = read_bounded(&format!("/proc/{pid}/status"), 4096) {
        p.uid = String::from_utf8_lossy(&status)
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse().ok())
            .unwrap_or(u32::MAX);
    }
    if let Some(c) = read_bounded(&format!("/proc/{pid}/cmdline"), FIELD_MAX) {
        let c: Vec<u8> = c.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
        p.cmdline = String::from_utf8_lossy(&c).trim_end().to_string();
    }
    p
}

/// A JSON string literal, escaped per RFC 8259.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_roundtrips() {
        let s = "a\"b\\c\nd\u{1}\u{7f}é\t";
        let v: serde_json::Value = serde_json::from_str(&json_str(s)).unwrap();
        assert_eq!(v, s);
    }

    #[test]
    fn report_is_valid_json_with_our_pid() {
        let me = std::process::id() as i32;
        let mut r = Record::new(Trigger::StopFile);
        r.capture(&[me, me]);
        r.frozen_us = Some(5);
        r.errors.push("cannot \"x\"".into());
        let v: serde_json::Value = serde_json::from_str(&r.to_json(&[me], false)).unwrap();
        assert_eq!(v["trigger"], "stop_file");
        assert_eq!(v["processes"][0]["pid"], me);
        assert_eq!(v["processes"].as_array().unwrap().len(), 1);
        assert!(!v["processes"][0]["cmdline"].as_str().unwrap().is_empty());
        assert_eq!(v["survivors"][0], me);
        assert_eq!(v["complete"], false);
        assert_eq!(v["timings_us"]["frozen"], 5);
        assert!(v["timings_us"]["empty"].is_null());
        let d = tempfile::tempdir().unwrap();
        let mut n = 0;
        let a = write(d.path(), "{}", &mut n).unwrap();
        let b = write(d.path(), "{}", &mut n).unwrap();
        assert_ne!(a, b);
        assert!(a
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("kernel-report-"));
    }

    #[test]
    fn budget_bounds_the_record() {
        let me = std::process::id() as i32;
        let mut r = Record::new(Trigger::Liveness);
        r.used = BUDGET;
        r.capture(&[me, 1]);
        assert_eq!(r.processes_total, 2);
        assert!(r.processes.is_empty());
        let v: serde_json::Value = serde_json::from_str(&r.to_json(&[], true)).unwrap();
        assert_eq!(v["processes_omitted"], 2);
    }
}
