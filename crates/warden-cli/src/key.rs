//! `warden key show`: the host's public key and key id, for the operator to
//! keep somewhere safe and pass to `audit verify --pubkey` and
//! `casepack verify --pubkey`. Reads only; never creates a key.
//!
//! Exit codes: 0, 1 no key (the daemon creates it on first start), 15 unreadable.

use std::path::PathBuf;

use warden_core::audit::DEFAULT_STATE_DIR;
use warden_core::crypto;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeyCommand {
    /// Print the public key (PEM) and its key id.
    Show(ShowArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// Directory holding keys/.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

pub fn run(cmd: KeyCommand) -> i32 {
    match cmd {
        KeyCommand::Show(args) => {
            let path = args.state_dir.join("keys").join(crypto::PUBLIC_KEY_FILE);
            if !path.exists() {
                eprintln!(
                    "warden: key show: {} does not exist (the daemon creates the key on first start)",
                    path.display()
                );
                return 1;
            }
            match crypto::load_public_key(&path) {
                Ok(key) => {
                    print!("{}", crypto::public_pem(&key));
                    println!("key id: {}", crypto::key_id(&key));
                    0
                }
                Err(e) => {
                    eprintln!("warden: key show: {e}");
                    15
                }
            }
        }
    }
}
