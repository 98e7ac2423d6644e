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
    /// Sending found the interface gone. Workers leave the queue alone; the port's monitor
    /// withdraws it.
    failed: AtomicBool,
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
        let mem = crate::frame::host_memory(size).map_err(|e| fail(e.to_string()))?;
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
        Ok(AfXdpQueue {
            socket,
            rx: Mutex::new(rx),
            tx: Mutex::new(tx),
            mem,
            attach,
            ifindex,
            failed: AtomicBool::new(false),
        })
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
        let ifname = config.ifname.clone();
        let watched = XdpWatch {
            config,
            counted: KernelDrops::default(),
        };
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
}

/// Starts an AF_XDP port as its settings say (on the interface named after the port
/// unless `ifname` is given).
pub fn start_port(
    handle: Arc<PortHandle>,
    settings: &AfXdpSettings,
) -> Result<Box<dyn RunningPort>, StartError> {
    let config = AfXdpPortConfig {
        ifname: settings
            .ifname
            .clone()
            .unwrap_or_else(|| handle.name().to_owned()),
        queue: settings.queue.unwrap_or(0),
        mode: settings.xdp_mode.unwrap_or_default(),
    };
    AfXdpPort::start(handle, config)
        .map(|p| Box::new(p) as Box<dyn RunningPort>)
        .map_err(StartError::new)
}

/// An AF_XDP port is not carried over by an upgrade yet: the old process refuses the
/// upgrade while it has one ([`RunningPort::handover_refusal`]'s default), so nothing of
/// this kind ever arrives here; if something does, it is refused.
pub fn take_over_port(
    _handle: Arc<PortHandle>,
    settings: &AfXdpSettings,
    _handed: crate::port::HandedPort,
) -> Result<crate::port::TakenOver, StartError> {
    Err(StartError::new(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!(
            "AF_XDP port on {} cannot be carried over by an upgrade",
            settings.ifname.as_deref().unwrap_or("its interface")
        ),
    )))
}

/// Frames the kernel dropped on a socket's way in, as counted so far.
#[derive(Debug, Default)]
struct KernelDrops {
    /// For want of room: the RX ring full, or no frame in the fill ring.
    no_room: u64,
    /// Descriptors it found invalid (the switch's own, on either ring).
    invalid: u64,
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
    /// What the kernel had counted for the current socket when last looked at.
    counted: KernelDrops,
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
        self.counted.add_new(q, handle);
        if !q.failed() && q.interface_is_there(&self.config.ifname) {
            return Some(Health::Up);
        }
        self.counted = KernelDrops::default();
        Some(Health::Gone)
    }

    fn may_return(&self) -> bool {
        crate::netif::ifindex(&self.config.ifname).is_some()
    }

    fn reopen(&mut self, handle: &PortHandle) -> Result<(), String> {
        self.counted = KernelDrops::default();
        publish(handle, &self.config).map_err(|e| e.error)
    }
}
