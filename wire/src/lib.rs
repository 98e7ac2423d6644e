//! Wire formats as typed views over bytes, and nothing else: no I/O, no allocation, no
//! dependency. Every port kind, the offloads and the forwarding engine read and build
//! headers through here, so each format (and each of its constants) is written once and
//! tested on literal bytes.
//!
//! - [`ethernet`]: MAC addresses, EtherTypes, the Ethernet II header;
//! - [`vlan`]: the 802.1Q tag: reading it, and the 18-byte header edits that push, pop
//!   or rewrite it during a frame's one copy;
//! - [`ip`] and [`tcp`]: IPv4, IPv6 and TCP headers, read and rewritten (segmentation);
//! - [`virtio_net`]: the virtio-net header (`struct virtio_net_hdr`);
//! - [`vxlan`]: the VXLAN header and the outer IPv4 and UDP headers of a tunnel's packets;
//! - [`checksum`]: the Internet checksum (RFC 1071), summed in any number of pieces (the
//!   one module with `unsafe`: it sums guest memory where it lies).
#![deny(unsafe_code)]

pub mod checksum;
pub mod ethernet;
pub mod ip;
pub mod tcp;
pub mod virtio_net;
pub mod vlan;
pub mod vxlan;

pub use checksum::Checksum;
pub use ethernet::{EthernetFrame, MacAddr};

/// Error of a view's `new_checked`: the bytes are too few for the header, or a field of it
/// (a version, a header length) does not fit them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("too short for its header, or at odds with it")
    }
}

impl std::error::Error for Malformed {}
pub use virtio_net::VnetHeader;

/// The big-endian 16-bit field at `at` of `b` (the views check their lengths first).
#[inline(always)]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
