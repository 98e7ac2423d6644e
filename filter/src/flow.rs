//! What a frame is to the filter: read from the bytes after its Ethernet header (and VLAN
//! tag), which the caller copied to the stack. Every read is bounded by those bytes; a
//! header that does not fit them, or is at odds with itself, is [`Classified::Malformed`]
//! (dropped by a port with groups, never passed unfiltered).
//!
//! IPv6 extension headers are walked (hop-by-hop, routing, destination options, fragment),
//! at most [`MAX_EXTENSIONS`] of them. A fragment says where it stands: the first carries
//! the transport header and is classified by it; the others carry none and can only be
//! judged by the verdict given to their first ([`Fragment::Later`] names the datagram).

use vringswitch_wire::ethernet::ethertype;
use vringswitch_wire::ip::{protocol, Ipv4Packet, Ipv6Packet, IPV6_HEADER_LEN};

use crate::conntrack::Packed;

/// Most IPv6 extension headers walked before the transport header; more is malformed.
pub const MAX_EXTENSIONS: usize = 8;

/// An IP frame's addresses, protocol and transport fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub v6: bool,
    /// IPv4 addresses in the first four bytes, the rest zero.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The transport protocol (the last next header, for IPv6).
    pub proto: u8,
    pub l4: L4,
    pub fragment: Fragment,
}

/// The transport fields a rule or a connection looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// TCP (with its flags) or UDP ports.
    Ports { src: u16, dst: u16, tcp_flags: u8 },
    /// ICMP or ICMPv6: type, code, and the echo's identifier for echo requests and
    /// replies.
    Icmp {
        kind: u8,
        code: u8,
        echo_id: Option<u16>,
    },
    /// An ICMP or ICMPv6 error (destination unreachable, packet too big, time exceeded,
    /// parameter problem) and the datagram it quotes: related to that datagram's
    /// connection, if there is one.
    IcmpError { kind: u8, code: u8, quoted: Quoted },
    /// Another protocol, or a fragment after the first (no transport header).
    None,
}

/// The datagram an ICMP error quotes, as its sender sent it: addresses, protocol, and
/// ports (an echo's identifier as both, as a connection's key has it; 0 for others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted {
    pub proto: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

/// Where a frame stands in its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram.
    Whole,
    /// The first fragment, with the transport header: the datagram's identification.
    First { id: u32 },
    /// A later fragment, without it.
    Later { id: u32 },
}

/// What a frame is to the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classified {
    Ip(Flow),
    /// Not IP: ARP, or another EtherType (its number).
    NotIp(u16),
    /// IP whose headers do not fit the bytes read, or are at odds with themselves.
    Malformed,
}

/// The frame most traffic is, read straight into its connection's key: a whole (not
/// fragmented) TCP or UDP datagram over IPv4 without options or IPv6 without extension
/// headers, whose ports are not DHCP's or DHCPv6's (which [`crate::firewall::implicit`]
/// judges). The data path judges it without a [`Flow`] made; its `flow()` is the one
/// [`classify`] reads from the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// Its connection's key, in the zone it was read for.
    pub key: Packed,
    /// The TCP flags (0 for UDP).
    pub tcp_flags: u8,
}

impl Datagram {
    /// Reads the frame whose bytes after the Ethernet header (and VLAN tag) are `l3`, of
    /// EtherType `ethertype`, for zone `zone`; `None` if it is not such a datagram (or
    /// its headers do not fit `l3`): [`classify`] reads it then.
    #[inline]
    pub fn read(ethertype: u16, l3: &[u8], zone: u32) -> Option<Datagram> {
        let (v6, proto, src, dst, at) = match ethertype {
            ethertype::IPV4 => {
                let h: &[u8; 20] = l3.get(..20)?.try_into().ok()?;
                // Version 4, a 20-byte header; neither more fragments nor an offset.
                if h[0] != 0x45 || u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
                    return None;
                }
                let a =
                    |i: usize| u64::from(u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
                (false, h[9], [a(12), 0], [a(16), 0], 20)
            }
            ethertype::IPV6 => {
                let h: &[u8; 40] = l3.get(..40)?.try_into().ok()?;
                if h[0] >> 4 != 6 {
                    return None;
                }
                let w = |i: usize| {
                    u64::from_le_bytes([
                        h[i],
                        h[i + 1],
                        h[i + 2],
                        h[i + 3],
                        h[i + 4],
                        h[i + 5],
                        h[i + 6],
                        h[i + 7],
                    ])
                };
                (true, h[6], [w(8), w(16)], [w(24), w(32)], 40)
            }
            _ => return None,
        };
        let port = |t: &[u8], i: usize| u16::from_be_bytes([t[i], t[i + 1]]);
        let (ports, tcp_flags) = match proto {
            protocol::TCP => {
                let t = l3.get(at..at + 14)?;
                ((port(t, 0), port(t, 2)), t[13])
            }
            protocol::UDP => {
                let t = l3.get(at..at + 4)?;
                let (s, d) = (port(t, 0), port(t, 2));
                if dhcp(s) || dhcp(d) {
                    return None;
                }
                ((s, d), 0)
            }
            _ => return None,
        };
        Some(Datagram {
            key: Packed::of(v6, proto, zone, src, dst, ports),
            tcp_flags,
        })
    }

