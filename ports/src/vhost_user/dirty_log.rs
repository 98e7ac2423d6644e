//! The dirty log of a live migration (VHOST_USER_SET_LOG_BASE): a bitmap the frontend
//! shares, one bit per 4 KiB page of guest-physical memory, that the backend sets for
//! every page it writes while the migration copies memory.
//!
//! The log is hostile input like a memory region: its size and offset are checked against
//! its file before it is mapped, and against the guest memory it must cover, so that
//! marking a page can never touch outside the mapping. Marks are atomic ORs of whole bytes,
//! as the frontend reads the bitmap while the switch writes it.
//!
//! The relay maps it ([`super::relay`]); the workers mark it through
//! [`super::migration::MigrationState`].

// The mapping and the atomic view of its bytes: each unsafe block says why it stays inside
// the mapping.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};

use super::memory_fence::{FenceError, FencedMapping, MemoryFence};

/// Bytes of guest memory one bit of the log stands for.
pub const LOG_PAGE: u64 = 4096;

/// Why a log was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogError {
    #[error("the log's file cannot be inspected: {0}")]
    File(String),
    #[error("the log is not in a regular file or memfd")]
    NotAFile,
    #[error("the log is {size} bytes at offset {offset}, past the end of its {file}-byte file")]
    OutsideFile { size: u64, offset: u64, file: u64 },
    #[error("the log is {size} bytes, and guest memory up to {covers:#x} needs {needed}")]
    TooSmall { size: u64, covers: u64, needed: u64 },
    #[error("the log cannot be mapped: {0}")]
    Map(String),
}

/// A frontend's dirty log, mapped.
pub struct DirtyLog {
    /// The mapping, from the page that holds the log's first byte.
    map: NonNull<u8>,
    map_len: usize,
    /// Where the log starts in the mapping, and its length.
    start: usize,
    len: usize,
    /// The mapping's registration with the connection's memory fence, if any: it must go
    /// before the mapping does.
    fenced: Option<FencedMapping>,
}

// SAFETY: the mapping is shared memory owned by this value; every access to it is through
// atomics (see `bytes`), so any thread may hold and use it.
unsafe impl Send for DirtyLog {}
// SAFETY: as above: only atomic accesses, no interior state besides the mapping.
unsafe impl Sync for DirtyLog {}

/// Bytes of log that guest memory up to `covers` (exclusive) needs.
pub fn log_bytes_for(covers: u64) -> u64 {
    covers.div_ceil(LOG_PAGE).div_ceil(8)
}

