//! Frames and the memory they lie in, whatever port they came through: the layer every
//! port kind, the offloads and the forwarding engine share.
//!
//! A frame is never copied on its way in: it stays where its port kind took it (a VM's
//! guest memory, a TAP port's receive buffers, an AF_XDP UMEM), described by segments of
//! that memory ([`Seg`]) and a copy of its first bytes taken once for the decision
//! ([`IngressFrame::peek`]). [`view::MemView`] reads and writes such memory, checked; a
//! [`FrameEdit`] says how the frame changes on its way out (a VLAN tag pushed, popped or
//! rewritten) without a second copy.

pub mod view;

use vm_memory::GuestMemoryMmap;

use crate::offload::VnetHeader;

/// Memory frames lie in, mapped: a VM's guest memory as its frontend's table describes
/// it, or a port's own buffers (a TAP port's, an AF_XDP UMEM) laid out the same way, so one
/// checked path reads them all.
pub type FrameMem = GuestMemoryMmap<()>;

/// Largest frame (without the virtio-net header) the switch forwards.
pub const MAX_FRAME_LEN: usize = 65_550;
/// Shortest frame forwarded: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;
/// Bytes of the frame copied to the stack for the forwarding decision.
pub const PEEK_LEN: usize = 18;
/// Most segments one frame is taken in: a kind takes a frame in at most this many, and a
/// burst's segment array has room for this many more before each frame is taken.
pub const MAX_SEGS: usize = 64;

/// `len` bytes of memory of the switch's own, starting at address 0, laid out as frames'
/// memory is: a port's receive buffers, a frame the switch sends itself.
pub fn host_memory(len: usize) -> std::io::Result<FrameMem> {
    FrameMem::from_ranges(&[(vm_memory::GuestAddress(0), len)])
        .map_err(|e| std::io::Error::other(format!("cannot map {len} bytes of buffers: {e}")))
}

/// [`host_memory`] in a memfd named `name`: memory another process can map too (an AF_XDP
/// UMEM handed to the daemon replacing this one), with the file.
pub fn shared_host_memory(len: usize, name: &str) -> std::io::Result<(FrameMem, std::fs::File)> {
    use rustix::fs::{memfd_create, MemfdFlags};
    let file = std::fs::File::from(
        memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(std::io::Error::from)?,
    );
    file.set_len(len as u64)?;
    // Its size is fixed from now on: no one holding the file can shrink it under a mapping.
    rustix::fs::fcntl_add_seals(
        &file,
        rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW | rustix::fs::SealFlags::SEAL,
    )
    .map_err(std::io::Error::from)?;
    let mem = map_shared(&file, len)?;
    Ok((mem, file))
}

/// Maps `file`, a memfd of [`shared_host_memory`] (another process's, handed over), as
/// memory of `len` bytes from address 0: refused unless the file is that long and sealed
/// against shrinking, so that no access through the mapping can fault.
pub fn map_shared(file: &std::fs::File, len: usize) -> std::io::Result<FrameMem> {
    let size = file.metadata()?.len();
    let seals = rustix::fs::fcntl_get_seals(file).map_err(std::io::Error::from)?;
    if size != len as u64 || !seals.contains(rustix::fs::SealFlags::SHRINK) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the memory file is {size} bytes, or may shrink; {len} sealed bytes were due"),
        ));
    }
    let offset = vm_memory::FileOffset::new(file.try_clone()?, 0);
    FrameMem::from_ranges_with_files(&[(vm_memory::GuestAddress(0), len, Some(offset))])
        .map_err(|e| std::io::Error::other(format!("cannot map {len} bytes of buffers: {e}")))
}

/// A range of the memory a frame lies in (a VM's buffer, a TAP or AF_XDP port's own), as
/// its port kind took it: checked against that memory before any access.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seg {
    pub addr: u64,
    pub len: u32,
}

/// Most bytes of a frame's start the switch judges on a copy of its own (security groups'
/// headers) and then writes from that copy ([`FrameEdit::carry_head`]), so that a sender
/// cannot change what was judged before it is delivered.
pub const JUDGED_LEN: usize = 128;

/// How a frame is changed on its way out, without a second copy: the first `skip` bytes of
/// the source frame are replaced by `prefix[..prefix_len]` (from the host), the rest is
/// copied from the source VM as usual. Used to add, remove or rewrite an 802.1Q tag, and to
/// write a judged frame's headers from the switch's copy ([`Self::carry_head`]).
///
/// The bytes of `prefix` past `prefix_len` mean nothing (an edit is cheaper to build when
/// they need not be zeroed), and two edits are equal when they write the same frame.
#[derive(Debug, Clone, Copy)]
pub struct FrameEdit {
    pub prefix: [u8; FrameEdit::MAX_PREFIX],
    pub prefix_len: u8,
    pub skip: u8,
}

