//! The 802.1Q tag: reading it from a frame's first bytes, and the edits that push, pop or
//! rewrite it. An edit is built on an 18-byte copy of the frame's start (the MAC
//! addresses, room for one tag, the EtherType after it) and replaces the frame's first
//! bytes during its one copy: no second pass over the frame.

use crate::ethernet::ethertype;

/// TPID of an 802.1Q tag.
pub const TPID_8021Q: u16 = ethertype::VLAN;
/// TPID of an 802.1ad service tag (QinQ).
pub const TPID_8021AD: u16 = ethertype::QINQ;
/// The VLAN id bits of a tag control field (TCI); the rest are the priority and DEI.
pub const VID_MASK: u16 = 0x0fff;
/// Highest usable VLAN id (4095 is reserved).
pub const MAX_VID: u16 = 4094;
/// Bytes of a tag: its TPID and TCI.
pub const TAG_LEN: usize = 4;
/// Bytes of an untagged Ethernet header: MAC addresses and EtherType.
pub const UNTAGGED_HEADER_LEN: usize = 14;
/// Bytes of an Ethernet header with one tag.
pub const TAGGED_HEADER_LEN: usize = UNTAGGED_HEADER_LEN + TAG_LEN;
/// Where the EtherType (or a tag's TPID) of a frame starts.
const TYPE_AT: usize = 12;

/// A frame's first [`TAGGED_HEADER_LEN`] bytes: all a tag edit reads or writes.
pub type Header = [u8; TAGGED_HEADER_LEN];

/// The tag control field of a frame starting with `h`, if the frame is 802.1Q-tagged.
/// (Whether the frame is long enough to hold the tag is its length's business.)
#[inline(always)]
pub fn tci(h: &Header) -> Option<u16> {
    (u16::from_be_bytes([h[TYPE_AT], h[TYPE_AT + 1]]) == TPID_8021Q)
        .then(|| u16::from_be_bytes([h[TYPE_AT + 2], h[TYPE_AT + 3]]))
}

/// Turns `out`, a copy of `h` (an untagged frame's start), into its MAC addresses, a tag
/// of `tci`, then its EtherType. Returns the edit's length and how many of the frame's
/// bytes it replaces.
#[inline(always)]
pub fn push_tag(out: &mut Header, h: &Header, tci: u16) -> (usize, usize) {
    put_tag(out, h, tci, TYPE_AT)
}

/// Turns `out`, a copy of `h` (a tagged frame's start), into its MAC addresses, a tag of
/// `tci` in place of its own, then its EtherType. Returns as [`push_tag`].
#[inline(always)]
pub fn replace_tag(out: &mut Header, h: &Header, tci: u16) -> (usize, usize) {
    put_tag(out, h, tci, TYPE_AT + TAG_LEN)
}

/// The tag of `tci` after the addresses, then the EtherType at `type_at` of `h`.
#[inline(always)]
fn put_tag(out: &mut Header, h: &Header, tci: u16, type_at: usize) -> (usize, usize) {
    out[TYPE_AT + TAG_LEN..TAGGED_HEADER_LEN].copy_from_slice(&h[type_at..type_at + 2]);
    out[TYPE_AT..TYPE_AT + 2].copy_from_slice(&TPID_8021Q.to_be_bytes());
    out[TYPE_AT + 2..TYPE_AT + TAG_LEN].copy_from_slice(&tci.to_be_bytes());
    (TAGGED_HEADER_LEN, type_at + 2)
}

/// Turns `out`, a copy of `h` (a tagged frame's start), into its MAC addresses, then the
/// EtherType that followed the tag. Returns as [`push_tag`].
#[inline(always)]
pub fn pop_tag(out: &mut Header, h: &Header) -> (usize, usize) {
    out[TYPE_AT..UNTAGGED_HEADER_LEN].copy_from_slice(&h[TYPE_AT + TAG_LEN..TAGGED_HEADER_LEN]);
    (UNTAGGED_HEADER_LEN, TAGGED_HEADER_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 02:00:00:00:00:02 <- 02:00:00:00:00:01, IPv4, then the first IPv4 bytes.
    const UNTAGGED: Header = [
        2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00, 0x45, 0x00, 0x00, 0x54,
    ];
    /// The same frame tagged: priority 5, VLAN 100 (TCI 0xa064).
    const TAGGED: Header = [
        2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x81, 0x00, 0xa0, 0x64, 0x08, 0x00,
    ];

    fn apply(edit: (&Header, (usize, usize)), frame: &[u8]) -> Vec<u8> {
        let (out, (len, skip)) = edit;
        [&out[..len], &frame[skip..]].concat()
    }

    #[test]
    fn the_tag_is_read_only_behind_an_8021q_tpid() {
        assert_eq!(tci(&TAGGED), Some(0xa064));
        assert_eq!(tci(&TAGGED).map(|t| t & VID_MASK), Some(100));
        assert_eq!(tci(&UNTAGGED), None);
        let mut qinq = TAGGED;
        qinq[12..14].copy_from_slice(&[0x88, 0xa8]);
        assert_eq!(tci(&qinq), None, "an 802.1ad tag is not an 802.1Q one");
    }

    #[test]
    fn a_pushed_tag_sits_between_the_addresses_and_the_ethertype() {
        let frame = [&UNTAGGED[..], &[1, 2, 3]].concat();
        let mut out = UNTAGGED;
        let edit = push_tag(&mut out, &UNTAGGED, 0xa064);
        // 18 bytes written for the frame's first 14: its EtherType moves behind the tag.
        assert_eq!(edit, (18, 14));
        let want = [
            2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x81, 0x00, 0xa0, 0x64, 0x08, 0x00, 0x45, 0x00,
            0x00, 0x54, 1, 2, 3,
        ];
        assert_eq!(apply((&out, edit), &frame), want);
    }

    #[test]
    fn a_popped_tag_leaves_the_addresses_and_the_inner_ethertype() {
        let frame = [&TAGGED[..], &[0x45, 0, 0, 0x54]].concat();
        let mut out = TAGGED;
        let edit = pop_tag(&mut out, &TAGGED);
        assert_eq!(edit, (14, 18));
        let want = [
            2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00, 0x45, 0x00, 0x00, 0x54,
        ];
        assert_eq!(apply((&out, edit), &frame), want);
    }

    #[test]
    fn a_replaced_tag_keeps_everything_else() {
        let frame = [&TAGGED[..], &[0x45]].concat();
        let mut out = TAGGED;
        let edit = replace_tag(&mut out, &TAGGED, 0xa0c8);
        assert_eq!(edit, (18, 18));
        let want = [
            2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x81, 0x00, 0xa0, 0xc8, 0x08, 0x00, 0x45,
        ];
        assert_eq!(apply((&out, edit), &frame), want);
    }
}
