//! AF_XDP ports: frames to and from one queue of a host interface, through the kernel's
//! XDP path, without its network stack.
//!
//! The port binds an AF_XDP socket to a queue of an interface (`ifname`, `queue`): libxdp
//! ([`libxdp`]) loads the XDP program that steers the queue's frames to the socket. The
//! socket's UMEM, the memory frames are received into and sent from, is the port's own
//! buffer pool, mapped like a VM's memory (a [`FrameMem`]) so the data path reads and
//! writes it through the same checked views. Each frame is copied once: from the UMEM into
//! the destination VM's buffers, or from the sending VM's buffers into the UMEM.
//!
//! The UMEM has [`UMEM_FRAMES`] frames of [`FRAME_SIZE`] bytes: the first half is lent to
//! the kernel through the fill ring for receiving, the second half sends. A worker owns
//! the receiving side while it polls the port; the sending side is locked once per burst by
//! the worker delivering to it (several may).
//!
//! Modes ([`XdpMode`]): native with zero-copy where the driver offers it, native (the
//! driver runs the program, the kernel copies), or generic (on socket buffers, any
//! interface; veth in the tests). Best effort tries them in that order.

mod egress;
mod ingress;
pub mod libxdp;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use crate::frame::FrameMem;
use crate::interface_watch::{Health, Watch, Watched};
use crate::port::{Attachment, PortHandle, RunningPort, StartError};
use libxdp::{Attach, Consumer, Geometry, Producer, Socket, SocketError, XdpDesc};

/// Bytes of one UMEM frame (a page: the kernel's largest aligned frame).
pub const FRAME_SIZE: u32 = 4096;
/// Entries of each of the socket's rings.
pub const RING_SIZE: u32 = 2048;
/// Frames in the UMEM: one ring's worth for receiving, one for sending.
pub const UMEM_FRAMES: u32 = 2 * RING_SIZE;
/// The longest frame a port sends: a whole UMEM frame. (Received ones start after the
/// kernel's headroom, 256 bytes, and are shorter.)
pub const MAX_SEND: u32 = FRAME_SIZE;
/// Frames of the UMEM that send: the free list never holds more (a completion handed back
/// twice is not counted twice).
const SENDING_FRAMES: usize = (UMEM_FRAMES - RING_SIZE) as usize;
/// Most `sendto` wake-ups per burst: generic mode sends a limited batch per call (32 on
/// today's kernels) and asks to be woken again for the rest.
const MAX_KICKS: usize = 8;

use vringswitch_config::AfXdpSettings;
/// Where the XDP program runs and who copies frames; the same names as OVS's `xdp-mode`.
/// Defined once, with the port's settings.
pub use vringswitch_config::XdpMode;

/// The ways of attaching to try for `mode`, in order.
fn attempts(mode: XdpMode) -> &'static [Attach] {
    const ZC: Attach = Attach {
        native: true,
        zero_copy: true,
    };
    const NATIVE: Attach = Attach {
        native: true,
        zero_copy: false,
    };
    const GENERIC: Attach = Attach {
        native: false,
        zero_copy: false,
    };
    match mode {
        XdpMode::BestEffort => &[ZC, NATIVE, GENERIC],
        XdpMode::NativeWithZerocopy => &[ZC],
        XdpMode::Native => &[NATIVE],
        XdpMode::Generic => &[GENERIC],
    }
}

/// The mode a socket got.
pub fn attach_name(a: Attach) -> &'static str {
    match (a.native, a.zero_copy) {
        (true, true) => "native-with-zerocopy",
        (true, false) => "native",
        _ => "generic",
    }
}

/// What the workers use of an AF_XDP port.
pub struct AfXdpQueue {
    // Field order matters: the socket goes first (libxdp still reads the rings' structures
    // as it deletes it, and the kernel lets go of the UMEM), then the rings, then the UMEM.
    socket: Socket,
    rx: Mutex<RxSide>,
    tx: Mutex<TxSide>,
    mem: FrameMem,
    attach: Attach,
    ifindex: u32,
    /// Handed over: nothing of the socket is undone here.
    left_open: bool,
    /// What the data path never reads, apart.
    cold: Box<ColdParts>,
    /// Sending found the interface gone. Workers leave the queue alone; the port's monitor
    /// withdraws it.
    failed: AtomicBool,
}

