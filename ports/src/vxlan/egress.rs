//! Frames for the other hosts: each encapsulated and sent with one `sendmsg` per tunnel end
//! it goes to (the end its destination is behind, or every end of the flood list), the
//! outer headers and the edit's prefix from the stack, the rest from the sender's buffers.

use super::remotes::{mac_key, RemoteId, Tally, Way};
use super::VxlanQueue;
use crate::counters::{DropReason, PortCounters};
use crate::datapath::{Egress, Scratch, SendBuilt, SendBurst, SendsAsBuilt};
use crate::frame::view::MemView;
use crate::frame::Seg;
use crate::offload::software::Outgoing;
use crate::offload::OffloadCaps;
use vringswitch_wire::vxlan::source_port;

/// A tunnel port opened for a burst.
struct VxlanBurst<'q> {
    q: &'q VxlanQueue,
    sent: Tally,
}

impl<'m> SendsAsBuilt<'m> for VxlanBurst<'_> {
    #[inline]
    fn offloads(&self) -> OffloadCaps {
        OffloadCaps::NONE
    }
}

/// Bytes of a frame's start read for its destination and its flow's hash: Ethernet, a VLAN
/// tag, IPv6's addresses, and the ports after an IPv4 header without options.
const FLOW_BYTES: usize = 64;

/// A hash of the inner frame's flow, from its first bytes: its addresses (and for TCP and
/// UDP over IPv4 without options, its ports), else its MAC addresses.
fn flow_hash(b: &[u8]) -> u32 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut mix = |bytes: &[u8]| {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0xff51_afd7_ed55_8ccd);
            h ^= h >> 29;
        }
    };
    let l3 = match b.get(12..14) {
        Some([0x81, 0x00]) => 18,
        _ => 14,
    };
    match b.get(l3 - 2..l3) {
        Some([0x08, 0x00]) if b.len() >= l3 + 20 => {
            mix(&b[l3 + 12..l3 + 20]);
            let proto = b[l3 + 9];
            let ihl = usize::from(b[l3] & 0x0f) * 4;
            if (proto == 6 || proto == 17) && b.len() >= l3 + ihl + 4 {
                mix(&b[l3 + ihl..l3 + ihl + 4]);
            }
        }
        Some([0x86, 0xdd]) if b.len() >= l3 + 40 => mix(&b[l3 + 8..l3 + 40]),
        _ => mix(&b[..b.len().min(12)]),
    }
    (h ^ (h >> 32)) as u32
}

impl<'m> SendBuilt<'m> for VxlanBurst<'_> {
    fn send_built(
        &mut self,
        src: &mut MemView<'m>,
        segs: &[Seg],
        out: &Outgoing<'_>,
    ) -> Result<u32, DropReason> {
        let q = self.q;
        // The frame's first bytes as it leaves: the prefix, then the source's.
        let mut first = [0u8; FLOW_BYTES];
        let n = out.head.len().min(FLOW_BYTES);
        first[..n].copy_from_slice(&out.head[..n]);
        let more = (out.len as usize).min(FLOW_BYTES - n);
        if more > 0 && !src.read_frame(segs, out.skip, &mut first[n..n + more]) {
            return Err(DropReason::BadDescriptor);
        }
        let seen = &first[..n + more];
        let Some(dst) = seen.get(..6) else {
            return Err(DropReason::BadDescriptor);
        };
        let one: [RemoteId; 1];
        let ends: &[RemoteId] = match q
            .macs
            .lookup(mac_key([dst[0], dst[1], dst[2], dst[3], dst[4], dst[5]]))
        {
            Some(end) if dst[0] & 1 == 0 => {
                one = [end];
                &one
            }
            _ => q.remotes.flood(),
        };
        if ends.is_empty() {
            // No end to send to (an EVPN port before its routes, a static one without
            // remotes): the frame has nowhere to go on this segment.
            return Err(DropReason::PortDown);
        }
        let frame_len = out.frame_len() as usize;
        let sport = source_port(flow_hash(seen));
        let mut sent = 0;
        let mut last = Ok(0);
        for &end in ends {
            let Some(remote) = q.remotes.get(end) else {
                continue;
            };
            let Some(outer) = remote.outer.for_frame(frame_len, sport) else {
                return Err(DropReason::TooBig);
            };
            match q.sockets.send(
                remote.addr,
                &[&outer, out.head],
                src,
                segs,
                out.skip,
                out.len as usize,
            ) {
                Ok(n) => {
                    sent += 1;
                    self.sent.add(&q.remotes, Way::Sent, end, n as u64);
                }
                Err(e) => last = Err(send_failed(&e)),
            }
        }
        // Delivered if it reached one end at least; else why not.
        if sent > 0 {
            Ok(frame_len as u32)
        } else {
            last
        }
    }
}

/// Why the kernel refused a tunnel packet, as a drop reason.
fn send_failed(e: &std::io::Error) -> DropReason {
    match e.raw_os_error() {
        // Over the path's MTU, "don't fragment" set.
        Some(libc::EMSGSIZE) => DropReason::TooBig,
        // The socket's buffer is full.
        Some(libc::EAGAIN) | Some(libc::ENOBUFS) => DropReason::NoRxBuffer,
        // No route or neighbour for the end: it cannot be reached now.
        _ => DropReason::PortDown,
    }
}

impl Egress for VxlanQueue {
    fn egress<'m, S: SendBurst<'m>>(
        &self,
        _qp_hint: u16,
        counters: &PortCounters,
        _scratch: &mut Scratch,
        burst: S,
    ) -> Result<(), DropReason> {
        let mut port = VxlanBurst {
            q: self,
            sent: Tally::default(),
        };
        let sent = burst.send_to(&mut port);
        port.sent.flush(&self.remotes, Way::Sent);
        counters.add_tx(0, sent.packets, sent.bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_hash_follows_addresses_and_ports_and_not_the_payload() {
        let mut f = vec![0u8; 64];
        f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 17;
        f[26..34].copy_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f[34..38].copy_from_slice(&[0x13, 0x88, 0x00, 0x35]);
        let h = flow_hash(&f);
        let mut payload = f.clone();
        payload[50] = 0xff;
        assert_eq!(flow_hash(&payload), h);
        let mut port = f.clone();
        port[35] = 0x89;
        assert_ne!(flow_hash(&port), h);
        let mut addr = f.clone();
        addr[33] = 3;
        assert_ne!(flow_hash(&addr), h);
        // Not IP: the MAC addresses; too short for its header: as not IP.
        let arp = [&f[..12], &[0x08, 0x06][..], &[0u8; 28][..]].concat();
        assert_eq!(
            flow_hash(&arp),
            flow_hash(&[&f[..12], &[0u8; 30][..]].concat())
        );
        assert_eq!(flow_hash(&f[..20]), flow_hash(&f[..12]));
    }
}