impl DirtyLog {
    /// Maps `size` bytes at `offset` of `file` as the log of guest memory that ends at
    /// `covers` (the highest guest-physical address plus one). Refuses a log that does not
    /// lie in its file, or that is too small for that memory.
    pub fn map(file: &File, size: u64, offset: u64, covers: u64) -> Result<DirtyLog, LogError> {
        let meta = file.metadata().map_err(|e| LogError::File(e.to_string()))?;
        if !meta.file_type().is_file() {
            return Err(LogError::NotAFile);
        }
        let outside = || LogError::OutsideFile {
            size,
            offset,
            file: meta.len(),
        };
        let end = offset.checked_add(size).ok_or_else(outside)?;
        if end > meta.len() {
            return Err(outside());
        }
        let needed = log_bytes_for(covers);
        if size < needed || size == 0 {
            return Err(LogError::TooSmall {
                size,
                covers,
                needed,
            });
        }
        let page = page_size();
        let map_offset = offset - offset % page;
        let start = (offset - map_offset) as usize;
        let len = usize::try_from(size).map_err(|_| LogError::Map("too large".into()))?;
        let map_len = start
            .checked_add(len)
            .ok_or_else(|| LogError::Map("too large".into()))?;
        let map_offset = libc::off_t::try_from(map_offset)
            .map_err(|_| LogError::Map("offset too large".into()))?;
        // SAFETY: a new shared mapping of a file we hold, at an address the kernel chooses;
        // nothing of ours is overwritten. The range lies in the file (checked above).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                map_offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(LogError::Map(std::io::Error::last_os_error().to_string()));
        }
        Ok(DirtyLog {
            map: NonNull::new(p.cast()).ok_or_else(|| LogError::Map("null mapping".into()))?,
            map_len,
            start,
            len,
            fenced: None,
        })
    }

    /// Registers the mapping with `fence`, so that the frontend shrinking the log's file
    /// takes down its own connection rather than the daemon (see [`MemoryFence`]).
    pub fn guarded_by(mut self, fence: &MemoryFence) -> Result<DirtyLog, FenceError> {
        self.fenced = Some(fence.guard(self.map.as_ptr(), self.map_len)?);
        Ok(self)
    }

    /// The log's bytes, as atomics.
    fn bytes(&self) -> &[AtomicU8] {
        // SAFETY: `start + len <= map_len` bytes are mapped for as long as `self` lives, and
        // AtomicU8 has the size and alignment of u8. Shared memory the frontend also writes
        // is only ever accessed atomically through this slice.
        unsafe {
            std::slice::from_raw_parts(
                self.map.as_ptr().add(self.start).cast::<AtomicU8>(),
                self.len,
            )
        }
    }

    /// Marks the pages of guest memory `[gpa, gpa + len)` dirty. Pages past what the log
    /// covers are left out (the caller checked the log against guest memory). Returns
    /// whether every page was in the log.
    pub fn mark(&self, gpa: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let bytes = self.bytes();
        let first = gpa / LOG_PAGE;
        let last = (gpa.saturating_add(len - 1)) / LOG_PAGE;
        let mut all = true;
        let mut page = first;
        // Bounded by the pages of the range; whole bytes at a time where the range allows.
        while page <= last {
            let (byte, bit) = ((page / 8) as usize, (page % 8) as u32);
            let Some(b) = bytes.get(byte) else {
                all = false;
                break;
            };
            if bit == 0 && last - page >= 7 {
                b.fetch_or(0xff, Ordering::Relaxed);
                page += 8;
            } else {
                b.fetch_or(1 << bit, Ordering::Relaxed);
                page += 1;
            }
        }
        all
    }

    /// Whether the page holding `gpa` is marked.
    pub fn is_marked(&self, gpa: u64) -> bool {
        let page = gpa / LOG_PAGE;
        self.bytes()
            .get((page / 8) as usize)
            .is_some_and(|b| b.load(Ordering::Relaxed) & (1 << (page % 8)) != 0)
    }

    /// The log's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        // Out of the fence's registry before the address range can be reused.
        drop(self.fenced.take());
        // SAFETY: the mapping made in `map`, of this length, unmapped once; no reference
        // into it outlives `self` (`bytes` borrows `self`).
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom};

    use super::*;
    use crate::vhost_user::unlinked_file;

    /// The log's bytes as the frontend reads them from the file.
    fn file_bytes(f: &mut File, offset: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.read_exact(&mut v).unwrap();
        v
    }

    #[test]
    fn marks_are_the_pages_written_and_no_others() {
        // 1 GiB of guest memory: 32 KiB of log, at an offset that is not page aligned.
        let covers = 1 << 30;
        let mut f = unlinked_file(0x1_0000);
        let log = DirtyLog::map(&f, 0x8000, 0x100, covers).unwrap();
        assert!(log.mark(0x3000, 1));
        assert!(log.mark(0x5fff, 2), "two bytes across pages 5 and 6");
        assert!(log.mark(0x10_0000, 0x10_0000), "256 pages, whole bytes");
        assert!(log.mark(0x7000, 0));
        for page in 0..0x300u64 {
            let want = page == 3 || page == 5 || page == 6 || (0x100..0x200).contains(&page);
            assert_eq!(log.is_marked(page * LOG_PAGE), want, "page {page:#x}");
        }
        let seen = file_bytes(&mut f, 0x100, 0x41);
        assert_eq!(seen[0], 0b0110_1000, "pages 3, 5 and 6");
        assert!(seen[0x20..0x40].iter().all(|&b| b == 0xff));
        assert_eq!((seen[1], seen[0x40]), (0, 0));
        // The last page guest memory has, and one past it.
        assert!(log.mark(covers - 1, 1));
        assert!(!log.mark(covers, 1), "outside the log: left out, said so");
    }

    #[test]
    fn logs_that_do_not_fit_their_file_or_the_memory_are_refused() {
        let f = unlinked_file(0x2000);
        let covers = 64 << 20; // needs 2 KiB
        assert_eq!(
            DirtyLog::map(&f, 0x1000, 0x1800, covers).err(),
            Some(LogError::OutsideFile {
                size: 0x1000,
                offset: 0x1800,
                file: 0x2000
            })
        );
        assert!(matches!(
            DirtyLog::map(&f, 0x1000, u64::MAX - 8, covers),
            Err(LogError::OutsideFile { .. })
        ));
        assert_eq!(
            DirtyLog::map(&f, 0x400, 0, covers).err(),
            Some(LogError::TooSmall {
                size: 0x400,
                covers,
                needed: 0x800
            })
        );
        assert!(matches!(
            DirtyLog::map(&f, 0, 0, 0),
            Err(LogError::TooSmall { .. })
        ));
        let dir = File::open(std::env::temp_dir()).unwrap();
        assert_eq!(
            DirtyLog::map(&dir, 8, 0, 4096).err(),
            Some(LogError::NotAFile)
        );
        assert!(DirtyLog::map(&f, 0x800, 0x1800, covers).is_ok());
        assert_eq!(log_bytes_for(4096 * 8 + 1), 2);
    }
}
