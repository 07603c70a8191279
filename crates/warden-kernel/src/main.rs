//! `warden-kernel`: see docs/kernel.md. Started by the daemon, never by hand.
fn main() {
    std::process::exit(warden_kernel::main_from_args(std::env::args_os()))
}
