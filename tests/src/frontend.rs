//! A VM without QEMU: guest memory in a shared tmpfs file, split virtqueues driven the way a
//! guest's virtio-net driver drives them, and the vhost-user protocol spoken through the
//! vhost crate's `Frontend`.
//!
//! Layout of guest memory (GPA 0 .. [`MEM_SIZE`]): the rings of queue `q` at
//! `RINGS + q * 0x1_0000` (descriptors, then avail at +0x4000, used at +0x8000), and the
//! buffer of descriptor `d` of queue `q` at `BUFFERS + (q * QUEUE_SIZE + d) * BUF_STRIDE`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF};
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::wait_until;

pub const MEM_SIZE: u64 = 64 << 20;
pub const QUEUE_SIZE: u16 = 256;
pub const RINGS: u64 = 0x10_0000;
pub const BUFFERS: u64 = 0x100_0000;
pub const BUF_STRIDE: u64 = 0x4000;
/// Virtio-net header length with VERSION_1.
pub const HDR_LEN: usize = 12;

/// How the test VM negotiates.
#[derive(Debug, Clone, Copy)]
pub struct VmOptions {
    pub queue_pairs: u16,
    pub mrg_rxbuf: bool,
    pub event_idx: bool,
    /// Fail unless the backend offers everything vringswitch offers. Off for other backends
    /// (testpmd, OVS) measured by the benchmark probe: then features it lacks are simply not
    /// negotiated.
    pub strict: bool,
    /// The rings start as if this many chains had already gone through them (the driver's
    /// avail index and the used index both at this value), while SET_VRING_BASE still says
    /// 0: what DPDK's virtio_user does when it reconnects to a restarted switch.
    pub ring_history: u16,
    /// Offload features to negotiate too (`VIRTIO_NET_F_CSUM` and the like, as bits).
    pub offloads: u64,
    /// Negotiate what a live migration needs: LOG_SHMFD and RARP (see
    /// [`TestVm::start_dirty_log`]).
    pub migration: bool,
    /// What the guest memory is a file of.
    pub memory: MemoryBacking,
}

/// The file behind a test VM's memory, as VMMs choose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryBacking {
    /// A file in /dev/shm (tmpfs), unlinked: QEMU's `memory-backend-file,mem-path=/dev/shm`.
    Shm,
    /// A memfd, sealed against shrinking and growing as QEMU's `memory-backend-memfd` seals
    /// it by default (`seal=on`), or not sealed at all (`seal=off`).
    Memfd { sealed: bool },
    /// A file in the hugetlbfs mounted at /dev/hugepages, unlinked: QEMU's
    /// `memory-backend-file,mem-path=/dev/hugepages` and DPDK's `--single-file-segments`.
    Hugetlbfs,
    /// A regular file on disk (in the temporary directory), unlinked.
    DiskFile,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            queue_pairs: 1,
            mrg_rxbuf: true,
            event_idx: true,
            strict: true,
            ring_history: 0,
            offloads: 0,
            migration: false,
            memory: MemoryBacking::Shm,
        }
    }
}

/// Bytes of a dirty log for [`MEM_SIZE`] of guest memory: one bit per 4 KiB page.
pub const DIRTY_LOG_LEN: u64 = MEM_SIZE / 4096 / 8;

/// A dirty log as the frontend holds it.
pub struct DirtyLogFile {
    file: File,
    len: u64,
}

impl DirtyLogFile {
    /// The marked pages, by guest page number.
    pub fn marked(&self) -> std::collections::BTreeSet<u64> {
        use std::os::unix::fs::FileExt;
        let mut bytes = vec![0u8; self.len as usize];
        self.file
            .read_exact_at(&mut bytes, 0)
            .expect("read the log");
        let mut pages = std::collections::BTreeSet::new();
        for (i, b) in bytes.iter().enumerate() {
            for bit in 0..8 {
                if b & (1 << bit) != 0 {
                    pages.insert(i as u64 * 8 + bit);
                }
            }
        }
        pages
    }

    /// Cuts the log's file to nothing, as a hostile frontend may after SET_LOG_BASE.
    pub fn shrink_file(&self) {
        self.file.set_len(0).expect("shrink the log's file");
    }

    /// Clears every mark, as the frontend does when it syncs the log.
    pub fn clear(&self) {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(&vec![0u8; self.len as usize], 0)
            .expect("clear the log");
    }
}

