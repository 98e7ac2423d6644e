//! 802.1Q VLANs: which VLAN a frame belongs to on the way in, and whether and how it leaves
//! a port on the way out.
//!
//! Every port has a [`VlanPolicy`]:
//! - no setting (the default): untagged frames are in VLAN 0 and leave untagged; tagged
//!   frames keep their VLAN and tag, as on an OVS port with neither `tag` nor `trunks`;
//! - access `N`: untagged (and priority-tagged) frames enter VLAN `N`; frames leave
//!   untagged; tagged frames are refused;
//! - trunk `[..]`: only frames tagged with one of those VLANs enter; frames leave tagged.
//!
//! The FDB is keyed by (MAC, VLAN) and flooding stays inside the frame's VLAN. Tags are
//! pushed and popped during the single copy (a [`FrameEdit`]), never by a second pass.

use vringswitch_ports::frame::{FrameEdit, PEEK_LEN};
use vringswitch_wire::vlan::{self, MAX_VID, TAGGED_HEADER_LEN, UNTAGGED_HEADER_LEN, VID_MASK};

/// The VLAN of untagged frames on ports without a VLAN setting.
pub const UNTAGGED_VLAN: u16 = 0;

/// A port's VLAN membership: which VLAN travels untagged, which travel tagged.
#[derive(Clone, PartialEq, Eq)]
pub struct VlanPolicy {
    /// The VLAN of untagged frames, which also leaves untagged; `None` refuses them.
    native: Option<u16>,
    /// Bit `v` set: VLAN `v` enters and leaves tagged.
    tagged: [u64; 64],
}

impl std::fmt::Debug for VlanPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tagged = (1..=MAX_VID).filter(|&v| self.is_tagged(v)).count();
        f.debug_struct("VlanPolicy")
            .field("native", &self.native)
            .field("tagged_vlans", &tagged)
            .finish()
    }
}

impl Default for VlanPolicy {
    fn default() -> Self {
        Self::transparent()
    }
}

/// How a frame's VLAN tag is found on the way in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingress {
    /// The VLAN the frame belongs to.
    pub vlan: u16,
    /// The tag control field the frame arrived with, if it was tagged.
    pub tci: Option<u16>,
}

/// Why a frame was refused on the way in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its VLAN (or lack of one) is not allowed on the port.
    Vlan,
}

impl VlanPolicy {
    /// No VLAN setting: untagged frames in VLAN 0, tagged frames keep their VLAN.
    pub fn transparent() -> VlanPolicy {
        let mut p = VlanPolicy {
            native: Some(UNTAGGED_VLAN),
            tagged: [0; 64],
        };
        for v in 1..=MAX_VID {
            p.set_tagged(v);
        }
        p
    }

    /// An access port of VLAN `tag` (1 to 4094).
    pub fn access(tag: u16) -> VlanPolicy {
        VlanPolicy {
            native: Some(tag & VID_MASK),
            tagged: [0; 64],
        }
    }

    /// A trunk carrying `tags` (each 1 to 4094), tagged; untagged frames are refused.
    pub fn trunk(tags: &[u16]) -> VlanPolicy {
        let mut p = VlanPolicy {
            native: None,
            tagged: [0; 64],
        };
        for &v in tags {
            if (1..=MAX_VID).contains(&v) {
                p.set_tagged(v);
            }
        }
        p
    }

    fn set_tagged(&mut self, v: u16) {
        let v = usize::from(v & VID_MASK);
        self.tagged[v / 64] |= 1 << (v % 64);
    }

    #[inline]
    fn is_tagged(&self, v: u16) -> bool {
        let v = usize::from(v & VID_MASK);
        self.tagged[v / 64] & (1 << (v % 64)) != 0
    }

    /// Whether frames of VLAN `vlan` may leave (and enter) this port.
    #[inline]
    pub fn is_member(&self, vlan: u16) -> bool {
        self.native == Some(vlan) || self.is_tagged(vlan)
    }