/// The parts of an [`AfXdpQueue`] the monitor and a handover use.
struct ColdParts {
    /// The UMEM's memory file, to hand to the process replacing this one.
    umem_file: std::fs::File,
    /// The queue of the interface the socket is bound to.
    queue: u32,
    /// What the kernel had counted as dropped on the socket when last looked at.
    counted: Mutex<KernelDrops>,
}

/// The receiving side: frames the kernel filled, and the fill ring they go back to.
pub struct RxSide {
    fill: Producer,
    rx: Consumer,
    /// Descriptors of the frames taken by [`RxSide::take`], until [`RxSide::recycle`].
    taken: Vec<XdpDesc>,
    rx_index: u32,
    kick_fd: i32,
}

/// The sending side: free UMEM frames, the TX ring and the completion ring.
pub struct TxSide {
    tx: Producer,
    comp: Consumer,
    /// Addresses of sending frames not in the kernel's hands.
    free: Vec<u64>,
    /// Frames written into the TX ring and not yet published.
    pending: u32,
    fd: i32,
}

/// Why sending stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// Every sending frame is with the kernel, or its TX ring is full.
    Full,
    /// The frame is longer than a UMEM frame.
    TooBig,
    /// The frame could not be read from its source.
    BadSource,
}

impl AfXdpQueue {
    /// Sets `ifname` up and binds a socket to its queue `queue`, in the first of `mode`'s
    /// ways the interface takes, with the fill ring stocked.
    pub fn open(ifname: &str, queue: u32, mode: XdpMode) -> Result<AfXdpQueue, AfXdpError> {
        let fail = |error: String| AfXdpError {
            ifname: ifname.to_owned(),
            error,
        };
        let ifindex = crate::netif::ifindex(ifname).ok_or_else(|| {
            fail(
                "there is no interface of that name (an AF_XDP port binds to one that exists)"
                    .into(),
            )
        })?;
        crate::netif::set_up(ifname, None).map_err(|e| fail(e.to_string()))?;
        let size = (UMEM_FRAMES * FRAME_SIZE) as usize;
        let (mem, umem_file) = crate::frame::shared_host_memory(size, "vringswitch-umem")
            .map_err(|e| fail(e.to_string()))?;
        let geometry = Geometry {
            ring: RING_SIZE,
            frame: FRAME_SIZE,
        };
        let mut errors = Vec::new();
        let mut made = None;
        for &attach in attempts(mode) {
            match Socket::create(&mem, ifname, queue, geometry, attach) {
                Ok(s) => {
                    made = Some((s, attach));
                    break;
                }
                Err(e @ SocketError::Load(_)) => return Err(fail(e.to_string())),
                // Not a matter of mode: the same for each.
                Err(e @ SocketError::Umem(_)) => return Err(fail(explain(&e))),
                Err(e) => errors.push(format!("{}: {}", attach_name(attach), explain(&e))),
            }
        }
        let Some((mut socket, attach)) = made else {
            return Err(fail(format!(
                "cannot bind an AF_XDP socket to queue {queue} ({})",
                errors.join("; ")
            )));
        };
        let broken = || fail("libxdp handed back no rings".into());
        let (fill, rx) = socket.take_rx_side().ok_or_else(broken)?;
        let (tx, comp) = socket.take_tx_side().ok_or_else(broken)?;
        let fd = socket.fd();
        let mut rx = RxSide {
            fill,
            rx,
            taken: Vec::with_capacity(RING_SIZE as usize),
            rx_index: 0,
            kick_fd: fd,
        };
        // The receiving half of the UMEM goes to the kernel at once.
        let idx = rx
            .fill
            .reserve(RING_SIZE)
            .ok_or_else(|| fail("the fill ring is smaller than it was made".into()))?;
        for i in 0..RING_SIZE {
            rx.fill
                .set_addr(idx.wrapping_add(i), u64::from(i * FRAME_SIZE));
        }
        rx.fill.submit(RING_SIZE);
        let tx = TxSide {
            tx,
            comp,
            free: (RING_SIZE..UMEM_FRAMES)
                .rev()
                .map(|i| u64::from(i * FRAME_SIZE))
                .collect(),
            pending: 0,
            fd,
        };
        live(ifindex, 1);
        Ok(AfXdpQueue {
            socket,
            rx: Mutex::new(rx),
            tx: Mutex::new(tx),
            mem,
            attach,
            ifindex,
            left_open: false,
            cold: Box::new(ColdParts {
                umem_file,
                queue,
                counted: Mutex::new(KernelDrops::default()),
            }),
            failed: AtomicBool::new(false),
        })
    }

