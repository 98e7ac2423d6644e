//! IP frames between the test VMs, built by etherparse (a parser the switch does not
//! share): VM `n` is MAC [`crate::mac`]`(n)`, 10.0.0.n and fd00::n.

use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep, TcpHeader};

use crate::mac;

pub fn ip4(n: u8) -> [u8; 4] {
    [10, 0, 0, n]
}

pub fn ip6(n: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[15] = n;
    a
}

/// From VM `from` to VM `to`, their IPv4 addresses, at the Ethernet and IP layers.
pub fn eth4(from: u8, to: u8) -> PacketBuilderStep<IpHeaders> {
    PacketBuilder::ethernet2(mac(from), mac(to)).ipv4(ip4(from), ip4(to), 64)
}

/// The same over IPv6, from address fd00::`src` (VM `from`'s own, or another).
pub fn eth6(from: u8, to: u8, src: u8) -> PacketBuilderStep<IpHeaders> {
    PacketBuilder::ethernet2(mac(from), mac(to)).ipv6(ip6(src), ip6(to), 64)
}

/// The builder steps that end in a packet.
pub trait Writes {
    /// The frame, `payload` after the headers.
    fn bytes(self, payload: &[u8]) -> Vec<u8>;
}

macro_rules! writes {
    ($($h:ty),*) => {$(
        impl Writes for PacketBuilderStep<$h> {
            fn bytes(self, payload: &[u8]) -> Vec<u8> {
                let mut out = Vec::with_capacity(self.size(payload.len()));
                self.write(&mut out, payload).expect("a frame writes into a Vec");
                out
            }
        }
    )*};
}
writes!(
    TcpHeader,
    etherparse::UdpHeader,
    etherparse::Icmpv4Header,
    etherparse::Icmpv6Header
);

/// A TCP segment from VM `from` to `to`, `ports` (source, destination), the flags `flags`
/// sets (`|t| t.syn()`).
pub fn tcp(
    from: u8,
    to: u8,
    ports: (u16, u16),
    flags: impl FnOnce(PacketBuilderStep<TcpHeader>) -> PacketBuilderStep<TcpHeader>,
) -> Vec<u8> {
    flags(eth4(from, to).tcp(ports.0, ports.1, 1000, 64240)).bytes(b"")
}

pub fn udp(from: u8, to: u8, ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
    eth4(from, to).udp(ports.0, ports.1).bytes(payload)
}

/// An SCTP packet from VM `from` to `to`: its common header (`ports`, source and
/// destination; verification tag 1; no checksum: the switch does not read it) and `chunk`.
pub fn sctp(from: u8, to: u8, ports: (u16, u16), chunk: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(12 + chunk.len());
    payload.extend_from_slice(&ports.0.to_be_bytes());
    payload.extend_from_slice(&ports.1.to_be_bytes());
    payload.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    payload.extend_from_slice(chunk);
    let mut out = Vec::new();
    eth4(from, to)
        .write(&mut out, etherparse::IpNumber(132), &payload)
        .expect("a frame writes into a Vec");
    out
}

/// An ICMP echo request (or reply) of identifier `id`.
pub fn ping(from: u8, to: u8, id: u16, reply: bool) -> Vec<u8> {
    let b = eth4(from, to);
    let b = if reply {
        b.icmpv4_echo_reply(id, 1)
    } else {
        b.icmpv4_echo_request(id, 1)
    };
    b.bytes(b"ping")
}

/// A first fragment of a UDP datagram to port 53 (its transport header and 32 bytes),
/// identification `id`, or a later one at 8-byte offset `at8` (`at8` > 0).
pub fn fragment(from: u8, to: u8, id: u16, at8: u16) -> Vec<u8> {
    let mut f = udp(from, to, (5000, 53), &[7u8; 32]);
    // The IPv4 header at 14: identification at 18, flags and offset at 20.
    f[18..20].copy_from_slice(&id.to_be_bytes());
    let more = if at8 == 0 { 0x2000 } else { 0 };
    f[20..22].copy_from_slice(&(more | at8).to_be_bytes());
    f
}

/// An ARP announcement of VM `n` (its own address asked for, broadcast).
pub fn arp_announcement(n: u8) -> Vec<u8> {
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&mac(n));
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&mac(n));
    arp.extend_from_slice(&ip4(n));
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&ip4(n));
    arp
}
