//! `warden check-config FILE`

use std::path::PathBuf;

use warden_core::config::Config;

#[derive(Debug, clap::Args)]
pub struct Args {
    file: PathBuf,
}

pub fn run(a: Args) -> i32 {
    match Config::load(&a.file) {
        Ok(c) => {
            println!("{}: ok, {} agent(s)", a.file.display(), c.agents.len());
            for ag in &c.agents {
                let id = warden_core::spawn::resolve_identity(ag);
                if let Err(e) = id {
                    eprintln!("warden: {}: {e}", a.file.display());
                    return super::exit::CONFIG;
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
            0
        }
        Err(e) => {
            eprintln!("warden: {e}");
            super::exit::CONFIG
        }
    }
}
