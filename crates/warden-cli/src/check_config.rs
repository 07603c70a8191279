//! `warden check-config FILE [--against-running]`

use std::path::PathBuf;

use warden_core::config::Config;
use warden_proto::control::Request;

#[derive(Debug, clap::Args)]
pub struct Args {
    file: PathBuf,
    /// Also ask the running daemon what a reload to FILE would do (the
    /// `warden reload --dry-run` plan), changing nothing.
    #[arg(long)]
    against_running: bool,
    /// With --against-running: print the daemon's JSON answer.
    #[arg(long)]
    json: bool,
}

pub fn run(socket: &std::path::Path, a: Args) -> i32 {
    let c = match Config::load(&a.file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warden: {e}");
            return super::exit::CONFIG;
        }
    };
    println!("{}: ok, {} agent(s)", a.file.display(), c.agents.len());
    for ag in &c.agents {
        let id = warden_core::spawn::resolve_identity(ag);
        if let Err(e) = id {
            eprintln!("warden: {}: {e}", a.file.display());
            return super::exit::CONFIG;
        }
    }
    if c.web.is_some() {
        match warden_web::config::load(&a.file) {
            Ok(s) => println!(
                "{}: ok, [web] listens on {}",
                a.file.display(),
                s.web.listen
            ),
            Err(e) => {
                eprintln!("warden: {e}");
                return super::exit::CONFIG;
            }
        }
    }
    if c.fleet.is_some() {
        match warden_fleet::config::Settings::load(&a.file) {
            Ok(s) => println!(
                "[fleet]: ok, node {} on {} (lease_ttl {:?})",
                s.node,
                s.fleet.endpoints.join(","),
                s.fleet.lease_ttl
            ),
            Err(e) => {
                eprintln!("warden: {e}");
                return super::exit::CONFIG;
            }
        }
    }
    if let Some(t) = &c.tools {
        match warden_daemon::broker::load_registry(&c, t) {
            Ok((r, _)) => println!("{}: ok, {} tool(s)", t.display(), r.len()),
            Err(e) => {
                eprintln!("warden: {e}");
                return super::exit::CONFIG;
            }
        }
    }
    if !a.against_running {
        return super::exit::OK;
    }
    let text = match std::fs::read_to_string(&a.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("warden: cannot read {}: {e}", a.file.display());
            return super::exit::CONFIG;
        }
    };
    let req = Request::Reload {
        dry_run: true,
        config_text: Some(text),
    };
    match super::reload::send(socket, &req) {
        Ok(v) if a.json => {
            super::output::print_json(&v);
            super::exit::OK
        }
        Ok(v) => {
            super::reload::print_plan(&v);
            super::exit::OK
        }
        Err(c) => c,
    }
}