    /// Carries on the socket the process before this one bound to queue `queue` of
    /// `ifname` ([`HandedQueue`]): checked to be an AF_XDP socket bound there, its UMEM a
    /// sealed memory file of the size this release makes, its free sending frames frames
    /// of the sending half, each once.
    pub fn adopt(ifname: &str, queue: u32, handed: HandedQueue) -> Result<AfXdpQueue, AfXdpError> {
        let fail = |error: String| AfXdpError {
            ifname: ifname.to_owned(),
            error: format!("the socket handed over cannot be carried on: {error}"),
        };
        let ifindex = crate::netif::ifindex(ifname)
            .ok_or_else(|| fail("there is no interface of that name".into()))?;
        if handed.bound != (ifindex, queue) {
            return Err(fail(format!(
                "it is bound to queue {} of interface index {}, not queue {queue} of {ifindex}",
                handed.bound.1, handed.bound.0
            )));
        }
        let size = (UMEM_FRAMES * FRAME_SIZE) as usize;
        let mem = crate::frame::map_shared(&handed.umem, size).map_err(|e| fail(e.to_string()))?;
        let sending = u64::from(RING_SIZE * FRAME_SIZE)..u64::from(UMEM_FRAMES * FRAME_SIZE);
        let mut seen = std::collections::HashSet::new();
        let well_formed = handed.free.len() <= SENDING_FRAMES
            && handed
                .free
                .iter()
                .all(|&a| sending.contains(&a) && a % u64::from(FRAME_SIZE) == 0 && seen.insert(a));
        if !well_formed {
            return Err(fail(
                "its free frames are not frames of the sending half, each once".into(),
            ));
        }
        let geometry = Geometry {
            ring: RING_SIZE,
            frame: FRAME_SIZE,
        };
        let mut socket =
            Socket::adopt(handed.socket, &mem, geometry).map_err(|e| fail(explain(&e)))?;
        let broken = || fail("its rings could not be mapped".into());
        let (fill, rx) = socket.take_rx_side().ok_or_else(broken)?;
        let (tx, comp) = socket.take_tx_side().ok_or_else(broken)?;
        let fd = socket.fd();
        live(ifindex, 1);
        Ok(AfXdpQueue {
            socket,
            rx: Mutex::new(RxSide {
                fill,
                rx,
                taken: Vec::with_capacity(RING_SIZE as usize),
                rx_index: 0,
                kick_fd: fd,
            }),
            tx: Mutex::new(TxSide {
                tx,
                comp,
                free: handed.free,
                pending: 0,
                fd,
            }),
            mem,
            attach: handed.attach,
            ifindex,
            left_open: false,
            cold: Box::new(ColdParts {
                umem_file: handed.umem,
                queue,
                counted: Mutex::new(KernelDrops {
                    no_room: handed.counted.0,
                    invalid: handed.counted.1,
                }),
            }),
            failed: AtomicBool::new(false),
        })
    }

    /// What the process replacing this one needs to carry the socket on, between two
    /// bursts (no worker holds either side): the socket, the UMEM's file, how it is
    /// attached, and the sending frames that are free.
    pub fn hand_over(&self) -> Result<HandedQueue, String> {
        let rx = self
            .rx()
            .ok_or("a worker is in the middle of receiving from it")?;
        let tx = self.tx();
        if !rx.taken.is_empty() || tx.pending != 0 {
            return Err("a worker is in the middle of a burst on it".into());
        }
        let socket = self
            .socket
            .dup_fd()
            .map_err(|e| format!("cannot duplicate its socket: {e}"))?;
        let umem = self
            .cold
            .umem_file
            .try_clone()
            .map_err(|e| format!("cannot duplicate its memory file: {e}"))?;
        let counted = self.cold.counted.lock().unwrap_or_else(|p| p.into_inner());
        Ok(HandedQueue {
            socket,
            umem,
            attach: self.attach,
            free: tx.free.clone(),
            bound: (self.ifindex, self.cold.queue),
            counted: (counted.no_room, counted.invalid),
        })
    }

    /// Lets go of the socket without deleting it: the process that adopted it carries it
    /// on, with the XDP program and its map entry as they are.
    pub fn leave_open(mut self) {
        self.left_open = true;
        self.socket.leave_open();
    }

    /// The UMEM: the memory frames are received into and sent from.
    pub fn mem(&self) -> &FrameMem {
        &self.mem
    }

