//! Guest memory as the fast path sees it: guest-physical ranges translated to host pointers,
//! with the last region hit cached, and the only raw copies in and out of a VM's memory.
//!
//! A [`MemView`] borrows one snapshot of a VM's memory map (`&FrameMem`). The mappings of
//! that snapshot stay in place for as long as the borrow lives (the snapshot owns them and is
//! only dropped, never changed, when the frontend sends a new table), so every pointer this
//! module derives is valid for `'m`. Every access is checked against the region it falls in:
//! nothing here can reach outside the VM's mapped memory.
//!
//! Guest memory is shared with a running guest that may change it at any moment. The copies
//! below therefore never create Rust references into it: they use raw pointer copies into or
//! out of our own buffers, as vm-memory's own slice copies do, and every decision is taken on
//! a copy on our side.

// One of the few places where the data path touches guest memory through raw pointers;
// each unsafe block says why it stays inside the VM's mapped regions.
#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::ptr::NonNull;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::frame::FrameMem;
use crate::frame::Seg;

/// Starts loading the cache line at `p` into the cache. A hint with no architectural
/// effect: it never faults and reads nothing into the program, whatever `p` is.
#[inline(always)]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 only hints the cache; it does not access memory architecturally
    // and never faults, so any address, mapped or not, is sound.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Most pieces one [`MemView::write_to`] sends: the host bytes and the frame's segments.
pub const MAX_WRITE_PIECES: usize = 68;

/// The guest ranges that hold bytes `skip..skip + len` of a frame in `segs`, in order, as
/// (address, length): the segments' own, the first and last cut to the bytes asked for.
/// They add up to less than `len` when the segments hold fewer bytes. Addresses are not
/// checked here: the accesses that follow check each against guest memory.
pub fn frame_ranges(segs: &[Seg], skip: usize, len: usize) -> FrameRanges<'_> {
    FrameRanges {
        segs: segs.iter(),
        skip,
        left: len,
    }
}

/// See [`frame_ranges`].
pub struct FrameRanges<'a> {
    segs: std::slice::Iter<'a, Seg>,
    skip: usize,
    left: usize,
}

impl Iterator for FrameRanges<'_> {
    type Item = (u64, usize);

    fn next(&mut self) -> Option<(u64, usize)> {
        // Bounded by the segments.
        while self.left > 0 {
            let s = self.segs.next()?;
            let n = s.len as usize;
            if self.skip >= n {
                self.skip -= n;
                continue;
            }
            let take = (n - self.skip).min(self.left);
            let addr = s.addr.wrapping_add(self.skip as u64);
            (self.skip, self.left) = (0, self.left - take);
            return Some((addr, take));
        }
        None
    }
}

/// `len` bytes of one VM's memory lying in one mapped region, translated once so that the
/// accesses after need no lookup. Only [`MemView::span`] makes one, having checked the
/// range; every access is checked against `len`.
#[derive(Clone, Copy)]
pub struct HostSpan<'m> {
    ptr: NonNull<u8>,
    len: usize,
    _mem: PhantomData<&'m FrameMem>,
}

