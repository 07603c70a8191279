//! TODO

pub mod fsattr;