    /// The socket's descriptor: readable when received frames wait.
    pub fn fd(&self) -> i32 {
        self.socket.fd()
    }

    /// How the socket is attached.
    pub fn attach(&self) -> Attach {
        self.attach
    }

    /// Counters the kernel keeps for the socket.
    pub fn statistics(&self) -> io::Result<libxdp::Statistics> {
        self.socket.statistics()
    }

    /// The receiving side, unless another worker holds it (a topology change moved the
    /// port between workers and the old one is still in its burst).
    #[inline]
    pub fn rx(&self) -> Option<MutexGuard<'_, RxSide>> {
        match self.rx.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The sending side, for one burst.
    #[inline]
    pub fn tx(&self) -> MutexGuard<'_, TxSide> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn mark_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    #[inline]
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Whether the interface the socket is bound to is still there (not deleted, nor
    /// replaced by another of the same name).
    pub fn interface_is_there(&self, ifname: &str) -> bool {
        crate::netif::ifindex(ifname) == Some(self.ifindex)
    }
}

/// What a process hands over of an AF_XDP socket ([`AfXdpQueue::hand_over`]).
#[derive(Debug)]
pub struct HandedQueue {
    pub socket: std::os::fd::OwnedFd,
    pub umem: std::fs::File,
    pub attach: Attach,
    /// Sending frames not in the kernel's hands.
    pub free: Vec<u64>,
    /// The interface index and queue it is bound to.
    pub bound: (u32, u32),
    /// What the kernel had counted as dropped on the socket (for want of room, invalid)
    /// and the old process added to its counters.
    pub counted: (u64, u64),
}

/// AF_XDP sockets of this process, by interface index: libxdp removes the XDP program
/// with the last of its own sockets on an interface; for sockets adopted from the process
/// before this one (which libxdp knows nothing of) it is removed here, with the last
/// socket of either kind.
fn live(ifindex: u32, delta: isize) -> usize {
    static LIVE: Mutex<Vec<(u32, usize)>> = Mutex::new(Vec::new());
    let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    let at = match live.iter().position(|(i, _)| *i == ifindex) {
        Some(at) => at,
        None => {
            live.push((ifindex, 0));
            live.len() - 1
        }
    };
    let n = live[at].1.saturating_add_signed(delta);
    live[at].1 = n;
    if n == 0 {
        live.swap_remove(at);
    }
    n
}

impl Drop for AfXdpQueue {
    fn drop(&mut self) {
        let left = live(self.ifindex, -1);
        // An adopted socket, the last of this process on its interface: its program goes
        // (a libxdp socket's goes with libxdp's own deletion).
        if !self.left_open && self.socket.is_adopted() && left == 0 {
            if let Err(e) = libxdp::detach_programs(self.ifindex) {
                tracing::warn!(ifindex = self.ifindex, error = %e,
                    "cannot remove the XDP program of an AF_XDP port carried over");
            }
        }
    }
}

/// What the kernel's refusal means for an AF_XDP socket.
fn explain(e: &SocketError) -> String {
    let (SocketError::Socket(io) | SocketError::Umem(io)) = e else {
        return e.to_string();
    };
    let umem = matches!(e, SocketError::Umem(_));
    let hint = match io.raw_os_error() {
        Some(libc::EPERM) => " (needs CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF, or root)",
        Some(libc::ENOBUFS) | Some(libc::ENOMEM) if umem => {
            " (the frame memory, 16 MiB, is over the locked-memory limit: raise it \
             (LimitMEMLOCK=) or give the daemon CAP_IPC_LOCK)"
        }
        Some(libc::EOPNOTSUPP) => " (the driver does not offer it)",
        Some(libc::EINVAL) => " (the interface has no such queue, or its MTU is too large)",
        Some(libc::EBUSY) | Some(libc::EEXIST) => {
            " (another XDP program or socket holds the interface)"
        }
        _ => "",
    };
    if umem {
        format!("cannot register the frame memory with the kernel: {io}{hint}")
    } else {
        format!("{io}{hint}")
    }
}

impl RxSide {
    /// Takes up to `max` received frames; they stay valid until [`Self::recycle`].
    #[inline]
    pub fn take(&mut self, max: usize) -> usize {
        debug_assert!(self.taken.is_empty(), "frames taken twice");
        let (n, idx) = self.rx.peek(max.min(RING_SIZE as usize) as u32);
        self.rx_index = idx;
        for i in 0..n {
            self.taken.push(self.rx.desc(idx.wrapping_add(i)));
        }
        n as usize
    }

