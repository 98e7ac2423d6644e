//! Checksum and TCP segmentation offloads.
//!
//! A frame from a VM (or the kernel) may come with a virtio-net header that leaves work to
//! its receiver: a checksum to complete (NEEDS_CSUM), or a TSO frame of up to 64 KiB to cut
//! into segments. [`VnetHeader::check`] says what such a frame needs of its receivers, as
//! [`OffloadCaps`]; a receiver whose own [`OffloadCaps`] contain them gets the frame and its
//! header as they are. For any other, [`software::send`] completes the checksum or cuts the
//! segments, writing each segment's headers from a copy on the switch's side and each
//! payload byte once into the receiver's buffers: still one copy, no bounce buffer.

pub mod software;
pub mod tcp_frame;
pub mod vnet_header;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
};

pub use vnet_header::{VnetHeader, VnetOffloads};

use crate::frame::view::MemView;
use crate::frame::Seg;

/// Most bytes of a frame's headers the switch reads and rebuilds: Ethernet, two VLAN tags,
/// IPv6 with options, and TCP with options fit.
pub const MAX_HEADERS: usize = 256;

/// A set of offloads: what a receiver accepts, what a sender may use, or what a frame needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadCaps(u8);

impl OffloadCaps {
    pub const NONE: OffloadCaps = OffloadCaps(0);
    /// A checksum left to complete (a receiver: GUEST_CSUM; a sender: CSUM).
    pub const CSUM: OffloadCaps = OffloadCaps(1);
    /// TSO frames of TCP over IPv4.
    pub const TSO4: OffloadCaps = OffloadCaps(2);
    /// TSO frames of TCP over IPv6.
    pub const TSO6: OffloadCaps = OffloadCaps(4);
    /// TSO frames with CWR set (the ECN flag of the header).
    pub const ECN: OffloadCaps = OffloadCaps(8);
    pub const ALL: OffloadCaps = OffloadCaps(15);

    /// Whether every offload of `other` is in `self`.
    #[inline]
    pub fn contains(self, other: OffloadCaps) -> bool {
        self.0 & other.0 == other.0
    }

    #[inline]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The offloads of `features` named by the four feature bits given, with the virtio
    /// spec's dependencies applied: TSO only with checksums, ECN only with TSO. Bit
    /// arithmetic, no branch: the workers ask once per burst.
    #[inline]
    fn from_bits(features: u64, csum: u32, tso4: u32, tso6: u32, ecn: u32) -> OffloadCaps {
        let bit = |b: u32| ((features >> b) & 1) as u8;
        let c = bit(csum);
        let (t4, t6) = (bit(tso4) & c, bit(tso6) & c);
        let e = bit(ecn) & (t4 | t6);
        OffloadCaps(c | t4 << 1 | t6 << 2 | e << 3)
    }

    /// What a VM that acknowledged `features` may send (CSUM, HOST_TSO4/6, HOST_ECN).
    #[inline]
    pub fn sent_by_guest(features: u64) -> OffloadCaps {
        OffloadCaps::from_bits(
            features,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_ECN,
        )
    }

    /// What a VM that acknowledged `features` accepts (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN).
    #[inline]
    pub fn taken_by_guest(features: u64) -> OffloadCaps {
        OffloadCaps::from_bits(
            features,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_ECN,
        )
    }
}

impl std::ops::BitOr for OffloadCaps {
    type Output = OffloadCaps;
    fn bitor(self, o: OffloadCaps) -> OffloadCaps {
        OffloadCaps(self.0 | o.0)
    }
}

/// Why a frame's offload request was refused (counted as drop reason `bad_offload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("an offload the sender did not negotiate")]
    NotNegotiated,
    #[error("a checksum or header position outside the frame")]
    OutsideFrame,
    #[error("headers longer than the switch reads")]
    HeadersTooLong,
    #[error("an unknown segmentation type")]
    UnknownGsoType,
    #[error("segmentation without a checksum to complete")]
    GsoWithoutChecksum,
    #[error("a segment size of less than 536 bytes")]
    BadGsoSize,
    #[error("a segmentation frame over 64 KiB")]
    TooBig,
    #[error("a frame that claims TCP and is not, or is not as its header says")]
    NotTcp,
}

/// Checks the header `vnet` of a `len`-byte frame in `segs` of the memory seen by `view`,
/// from a sender that negotiated `sent`, and leaves in `vnet` what its receivers are to
/// see: nothing for a frame that needs nothing, the meaningful fields otherwise, and for a
/// TSO frame the length of its headers as parsed here.
pub fn accept(
    view: &mut MemView<'_>,
    segs: &[Seg],
    len: u32,
    vnet: &mut VnetHeader,
    sent: OffloadCaps,
) -> Result<(), OffloadError> {
    let needs = vnet.check(len, sent)?;
    if needs.is_empty() {
        *vnet = VnetHeader::default();
        return Ok(());
    }
    let mut out = VnetHeader {
        flags: VnetHeader::F_NEEDS_CSUM,
        csum_start: vnet.csum_start,
        csum_offset: vnet.csum_offset,
        ..VnetHeader::default()
    };
    if vnet.is_gso() {
        let mut head = [0u8; MAX_HEADERS];
        let n = (len as usize).min(MAX_HEADERS);
        if !view.read_frame(segs, 0, &mut head[..n]) {
            return Err(OffloadError::OutsideFrame);
        }
        let layout = tcp_frame::check_tso(vnet, &head[..n], len)?;
        (out.gso_type, out.gso_size) = (vnet.gso_type, vnet.gso_size);
        out.hdr_len = layout.payload;
    }
    *vnet = out;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_follow_the_spec_dependencies() {
        let bits = |b: &[u32]| b.iter().fold(0u64, |f, &b| f | 1 << b);
        let guest = bits(&[
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_ECN,
        ]);
        assert_eq!(
            OffloadCaps::taken_by_guest(guest),
            OffloadCaps::CSUM | OffloadCaps::TSO4 | OffloadCaps::ECN
        );
        assert_eq!(OffloadCaps::sent_by_guest(guest), OffloadCaps::NONE);
        // TSO without checksums means nothing; ECN without TSO neither.
        let tso_only = bits(&[VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6]);
        assert_eq!(OffloadCaps::sent_by_guest(tso_only), OffloadCaps::NONE);
        let ecn = bits(&[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_ECN]);
        assert_eq!(OffloadCaps::sent_by_guest(ecn), OffloadCaps::CSUM);
        assert!(OffloadCaps::ALL.contains(OffloadCaps::TSO6 | OffloadCaps::CSUM));
        assert!(!OffloadCaps::CSUM.contains(OffloadCaps::TSO6));
        assert!(OffloadCaps::CSUM.contains(OffloadCaps::NONE));
    }
}
