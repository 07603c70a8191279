//! `warden casepack export HALT_ID -o FILE` and `warden casepack verify FILE`.
//!
//! Exit codes of `verify`: 0 valid, 10 changed content (chain, hashes,
//! canonical form), 12 entries missing from the slice, 14 a signature or
//! the key does not verify (or differs from `--pubkey`), 15 not a case pack
//! or unreadable, 2 usage. `export`: 0, 1 on any error.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use warden_core::audit::DEFAULT_STATE_DIR;
use warden_core::casepack;
use warden_core::crypto;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CasepackCommand {
    /// Write the case pack of a halt to one file.
    Export(ExportArgs),
    /// Check a case pack with nothing but the file (and optionally a trusted key).
    Verify(VerifyArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// The halt's id (the `halt_id` of its `halt` audit entry).
    pub halt_id: String,
    /// Output file.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Directory holding warden.db and keys/.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The case pack.
    pub file: PathBuf,
    /// A trusted public key (PEM) the pack's key must equal.
    #[arg(long, value_name = "KEY")]
    pub pubkey: Option<PathBuf>,
}

pub fn run(cmd: CasepackCommand) -> i32 {
    match cmd {
        CasepackCommand::Export(args) => run_export(args),
        CasepackCommand::Verify(args) => run_verify(args),
    }
}

fn run_export(args: ExportArgs) -> i32 {
    let pack = match casepack::export(&args.state_dir, &args.halt_id) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("warden: casepack export: {e}");
            return 1;
        }
    };
    let bytes = casepack::to_bytes(&pack);
    // 0600: evidence holds command lines and log tails.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&args.output)
        .and_then(|mut f| {
            f.write_all(&bytes)?;
            f.sync_all()
        });
    if let Err(e) = written {
        eprintln!("warden: casepack export: {}: {e}", args.output.display());
        return 1;
    }
    println!(
        "wrote {} ({} bytes): halt {} at seq {}, entries {}..={}, key {}",
        args.output.display(),
        bytes.len(),
        pack.halt_id,
        pack.halt_seq,
        pack.start.as_ref().map_or(0, |c| c.seq) + 1,
        pack.end.seq,
        pack.key_id
    );
    0
}

fn run_verify(args: VerifyArgs) -> i32 {
    let trusted = match &args.pubkey {
        None => None,
        Some(path) => match crypto::load_public_key(path) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("warden: casepack verify: {e}");
                return 15;
            }
        },
    };
    let bytes = match std::fs::read(&args.file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("warden: casepack verify: {}: {e}", args.file.display());
            return 15;
        }
    };
    match casepack::verify_pack(&bytes, trusted.as_ref()) {
        Ok(pack) => {
            println!(
                "valid: halt {} (seq {}), evidence {} sha256 {}, {} entries, signed by key {}{}",
                pack.halt_id,
                pack.halt_seq,
                pack.evidence.id,
                pack.evidence.sha256,
                pack.entries.len(),
                pack.key_id,
                if trusted.is_some() {
                    " (trusted)"
                } else {
                    " (not checked against a trusted key)"
                }
            );
            0
        }
        Err(f) => {
            eprintln!("warden: casepack verify: {}: {f}", args.file.display());
            f.kind.exit_code()
        }
    }
}