    /// The datagram as [`classify`] reads it.
    pub fn flow(&self) -> Flow {
        let (src, dst) = self.key.ports();
        Flow {
            v6: self.key.v6(),
            src: self.key.src(),
            dst: self.key.dst(),
            proto: self.key.proto(),
            l4: L4::Ports {
                src,
                dst,
                tcp_flags: self.tcp_flags,
            },
            fragment: Fragment::Whole,
        }
    }
}

/// A port of DHCP's (67, 68) or DHCPv6's (546, 547).
#[inline(always)]
fn dhcp(port: u16) -> bool {
    matches!(port, 67 | 68 | 546 | 547)
}

/// Echo request and reply types, ICMP and ICMPv6.
const ICMP_ECHO: [u8; 2] = [8, 0];
const ICMPV6_ECHO: [u8; 2] = [128, 129];

/// Classifies the frame whose bytes after the Ethernet header (and VLAN tag) are `l3`, of
/// EtherType `ethertype`. `l3` may be cut short (the caller copies a bounded prefix): the
/// headers must fit in it.
pub fn classify(ethertype: u16, l3: &[u8]) -> Classified {
    match ethertype {
        ethertype::IPV4 => v4(l3).map_or(Classified::Malformed, Classified::Ip),
        ethertype::IPV6 => v6(l3).map_or(Classified::Malformed, Classified::Ip),
        other => Classified::NotIp(other),
    }
}

fn v4(b: &[u8]) -> Option<Flow> {
    let p = Ipv4Packet::new_checked(b).ok()?;
    let id = u32::from(p.ident());
    let fragment = match (p.is_fragment(), p.frag_offset()) {
        (false, _) => Fragment::Whole,
        (true, 0) => Fragment::First { id },
        (true, _) => Fragment::Later { id },
    };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&p.src());
    dst[..4].copy_from_slice(&p.dst());
    let proto = p.protocol();
    let l4 = match fragment {
        Fragment::Later { .. } => L4::None,
        _ => transport(proto, b.get(p.header_len()..)?, false)?,
    };
    Some(Flow {
        v6: false,
        src,
        dst,
        proto,
        l4,
        fragment,
    })
}

fn v6(b: &[u8]) -> Option<Flow> {
    let p = Ipv6Packet::new_checked(b).ok()?;
    let (src, dst) = (p.src(), p.dst());
    let mut next = p.next_header();
    let mut at = IPV6_HEADER_LEN;
    let mut fragment = Fragment::Whole;
    for _ in 0..=MAX_EXTENSIONS {
        match next {
            protocol::HOP_BY_HOP | protocol::ROUTING | protocol::DEST_OPTS => {
                let h = b.get(at..at + 2)?;
                next = h[0];
                at += (usize::from(h[1]) + 1) * 8;
            }
            protocol::FRAGMENT => {
                let h = b.get(at..at + 8)?;
                next = h[0];
                let offset = u16::from_be_bytes([h[2], h[3]]) & 0xfff8;
                let more = h[3] & 1 != 0;
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                fragment = match (offset, more) {
                    // An atomic fragment (RFC 6946): a whole datagram.
                    (0, false) => Fragment::Whole,
                    (0, true) => Fragment::First { id },
                    _ => Fragment::Later { id },
                };
                at += 8;
            }
            proto => {
                let l4 = match fragment {
                    Fragment::Later { .. } => L4::None,
                    _ => transport(proto, b.get(at..)?, true)?,
                };
                return Some(Flow {
                    v6: true,
                    src,
                    dst,
                    proto,
                    l4,
                    fragment,
                });
            }
        }
    }
    // Too many extension headers: not judged, dropped.
    None
}