    /// Frame `i` of those taken: its address in the UMEM and its length.
    #[inline]
    pub fn frame(&self, i: usize) -> XdpDesc {
        self.taken[i]
    }

    /// Gives the taken frames back to the kernel to receive into again.
    #[inline]
    pub fn recycle(&mut self) {
        let n = self.taken.len() as u32;
        if n == 0 {
            return;
        }
        // The fill ring holds every receiving frame: room for those taken out of it.
        if let Some(idx) = self.fill.reserve(n) {
            for (i, d) in self.taken.iter().enumerate() {
                // The frame's start: the kernel put the data after its headroom.
                let base = d.addr - d.addr % u64::from(FRAME_SIZE);
                self.fill.set_addr(idx.wrapping_add(i as u32), base);
            }
            self.fill.submit(n);
        }
        self.rx.release(n);
        self.taken.clear();
        if self.fill.needs_wakeup() {
            libxdp::wake_rx(self.kick_fd);
        }
    }
}

impl TxSide {
    /// Takes back the frames the kernel finished sending.
    #[inline]
    pub fn reclaim(&mut self) {
        let (n, idx) = self.comp.peek(RING_SIZE);
        for i in 0..n {
            let addr = self.comp.addr(idx.wrapping_add(i));
            // Only frames of the sending half were handed out; anything else is ignored.
            if (u64::from(RING_SIZE * FRAME_SIZE)..u64::from(UMEM_FRAMES * FRAME_SIZE))
                .contains(&addr)
                && self.free.len() < SENDING_FRAMES
            {
                self.free.push(addr - addr % u64::from(FRAME_SIZE));
            }
        }
        self.comp.release(n);
    }

    /// Queues one frame of `len` bytes, written by `write` into the UMEM frame at the
    /// address it is given (which returns false if the source could not be read).
    #[inline]
    pub fn send(&mut self, len: u32, write: impl FnOnce(u64) -> bool) -> Result<(), SendError> {
        if len > MAX_SEND {
            return Err(SendError::TooBig);
        }
        if self.free.is_empty() {
            self.reclaim();
        }
        let Some(addr) = self.free.pop() else {
            return Err(SendError::Full);
        };
        if !write(addr) {
            self.free.push(addr);
            return Err(SendError::BadSource);
        }
        let Some(idx) = self.tx.reserve(1) else {
            self.free.push(addr);
            return Err(SendError::Full);
        };
        self.tx.set_desc(
            idx,
            XdpDesc {
                addr,
                len,
                options: 0,
            },
        );
        self.pending += 1;
        Ok(())
    }