/// A received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub frame: Vec<u8>,
    /// `num_buffers` from the virtio-net header.
    pub num_buffers: u16,
    /// Used lengths of each buffer the frame came in.
    pub used_lens: Vec<u32>,
    /// The virtio-net header as the device wrote it.
    pub header: [u8; HDR_LEN],
    /// Head descriptor of each buffer the frame came in.
    pub heads: Vec<u16>,
}

/// Driver side of one split virtqueue.
pub struct DriverQueue {
    pub index: u16,
    pub kick: EventFd,
    pub call: EventFd,
    next_avail: u16,
    last_used: u16,
    free: Vec<u16>,
}

impl DriverQueue {
    fn desc_addr(&self) -> u64 {
        RINGS + u64::from(self.index) * 0x1_0000
    }
    fn avail_addr(&self) -> u64 {
        self.desc_addr() + 0x4000
    }
    fn used_addr(&self) -> u64 {
        self.desc_addr() + 0x8000
    }
    /// Buffer of descriptor `d`.
    pub fn buf_addr(&self, d: u16) -> u64 {
        BUFFERS + (u64::from(self.index) * u64::from(QUEUE_SIZE) + u64::from(d)) * BUF_STRIDE
    }
}

/// A test VM attached to one vhost-user socket.
pub struct TestVm {
    pub frontend: Frontend,
    pub mem: GuestMemoryMmap<()>,
    pub queues: Vec<DriverQueue>,
    pub features: u64,
    pub mac: [u8; 6],
    _file: File,
}

/// A file of [`MEM_SIZE`] bytes for guest memory, as `backing` makes it.
fn memory_file(backing: MemoryBacking) -> File {
    let unlinked = |dir: &Path, what: &str| {
        // The lifecycle test finds guest mappings in /proc/PID/maps by this prefix.
        let path = dir.join(crate::unique_name("vringswitch-test"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("create guest memory in {}: {e}{what}", dir.display()));
        std::fs::remove_file(&path).unwrap();
        file
    };
    let file = match backing {
        MemoryBacking::Shm => unlinked(Path::new("/dev/shm"), ""),
        MemoryBacking::DiskFile => unlinked(&std::env::temp_dir(), ""),
        MemoryBacking::Hugetlbfs => unlinked(
            Path::new("/dev/hugepages"),
            " (as root: echo 512 > /proc/sys/vm/nr_hugepages; mkdir -p /dev/hugepages; \
             mount -t hugetlbfs nodev /dev/hugepages; scripts/test.sh does it)",
        ),
        MemoryBacking::Memfd { .. } => {
            use rustix::fs::{memfd_create, MemfdFlags};
            File::from(
                memfd_create(
                    "vringswitch-test",
                    MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
                )
                .expect("memfd_create"),
            )
        }
    };
    file.set_len(MEM_SIZE).expect("size guest memory");
    if backing == (MemoryBacking::Memfd { sealed: true }) {
        use rustix::fs::{fcntl_add_seals, SealFlags};
        fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW).expect("seal the memfd");
    }
    file
}

fn shared_memory(backing: MemoryBacking) -> (File, GuestMemoryMmap<()>) {
    let file = memory_file(backing);
    let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
        GuestAddress(0),
        MEM_SIZE as usize,
        Some(FileOffset::new(file.try_clone().unwrap(), 0)),
    )])
    .unwrap();
    (file, mem)
}

impl TestVm {
    /// Connects to a server-mode port and does the whole handshake; RX rings start empty.
    pub fn connect(socket: &Path, mac: [u8; 6], opts: VmOptions) -> TestVm {
        let frontend = wait_until(Duration::from_secs(10), "the vhost-user socket", || {
            Frontend::connect(socket, u64::from(2 * opts.queue_pairs)).ok()
        });
        Self::handshake(frontend, mac, opts)
    }

    /// Waits (up to 10 s) for a client-mode port to connect to `listener`, as a VMM started
    /// with `server=on` does, and does the whole handshake.
    pub fn accept(
        listener: &std::os::unix::net::UnixListener,
        mac: [u8; 6],
        opts: VmOptions,
    ) -> TestVm {
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stream = wait_until(Duration::from_secs(10), "the switch to connect", || {
            listener.accept().ok().map(|(s, _)| s)
        });
        stream.set_nonblocking(false).expect("blocking stream");
        let frontend = Frontend::from_stream(stream, u64::from(2 * opts.queue_pairs));
        Self::handshake(frontend, mac, opts)
    }

