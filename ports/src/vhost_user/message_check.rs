//! Checks every vhost-user message from a frontend before the protocol handler sees it.
//!
//! The vhost crate checks much on its own (vring indexes, ring sizes, message sizes per
//! request). What it cannot check is whether the memory a frontend hands over really is
//! there: it maps `memory_size` bytes of each region's file from `mmap_offset` without
//! looking at the file's size, and a region larger than its file maps fine and faults
//! (SIGBUS, killing the whole switch) the first time a ring or buffer points past the end
//! of the file. This module refuses such tables, along with headers, file-descriptor counts
//! and regions that no correct frontend sends. A refused message ends the connection and is
//! counted as a protocol error on the port.

use std::fmt;
use std::fs::File;
use std::os::fd::OwnedFd;

/// Bytes of a message header.
pub const HDR_LEN: usize = 12;
/// Largest message body accepted (the vhost crate's own limit is lower).
pub const MAX_BODY: usize = 4096;
/// Most regions in one SET_MEM_TABLE (the vhost-user limit).
pub const MAX_REGIONS: usize = 8;

pub const SET_FEATURES: u32 = 2;
pub const RESET_OWNER: u32 = 4;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_LOG_BASE: u32 = 6;
pub const SET_LOG_FD: u32 = 7;
pub const SET_VRING_NUM: u32 = 8;
pub const SET_VRING_ADDR: u32 = 9;
pub const GET_VRING_BASE: u32 = 11;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_CALL: u32 = 13;
pub const SET_VRING_ERR: u32 = 14;
pub const SET_VRING_ENABLE: u32 = 18;
pub const SEND_RARP: u32 = 19;
pub const SET_BACKEND_REQ_FD: u32 = 21;
pub const SET_INFLIGHT_FD: u32 = 32;
pub const RESET_DEVICE: u32 = 34;
pub const ADD_MEM_REG: u32 = 37;
pub const REM_MEM_REG: u32 = 38;
pub const SET_DEVICE_STATE_FD: u32 = 42;

pub const FLAG_VERSION_MASK: u32 = 0x3;
pub const FLAG_VERSION_1: u32 = 0x1;
pub const FLAG_REPLY: u32 = 0x4;
pub const FLAG_NEED_REPLY: u32 = 0x8;

/// Memory slots: what vhost-user-backend answers to GET_MAX_MEM_SLOTS. The library does
/// not hold ADD_MEM_REG to it; [`super::mem_regions::MemRegions`] does.
pub const MAX_MEM_SLOTS: usize = 509;

/// Bit of a vring-fd message's payload meaning "no file descriptor follows".
const VRING_NOFD: u64 = 0x100;

/// A message header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub request: u32,
    pub flags: u32,
    pub size: u32,
}

