//! Frontend memory that can vanish under the switch, and a SIGBUS that takes down only the
//! port whose memory it was.
//!
//! The switch maps files a frontend hands it, shared: guest memory (SET_MEM_TABLE,
//! ADD_MEM_REG) and a live migration's dirty log (SET_LOG_BASE). The frontend keeps its own
//! descriptor of each file and may shrink it afterwards (`ftruncate`), punch a hole in it, or
//! leave pages of a hugetlbfs file that the kernel cannot back when the switch first touches
//! them. Any access to such a page raises SIGBUS, whose default action ends the daemon and
//! with it the network of every VM on the host. No check when the message arrives can prevent
//! it: the file changes later. (A memfd sealed against shrinking, QEMU's default, cannot be
//! shrunk; hugetlbfs and regular files cannot be sealed at all.)
//!
//! So every mapping of a frontend's file is registered here, with the connection it belongs
//! to (its [`MemoryFence`]), before any thread of the switch can reach it, and stays
//! registered until it is unmapped. A SIGBUS handler, installed with the first fence, looks
//! the faulting address up among the registered mappings. If it lies in one, the handler
//! replaces that whole mapping, at the same address, by private zero-filled memory (one
//! `mmap` with `MAP_FIXED`, which the kernel does atomically), marks it faulted, wakes the
//! fence thread and returns: the CPU retries the access, which now succeeds, reading zeros or
//! writing where nobody looks. The fence thread tells the owning connection, which hangs up
//! on its frontend: that port goes down as after a protocol error, and no other port
//! notices. A fault anywhere else goes to the handler that was there before (Rust's
//! stack-overflow report, or the default action, which ends the process as before).
//!
//! The handler does only what is async-signal-safe: atomic loads and stores, `mmap`, `write`
//! to an eventfd, `sigaction`, and it keeps `errno`. The registry is a fixed table of slots,
//! each read under a sequence count (a seqlock), so that a slot being rewritten is never read
//! half old, half new.
//!
//! Guest memory comes from the protocol library's mappings (vm-memory regions, each behind an
//! `Arc`). A fence holds a reference to every region it registered, so that no region is
//! unmapped while a slot names it: once the fence's reference is the last, the slot is freed
//! first and the region unmapped after. Workers are shown a new memory table only once its
//! regions are registered ([`MemoryFence::publish`]), so none can reach an unregistered
//! mapping.

// The signal handler and the raw mappings it replaces.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use vm_memory::{GuestMemoryBackend, MmapRegion};

use crate::frame::FrameMem;
use crate::port::GuestMemAtomic;

/// Frontend mappings registered at once, over every connection of the daemon. A frontend
/// has at most 509 memory regions and a log; a mapping shared by two memory tables takes one
/// slot.
pub const SLOTS: usize = 4096;

/// How often the fence thread lets go of mappings nobody uses any more.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// Errors of the memory fence.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("cannot install the SIGBUS handler that guards frontend memory: {0}")]
    Install(io::Error),
    #[error("cannot start the memory fence thread: {0}")]
    Thread(io::Error),
    #[error("the switch already maps {SLOTS} frontend memory regions, its limit")]
    Full,
}

/// What the handler did with a slot's mapping.
mod state {
    /// Not faulted.
    pub const CLEAN: u8 = 0;
    /// A thread is replacing the mapping.
    pub const REPLACING: u8 = 1;
    /// Replaced by zeroed memory; the fence thread has not told the owner yet.
    pub const REPLACED: u8 = 2;
    /// The owner was told.
    pub const REPORTED: u8 = 3;
    /// The replacement failed: the fault goes on to the previous handler.
    pub const FAILED: u8 = 4;
}