impl HostSpan<'_> {
    /// Whether `n` bytes from `off` lie within the span.
    #[inline]
    fn holds(&self, off: usize, n: usize) -> bool {
        off <= self.len && n <= self.len - off
    }

    /// Copies the span's bytes from `off` into `buf`. False, copying nothing, if they are not
    /// all in the span.
    #[inline]
    pub fn read(&self, off: usize, buf: &mut [u8]) -> bool {
        if !self.holds(off, buf.len()) {
            return false;
        }
        // SAFETY: the span's `len` bytes lie in one region mapped for 'm (MemView::span),
        // and `off + buf.len() <= len`. The destination is our own buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), buf.as_mut_ptr(), buf.len())
        };
        true
    }

    /// Writes `bytes` at `off`. False, writing nothing, if they do not fit in the span.
    #[inline]
    pub fn write(&self, off: usize, bytes: &[u8]) -> bool {
        if !self.holds(off, bytes.len()) {
            return false;
        }
        // SAFETY: the span's `len` bytes lie in one region mapped for 'm (MemView::span),
        // and `off + bytes.len() <= len`. The source is our own slice.
        unsafe { move_bytes(bytes.as_ptr(), self.ptr.as_ptr().add(off), bytes.len()) };
        true
    }

    /// Writes `bytes` at `off` unless the span holds them already, as it usually does for a
    /// virtio-net header: the driver leaves the header of a reused buffer as the device
    /// wrote it last time. A line the driver's core owns is then only read, where a write
    /// would have taken it away, and that transfer is what the frame waited for (DPDK's
    /// vhost library skips such writes too). False, writing nothing, if they do not fit in
    /// the span. A fixed size, so that the comparison is a few loads, not a call. The
    /// comparison is on a copy: a driver that changes its own buffer meanwhile, as it must
    /// not, only confuses itself.
    #[inline(always)]
    pub fn write_unless_equal<const N: usize>(&self, off: usize, bytes: &[u8; N]) -> bool {
        if self.read_array::<N>(off).is_some_and(|held| held == *bytes) {
            return true;
        }
        self.write_array(off, bytes)
    }

    /// The `N` bytes at `off`, or `None` if they are not all in the span. One typed load of
    /// a fixed size: the compiler keeps it a few moves, where a copy of a length it could
    /// not prove constant became a memcpy call (callgrind).
    #[inline(always)]
    pub fn read_array<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if !self.holds(off, N) {
            return None;
        }
        // SAFETY: the span's `len` bytes lie in one region mapped for 'm (MemView::span),
        // and `off + N <= len`; an unaligned read of a byte array has no alignment needs.
        Some(unsafe { std::ptr::read_unaligned(self.ptr.as_ptr().add(off).cast::<[u8; N]>()) })
    }

    /// Writes the `N` bytes of `bytes` at `off` as one typed store (see [`Self::read_array`]).
    /// False, writing nothing, if they do not fit in the span.
    #[inline(always)]
    pub fn write_array<const N: usize>(&self, off: usize, bytes: &[u8; N]) -> bool {
        if !self.holds(off, N) {
            return false;
        }
        // SAFETY: the span's `len` bytes lie in one region mapped for 'm (MemView::span),
        // and `off + N <= len`; an unaligned write of a byte array has no alignment needs.
        unsafe { std::ptr::write_unaligned(self.ptr.as_ptr().add(off).cast::<[u8; N]>(), *bytes) };
        true
    }

    /// Copies `n` bytes of `src` from `src_off` to `off` in this span: the switch's one
    /// copy, memory to memory. False, copying nothing, if either range does not fit.
    #[inline(always)]
    pub fn copy_from(&self, off: usize, src: &HostSpan<'_>, src_off: usize, n: usize) -> bool {
        if !self.holds(off, n) || !src.holds(src_off, n) {
            return false;
        }
        // SAFETY: both ranges lie within their spans (checked above), each in one region
        // mapped for its lifetime. `move_bytes` has memmove's semantics, so it stays correct
        // even if a frontend mapped the same pages into both VMs.
        unsafe { move_bytes(src.ptr.as_ptr().add(src_off), self.ptr.as_ptr().add(off), n) };
        true
    }
}

/// Copies `n` bytes from `src` to `dst` as memmove does (the ranges may overlap). From 8
/// to 64 bytes, the usual rest of a small frame, inline: every byte is loaded, in moves
/// that may overlap one another, before any is stored. Other lengths call memmove.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `n` bytes.
#[inline(always)]
unsafe fn move_bytes(src: *const u8, dst: *mut u8, n: usize) {
    use std::ptr::{read_unaligned, write_unaligned};
    // SAFETY: in every arm, each access covers bytes `[k, k + size)` with `k + size <= n`
    // for the arm's range of `n`, so it stays within what the caller vouched for.
    unsafe {
        match n {
            33..=64 => {
                let a = read_unaligned(src.cast::<[u8; 16]>());
                let b = read_unaligned(src.add(16).cast::<[u8; 16]>());
                let c = read_unaligned(src.add(n - 32).cast::<[u8; 16]>());
                let d = read_unaligned(src.add(n - 16).cast::<[u8; 16]>());
                write_unaligned(dst.cast::<[u8; 16]>(), a);
                write_unaligned(dst.add(16).cast::<[u8; 16]>(), b);
                write_unaligned(dst.add(n - 32).cast::<[u8; 16]>(), c);
                write_unaligned(dst.add(n - 16).cast::<[u8; 16]>(), d);
            }
            16..=32 => {
                let a = read_unaligned(src.cast::<[u8; 16]>());
                let b = read_unaligned(src.add(n - 16).cast::<[u8; 16]>());
                write_unaligned(dst.cast::<[u8; 16]>(), a);
                write_unaligned(dst.add(n - 16).cast::<[u8; 16]>(), b);
            }
            8..=15 => {
                let a = read_unaligned(src.cast::<u64>());
                let b = read_unaligned(src.add(n - 8).cast::<u64>());
                write_unaligned(dst.cast::<u64>(), a);
                write_unaligned(dst.add(n - 8).cast::<u64>(), b);
            }
            _ => std::ptr::copy(src, dst, n),
        }
    }
}

