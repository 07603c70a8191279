//! `warden demo`: the daemon on an embedded config, in a temporary directory.

use std::path::PathBuf;
use std::time::Duration;

use warden_core::config::Config;
use warden_daemon::daemon::Options;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Touch the stop file by itself after this long (e.g. "5s").
    #[arg(long, value_parser = warden_core::units::parse_duration)]
    halt_after: Option<Duration>,
}

pub fn run(a: Args) -> i32 {
    super::daemon::init_tracing();
    let dir = match nix::unistd::mkdtemp("/tmp/warden-demo-XXXXXX") {
        Ok(d) => d,
        Err(e) => {
            eprintln!("warden: cannot create a temporary directory: {e}");
            return super::exit::FAILED;
        }
    };
    let root = format!("/warden-demo-{}", std::process::id());
    let text = crate::demo_config::config(&dir, &root);
    let path = dir.join("warden.toml");
    if let Err(e) = std::fs::write(&path, &text) {
        eprintln!("warden: cannot write {}: {e}", path.display());
        return super::exit::FAILED;
    }
    let cfg = match Config::parse(&text, &path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warden: embedded demo config is invalid: {e}");
            return super::exit::CONFIG;
        }
    };
    let stop: PathBuf = cfg.stop_file.clone();
    println!("warden demo: two agents, \"polite\" and \"hostile\" (ignores TERM, forks, escapes its session)");
    println!("  config    : {}", path.display());
    println!(
        "  status    : warden --socket {} status",
        cfg.socket.display()
    );
    println!("  stop file : {}", stop.display());
    println!();
    println!("To halt everything:  touch {}", stop.display());
    if let Some(after) = a.halt_after {
        let stop = stop.clone();
        println!(
            "(touching it by itself in {})",
            humantime::format_duration(after)
        );
        std::thread::spawn(move || {
            std::thread::sleep(after);
            let _ = std::fs::write(&stop, b"demo\n");
        });
    }
    let code = super::daemon::start(
        cfg,
        Options {
            config_path: path,
            print_reports: true,
            exit_after_halt: true,
            ..Default::default()
        },
    );
    // safety_events.jsonl carries the append-only attribute: clear it first.
    let _ = warden_core::sys::fsattr::clear_append_only_tree(&dir);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("warden: cannot remove {}: {e}", dir.display());
    }
    code
}