/// One registered mapping.
struct Slot {
    /// Even while the slot is stable, odd while it is rewritten.
    seq: AtomicU64,
    start: AtomicUsize,
    /// Bytes mapped; 0 for a free slot.
    len: AtomicUsize,
    /// The [`MemoryFence`] it belongs to.
    owner: AtomicU64,
    /// See [`state`].
    state: AtomicU8,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            seq: AtomicU64::new(0),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            owner: AtomicU64::new(0),
            state: AtomicU8::new(state::CLEAN),
        }
    }

    /// Rewrites the slot. Only under its [`Registry`]'s write lock.
    fn write(&self, start: usize, len: usize, owner: u64) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        // Release fence: a reader that sees any of the stores below also sees the odd count
        // (the writer half of a seqlock).
        fence(Ordering::Release);
        self.start.store(start, Ordering::Relaxed);
        self.len.store(len, Ordering::Relaxed);
        self.owner.store(owner, Ordering::Relaxed);
        self.state.store(state::CLEAN, Ordering::Relaxed);
        // Release: a reader that sees the even count sees every field written above.
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The slot's (start, len, owner) as one consistent reading, or None if it kept
    /// changing. Async-signal-safe.
    fn read(&self) -> Option<(usize, usize, u64)> {
        for _ in 0..16 {
            // Acquire: pairs with the final Release of `write`.
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let start = self.start.load(Ordering::Relaxed);
            let len = self.len.load(Ordering::Relaxed);
            let owner = self.owner.load(Ordering::Relaxed);
            // Acquire fence: the loads above happen before the second count is read (the
            // reader half of a seqlock).
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return Some((start, len, owner));
            }
        }
        None
    }
}

/// A table of registered mappings.
struct Registry<const N: usize> {
    slots: [Slot; N],
    /// Held by whoever claims or frees slots (never by the signal handler).
    write: Mutex<()>,
}

impl<const N: usize> Registry<N> {
    const fn new() -> Self {
        Registry {
            slots: [const { Slot::new() }; N],
            write: Mutex::new(()),
        }
    }

    /// Claims a free slot for `len` bytes at `start`, owned by fence `owner`.
    fn claim(&self, start: usize, len: usize, owner: u64) -> Result<usize, FenceError> {
        let _w = lock(&self.write);
        let i = self
            .slots
            .iter()
            .position(|s| s.len.load(Ordering::Relaxed) == 0)
            .ok_or(FenceError::Full)?;
        self.slots[i].write(start, len, owner);
        Ok(i)
    }

    /// Frees slot `i`. The mapping it named must not be reached by anyone any more.
    fn release(&self, i: usize) {
        let _w = lock(&self.write);
        self.slots[i].write(0, 0, 0);
    }

    /// The slot whose mapping holds `addr`, with the mapping's start and length.
    /// Async-signal-safe.
    fn find(&self, addr: usize) -> Option<(&Slot, usize, usize)> {
        self.slots.iter().find_map(|s| {
            let (start, len, _) = s.read()?;
            (len != 0 && addr.wrapping_sub(start) < len).then_some((s, start, len))
        })
    }