/// The transport fields of protocol `proto` at the start of `b`; `None` if its header
/// does not fit.
fn transport(proto: u8, b: &[u8], v6: bool) -> Option<L4> {
    Some(match proto {
        protocol::TCP => {
            let h = b.get(..14)?;
            L4::Ports {
                src: u16::from_be_bytes([h[0], h[1]]),
                dst: u16::from_be_bytes([h[2], h[3]]),
                tcp_flags: h[13],
            }
        }
        // SCTP's common header starts with the ports too (RFC 9260).
        protocol::UDP | protocol::SCTP => {
            let h = b.get(..4)?;
            L4::Ports {
                src: u16::from_be_bytes([h[0], h[1]]),
                dst: u16::from_be_bytes([h[2], h[3]]),
                tcp_flags: 0,
            }
        }
        protocol::ICMP | protocol::ICMPV6 => {
            if (proto == protocol::ICMPV6) != v6 {
                // ICMP over IPv6, ICMPv6 over IPv4: judged as another protocol.
                return Some(L4::None);
            }
            let h = b.get(..8)?;
            let echo = if v6 { ICMPV6_ECHO } else { ICMP_ECHO };
            let errors: &[u8] = if v6 { &[1, 2, 3, 4] } else { &[3, 11, 12] };
            if errors.contains(&h[0]) {
                // One that quotes too little to say what it is about relates to nothing.
                if let Some(quoted) = quoted(&b[8..], v6) {
                    return Some(L4::IcmpError {
                        kind: h[0],
                        code: h[1],
                        quoted,
                    });
                }
            }
            L4::Icmp {
                kind: h[0],
                code: h[1],
                echo_id: echo
                    .contains(&h[0])
                    .then(|| u16::from_be_bytes([h[4], h[5]])),
            }
        }
        _ => L4::None,
    })
}

