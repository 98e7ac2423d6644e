//! The memory regions a frontend has mapped on one connection, as the relay sees them.
//!
//! QEMU before 8.0 creates one vhost device per queue pair, and each of them sends the whole
//! memory table with `ADD_MEM_REG` (and later `REM_MEM_REG`) on the same connection: the
//! second queue pair's copy is an exact duplicate of the first's. vm-memory refuses a region
//! that overlaps one already inserted, and the protocol handler then closes the connection,
//! so a multiqueue QEMU 7.2 guest could never attach. [`MemRegions`] counts the copies of each
//! region instead: the handler maps a region once, a duplicate is acknowledged by the relay,
//! and only the removal of the last copy reaches the handler. A region that overlaps another
//! without being the same (same guest and frontend addresses, size, offset and file) is
//! refused, as before.
//!
//! It also holds `ADD_MEM_REG` to [`MAX_MEM_SLOTS`], which the handler does not.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use super::message_check::{
    Header, Refused, Region, ADD_MEM_REG, MAX_MEM_SLOTS, REGION_LEN, REM_MEM_REG, SET_MEM_TABLE,
};

/// What the relay does with a message [`MemRegions::admit`] let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Forward it to the protocol handler.
    Forward,
    /// Answer it in the relay: it adds another copy of a region the handler already maps, or
    /// removes a copy while another remains. The handler's memory stays as it is.
    Absorb,
}

