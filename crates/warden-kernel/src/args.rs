//! The command line (docs/kernel.md, "Command line"). Bad arguments are an
//! error naming the argument; the binary exits 2.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the kernel is told at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The stop file; its directory is watched.
    pub stop_file: PathBuf,
    /// The SAFE MODE latch (same file as the daemon's).
    pub latch: PathBuf,
    /// Where kernel-report-*.json files go.
    pub report_dir: PathBuf,
    /// The agents' parent cgroups in a cgroup2 hierarchy.
    pub v2: Vec<PathBuf>,
    /// The agents' parent cgroups in the v1 freezer hierarchy.
    pub v1_freezer: Vec<PathBuf>,
    /// Longest silence on stdin before the daemon counts as hung.
    pub liveness_timeout: Duration,
    /// How long a halt waits for the daemon's `empty`, and how long the
    /// kernel's own kill waits for an empty tree.
    pub deadline: Duration,
    /// Hardware watchdog device (or a regular file, for tests).
    pub watchdog: Option<PathBuf>,
    /// Interval between watchdog pings.
    pub watchdog_interval: Duration,
    /// SCHED_FIFO priority (1..=99).
    pub rt_priority: i32,
}

/// Parses the arguments after the program name.
pub fn parse<I: Iterator<Item = OsString>>(mut it: I) -> Result<Config, String> {
    let mut stop_file = None;
    let mut latch = None;
    let mut report_dir = None;
    let mut v2 = Vec::new();
    let mut v1_freezer = Vec::new();
    let mut liveness_ms = 1000u64;
    let mut deadline_ms = 2000u64;
    let mut watchdog = None;
    let mut watchdog_ms = None;
    let mut rt_priority = 10i64;
    while let Some(flag) = it.next() {
        let flag = flag
            .into_string()
            .map_err(|f| format!("unknown argument {f:?}"))?;
        let mut value = || {
            it.next()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("argument {flag} needs a value"))
        };
        let path = |v: OsString| -> Result<PathBuf, String> {
            let p = PathBuf::from(v);
            if p.is_absolute() {
                Ok(p)
            } else {
                Err(format!(
                    "argument {flag}: {} is not an absolute path",
                    p.display()
                ))
            }
        };
        let number = |v: OsString, min: u64, max: u64| -> Result<u64, String> {
            v.to_str()
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| format!("argument {flag}: {v:?} is not a number in {min}..={max}"))
        };
        match flag.as_str() {
            "--stop-file" => stop_file = Some(path(value()?)?),
            "--latch" => latch = Some(path(value()?)?),
            "--report-dir" => report_dir = Some(path(value()?)?),
            "--v2" => v2.push(path(value()?)?),
            "--v1-freezer" => v1_freezer.push(path(value()?)?),
            "--watchdog" => watchdog = Some(path(value()?)?),
            "--liveness-timeout-ms" => liveness_ms = number(value()?, 20, 3_600_000)?,
            "--deadline-ms" => deadline_ms = number(value()?, 1, 3_600_000)?,
            "--watchdog-interval-ms" => watchdog_ms = Some(number(value()?, 10, 3_600_000)?),
            "--rt-priority" => rt_priority = number(value()?, 1, 99)? as i64,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    let stop_file = stop_file.ok_or("argument --stop-file is required")?;
    if stop_file.file_name().is_none() || stop_file.parent().is_none_or(|p| p.parent().is_none()) {
        return Err(format!(
            "argument --stop-file: {} must be a file in a directory that is not /",
            stop_file.display()
        ));
    }
    if v2.is_empty() && v1_freezer.is_empty() {
        return Err(
            "argument --v2 or --v1-freezer is required (the agents' parent cgroups)".into(),
        );
    }
    Ok(Config {
        stop_file,
        latch: latch.ok_or("argument --latch is required")?,
        report_dir: report_dir.ok_or("argument --report-dir is required")?,
        v2,
        v1_freezer,
        liveness_timeout: Duration::from_millis(liveness_ms),
        deadline: Duration::from_millis(deadline_ms),
        watchdog,
        watchdog_interval: Duration::from_millis(watchdog_ms.unwrap_or(liveness_ms / 2)),
        rt_priority: rt_priority as i32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &str) -> Result<Config, String> {
        parse(a.split_whitespace().map(OsString::from))
    }

    #[test]
    fn full_command_line() {
        let c = p(
            "--stop-file /s/STOP --latch /l --report-dir /r --v2 /a --v2 /b \
                   --v1-freezer /f --liveness-timeout-ms 400 --deadline-ms 900 \
                   --watchdog /dev/watchdog --watchdog-interval-ms 100 --rt-priority 20",
        )
        .unwrap();
        assert_eq!(c.v2.len(), 2);
        assert_eq!(c.v1_freezer, vec![PathBuf::from("/f")]);
        assert_eq!(c.liveness_timeout, Duration::from_millis(400));
        assert_eq!(c.deadline, Duration::from_millis(900));
        assert_eq!(c.watchdog_interval, Duration::from_millis(100));
        assert_eq!(c.rt_priority, 20);
    }

    #[test]
    fn defaults() {
        let c = p("--stop-file /s/STOP --latch /l --report-dir /r --v1-freezer /f").unwrap();
        assert_eq!(c.liveness_timeout, Duration::from_millis(1000));
        assert_eq!(c.deadline, Duration::from_millis(2000));
        assert_eq!(c.watchdog_interval, Duration::from_millis(500));
        assert_eq!(c.rt_priority, 10);
    }

    #[test]
    fn errors_name_the_argument() {
        for (args, needle) in [
            ("--latch /l --report-dir /r --v2 /a", "--stop-file"),
            ("--stop-file /s/STOP --report-dir /r --v2 /a", "--latch"),
            ("--stop-file /s/STOP --latch /l --v2 /a", "--report-dir"),
            ("--stop-file /s/STOP --latch /l --report-dir /r", "--v2"),
            (
                "--stop-file s --latch /l --report-dir /r --v2 /a",
                "--stop-file",
            ),
            (
                "--stop-file /STOP --latch /l --report-dir /r --v2 /a",
                "--stop-file",
            ),
            (
                "--stop-file /s/S --latch /l --report-dir /r --v2 /a --deadline-ms x",
                "--deadline-ms",
            ),
            (
                "--stop-file /s/S --latch /l --report-dir /r --v2 /a --rt-priority 0",
                "--rt-priority",
            ),
            ("--stop-file /s/S --latch /l --report-dir /r --v2", "--v2"),
            ("--bogus", "--bogus"),
        ] {
            let e = p(args).unwrap_err();
            assert!(e.contains(needle), "{args}: {e}");
        }
    }
}
