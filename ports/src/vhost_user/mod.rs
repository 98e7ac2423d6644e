//! vhost-user ports: vringswitch as the vhost-user backend of a VM's virtio-net device.
//!
//! - [`backend`]: what we tell the frontend (features, queue count) and how the library's
//!   events reach the workers;
//! - [`connection`]: one thread per port that serves the socket, in server or client mode,
//!   again after every disconnect;
//! - [`relay`], [`message_check`], [`mem_regions`] and [`kicks`]: the messages checked
//!   before the library sees them, duplicate memory regions absorbed, and TX kick fds kept
//!   for the workers;
//! - [`dirty_log`] and [`migration`]: a live migration's dirty log, mapped and checked, and
//!   what the relay shares of it (and of SEND_RARP) with the workers;
//! - [`memory_fence`]: every mapping of a frontend's files registered, so that a frontend
//!   shrinking one (SIGBUS on the next access) loses its own connection, not the daemon;
//! - `queues`, `ingress` and `egress`: the kind's side of the port contract
//!   ([`crate::datapath`]): the VM's virtqueues as the workers hold them
//!   ([`VhostUserQueues`]), a TX ring taken from and an RX ring sent to, a burst at a time;
//! - [`rings`]: the per-frame split-ring data path used by the workers, over
//!   [`split_ring`] (rings mapped once per burst) and [`crate::frame::view`] (cached
//!   translation of guest addresses, and the raw copies in and out of guest memory).

pub mod backend;
pub mod carry;
pub mod connection;
pub mod dirty_log;
mod egress;
mod ingress;
pub mod kicks;
pub mod mem_regions;
pub mod memory_fence;
pub mod message_check;
pub mod migration;
mod queues;
pub mod relay;
pub mod rings;
pub mod setup_log;
pub mod split_ring;

use std::path::PathBuf;

pub use connection::{start_port, take_over_port, VhostUserPort, VhostUserPortConfig};
pub use queues::{virtio_net_hdr_len, VhostUserQueues};

/// A regular file of `len` bytes that no path names any more, standing in for a guest's
/// memfd in tests.
#[cfg(test)]
pub(crate) fn unlinked_file(len: u64) -> std::fs::File {
    use std::sync::atomic::{AtomicU64, Ordering};
    // One name per call: tests run in parallel threads of one process.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "vringswitch-test-file-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.set_len(len).unwrap();
    f
}

/// Errors of a vhost-user port.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("cannot create the socket directory {path}: {error}")]
    SocketDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    SocketFile(#[from] crate::socket_file::SocketFileError),
    #[error("cannot listen on vhost-user socket {path}: {error}")]
    Listen {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot set permissions of {path}: {error}")]
    Permissions {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot spawn the connection thread: {0}")]
    Spawn(std::io::Error),
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
}
