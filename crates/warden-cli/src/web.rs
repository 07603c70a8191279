//! `warden web [--config FILE] [--listen ADDR]`: the web service, in the
//! foreground. It reads `[web]` from the config file itself and needs no
//! privilege: only membership of group `warden` for the control socket.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file whose `[web]` table (and `socket`) is read.
    #[arg(long, value_name = "FILE", default_value = warden_core::config::SYSTEM_CONFIG)]
    pub config: PathBuf,
    /// Listen here instead of `[web] listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

pub fn run(a: Args) -> i32 {
    super::daemon::init_tracing();
    match warden_web::run(&a.config, a.listen) {
        Ok(()) => super::exit::OK,
        Err(e @ warden_web::WebError::Config(_)) => {
            eprintln!("warden: {e}");
            super::exit::CONFIG
        }
        Err(e) => {
            eprintln!("warden: web: {e}");
            super::exit::FAILED
        }
    }
}
