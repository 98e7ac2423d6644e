//! Sending a frame whose header leaves work to the receiver, to a receiver that takes only
//! part of it: its header passed through when the receiver takes all it needs, else its
//! checksum completed or its segments cut here.
//!
//! The port kind's own writing is a callback ([`Outgoing`] in, its result out), so the same
//! code serves a VM's RX ring, a TAP descriptor and an AF_XDP UMEM: each outgoing frame is
//! a virtio-net header, a few header bytes built on the stack, then a range of the source
//! frame copied once.

use super::tcp_frame::{self, Segmenter};
use vringswitch_wire::Checksum;

use super::{OffloadCaps, VnetHeader, VnetOffloads, MAX_HEADERS};
use crate::counters::DropReason;
use crate::frame::view::MemView;
use crate::frame::{FrameEdit, Seg};

/// One frame as it leaves the switch: its virtio-net header (for receivers that have one),
/// the bytes `head` from the switch, then `len` bytes of the source frame from byte `skip`.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub vnet: VnetHeader,
    pub head: &'a [u8],
    pub skip: usize,
    pub len: u32,
}

impl<'a> Outgoing<'a> {
    /// A `frame_len`-byte frame changed by `edit` and nothing else, or `None` if the edit
    /// replaces more than the frame has.
    #[inline(always)]
    pub fn edited(frame_len: u32, edit: &'a FrameEdit) -> Option<Outgoing<'a>> {
        let skip = u32::from(edit.skip);
        Some(Outgoing {
            vnet: VnetHeader::default(),
            head: edit.prefix(),
            skip: skip as usize,
            len: frame_len.checked_sub(skip)?,
        })
    }

    /// The frame's length, virtio-net header excluded.
    pub fn frame_len(&self) -> u32 {
        self.head.len() as u32 + self.len
    }

    /// The longest frame the receiver's link carries of it: the frame, or for one the
    /// receiver is to cut, its first segment (`hdr_len` bytes of headers and `gso_size` of
    /// payload).
    #[inline]
    pub fn longest_on_the_wire(&self) -> u32 {
        let whole = self.frame_len();
        if self.vnet.is_gso() {
            whole.min(u32::from(self.vnet.hdr_len) + u32::from(self.vnet.gso_size))
        } else {
            whole
        }
    }
}

/// What was done to a frame on its way to one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Passed with its header: the receiver does the work.
    Passed,
    /// Its checksum completed here.
    Checksummed,
    /// Cut into this many segments here, checksums included.
    Segmented(u32),
}

/// A frame from a source: `len` bytes in `segs` of the memory seen by `view`, with the
/// header `vnet` that its source accepted ([`VnetHeader::check`], and for a TSO frame
/// [`tcp_frame::parse`]).
pub struct Source<'a, 'm> {
    pub view: &'a mut MemView<'m>,
    pub segs: &'a [Seg],
    pub len: u32,
    pub vnet: VnetHeader,
}

