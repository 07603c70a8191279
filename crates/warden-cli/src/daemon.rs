//! `warden daemon --config FILE`.

use std::path::PathBuf;

use warden_core::config::Config;
use warden_daemon::daemon::{Daemon, DaemonError, Options};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file.
    #[arg(long, default_value = warden_core::config::SYSTEM_CONFIG)]
    config: PathBuf,
}

/// Logs to stderr (the journal under systemd) at the level named by
/// `WARDEN_LOG` (error, warn, info, debug, trace; default info).
pub fn init_tracing() {
    use tracing_subscriber::filter::LevelFilter;
    let level = std::env::var("WARDEN_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

pub fn run(a: Args) -> i32 {
    init_tracing();
    let cfg = match Config::load(&a.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warden: {e}");
            return super::exit::CONFIG;
        }
    };
    start(
        cfg,
        Options {
            config_path: a.config,
            ..Default::default()
        },
    )
}

/// Starts the daemon and maps start-up errors to exit codes.
pub fn start(cfg: Config, opts: Options) -> i32 {
    match Daemon::start(cfg, opts) {
        Ok(d) => d.run(),
        Err(e) => {
            eprintln!("warden: {e}");
            match e {
                DaemonError::AlreadyRunning { .. } => super::exit::ALREADY_RUNNING,
                DaemonError::NotPrivileged(_) => super::exit::PERMISSION,
                // The tool registry is configuration too.
                DaemonError::Broker(_) => super::exit::CONFIG,
                _ => super::exit::FAILED,
            }
        }
    }
}
