//! The pcapng capture format (draft-ietf-opsawg-pcapng), as far as a port's capture needs:
//! one section, one Ethernet interface per captured port, one enhanced packet block per
//! frame with its direction, and the interface's statistics at the end (frames seen and
//! frames the capture could not keep). Wireshark, tshark and tcpdump read it.
//!
//! Every block is built into a caller's buffer, little-endian, with the byte-order magic
//! saying so; nothing here allocates per frame beyond what the buffer needs.

/// Link type of every interface: Ethernet (`LINKTYPE_ETHERNET`).
const LINKTYPE_ETHERNET: u16 = 1;

const SECTION_HEADER: u32 = 0x0A0D_0D0A;
const INTERFACE_DESCRIPTION: u32 = 0x0000_0001;
const INTERFACE_STATISTICS: u32 = 0x0000_0005;
const ENHANCED_PACKET: u32 = 0x0000_0006;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;
const ISB_IFRECV: u16 = 4;
const ISB_IFDROP: u16 = 5;

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

/// Appends the statistics of `interface` at `ns`: `received` frames were seen, of which
/// `dropped` could not be kept.
pub fn statistics(out: &mut Vec<u8>, interface: u32, ns: u64, received: u64, dropped: u64) {
    let mut body = Vec::with_capacity(48);
    body.extend_from_slice(&interface.to_le_bytes());
    body.extend_from_slice(&((ns >> 32) as u32).to_le_bytes());
    body.extend_from_slice(&(ns as u32).to_le_bytes());
    option(&mut body, ISB_IFRECV, &received.to_le_bytes());
    option(&mut body, ISB_IFDROP, &dropped.to_le_bytes());
    option(&mut body, OPT_END, &[]);
    block(out, INTERFACE_STATISTICS, &body);
}

/// A malformed block in a capture read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed pcapng block at byte {offset} (a length of {length})")]
pub struct BadBlock {
    pub offset: usize,
    pub length: u32,
}

/// What a reader of a streamed capture learns from its blocks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    /// Enhanced packet blocks seen.
    pub packets: u64,
    /// From the last interface statistics block: frames seen and frames not kept.
    pub received: Option<u64>,
    pub dropped: Option<u64>,
}

impl StreamSummary {
    /// Splits `buf`, the start of a stream written by this module, at its last whole block:
    /// returns how many bytes are whole blocks, counting what they hold. The rest is the
    /// beginning of a block still coming.
    pub fn whole_blocks(&mut self, buf: &[u8]) -> Result<usize, BadBlock> {
        let mut at = 0;
        while let Some(head) = buf.get(at..at + 8) {
            let kind = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            let length = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            if length < 12 || length % 4 != 0 || length > 1 << 24 {
                return Err(BadBlock { offset: at, length });
            }
            let Some(block) = buf.get(at..at + length as usize) else {
                break;
            };
            match kind {
                ENHANCED_PACKET => self.packets += 1,
                INTERFACE_STATISTICS => self.read_statistics(&block[8..block.len() - 4]),
                _ => {}
            }
            at += length as usize;
        }
        Ok(at)
    }

    /// Reads the options of an interface statistics block's body.
    fn read_statistics(&mut self, body: &[u8]) {
        let mut at = 12; // interface, timestamp
        while let Some(o) = body.get(at..at + 4) {
            let code = u16::from_le_bytes([o[0], o[1]]);
            let len = usize::from(u16::from_le_bytes([o[2], o[3]]));
            let value = body
                .get(at + 4..at + 4 + len)
                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                .map(u64::from_le_bytes);
            match code {
                OPT_END => break,
                ISB_IFRECV => self.received = value,
                ISB_IFDROP => self.dropped = value,
                _ => {}
            }
            at += 4 + pad4(len);
        }
    }
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

    #[test]
    fn statistics_on_literal_bytes() {
        let mut out = Vec::new();
        statistics(&mut out, 0, 0x0000_0001_0000_0002, 10, 3);
        assert_eq!(
            out,
            [
                5, 0, 0, 0, // ISB
                52, 0, 0, 0, // total length
                0, 0, 0, 0, // interface 0
                1, 0, 0, 0, 2, 0, 0, 0, // timestamp
                4, 0, 8, 0, 10, 0, 0, 0, 0, 0, 0, 0, // isb_ifrecv 10
                5, 0, 8, 0, 3, 0, 0, 0, 0, 0, 0, 0, // isb_ifdrop 3
                0, 0, 0, 0, // opt_endofopt
                52, 0, 0, 0,
            ][..]
        );
    }

    #[test]
    fn a_stream_read_back_in_pieces() {
        let mut stream = Vec::new();
        section_header(&mut stream, "vm1");
        interface(&mut stream, "vm1", 128);
        packet(&mut stream, 0, 1, Direction::FromVm, &[1; 60], 60);
        packet(&mut stream, 0, 2, Direction::ToVm, &[2; 61], 61);
        statistics(&mut stream, 0, 3, 5, 3);
        // Fed in pieces as they come off the wire; only whole blocks are taken.
        for step in [1, 7, 13, 64, stream.len()] {
            let mut summary = StreamSummary::default();
            let (mut pending, mut taken) = (Vec::new(), 0);
            for piece in stream.chunks(step) {
                pending.extend_from_slice(piece);
                let n = summary.whole_blocks(&pending).unwrap();
                taken += n;
                pending.drain(..n);
            }
            assert!(pending.is_empty(), "step {step}");
            assert_eq!(taken, stream.len());
            assert_eq!(
                summary,
                StreamSummary {
                    packets: 2,
                    received: Some(5),
                    dropped: Some(3)
                }
            );
        }
        // A length that cannot be a block is an error, not a wait for more.
        let mut summary = StreamSummary::default();
        assert_eq!(
            summary.whole_blocks(&[6, 0, 0, 0, 5, 0, 0, 0]),
            Err(BadBlock {
                offset: 0,
                length: 5
            })
        );
    }
}