impl FrameEdit {
    /// Longest VLAN edit's prefix: two MAC addresses, one 802.1Q tag and the EtherType
    /// after it.
    pub const VLAN_PREFIX: usize = 18;
    /// Longest prefix: a VLAN edit's (replacing at least the 12 bytes of the addresses)
    /// and the rest of a judged frame's first [`JUDGED_LEN`] bytes.
    pub const MAX_PREFIX: usize = Self::VLAN_PREFIX + JUDGED_LEN - 12;
    /// The frame as it is.
    pub const NONE: FrameEdit = FrameEdit {
        prefix: [0; FrameEdit::MAX_PREFIX],
        prefix_len: 0,
        skip: 0,
    };

    /// Length of a `frame_len`-byte source frame after the edit, or `None` if the frame is
    /// shorter than the bytes the edit replaces.
    #[inline]
    pub fn out_len(&self, frame_len: u32) -> Option<u32> {
        frame_len
            .checked_sub(u32::from(self.skip))
            .map(|n| n + u32::from(self.prefix_len.min(Self::MAX_PREFIX as u8)))
    }

    /// The host bytes written before the copied rest.
    #[inline]
    pub fn prefix(&self) -> &[u8] {
        &self.prefix[..usize::from(self.prefix_len).min(Self::MAX_PREFIX)]
    }

    /// The first [`Self::VLAN_PREFIX`] bytes of the prefix array (the whole prefix of any
    /// VLAN edit, padding after it): what the fast paths move as one fixed-size block.
    #[inline(always)]
    pub fn vlan_block(&self) -> &[u8; Self::VLAN_PREFIX] {
        let (block, _) = self
            .prefix
            .split_first_chunk()
            .expect("MAX_PREFIX >= VLAN_PREFIX");
        block
    }

    /// [`Self::vlan_block`], to build a VLAN edit in.
    #[inline(always)]
    pub fn vlan_block_mut(&mut self) -> &mut [u8; Self::VLAN_PREFIX] {
        let (block, _) = self
            .prefix
            .split_first_chunk_mut()
            .expect("MAX_PREFIX >= VLAN_PREFIX");
        block
    }

    /// Makes the edit write the frame's first `head.len()` bytes (at most [`JUDGED_LEN`])
    /// from `head`, the switch's copy of them, after its own prefix: the source's bytes are
    /// copied from there on. False, the edit unchanged, if `head` is shorter than the bytes
    /// the edit replaces already, or longer than [`JUDGED_LEN`].
    #[inline]
    pub fn carry_head(&mut self, head: &[u8]) -> bool {
        let p = self.prefix().len();
        let Some(rest) = head.get(usize::from(self.skip)..) else {
            return false;
        };
        let Some(to) = self.prefix.get_mut(p..p + rest.len()) else {
            return false;
        };
        if head.len() > JUDGED_LEN {
            return false;
        }
        to.copy_from_slice(rest);
        self.prefix_len = (p + rest.len()) as u8;
        self.skip = head.len() as u8;
        true
    }
}

impl PartialEq for FrameEdit {
    fn eq(&self, other: &FrameEdit) -> bool {
        self.prefix() == other.prefix() && self.skip == other.skip
    }
}

impl Eq for FrameEdit {}

/// A frame that entered the switch through a port (a VM's TX chain, a read from a TAP
/// interface, an AF_XDP descriptor). Its segments (header excluded) are `one` when it is in
/// one buffer (the usual case, `seg_start == seg_end`), else in the caller's segment array
/// at `seg_start..seg_end` ([`IngressFrame::segs_in`]).
#[derive(Debug, Clone, Default)]
pub struct IngressFrame {
    /// The port kind's own name for the frame's buffers (a VM's chain head), given back
    /// with them.
    pub head: u16,
    pub len: u32,
    one: Seg,
    seg_start: u32,
    seg_end: u32,
    /// The first bytes of the frame, copied once: decisions are made on this copy.
    pub peek: [u8; PEEK_LEN],
    /// The frame's virtio-net header, if it was read: what the frame asks of its
    /// receivers. Meaningful only for frames taken with headers read (from a sender that
    /// may use offloads); left as it was otherwise.
    pub vnet: VnetHeader,
}

impl IngressFrame {
    /// A frame whose segments are `segs` of the caller's array (fewer than 2^32 entries,
    /// at least one).
    #[inline]
    pub fn new(
        head: u16,
        segs: std::ops::Range<usize>,
        len: u32,
        peek: [u8; PEEK_LEN],
    ) -> IngressFrame {
        debug_assert!(segs.start < segs.end);
        IngressFrame {
            head,
            len,
            one: Seg::default(),
            seg_start: segs.start as u32,
            seg_end: segs.end as u32,
            peek,
            vnet: VnetHeader::default(),
        }
    }