/// Translates guest-physical addresses of one VM, remembering the last region used.
pub struct MemView<'m> {
    mem: &'m FrameMem,
    /// The cached region: guest-physical `[start, start + size)` and the host address of
    /// `start`. `size == 0` means nothing is cached.
    start: u64,
    size: u64,
    host: NonNull<u8>,
}

impl<'m> MemView<'m> {
    pub fn new(mem: &'m FrameMem) -> MemView<'m> {
        MemView {
            mem,
            start: 0,
            size: 0,
            host: NonNull::dangling(),
        }
    }

    /// The memory map this view translates.
    pub fn mem(&self) -> &'m FrameMem {
        self.mem
    }

    /// The host address of `addr` and how many of the `len` bytes from there lie in the same
    /// region (at least 1 when `len > 0`), or `None` if `addr` is not guest memory.
    // Always inlined: the compiler left one call per frame otherwise (callgrind).
    #[inline(always)]
    fn piece(&mut self, addr: u64, len: usize) -> Option<(*mut u8, usize)> {
        // One comparison: below `start` the difference wraps past any region's size.
        if addr.wrapping_sub(self.start) >= self.size {
            self.load_region(addr)?;
        }
        let off = addr.wrapping_sub(self.start);
        let n = usize::try_from(self.size - off).map_or(len, |room| room.min(len));
        // SAFETY: `off = addr - start < size` (checked above, or made so by load_region, which
        // only caches a region holding `addr`), so the result points inside the region's
        // mapping, which lives for 'm (module docs).
        let p = unsafe { self.host.as_ptr().add(off as usize) };
        Some((p, n))
    }

    #[cold]
    fn load_region(&mut self, addr: u64) -> Option<()> {
        let r = self.mem.find_region(GuestAddress(addr))?;
        let host = NonNull::new(r.get_host_address(MemoryRegionAddress(0)).ok()?)?;
        let start = r.start_addr().0;
        let end = start.checked_add(r.len())?;
        if end <= addr {
            return None;
        }
        (self.start, self.size, self.host) = (start, end - start, host);
        Some(())
    }

    /// Starts loading the cache line holding guest address `addr`, if it lies in the cached
    /// region (the region is not looked up for a hint). A hint only: it reads nothing and
    /// cannot fault.
    #[inline(always)]
    pub fn prefetch(&self, addr: u64) {
        let off = addr.wrapping_sub(self.start);
        if off < self.size {
            prefetch(self.host.as_ptr().wrapping_add(off as usize));
        }
    }

    /// The host address of `[addr, addr + len)` if all of it lies in one region: rings and
    /// indirect descriptor tables must, as DPDK's vhost library also requires.
    #[inline]
    pub fn contiguous(&mut self, addr: u64, len: usize) -> Option<NonNull<u8>> {
        let off = addr.wrapping_sub(self.start);
        if off >= self.size {
            return self.contiguous_elsewhere(addr, len);
        }
        // Not empty and within the region, in one comparison (`len - 1` wraps for 0).
        if (len as u64).wrapping_sub(1) >= self.size - off {
            return None;
        }
        // SAFETY: `off < size` (checked above), so the result points inside the cached
        // region's mapping, which lives for 'm (module docs); a pointer into a mapping is
        // not null.
        Some(unsafe { self.host.add(off as usize) })
    }

    /// [`Self::contiguous`] for an address outside the cached region: the region is looked
    /// up first. Out of line, so the common case keeps its registers.
    #[cold]
    #[inline(never)]
    fn contiguous_elsewhere(&mut self, addr: u64, len: usize) -> Option<NonNull<u8>> {
        self.load_region(addr)?;
        self.contiguous(addr, len)
    }

