//! `warden audit verify|tail|show`: read the database directly, so they
//! work without a daemon, and never write to it.
//!
//! Exit codes of `audit verify` (see docs/audit.md): 0 intact, 10 edited,
//! 11 reordered, 12 deleted from the middle, 13 truncated, 14 wrong key,
//! 15 unreadable or not a warden database, 16 witnessed head missing,
//! 2 usage. `tail` and `show`: 0, 1 no such entry, 15 unreadable.

use std::path::PathBuf;
use std::time::Duration;

use warden_core::audit::chain::{rfc3339_ms, Entry};
use warden_core::audit::verify::{self, VerifyOptions};
use warden_core::audit::{schema, store, DEFAULT_STATE_DIR};
use warden_core::crypto;

/// Exit code: the database cannot be read.
pub const EXIT_UNREADABLE: i32 = 15;
/// Exit code of `show` for a seq that is not in the log.
pub const EXIT_NOT_FOUND: i32 = 1;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain, signatures and head offline; exit 0 when intact.
    Verify(VerifyArgs),
    /// Print the last entries.
    Tail(TailArgs),
    /// Print one entry.
    Show(ShowArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Directory holding warden.db and keys/.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Trusted public key (PEM); default: state_dir/keys/signing.pub.
    #[arg(long, value_name = "KEY")]
    pub pubkey: Option<PathBuf>,
    /// File of witnessed heads (JSON lines with seq and hash) that the log
    /// must still contain.
    #[arg(long, value_name = "FILE_OF_HEADS")]
    pub against: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// How many entries.
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 20)]
    pub n: u64,
    /// Keep printing new entries as they are committed.
    #[arg(short, long)]
    pub follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Directory holding warden.db.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// The entry's seq.
    pub seq: u64,
    /// As JSON.
    #[arg(long)]
    pub json: bool,
    /// Directory holding warden.db.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

pub fn run(cmd: AuditCommand) -> i32 {
    match cmd {
        AuditCommand::Verify(args) => run_verify(args),
        AuditCommand::Tail(args) => run_tail(args),
        AuditCommand::Show(args) => run_show(args),
    }
}

fn run_verify(args: VerifyArgs) -> i32 {
    let opts = VerifyOptions {
        state_dir: args.state_dir,
        pubkey: args.pubkey,
        against: args.against,
    };
    match verify::verify(&opts) {
        Ok(r) => {
            println!(
                "intact: {} entries, head {}, {} checkpoints (last at seq {}), {} evidence records, {} witnessed heads; key {} from {}",
                r.entries,
                r.head_hash,
                r.checkpoints,
                r.last_checkpoint,
                r.evidence,
                r.witnessed,
                r.key_id,
                r.key_source
            );
            0
        }
        Err(f) => {
            eprintln!("warden: audit verify: {f}");
            f.kind.exit_code()
        }
    }
}

/// One entry as a line of text.
pub fn format_entry(e: &Entry) -> String {
    let mut line = format!("{:>6}  {}  {}", e.seq, rfc3339_ms(e.timestamp), e.kind);
    if let Some(agent) = &e.agent {
        line.push_str(&format!("  agent={agent}"));
    }
    if let Some(uid) = e.uid {
        line.push_str(&format!("  uid={uid}"));
    }
    line.push_str(&format!("  {}", crypto::canonical_json(&e.data)));
    line
}

fn entry_json(e: &Entry) -> String {
    crypto::canonical_json(&serde_json::to_value(e).expect("an entry serializes"))
}

fn print_entries(entries: &[Entry], json: bool) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for e in entries {
        let line = if json { entry_json(e) } else { format_entry(e) };
        // A closed pipe (`| head`) ends the output quietly.
        if writeln!(out, "{line}").is_err() {
            return;
        }
    }
    let _ = out.flush();
}

fn run_tail(args: TailArgs) -> i32 {
    let db = args.state_dir.join(schema::DB_FILE);
    let conn = match schema::open_read_only(&db) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warden: audit tail: {e}");
            return EXIT_UNREADABLE;
        }
    };
    let entries = match store::last_entries(&conn, args.n) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("warden: audit tail: {e}");
            return EXIT_UNREADABLE;
        }
    };
    let mut last = entries.last().map_or(0, |e| e.seq);
    if args.n > 0 {
        print_entries(&entries, args.json);
    }
    if !args.follow {
        return 0;
    }
    // Reopen on every poll: a connection opened `immutable=1` (no daemon
    // was running) would never see new commits.
    drop(conn);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let conn = match schema::open_read_only(&db) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("warden: audit tail: {e}");
                return EXIT_UNREADABLE;
            }
        };
        match store::entries(&conn, last + 1, u64::MAX) {
            Ok(new) => {
                if let Some(e) = new.last() {
                    last = e.seq;
                }
                print_entries(&new, args.json);
            }
            Err(e) => {
                eprintln!("warden: audit tail: {e}");
                return EXIT_UNREADABLE;
            }
        }
    }
}

fn run_show(args: ShowArgs) -> i32 {
    let db = args.state_dir.join(schema::DB_FILE);
    let conn = match schema::open_read_only(&db) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warden: audit show: {e}");
            return EXIT_UNREADABLE;
        }
    };
    let entry = match store::entry(&conn, args.seq) {
        Ok(Some(e)) => e,
        Ok(None) => {
            eprintln!("warden: audit show: no entry with seq {}", args.seq);
            return EXIT_NOT_FOUND;
        }
        Err(e) => {
            eprintln!("warden: audit show: {e}");
            return EXIT_UNREADABLE;
        }
    };
    let covering = store::checkpoint_covering(&conn, entry.seq).ok().flatten();
    if args.json {
        println!("{}", entry_json(&entry));
        return 0;
    }
    println!("seq:        {}", entry.seq);
    println!(
        "timestamp:  {} ({} ms)",
        rfc3339_ms(entry.timestamp),
        entry.timestamp
    );
    println!("kind:       {}", entry.kind);
    println!("agent:      {}", entry.agent.as_deref().unwrap_or("-"));
    println!(
        "uid:        {}",
        entry.uid.map_or_else(|| "-".to_string(), |u| u.to_string())
    );
    println!("prev_hash:  {}", entry.prev_hash);
    println!("hash:       {}", entry.hash);
    match covering {
        Some(cp) => println!("checkpoint: seq {} ({})", cp.seq, rfc3339_ms(cp.timestamp)),
        None => println!("checkpoint: none yet (covered by the signed head record only)"),
    }
    println!(
        "data:\n{}",
        serde_json::to_string_pretty(&entry.data).expect("JSON re-serializes")
    );
    0
}
