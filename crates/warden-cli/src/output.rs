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