    /// `[addr, addr + len)` translated once, if it is not empty and lies in one region.
    // Always inlined: left out of line, each call returned its span through memory
    // (callgrind).
    #[inline(always)]
    pub fn span(&mut self, addr: u64, len: usize) -> Option<HostSpan<'m>> {
        let ptr = self.contiguous(addr, len)?;
        Some(HostSpan {
            ptr,
            len,
            _mem: PhantomData,
        })
    }

    /// Whether every byte of `[addr, addr + len)` is guest memory (it may span regions).
    #[inline]
    pub fn covers(&mut self, mut addr: u64, mut len: usize) -> bool {
        // Each step consumes at least one byte: bounded by `len`, and in practice by the
        // number of regions the range crosses.
        while len > 0 {
            let Some((_, n)) = self.piece(addr, len) else {
                return false;
            };
            len -= n;
            // Cannot overflow: addr + n <= the region's end, which is a u64.
            addr += n as u64;
        }
        true
    }

    /// Copies guest memory at `addr` into `buf`. Fails, having copied a prefix, if the range
    /// is not all guest memory.
    #[inline]
    pub fn read(&mut self, mut addr: u64, buf: &mut [u8]) -> bool {
        let mut done = 0;
        while done < buf.len() {
            let Some((p, n)) = self.piece(addr, buf.len() - done) else {
                return false;
            };
            // SAFETY: `p` is valid for `n` bytes of guest memory (piece); the destination is
            // our own buffer, in bounds since n <= buf.len() - done, and cannot overlap a
            // guest mapping.
            unsafe { move_bytes(p, buf.as_mut_ptr().add(done), n) };
            done += n;
            addr += n as u64;
        }
        true
    }

    /// Copies `bytes` into guest memory at `addr`. Fails, having written a prefix, if the
    /// range is not all guest memory.
    #[inline]
    pub fn write(&mut self, mut addr: u64, bytes: &[u8]) -> bool {
        let mut done = 0;
        while done < bytes.len() {
            let Some((p, n)) = self.piece(addr, bytes.len() - done) else {
                return false;
            };
            // SAFETY: `p` is valid for `n` bytes of guest memory (piece); the source is our
            // own slice, in bounds since n <= bytes.len() - done.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr().add(done), p, n) };
            done += n;
            addr += n as u64;
        }
        true
    }

    /// Writes `heads` (host bytes, one after the other) then `len` bytes of guest memory
    /// from the ranges of `segs` (skipping their first `skip` bytes) to `fd` with one
    /// `writev`: a frame sent out of a VM's buffers without a copy on our side. At most
    /// [`MAX_WRITE_PIECES`] pieces (a segment crossing a region boundary is two). Returns
    /// what `writev` returned.
    pub fn write_to(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        heads: &[&[u8]],
        segs: &[Seg],
        skip: usize,
        len: usize,
    ) -> std::io::Result<usize> {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut iov = [empty; MAX_WRITE_PIECES];
        let n = self.gather_iovecs(&mut iov, heads, segs, skip, len)?;
        // SAFETY: the first `n` iovecs point at `heads` (our own slices, borrowed for the
        // call) or at guest memory valid for their lengths (gather_iovecs); writev only
        // reads them.
        let r = unsafe {
            libc::writev(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                iov.as_ptr(),
                n as libc::c_int,
            )
        };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }

    /// Fills the first entries of `iov` with `heads` (host bytes; empty ones left out) then
    /// the host ranges of `len` bytes of guest memory from the ranges of `segs`, skipping
    /// their first `skip` bytes (a segment crossing a region boundary is two entries), for
    /// a system call that reads them while `heads` and this view's memory are borrowed.
    /// Returns how many entries it filled; fails if `iov` is too short or a range is not
    /// memory of this view.
    pub fn gather_iovecs(
        &mut self,
        iov: &mut [libc::iovec],
        heads: &[&[u8]],
        segs: &[Seg],
        skip: usize,
        len: usize,
    ) -> std::io::Result<usize> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_owned());
        let mut n = 0;
        for head in heads.iter().filter(|h| !h.is_empty()) {
            let slot = iov.get_mut(n).ok_or_else(|| bad("too many pieces"))?;
            *slot = libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            };
            n += 1;
        }
        let mut left = len;
        for (mut addr, mut want) in frame_ranges(segs, skip, len) {
            // Each step takes at least one byte: bounded by the range's length.
            while want > 0 {
                let (p, got) = self
                    .piece(addr, want)
                    .ok_or_else(|| bad("not guest memory"))?;
                let slot = iov.get_mut(n).ok_or_else(|| bad("too many pieces"))?;
                *slot = libc::iovec {
                    iov_base: p.cast(),
                    iov_len: got,
                };
                n += 1;
                want -= got;
                left -= got;
                addr += got as u64;
            }
        }
        if left > 0 {
            return Err(bad("the segments hold fewer bytes than the frame"));
        }
        Ok(n)
    }

    /// Writes a frame at `dst_addr` of this view's memory: `prefix` (host bytes) then `len`
    /// bytes of `src`'s memory from the ranges of `segs`, skipping their first `skip` bytes.
    /// Returns false, having written a prefix, if a range is not memory of its side or the
    /// segments hold fewer than `skip + len` bytes.
    pub fn gather_from(
        &mut self,
        dst_addr: u64,
        src: &mut MemView<'_>,
        prefix: &[u8],
        segs: &[Seg],
        skip: usize,
        len: usize,
    ) -> bool {
        if !self.write(dst_addr, prefix) {
            return false;
        }
        let mut at = dst_addr + prefix.len() as u64;
        let mut done = 0;
        for (addr, n) in frame_ranges(segs, skip, len) {
            if !self.copy_from(at, src, addr, n) {
                return false;
            }
            done += n;
            at += n as u64;
        }
        done == len
    }

    /// Copies bytes `off..off + buf.len()` of the frame held in `segs` into `buf`. False if
    /// the segments hold fewer bytes, or one is not guest memory.
    pub fn read_frame(&mut self, segs: &[Seg], off: usize, buf: &mut [u8]) -> bool {
        let mut done = 0;
        for (addr, n) in frame_ranges(segs, off, buf.len()) {
            if !self.read(addr, &mut buf[done..done + n]) {
                return false;
            }
            done += n;
        }
        done == buf.len()
    }

    /// Adds bytes `off..off + len` of the frame held in `segs` to `sum`, reading them where
    /// they are. False if the segments hold fewer bytes, or one is not guest memory.
    pub fn checksum_frame(
        &mut self,
        segs: &[Seg],
        off: usize,
        len: usize,
        sum: &mut vringswitch_wire::Checksum,
    ) -> bool {
        let mut done = 0;
        for (mut addr, mut want) in frame_ranges(segs, off, len) {
            done += want;
            // Each step takes at least one byte: bounded by the range's length.
            while want > 0 {
                let Some((p, n)) = self.piece(addr, want) else {
                    return false;
                };
                // SAFETY: `p` is valid for reads of `n` bytes of guest memory (piece); the
                // guest may change them meanwhile, which only changes the sum.
                unsafe { sum.add_raw(p, n) };
                (addr, want) = (addr + n as u64, want - n);
            }
        }
        done == len
    }

    /// Copies `len` bytes from `src_addr` in `src`'s VM to `dst_addr` in this view's VM: the
    /// switch's one copy, memory to memory, a memmove per piece that lies in one region on
    /// both sides. Fails, having copied a prefix, if either range is not all guest memory.
    #[inline]
    pub fn copy_from(
        &mut self,
        mut dst_addr: u64,
        src: &mut MemView<'_>,
        mut src_addr: u64,
        mut len: usize,
    ) -> bool {
        // Each step copies at least one byte: bounded by `len`.
        while len > 0 {
            let Some((s, n)) = src.piece(src_addr, len) else {
                return false;
            };
            let Some((d, n)) = self.piece(dst_addr, n) else {
                return false;
            };
            // SAFETY: `s` is valid for reads of at least `n` bytes and `d` for writes of `n`
            // bytes (piece, each within its own VM's region). `copy` (memmove) stays correct
            // even if a frontend mapped the same pages into two ports.
            unsafe { std::ptr::copy(s, d, n) };
            len -= n;
            src_addr += n as u64;
            dst_addr += n as u64;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn frame_ranges_skip_and_cut_segments_and_stop_at_their_end() {
        let segs = [
            Seg {
                addr: 0x100,
                len: 10,
            },
            Seg {
                addr: 0x200,
                len: 5,
            },
            Seg {
                addr: 0x300,
                len: 20,
            },
        ];
        let got: Vec<_> = frame_ranges(&segs, 12, 10).collect();
        assert_eq!(got, [(0x202, 3), (0x300, 7)]);
        let got: Vec<_> = frame_ranges(&segs, 0, 100).collect();
        assert_eq!(got, [(0x100, 10), (0x200, 5), (0x300, 20)], "all there is");
        assert_eq!(frame_ranges(&segs, 35, 1).count(), 0, "past the end");
        assert_eq!(frame_ranges(&segs, 3, 0).count(), 0);
        assert_eq!(frame_ranges(&segs, 10, 5).collect::<Vec<_>>(), [(0x200, 5)]);
    }

    #[test]
    fn write_to_sends_the_prefix_then_the_segments_across_regions_and_refuses_holes() {
        use crate::frame::Seg;
        use std::io::Read;
        use std::os::fd::AsFd;
        let m = mem();
        let data: Vec<u8> = (0..0x2000u32).map(|i| i as u8).collect();
        m.write_slice(&data, GuestAddress(0x2000)).unwrap();
        let mut v = MemView::new(&m);
        let (mut rd, wr) = std::os::unix::net::UnixStream::pair().unwrap();
        // 0x2F00..0x3100 crosses from the first region into the second.
        let segs = [
            Seg {
                addr: 0x2F00,
                len: 0x200,
            },
            Seg {
                addr: 0x2000,
                len: 8,
            },
        ];
        let n = v
            .write_to(wr.as_fd(), &[b"H", b"DR"], &segs, 2, 0x200 - 2 + 4)
            .unwrap();
        assert_eq!(n, 3 + 0x1FE + 4);
        let mut got = vec![0u8; n];
        rd.read_exact(&mut got).unwrap();
        assert_eq!(&got[..3], b"HDR");
        assert_eq!(&got[3..3 + 0x1FE], &data[0xF02..0x1100]);
        assert_eq!(
            &got[3 + 0x1FE..],
            &data[..4],
            "len stops the second segment"
        );
        // A segment in the hole is refused before anything is written.
        let hole = [Seg {
            addr: 0x5000,
            len: 16,
        }];
        assert!(v.write_to(wr.as_fd(), &[b""], &hole, 0, 16).is_err());
    }

    #[test]
    fn gather_from_writes_the_prefix_then_the_segments_and_refuses_what_is_not_memory() {
        use crate::frame::Seg;
        let src_mem = mem();
        let data: Vec<u8> = (0..0x2000u32).map(|i| (i * 7) as u8).collect();
        src_mem.write_slice(&data, GuestAddress(0x2000)).unwrap();
        let dst_mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap();
        let (mut src, mut dst) = (MemView::new(&src_mem), MemView::new(&dst_mem));
        // The first segment crosses from one source region into the next.
        let segs = [
            Seg {
                addr: 0x2F00,
                len: 0x200,
            },
            Seg {
                addr: 0x2000,
                len: 8,
            },
        ];
        assert!(dst.gather_from(0x100, &mut src, b"TAG!", &segs, 2, 0x1FE + 4));
        let mut got = vec![0u8; 4 + 0x1FE + 5];
        dst_mem.read_slice(&mut got, GuestAddress(0x100)).unwrap();
        assert_eq!(&got[..4], b"TAG!");
        assert_eq!(&got[4..4 + 0x1FE], &data[0xF02..0x1100]);
        assert_eq!(&got[4 + 0x1FE..4 + 0x1FE + 4], &data[..4]);
        assert_eq!(got[4 + 0x1FE + 4], 0, "len stops the copy");
        // More than the segments hold, a source in a hole, a destination past the end.
        assert!(!dst.gather_from(0, &mut src, b"", &segs, 0, 0x209));
        let hole = [Seg {
            addr: 0x5000,
            len: 16,
        }];
        assert!(!dst.gather_from(0, &mut src, b"", &hole, 0, 16));
        assert!(!dst.gather_from(0x1FF8, &mut src, b"", &segs, 0, 16));
        assert!(!dst.gather_from(0x1FFE, &mut src, b"TAG!", &segs, 0, 0));
    }

    /// Two adjacent regions [0x1000, 0x3000) and [0x3000, 0x4000), then a hole, then
    /// [0x10000, 0x11000).
    fn mem() -> FrameMem {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0x1000), 0x2000),
            (GuestAddress(0x3000), 0x1000),
            (GuestAddress(0x10000), 0x1000),
        ])
        .unwrap()
    }

    #[test]
    fn covers_follows_region_bounds_exactly() {
        let m = mem();
        let mut v = MemView::new(&m);
        assert!(v.covers(0x1000, 0x3000), "two adjacent regions");
        assert!(v.covers(0x3fff, 1));
        assert!(!v.covers(0x3fff, 2), "runs into the hole");
        assert!(!v.covers(0xfff, 1), "below the first region");
        assert!(!v.covers(0xfff, 2));
        assert!(v.covers(0x10000, 0x1000));
        assert!(!v.covers(0x10000, 0x1001));
        assert!(!v.covers(u64::MAX, 1));
        assert!(!v.covers(u64::MAX - 1, 5));
        assert!(v.covers(0x5000, 0), "an empty range is trivially covered");
    }

    #[test]
    fn contiguous_needs_one_region() {
        let m = mem();
        let mut v = MemView::new(&m);
        assert!(v.contiguous(0x1000, 0x2000).is_some());
        assert!(v.contiguous(0x2ff0, 0x20).is_none(), "spans two regions");
        assert!(v.contiguous(0x3000, 0x1001).is_none());
        assert!(v.contiguous(0x3000, 0).is_none());
        assert!(v.contiguous(0x9000, 1).is_none());
    }

    #[test]
    fn read_and_write_span_adjacent_regions_and_stop_at_holes() {
        let m = mem();
        let mut v = MemView::new(&m);
        let data: Vec<u8> = (0..64).collect();
        assert!(v.write(0x2fe0, &data));
        let mut back = [0u8; 64];
        m.read_slice(&mut back, GuestAddress(0x2fe0)).unwrap();
        assert_eq!(back[..], data[..]);
        let mut again = [0u8; 64];
        assert!(v.read(0x2fe0, &mut again));
        assert_eq!(again, back);
        // Into the hole after 0x4000: fails and writes nothing past the region.
        assert!(!v.write(0x3ff0, &data));
        assert!(!v.read(0x3ff0, &mut again));
        assert!(!v.read(0x20000, &mut again[..1]));
    }

    #[test]
    fn copy_between_views_splits_at_region_bounds_on_both_sides() {
        let src_mem = mem();
        let dst_mem = mem();
        let data: Vec<u8> = (0..200u8).collect();
        src_mem.write_slice(&data, GuestAddress(0x2f80)).unwrap();
        let mut src = MemView::new(&src_mem);
        let mut dst = MemView::new(&dst_mem);
        assert!(dst.copy_from(0x2fc0, &mut src, 0x2f80, 200));
        let mut back = vec![0u8; 200];
        dst_mem.read_slice(&mut back, GuestAddress(0x2fc0)).unwrap();
        assert_eq!(back, data);
        // The source runs into a hole: fails.
        assert!(!dst.copy_from(0x1000, &mut src, 0x3f80, 0x100));
        // The destination runs into a hole: fails without writing past the region.
        dst_mem
            .write_slice(&[0xAA; 16], GuestAddress(0x10ff0))
            .unwrap();
        assert!(!dst.copy_from(0x10ff8, &mut src, 0x1000, 16));
        let mut tail = [0u8; 8];
        dst_mem
            .read_slice(&mut tail, GuestAddress(0x10ff0))
            .unwrap();
        assert_eq!(tail, [0xAA; 8], "bytes before the copy are untouched");
    }

    /// `move_bytes` against memmove, for every length up to past the inline sizes, every
    /// small offset between overlapping ranges in both directions, and separate buffers.
    #[test]
    fn move_bytes_is_memmove_at_every_length_and_overlap() {
        let pattern: Vec<u8> = (0..200u8)
            .map(|i| i.wrapping_mul(7).wrapping_add(3))
            .collect();
        for n in 0..=80usize {
            for (from, to) in [
                (0usize, 0usize),
                (0, 1),
                (1, 0),
                (0, 5),
                (5, 0),
                (3, 40),
                (40, 3),
            ] {
                let mut want = pattern.clone();
                want.copy_within(from..from + n, to);
                let mut got = pattern.clone();
                let p = got.as_mut_ptr();
                // SAFETY: `from + n` and `to + n` are at most 120, within the 200 bytes.
                unsafe { move_bytes(p.add(from), p.add(to), n) };
                assert_eq!(got, want, "n {n}, from {from} to {to}");
            }
            let src = pattern.clone();
            let mut got = vec![0xEEu8; 100];
            // SAFETY: both buffers hold at least `n` (80 or fewer) bytes past offset 10.
            unsafe { move_bytes(src.as_ptr().add(10), got.as_mut_ptr().add(10), n) };
            assert_eq!(got[10..10 + n], src[10..10 + n], "n {n}");
            assert!(
                got[..10].iter().chain(&got[10 + n..]).all(|&b| b == 0xEE),
                "n {n}"
            );
        }
    }

    #[test]
    fn spans_stay_in_one_region_and_check_every_access() {
        let src_mem = mem();
        let dst_mem = mem();
        let data: Vec<u8> = (0..64u8).collect();
        src_mem.write_slice(&data, GuestAddress(0x1100)).unwrap();
        let mut src = MemView::new(&src_mem);
        let mut dst = MemView::new(&dst_mem);
        assert!(dst.span(0x2ff0, 0x20).is_none(), "across two regions");
        assert!(dst.span(0x3ff0, 0x20).is_none(), "into the hole");
        assert!(dst.span(0x1000, 0).is_none());
        let from = src.span(0x1100, 64).unwrap();
        let to = dst.span(0x10f00, 0x100).unwrap();
        assert_eq!((from.len, to.len), (64, 0x100));
        assert!(to.write(0, &[7; 4]));
        assert!(to.copy_from(4, &from, 0, 64));
        let mut back = [0u8; 68];
        dst_mem
            .read_slice(&mut back, GuestAddress(0x10f00))
            .unwrap();
        assert_eq!(back[..4], [7; 4]);
        assert_eq!(back[4..], data[..]);
        // Out of bounds on either side: refused, nothing written past the span.
        dst_mem
            .write_slice(&[0xAA; 16], GuestAddress(0x10ff0))
            .unwrap();
        let edge = dst.span(0x10ff0, 8).unwrap();
        assert!(!edge.write(4, &[1; 5]));
        assert!(!edge.write(9, &[]));
        assert!(edge.write(8, &[]));
        assert!(!edge.copy_from(0, &from, 0, 9));
        assert!(!edge.copy_from(1, &from, 0, 8));
        assert!(!edge.copy_from(0, &from, 60, 5));
        assert!(!edge.copy_from(0, &from, 65, 0));
        let mut four = [0u8; 4];
        assert!(from.read(60, &mut four));
        assert_eq!(four, [60, 61, 62, 63]);
        assert!(!from.read(61, &mut four));
        assert!(!from.read(65, &mut []));
        assert!(edge.copy_from(0, &from, 56, 8));
        let mut tail = [0u8; 16];
        dst_mem
            .read_slice(&mut tail, GuestAddress(0x10ff0))
            .unwrap();
        assert_eq!(tail[..8], data[56..]);
        assert_eq!(tail[8..], [0xAA; 8], "bytes after the span are untouched");
    }

    /// Equal bytes are not written: the page is made read-only first, so a write would
    /// fault and end the test. Different bytes are written, and bounds hold either way.
    #[test]
    #[allow(unsafe_code)]
    fn write_unless_equal_leaves_equal_bytes_untouched() {
        let m = mem();
        let mut v = MemView::new(&m);
        let hdr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        m.write_slice(&hdr, GuestAddress(0x10ff0)).unwrap();
        let span = v.span(0x10000, 0x1000).unwrap();
        let page = span.ptr.as_ptr();
        let protect = |prot| {
            // SAFETY: `page` is the start of a 0x1000-byte anonymous mapping that `m` owns
            // (the region at 0x10000); only its protection changes, and it is restored.
            unsafe { libc::mprotect(page.cast(), 0x1000, prot) }
        };
        assert_eq!(protect(libc::PROT_READ), 0);
        let untouched = span.write_unless_equal(0xff0, &hdr);
        assert_eq!(protect(libc::PROT_READ | libc::PROT_WRITE), 0);
        assert!(untouched);
        // One byte differs: the whole range is written.
        let mut other = hdr;
        other[0] = 1;
        other[10] = 2;
        assert!(span.write_unless_equal(0xff0, &other));
        let mut back = [0u8; 12];
        m.read_slice(&mut back, GuestAddress(0x10ff0)).unwrap();
        assert_eq!(back, other);
        // Past the span's end: refused, nothing written.
        assert!(!span.write_unless_equal(0xff8, &hdr));
        let mut tail = [0u8; 8];
        m.read_slice(&mut tail, GuestAddress(0x10ff8)).unwrap();
        assert_eq!(
            tail,
            other[8..12]
                .iter()
                .chain(&[0; 4])
                .copied()
                .collect::<Vec<_>>()[..]
        );
    }

    #[test]
    fn the_cache_is_refreshed_when_another_region_is_hit() {
        let m = mem();
        let mut v = MemView::new(&m);
        m.write_slice(&[1], GuestAddress(0x1000)).unwrap();
        m.write_slice(&[2], GuestAddress(0x10000)).unwrap();
        let mut b = [0u8; 1];
        for _ in 0..3 {
            assert!(v.read(0x1000, &mut b));
            assert_eq!(b, [1]);
            assert!(v.read(0x10000, &mut b));
            assert_eq!(b, [2]);
        }
    }

    #[test]
    fn the_cached_region_ends_exactly_at_its_bounds() {
        let m = mem();
        let mut v = MemView::new(&m);
        m.write_slice(&[7], GuestAddress(0x10fff)).unwrap();
        m.write_slice(&[9], GuestAddress(0x3fff)).unwrap();
        let mut b = [0u8; 1];
        assert!(v.read(0x10000, &mut b), "caches [0x10000, 0x11000)");
        assert!(
            !v.read(0xffff, &mut b),
            "one below the cached region: a hole"
        );
        assert!(v.read(0x10fff, &mut b));
        assert_eq!(b, [7]);
        assert!(
            !v.read(0x11000, &mut b),
            "one past the cached region: a hole"
        );
        assert!(
            v.read(0x3fff, &mut b),
            "below the cached region: another region"
        );
        assert_eq!(b, [9]);
        assert!(!v.read(u64::MAX, &mut b));
    }
}
