//! The `warden` command.
pub fn main() -> i32 {
    0
}
