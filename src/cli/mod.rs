//! The `warden` command.
pub mod audit;
pub mod casepack;
pub mod key;

pub fn main() -> i32 {
    0
}
