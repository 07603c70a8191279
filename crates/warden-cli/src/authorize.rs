//! `warden authorize-resume` and `warden keygen`: offline tools for the
//! holder of the resume key.

use std::path::PathBuf;
use std::time::Duration;

use warden_core::authz;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Private key (PKCS#8 PEM, mode 0600).
    #[arg(long)]
    key: PathBuf,
    /// Why resuming is safe; recorded in the audit log.
    #[arg(long)]
    reason: String,
    /// How long the authorization stays valid, e.g. "10m".
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    valid_for: Duration,
    /// The host it is for (its /etc/machine-id; `warden status` shows it).
    /// Default: this host.
    #[arg(long)]
    host: Option<String>,
    /// Write here instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub fn run(a: Args) -> i32 {
    if a.reason.trim().is_empty() {
        eprintln!("warden: --reason must not be empty");
        return super::exit::USAGE;
    }
    let key = match authz::load_private(&a.key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("warden: {e}");
            return super::exit::FAILED;
        }
    };
    let host = a.host.unwrap_or_else(authz::host_id);
    let auth = authz::sign(
        &key,
        &host,
        &a.reason,
        a.valid_for,
        warden_core::clock::now_ms(),
    );
    let text = serde_json::to_string_pretty(&auth).expect("serializes") + "\n";
    match &a.output {
        None => print!("{text}"),
        Some(p) => {
            if let Err(e) = std::fs::write(p, text) {
                eprintln!("warden: cannot write {}: {e}", p.display());
                return super::exit::FAILED;
            }
        }
    }
    0
}

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Private key path; the public key goes to PATH.pub.
    path: PathBuf,
}

pub fn keygen(a: KeygenArgs) -> i32 {
    match authz::generate(&a.path) {
        Ok(()) => {
            println!("private key: {} (0600)", a.path.display());
            println!("public key:  {}", authz::pub_path(&a.path).display());
            0
        }
        Err(e) => {
            eprintln!("warden: {e}");
            super::exit::FAILED
        }
    }
}