    /// The VLAN of a frame of `len` bytes whose first bytes are `peek`, arriving on this
    /// port. A frame typed 802.1Q but too short to hold the tag is refused.
    #[inline]
    pub fn ingress(&self, peek: &[u8; PEEK_LEN], len: u32) -> Result<Ingress, Refused> {
        let Some(tci) = vlan::tci(peek) else {
            return self
                .native
                .map(|vlan| Ingress { vlan, tci: None })
                .ok_or(Refused::Vlan);
        };
        if (len as usize) < TAGGED_HEADER_LEN {
            return Err(Refused::Vlan);
        }
        let vid = tci & VID_MASK;
        let vlan = if vid == 0 {
            // Priority-tagged: belongs to the untagged VLAN.
            self.native.ok_or(Refused::Vlan)?
        } else if self.is_tagged(vid) {
            vid
        } else {
            return Err(Refused::Vlan);
        };
        Ok(Ingress {
            vlan,
            tci: Some(tci),
        })
    }

    /// How a frame that entered as `ingress` leaves this port, or `None` if its VLAN does
    /// not. `peek` is the frame's first bytes, copied once from the guest: the forwarding
    /// decision was taken on them.
    ///
    /// Every edit rewrites all the bytes the decision read (the MAC addresses, the EtherType
    /// or the tag and the EtherType after it) from `peek`, never from the guest's buffer: a
    /// guest that changes its buffer between the decision and the copy (a double fetch)
    /// cannot make the frame leave with addresses or a tag other than those it was switched
    /// on (spoofing past port security, or hopping VLANs with a second tag).
    #[inline]
    pub fn egress(&self, ingress: Ingress, peek: &[u8; PEEK_LEN]) -> Option<FrameEdit> {
        let mut edit = FrameEdit::NONE;
        self.egress_into(ingress, peek, &mut edit).then_some(edit)
    }

    /// [`Self::egress`] for the data path: the edit is written into `edit` (a slot the
    /// caller reuses, so the prefix is built where it is read) and `false` means the frame
    /// does not leave here.
    #[inline(always)]
    pub fn egress_into(
        &self,
        ingress: Ingress,
        peek: &[u8; PEEK_LEN],
        edit: &mut FrameEdit,
    ) -> bool {
        let Ingress { vlan, tci } = ingress;
        // Every edit starts from the whole of `peek` (one 18-byte move, no zeroing) and
        // patches what changes.
        let block = edit.vlan_block_mut();
        *block = *peek;
        let (prefix_len, skip) = if self.native == Some(vlan) {
            match tci {
                None => (UNTAGGED_HEADER_LEN, UNTAGGED_HEADER_LEN),
                Some(_) => vlan::pop_tag(block, peek),
            }
        } else if !self.is_tagged(vlan) {
            return false;
        } else {
            match tci {
                Some(t) if t & VID_MASK == vlan => (TAGGED_HEADER_LEN, TAGGED_HEADER_LEN),
                // Re-tagged (from a priority tag): the priority bits are kept.
                Some(t) => vlan::replace_tag(block, peek, (t & !VID_MASK) | vlan),
                None => vlan::push_tag(block, peek, vlan),
            }
        };
        edit.prefix_len = prefix_len as u8;
        edit.skip = skip as u8;
        true
    }
}

const _: () = assert!(PEEK_LEN == FrameEdit::VLAN_PREFIX && PEEK_LEN == TAGGED_HEADER_LEN);

#[cfg(test)]
mod tests {
    use super::*;