/// The datagram quoted at the start of `b` by an ICMP error of family `v6`: its IP header
/// and its transport's first 8 bytes (what RFC 792 and RFC 4443 promise at least).
fn quoted(b: &[u8], v6: bool) -> Option<Quoted> {
    let (src, dst, proto, at) = if v6 {
        let p = Ipv6Packet::new_checked(b).ok()?;
        (p.src(), p.dst(), p.next_header(), IPV6_HEADER_LEN)
    } else {
        let p = Ipv4Packet::new_checked(b).ok()?;
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..4].copy_from_slice(&p.src());
        dst[..4].copy_from_slice(&p.dst());
        (src, dst, p.protocol(), p.header_len())
    };
    let l4 = b.get(at..at + 8)?;
    let (sport, dport) = match proto {
        protocol::TCP | protocol::UDP => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
        protocol::ICMP | protocol::ICMPV6 => {
            let echo = if v6 { ICMPV6_ECHO } else { ICMP_ECHO };
            if echo.contains(&l4[0]) {
                let id = u16::from_be_bytes([l4[4], l4[5]]);
                (id, id)
            } else {
                (0, 0)
            }
        }
        _ => (0, 0),
    };
    Some(Quoted {
        proto,
        src,
        dst,
        sport,
        dport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10.0.0.1 -> 10.0.0.2, protocol `proto`, fragment field `frag`, then `l4`.
    fn ipv4(proto: u8, frag: [u8; 2], l4: &[u8]) -> Vec<u8> {
        let mut b = vec![
            0x45, 0, 0, 0, 0x12, 0x34, frag[0], frag[1], 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let len = (20 + l4.len()) as u16;
        b[2..4].copy_from_slice(&len.to_be_bytes());
        b.extend_from_slice(l4);
        b
    }

    /// TCP 40000 -> 22, SYN.
    const SYN: [u8; 20] = [
        0x9c, 0x40, 0, 22, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ];

    fn v4_addr(a: [u8; 4]) -> [u8; 16] {
        let mut x = [0u8; 16];
        x[..4].copy_from_slice(&a);
        x
    }

    #[test]
    fn an_ipv4_tcp_syn_reads_as_its_bytes_say() {
        let c = classify(0x0800, &ipv4(6, [0x40, 0], &SYN));
        let Classified::Ip(f) = c else {
            panic!("{c:?}")
        };
        assert!(!f.v6);
        assert_eq!(
            (f.src, f.dst),
            (v4_addr([10, 0, 0, 1]), v4_addr([10, 0, 0, 2]))
        );
        assert_eq!(f.proto, 6);
        assert_eq!(
            f.l4,
            L4::Ports {
                src: 40000,
                dst: 22,
                tcp_flags: 0x02
            }
        );
        assert_eq!(f.fragment, Fragment::Whole, "DF alone");
    }

    #[test]
    fn an_sctp_packet_reads_its_ports_from_its_common_header() {
        // Source port 5000, destination 3868 (Diameter), verification tag, checksum.
        let common = [0x13, 0x88, 0x0f, 0x1c, 0, 0, 0, 1, 0, 0, 0, 0];
        let Classified::Ip(f) = classify(0x0800, &ipv4(132, [0x40, 0], &common)) else {
            panic!("an SCTP packet is IP")
        };
        assert_eq!(f.proto, 132);
        assert_eq!(
            f.l4,
            L4::Ports {
                src: 5000,
                dst: 3868,
                tcp_flags: 0
            }
        );
        // Cut inside its ports: malformed.
        assert_eq!(
            classify(0x0800, &ipv4(132, [0x40, 0], &common[..3])),
            Classified::Malformed
        );
    }

    #[test]
    fn fragments_say_where_they_stand_and_later_ones_have_no_ports() {
        // MF, offset 0: the first, with its ports.
        let Classified::Ip(first) = classify(0x0800, &ipv4(17, [0x20, 0], &[0, 53, 0, 53])) else {
            panic!()
        };
        assert_eq!(first.fragment, Fragment::First { id: 0x1234 });
        assert!(matches!(first.l4, L4::Ports { dst: 53, .. }));
        // Offset 185: a later one; its bytes are data, not ports.
        let Classified::Ip(later) = classify(0x0800, &ipv4(17, [0x00, 0xb9], &[1, 2, 3, 4])) else {
            panic!()
        };
        assert_eq!(later.fragment, Fragment::Later { id: 0x1234 });
        assert_eq!(later.l4, L4::None);
    }

    #[test]
    fn icmp_echo_carries_its_id_and_errors_do_not() {
        let echo = [8, 0, 0, 0, 0x0b, 0xad, 0, 1];
        let Classified::Ip(f) = classify(0x0800, &ipv4(1, [0, 0], &echo)) else {
            panic!()
        };
        assert_eq!(
            f.l4,
            L4::Icmp {
                kind: 8,
                code: 0,
                echo_id: Some(0x0bad)
            }
        );
        let unreachable = [3, 3, 0, 0, 0, 0, 0, 0];
        let Classified::Ip(f) = classify(0x0800, &ipv4(1, [0, 0], &unreachable)) else {
            panic!()
        };
        assert_eq!(
            f.l4,
            L4::Icmp {
                kind: 3,
                code: 3,
                echo_id: None
            }
        );
    }

    /// fe80::1 -> fe80::2, next header `next`, then `rest`.
    fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut b = vec![0x60, 0, 0, 0];
        b.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        b.extend_from_slice(&[next, 64]);
        let mut a = [0u8; 16];
        a[0] = 0xfe;
        a[1] = 0x80;
        a[15] = 1;
        b.extend_from_slice(&a);
        a[15] = 2;
        b.extend_from_slice(&a);
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn ipv6_extension_headers_are_walked_to_the_transport_header() {
        // Hop-by-hop (8 bytes), then a first fragment (id 7), then UDP 1000 -> 2000.
        let mut rest = vec![44, 0, 0, 0, 0, 0, 0, 0];
        rest.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 7]);
        rest.extend_from_slice(&[0x03, 0xe8, 0x07, 0xd0, 0, 8, 0, 0]);
        let Classified::Ip(f) = classify(0x86dd, &ipv6(0, &rest)) else {
            panic!()
        };
        assert!(f.v6);
        assert_eq!(f.src[15], 1);
        assert_eq!(f.proto, 17);
        assert_eq!(f.fragment, Fragment::First { id: 7 });
        assert!(matches!(
            f.l4,
            L4::Ports {
                src: 1000,
                dst: 2000,
                ..
            }
        ));
        // An ICMPv6 echo request.
        let Classified::Ip(f) = classify(0x86dd, &ipv6(58, &[128, 0, 0, 0, 0, 9, 0, 1])) else {
            panic!()
        };
        assert_eq!(
            f.l4,
            L4::Icmp {
                kind: 128,
                code: 0,
                echo_id: Some(9)
            }
        );
    }

    #[test]
    fn headers_that_do_not_fit_or_loop_are_malformed_and_other_types_are_not_ip() {
        assert_eq!(classify(0x0806, &[0; 28]), Classified::NotIp(0x0806));
        // Cut in the TCP header, in the IPv4 header, an IHL below 5.
        let syn = ipv4(6, [0, 0], &SYN);
        assert_eq!(classify(0x0800, &syn[..30]), Classified::Malformed);
        assert_eq!(classify(0x0800, &syn[..19]), Classified::Malformed);
        let mut bad = syn.clone();
        bad[0] = 0x44;
        assert_eq!(classify(0x0800, &bad), Classified::Malformed);
        // Nine destination-options headers in a row: one too many to walk.
        let mut rest = Vec::new();
        for _ in 0..9 {
            rest.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 0]);
        }
        assert_eq!(classify(0x86dd, &ipv6(60, &rest)), Classified::Malformed);
        // An extension header whose length runs past the bytes.
        assert_eq!(
            classify(0x86dd, &ipv6(60, &[17, 200])),
            Classified::Malformed
        );
        // Every prefix of a valid frame classifies without panicking.
        for cut in 0..syn.len() {
            let _ = classify(0x0800, &syn[..cut]);
        }
    }

    #[test]
    fn an_icmp_error_reads_the_datagram_it_quotes_and_one_quoting_too_little_does_not() {
        // Port unreachable from 10.0.0.2, quoting 10.0.0.1 -> 10.0.0.2 UDP 5000 -> 53.
        let udp = [0x13, 0x88, 0, 53, 0, 8, 0, 0];
        let inner = ipv4(17, [0, 0], &udp);
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&inner);
        let c = classify(0x0800, &ipv4(1, [0, 0], &icmp));
        let Classified::Ip(f) = c else {
            panic!("{c:?}")
        };
        assert_eq!(
            f.l4,
            L4::IcmpError {
                kind: 3,
                code: 3,
                quoted: Quoted {
                    proto: 17,
                    src: v4_addr([10, 0, 0, 1]),
                    dst: v4_addr([10, 0, 0, 2]),
                    sport: 5000,
                    dport: 53,
                }
            }
        );
        // Quoting an echo request: its identifier as both ports.
        let mut echo_quote = vec![11, 0, 0, 0, 0, 0, 0, 0];
        echo_quote.extend_from_slice(&ipv4(1, [0, 0], &[8, 0, 0, 0, 0, 9, 0, 1]));
        let Classified::Ip(f) = classify(0x0800, &ipv4(1, [0, 0], &echo_quote)) else {
            panic!()
        };
        assert!(
            matches!(f.l4, L4::IcmpError { quoted, .. } if (quoted.proto, quoted.sport, quoted.dport) == (1, 9, 9)),
            "{f:?}"
        );
        // Cut inside the quoted transport header: an error about nothing known.
        icmp.truncate(8 + 20 + 4);
        let Classified::Ip(f) = classify(0x0800, &ipv4(1, [0, 0], &icmp)) else {
            panic!()
        };
        assert_eq!(
            f.l4,
            L4::Icmp {
                kind: 3,
                code: 3,
                echo_id: None
            }
        );
    }

    /// The key [`crate::firewall::key_of`] makes of `flow`, packed.
    fn packed_key(flow: &Flow, zone: u32) -> Packed {
        crate::firewall::key_of(flow, zone).packed()
    }

    #[test]
    fn a_plain_tcp_or_udp_datagram_reads_straight_into_its_key_as_classify_reads_it() {
        let udp = [0x13, 0x88, 0x00, 0x35, 0, 8, 0, 0];
        let frames = [
            (0x0800, ipv4(6, [0x40, 0], &SYN)),
            (0x0800, ipv4(17, [0, 0], &udp)),
            (0x86dd, ipv6(6, &SYN)),
            (0x86dd, ipv6(17, &udp)),
        ];
        for (t, l3) in &frames {
            let d = Datagram::read(*t, l3, 77).expect("a plain datagram");
            let Classified::Ip(flow) = classify(*t, l3) else {
                panic!("IP")
            };
            assert_eq!(d.flow(), flow);
            assert_eq!(d.key, packed_key(&flow, 77));
        }
        let d = Datagram::read(0x0800, &frames[0].1, 3).unwrap();
        assert_eq!(
            (d.key.v6(), d.key.proto(), d.key.ports(), d.tcp_flags),
            (false, 6, (40000, 22), 0x02)
        );
        assert_eq!(&d.key.src()[..5], &[10, 0, 0, 1, 0]);
        assert_eq!(&d.key.dst()[..5], &[10, 0, 0, 2, 0]);
        // What is not such a datagram is left to `classify`: options, fragments, other
        // protocols, extension headers, DHCP's ports, a header cut short, not IP.
        let mut options = ipv4(6, [0, 0], &[[1u8; 4].as_slice(), &SYN].concat());
        options[0] = 0x46;
        let dhcp = [0, 68, 0, 67, 0, 8, 0, 0];
        let dhcp6 = [0x02, 0x22, 0x02, 0x23, 0, 8, 0, 0];
        let others = [
            (0x0800, options),
            (0x0800, ipv4(6, [0x20, 0], &SYN)),
            (0x0800, ipv4(6, [0, 1], &SYN)),
            (0x0800, ipv4(1, [0, 0], &[8, 0, 0, 0, 0, 1, 0, 1])),
            (0x0800, ipv4(132, [0, 0], &udp)),
            (0x0800, ipv4(17, [0, 0], &dhcp)),
            (0x86dd, ipv6(17, &dhcp6)),
            (
                0x86dd,
                ipv6(0, &[[17u8, 0, 0, 0, 0, 0, 0, 0].as_slice(), &udp].concat()),
            ),
            (0x0800, ipv4(6, [0, 0], &SYN[..13])),
            (0x86dd, ipv6(17, &udp[..3])),
            (0x0806, ipv4(6, [0, 0], &SYN)),
        ];
        for (t, l3) in &others {
            assert_eq!(Datagram::read(*t, l3, 0), None, "{l3:?}");
        }
    }

    /// A small deterministic generator (xorshift) for the cross-check below.
    struct Bytes(u64);

    impl Bytes {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn whatever_the_bytes_a_datagram_read_straight_is_what_classify_reads_and_no_implicit_rule_judges(
    ) {
        use crate::firewall::implicit;
        use crate::rules::Direction;
        let udp = [0x13, 0x88, 0x00, 0x35, 0, 8, 0, 0];
        let bases = [
            (0x0800, ipv4(6, [0x40, 0], &SYN)),
            (0x0800, ipv4(17, [0, 0], &udp)),
            (0x86dd, ipv6(6, &SYN)),
            (0x86dd, ipv6(17, &udp)),
            (0x0800, ipv4(17, [0, 0], &[0, 68, 0, 67, 0, 8, 0, 0])),
        ];
        let mut rng = Bytes(0x9e37_79b9_7f4a_7c15);
        let mut read = 0;
        for round in 0..200_000 {
            let (t, base) = &bases[round % bases.len()];
            let mut l3 = base.clone();
            // A few bytes changed (the header's more often than the rest), maybe cut.
            for _ in 0..rng.next() % 4 {
                let r = rng.next();
                let at = (r >> 8) as usize % if r & 1 == 0 { 24 } else { l3.len() };
                l3[at] = match r >> 40 & 3 {
                    0 => 0,
                    1 => 0xff,
                    _ => (r >> 48) as u8,
                };
            }
            if rng.next().is_multiple_of(8) {
                l3.truncate(rng.next() as usize % l3.len());
            }
            let zone = (rng.next() % 5) as u32;
            let Some(d) = Datagram::read(*t, &l3, zone) else {
                continue;
            };
            read += 1;
            let Classified::Ip(flow) = classify(*t, &l3) else {
                panic!("read straight, not IP to classify: {l3:?}")
            };
            assert_eq!(d.flow(), flow, "{l3:?}");
            assert_eq!(d.key, packed_key(&flow, zone), "{l3:?}");
            for dir in [Direction::Egress, Direction::Ingress] {
                assert_eq!(implicit(dir, &flow), None, "{l3:?}");
            }
        }
        assert!(read > 50_000, "only {read} frames read straight");
    }
}