/// Sends `frame`, changed by `edit` (a VLAN tag pushed or popped), to a receiver that
/// takes the offloads `rx`, through `emit`: once with its header if the receiver takes all
/// it needs, else once with its checksum completed, or once per segment. `emit` gets the
/// source's view back, to copy the frame's bytes with. Everything about
/// the frame's own headers is decided on a copy of them: the source cannot change it after.
///
/// Frames already emitted stay sent when `emit` fails; the error is returned at once.
pub fn send<'m>(
    frame: Source<'_, 'm>,
    edit: &FrameEdit,
    rx: OffloadCaps,
    mut emit: impl FnMut(&mut MemView<'m>, &Outgoing<'_>) -> Result<(), DropReason>,
) -> Result<Sent, DropReason> {
    let vnet = frame.vnet;
    let skip = usize::from(edit.skip);
    let prefix = edit.prefix();
    let delta = prefix.len() as i16 - skip as i16;
    let bad = DropReason::BadOffload;
    if frame.len as usize <= skip {
        return Err(DropReason::BadDescriptor);
    }
    if rx.contains(vnet.needs()) {
        if vnet.needs_csum() && usize::from(vnet.csum_start) < skip {
            return Err(bad);
        }
        let shift = |x: u16| x.wrapping_add_signed(delta);
        let mut out = VnetHeader::default();
        if vnet.needs_csum() {
            out.flags = VnetHeader::F_NEEDS_CSUM;
            (out.csum_start, out.csum_offset) = (shift(vnet.csum_start), vnet.csum_offset);
        }
        if vnet.is_gso() {
            // The source's hdr_len was set to the parsed header length, which is past the
            // Ethernet header any edit changes.
            (out.gso_type, out.gso_size) = (vnet.gso_type, vnet.gso_size);
            out.hdr_len = shift(vnet.hdr_len);
        }
        emit(
            frame.view,
            &Outgoing {
                vnet: out,
                head: prefix,
                skip,
                len: frame.len - skip as u32,
            },
        )?;
        return Ok(Sent::Passed);
    }
    let mut head = [0u8; MAX_HEADERS];
    let hn = (frame.len as usize).min(MAX_HEADERS);
    if !frame.view.read_frame(frame.segs, 0, &mut head[..hn]) {
        return Err(DropReason::BadDescriptor);
    }
    let mut out = [0u8; MAX_HEADERS + FrameEdit::MAX_PREFIX];
    out[..prefix.len()].copy_from_slice(prefix);

    if !vnet.is_gso() {
        // A checksum to complete (a frame needing nothing was passed above).
        let (cs, co) = (usize::from(vnet.csum_start), usize::from(vnet.csum_offset));
        let end = cs + co + 2;
        if cs < skip || end > hn {
            return Err(bad);
        }
        let mut c = Checksum::new();
        c.add(&head[cs..end]);
        let rest = frame.len as usize - end;
        if !frame.view.checksum_frame(frame.segs, end, rest, &mut c) {
            return Err(DropReason::BadDescriptor);
        }
        head[cs + co..end].copy_from_slice(&c.finish().to_be_bytes());
        let n = prefix.len() + end - skip;
        out[prefix.len()..n].copy_from_slice(&head[skip..end]);
        emit(
            frame.view,
            &Outgoing {
                vnet: VnetHeader::default(),
                head: &out[..n],
                skip: end,
                len: rest as u32,
            },
        )?;
        return Ok(Sent::Checksummed);
    }

    // Checked at the source too; checked again on this copy, which is what is used.
    let layout = tcp_frame::check_tso(&vnet, &head[..hn], frame.len).map_err(|_| bad)?;
    if usize::from(layout.l3) < skip {
        return Err(bad);
    }
    let p = usize::from(layout.payload);
    let mut template = [0u8; MAX_HEADERS + FrameEdit::MAX_PREFIX];
    let n = prefix.len() + p - skip;
    template[..prefix.len()].copy_from_slice(prefix);
    template[prefix.len()..n].copy_from_slice(&head[skip..p]);
    let shifted = layout.shifted(delta);
    let seg = Segmenter::new(shifted, frame.len - p as u32, vnet.gso_size);
    let partial = rx.contains(OffloadCaps::CSUM);
    // Bounded: at most 64 KiB / MIN_GSO_SIZE segments.
    for i in 0..seg.count() {
        seg.headers(&template, i, &mut out);
        let (off, len) = seg.payload(i);
        let from = p + off as usize;
        let vnet = if partial {
            seg.partial_checksum(&mut out, i);
            VnetHeader {
                flags: VnetHeader::F_NEEDS_CSUM,
                csum_start: shifted.l4,
                csum_offset: 16,
                ..VnetHeader::default()
            }
        } else {
            let mut c = Checksum::new();
            if !frame
                .view
                .checksum_frame(frame.segs, from, len as usize, &mut c)
            {
                return Err(DropReason::BadDescriptor);
            }
            seg.tcp_checksum(&mut out, i, &c);
            VnetHeader::default()
        };
        emit(
            frame.view,
            &Outgoing {
                vnet,
                head: &out[..n],
                skip: from,
                len,
            },
        )?;
    }
    Ok(Sent::Segmented(seg.count()))
}

#[cfg(test)]
mod tests {
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::frame::FrameMem;