    /// Marks every slot replaced since the last call as reported, and returns their owners.
    fn take_replaced(&self) -> Vec<u64> {
        let _w = lock(&self.write);
        self.slots
            .iter()
            .filter(|s| {
                s.state
                    .compare_exchange(
                        state::REPLACED,
                        state::REPORTED,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            })
            .map(|s| s.owner.load(Ordering::Relaxed))
            .collect()
    }
}

/// Every frontend mapping of the daemon.
static REGISTRY: Registry<SLOTS> = Registry::new();
/// The eventfd the handler writes to wake the fence thread; -1 until installed.
static WAKE: AtomicI32 = AtomicI32::new(-1);
/// The SIGBUS disposition before ours, for faults that are not ours.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
/// Whether the handler and thread are in place (or why not).
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
/// Every fence alive, for the fence thread.
static FENCES: Mutex<Vec<Weak<MemoryFence>>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn errno() -> *mut libc::c_int {
    // SAFETY: __errno_location has no preconditions and returns this thread's errno.
    unsafe { libc::__errno_location() }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: errno() points at this thread's errno, valid for the thread's life.
    let saved = unsafe { *errno() };
    // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO.
    let code = unsafe { (*info).si_code };
    // A SIGBUS some process sent (si_code 0 or less) carries no address: not ours.
    if code <= 0 {
        chain(sig, info, ctx);
        return;
    }
    // SAFETY: as above; for a SIGBUS the kernel raised, si_addr is the faulting address.
    let addr = unsafe { (*info).si_addr() } as usize;
    let Some((slot, start, len)) = REGISTRY.find(addr) else {
        chain(sig, info, ctx);
        return;
    };
    // One thread replaces the mapping; another that faults meanwhile returns and faults
    // again until the replacement is in place. AcqRel: whoever wins sees the slot as read.
    match slot.state.compare_exchange(
        state::CLEAN,
        state::REPLACING,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => {
            // SAFETY: [start, start + len) is a whole mapping of a frontend's file that
            // a fence registered and holds (it is not unmapped before its slot is freed).
            // Replacing it in place by anonymous memory of the same size keeps every
            // pointer into it valid; only the contents become zeros. MAP_FIXED replaces
            // the old mapping atomically, so no other thread sees a hole.
            let p = unsafe {
                libc::mmap(
                    start as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                slot.state.store(state::FAILED, Ordering::Release);
                chain(sig, info, ctx);
                return;
            }
            slot.state.store(state::REPLACED, Ordering::Release);
            let one = 1u64;
            // SAFETY: writing 8 bytes of our own to the eventfd (or to -1, which fails
            // harmlessly); write is async-signal-safe.
            let _ = unsafe {
                libc::write(WAKE.load(Ordering::Relaxed), (&one as *const u64).cast(), 8)
            };
        }
        Err(state::FAILED) => {
            chain(sig, info, ctx);
            return;
        }
        // Being replaced by another thread, or replaced: retry the access.
        Err(_) => {}
    }
    // SAFETY: as above.
    unsafe { *errno() = saved };
}

/// Hands a fault that is not ours to the disposition that was there before.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let prev = PREVIOUS.get();
    match prev.map(|p| p.sa_sigaction) {
        Some(h) if h != libc::SIG_DFL && h != libc::SIG_IGN => {
            let flags = prev.map_or(0, |p| p.sa_flags);
            if flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed with SA_SIGINFO, so `h` is
                // such a function; it is called as the kernel would have called it.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(h) };
                f(sig, info, ctx);
            } else {
                // SAFETY: a handler installed without SA_SIGINFO takes the signal number.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
                f(sig);
            }
        }
        _ => {
            // The default action: put it back and return, so that the access faults again
            // and the process ends as it would have without us.
            // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask; sigaction is
            // async-signal-safe.
            unsafe {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
            }
        }
    }
}

/// Installs the handler and starts the fence thread, once per process.
fn install() -> Result<(), FenceError> {
    INSTALLED
        .get_or_init(|| install_once().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| FenceError::Install(io::Error::other(e)))
}

fn install_once() -> Result<(), FenceError> {
    // SAFETY: eventfd has no memory preconditions; the fd it returns is ours.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(FenceError::Install(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a new eventfd nobody else owns.
    let wake = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sigaction with a null new action only reads the current one into `old`.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `old` is a valid sigaction to write.
    if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) } != 0 {
        return Err(FenceError::Install(io::Error::last_os_error()));
    }
    let _ = PREVIOUS.set(old);
    WAKE.store(wake.as_raw_fd(), Ordering::Relaxed);
    std::thread::Builder::new()
        .name("memory-fence".into())
        .spawn(move || fence_thread(wake))
        .map_err(FenceError::Thread)?;
    // SAFETY: a zeroed sigaction is valid (empty mask); the handler is an extern "C"
    // function with the SA_SIGINFO signature, async-signal-safe as the module doc says.
    // SA_ONSTACK runs it on the alternate stack Rust gives its threads, if any.
    let rc = unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(FenceError::Install(io::Error::last_os_error()));
    }
    Ok(())
}

/// Tells the owners of replaced mappings, and lets go of mappings nobody uses any more.
fn fence_thread(wake: OwnedFd) {
    let mut pfd = libc::pollfd {
        fd: wake.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, REAP_INTERVAL.as_millis() as libc::c_int) };
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into our own u64 (non-blocking; nothing to read is fine).
        let _ = unsafe { libc::read(pfd.fd, (&mut count as *mut u64).cast(), 8) };
        sweep();
    }
}