    /// Does the vhost-user handshake over an established connection.
    pub fn handshake(mut frontend: Frontend, mac: [u8; 6], opts: VmOptions) -> TestVm {
        let (file, mem) = shared_memory(opts.memory);
        frontend.set_owner().expect("SET_OWNER");
        let offered = frontend.get_features().expect("GET_FEATURES");
        let mut wanted =
            (1u64 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if opts.mrg_rxbuf {
            wanted |= 1 << VIRTIO_NET_F_MRG_RXBUF;
        }
        if opts.event_idx {
            wanted |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        if opts.queue_pairs > 1 {
            wanted |= 1 << VIRTIO_NET_F_MQ;
        }
        wanted |= opts.offloads;
        if !opts.strict {
            wanted &= offered | (1 << VIRTIO_F_VERSION_1);
        }
        assert_eq!(
            offered & wanted,
            wanted,
            "backend lacks features: {offered:#x}"
        );
        let proto = frontend
            .get_protocol_features()
            .expect("GET_PROTOCOL_FEATURES");
        let mut proto_wanted = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        if opts.migration {
            proto_wanted |= VhostUserProtocolFeatures::LOG_SHMFD | VhostUserProtocolFeatures::RARP;
        }
        if !opts.strict {
            proto_wanted &= proto;
        }
        assert!(proto.contains(proto_wanted), "protocol features {proto:?}");
        frontend.set_features(wanted).expect("SET_FEATURES");
        frontend
            .set_protocol_features(proto_wanted)
            .expect("SET_PROTOCOL_FEATURES");
        let qnum = frontend.get_queue_num().expect("GET_QUEUE_NUM");
        assert!(qnum >= u64::from(2 * opts.queue_pairs), "queue num {qnum}");

        let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE,
            userspace_addr: host,
            mmap_offset: 0,
            mmap_handle: file.as_raw_fd(),
        };
        frontend.set_mem_table(&[region]).expect("SET_MEM_TABLE");

        let mut vm = TestVm {
            frontend,
            mem,
            queues: Vec::new(),
            features: wanted,
            mac,
            _file: file,
        };
        for q in 0..2 * opts.queue_pairs {
            let dq = DriverQueue {
                index: q,
                kick: EventFd::new(EFD_NONBLOCK).unwrap(),
                call: EventFd::new(EFD_NONBLOCK).unwrap(),
                next_avail: opts.ring_history,
                last_used: opts.ring_history,
                free: (0..QUEUE_SIZE).rev().collect(),
            };
            vm.setup_queue(&dq, host);
            vm.queues.push(dq);
        }
        vm
    }

    /// Starts logging dirty pages, as QEMU does when a migration begins: SET_LOG_BASE with a
    /// log for all of guest memory in a memfd-like file, LOG_ALL in the features, and the
    /// log flag with the used ring's address on every ring. Needs `VmOptions::migration`.
    pub fn start_dirty_log(&mut self) -> DirtyLogFile {
        self.start_dirty_log_of(DIRTY_LOG_LEN)
    }

    /// [`Self::start_dirty_log`] with a log of `len` bytes (one bit per 4 KiB page), for
    /// guest memory the frontend will add beyond the VM's own.
    pub fn start_dirty_log_of(&mut self, len: u64) -> DirtyLogFile {
        let file = crate::raw_frontend::memory_file(len);
        self.frontend
            .set_log_base(
                0,
                Some(vhost::VhostUserDirtyLogRegion {
                    mmap_size: len,
                    mmap_offset: 0,
                    mmap_handle: file.as_raw_fd(),
                }),
            )
            .expect("SET_LOG_BASE");
        self.frontend
            .set_features(self.features | VhostUserVirtioFeatures::LOG_ALL.bits())
            .expect("SET_FEATURES with LOG_ALL");
        self.set_ring_logging(true);
        // A round trip, as QEMU makes after SET_FEATURES while logging: everything before
        // it was handled once it is answered.
        self.frontend.get_features().expect("GET_FEATURES");
        DirtyLogFile { file, len }
    }

    /// Stops logging, as QEMU does when a migration ends or is cancelled.
    pub fn stop_dirty_log(&mut self) {
        self.frontend
            .set_features(self.features)
            .expect("SET_FEATURES without LOG_ALL");
        self.set_ring_logging(false);
        self.frontend.get_features().expect("GET_FEATURES");
    }

    fn set_ring_logging(&mut self, on: bool) {
        let host = self.mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        for dq in &self.queues {
            let config = VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: QUEUE_SIZE,
                flags: u32::from(on),
                desc_table_addr: host + dq.desc_addr(),
                used_ring_addr: host + dq.used_addr(),
                avail_ring_addr: host + dq.avail_addr(),
                log_addr: on.then_some(dq.used_addr()),
            };
            self.frontend
                .set_vring_addr(usize::from(dq.index), &config)
                .expect("SET_VRING_ADDR");
        }
    }

