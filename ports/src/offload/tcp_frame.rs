//! The headers of a TCP frame (Ethernet, up to two VLAN tags, IPv4 or IPv6, TCP) as the
//! switch reads them to cut a TSO frame into segments, and the headers of each segment.
//!
//! Everything works on a copy of the frame's first bytes on the switch's side: the guest
//! cannot change what was checked after the check.

use vringswitch_wire::ethernet::ethertype;
use vringswitch_wire::ip::{
    ipv6_options_header, protocol, Ipv4Packet, Ipv6Packet, IPV4_MIN_HEADER_LEN,
};
use vringswitch_wire::tcp::{self, TcpSegment};
use vringswitch_wire::vlan::{TAG_LEN, TPID_8021AD, TPID_8021Q};
use vringswitch_wire::Checksum;

use super::{OffloadError, MAX_HEADERS};

/// Where the headers of a TCP frame lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLayout {
    /// Offset of the IP header.
    pub l3: u16,
    /// Offset of the TCP header.
    pub l4: u16,
    /// Offset of the TCP payload: the length of all headers.
    pub payload: u16,
    pub v6: bool,
}

impl TcpLayout {
    /// The layout with every offset moved by `delta` bytes (a VLAN tag pushed or popped in
    /// front of the IP header).
    pub fn shifted(&self, delta: i16) -> TcpLayout {
        let by = |x: u16| x.wrapping_add_signed(delta);
        TcpLayout {
            l3: by(self.l3),
            l4: by(self.l4),
            payload: by(self.payload),
            v6: self.v6,
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parses the headers of a `frame_len`-byte TCP frame whose first bytes are `head` (as many
/// as the frame has, up to [`MAX_HEADERS`]). Refuses a frame that is not TCP over IPv4 or
/// IPv6, an IPv4 fragment, and headers longer than [`MAX_HEADERS`].
pub fn parse(head: &[u8], frame_len: u32) -> Result<TcpLayout, OffloadError> {
    let not_tcp = OffloadError::NotTcp;
    let mut at = 12;
    let mut ethertype = be16(head, at).ok_or(not_tcp)?;
    // At most two tags (802.1ad outside 802.1Q).
    for _ in 0..2 {
        if ethertype != TPID_8021Q && ethertype != TPID_8021AD {
            break;
        }
        at += TAG_LEN;
        ethertype = be16(head, at).ok_or(not_tcp)?;
    }
    let l3 = at + 2;
    let (l4, v6) = match ethertype {
        ethertype::IPV4 => {
            if head.len() < l3 + IPV4_MIN_HEADER_LEN {
                return Err(not_tcp);
            }
            // Its options may run past `head`: the TCP header's check below says so.
            let ip = Ipv4Packet::new_unchecked(&head[l3..]);
            if ip.version() != 4 || ip.header_len() < IPV4_MIN_HEADER_LEN {
                return Err(not_tcp);
            }
            // More fragments, or an offset: a fragment, not a segment.
            if ip.is_fragment() || ip.protocol() != protocol::TCP {
                return Err(not_tcp);
            }
            (l3 + ip.header_len(), false)
        }
        ethertype::IPV6 => {
            let ip = Ipv6Packet::new_checked(&head[l3..]).map_err(|_| not_tcp)?;
            let mut next = ip.next_header();
            let mut at = l3 + vringswitch_wire::ip::IPV6_HEADER_LEN;
            // Bounded: each extension header is at least 8 bytes of a bounded head.
            for _ in 0..4 {
                if next != protocol::HOP_BY_HOP && next != protocol::DEST_OPTS {
                    break;
                }
                let (after, len) = head
                    .get(at..)
                    .and_then(ipv6_options_header)
                    .ok_or(too_long(head))?;
                next = after;
                at += len;
            }
            if next != protocol::TCP {
                return Err(not_tcp);
            }
            (at, true)
        }
        _ => return Err(not_tcp),
    };
    // The data offset is in the TCP header's 13th byte.
    if head.len() <= l4 + 12 {
        return Err(too_long(head));
    }
    let doff = TcpSegment::new_unchecked(&head[l4..]).header_len();
    if doff < tcp::MIN_HEADER_LEN {
        return Err(not_tcp);
    }
    let payload = l4 + doff;
    if payload > frame_len as usize {
        return Err(OffloadError::OutsideFrame);
    }
    if payload > head.len() {
        return Err(too_long(head));
    }
    Ok(TcpLayout {
        l3: l3 as u16,
        l4: l4 as u16,
        payload: payload as u16,
        v6,
    })
}

/// The layout of a TSO frame with header `vnet`, whose first bytes are `head` (see
/// [`parse`]), if the frame is what the header says: TCP over the IP version of its
/// segmentation type, its checksum to complete in the TCP header.
pub fn check_tso(
    vnet: &super::VnetHeader,
    head: &[u8],
    frame_len: u32,
) -> Result<TcpLayout, OffloadError> {
    let layout = parse(head, frame_len)?;
    let v6 = vnet.gso_type & !super::VnetHeader::GSO_ECN == super::VnetHeader::GSO_TCPV6;
    if layout.v6 != v6
        || vnet.csum_start != layout.l4
        || usize::from(vnet.csum_offset) != tcp::CHECKSUM_OFFSET
    {
        return Err(OffloadError::NotTcp);
    }
    // An IPv4 datagram's total length has 16 bits: past 65,535 bytes (a 65,550-byte frame
    // without a tag, say) it would wrap, and a segment cut from it could claim 0 bytes.
    // (An IPv6 payload under MAX_GSO_FRAME always fits its 16 bits.)
    if !layout.v6 && frame_len - u32::from(layout.l3) > 65_535 {
        return Err(OffloadError::TooBig);
    }
    Ok(layout)
}

/// Headers that end past `head`: too long if `head` is all the switch reads, else past the
/// frame.
fn too_long(head: &[u8]) -> OffloadError {
    if head.len() >= MAX_HEADERS {
        OffloadError::HeadersTooLong
    } else {
        OffloadError::OutsideFrame
    }
}

/// A TSO frame cut into segments of at most `mss` payload bytes.
#[derive(Debug, Clone, Copy)]
pub struct Segmenter {
    layout: TcpLayout,
    mss: u32,
    /// Payload bytes of the whole frame.
    payload_len: u32,
}

impl Segmenter {
    /// Segments of a frame of `frame_len` bytes laid out as `layout` (as it leaves: offsets
    /// after any VLAN change), cut every `mss` bytes (more than 0).
    pub fn new(layout: TcpLayout, payload_len: u32, mss: u16) -> Segmenter {
        Segmenter {
            layout,
            mss: u32::from(mss.max(1)),
            payload_len,
        }
    }

    /// How many segments: one at least (a frame of headers only is one segment).
    pub fn count(&self) -> u32 {
        self.payload_len.div_ceil(self.mss).max(1)
    }

    /// The payload of segment `i`: its offset in the frame's payload and its length.
    pub fn payload(&self, i: u32) -> (u32, u32) {
        let off = i * self.mss;
        (
            off,
            self.mss.min(self.payload_len - off.min(self.payload_len)),
        )
    }

    /// Writes the headers of segment `i` into `out[..layout.payload]` from the frame's own
    /// (`head`, laid out as `layout`): IP length, IPv4 ID and checksum, sequence number,
    /// and FIN and PSH on the last segment only, CWR on the first only. The TCP checksum is
    /// left zero: see [`Self::tcp_checksum`]. `head` and `out` hold the headers.
    pub fn headers(&self, head: &[u8], i: u32, out: &mut [u8]) {
        let l = self.layout;
        let (l3, l4, p) = (usize::from(l.l3), usize::from(l.l4), usize::from(l.payload));
        out[..p].copy_from_slice(&head[..p]);
        let (off, len) = self.payload(i);
        if l.v6 {
            let plen = (p - l3 - vringswitch_wire::ip::IPV6_HEADER_LEN) as u32 + len;
            Ipv6Packet::new_unchecked(&mut out[l3..l4]).set_payload_len(plen as u16);
        } else {
            let mut ip = Ipv4Packet::new_unchecked(&mut out[l3..l4]);
            ip.set_total_len(((p - l3) as u32 + len) as u16);
            let id = Ipv4Packet::new_unchecked(&head[l3..l4]).ident();
            ip.set_ident(id.wrapping_add(i as u16));
            ip.fill_checksum();
        }
        let from = TcpSegment::new_unchecked(&head[l4..p]);
        let mut flags = from.flags();
        if i + 1 != self.count() {
            flags &= !(tcp::flags::FIN | tcp::flags::PSH);
        }
        if i != 0 {
            flags &= !tcp::flags::CWR;
        }
        let mut seg = TcpSegment::new_unchecked(&mut out[l4..p]);
        seg.set_seq(from.seq().wrapping_add(off));
        seg.set_flags(flags);
        seg.set_checksum(0);
    }

    /// The sum of segment `i`'s pseudo-header, from the addresses in `out` (its headers).
    pub fn pseudo_header(&self, out: &[u8], i: u32) -> Checksum {
        let l = self.layout;
        let (l3, l4, p) = (usize::from(l.l3), usize::from(l.l4), usize::from(l.payload));
        let tcp_len = (p - l4) as u32 + self.payload(i).1;
        let mut c = Checksum::new();
        if l.v6 {
            c.add(Ipv6Packet::new_unchecked(&out[l3..l4]).addresses());
            c.add(&tcp_len.to_be_bytes());
            c.add(&[0, 0, 0, protocol::TCP]);
        } else {
            c.add(Ipv4Packet::new_unchecked(&out[l3..l4]).addresses());
            c.add(&[0, protocol::TCP]);
            c.add_u16(tcp_len as u16);
        }
        c
    }

    /// Stores the TCP checksum of segment `i` in `out` (its headers from
    /// [`Self::headers`]), given the sum of its payload.
    pub fn tcp_checksum(&self, out: &mut [u8], i: u32, payload: &Checksum) {
        let (l4, p) = (
            usize::from(self.layout.l4),
            usize::from(self.layout.payload),
        );
        let mut c = self.pseudo_header(out, i);
        TcpSegment::new_unchecked(&mut out[l4..p]).set_checksum(0);
        c.add(&out[l4..p]);
        c.append(payload);
        TcpSegment::new_unchecked(&mut out[l4..p]).set_checksum(c.finish());
    }

    /// Stores segment `i`'s pseudo-header sum as its TCP checksum, for a receiver that
    /// completes checksums itself (NEEDS_CSUM from the TCP header on).
    pub fn partial_checksum(&self, out: &mut [u8], i: u32) {
        let (l4, p) = (
            usize::from(self.layout.l4),
            usize::from(self.layout.payload),
        );
        let c = self.pseudo_header(out, i);
        TcpSegment::new_unchecked(&mut out[l4..p]).set_checksum(c.folded());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    /// A TCP frame built by etherparse: to 02::02 from 02::01, with VLAN `vlan` if given,
    /// over IPv4 or IPv6, with a 12-byte option block, flags FIN|PSH|CWR|ACK.
    fn tcp_frame(v6: bool, vlan: Option<u16>, payload: &[u8]) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let ip = match (vlan, v6) {
            (Some(v), false) => {
                eth.single_vlan(v.try_into().unwrap())
                    .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            }
            (None, false) => eth.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64),
            (Some(v), true) => eth
                .single_vlan(v.try_into().unwrap())
                .ipv6([0xfd; 16], [0xfe; 16], 64),
            (None, true) => eth.ipv6([0xfd; 16], [0xfe; 16], 64),
        };
        let tcp = ip
            .tcp(40000, 5201, 0xffff_f000, 64000)
            .ack(7)
            .fin()
            .psh()
            .cwr()
            .options(&[
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Timestamp(1, 2),
            ])
            .unwrap();
        let mut out = Vec::new();
        tcp.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn layouts_of_ipv4_ipv6_and_tagged_frames() {
        for (v6, vlan, l3, l4) in [
            (false, None, 14, 34),
            (false, Some(5), 18, 38),
            (true, None, 14, 54),
            (true, Some(5), 18, 58),
        ] {
            let f = tcp_frame(v6, vlan, &[1; 100]);
            let got = parse(&f[..f.len().min(MAX_HEADERS)], f.len() as u32).unwrap();
            assert_eq!(
                got,
                TcpLayout {
                    l3,
                    l4,
                    payload: l4 + 32,
                    v6
                }
            );
        }
    }

    #[test]
    fn frames_that_claim_tcp_but_are_not_are_refused() {
        let f = tcp_frame(false, None, &[1; 100]);
        let check = |g: &[u8]| parse(g, g.len() as u32);
        let mut udp = f.clone();
        udp[14 + 9] = 17;
        assert_eq!(check(&udp), Err(OffloadError::NotTcp));
        let mut frag = f.clone();
        frag[14 + 6] |= 0x20; // more fragments
        assert_eq!(check(&frag), Err(OffloadError::NotTcp));
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(check(&arp), Err(OffloadError::NotTcp));
        let mut bad_ihl = f.clone();
        bad_ihl[14] = 0x44;
        assert_eq!(check(&bad_ihl), Err(OffloadError::NotTcp));
        let mut bad_doff = f.clone();
        bad_doff[34 + 12] = 0x40;
        assert_eq!(check(&bad_doff), Err(OffloadError::NotTcp));
        // Headers cut short by the frame's end.
        assert_eq!(check(&f[..50]), Err(OffloadError::OutsideFrame));
        assert_eq!(check(&f[..20]), Err(OffloadError::NotTcp));
        // IPv6 with a routing header.
        let mut routed = tcp_frame(true, None, &[1; 100]);
        routed[14 + 6] = 43;
        assert_eq!(check(&routed), Err(OffloadError::NotTcp));
        // A hop-by-hop header claiming more than the switch reads.
        let mut hbh = tcp_frame(true, None, &[1; 400]);
        hbh[14 + 6] = 0;
        hbh[54] = 6;
        hbh[55] = 40;
        assert_eq!(
            parse(&hbh[..MAX_HEADERS], hbh.len() as u32),
            Err(OffloadError::HeadersTooLong)
        );
    }

    /// Cuts `frame` with `mss` and returns the segments as frames, checksums complete.
    fn cut(frame: &[u8], mss: u16) -> Vec<Vec<u8>> {
        let layout = parse(&frame[..frame.len().min(MAX_HEADERS)], frame.len() as u32).unwrap();
        let p = usize::from(layout.payload);
        let seg = Segmenter::new(layout, (frame.len() - p) as u32, mss);
        (0..seg.count())
            .map(|i| {
                let mut out = vec![0u8; p];
                seg.headers(frame, i, &mut out);
                let (off, len) = seg.payload(i);
                let payload = &frame[p + off as usize..p + (off + len) as usize];
                let mut sum = Checksum::new();
                sum.add(payload);
                seg.tcp_checksum(&mut out, i, &sum);
                out.extend_from_slice(payload);
                out
            })
            .collect()
    }

    /// Checks every segment with etherparse: lengths, checksums, sequence numbers, flags,
    /// IPv4 IDs, and the payloads put together again.
    fn check_segments(frame: &[u8], segs: &[Vec<u8>], mss: usize) {
        let whole = SlicedPacket::from_ethernet(frame).unwrap();
        let TransportSlice::Tcp(t0) = whole.transport.clone().unwrap() else {
            panic!("not TCP")
        };
        let mut payload = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let p = SlicedPacket::from_ethernet(s).unwrap();
            let TransportSlice::Tcp(t) = p.transport.clone().unwrap() else {
                panic!("segment {i} is not TCP")
            };
            let last = i + 1 == segs.len();
            assert!(t.payload().len() <= mss);
            assert!(last || t.payload().len() == mss);
            assert_eq!(
                t.sequence_number(),
                t0.sequence_number().wrapping_add(payload.len() as u32)
            );
            assert_eq!(t.fin(), last, "FIN on the last segment only");
            assert_eq!(t.psh(), last, "PSH on the last segment only");
            assert_eq!(t.cwr(), i == 0, "CWR on the first segment only");
            assert!(t.ack() && t.acknowledgment_number() == 7);
            assert_eq!(t.options(), t0.options());
            let want = match p.net.as_ref().unwrap() {
                etherparse::InternetSlice::Ipv4(ip) => {
                    let h = ip.header();
                    assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
                    assert_eq!(
                        usize::from(h.total_len()),
                        h.slice().len() + t.slice().len()
                    );
                    let etherparse::InternetSlice::Ipv4(ip0) = whole.net.as_ref().unwrap() else {
                        unreachable!()
                    };
                    assert_eq!(
                        h.identification(),
                        ip0.header().identification().wrapping_add(i as u16)
                    );
                    t.calc_checksum_ipv4(h.source(), h.destination()).unwrap()
                }
                etherparse::InternetSlice::Ipv6(ip) => {
                    let h = ip.header();
                    assert_eq!(usize::from(h.payload_length()), t.slice().len());
                    t.calc_checksum_ipv6(h.source(), h.destination()).unwrap()
                }
                _ => unreachable!(),
            };
            assert_eq!(t.checksum(), want, "segment {i}'s TCP checksum");
            payload.extend_from_slice(t.payload());
        }
        assert_eq!(payload, t0.payload());
    }

    #[test]
    fn segments_match_an_independent_parser_for_every_shape() {
        let mss = 1000;
        for v6 in [false, true] {
            for vlan in [None, Some(100)] {
                // An exact multiple of the segment size, one byte over, one under, smaller
                // than one segment, none at all, and 64 KiB.
                for n in [3000usize, 3001, 2999, 999, 1000, 1, 0, 65_000] {
                    let payload: Vec<u8> = (0..n).map(|i| (i * 31 + 7) as u8).collect();
                    let frame = tcp_frame(v6, vlan, &payload);
                    let segs = cut(&frame, mss as u16);
                    assert_eq!(segs.len(), n.div_ceil(mss).max(1), "{n} bytes");
                    check_segments(&frame, &segs, mss);
                }
            }
        }
    }

    #[test]
    fn an_ipv4_tso_frame_whose_datagram_passes_64_kib_is_refused() {
        use super::super::VnetHeader;
        let f = tcp_frame(false, None, &[0; 10]);
        let vnet = VnetHeader {
            flags: VnetHeader::F_NEEDS_CSUM,
            gso_type: VnetHeader::GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let head = &f[..66];
        // Untagged: 14 bytes of Ethernet, then at most 65,535 of IP.
        assert!(check_tso(&vnet, head, 14 + 65_535).is_ok());
        assert_eq!(
            check_tso(&vnet, head, 14 + 65_536),
            Err(OffloadError::TooBig)
        );
        // IPv6 counts its payload without its own header: a frame of the same size fits.
        let f6 = tcp_frame(true, None, &[0; 10]);
        let vnet6 = VnetHeader {
            gso_type: VnetHeader::GSO_TCPV6,
            hdr_len: 86,
            csum_start: 54,
            ..vnet
        };
        assert!(check_tso(&vnet6, &f6[..86], 14 + 65_536).is_ok());
    }

    #[test]
    fn a_shifted_layout_follows_a_tag_pushed_or_popped() {
        let f = tcp_frame(false, None, &[0; 10]);
        let l = parse(&f, f.len() as u32).unwrap();
        let pushed = l.shifted(4);
        assert_eq!((pushed.l3, pushed.l4, pushed.payload), (18, 38, 70));
        assert_eq!(pushed.shifted(-4), l);
    }

    #[test]
    fn a_partial_checksum_is_the_pseudo_header_sum() {
        let frame = tcp_frame(true, None, &[9; 3000]);
        let layout = parse(&frame[..MAX_HEADERS], frame.len() as u32).unwrap();
        let seg = Segmenter::new(layout, 3000, 1200);
        let mut out = vec![0u8; usize::from(layout.payload)];
        seg.headers(&frame, 2, &mut out);
        seg.partial_checksum(&mut out, 2);
        // Completing it as a receiver does gives the full checksum.
        let l4 = usize::from(layout.l4);
        let payload = &frame[usize::from(layout.payload) + 2400..];
        let mut c = Checksum::new();
        c.add(&out[l4..]);
        c.add(payload);
        let mut full = out.clone();
        let mut sum = Checksum::new();
        sum.add(payload);
        seg.tcp_checksum(&mut full, 2, &sum);
        assert_eq!(
            c.finish().to_be_bytes(),
            [full[l4 + 16], full[l4 + 17]],
            "partial + payload = full"
        );
    }
}