/// One round of the fence thread's work.
fn sweep() {
    let faulted = REGISTRY.take_replaced();
    let fences: Vec<Arc<MemoryFence>> = {
        let mut all = lock(&FENCES);
        all.retain(|f| f.strong_count() > 0);
        all.iter().filter_map(Weak::upgrade).collect()
    };
    for f in fences {
        if faulted.contains(&f.id) {
            f.fault();
        }
        f.reap();
    }
}

/// The bytes a mapping of `len` bytes of `region`'s file takes: hugetlbfs maps whole huge
/// pages (a 4 KiB mapping of a 2 MiB-page file takes 2 MiB), anything else whole base
/// pages.
fn mapped_len(region: &MmapRegion<()>) -> usize {
    const HUGETLBFS_MAGIC: libc::c_long = 0x9584_58f6;
    // SAFETY: sysconf has no preconditions.
    let mut page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|&p| p > 0)
        .unwrap_or(4096);
    if let Some(fo) = region.file_offset() {
        // SAFETY: a zeroed statfs is valid to fill; fstatfs writes it for an open fd.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstatfs(fo.file().as_raw_fd(), &mut st) } == 0
            && st.f_type as libc::c_long == HUGETLBFS_MAGIC
            && st.f_bsize > 0
        {
            page = st.f_bsize as usize;
        }
    }
    region.size().div_ceil(page).saturating_mul(page)
}

/// What a fence registered.
struct Held {
    /// A region of guest memory, kept mapped while its slot names it.
    region: Arc<MmapRegion<()>>,
    slot: usize,
}

/// The frontend mappings of one connection, guarded against SIGBUS.
pub struct MemoryFence {
    id: u64,
    held: Mutex<Vec<Held>>,
    faulted: AtomicBool,
    on_fault: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

impl MemoryFence {
    /// A fence for a new connection; installs the SIGBUS handler the first time.
    pub fn new() -> Result<Arc<MemoryFence>, FenceError> {
        install()?;
        let fence = Arc::new(MemoryFence {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            held: Mutex::new(Vec::new()),
            faulted: AtomicBool::new(false),
            on_fault: Mutex::new(None),
        });
        lock(&FENCES).push(Arc::downgrade(&fence));
        Ok(fence)
    }

    /// Registers the regions of `next` (guest memory as the protocol library just mapped
    /// it), then makes it what `to` holds, which is what the workers read. Fails, leaving
    /// `to` as it was, when the registry is full.
    pub fn publish(&self, next: FrameMem, to: &GuestMemAtomic) -> Result<(), FenceError> {
        let mut held = lock(&self.held);
        for region in next.iter() {
            let mmap = region.get_mmap();
            if held.iter().any(|h| Arc::ptr_eq(&h.region, &mmap)) {
                continue;
            }
            let slot = REGISTRY.claim(mmap.as_ptr() as usize, mapped_len(&mmap), self.id)?;
            held.push(Held { region: mmap, slot });
        }
        to.lock().unwrap_or_else(|e| e.into_inner()).replace(next);
        Self::reap_locked(&mut held);
        Ok(())
    }

    /// Registers a mapping the caller made itself (`len` bytes at `start`, page-aligned);
    /// it stays registered until the returned guard is dropped, which must happen before
    /// the caller unmaps it.
    pub fn guard(&self, start: *mut u8, len: usize) -> Result<FencedMapping, FenceError> {
        Ok(FencedMapping {
            slot: REGISTRY.claim(start as usize, len, self.id)?,
        })
    }

    /// Whether a mapping of this connection was found gone and replaced.
    pub fn faulted(&self) -> bool {
        self.faulted.load(Ordering::Acquire)
    }

    /// What to do when a mapping of this connection is found gone (hang up on the
    /// frontend); called at once if it already was.
    pub fn on_fault(&self, f: impl Fn() + Send + Sync + 'static) {
        let mut slot = lock(&self.on_fault);
        if self.faulted() {
            f();
        }
        *slot = Some(Box::new(f));
    }