    fn untagged() -> [u8; PEEK_LEN] {
        let mut p = [0u8; PEEK_LEN];
        p[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        p[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        p[12..14].copy_from_slice(&[0x08, 0x00]);
        p[14] = 0x45;
        p
    }

    fn tagged(tci: u16) -> [u8; PEEK_LEN] {
        let mut p = untagged();
        p[12..14].copy_from_slice(&[0x81, 0x00]);
        p[14..16].copy_from_slice(&tci.to_be_bytes());
        p[16..18].copy_from_slice(&[0x08, 0x00]);
        p
    }

    /// Applies an edit to a whole frame, as the ring code does during the copy.
    fn apply(edit: &FrameEdit, frame: &[u8]) -> Vec<u8> {
        [edit.prefix(), &frame[usize::from(edit.skip)..]].concat()
    }

    fn frame_of(peek: &[u8; PEEK_LEN]) -> Vec<u8> {
        let mut f = peek.to_vec();
        f.extend(0..50u8);
        f
    }

    #[test]
    fn transparent_ports_keep_frames_as_they_are() {
        let p = VlanPolicy::transparent();
        let i = p.ingress(&untagged(), 64).unwrap();
        assert_eq!(i, Ingress { vlan: 0, tci: None });
        let f = frame_of(&untagged());
        assert_eq!(apply(&p.egress(i, &untagged()).unwrap(), &f), f);
        let t = tagged(0x2000 | 42);
        let i = p.ingress(&t, 64).unwrap();
        assert_eq!(i.vlan, 42);
        let f = frame_of(&t);
        assert_eq!(apply(&p.egress(i, &t).unwrap(), &f), f);
        // VLAN 4095 is reserved.
        assert_eq!(p.ingress(&tagged(4095), 64), Err(Refused::Vlan));
        assert!(!p.is_member(4095));
        assert!(p.is_member(0) && p.is_member(1) && p.is_member(MAX_VID));
    }

    #[test]
    fn access_ports_tag_on_the_way_in_and_untag_on_the_way_out() {
        let access = VlanPolicy::access(10);
        let trunk = VlanPolicy::trunk(&[10, 20]);
        let f = frame_of(&untagged());
        let i = access.ingress(&untagged(), f.len() as u32).unwrap();
        assert_eq!(
            i,
            Ingress {
                vlan: 10,
                tci: None
            }
        );
        // To another access port of the VLAN: unchanged.
        let e = VlanPolicy::access(10).egress(i, &untagged()).unwrap();
        assert_eq!(apply(&e, &f), f);
        // To a trunk: tagged with VLAN 10, priority 0.
        let e = trunk.egress(i, &untagged()).unwrap();
        let out = apply(&e, &f);
        assert_eq!(out.len(), f.len() + 4);
        assert_eq!(out[..12], f[..12]);
        assert_eq!(out[12..16], [0x81, 0x00, 0x00, 10]);
        assert_eq!(out[16..], f[12..]);
        // A port without a VLAN setting carries every VLAN tagged, as in OVS.
        assert_eq!(VlanPolicy::transparent().egress(i, &untagged()), Some(e));
        // Not to another VLAN's access port, nor a trunk without it.
        assert_eq!(VlanPolicy::access(11).egress(i, &untagged()), None);
        assert_eq!(VlanPolicy::trunk(&[11]).egress(i, &untagged()), None);
        // Tagged frames are refused on an access port...
        assert_eq!(access.ingress(&tagged(10), 64), Err(Refused::Vlan));
        assert_eq!(access.ingress(&tagged(11), 64), Err(Refused::Vlan));
    }

    #[test]
    fn priority_tagged_frames_join_the_untagged_vlan() {
        let access = VlanPolicy::access(10);
        let t = tagged(0xa000); // priority 5, VID 0
        let i = access.ingress(&t, 64).unwrap();
        assert_eq!(
            i,
            Ingress {
                vlan: 10,
                tci: Some(0xa000)
            }
        );
        let f = frame_of(&t);
        // Out of an access port: the tag is removed.
        let out = apply(&access.egress(i, &t).unwrap(), &f);
        assert_eq!(out, [&f[..12], &f[16..]].concat());
        // Out of a trunk: re-tagged with the VLAN, the priority kept.
        let out = apply(&VlanPolicy::trunk(&[10]).egress(i, &t).unwrap(), &f);
        assert_eq!(out[..12], f[..12]);
        assert_eq!(out[12..16], [0x81, 0x00, 0xa0, 10]);
        assert_eq!(out[16..], f[16..]);
        // A trunk has no untagged VLAN to put them in.
        assert_eq!(VlanPolicy::trunk(&[10]).ingress(&t, 64), Err(Refused::Vlan));
    }

    #[test]
    fn trunks_carry_their_vlans_only() {
        let trunk = VlanPolicy::trunk(&[20, 30]);
        assert_eq!(trunk.ingress(&untagged(), 64), Err(Refused::Vlan));
        assert_eq!(trunk.ingress(&tagged(21), 64), Err(Refused::Vlan));
        let t = tagged(0x6000 | 20);
        let i = trunk.ingress(&t, 64).unwrap();
        assert_eq!(i.vlan, 20);
        // Trunk to trunk: as it is.
        let f = frame_of(&t);
        let e = VlanPolicy::trunk(&[20]).egress(i, &t).unwrap();
        assert_eq!(apply(&e, &f), f);
        // Trunk to access: untagged.
        let out = apply(&VlanPolicy::access(20).egress(i, &t).unwrap(), &f);
        assert_eq!(out, [&f[..12], &f[16..]].concat());
        assert_eq!(VlanPolicy::access(30).egress(i, &t), None);
        // Trunk to a plain port: the tag stays.
        let e = VlanPolicy::transparent().egress(i, &t).unwrap();
        assert_eq!(apply(&e, &f), f);
        // Out-of-range tags in a trunk list are ignored.
        let odd = VlanPolicy::trunk(&[0, 4095, 5000, 7]);
        assert!(odd.is_member(7));
        assert!(!odd.is_member(0) && !odd.is_member(4095));
    }

    /// The double fetch, deterministically: whatever the guest writes over the header bytes
    /// after the decision (here: every one of them flipped: 14 untagged, 18 with a tag), the
    /// frame leaves with the addresses, EtherType and tag the decision read, for every kind
    /// of port on both ends.
    #[test]
    fn the_header_a_frame_was_switched_on_is_the_header_it_leaves_with() {
        let policies = [
            VlanPolicy::transparent(),
            VlanPolicy::access(10),
            VlanPolicy::trunk(&[10]),
        ];
        for peek in [untagged(), tagged(10), tagged(0xa000)] {
            let f = frame_of(&peek);
            let header = if peek[12..14] == [0x81, 0x00] { 18 } else { 14 };
            let mut tampered = f.clone();
            for b in &mut tampered[..header] {
                *b ^= 0xff;
            }
            for from in &policies {
                let Ok(i) = from.ingress(&peek, f.len() as u32) else {
                    continue;
                };
                for to in &policies {
                    let Some(e) = to.egress(i, &peek) else {
                        continue;
                    };
                    assert!(usize::from(e.skip) >= header);
                    assert_eq!(
                        apply(&e, &tampered),
                        apply(&e, &f),
                        "{from:?} -> {to:?}, {i:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn truncated_tags_are_refused() {
        let p = VlanPolicy::transparent();
        for len in 14..18 {
            assert_eq!(p.ingress(&tagged(5), len), Err(Refused::Vlan), "{len}");
        }
        assert!(p.ingress(&tagged(5), 18).is_ok());
        // An untagged runt is in the untagged VLAN as usual.
        assert!(p.ingress(&untagged(), 14).is_ok());
    }

    #[test]
    fn every_vid_round_trips_through_access_and_trunk() {
        for v in 1..=MAX_VID {
            let access = VlanPolicy::access(v);
            let trunk = VlanPolicy::trunk(&[v]);
            let i = access.ingress(&untagged(), 64).unwrap();
            let e = trunk.egress(i, &untagged()).unwrap();
            let out = apply(&e, &frame_of(&untagged()));
            let mut peek = [0u8; PEEK_LEN];
            peek.copy_from_slice(&out[..PEEK_LEN]);
            let back = trunk.ingress(&peek, out.len() as u32).unwrap();
            assert_eq!(back.vlan, v);
            let e = access.egress(back, &peek).unwrap();
            assert_eq!(apply(&e, &out), frame_of(&untagged()));
        }
    }
}
