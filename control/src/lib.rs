//! The vringswitch daemon, as a library: [`daemon`] assembles the switch and its ports from
//! a configuration; [`http`] serves health and metrics. `main.rs` only parses arguments.
#![deny(unsafe_code)]

pub mod daemon;
pub mod http;