    /// Publishes the queued frames and wakes the kernel to send them. Returns false if the
    /// interface is gone.
    #[inline]
    pub fn flush(&mut self) -> bool {
        if self.pending == 0 {
            return true;
        }
        self.tx.submit(self.pending);
        self.pending = 0;
        for _ in 0..MAX_KICKS {
            if !self.tx.needs_wakeup() {
                break;
            }
            match libxdp::wake_tx(self.fd) {
                Ok(true) => break,
                // Generic mode sends a batch per call: again for the rest. (A full device
                // queue gives up after a few: the frames go with the next burst.)
                Ok(false) => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// How an AF_XDP port is set up.
#[derive(Debug, Clone)]
pub struct AfXdpPortConfig {
    pub ifname: String,
    pub queue: u32,
    pub mode: XdpMode,
}

/// Why an AF_XDP port could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot open an AF_XDP socket on interface {ifname}: {error}")]
pub struct AfXdpError {
    pub ifname: String,
    pub error: String,
}

/// A running AF_XDP port: its socket stays bound until [`AfXdpPort::stop`]. A monitor
/// thread takes the port down when the interface disappears and up again once an interface
/// of that name exists again; it also counts the frames the kernel dropped for want of room
/// in the socket's rings.
pub struct AfXdpPort {
    handle: Arc<PortHandle>,
    ifname: String,
    watch: Watch,
}

/// Binds a socket on the interface and publishes it to the workers.
fn publish(handle: &PortHandle, config: &AfXdpPortConfig) -> Result<(), AfXdpError> {
    let queue = AfXdpQueue::open(&config.ifname, config.queue, config.mode)?;
    tracing::info!(
        port = %handle.name(),
        ifname = %config.ifname,
        queue = config.queue,
        mode = %attach_name(queue.attach()),
        "AF_XDP socket bound"
    );
    handle.set_connected(true);
    handle.attach(Arc::new(Attachment::AfXdp(queue)));
    Ok(())
}

impl AfXdpPort {
    pub fn start(
        handle: Arc<PortHandle>,
        config: AfXdpPortConfig,
    ) -> Result<AfXdpPort, AfXdpError> {
        publish(&handle, &config)?;
        Self::watch(handle, config)
    }

    /// Carries on the socket the process before this one handed over (`None`: its
    /// interface was gone then; the port starts as at a start).
    pub fn take_over(
        handle: Arc<PortHandle>,
        config: AfXdpPortConfig,
        handed: Option<HandedQueue>,
    ) -> Result<AfXdpPort, AfXdpError> {
        let Some(handed) = handed else {
            return Self::start(handle, config);
        };
        let queue = AfXdpQueue::adopt(&config.ifname, config.queue, handed)?;
        tracing::info!(port = %handle.name(), ifname = %config.ifname, queue = config.queue,
            mode = %attach_name(queue.attach()),
            "AF_XDP socket carried on from the previous process");
        handle.set_connected(true);
        handle.attach(Arc::new(Attachment::AfXdp(queue)));
        Self::watch(handle, config)
    }

    /// Starts the port's monitor.
    fn watch(handle: Arc<PortHandle>, config: AfXdpPortConfig) -> Result<AfXdpPort, AfXdpError> {
        let ifname = config.ifname.clone();
        let watched = XdpWatch { config };
        let watch =
            Watch::start(format!("xdp-{ifname}"), handle.clone(), watched).map_err(|e| {
                AfXdpError {
                    ifname: ifname.clone(),
                    error: e.to_string(),
                }
            })?;
        Ok(AfXdpPort {
            handle,
            ifname,
            watch,
        })
    }

    pub fn handle(&self) -> &Arc<PortHandle> {
        &self.handle
    }

    /// Withdraws the socket from the workers; it closes (and libxdp removes its XDP
    /// program) once the last worker let go of it.
    pub fn stop(&mut self) {
        if self.watch.stop(&self.handle) {
            tracing::debug!(port = %self.handle.name(), ifname = %self.ifname, "AF_XDP port stopped");
        }
    }
}

impl Drop for AfXdpPort {
    fn drop(&mut self) {
        self.stop();
    }
}

impl RunningPort for AfXdpPort {
    fn handle(&self) -> &Arc<PortHandle> {
        &self.handle
    }

    fn stop(&mut self) {
        AfXdpPort::stop(self)
    }

    /// A port whose interface is gone: the new process could not bind it, and would fail
    /// as a start does. (This one brings it up again once the interface is back.)
    fn handover_refusal(&self) -> Option<String> {
        let up = matches!(self.handle.attachment().as_deref(), Some(Attachment::AfXdp(q)) if !q.failed());
        (!up).then(|| {
            format!(
                "its interface {} is gone: upgrade once it is back, or remove the port",
                self.ifname
            )
        })
    }

    /// Hands over the socket (bound, its XDP program and map entry in place), the UMEM's
    /// memory file and the state of the sending half, then lets go of the socket without
    /// deleting it. Bytes: 1 if a socket follows (0: the interface was gone), then whether
    /// it is native and zero-copy (a byte each), the interface index and queue it is bound
    /// to (two u32), the kernel's drop counts as counted (two u64), and the free sending
    /// frames (a u32 count, then u64 addresses), little-endian;
    /// descriptors: the socket, the memory file.
    fn hand_over(&mut self) -> Result<crate::port::HandedPort, String> {
        let attachment = self.handle.attachment();
        let queue = match attachment.as_deref() {
            Some(Attachment::AfXdp(q)) if !q.failed() => {
                q.count_kernel_drops(&self.handle);
                Some(q.hand_over()?)
            }
            _ => None,
        };
        drop(attachment);
        let withdrawn = self.watch.stop_for_handover(&self.handle);
        self.handle.set_connected(false);
        // The socket stays as it is for the new process: not deleted here.
        if let Some(a) = withdrawn {
            match Arc::try_unwrap(a) {
                Ok(Attachment::AfXdp(q)) => q.leave_open(),
                Ok(_) => {}
                Err(shared) => std::mem::forget(shared),
            }
        }
        let mut handed = crate::port::HandedPort::default();
        let Some(q) = queue else {
            handed.data.push(0);
            return Ok(handed);
        };
        handed
            .data
            .extend([1, u8::from(q.attach.native), u8::from(q.attach.zero_copy)]);
        handed.data.extend(q.bound.0.to_le_bytes());
        handed.data.extend(q.bound.1.to_le_bytes());
        handed.data.extend(q.counted.0.to_le_bytes());
        handed.data.extend(q.counted.1.to_le_bytes());
        handed.data.extend((q.free.len() as u32).to_le_bytes());
        for a in &q.free {
            handed.data.extend(a.to_le_bytes());
        }
        handed.fds.push(q.socket);
        handed.fds.push(q.umem.into());
        Ok(handed)
    }
}

/// The socket of a [`crate::port::HandedPort`] an AF_XDP port wrote, or why it does not
/// read.
fn read_handed(handed: crate::port::HandedPort) -> Result<Option<HandedQueue>, String> {
    let d = &handed.data;
    let mut fds = handed.fds.into_iter();
    let (Some(&has), rest) = (d.first(), d.get(1..).unwrap_or(&[])) else {
        return Err("no bytes".into());
    };
    if has == 0 && rest.is_empty() && fds.next().is_none() {
        return Ok(None);
    }
    let word = |at: usize, n: usize| -> Result<u64, String> {
        let b = rest.get(at..at + n).ok_or("cut short")?;
        let mut w = [0u8; 8];
        w[..n].copy_from_slice(b);
        Ok(u64::from_le_bytes(w))
    };
    let flag = |at: usize| match rest.get(at) {
        Some(0) => Ok(false),
        Some(1) => Ok(true),
        _ => Err("a flag that is neither 0 nor 1".to_string()),
    };
    if has != 1 {
        return Err("a flag that is neither 0 nor 1".into());
    }
    let attach = Attach {
        native: flag(0)?,
        zero_copy: flag(1)?,
    };
    let bound = (word(2, 4)? as u32, word(6, 4)? as u32);
    let counted = (word(10, 8)?, word(18, 8)?);
    let n = word(26, 4)? as usize;
    if n > SENDING_FRAMES || rest.len() != 30 + 8 * n {
        return Err(format!("{n} free frames in {} bytes", rest.len()));
    }
    let free = (0..n)
        .map(|i| word(30 + 8 * i, 8))
        .collect::<Result<Vec<_>, _>>()?;
    let (Some(socket), Some(umem), None) = (fds.next(), fds.next(), fds.next()) else {
        return Err("not a socket and a memory file".into());
    };
    Ok(Some(HandedQueue {
        socket,
        umem: std::fs::File::from(umem),
        attach,
        free,
        bound,
        counted,
    }))
}

/// Starts an AF_XDP port as its settings say (on the interface named after the port
/// unless `ifname` is given).
pub fn start_port(
    handle: Arc<PortHandle>,
    settings: &AfXdpSettings,
) -> Result<Box<dyn RunningPort>, StartError> {
    let config = config_of(&handle, settings);
    AfXdpPort::start(handle, config)
        .map(|p| Box::new(p) as Box<dyn RunningPort>)
        .map_err(StartError::new)
}

/// Carries on an AF_XDP port the process before this one handed over
/// ([`RunningPort::hand_over`]).
pub fn take_over_port(
    handle: Arc<PortHandle>,
    settings: &AfXdpSettings,
    handed: crate::port::HandedPort,
) -> Result<crate::port::TakenOver, StartError> {
    let config = config_of(&handle, settings);
    let queue = read_handed(handed).map_err(|e| {
        StartError::new(AfXdpError {
            ifname: config.ifname.clone(),
            error: format!("what the previous process handed over does not read: {e}"),
        })
    })?;
    AfXdpPort::take_over(handle, config, queue)
        .map(|p| (Box::new(p) as Box<dyn RunningPort>, Ok(())))
        .map_err(StartError::new)
}

fn config_of(handle: &PortHandle, settings: &AfXdpSettings) -> AfXdpPortConfig {
    AfXdpPortConfig {
        ifname: settings
            .ifname
            .clone()
            .unwrap_or_else(|| handle.name().to_owned()),
        queue: settings.queue.unwrap_or(0),
        mode: settings.xdp_mode.unwrap_or_default(),
    }
}

/// Frames the kernel dropped on a socket's way in, as counted so far.
#[derive(Debug, Default)]
struct KernelDrops {
    /// For want of room: the RX ring full, or no frame in the fill ring.
    no_room: u64,
    /// Descriptors it found invalid (the switch's own, on either ring).
    invalid: u64,
}

impl AfXdpQueue {
    /// Adds to the port's counters what the kernel dropped on the socket since last time.
    fn count_kernel_drops(&self, handle: &PortHandle) {
        self.cold
            .counted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_new(self, handle);
    }
}

impl KernelDrops {
    /// Adds to the port's counters what the kernel dropped on `q`'s socket since last time.
    fn add_new(&mut self, q: &AfXdpQueue, handle: &PortHandle) {
        let Ok(st) = q.statistics() else { return };
        let now = KernelDrops {
            no_room: st.rx_dropped + st.rx_ring_full,
            invalid: st.rx_invalid_descs + st.tx_invalid_descs,
        };
        let counters = handle.own_counters();
        counters.add_drop(
            crate::DropReason::NoRxBuffer,
            now.no_room.saturating_sub(self.no_room),
        );
        counters.add_drop(
            crate::DropReason::BadDescriptor,
            now.invalid.saturating_sub(self.invalid),
        );
        *self = now;
    }
}

/// The monitor's view of an AF_XDP port.
struct XdpWatch {
    config: AfXdpPortConfig,
}

impl Watched for XdpWatch {
    const WHAT: &'static str = "AF_XDP port's interface";

    fn ifname(&self) -> &str {
        &self.config.ifname
    }

    fn health(&mut self, handle: &PortHandle, att: &Attachment) -> Option<Health> {
        let Attachment::AfXdp(q) = att else {
            return None;
        };
        q.count_kernel_drops(handle);
        if !q.failed() && q.interface_is_there(&self.config.ifname) {
            return Some(Health::Up);
        }
        Some(Health::Gone)
    }

    fn may_return(&self) -> bool {
        crate::netif::ifindex(&self.config.ifname).is_some()
    }

    fn reopen(&mut self, handle: &PortHandle) -> Result<(), String> {
        publish(handle, &self.config).map_err(|e| e.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn fd() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
    }

    /// Bytes as `hand_over` writes them: a socket, two free frames.
    fn written() -> Vec<u8> {
        let mut d = vec![1, 1, 0];
        d.extend(7u32.to_le_bytes());
        d.extend(0u32.to_le_bytes());
        d.extend(5u64.to_le_bytes());
        d.extend(6u64.to_le_bytes());
        d.extend(2u32.to_le_bytes());
        let base = u64::from(RING_SIZE * FRAME_SIZE);
        d.extend(base.to_le_bytes());
        d.extend((base + u64::from(FRAME_SIZE)).to_le_bytes());
        d
    }

    fn handed(data: Vec<u8>, fds: usize) -> crate::port::HandedPort {
        crate::port::HandedPort {
            data,
            fds: (0..fds).map(|_| fd()).collect(),
        }
    }

    #[test]
    fn a_handed_socket_reads_back_and_anything_else_is_refused() {
        let q = read_handed(handed(written(), 2)).unwrap().unwrap();
        assert_eq!(q.bound, (7, 0));
        assert_eq!(q.counted, (5, 6));
        assert_eq!(q.free.len(), 2);
        assert!(q.attach.native && !q.attach.zero_copy);
        // No socket (the interface was gone): nothing.
        assert!(read_handed(handed(vec![0], 0)).unwrap().is_none());
        // Every truncation, a flag that is not one, too many frames, wrong descriptors.
        let good = written();
        for cut in 0..good.len() {
            assert!(
                read_handed(handed(good[..cut].to_vec(), 2)).is_err(),
                "cut {cut}"
            );
        }
        let mut bad = good.clone();
        bad[1] = 2;
        assert!(read_handed(handed(bad, 2)).is_err());
        let mut bad = good.clone();
        bad[27..31].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_handed(handed(bad, 2)).is_err());
        assert!(read_handed(handed(good.clone(), 1)).is_err());
        assert!(read_handed(handed(good, 3)).is_err());
        assert!(read_handed(handed(vec![0], 1)).is_err());
    }

    #[test]
    fn the_live_sockets_of_an_interface_are_counted() {
        // An interface index no test uses.
        let i = u32::MAX - 7;
        assert_eq!(live(i, 1), 1);
        assert_eq!(live(i, 1), 2);
        assert_eq!(live(i, -1), 1);
        assert_eq!(live(i, -1), 0);
        assert_eq!(live(i, -1), 0, "never below none");
    }
}