/// A file, by device and inode: two fds of one memfd are the same file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(fd: &OwnedFd) -> io::Result<FileId> {
        let meta = File::from(fd.try_clone()?).metadata()?;
        Ok(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

#[derive(Debug)]
struct Mapped {
    region: Region,
    /// `None` when the file could not be inspected: such a region never matches a copy.
    file: Option<FileId>,
    copies: u32,
}

impl Mapped {
    fn overlaps(&self, r: &Region) -> bool {
        // Both ends were checked not to overflow by `check_message`.
        self.region.gpa < r.gpa + r.size && r.gpa < self.region.gpa + self.region.size
    }
}

/// The regions mapped on one connection, with how many copies of each the frontend added.
#[derive(Debug, Default)]
pub struct MemRegions {
    mapped: Vec<Mapped>,
}

impl MemRegions {
    /// Tracks a message that passed [`super::message_check::check_message`] and says where
    /// it goes. Messages other than memory-table changes are always forwarded.
    pub fn admit(
        &mut self,
        h: &Header,
        body: &[u8],
        fds: &[OwnedFd],
    ) -> Result<Admission, Refused> {
        match h.request {
            SET_MEM_TABLE => {
                // check_message saw one fd per region and a body of exactly that many.
                self.mapped = body
                    .get(8..)
                    .unwrap_or_default()
                    .chunks_exact(REGION_LEN)
                    .zip(fds)
                    .map(|(raw, fd)| Mapped {
                        region: Region::parse(raw),
                        file: FileId::of(fd).ok(),
                        copies: 1,
                    })
                    .collect();
                Ok(Admission::Forward)
            }
            ADD_MEM_REG => {
                let (Some(raw), Some(fd)) = (body.get(8..8 + REGION_LEN), fds.first()) else {
                    return Ok(Admission::Forward);
                };
                self.add(Region::parse(raw), FileId::of(fd).ok())
            }
            REM_MEM_REG => {
                let Some(raw) = body.get(8..8 + REGION_LEN) else {
                    return Ok(Admission::Forward);
                };
                Ok(self.remove(&Region::parse(raw)))
            }
            _ => Ok(Admission::Forward),
        }
    }

    fn add(&mut self, region: Region, file: Option<FileId>) -> Result<Admission, Refused> {
        if let Some(m) = self.mapped.iter_mut().find(|m| m.overlaps(&region)) {
            if m.region == region && file.is_some() && m.file == file {
                m.copies = m.copies.saturating_add(1);
                return Ok(Admission::Absorb);
            }
            return Err(Refused::Overlap {
                gpa: region.gpa,
                size: region.size,
                with: m.region.gpa,
            });
        }
        if self.mapped.len() >= MAX_MEM_SLOTS {
            return Err(Refused::NoFreeSlot);
        }
        self.mapped.push(Mapped {
            region,
            file,
            copies: 1,
        });
        Ok(Admission::Forward)
    }

    /// A removal names the region by guest address, frontend address and size (the spec
    /// says the offset is to be ignored). One the handler does not have is its to refuse.
    fn remove(&mut self, region: &Region) -> Admission {
        let same = |m: &Mapped| {
            m.region.gpa == region.gpa
                && m.region.size == region.size
                && m.region.uaddr == region.uaddr
        };
        let Some(i) = self.mapped.iter().position(same) else {
            return Admission::Forward;
        };
        if self.mapped[i].copies > 1 {
            self.mapped[i].copies -= 1;
            return Admission::Absorb;
        }
        self.mapped.swap_remove(i);
        Admission::Forward
    }

    /// The end of guest memory: the highest guest address mapped, plus one (0 with no
    /// region).
    pub fn end(&self) -> u64 {
        self.mapped
            .iter()
            // Both ends were checked not to overflow by `check_message`.
            .map(|m| m.region.gpa + m.region.size)
            .max()
            .unwrap_or(0)
    }

    /// Regions the handler maps.
    pub fn len(&self) -> usize {
        self.mapped.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mapped.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(request: u32) -> Header {
        Header {
            request,
            flags: 1,
            size: 40,
        }
    }

    fn memfd(len: u64) -> OwnedFd {
        super::super::unlinked_file(len).into()
    }

    fn one(gpa: u64, size: u64, uaddr: u64, offset: u64) -> Vec<u8> {
        let mut b = vec![0u8; 8];
        for w in [gpa, size, uaddr, offset] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b
    }

    fn dup(fd: &OwnedFd) -> OwnedFd {
        fd.try_clone().unwrap()
    }

    #[test]
    fn an_exact_copy_is_absorbed_and_only_the_last_removal_is_forwarded() {
        let mut regions = MemRegions::default();
        let ram = memfd(1 << 20);
        let low = one(0, 0x8_0000, 0x7f00_0000_0000, 0);
        let high = one(0x10_0000, 0x8_0000, 0x7f00_0010_0000, 0x8_0000);
        // Queue pair 0's table, then queue pair 1's identical one, fds dup'ed as SCM_RIGHTS
        // does.
        for body in [&low, &high] {
            assert_eq!(
                regions.admit(&hdr(ADD_MEM_REG), body, &[dup(&ram)]),
                Ok(Admission::Forward)
            );
        }
        for body in [&low, &high] {
            assert_eq!(
                regions.admit(&hdr(ADD_MEM_REG), body, &[dup(&ram)]),
                Ok(Admission::Absorb)
            );
        }
        assert_eq!(regions.len(), 2);
        // The first removal leaves the region to the other copy; the second reaches the
        // handler. The offset of a removal is ignored.
        let low_removed = one(0, 0x8_0000, 0x7f00_0000_0000, 0xdead);
        let rem = |r: &mut MemRegions| r.admit(&hdr(REM_MEM_REG), &low_removed, &[]);
        assert_eq!(rem(&mut regions), Ok(Admission::Absorb));
        assert_eq!(regions.len(), 2);
        assert_eq!(rem(&mut regions), Ok(Admission::Forward));
        assert_eq!(regions.len(), 1);
        // One the switch does not know is the handler's to refuse.
        assert_eq!(rem(&mut regions), Ok(Admission::Forward));
        // Added again after removal: mapped again.
        assert_eq!(
            regions.admit(&hdr(ADD_MEM_REG), &low, &[dup(&ram)]),
            Ok(Admission::Forward)
        );
    }

    #[test]
    fn an_overlap_that_is_not_a_copy_is_refused() {
        let mut regions = MemRegions::default();
        let ram = memfd(1 << 20);
        let other = memfd(1 << 20);
        let base = one(0x10_0000, 0x8_0000, 0x7f00_0000_0000, 0);
        assert_eq!(
            regions.admit(&hdr(ADD_MEM_REG), &base, &[dup(&ram)]),
            Ok(Admission::Forward)
        );
        for (body, fd) in [
            // Another file at the same addresses.
            (base.clone(), dup(&other)),
            // The same file, another offset.
            (
                one(0x10_0000, 0x8_0000, 0x7f00_0000_0000, 0x1000),
                dup(&ram),
            ),
            // Another frontend address.
            (one(0x10_0000, 0x8_0000, 0x7f00_0001_0000, 0), dup(&ram)),
            // Partly over it.
            (one(0x14_0000, 0x8_0000, 0x7f00_0004_0000, 0), dup(&ram)),
            // Inside it.
            (
                one(0x11_0000, 0x1000, 0x7f00_0001_0000, 0x1_0000),
                dup(&ram),
            ),
        ] {
            assert!(
                matches!(
                    regions.admit(&hdr(ADD_MEM_REG), &body, &[fd]),
                    Err(Refused::Overlap {
                        with: 0x10_0000,
                        ..
                    })
                ),
                "{body:x?}"
            );
        }
        // Next to it is fine.
        assert_eq!(
            regions.admit(
                &hdr(ADD_MEM_REG),
                &one(0x18_0000, 0x1000, 0x7f00_0008_0000, 0x8_0000),
                &[dup(&ram)]
            ),
            Ok(Admission::Forward)
        );
    }

    #[test]
    fn a_table_replaces_every_region_and_counts_as_one_copy_each() {
        let mut regions = MemRegions::default();
        let ram = memfd(1 << 20);
        let mut table = 2u32.to_le_bytes().to_vec();
        table.extend_from_slice(&[0; 4]);
        table.extend_from_slice(&one(0, 0x1000, 0x5000, 0)[8..]);
        table.extend_from_slice(&one(0x2000, 0x1000, 0x9000, 0x1000)[8..]);
        let h = Header {
            request: SET_MEM_TABLE,
            flags: 1,
            size: table.len() as u32,
        };
        assert_eq!(
            regions.admit(&h, &table, &[dup(&ram), dup(&ram)]),
            Ok(Admission::Forward)
        );
        assert_eq!(regions.len(), 2);
        assert_eq!(
            regions.admit(&hdr(ADD_MEM_REG), &one(0, 0x1000, 0x5000, 0), &[dup(&ram)]),
            Ok(Admission::Absorb)
        );
        assert_eq!(
            regions.admit(&hdr(REM_MEM_REG), &one(0x2000, 0x1000, 0x9000, 0), &[]),
            Ok(Admission::Forward)
        );
        assert_eq!(regions.len(), 1);
    }

    #[test]
    fn add_mem_reg_stops_at_the_slot_limit_and_a_new_table_starts_over() {
        let mut regions = MemRegions::default();
        let ram = memfd(4096);
        let page = |i: u64| one(i << 12, 4096, i << 12, 0);
        for i in 0..MAX_MEM_SLOTS as u64 {
            assert_eq!(
                regions.admit(&hdr(ADD_MEM_REG), &page(i), &[dup(&ram)]),
                Ok(Admission::Forward)
            );
        }
        let next = page(MAX_MEM_SLOTS as u64);
        assert_eq!(
            regions.admit(&hdr(ADD_MEM_REG), &next, &[dup(&ram)]),
            Err(Refused::NoFreeSlot)
        );
        // A copy takes no slot.
        assert_eq!(
            regions.admit(&hdr(ADD_MEM_REG), &page(3), &[dup(&ram)]),
            Ok(Admission::Absorb)
        );
        assert_eq!(
            regions.admit(&hdr(REM_MEM_REG), &page(7), &[]),
            Ok(Admission::Forward)
        );
        assert_eq!(
            regions.admit(&hdr(ADD_MEM_REG), &next, &[dup(&ram)]),
            Ok(Admission::Forward)
        );
        let mut table = 1u32.to_le_bytes().to_vec();
        table.extend_from_slice(&[0; 4]);
        table.extend_from_slice(&one(0, 4096, 0, 0)[8..]);
        let h = Header {
            request: SET_MEM_TABLE,
            flags: 1,
            size: 40,
        };
        assert_eq!(
            regions.admit(&h, &table, &[dup(&ram)]),
            Ok(Admission::Forward)
        );
        assert_eq!(regions.len(), 1);
    }
}
