//! The witness: an operator-chosen command run for every new signed
//! checkpoint, with the checkpoint as one JSON line on stdin. It is meant to
//! ship the head off the host (to a log server, a ticket, a second machine)
//! so that `warden audit verify --against` can later prove the local log
//! still holds it.
//!
//! It runs on its own thread so a slow or hung witness never delays the
//! writer; each run has a deadline after which the command is killed. A
//! failure is logged and recorded in the chain as a `witness_failed` event.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::chain::Checkpoint;

/// Runs `argv` for each checkpoint received until the channel closes.
/// `on_failure(checkpoint, message)` is called for every failed run.
pub fn run(
    argv: Vec<String>,
    timeout: Duration,
    rx: Receiver<Checkpoint>,
    on_failure: impl Fn(&Checkpoint, String),
) {
    while let Ok(cp) = rx.recv() {
        if let Err(message) = run_once(&argv, timeout, &cp) {
            tracing::warn!(target: "audit", seq = cp.seq, "witness command failed: {message}");
            on_failure(&cp, message);
        }
    }
}

/// One run of the witness command for `cp`.
pub fn run_once(argv: &[String], timeout: Duration, cp: &Checkpoint) -> Result<(), String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| "witness_command is empty".to_string())?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let mut line = cp.to_json_line();
    line.push('\n');
    let write = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(line.as_bytes()))
        .unwrap_or(Ok(()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} did not finish within {timeout:?}; killed"
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    };
    if !status.success() {
        return Err(format!("{program} exited with {status}"));
    }
    write.map_err(|e| format!("writing the checkpoint to {program}: {e}"))
}