    /// A frame of `len` bytes in one buffer, at guest address `addr`: the caller's
    /// segment array is not used (a push there, and the bounds checks of the slice taken
    /// back, cost more than the frame's own copy of it; callgrind).
    #[inline]
    pub fn in_one_buffer(head: u16, addr: u64, len: u32, peek: [u8; PEEK_LEN]) -> IngressFrame {
        IngressFrame {
            head,
            len,
            one: Seg { addr, len },
            seg_start: 0,
            seg_end: 0,
            peek,
            vnet: VnetHeader::default(),
        }
    }

    /// Makes this the frame of `len` bytes in one buffer at `addr` ([`Self::in_one_buffer`]),
    /// leaving `vnet` as it was: the fast path pops into a reused slot this way, one store
    /// fewer per field it need not write.
    #[inline(always)]
    pub fn fill_one_buffer(&mut self, head: u16, addr: u64, len: u32, peek: [u8; PEEK_LEN]) {
        self.head = head;
        self.len = len;
        self.one = Seg { addr, len };
        self.seg_start = 0;
        self.seg_end = 0;
        self.peek = peek;
    }

    /// Makes this the frame of the `len` bytes at `addr` of the memory `view` sees, in one
    /// buffer (a kernel's frame, one the switch built), its first bytes copied and `vnet`
    /// left as it was. Checked as a guest's descriptor is: false, and nothing taken, if it
    /// is shorter than an Ethernet header or not all inside the memory.
    #[inline(always)]
    pub fn fill_from_buffer(&mut self, view: &mut view::MemView<'_>, addr: u64, len: u32) -> bool {
        let mut peek = [0u8; PEEK_LEN];
        let n = (len as usize).min(PEEK_LEN);
        if (len as usize) < MIN_FRAME_LEN
            || !view.covers(addr, len as usize)
            || !view.read(addr, &mut peek[..n])
        {
            return false;
        }
        self.fill_one_buffer(0, addr, len, peek);
        true
    }

    /// The frame's segments: its own one, or those in `all`, the array the frame was
    /// taken with.
    #[inline]
    pub fn segs_in<'a>(&'a self, all: &'a [Seg]) -> &'a [Seg] {
        if self.seg_start == self.seg_end {
            std::slice::from_ref(&self.one)
        } else {
            &all[self.seg_start as usize..self.seg_end as usize]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame's first 60 bytes: 0, 1, 2...
    fn head() -> Vec<u8> {
        (0..60).collect()
    }

    /// The VLAN edit that pushes tag 5 onto an untagged frame starting with `head`.
    fn push_tag(head: &[u8]) -> FrameEdit {
        let mut e = FrameEdit::NONE;
        e.prefix[..12].copy_from_slice(&head[..12]);
        e.prefix[12..16].copy_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        (e.prefix_len, e.skip) = (16, 12);
        e
    }

    #[test]
    fn a_carried_head_follows_the_edit_and_the_source_is_copied_after_it() {
        let h = head();
        let mut plain = FrameEdit::NONE;
        assert!(plain.carry_head(&h));
        assert_eq!((plain.prefix(), plain.skip), (&h[..], 60));
        assert_eq!(plain.out_len(1000), Some(1000));
        let mut tagged = push_tag(&h);
        assert!(tagged.carry_head(&h));
        let mut want = push_tag(&h).prefix().to_vec();
        want.extend_from_slice(&h[12..]);
        assert_eq!((tagged.prefix(), tagged.skip), (&want[..], 60));
        assert_eq!(tagged.out_len(1000), Some(1004));
        assert_eq!(&tagged.vlan_block()[..16], push_tag(&h).prefix());
        // The longest head after the longest VLAN prefix fits.
        let long: Vec<u8> = (0..JUDGED_LEN as u8).collect();
        let mut e = push_tag(&long);
        (e.prefix_len, e.skip) = (18, 12);
        assert!(e.carry_head(&long));
        assert_eq!(e.prefix().len(), FrameEdit::MAX_PREFIX);
    }

    #[test]
    fn a_head_shorter_than_the_edit_or_longer_than_judged_is_not_carried() {
        let h = head();
        let mut e = push_tag(&h);
        assert!(!e.carry_head(&h[..11]));
        assert_eq!(e, push_tag(&h));
        let long = vec![0u8; JUDGED_LEN + 1];
        let mut plain = FrameEdit::NONE;
        assert!(!plain.carry_head(&long));
        assert_eq!(plain, FrameEdit::NONE);
    }
}
