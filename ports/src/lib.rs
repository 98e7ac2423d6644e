//! Ports of the switch: the places frames enter and leave it.
//!
//! A [`PortHandle`] is what the forwarding workers see of a port: its identity, a doorbell
//! that wakes them, the currently attached queues (if a peer is connected) and per-worker
//! counters. The [`vhost_user`] module turns a unix socket into such an attachment and keeps
//! it served across reconnects; [`vhost_user::rings`] is the per-frame split-ring data path.
//! [`frame`] is what every kind shares: frames, the memory they lie in, and how they change
//! on the way out. [`socket_file`] binds socket files without taking a live one from another process.
//! [`tap`] ports carry frames to and from the host's kernel through a TAP interface, and
//! [`afxdp`] ports through an AF_XDP socket on a queue of a host interface; [`vxlan`] ports
//! carry a bridge's frames to and from other hosts in VXLAN tunnels.
#![deny(unsafe_code)]

pub mod afxdp;
pub mod counters;
pub mod datapath;
pub mod fd_channel;
pub mod frame;
mod interface_watch;
pub mod log_limit;
pub mod netif;
pub mod offload;
pub mod port;
pub mod socket_file;
pub mod tap;
pub mod vhost_user;
pub mod vxlan;

pub use counters::{DropReason, OffloadAction, PortCounters, PortStats};
pub use port::{Attachment, PortHandle, PortId};
pub use vhost_user::VhostUserQueues;