impl Header {
    pub fn parse(raw: &[u8; HDR_LEN]) -> Header {
        let word = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        Header {
            request: word(0),
            flags: word(4),
            size: word(8),
        }
    }

    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut h = [0u8; HDR_LEN];
        h[0..4].copy_from_slice(&self.request.to_le_bytes());
        h[4..8].copy_from_slice(&self.flags.to_le_bytes());
        h[8..12].copy_from_slice(&self.size.to_le_bytes());
        h
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Version other than 1, the reply bit on a request, or unknown flag bits.
    BadFlags { request: u32, flags: u32 },
    /// Body longer than [`MAX_BODY`].
    TooLong { request: u32, size: u32 },
    /// File descriptors on a message that takes none, or the wrong number of them.
    WrongFdCount {
        request: u32,
        expected: usize,
        got: usize,
    },
    /// A memory table whose size does not match its region count, or with no region or
    /// more than [`MAX_REGIONS`].
    BadTable { request: u32, why: &'static str },
    /// A region that cannot be mapped safely.
    BadRegion { index: usize, why: String },
    /// ADD_MEM_REG with every memory slot taken.
    NoFreeSlot,
    /// The frontend kept the connection waiting: no first message, or half of one, for
    /// `seconds`.
    Stalled { what: &'static str, seconds: u64 },
    /// ADD_MEM_REG of a region that overlaps one already mapped without being an exact copy
    /// of it.
    Overlap { gpa: u64, size: u64, with: u64 },
    /// A ring size or ring addresses the virtio spec does not allow.
    BadVring { request: u32, why: String },
    /// A dirty log that cannot be used: not in its file, too small for guest memory, or
    /// without a file.
    BadLog(String),
    /// SEND_RARP for an address no port can have (multicast or all zeros).
    BadAnnounce { mac: [u8; 6] },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::BadFlags { request, flags } => {
                write!(f, "request {request} with bad header flags {flags:#x}")
            }
            Refused::TooLong { request, size } => {
                write!(
                    f,
                    "request {request} with a {size}-byte body (most {MAX_BODY})"
                )
            }
            Refused::WrongFdCount {
                request,
                expected,
                got,
            } => write!(
                f,
                "request {request} carried {got} file descriptors, expected {expected}"
            ),
            Refused::BadTable { request, why } => {
                write!(f, "request {request}: bad memory table: {why}")
            }
            Refused::BadRegion { index, why } => write!(f, "memory region {index}: {why}"),
            Refused::BadVring { request, why } => write!(f, "request {request}: {why}"),
            Refused::BadLog(why) => write!(f, "dirty log refused: {why}"),
            Refused::BadAnnounce { mac } => write!(
                f,
                "SEND_RARP for {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, which is not a \
                 unicast address",
                mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
            ),
            Refused::NoFreeSlot => {
                write!(f, "ADD_MEM_REG beyond the {MAX_MEM_SLOTS} memory slots")
            }
            Refused::Stalled { what, seconds } => write!(
                f,
                "the frontend sent {what} for {seconds} s; the port is given to the next one"
            ),
            Refused::Overlap { gpa, size, with } => write!(
                f,
                "ADD_MEM_REG of guest addresses {gpa:#x}+{size:#x} overlaps the region at \
                 {with:#x} without being the same region"
            ),
        }
    }
}

impl std::error::Error for Refused {}

/// Checks a header on its own, before the body is read.
pub fn check_header(h: &Header) -> Result<(), Refused> {
    let known = FLAG_VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY;
    if h.flags & FLAG_VERSION_MASK != FLAG_VERSION_1
        || h.flags & FLAG_REPLY != 0
        || h.flags & !known != 0
    {
        return Err(Refused::BadFlags {
            request: h.request,
            flags: h.flags,
        });
    }
    if h.size as usize > MAX_BODY {
        return Err(Refused::TooLong {
            request: h.request,
            size: h.size,
        });
    }
    Ok(())
}

/// Checks a whole message: its file descriptors and, for memory tables, every region
/// against the file it maps.
pub fn check_message(h: &Header, body: &[u8], fds: &[OwnedFd]) -> Result<(), Refused> {
    let wrong_count = |expected: usize| Refused::WrongFdCount {
        request: h.request,
        expected,
        got: fds.len(),
    };
    match h.request {
        SET_MEM_TABLE => check_mem_table(body, fds),
        SET_VRING_NUM | SET_VRING_ADDR if !fds.is_empty() => Err(wrong_count(0)),
        SET_VRING_NUM => check_vring_num(body),
        SET_VRING_ADDR => check_vring_addr(body),
        ADD_MEM_REG => {
            if fds.len() != 1 {
                return Err(wrong_count(1));
            }
            if body.len() != 8 + REGION_LEN {
                return Err(Refused::BadTable {
                    request: h.request,
                    why: "body is not one region",
                });
            }
            let region = Region::parse(&body[8..]);
            region
                .check(&fds[0])
                .map_err(|why| Refused::BadRegion { index: 0, why })
        }
        SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => {
            // The payload's NOFD bit says whether an fd follows.
            let nofd = body.len() == 8
                && u64::from_le_bytes(body.try_into().unwrap_or([0; 8])) & VRING_NOFD != 0;
            let expected = usize::from(!nofd);
            if fds.len() == expected {
                Ok(())
            } else {
                Err(wrong_count(expected))
            }
        }
        // REM_MEM_REG: the spec lets an old frontend attach the region's fd, to be closed.
        SET_LOG_BASE | SET_LOG_FD | SET_BACKEND_REQ_FD | SET_INFLIGHT_FD | SET_DEVICE_STATE_FD
        | REM_MEM_REG => {
            if fds.len() <= 1 {
                Ok(())
            } else {
                Err(wrong_count(1))
            }
        }
        _ if fds.is_empty() => Ok(()),
        _ => Err(wrong_count(0)),
    }
}

