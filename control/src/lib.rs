//! The vringswitch daemon and its command line, as a library: [`daemon`] assembles the switch
//! and its ports from a configuration and changes them ([`schema`] what it is asked,
//! [`errors`] why it refuses, [`socket_dir`] where sockets may go); [`http`] serves the API,
//! health and metrics;
//! [`client`] and [`ctl`] are `vringctl`'s API client and output. The binaries only parse
//! arguments.
#![deny(unsafe_code)]

pub mod capture_client;
pub mod capture_stream;
pub mod client;
pub mod ctl;
pub mod daemon;
mod desired;
pub mod drop_log;
pub mod errors;
mod evpn;
pub mod handover;
pub mod http;
pub mod http_guard;
pub mod http_server;
pub mod instance_lock;
pub mod log_levels;
pub mod manpage;
pub mod pcapng;
pub mod schema;
mod security_groups;
pub mod socket_dir;
pub mod state_file;
pub mod systemd;
mod topology;
pub mod trace;
pub mod upgrade;