    /// Cuts the file behind guest memory to nothing (`ftruncate(fd, 0)`), as a hostile
    /// frontend may once the switch mapped it. Fails for a memfd sealed against shrinking.
    /// The VM's own memory is gone with it: touching it afterwards (sending, receiving,
    /// posting buffers) raises SIGBUS in the test.
    pub fn shrink_memory_file(&self) -> std::io::Result<()> {
        self._file.set_len(0)
    }

    /// Guest address of queue `q`'s used ring.
    pub fn used_ring_addr(&self, q: u16) -> u64 {
        self.queues[usize::from(q)].used_addr()
    }

    /// This VM's memory as one vhost-user region.
    pub fn region(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE,
            userspace_addr: self.mem.get_host_address(GuestAddress(0)).unwrap() as u64,
            mmap_offset: 0,
            mmap_handle: self._file.as_raw_fd(),
        }
    }

    /// Sends the memory table again (a VMM does so when its memory layout changes): the
    /// switch maps the memory anew and drops the old mapping.
    pub fn resend_mem_table(&mut self, extra: &[VhostUserMemoryRegionInfo]) {
        let mut regions = vec![self.region()];
        regions.extend_from_slice(extra);
        self.frontend
            .set_mem_table(&regions)
            .expect("SET_MEM_TABLE");
    }

    fn setup_queue(&mut self, dq: &DriverQueue, host: u64) {
        let idx = usize::from(dq.index);
        // Rings start zeroed (fresh memory or after a reconnect below).
        self.mem
            .write_slice(&[0u8; 0xC000], GuestAddress(dq.desc_addr()))
            .unwrap();
        // The ring's history, if any (see VmOptions::ring_history); SET_VRING_BASE says 0.
        for idx_at in [dq.avail_addr() + 2, dq.used_addr() + 2] {
            self.mem
                .write_obj(dq.next_avail.to_le(), GuestAddress(idx_at))
                .unwrap();
        }
        self.frontend
            .set_vring_num(idx, QUEUE_SIZE)
            .expect("SET_VRING_NUM");
        let config = VringConfigData {
            queue_max_size: QUEUE_SIZE,
            queue_size: QUEUE_SIZE,
            flags: 0,
            desc_table_addr: host + dq.desc_addr(),
            used_ring_addr: host + dq.used_addr(),
            avail_ring_addr: host + dq.avail_addr(),
            log_addr: None,
        };
        self.frontend
            .set_vring_addr(idx, &config)
            .expect("SET_VRING_ADDR");
        self.frontend
            .set_vring_base(idx, 0)
            .expect("SET_VRING_BASE");
        self.frontend
            .set_vring_call(idx, &dq.call)
            .expect("SET_VRING_CALL");
        self.frontend
            .set_vring_kick(idx, &dq.kick)
            .expect("SET_VRING_KICK");
        self.frontend
            .set_vring_enable(idx, true)
            .expect("SET_VRING_ENABLE");
    }

    /// Writes descriptor `d` of queue `q` as given, checked or not (for hostile-guest tests).
    pub fn write_desc(&self, q: u16, d: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let dq = &self.queues[usize::from(q)];
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&raw, GuestAddress(dq.desc_addr() + u64::from(d) * 16))
            .unwrap();
    }

    /// Puts chain heads on the avail ring, publishes the new index and kicks the device if
    /// it asked to be told (as a guest driver does: the used ring's NO_NOTIFY flag, or with
    /// EVENT_IDX its `avail_event`). Heads are not checked (for hostile-guest tests).
    pub fn make_available(&mut self, q: u16, heads: &[u16]) {
        let old = self.queues[usize::from(q)].next_avail;
        self.publish_avail(q, heads);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        if self.device_wants_kick(q, old) {
            let _ = self.queues[usize::from(q)].kick.write(1);
        }
    }

    /// Whether the device asked for a kick after the avail index moved on from `old`.
    fn device_wants_kick(&self, q: u16, old: u16) -> bool {
        let dq = &self.queues[usize::from(q)];
        let new = dq.next_avail;
        if self.features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0 {
            // avail_event sits after the used ring's entries.
            let at = dq.used_addr() + 4 + 8 * u64::from(QUEUE_SIZE);
            let event = u16::from_le(self.mem.read_obj(GuestAddress(at)).unwrap());
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags = u16::from_le(self.mem.read_obj(GuestAddress(dq.used_addr())).unwrap());
            flags & VRING_USED_F_NO_NOTIFY as u16 == 0
        }
    }

    fn alloc(&mut self, q: u16, n: usize) -> Vec<u16> {
        let dq = &mut self.queues[usize::from(q)];
        assert!(dq.free.len() >= n, "queue {q} out of descriptors");
        (0..n).map(|_| dq.free.pop().unwrap()).collect()
    }

    /// RX queue of pair `pair`.
    pub fn rx(pair: u16) -> u16 {
        2 * pair
    }

    /// TX queue of pair `pair`.
    pub fn tx(pair: u16) -> u16 {
        2 * pair + 1
    }

    /// Offers `n` writable buffers of `len` bytes on RX queue `q` (one descriptor each).
    pub fn post_rx(&mut self, q: u16, n: usize, len: u32) {
        let heads = self.alloc(q, n);
        for &d in &heads {
            let addr = self.queues[usize::from(q)].buf_addr(d);
            self.write_desc(q, d, addr, len, VRING_DESC_F_WRITE as u16, 0);
        }
        self.make_available(q, &heads);
    }

    /// Puts `frames` on TX queue `q` (one descriptor each, behind a zeroed header) and
    /// publishes them with one avail index store, without kicking: the device sees them all
    /// at once, whenever it next looks or is kicked ([`Self::kick`]).
    pub fn offer_quietly(&mut self, q: u16, frames: &[Vec<u8>]) {
        let heads = self.alloc(q, frames.len());
        for (&d, f) in heads.iter().zip(frames) {
            let addr = self.queues[usize::from(q)].buf_addr(d);
            let mut bytes = vec![0u8; HDR_LEN];
            bytes.extend_from_slice(f);
            self.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
            self.write_desc(q, d, addr, bytes.len() as u32, 0, 0);
        }
        self.publish_avail(q, &heads);
    }

    /// Writes `heads` into queue `q`'s available ring, then the new avail index with one
    /// store after a fence, as a driver does. No kick.
    fn publish_avail(&mut self, q: u16, heads: &[u16]) {
        let dq = &mut self.queues[usize::from(q)];
        let avail = dq.avail_addr();
        for &h in heads {
            let slot = u64::from(dq.next_avail % QUEUE_SIZE);
            self.mem
                .write_obj(h.to_le(), GuestAddress(avail + 4 + 2 * slot))
                .unwrap();
            dq.next_avail = dq.next_avail.wrapping_add(1);
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.mem
            .write_obj(dq.next_avail.to_le(), GuestAddress(avail + 2))
            .unwrap();
    }

    /// Offers again, unchanged, every chain the device returned on queue `q` since the last
    /// call (a TX chain is sent again, an RX buffer is posted again, contents unread), with
    /// one avail index store and a kick if the device asks. Returns how many. The cheapest
    /// way to keep a queue full, for load generators.
    pub fn recycle(&mut self, q: u16) -> usize {
        self.recycle_counting(q).0
    }

    /// [`Self::recycle`], also returning the bytes the device wrote into (or took from)
    /// the chains, as their used lengths say.
    pub fn recycle_counting(&mut self, q: u16) -> (usize, u64) {
        let used = self.used_idx(q);
        let mut heads = Vec::new();
        let mut bytes = 0u64;
        while self.queues[usize::from(q)].last_used != used {
            let at = self.queues[usize::from(q)].last_used;
            let (head, len) = self.used_entry(q, at);
            heads.push(head);
            bytes += u64::from(len);
            self.queues[usize::from(q)].last_used = at.wrapping_add(1);
        }
        if !heads.is_empty() {
            self.make_available(q, &heads);
        }
        (heads.len(), bytes)
    }

    /// [`Self::recycle`] of at most `max` chains (the oldest the device returned); the
    /// others stay returned for a later call. For generators that pace what they offer.
    pub fn recycle_at_most(&mut self, q: u16, max: usize) -> usize {
        let used = self.used_idx(q);
        let mut heads = Vec::new();
        while heads.len() < max && self.queues[usize::from(q)].last_used != used {
            let at = self.queues[usize::from(q)].last_used;
            heads.push(self.used_entry(q, at).0);
            self.queues[usize::from(q)].last_used = at.wrapping_add(1);
        }
        if !heads.is_empty() {
            self.make_available(q, &heads);
        }
        heads.len()
    }

    /// Kicks queue `q`.
    pub fn kick(&self, q: u16) {
        let _ = self.queues[usize::from(q)].kick.write(1);
    }

    /// Sends `frame` on TX queue `q` behind a zeroed virtio-net header, in one descriptor.
    pub fn send(&mut self, q: u16, frame: &[u8]) {
        self.send_split(q, frame, &[]);
    }

    /// Sends `frame` with the header+frame bytes split at the given offsets into several
    /// chained descriptors.
    pub fn send_split(&mut self, q: u16, frame: &[u8], cuts: &[usize]) {
        self.send_split_with_header(q, [0; HDR_LEN], frame, cuts);
    }

    /// Sends `frame` behind the virtio-net header `header`, the whole split at the given
    /// offsets into chained descriptors (each at most [`BUF_STRIDE`] bytes).
    pub fn send_split_with_header(
        &mut self,
        q: u16,
        header: [u8; HDR_LEN],
        frame: &[u8],
        cuts: &[usize],
    ) {
        let head = self.write_chain(q, header, frame, cuts);
        self.make_available(q, &[head]);
    }

    /// Puts each frame behind its virtio-net header on TX queue `q`, split as
    /// [`Self::send_split_with_header`] splits it, and publishes them all with one avail
    /// index store, without kicking (as [`Self::offer_quietly`]).
    pub fn offer_quietly_with_headers(
        &mut self,
        q: u16,
        frames: &[([u8; HDR_LEN], Vec<u8>)],
        cuts: &[usize],
    ) {
        let heads: Vec<u16> = frames
            .iter()
            .map(|(header, frame)| self.write_chain(q, *header, frame, cuts))
            .collect();
        self.publish_avail(q, &heads);
    }

    /// Writes `frame` behind `header` into descriptors of queue `q` chained as `cuts` say;
    /// returns the chain's head.
    fn write_chain(&mut self, q: u16, header: [u8; HDR_LEN], frame: &[u8], cuts: &[usize]) -> u16 {
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(frame);
        let mut bounds = vec![0];
        bounds.extend(cuts.iter().copied().filter(|&c| c > 0 && c < bytes.len()));
        bounds.push(bytes.len());
        let descs = self.alloc(q, bounds.len() - 1);
        for (i, w) in bounds.windows(2).enumerate() {
            let d = descs[i];
            let addr = self.queues[usize::from(q)].buf_addr(d);
            assert!((w[1] - w[0]) as u64 <= BUF_STRIDE);
            self.mem
                .write_slice(&bytes[w[0]..w[1]], GuestAddress(addr))
                .unwrap();
            let last = i + 1 == descs.len();
            let (flags, next) = if last {
                (0, 0)
            } else {
                (VRING_DESC_F_NEXT as u16, descs[i + 1])
            };
            self.write_desc(q, d, addr, (w[1] - w[0]) as u32, flags, next);
        }
        descs[0]
    }

    /// Sends `frame` through an indirect descriptor table: the header and the frame are
    /// split at `cuts` into table entries, the ring holds one INDIRECT descriptor.
    pub fn send_indirect(&mut self, q: u16, frame: &[u8], cuts: &[usize]) {
        const INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
        let mut bytes = vec![0u8; HDR_LEN];
        bytes.extend_from_slice(frame);
        let mut bounds = vec![0];
        bounds.extend(cuts.iter().copied().filter(|&c| c > 0 && c < bytes.len()));
        bounds.push(bytes.len());
        let d = self.alloc(q, 1)[0];
        let base = self.queues[usize::from(q)].buf_addr(d);
        // Table at the start of the slot, data after it.
        let n = bounds.len() - 1;
        let mut data_at = base + 16 * n as u64;
        for (i, w) in bounds.windows(2).enumerate() {
            let len = (w[1] - w[0]) as u64;
            self.mem
                .write_slice(&bytes[w[0]..w[1]], GuestAddress(data_at))
                .unwrap();
            let (flags, next) = if i + 1 < n {
                (VRING_DESC_F_NEXT as u16, i as u16 + 1)
            } else {
                (0, 0)
            };
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&data_at.to_le_bytes());
            raw[8..12].copy_from_slice(&(len as u32).to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem
                .write_slice(&raw, GuestAddress(base + 16 * i as u64))
                .unwrap();
            data_at += len;
        }
        assert!(data_at - base <= BUF_STRIDE);
        self.write_desc(q, d, base, 16 * n as u32, INDIRECT, 0);
        self.make_available(q, &[d]);
    }

    /// Offers a raw chain of (addr, len, write) descriptors on queue `q`.
    pub fn offer_raw_chain(&mut self, q: u16, descs: &[(u64, u32, bool)]) {
        let ids = self.alloc(q, descs.len());
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            let next = if i + 1 < ids.len() {
                flags |= VRING_DESC_F_NEXT as u16;
                ids[i + 1]
            } else {
                0
            };
            self.write_desc(q, ids[i], addr, len, flags, next);
        }
        self.make_available(q, &ids[..1]);
    }

    /// The device's used index of queue `q`.
    pub fn used_idx(&self, q: u16) -> u16 {
        let dq = &self.queues[usize::from(q)];
        u16::from_le(self.mem.read_obj(GuestAddress(dq.used_addr() + 2)).unwrap())
    }

    /// The used index up to which returned chains were taken (by [`Self::reap_tx`] or
    /// [`Self::recv`]).
    pub fn taken_idx(&self, q: u16) -> u16 {
        self.queues[usize::from(q)].last_used
    }

    /// Whether the device returned chains on queue `q` that were not taken yet.
    pub fn has_used(&self, q: u16) -> bool {
        self.used_idx(q) != self.queues[usize::from(q)].last_used
    }

    /// Writes the driver's avail index of queue `q` without putting anything on the ring (a
    /// corrupt guest), and kicks.
    pub fn corrupt_avail_idx(&mut self, q: u16, idx: u16) {
        let dq = &self.queues[usize::from(q)];
        self.mem
            .write_obj(idx.to_le(), GuestAddress(dq.avail_addr() + 2))
            .unwrap();
        let _ = dq.kick.write(1);
    }

    /// Takes descriptors off the free list, for chains built by hand.
    pub fn alloc_descs(&mut self, q: u16, n: usize) -> Vec<u16> {
        self.alloc(q, n)
    }

    /// Fills guest memory `[addr, addr + len)` with `byte`.
    pub fn fill(&self, addr: u64, len: usize, byte: u8) {
        self.mem
            .write_slice(&vec![byte; len], GuestAddress(addr))
            .unwrap();
    }

    /// The first offset in `[addr, addr + len)` not holding `byte`, if any.
    pub fn find_changed(&self, addr: u64, len: usize, byte: u8) -> Option<u64> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf.iter().position(|&b| b != byte).map(|i| addr + i as u64)
    }

    /// The driver's avail index of queue `q`.
    pub fn avail_idx(&self, q: u16) -> u16 {
        self.queues[usize::from(q)].next_avail
    }

    fn used_entry(&self, q: u16, n: u16) -> (u16, u32) {
        let dq = &self.queues[usize::from(q)];
        let slot = u64::from(n % QUEUE_SIZE);
        let e: [u32; 2] = self
            .mem
            .read_obj(GuestAddress(dq.used_addr() + 4 + 8 * slot))
            .unwrap();
        (u32::from_le(e[0]) as u16, u32::from_le(e[1]))
    }

    /// Frees the descriptors of every chain the device returned on TX queue `q`, and says
    /// how many chains that was.
    pub fn reap_tx(&mut self, q: u16) -> usize {
        let used = self.used_idx(q);
        let mut n = 0;
        while self.queues[usize::from(q)].last_used != used {
            let at = self.queues[usize::from(q)].last_used;
            let (head, _) = self.used_entry(q, at);
            self.free_chain(q, head);
            self.queues[usize::from(q)].last_used = at.wrapping_add(1);
            n += 1;
        }
        n
    }

    fn free_chain(&mut self, q: u16, head: u16) {
        let mut d = head;
        for _ in 0..QUEUE_SIZE {
            let dq = &self.queues[usize::from(q)];
            let raw: [u8; 16] = self
                .mem
                .read_obj(GuestAddress(dq.desc_addr() + u64::from(d) * 16))
                .unwrap();
            self.queues[usize::from(q)].free.push(d);
            let flags = u16::from_le_bytes([raw[12], raw[13]]);
            if flags & VRING_DESC_F_NEXT as u16 == 0 {
                break;
            }
            d = u16::from_le_bytes([raw[14], raw[15]]);
        }
    }

    /// Takes every frame the device delivered on RX queue `q` since the last call. Buffers
    /// are not re-offered.
    pub fn recv(&mut self, q: u16) -> Vec<Received> {
        let mrg = self.features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let mut out = Vec::new();
        let used = self.used_idx(q);
        while self.queues[usize::from(q)].last_used != used {
            let at = self.queues[usize::from(q)].last_used;
            let (head, len) = self.used_entry(q, at);
            let addr = self.queues[usize::from(q)].buf_addr(head);
            let mut data = vec![0u8; len as usize];
            self.mem.read_slice(&mut data, GuestAddress(addr)).unwrap();
            self.free_chain(q, head);
            let mut next = at.wrapping_add(1);
            assert!(
                data.len() >= HDR_LEN,
                "used length {len} shorter than the header"
            );
            let num_buffers = u16::from_le_bytes([data[10], data[11]]);
            let mut header = [0u8; HDR_LEN];
            header.copy_from_slice(&data[..HDR_LEN]);
            let mut heads = vec![head];
            let mut used_lens = vec![len];
            let mut frame = data[HDR_LEN..].to_vec();
            if mrg {
                for _ in 1..num_buffers {
                    assert_ne!(
                        next, used,
                        "num_buffers {num_buffers} but fewer used entries"
                    );
                    let (h, l) = self.used_entry(q, next);
                    let mut more = vec![0u8; l as usize];
                    let a = self.queues[usize::from(q)].buf_addr(h);
                    self.mem.read_slice(&mut more, GuestAddress(a)).unwrap();
                    self.free_chain(q, h);
                    frame.extend_from_slice(&more);
                    used_lens.push(l);
                    heads.push(h);
                    next = next.wrapping_add(1);
                }
            }
            self.queues[usize::from(q)].last_used = next;
            out.push(Received {
                frame,
                num_buffers,
                used_lens,
                header,
                heads,
            });
        }
        out
    }

    /// Waits until `n` frames arrived on RX queue `q` (failing after `timeout`), then
    /// checks for a short while that no more come.
    pub fn expect_frames(&mut self, q: u16, n: usize, timeout: Duration) -> Vec<Received> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + timeout;
        while got.len() < n {
            got.extend(self.recv(q));
            if std::time::Instant::now() > deadline {
                panic!("expected {n} frames on queue {q}, got {}", got.len());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        got.extend(self.recv(q));
        assert_eq!(got.len(), n, "more frames than expected on queue {q}");
        got
    }

    /// Waits until at least `n` frames arrived on RX queue `q` and returns all that did.
    pub fn expect_frames_at_least(&mut self, q: u16, n: usize, timeout: Duration) -> Vec<Received> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + timeout;
        while got.len() < n {
            got.extend(self.recv(q));
            assert!(
                std::time::Instant::now() < deadline,
                "expected at least {n} frames on queue {q}, got {}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    }

    /// Checks that nothing arrives on RX queue `q` for `quiet`.
    pub fn expect_nothing(&mut self, q: u16, quiet: Duration) {
        std::thread::sleep(quiet);
        let got = self.recv(q);
        assert!(
            got.is_empty(),
            "unexpected frames on queue {q}: {}",
            got.len()
        );
    }

    /// Waits until the device consumed every chain offered on TX queue `q`.
    pub fn wait_tx_done(&mut self, q: u16, timeout: Duration) {
        wait_until(timeout, "TX chains to be consumed", || {
            self.reap_tx(q);
            (self.used_idx(q) == self.avail_idx(q)).then_some(())
        });
    }
}