/// Largest ring size of a split virtqueue.
const MAX_RING_SIZE: u32 = 32768;
/// The only flag of SET_VRING_ADDR: log used-ring writes.
pub const VRING_ADDR_F_LOG: u32 = 0x1;

/// A split ring's size is a power of two from 1 to 32768 (virtio 1.2, 2.7). The library only
/// checks the bounds and quietly keeps its old size otherwise, so the frontend and the switch
/// would disagree on where the rings end.
fn check_vring_num(body: &[u8]) -> Result<(), Refused> {
    // A body of the wrong size is the library's to refuse.
    let Some(num) = body.get(4..8) else {
        return Ok(());
    };
    let num = u32::from_le_bytes([num[0], num[1], num[2], num[3]]);
    if num == 0 || num > MAX_RING_SIZE || !num.is_power_of_two() {
        return Err(Refused::BadVring {
            request: SET_VRING_NUM,
            why: format!("ring size {num} is not a power of two from 1 to {MAX_RING_SIZE}"),
        });
    }
    Ok(())
}

/// Ring addresses aligned as virtio requires (descriptors 16, avail 2, used 4) and no
/// unknown flag. The library would otherwise keep the old, possibly zero, addresses.
fn check_vring_addr(body: &[u8]) -> Result<(), Refused> {
    if body.len() < 40 {
        return Ok(());
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let flags = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
    let bad = |why: String| {
        Err(Refused::BadVring {
            request: SET_VRING_ADDR,
            why,
        })
    };
    if flags & !VRING_ADDR_F_LOG != 0 {
        return bad(format!("unknown ring address flags {flags:#x}"));
    }
    for (what, addr, align) in [
        ("descriptor table", word(8), 16),
        ("used ring", word(16), 4),
        ("available ring", word(24), 2),
    ] {
        if addr % align != 0 {
            return bad(format!("{what} at {addr:#x} is not {align}-byte aligned"));
        }
    }
    // The used ring of the largest queue the spec allows, logged at the guest address the
    // frontend gives: the switch marks the log from there on, and no address of it may
    // pass the end of the address space.
    let log = word(32);
    if flags & VRING_ADDR_F_LOG != 0 && log.checked_add(USED_RING_MAX_BYTES).is_none() {
        return bad(format!(
            "the used ring's log address {log:#x} leaves no room for a used ring"
        ));
    }
    Ok(())
}

/// Bytes of the used ring of a 32,768-entry queue, the largest the virtio spec allows:
/// flags and index, the entries, and `avail_event`.
const USED_RING_MAX_BYTES: u64 = 4 + 8 * 32_768 + 2;

fn check_mem_table(body: &[u8], fds: &[OwnedFd]) -> Result<(), Refused> {
    let bad = |why| Refused::BadTable {
        request: SET_MEM_TABLE,
        why,
    };
    if body.len() < 8 {
        return Err(bad("shorter than its header"));
    }
    let n = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
    if n == 0 {
        return Err(bad("no region"));
    }
    if n > MAX_REGIONS {
        return Err(bad("more than 8 regions"));
    }
    if body.len() != 8 + n * REGION_LEN {
        return Err(bad("size does not match the region count"));
    }
    if fds.len() != n {
        return Err(Refused::WrongFdCount {
            request: SET_MEM_TABLE,
            expected: n,
            got: fds.len(),
        });
    }
    let regions: Vec<Region> = body[8..]
        .chunks_exact(REGION_LEN)
        .map(Region::parse)
        .collect();
    for (index, (r, fd)) in regions.iter().zip(fds).enumerate() {
        r.check(fd)
            .map_err(|why| Refused::BadRegion { index, why })?;
    }
    for (i, a) in regions.iter().enumerate() {
        for (j, b) in regions.iter().enumerate().skip(i + 1) {
            // Both ends were checked not to overflow.
            if a.gpa < b.gpa + b.size && b.gpa < a.gpa + a.size {
                return Err(Refused::BadRegion {
                    index: j,
                    why: format!("guest addresses overlap region {i}'s"),
                });
            }
        }
    }
    Ok(())
}

/// One memory region as a frontend describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    pub gpa: u64,
    pub size: u64,
    pub uaddr: u64,
    pub offset: u64,
}