    fn fault(&self) {
        let on_fault = lock(&self.on_fault);
        // Release: whoever reads `faulted` after the hang-up sees it set.
        self.faulted.store(true, Ordering::Release);
        if let Some(f) = on_fault.as_ref() {
            f();
        }
    }

    /// Frees the slots of regions that only this fence still holds, then unmaps them.
    fn reap(&self) {
        Self::reap_locked(&mut lock(&self.held));
    }

    fn reap_locked(held: &mut Vec<Held>) {
        // `retain` drops each removed region right after its closure returned: the slot is
        // free before the region is unmapped.
        held.retain(|h| {
            let used = Arc::strong_count(&h.region) > 1;
            if !used {
                REGISTRY.release(h.slot);
            }
            used
        });
    }

    /// Regions registered (and kept mapped) by this fence.
    #[cfg(test)]
    fn regions(&self) -> usize {
        lock(&self.held).len()
    }
}

impl Drop for MemoryFence {
    fn drop(&mut self) {
        // Nobody can reach this connection's memory through the fence any more; regions
        // others still hold stay mapped (and unguarded) until they let go.
        let held = std::mem::take(&mut *lock(&self.held));
        for h in held {
            REGISTRY.release(h.slot);
            drop(h.region);
        }
    }
}

/// A registered mapping that its owner unmaps itself (the dirty log); frees its slot when
/// dropped.
pub struct FencedMapping {
    slot: usize,
}

impl Drop for FencedMapping {
    fn drop(&mut self) {
        REGISTRY.release(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use vm_memory::{
        Bytes, FileOffset, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap,
    };

    use super::*;
    use crate::vhost_user::unlinked_file;

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn file_memory(len: usize) -> (std::fs::File, FrameMem) {
        let f = unlinked_file(len as u64);
        let mem = GuestMemoryMmap::from_ranges_with_files(&[(
            GuestAddress(0x10_0000),
            len,
            Some(FileOffset::new(f.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        (f, mem)
    }

    #[test]
    fn a_shrunk_file_reads_as_zeros_and_its_owner_is_told() {
        let fence = MemoryFence::new().unwrap();
        let (file, mem) = file_memory(0x4000);
        let atomic = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        fence.publish(mem, &atomic).unwrap();
        let told = Arc::new(AtomicBool::new(false));
        let t = told.clone();
        fence.on_fault(move || t.store(true, Ordering::SeqCst));
        let view = atomic.memory();
        view.write_obj(0xabu8, GuestAddress(0x10_3fff)).unwrap();
        assert_eq!(view.read_obj::<u8>(GuestAddress(0x10_3fff)).unwrap(), 0xab);

        file.set_len(0).unwrap();
        // Without the fence, this read ends the test process with SIGBUS.
        assert_eq!(view.read_obj::<u8>(GuestAddress(0x10_3fff)).unwrap(), 0);
        // The whole mapping was replaced: writes anywhere in it land, in private memory.
        view.write_obj(0x5au8, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(view.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(), 0x5a);
        wait_for("the owner to be told", || told.load(Ordering::SeqCst));
        assert!(fence.faulted());
        // The file itself got nothing of it.
        assert_eq!(file.metadata().unwrap().len(), 0);
    }

    #[test]
    fn a_fault_is_charged_to_the_fence_whose_mapping_it_was() {
        let (guilty, innocent) = (MemoryFence::new().unwrap(), MemoryFence::new().unwrap());
        let (gf, gmem) = file_memory(0x2000);
        let (_if, imem) = file_memory(0x2000);
        let (ga, ia) = (
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        );
        guilty.publish(gmem, &ga).unwrap();
        innocent.publish(imem, &ia).unwrap();
        ia.memory().write_obj(7u8, GuestAddress(0x10_0000)).unwrap();
        gf.set_len(0).unwrap();
        assert_eq!(
            ga.memory().read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(),
            0
        );
        wait_for("the guilty fence to be told", || guilty.faulted());
        assert!(!innocent.faulted());
        assert_eq!(
            ia.memory().read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(),
            7
        );
    }

    #[test]
    fn a_guarded_mapping_of_our_own_survives_its_file_shrinking() {
        let fence = MemoryFence::new().unwrap();
        let told = Arc::new(AtomicBool::new(false));
        let t = told.clone();
        fence.on_fault(move || t.store(true, Ordering::SeqCst));
        let f = unlinked_file(8192);
        // SAFETY: a new shared mapping of our own file, unmapped at the end of the test.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let guard = fence.guard(p.cast(), 8192).unwrap();
        f.set_len(0).unwrap();
        let last = p.cast::<u8>().wrapping_add(8191);
        // SAFETY: inside the 8192 bytes mapped above (replaced by the fence, still mapped).
        unsafe {
            std::ptr::write_volatile(last, 9);
            assert_eq!(std::ptr::read_volatile(last), 9);
        }
        wait_for("the owner to be told", || told.load(Ordering::SeqCst));
        drop(guard);
        // SAFETY: the mapping made above, unmapped once, after its guard.
        unsafe { libc::munmap(p, 8192) };
    }

    #[test]
    fn regions_are_let_go_of_once_only_the_fence_holds_them() {
        let fence = MemoryFence::new().unwrap();
        let (_f1, first) = file_memory(0x1000);
        let atomic = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        fence.publish(first, &atomic).unwrap();
        assert_eq!(fence.regions(), 1);
        // A reader still holds the first table when it is replaced.
        let reader = atomic.memory();
        let (_f2, second) = file_memory(0x1000);
        fence.publish(second, &atomic).unwrap();
        assert_eq!(fence.regions(), 2);
        drop(reader);
        fence.reap();
        assert_eq!(fence.regions(), 1, "the first table's region is still held");
        // The same region in two tables (ADD_MEM_REG keeps the others) takes one slot.
        let same = (*atomic.memory()).clone();
        fence.publish(same, &atomic).unwrap();
        assert_eq!(fence.regions(), 1);
        drop(atomic);
        fence.reap();
        assert_eq!(fence.regions(), 0);
    }

    #[test]
    fn a_full_registry_refuses() {
        let r = Registry::<2>::new();
        let a = r.claim(0x1000, 0x1000, 1).unwrap();
        r.claim(0x4000, 0x1000, 1).unwrap();
        assert!(matches!(r.claim(0x8000, 0x1000, 1), Err(FenceError::Full)));
        r.release(a);
        assert_eq!(r.claim(0x8000, 0x1000, 2).unwrap(), a);
    }

    #[test]
    fn a_slot_is_found_by_any_address_inside_it_and_no_other() {
        let r = Registry::<4>::new();
        let i = r.claim(0x1000, 0x2000, 42).unwrap();
        assert_eq!(r.slots[i].read(), Some((0x1000, 0x2000, 42)));
        for inside in [0x1000, 0x1fff, 0x2fff] {
            assert!(r
                .find(inside)
                .is_some_and(|(_, s, l)| (s, l) == (0x1000, 0x2000)));
        }
        for outside in [0, 0xfff, 0x3000, usize::MAX] {
            assert!(r.find(outside).is_none(), "{outside:#x}");
        }
        r.release(i);
        assert!(r.find(0x1000).is_none());
    }

    #[test]
    fn a_slot_being_rewritten_is_not_read() {
        let r = Registry::<1>::new();
        r.claim(0x1000, 0x1000, 1).unwrap();
        // A writer stopped half way (odd count): readers give up rather than read a mix.
        r.slots[0].seq.fetch_add(1, Ordering::Relaxed);
        assert_eq!(r.slots[0].read(), None);
        assert!(r.find(0x1000).is_none());
        r.slots[0].seq.fetch_add(1, Ordering::Relaxed);
        assert!(r.find(0x1000).is_some());
    }

    #[test]
    fn a_region_is_registered_in_whole_pages() {
        let f = unlinked_file(0x3000);
        let region = MmapRegion::from_file(FileOffset::new(f, 0), 0x2100).unwrap();
        assert_eq!(mapped_len(&region), 0x3000);
    }
}
