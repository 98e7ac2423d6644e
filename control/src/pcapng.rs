//! The pcapng capture format (draft-ietf-opsawg-pcapng), as far as a port's capture needs:
//! one section, one Ethernet interface per captured port, and one enhanced packet block per
//! frame with its direction. Wireshark, tshark and tcpdump read it.
//!
//! Every block is built into a caller's buffer, little-endian, with the byte-order magic
//! saying so; nothing here allocates per frame beyond what the buffer needs.

/// Link type of every interface: Ethernet (`LINKTYPE_ETHERNET`).
const LINKTYPE_ETHERNET: u16 = 1;

const SECTION_HEADER: u32 = 0x0A0D_0D0A;
const INTERFACE_DESCRIPTION: u32 = 0x0000_0001;
const ENHANCED_PACKET: u32 = 0x0000_0006;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;

/// Which way a frame went, from the switch's port: as `epb_flags` bits 0-1 say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received from the VM (inbound on the port).
    FromVm,
    /// Delivered to the VM (outbound).
    ToVm,
}

impl Direction {
    fn flags(self) -> u32 {
        match self {
            Direction::FromVm => 0b01,
            Direction::ToVm => 0b10,
        }
    }
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends an option (code, length, value padded to 4 bytes).
fn option(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    // Option values are at most a port name or comment here: well under 64 KiB.
    let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&value[..usize::from(len)]);
    out.resize(out.len() + pad4(usize::from(len)) - usize::from(len), 0);
}

/// Appends a whole block: type, total length, `body`, total length again.
fn block(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
    let total = u32::try_from(12 + body.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&total.to_le_bytes());
}

/// Appends the section header block that starts a capture, with `comment` (what was
/// captured, by whom) as an option.
pub fn section_header(out: &mut Vec<u8>, comment: &str) {
    let mut body = Vec::with_capacity(32 + comment.len());
    body.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes()); // major version
    body.extend_from_slice(&0u16.to_le_bytes()); // minor version
    body.extend_from_slice(&(-1i64).to_le_bytes()); // section length: not given
    if !comment.is_empty() {
        option(&mut body, OPT_COMMENT, comment.as_bytes());
    }
    option(&mut body, OPT_END, &[]);
    block(out, SECTION_HEADER, &body);
}

/// Appends the description of an Ethernet interface named `name` whose frames are cut to
/// `snaplen` bytes, with nanosecond timestamps. Interfaces are numbered from 0 in the order
/// they are described.
pub fn interface(out: &mut Vec<u8>, name: &str, snaplen: u32) {
    let mut body = Vec::with_capacity(32 + name.len());
    body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes()); // reserved
    body.extend_from_slice(&snaplen.to_le_bytes());
    option(&mut body, IF_NAME, name.as_bytes());
    option(&mut body, IF_TSRESOL, &[9]); // 10^-9 s
    option(&mut body, OPT_END, &[]);
    block(out, INTERFACE_DESCRIPTION, &body);
}

/// Appends one frame of interface `interface` seen at `ns` nanoseconds since the epoch:
/// `data` is what was kept of it (at most the snaplen), `original_len` its whole length.
pub fn packet(
    out: &mut Vec<u8>,
    interface: u32,
    ns: u64,
    direction: Direction,
    data: &[u8],
    original_len: u32,
) {
    let captured = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let start = out.len();
    out.extend_from_slice(&ENHANCED_PACKET.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // total length, set below
    out.extend_from_slice(&interface.to_le_bytes());
    out.extend_from_slice(&((ns >> 32) as u32).to_le_bytes());
    out.extend_from_slice(&(ns as u32).to_le_bytes());
    out.extend_from_slice(&captured.to_le_bytes());
    out.extend_from_slice(&original_len.max(captured).to_le_bytes());
    out.extend_from_slice(data);
    out.resize(out.len() + pad4(data.len()) - data.len(), 0);
    option(out, EPB_FLAGS, &direction.flags().to_le_bytes());
    option(out, OPT_END, &[]);
    let total = u32::try_from(out.len() - start + 4).unwrap_or(u32::MAX);
    out[start + 4..start + 8].copy_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_header_on_literal_bytes() {
        let mut out = Vec::new();
        section_header(&mut out, "");
        assert_eq!(
            out,
            [
                0x0A, 0x0D, 0x0D, 0x0A, // SHB
                32, 0, 0, 0, // total length
                0x4D, 0x3C, 0x2B, 0x1A, // byte-order magic, little-endian
                1, 0, 0, 0, // version 1.0
                0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, // section length -1
                0, 0, 0, 0, // opt_endofopt
                32, 0, 0, 0,
            ][..]
        );
        let mut with = Vec::new();
        section_header(&mut with, "vm1");
        // comment: code 1, length 3, "vm1" padded to 4.
        assert_eq!(&with[24..32], &[1, 0, 3, 0, b'v', b'm', b'1', 0]);
        assert_eq!(with.len(), 40);
        assert_eq!(&with[4..8], &40u32.to_le_bytes());
        assert_eq!(&with[36..40], &40u32.to_le_bytes());
    }

    #[test]
    fn an_interface_on_literal_bytes() {
        let mut out = Vec::new();
        interface(&mut out, "vm1", 262_144);
        assert_eq!(
            out,
            [
                1, 0, 0, 0, // IDB
                40, 0, 0, 0, // total length
                1, 0, // LINKTYPE_ETHERNET
                0, 0, // reserved
                0x00, 0x00, 0x04, 0x00, // snaplen 262144
                2, 0, 3, 0, b'v', b'm', b'1', 0, // if_name "vm1"
                9, 0, 1, 0, 9, 0, 0, 0, // if_tsresol: nanoseconds
                0, 0, 0, 0, // opt_endofopt
                40, 0, 0, 0,
            ][..]
        );
    }

    #[test]
    fn a_packet_on_literal_bytes_cut_and_padded() {
        let mut out = Vec::new();
        let ns = 0x0000_0001_0000_0002u64;
        packet(&mut out, 0, ns, Direction::ToVm, &[0xAA; 5], 60);
        assert_eq!(
            out,
            [
                6, 0, 0, 0, // EPB
                52, 0, 0, 0, // total length
                0, 0, 0, 0, // interface 0
                1, 0, 0, 0, // timestamp, high word
                2, 0, 0, 0, // timestamp, low word
                5, 0, 0, 0, // captured
                60, 0, 0, 0, // original length
                0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0, 0, 0, // data padded to 8
                2, 0, 4, 0, 2, 0, 0, 0, // epb_flags: outbound
                0, 0, 0, 0, // opt_endofopt
                52, 0, 0, 0,
            ][..]
        );
        // Whole frames: the original length is never below what was kept.
        let mut out = Vec::new();
        packet(&mut out, 3, 0, Direction::FromVm, &[1, 2, 3, 4], 0);
        assert_eq!(&out[8..12], &3u32.to_le_bytes());
        assert_eq!(&out[20..24], &4u32.to_le_bytes(), "captured");
        assert_eq!(&out[24..28], &4u32.to_le_bytes(), "original");
        assert_eq!(&out[28..32], &[1, 2, 3, 4]);
        assert_eq!(
            &out[32..40],
            &[2, 0, 4, 0, 1, 0, 0, 0],
            "epb_flags: inbound"
        );
        assert_eq!(out.len() % 4, 0);
    }
}