/// Bytes of one memory region description.
pub(crate) const REGION_LEN: usize = 32;

impl Region {
    /// Decodes the first [`REGION_LEN`] bytes of `raw`, which must hold that many.
    pub(crate) fn parse(raw: &[u8]) -> Region {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Region {
            gpa: word(0),
            size: word(8),
            uaddr: word(16),
            offset: word(24),
        }
    }

    /// The region's own fields, then the file it maps: a regular file (memfd, tmpfs,
    /// hugetlbfs) at least `offset + size` bytes long.
    fn check(&self, fd: &OwnedFd) -> Result<(), String> {
        self.check_fields()?;
        let end = self.offset + self.size;
        let meta = fd
            .try_clone()
            .map(File::from)
            .and_then(|f| f.metadata())
            .map_err(|e| format!("cannot inspect its file: {e}"))?;
        if !meta.file_type().is_file() {
            return Err("its file descriptor is not a regular file or memfd".into());
        }
        if meta.len() < end {
            return Err(format!(
                "maps bytes {}..{end} of a file of {} bytes",
                self.offset,
                meta.len()
            ));
        }
        Ok(())
    }

    fn check_fields(&self) -> Result<(), String> {
        if self.size == 0 {
            return Err("size 0".into());
        }
        if usize::try_from(self.size).is_err() {
            return Err(format!(
                "size {:#x} does not fit the address space",
                self.size
            ));
        }
        for (what, start) in [
            ("guest address", self.gpa),
            ("frontend address", self.uaddr),
            ("file offset", self.offset),
        ] {
            if start.checked_add(self.size).is_none() {
                return Err(format!(
                    "{what} {start:#x} + size {:#x} overflows",
                    self.size
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(request: u32, flags: u32, size: u32) -> Header {
        Header {
            request,
            flags,
            size,
        }
    }

    fn file_of(len: u64) -> OwnedFd {
        super::super::unlinked_file(len).into()
    }

    fn region_bytes(gpa: u64, size: u64, uaddr: u64, offset: u64) -> Vec<u8> {
        [gpa, size, uaddr, offset]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    fn table(regions: &[(u64, u64, u64, u64)]) -> Vec<u8> {
        let mut b = (regions.len() as u32).to_le_bytes().to_vec();
        b.extend_from_slice(&[0; 4]);
        for &(g, s, u, o) in regions {
            b.extend(region_bytes(g, s, u, o));
        }
        b
    }

    #[test]
    fn headers_need_version_1_no_reply_bit_no_unknown_flags_and_a_bounded_size() {
        assert_eq!(check_header(&hdr(1, 1, 0)), Ok(()));
        assert_eq!(check_header(&hdr(1, 1 | FLAG_NEED_REPLY, 8)), Ok(()));
        for flags in [0, 2, 3, 1 | FLAG_REPLY, 1 | 0x10, 1 | 0x8000_0000] {
            assert!(
                matches!(
                    check_header(&hdr(1, flags, 0)),
                    Err(Refused::BadFlags { .. })
                ),
                "{flags:#x}"
            );
        }
        assert_eq!(check_header(&hdr(1, 1, MAX_BODY as u32)), Ok(()));
        assert!(matches!(
            check_header(&hdr(1, 1, MAX_BODY as u32 + 1)),
            Err(Refused::TooLong { .. })
        ));
        assert!(matches!(
            check_header(&hdr(1, 1, u32::MAX)),
            Err(Refused::TooLong { .. })
        ));
    }

    #[test]
    fn fds_only_where_the_request_takes_them() {
        let fd = || file_of(4096);
        assert_eq!(check_message(&hdr(1, 1, 0), &[], &[]), Ok(()));
        assert!(matches!(
            check_message(&hdr(1, 1, 0), &[], &[fd()]),
            Err(Refused::WrongFdCount { expected: 0, .. })
        ));
        let kick = 0u64.to_le_bytes();
        assert_eq!(
            check_message(&hdr(SET_VRING_KICK, 1, 8), &kick, &[fd()]),
            Ok(())
        );
        assert!(check_message(&hdr(SET_VRING_KICK, 1, 8), &kick, &[]).is_err());
        assert!(check_message(&hdr(SET_VRING_CALL, 1, 8), &kick, &[fd(), fd()]).is_err());
        let nofd = (VRING_NOFD | 1).to_le_bytes();
        assert_eq!(
            check_message(&hdr(SET_VRING_CALL, 1, 8), &nofd, &[]),
            Ok(())
        );
        assert!(check_message(&hdr(SET_VRING_CALL, 1, 8), &nofd, &[fd()]).is_err());
        assert_eq!(check_message(&hdr(SET_LOG_FD, 1, 0), &[], &[fd()]), Ok(()));
        assert!(check_message(&hdr(SET_LOG_FD, 1, 0), &[], &[fd(), fd()]).is_err());
    }

    #[test]
    fn a_table_of_regions_inside_their_files_passes() {
        let body = table(&[
            (0, 8192, 0x7000_0000, 0),
            (0x10_0000, 4096, 0x8000_0000, 4096),
        ]);
        let fds = [file_of(8192), file_of(8192)];
        assert_eq!(
            check_message(&hdr(SET_MEM_TABLE, 1, body.len() as u32), &body, &fds),
            Ok(())
        );
    }

    #[test]
    fn every_malformed_table_is_refused() {
        let one = |r: (u64, u64, u64, u64), file_len: u64| {
            let body = table(&[r]);
            check_message(
                &hdr(SET_MEM_TABLE, 1, body.len() as u32),
                &body,
                &[file_of(file_len)],
            )
        };
        // Bigger than the file, at any offset.
        assert!(matches!(
            one((0, 8192, 0, 0), 4096),
            Err(Refused::BadRegion { index: 0, .. })
        ));
        assert!(one((0, 4096, 0, 4096), 4096).is_err());
        assert!(one((0, 4096, 0, 4095), 8192).is_ok());
        // Size 0, and every overflow.
        assert!(one((0, 0, 0, 0), 4096).is_err());
        assert!(one((u64::MAX - 10, 4096, 0, 0), 4096).is_err());
        assert!(one((0, 4096, u64::MAX - 10, 0), 4096).is_err());
        assert!(one((0, 4096, 0, u64::MAX - 10), 4096).is_err());
        assert!(one((0, u64::MAX, 0, 0), 4096).is_err());
        // Counts.
        let empty = table(&[]);
        assert!(check_message(&hdr(SET_MEM_TABLE, 1, 8), &empty, &[]).is_err());
        let nine: Vec<_> = (0..9).map(|i| (i << 20, 4096, 0, 0)).collect();
        let body = table(&nine);
        let fds: Vec<_> = (0..9).map(|_| file_of(4096)).collect();
        assert!(check_message(&hdr(SET_MEM_TABLE, 1, 0), &body, &fds).is_err());
        let body = table(&[(0, 4096, 0, 0)]);
        assert!(matches!(
            check_message(&hdr(SET_MEM_TABLE, 1, 0), &body, &[]),
            Err(Refused::WrongFdCount { expected: 1, .. })
        ));
        assert!(check_message(&hdr(SET_MEM_TABLE, 1, 0), &body[..20], &[file_of(4096)]).is_err());
        assert!(check_message(&hdr(SET_MEM_TABLE, 1, 0), &body[..4], &[]).is_err());
        // Overlapping guest ranges.
        let body = table(&[(0, 8192, 0, 0), (4096, 4096, 0x10000, 0)]);
        assert!(matches!(
            check_message(
                &hdr(SET_MEM_TABLE, 1, 0),
                &body,
                &[file_of(8192), file_of(8192)]
            ),
            Err(Refused::BadRegion { index: 1, .. })
        ));
        // Not a regular file.
        let null: OwnedFd = File::open("/dev/null").unwrap().into();
        let body = table(&[(0, 4096, 0, 0)]);
        assert!(check_message(&hdr(SET_MEM_TABLE, 1, 0), &body, &[null]).is_err());
    }

    #[test]
    fn ring_sizes_are_powers_of_two_up_to_32768() {
        let num = |n: u32| {
            let mut b = 0u32.to_le_bytes().to_vec();
            b.extend_from_slice(&n.to_le_bytes());
            check_message(&hdr(SET_VRING_NUM, 1, 8), &b, &[])
        };
        for n in [1, 2, 256, 1024, 32768] {
            assert_eq!(num(n), Ok(()), "{n}");
        }
        for n in [0, 3, 255, 257, 65536, u32::MAX] {
            assert!(matches!(num(n), Err(Refused::BadVring { .. })), "{n}");
        }
    }

    #[test]
    fn ring_addresses_are_aligned_with_known_flags() {
        let addr = |flags: u32, desc: u64, used: u64, avail: u64| {
            let mut b = 0u32.to_le_bytes().to_vec();
            b.extend_from_slice(&flags.to_le_bytes());
            for w in [desc, used, avail, 0] {
                b.extend_from_slice(&w.to_le_bytes());
            }
            check_message(&hdr(SET_VRING_ADDR, 1, 40), &b, &[])
        };
        assert_eq!(addr(0, 0x1000, 0x2004, 0x3002), Ok(()));
        assert_eq!(addr(1, 0x1000, 0x2004, 0x3002), Ok(()));
        assert!(addr(2, 0x1000, 0x2004, 0x3002).is_err());
        assert!(addr(0, 0x1008, 0x2004, 0x3002).is_err());
        assert!(addr(0, 0x1000, 0x2002, 0x3002).is_err());
        assert!(addr(0, 0x1000, 0x2004, 0x3001).is_err());
    }

    #[test]
    fn a_used_ring_log_address_leaves_room_for_the_ring() {
        let logged_at = |flags: u32, log: u64| {
            let mut b = 0u32.to_le_bytes().to_vec();
            b.extend_from_slice(&flags.to_le_bytes());
            for w in [0x1000, 0x2000, 0x3000, log] {
                b.extend_from_slice(&w.to_le_bytes());
            }
            check_message(&hdr(SET_VRING_ADDR, 1, 40), &b, &[])
        };
        let last = u64::MAX - USED_RING_MAX_BYTES;
        assert_eq!(logged_at(VRING_ADDR_F_LOG, last), Ok(()));
        for log in [last + 1, u64::MAX - 3, u64::MAX] {
            assert!(
                logged_at(VRING_ADDR_F_LOG, log)
                    .unwrap_err()
                    .to_string()
                    .contains("leaves no room"),
                "{log:#x}"
            );
        }
        // Without the log flag the address means nothing.
        assert_eq!(logged_at(0, u64::MAX), Ok(()));
    }

    #[test]
    fn add_mem_reg_takes_one_region_and_one_fd() {
        let mut body = vec![0u8; 8];
        body.extend(region_bytes(0x100_0000, 4096, 0x1000, 0));
        assert_eq!(
            check_message(&hdr(ADD_MEM_REG, 1, 40), &body, &[file_of(4096)]),
            Ok(())
        );
        assert!(check_message(&hdr(ADD_MEM_REG, 1, 40), &body, &[file_of(100)]).is_err());
        assert!(check_message(&hdr(ADD_MEM_REG, 1, 40), &body, &[]).is_err());
        assert!(check_message(&hdr(ADD_MEM_REG, 1, 40), &body[..32], &[file_of(4096)]).is_err());
    }
}