    /// A frame as a guest with offloads sends it, with its header, in three segments of
    /// guest memory: TCP (a TSO frame with the partial checksum Linux leaves) or UDP (a
    /// partial checksum only).
    struct GuestFrame {
        mem: FrameMem,
        segs: Vec<Seg>,
        frame: Vec<u8>,
        vnet: VnetHeader,
    }

    fn guest_frame(v6: bool, vlan: bool, tcp: bool, payload: usize, mss: u16) -> GuestFrame {
        let data: Vec<u8> = (0..payload).map(|i| (i * 13 + 5) as u8).collect();
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut frame = Vec::new();
        let ip = match (vlan, v6) {
            (true, false) => {
                eth.single_vlan(7.try_into().unwrap())
                    .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            }
            (false, false) => eth.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64),
            (true, true) => eth
                .single_vlan(7.try_into().unwrap())
                .ipv6([0xfd; 16], [0xfe; 16], 64),
            (false, true) => eth.ipv6([0xfd; 16], [0xfe; 16], 64),
        };
        let l3 = if vlan { 18 } else { 14 };
        let l4 = l3 + if v6 { 40 } else { 20 };
        if tcp {
            ip.tcp(1, 2, 1000, 500)
                .ack(1)
                .psh()
                .write(&mut frame, &data)
                .unwrap();
        } else {
            ip.udp(1, 2).write(&mut frame, &data).unwrap();
        }
        // The checksum field as the guest leaves it: the pseudo-header's folded sum.
        let l4_len = (frame.len() - l4) as u32;
        let mut pseudo = Checksum::new();
        if v6 {
            pseudo.add(&frame[l3 + 8..l3 + 40]);
            pseudo.add(&l4_len.to_be_bytes());
            pseudo.add(&[0, 0, 0, if tcp { 6 } else { 17 }]);
        } else {
            pseudo.add(&frame[l3 + 12..l3 + 20]);
            pseudo.add(&[0, if tcp { 6 } else { 17 }]);
            pseudo.add_u16(l4_len as u16);
        }
        let field = l4 + if tcp { 16 } else { 6 };
        frame[field..field + 2].copy_from_slice(&pseudo.folded().to_be_bytes());
        let vnet = VnetHeader {
            flags: VnetHeader::F_NEEDS_CSUM,
            gso_type: match (tcp, v6) {
                (false, _) => VnetHeader::GSO_NONE,
                (true, false) => VnetHeader::GSO_TCPV4,
                (true, true) => VnetHeader::GSO_TCPV6,
            },
            hdr_len: if tcp { (l4 + 20) as u16 } else { 0 },
            gso_size: if tcp { mss } else { 0 },
            csum_start: l4 as u16,
            csum_offset: if tcp { 16 } else { 6 },
        };
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4_0000)]).unwrap();
        let cut1 = 61.min(frame.len());
        let cut2 = (cut1 + 999).min(frame.len());
        let mut segs = Vec::new();
        for (addr, range) in [
            (0x1000u64, 0..cut1),
            (0x9001, cut1..cut2),
            (0x2_0000, cut2..frame.len()),
        ] {
            if !range.is_empty() {
                mem.write_slice(&frame[range.clone()], GuestAddress(addr))
                    .unwrap();
                segs.push(Seg {
                    addr,
                    len: range.len() as u32,
                });
            }
        }
        GuestFrame {
            mem,
            segs,
            frame,
            vnet,
        }
    }

    /// Frames a receiver got, each with its header.
    type Received = Vec<(VnetHeader, Vec<u8>)>;

    /// Sends `f` to a receiver taking `rx`, and returns what it got: each frame's header
    /// and bytes.
    fn send_to(
        f: &GuestFrame,
        edit: &FrameEdit,
        rx: OffloadCaps,
    ) -> (Result<Sent, DropReason>, Received) {
        let mut view = MemView::new(&f.mem);
        let mut reader = MemView::new(&f.mem);
        let mut got = Vec::new();
        let src = Source {
            view: &mut view,
            segs: &f.segs,
            len: f.frame.len() as u32,
            vnet: f.vnet,
        };
        let r = send(src, edit, rx, |_, o| {
            let mut bytes = o.head.to_vec();
            let mut rest = vec![0u8; o.len as usize];
            assert!(reader.read_frame(&f.segs, o.skip, &mut rest));
            bytes.extend_from_slice(&rest);
            assert_eq!(bytes.len() as u32, o.frame_len());
            got.push((o.vnet, bytes));
            Ok(())
        });
        (r, got)
    }

    /// Completes a partial checksum as a receiver would.
    fn complete(vnet: &VnetHeader, frame: &mut [u8]) {
        let (cs, co) = (usize::from(vnet.csum_start), usize::from(vnet.csum_offset));
        let mut c = Checksum::new();
        c.add(&frame[cs..]);
        frame[cs + co..cs + co + 2].copy_from_slice(&c.finish().to_be_bytes());
    }

    /// Checks a TCP or UDP frame's checksums with etherparse; returns its payload.
    fn payload_of_checked(frame: &[u8]) -> Vec<u8> {
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        let (src6, dst6, src4, dst4) = match p.net.as_ref().unwrap() {
            etherparse::InternetSlice::Ipv4(ip) => {
                let h = ip.header();
                assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
                (None, None, Some(h.source()), Some(h.destination()))
            }
            etherparse::InternetSlice::Ipv6(ip) => {
                let h = ip.header();
                (Some(h.source()), Some(h.destination()), None, None)
            }
            _ => unreachable!(),
        };
        match p.transport.unwrap() {
            TransportSlice::Tcp(t) => {
                let want = match (src4, src6) {
                    (Some(s), _) => t.calc_checksum_ipv4(s, dst4.unwrap()).unwrap(),
                    (_, Some(s)) => t.calc_checksum_ipv6(s, dst6.unwrap()).unwrap(),
                    _ => unreachable!(),
                };
                assert_eq!(t.checksum(), want, "TCP checksum");
                t.payload().to_vec()
            }
            TransportSlice::Udp(u) => {
                let h = u.to_header();
                let want = match (src4, src6) {
                    (Some(s), _) => {
                        let ip = etherparse::Ipv4Header::new(
                            0,
                            64,
                            etherparse::IpNumber::UDP,
                            s,
                            dst4.unwrap(),
                        )
                        .unwrap();
                        h.calc_checksum_ipv4(&ip, u.payload()).unwrap()
                    }
                    (_, Some(s)) => {
                        let ip = etherparse::Ipv6Header {
                            source: s,
                            destination: dst6.unwrap(),
                            ..Default::default()
                        };
                        h.calc_checksum_ipv6(&ip, u.payload()).unwrap()
                    }
                    _ => unreachable!(),
                };
                assert_eq!(u.checksum(), want, "UDP checksum");
                u.payload().to_vec()
            }
            _ => panic!("neither TCP nor UDP"),
        }
    }

    fn payload_of(f: &GuestFrame) -> Vec<u8> {
        let p = SlicedPacket::from_ethernet(&f.frame).unwrap();
        match p.transport.unwrap() {
            TransportSlice::Tcp(t) => t.payload().to_vec(),
            TransportSlice::Udp(u) => u.payload().to_vec(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_receiver_that_takes_everything_gets_the_frame_and_its_header_as_they_are() {
        for (v6, tcp) in [(false, true), (true, true), (false, false)] {
            let f = guest_frame(v6, false, tcp, 5000, 1400);
            let (r, got) = send_to(&f, &FrameEdit::NONE, OffloadCaps::ALL);
            assert_eq!(r, Ok(Sent::Passed));
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0, f.vnet);
            assert!(got[0].1 == f.frame);
        }
    }

    #[test]
    fn the_longest_frame_on_the_wire_is_the_first_segment_of_a_frame_still_to_cut() {
        let head = [0u8; 18];
        let plain = Outgoing {
            vnet: VnetHeader::default(),
            head: &head,
            skip: 12,
            len: 9000,
        };
        assert_eq!(plain.longest_on_the_wire(), 9018);
        // Linux's TSO frame: 66 bytes of headers, segments of 1448.
        let tso = Outgoing {
            vnet: VnetHeader {
                gso_type: VnetHeader::GSO_TCPV4,
                hdr_len: 66,
                gso_size: 1448,
                ..VnetHeader::default()
            },
            ..plain
        };
        assert_eq!(tso.longest_on_the_wire(), 1514);
        // One shorter than a segment is its own length.
        assert_eq!(Outgoing { len: 1000, ..tso }.longest_on_the_wire(), 1018);
    }

    #[test]
    fn a_receiver_without_tso_gets_segments_with_complete_checksums() {
        for v6 in [false, true] {
            for (payload, segments) in [(5600, 4), (5601, 5), (5599, 4), (100, 1), (65_000, 47)] {
                let f = guest_frame(v6, false, true, payload, 1400);
                let (r, got) = send_to(&f, &FrameEdit::NONE, OffloadCaps::NONE);
                assert_eq!(r, Ok(Sent::Segmented(segments)), "{payload} bytes");
                let mut all = Vec::new();
                for (vnet, seg) in &got {
                    assert_eq!(*vnet, VnetHeader::default());
                    all.extend(payload_of_checked(seg));
                }
                assert!(all == payload_of(&f));
            }
        }
    }

    #[test]
    fn a_receiver_with_checksums_but_no_tso_gets_segments_to_complete() {
        let f = guest_frame(false, false, true, 4000, 1000);
        let (r, got) = send_to(&f, &FrameEdit::NONE, OffloadCaps::CSUM);
        assert_eq!(r, Ok(Sent::Segmented(4)));
        let mut all = Vec::new();
        for (vnet, mut seg) in got {
            assert_eq!(vnet.flags, VnetHeader::F_NEEDS_CSUM);
            assert_eq!(
                (vnet.csum_start, vnet.csum_offset, vnet.gso_type),
                (34, 16, 0)
            );
            complete(&vnet, &mut seg);
            all.extend(payload_of_checked(&seg));
        }
        assert!(all == payload_of(&f));
    }

    #[test]
    fn ecn_needs_a_receiver_that_takes_it_or_the_frame_is_cut() {
        let mut f = guest_frame(true, false, true, 3000, 1000);
        f.vnet.gso_type |= VnetHeader::GSO_ECN;
        let no_ecn = OffloadCaps::CSUM | OffloadCaps::TSO4 | OffloadCaps::TSO6;
        let (r, _) = send_to(&f, &FrameEdit::NONE, no_ecn);
        assert_eq!(r, Ok(Sent::Segmented(3)));
        let (r, got) = send_to(&f, &FrameEdit::NONE, OffloadCaps::ALL);
        assert_eq!(r, Ok(Sent::Passed));
        assert_eq!(
            got[0].0.gso_type,
            VnetHeader::GSO_TCPV6 | VnetHeader::GSO_ECN
        );
    }

    /// The edit a trunk port makes to send a frame of VLAN 7 untagged, and the one an
    /// access port of VLAN 7 makes to tag an untagged frame.
    fn pop_tag() -> FrameEdit {
        let mut e = FrameEdit::NONE;
        e.prefix[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        (e.prefix_len, e.skip) = (12, 16);
        e
    }

    fn push_tag() -> FrameEdit {
        let mut e = FrameEdit::NONE;
        e.prefix[..16].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x81, 0, 0, 7]);
        (e.prefix_len, e.skip) = (16, 12);
        e
    }

    #[test]
    fn a_tag_pushed_or_popped_moves_the_offsets_of_a_passed_header() {
        let untagged = guest_frame(false, false, true, 3000, 1000);
        let tagged = guest_frame(false, true, true, 3000, 1000);
        let (r, got) = send_to(&untagged, &push_tag(), OffloadCaps::ALL);
        assert_eq!(r, Ok(Sent::Passed));
        assert!(got[0].1 == tagged.frame, "the frame as tagged");
        assert_eq!(got[0].0, tagged.vnet, "csum_start and hdr_len 4 bytes on");
        let (_, got) = send_to(&tagged, &pop_tag(), OffloadCaps::ALL);
        assert!(got[0].1 == untagged.frame);
        assert_eq!(got[0].0, untagged.vnet);
    }

    #[test]
    fn segments_of_a_frame_whose_tag_is_pushed_or_popped_are_tagged_and_check_out() {
        for (f, edit, tagged) in [
            (
                guest_frame(false, false, true, 3000, 1000),
                push_tag(),
                true,
            ),
            (guest_frame(true, true, true, 3000, 1000), pop_tag(), false),
        ] {
            let (r, got) = send_to(&f, &edit, OffloadCaps::NONE);
            assert_eq!(r, Ok(Sent::Segmented(3)));
            let mut all = Vec::new();
            for (_, seg) in &got {
                assert_eq!(seg[12..14] == [0x81, 0], tagged);
                all.extend(payload_of_checked(seg));
            }
            assert!(all == payload_of(&f));
        }
    }

    #[test]
    fn a_checksum_is_completed_for_a_receiver_without_checksums_only() {
        for v6 in [false, true] {
            for tagged in [false, true] {
                let f = guest_frame(v6, tagged, false, 1001, 0);
                let (r, got) = send_to(&f, &FrameEdit::NONE, OffloadCaps::NONE);
                assert_eq!(r, Ok(Sent::Checksummed));
                assert_eq!(got[0].0, VnetHeader::default());
                assert!(payload_of_checked(&got[0].1) == payload_of(&f));
                let (r, got) = send_to(&f, &FrameEdit::NONE, OffloadCaps::CSUM);
                assert_eq!(r, Ok(Sent::Passed));
                assert!(got[0].1 == f.frame);
            }
        }
        // Also through a tag pushed on the way.
        let f = guest_frame(false, false, false, 500, 0);
        let (r, got) = send_to(&f, &push_tag(), OffloadCaps::NONE);
        assert_eq!(r, Ok(Sent::Checksummed));
        assert_eq!(got[0].1[12..16], [0x81, 0, 0, 7]);
        assert!(payload_of_checked(&got[0].1) == payload_of(&f));
    }

    #[test]
    fn headers_that_lie_are_refused_on_the_copy_the_switch_reads() {
        // A TSO frame whose TCP header is not where csum_start says.
        let mut f = guest_frame(false, false, true, 3000, 1000);
        f.vnet.csum_start = 30;
        assert_eq!(
            send_to(&f, &FrameEdit::NONE, OffloadCaps::NONE).0,
            Err(DropReason::BadOffload)
        );
        // A TSO frame of UDP.
        let mut f = guest_frame(false, false, false, 3000, 0);
        f.vnet.gso_type = VnetHeader::GSO_TCPV4;
        f.vnet.gso_size = 1000;
        assert_eq!(
            send_to(&f, &FrameEdit::NONE, OffloadCaps::NONE).0,
            Err(DropReason::BadOffload)
        );
        // TCPV6 on an IPv4 frame.
        let mut f = guest_frame(false, false, true, 3000, 1000);
        f.vnet.gso_type = VnetHeader::GSO_TCPV6;
        assert_eq!(
            send_to(&f, &FrameEdit::NONE, OffloadCaps::NONE).0,
            Err(DropReason::BadOffload)
        );
        // A checksum to start inside the bytes a tag edit replaces.
        let mut f = guest_frame(false, false, false, 100, 0);
        f.vnet.csum_start = 4;
        f.vnet.csum_offset = 0;
        assert_eq!(
            send_to(&f, &pop_tag(), OffloadCaps::NONE).0,
            Err(DropReason::BadOffload)
        );
        assert_eq!(
            send_to(&f, &pop_tag(), OffloadCaps::ALL).0,
            Err(DropReason::BadOffload)
        );
        // A frame whose segments do not hold what its length says.
        let mut f = guest_frame(false, false, true, 3000, 1000);
        f.segs.truncate(2);
        assert_eq!(
            send_to(&f, &FrameEdit::NONE, OffloadCaps::NONE).0,
            Err(DropReason::BadDescriptor)
        );
    }

    #[test]
    fn a_receiver_that_runs_out_of_room_keeps_the_segments_it_got() {
        let f = guest_frame(false, false, true, 5000, 1000);
        let mut view = MemView::new(&f.mem);
        let mut sent = 0;
        let src = Source {
            view: &mut view,
            segs: &f.segs,
            len: f.frame.len() as u32,
            vnet: f.vnet,
        };
        let r = send(src, &FrameEdit::NONE, OffloadCaps::NONE, |_, _| {
            if sent == 2 {
                return Err(DropReason::NoRxBuffer);
            }
            sent += 1;
            Ok(())
        });
        assert_eq!((r, sent), (Err(DropReason::NoRxBuffer), 2));
    }
}
