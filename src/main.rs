//! The `warden` binary. `warden kernel ...` is the safety kernel, started by
//! the daemon: it is dispatched before anything else runs, so that the
//! kernel's process touches only the code of the `warden-kernel` crate.

fn main() {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new("kernel")) {
        // main_from_args skips its first item as the program's name.
        std::process::exit(warden_kernel::main_from_args(std::env::args_os().skip(1)));
    }
    std::process::exit(warden_cli::main());
}
