//! libxdp, loaded when the first AF_XDP port starts, and the four rings of an AF_XDP socket.
//!
//! libxdp (Debian's `libxdp1`) loads the XDP program that steers a queue's frames to the
//! socket (its own default program, behind its dispatcher when bpffs is mounted), creates
//! the socket, registers the UMEM and maps the rings. It is opened with `dlopen` rather than
//! linked, so the daemon builds and runs without it: only an AF_XDP port needs it, and one
//! started without it says how to install it.
//!
//! The rings themselves are shared with the kernel: a producer and a consumer index in
//! mapped memory, and an array of entries. libxdp's ring operations are inline functions in
//! its header, so they are written here again (the same acquire and release orderings) over
//! the ring structure libxdp fills in, which is part of its ABI (`DEFINE_XSK_RING` in
//! `xsk.h`).
//!
//! This module and [`super`]'s memory are the only places AF_XDP ports use `unsafe`.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::frame::FrameMem;

/// The library's soname.
pub const LIBXDP: &str = "libxdp.so.1";

/// `struct xsk_ring_prod` and `struct xsk_ring_cons` (the same layout).
#[repr(C)]
#[derive(Debug)]
struct RawRing {
    cached_prod: u32,
    cached_cons: u32,
    mask: u32,
    size: u32,
    producer: *mut u32,
    consumer: *mut u32,
    ring: *mut c_void,
    flags: *mut u32,
}

impl RawRing {
    fn empty() -> RawRing {
        RawRing {
            cached_prod: 0,
            cached_cons: 0,
            mask: 0,
            size: 0,
            producer: std::ptr::null_mut(),
            consumer: std::ptr::null_mut(),
            ring: std::ptr::null_mut(),
            flags: std::ptr::null_mut(),
        }
    }

    /// Whether libxdp filled the ring in: its pointers set and its size a power of two.
    fn is_set_up(&self) -> bool {
        !self.producer.is_null()
            && !self.consumer.is_null()
            && !self.ring.is_null()
            && !self.flags.is_null()
            && self.size.is_power_of_two()
            && self.mask == self.size - 1
    }
}

/// `struct xsk_umem_config`.
#[repr(C)]
struct UmemConfig {
    fill_size: u32,
    comp_size: u32,
    frame_size: u32,
    frame_headroom: u32,
    flags: u32,
}

/// `struct xsk_socket_config`.
#[repr(C)]
struct SocketConfig {
    rx_size: u32,
    tx_size: u32,
    libxdp_flags: u32,
    xdp_flags: u32,
    bind_flags: u16,
}

/// `struct xdp_desc`: a frame in the UMEM.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpDesc {
    pub addr: u64,
    pub len: u32,
    pub options: u32,
}

type PrintFn = unsafe extern "C" fn(c_int, *const c_char, *mut c_void) -> c_int;

/// The functions of libxdp the ports use.
struct Api {
    umem_create: unsafe extern "C" fn(
        *mut *mut c_void,
        *mut c_void,
        u64,
        *mut RawRing,
        *mut RawRing,
        *const UmemConfig,
    ) -> c_int,
    umem_delete: unsafe extern "C" fn(*mut c_void) -> c_int,
    socket_create: unsafe extern "C" fn(
        *mut *mut c_void,
        *const c_char,
        u32,
        *mut c_void,
        *mut RawRing,
        *mut RawRing,
        *const SocketConfig,
    ) -> c_int,
    socket_delete: unsafe extern "C" fn(*mut c_void),
    socket_fd: unsafe extern "C" fn(*const c_void) -> c_int,
    multiprog_get: unsafe extern "C" fn(c_int) -> *mut c_void,
    multiprog_detach: unsafe extern "C" fn(*mut c_void) -> c_int,
    multiprog_close: unsafe extern "C" fn(*mut c_void),
    get_error: unsafe extern "C" fn(*const c_void) -> std::ffi::c_long,
    /// Kept loaded for the life of the process: the functions above point into it.
    _lib: libloading::Library,
}

/// Why libxdp could not be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "AF_XDP ports need libxdp ({LIBXDP}), which could not be loaded ({0}); install it \
     (Debian: apt-get install libxdp1)"
)]
pub struct LoadError(String);

/// libxdp, loaded once.
fn api() -> Result<&'static Api, LoadError> {
    static API: OnceLock<Result<Api, LoadError>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn load() -> Result<Api, LoadError> {
    let err = |e: libloading::Error| LoadError(e.to_string());
    // SAFETY: libxdp's and libbpf's initialisers only set up their own state.
    let lib = unsafe { libloading::Library::new(LIBXDP) }.map_err(err)?;
    // SAFETY: for each `get`, the types are those of the functions' prototypes in libxdp's
    // xsk.h (`xsk_umem__create`, ...) and libxdp.h / libbpf.h (the multiprog functions,
    // `libxdp_get_error`, the print setters), with pointers to the opaque `xsk_umem`,
    // `xsk_socket` and `xdp_multiprog` as `c_void`; the setters take a callback of the type
    // `print` has, or none.
    unsafe {
        let api = Api {
            umem_create: *lib.get(b"xsk_umem__create\0").map_err(err)?,
            umem_delete: *lib.get(b"xsk_umem__delete\0").map_err(err)?,
            socket_create: *lib.get(b"xsk_socket__create\0").map_err(err)?,
            socket_delete: *lib.get(b"xsk_socket__delete\0").map_err(err)?,
            socket_fd: *lib.get(b"xsk_socket__fd\0").map_err(err)?,
            multiprog_get: *lib.get(b"xdp_multiprog__get_from_ifindex\0").map_err(err)?,
            multiprog_detach: *lib.get(b"xdp_multiprog__detach\0").map_err(err)?,
            multiprog_close: *lib.get(b"xdp_multiprog__close\0").map_err(err)?,
            get_error: *lib.get(b"libxdp_get_error\0").map_err(err)?,
            _lib: lib,
        };
        // Their messages go to the log, not to stderr. libbpf comes with libxdp: its
        // symbol is found through libxdp's handle.
        for setter in [&b"libxdp_set_print\0"[..], &b"libbpf_set_print\0"[..]] {
            if let Ok(set) = api
                ._lib
                .get::<unsafe extern "C" fn(Option<PrintFn>) -> Option<PrintFn>>(setter)
            {
                set(print_fn());
            }
        }
        Ok(api)
    }
}

/// The callback libxdp and libbpf print through: into the log on x86_64, where a `va_list`
/// argument is a pointer and can be handed on to `vsnprintf`; nowhere elsewhere.
fn print_fn() -> Option<PrintFn> {
    #[cfg(target_arch = "x86_64")]
    {
        Some(print)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

#[cfg(target_arch = "x86_64")]
unsafe extern "C" fn print(level: c_int, format: *const c_char, args: *mut c_void) -> c_int {
    extern "C" {
        fn vsnprintf(
            buf: *mut c_char,
            size: usize,
            format: *const c_char,
            args: *mut c_void,
        ) -> c_int;
    }
    let mut buf = [0u8; 512];
    // SAFETY: `format` and `args` are the printf format and arguments the library passed us
    // (on x86_64 a va_list argument is a pointer to its state, passed on as it came);
    // vsnprintf writes at most `buf.len()` bytes, NUL included.
    let n = unsafe { vsnprintf(buf.as_mut_ptr().cast(), buf.len(), format, args) };
    if n < 0 {
        return n;
    }
    let text = String::from_utf8_lossy(&buf[..(n as usize).min(buf.len() - 1)]);
    let text = text.trim_end();
    // 0 is a warning, 1 information, 2 debugging, in both libraries. Their warnings include
    // ordinary fallbacks ("no bpffs found"): the error a port reports says what failed.
    match level {
        0 => tracing::debug!(target: "vringswitch::libxdp", "{text}"),
        _ => tracing::trace!(target: "vringswitch::libxdp", "{text}"),
    }
    n
}

/// How a socket attaches to its interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attach {
    /// The XDP program runs in the driver (`XDP_FLAGS_DRV_MODE`), not on socket buffers
    /// (`XDP_FLAGS_SKB_MODE`, generic mode).
    pub native: bool,
    /// Frames stay in the UMEM, which the driver reads and writes (`XDP_ZEROCOPY`), rather
    /// than being copied by the kernel (`XDP_COPY`).
    pub zero_copy: bool,
}

const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Sizes of an AF_XDP socket's rings and UMEM frames.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// Entries of each ring; a power of two.
    pub ring: u32,
    /// Bytes of one UMEM frame: 2048 or 4096.
    pub frame: u32,
}

/// An AF_XDP socket bound to one queue of an interface, with its UMEM registered and its
/// rings mapped.
pub struct Socket {
    /// libxdp's objects, once made (`Drop` deletes those that were).
    umem: Option<NonNull<c_void>>,
    socket: Option<NonNull<c_void>>,
    fd: RawFd,
    /// The rings' structures, which libxdp keeps pointers to until the socket is deleted:
    /// boxed, so they stay where they are when handed out.
    fill: Option<Box<RawRing>>,
    comp: Option<Box<RawRing>>,
    rx: Option<Box<RawRing>>,
    tx: Option<Box<RawRing>>,
    /// A socket adopted from the process before this one ([`Socket::adopt`]): its
    /// descriptor and the rings as mapped here. No libxdp object: dropping it unmaps the
    /// rings and closes the descriptor.
    adopted: Option<Box<Adopted>>,
    /// The UMEM's memory, kept mapped until after the socket and UMEM are deleted (fields
    /// drop after `Drop::drop`).
    _umem_mem: FrameMem,
}

/// An adopted socket's own parts.
struct Adopted {
    /// Closed on drop.
    _fd: OwnedFd,
    /// Unmapped on drop.
    _maps: Vec<RingMap>,
}

/// One ring of an adopted socket, mapped from its descriptor; unmapped on drop.
struct RingMap {
    at: NonNull<c_void>,
    len: usize,
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: `at` and `len` are what one mmap returned and was asked for. The ring
        // ends pointing into the mapping (a Producer or Consumer) are no longer used: the
        // socket is dropped with its queue, whose ring ends no one uses by then, and they
        // touch nothing as they drop.
        unsafe { libc::munmap(self.at.as_ptr(), self.len) };
    }
}

// SAFETY: the handles are only used by `Drop` (libxdp's objects are not tied to a thread);
// the rings are handed out once, each to one owner.
unsafe impl Send for Socket {}
// SAFETY: nothing is reachable through `&Socket` but the descriptor.
unsafe impl Sync for Socket {}

/// Why a socket could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot register the frame memory with the kernel: {0}")]
    Umem(io::Error),
    #[error("{0}")]
    Socket(io::Error),
    #[error("libxdp handed back rings that are not set up")]
    Rings,
    #[error("the frame memory is not one region of whole frames")]
    Memory,
}

impl Socket {
    /// Registers `mem` (one region from address 0, a whole number of frames) as the UMEM
    /// and binds a socket to queue `queue` of interface `ifname`.
    pub fn create(
        mem: &FrameMem,
        ifname: &str,
        queue: u32,
        geometry: Geometry,
        attach: Attach,
    ) -> Result<Socket, SocketError> {
        let api = api()?;
        let region = mem
            .find_region(GuestAddress(0))
            .filter(|_| mem.num_regions() == 1)
            .ok_or(SocketError::Memory)?;
        let area = region
            .get_host_address(MemoryRegionAddress(0))
            .ok()
            .and_then(NonNull::new)
            .ok_or(SocketError::Memory)?;
        let len = region.len();
        if len % u64::from(geometry.frame) != 0 {
            return Err(SocketError::Memory);
        }
        let name = CString::new(ifname)
            .map_err(|_| SocketError::Socket(io::Error::other("interface name has a NUL")))?;
        let mut s = Socket {
            umem: None,
            socket: None,
            adopted: None,
            fd: -1,
            fill: Some(Box::new(RawRing::empty())),
            comp: Some(Box::new(RawRing::empty())),
            rx: Some(Box::new(RawRing::empty())),
            tx: Some(Box::new(RawRing::empty())),
            _umem_mem: mem.clone(),
        };
        let umem_config = UmemConfig {
            fill_size: geometry.ring,
            comp_size: geometry.ring,
            frame_size: geometry.frame,
            frame_headroom: 0,
            flags: 0,
        };
        let ring = |r: &mut Option<Box<RawRing>>| -> *mut RawRing {
            r.as_deref_mut()
                .map_or(std::ptr::null_mut(), |r| r as *mut _)
        };
        let mut umem = std::ptr::null_mut();
        // SAFETY: `area` is the start of the region's mapping, `len` bytes read and write,
        // kept mapped by `_umem_mem` until after the UMEM is deleted; the ring structures are boxed and live
        // until after the socket and UMEM are deleted (Drop); the config is read only.
        let r = unsafe {
            (api.umem_create)(
                &mut umem,
                area.as_ptr().cast(),
                len,
                ring(&mut s.fill),
                ring(&mut s.comp),
                &umem_config,
            )
        };
        let umem = match NonNull::new(umem) {
            Some(u) if r == 0 => u,
            // Nothing was made: dropping `s` frees our own parts only.
            _ => return Err(SocketError::Umem(io::Error::from_raw_os_error(-r))),
        };
        s.umem = Some(umem);
        let socket_config = SocketConfig {
            rx_size: geometry.ring,
            tx_size: geometry.ring,
            libxdp_flags: 0,
            xdp_flags: if attach.native {
                XDP_FLAGS_DRV_MODE
            } else {
                XDP_FLAGS_SKB_MODE
            },
            bind_flags: if attach.zero_copy {
                libc::XDP_ZEROCOPY
            } else {
                libc::XDP_COPY
            } | libc::XDP_USE_NEED_WAKEUP,
        };
        let mut socket = std::ptr::null_mut();
        // SAFETY: the UMEM was just made; the name is a C string for the call; the ring
        // structures are boxed (see above); libxdp loads its XDP program, binds the socket
        // and fills the rings in, or undoes what it did and fails.
        let r = unsafe {
            (api.socket_create)(
                &mut socket,
                name.as_ptr(),
                queue,
                umem.as_ptr(),
                ring(&mut s.rx),
                ring(&mut s.tx),
                &socket_config,
            )
        };
        let socket = match NonNull::new(socket) {
            Some(sock) if r == 0 => sock,
            // libxdp undid what it did; dropping `s` deletes the UMEM.
            _ => return Err(SocketError::Socket(io::Error::from_raw_os_error(-r))),
        };
        s.socket = Some(socket);
        // SAFETY: the socket was just made.
        s.fd = unsafe { (api.socket_fd)(socket.as_ptr()) };
        let rings = [&s.fill, &s.comp, &s.rx, &s.tx];
        if s.fd < 0
            || !rings
                .iter()
                .all(|r| r.as_deref().is_some_and(RawRing::is_set_up))
        {
            return Err(SocketError::Rings);
        }
        Ok(s)
    }

    /// The socket's descriptor: readable when frames wait in the RX ring.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// A duplicate of the socket's descriptor, for the process replacing this one.
    pub fn dup_fd(&self) -> io::Result<OwnedFd> {
        // SAFETY: `fd` is the socket's, open for as long as `self` (libxdp's or ours).
        unsafe { BorrowedFd::borrow_raw(self.fd) }.try_clone_to_owned()
    }

    /// Checks that `fd` is an AF_XDP socket. (Which interface and queue it is bound to the
    /// kernel does not say through the socket: AF_XDP sockets have no getsockname.)
    pub fn check_is_xdp(fd: &OwnedFd) -> io::Result<()> {
        let mut domain: c_int = 0;
        let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `domain`, an int.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_DOMAIN,
                (&mut domain as *mut c_int).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if domain != libc::AF_XDP {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the descriptor is not an AF_XDP socket",
            ));
        }
        Ok(())
    }

    /// Takes on AF_XDP socket `fd`, bound by the process before this one with its UMEM in
    /// `mem` (this process's mapping of the same memory) and rings of `geometry.ring`
    /// entries: maps the four rings from the descriptor, as libxdp maps them, and starts
    /// each ring end where that process left it (every entry it reserved submitted, every
    /// entry it peeked released: true between two bursts).
    pub fn adopt(fd: OwnedFd, mem: &FrameMem, geometry: Geometry) -> Result<Socket, SocketError> {
        let bad =
            |what: String| SocketError::Socket(io::Error::new(io::ErrorKind::InvalidData, what));
        if !geometry.ring.is_power_of_two() || geometry.ring > 1 << 15 {
            return Err(bad(format!("rings of {} entries", geometry.ring)));
        }
        Self::check_is_xdp(&fd).map_err(SocketError::Socket)?;
        // SAFETY: xdp_mmap_offsets is plain data; all zeroes is a valid value.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `off`, an xdp_mmap_offsets.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(SocketError::Socket(io::Error::last_os_error()));
        }
        if len as usize != std::mem::size_of::<libc::xdp_mmap_offsets>() {
            return Err(bad("a kernel without ring flags (before 5.4)".into()));
        }
        let size = geometry.ring;
        let mut maps = Vec::new();
        let mut map = |pgoff: u64, o: &libc::xdp_ring_offset, entry: usize| {
            let len = usize::try_from(o.desc)
                .ok()
                .and_then(|d| d.checked_add(size as usize * entry))
                .ok_or_else(|| bad("ring offsets out of range".into()))?;
            for field in [o.producer, o.consumer, o.flags] {
                if field.checked_add(4).is_none_or(|end| end > o.desc) {
                    return Err(bad("ring offsets out of order".into()));
                }
            }
            // SAFETY: a new shared mapping of the socket's ring at `pgoff`, `len` bytes:
            // the kernel refuses a length beyond the ring it made. Nothing else is mapped
            // over; the result is checked.
            let at = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_POPULATE,
                    fd.as_raw_fd(),
                    pgoff as libc::off_t,
                )
            };
            if at == libc::MAP_FAILED {
                return Err(SocketError::Socket(io::Error::last_os_error()));
            }
            let at = NonNull::new(at).ok_or_else(|| bad("mapped at address 0".into()))?;
            maps.push(RingMap { at, len });
            let base = at.as_ptr().cast::<u8>();
            // SAFETY: each offset lies within the mapping (checked above: below `desc`, and
            // `desc` plus the entries is `len`).
            let ring = unsafe {
                RawRing {
                    cached_prod: 0,
                    cached_cons: 0,
                    mask: size - 1,
                    size,
                    producer: base.add(o.producer as usize).cast(),
                    consumer: base.add(o.consumer as usize).cast(),
                    ring: base.add(o.desc as usize).cast(),
                    flags: base.add(o.flags as usize).cast(),
                }
            };
            Ok(Box::new(ring))
        };
        let desc = std::mem::size_of::<XdpDesc>();
        let mut rx = map(libc::XDP_PGOFF_RX_RING as u64, &off.rx, desc)?;
        let mut tx = map(libc::XDP_PGOFF_TX_RING as u64, &off.tx, desc)?;
        let mut fill = map(libc::XDP_UMEM_PGOFF_FILL_RING, &off.fr, 8)?;
        let mut comp = map(libc::XDP_UMEM_PGOFF_COMPLETION_RING, &off.cr, 8)?;
        // Producers as xsk.h sets them up, from where they are: the consumer seen `size`
        // ahead. Consumers: nothing peeked.
        for p in [&mut tx, &mut fill] {
            p.cached_prod = p.producer().load(Ordering::Acquire);
            p.cached_cons = p.consumer().load(Ordering::Acquire).wrapping_add(size);
        }
        for c in [&mut rx, &mut comp] {
            c.cached_cons = c.consumer().load(Ordering::Acquire);
            c.cached_prod = c.cached_cons;
        }
        let raw = fd.as_raw_fd();
        Ok(Socket {
            umem: None,
            socket: None,
            fd: raw,
            fill: Some(fill),
            comp: Some(comp),
            rx: Some(rx),
            tx: Some(tx),
            adopted: Some(Box::new(Adopted {
                _fd: fd,
                _maps: maps,
            })),
            _umem_mem: mem.clone(),
        })
    }

    /// Lets go of the socket without deleting it (another process carries it on): libxdp's
    /// objects are left as they are, their descriptors open until this process exits, so
    /// that the XDP program and its map entry stay. For a socket adopted here, nothing to
    /// do but drop it.
    pub fn leave_open(&mut self) {
        self.umem = None;
        self.socket = None;
    }

    /// Whether the socket was adopted from the process before this one.
    pub fn is_adopted(&self) -> bool {
        self.adopted.is_some()
    }

    /// The fill and RX rings (the receiving side), once.
    pub fn take_rx_side(&mut self) -> Option<(Producer, Consumer)> {
        let fill = Producer::new(self.fill.take()?);
        let rx = Consumer::new(self.rx.take()?);
        Some((fill, rx))
    }

    /// The TX and completion rings (the sending side), once.
    pub fn take_tx_side(&mut self) -> Option<(Producer, Consumer)> {
        let tx = Producer::new(self.tx.take()?);
        let comp = Consumer::new(self.comp.take()?);
        Some((tx, comp))
    }

    /// Counters the kernel keeps for the socket (`XDP_STATISTICS`).
    pub fn statistics(&self) -> io::Result<Statistics> {
        let mut st = Statistics::default();
        let mut len = std::mem::size_of::<Statistics>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `st`, a plain struct of u64s
        // laid out as `struct xdp_statistics`.
        let r = unsafe {
            libc::getsockopt(
                self.fd,
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut st as *mut Statistics).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let Ok(api) = api() else { return };
        // SAFETY: each was made by `create` and is deleted once, socket first. The ring
        // structures are still alive (taken ones too: their owners hold the socket; see
        // `AfXdpQueue`'s field order), and libxdp unmaps the rings here.
        unsafe {
            if let Some(socket) = self.socket.take() {
                (api.socket_delete)(socket.as_ptr());
            }
            if let Some(umem) = self.umem.take() {
                (api.umem_delete)(umem.as_ptr());
            }
        }
    }
}

/// Detaches the XDP programs from interface `ifindex` (what libxdp does when the last of
/// its own sockets on it goes; an adopted socket has no libxdp object to do it). Nothing
/// to detach is no error.
pub fn detach_programs(ifindex: u32) -> Result<(), String> {
    let api = api().map_err(|e| e.to_string())?;
    let ifindex = c_int::try_from(ifindex).map_err(|_| "interface index out of range")?;
    // SAFETY: libxdp returns a multiprog object or an error pointer (checked with
    // libxdp_get_error before any other use); the object is detached and closed once.
    unsafe {
        let mp = (api.multiprog_get)(ifindex);
        if mp.is_null() || (api.get_error)(mp) != 0 {
            // ENOENT: nothing attached.
            return Ok(());
        }
        let r = (api.multiprog_detach)(mp);
        (api.multiprog_close)(mp);
        if r < 0 {
            return Err(io::Error::from_raw_os_error(-r).to_string());
        }
    }
    Ok(())
}

/// Wakes the kernel to send what a TX ring holds. `Ok(true)`: it took the call; `Ok(false)`:
/// it asks to be called again (generic mode sends a batch per call), or its device's queue
/// is full; an error: the interface is gone.
pub fn wake_tx(fd: RawFd) -> io::Result<bool> {
    // SAFETY: sendto with no data reads nothing; an fd that is not a socket only fails.
    let r = unsafe {
        libc::sendto(
            fd,
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
    if r >= 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS) => Ok(false),
        Some(libc::ENETDOWN) | Some(libc::ENXIO) => Err(e),
        _ => Ok(true),
    }
}

/// Wakes the driver to receive into a refilled fill ring.
pub fn wake_rx(fd: RawFd) {
    // SAFETY: recvfrom with no buffer writes nothing; an fd that is not a socket only fails.
    unsafe {
        libc::recvfrom(
            fd,
            std::ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
}

/// `struct xdp_statistics` (kernel 5.9 and later).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Statistics {
    /// Frames dropped for other reasons than a full RX ring or an empty fill ring.
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times a frame found the fill ring empty.
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

/// The producing end of a ring: the fill ring (addresses for the kernel to receive into)
/// or the TX ring (frames for it to send).
pub struct Producer {
    ring: Box<RawRing>,
}

/// The consuming end of a ring: the RX ring (frames received) or the completion ring
/// (addresses of frames sent).
pub struct Consumer {
    ring: Box<RawRing>,
}

// SAFETY: a ring end is used by one owner at a time (behind a lock in its queue); the
// memory it points to is the kernel's shared mapping, not tied to a thread.
unsafe impl Send for Producer {}
// SAFETY: as above.
unsafe impl Send for Consumer {}

impl RawRing {
    /// The ring's producer index.
    #[inline]
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: `producer` points at a u32 in the ring's mapping (is_set_up, checked at
        // creation), which lives until the socket is deleted, after this ring's owner is
        // gone. The kernel writes it concurrently: accessed only atomically.
        unsafe { AtomicU32::from_ptr(self.producer) }
    }

    #[inline]
    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { AtomicU32::from_ptr(self.consumer) }
    }

    #[inline]
    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`; the kernel sets and clears the flag concurrently.
        let flags = unsafe { AtomicU32::from_ptr(self.flags) };
        flags.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// Entry `idx` (modulo the size) of a ring of `T`s.
    #[inline]
    fn entry<T>(&self, idx: u32) -> *mut T {
        // SAFETY: `idx & mask` is below the ring's size (mask = size - 1, is_set_up), and
        // the kernel mapped `size` entries of `T` (u64 addresses for the fill and
        // completion rings, descriptors for RX and TX: the caller's type says which).
        unsafe { self.ring.cast::<T>().add((idx & self.mask) as usize) }
    }
}

impl Producer {
    fn new(ring: Box<RawRing>) -> Producer {
        // As xsk.h sets it up: the consumer as seen is kept `size` ahead.
        Producer { ring }
    }

    /// Entries free to produce, looking at the kernel's consumer index only if fewer than
    /// `want` are known to be free.
    #[inline]
    pub fn free(&mut self, want: u32) -> u32 {
        let r = &mut *self.ring;
        let free = r.cached_cons.wrapping_sub(r.cached_prod);
        if free >= want {
            return free;
        }
        r.cached_cons = r.consumer().load(Ordering::Acquire).wrapping_add(r.size);
        r.cached_cons.wrapping_sub(r.cached_prod)
    }

    /// Reserves `n` entries if that many are free; returns the index of the first.
    #[inline]
    pub fn reserve(&mut self, n: u32) -> Option<u32> {
        if self.free(n) < n {
            return None;
        }
        let idx = self.ring.cached_prod;
        self.ring.cached_prod = idx.wrapping_add(n);
        Some(idx)
    }

    /// Writes address `addr` into reserved fill-ring entry `idx`.
    #[inline]
    pub fn set_addr(&mut self, idx: u32, addr: u64) {
        // SAFETY: in bounds (entry); a fill ring's entries are u64 addresses. The kernel
        // does not read a reserved entry before `submit` publishes it.
        unsafe { self.ring.entry::<u64>(idx).write(addr) }
    }

    /// Writes descriptor `desc` into reserved TX-ring entry `idx`.
    #[inline]
    pub fn set_desc(&mut self, idx: u32, desc: XdpDesc) {
        // SAFETY: in bounds (entry); a TX ring's entries are descriptors; unpublished.
        unsafe { self.ring.entry::<XdpDesc>(idx).write(desc) }
    }

    /// Publishes `n` entries reserved before (all of them, in order).
    #[inline]
    pub fn submit(&mut self, n: u32) {
        let p = self.ring.producer();
        // Only we write the producer index: a plain add, released after the entries.
        p.store(p.load(Ordering::Relaxed).wrapping_add(n), Ordering::Release);
    }

    /// Whether the kernel asked to be woken up to look at this ring.
    #[inline]
    pub fn needs_wakeup(&self) -> bool {
        self.ring.needs_wakeup()
    }
}

impl Consumer {
    fn new(ring: Box<RawRing>) -> Consumer {
        Consumer { ring }
    }

    /// Up to `max` entries ready to consume: (how many, index of the first). They stay the
    /// caller's until [`Self::release`].
    #[inline]
    pub fn peek(&mut self, max: u32) -> (u32, u32) {
        let r = &mut *self.ring;
        let mut ready = r.cached_prod.wrapping_sub(r.cached_cons);
        if ready == 0 {
            r.cached_prod = r.producer().load(Ordering::Acquire);
            ready = r.cached_prod.wrapping_sub(r.cached_cons);
        }
        // A producer index more than `size` ahead is not the kernel's doing: never hand out
        // more entries than the ring holds.
        let n = ready.min(max).min(r.size);
        let idx = r.cached_cons;
        r.cached_cons = idx.wrapping_add(n);
        (n, idx)
    }

    /// The descriptor in RX-ring entry `idx`, copied out.
    #[inline]
    pub fn desc(&self, idx: u32) -> XdpDesc {
        // SAFETY: in bounds (entry); an RX ring's entries are descriptors, and one peeked
        // is not rewritten by the kernel before it is released.
        unsafe { self.ring.entry::<XdpDesc>(idx).read() }
    }

    /// The address in completion-ring entry `idx`.
    #[inline]
    pub fn addr(&self, idx: u32) -> u64 {
        // SAFETY: in bounds (entry); a completion ring's entries are u64 addresses, stable
        // until released.
        unsafe { self.ring.entry::<u64>(idx).read() }
    }

    /// Gives `n` peeked entries back to the kernel.
    #[inline]
    pub fn release(&mut self, n: u32) {
        let c = self.ring.consumer();
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring of `size` u64 entries in our own memory, as the kernel maps one.
    struct FakeRing {
        prod: Box<u32>,
        cons: Box<u32>,
        flags: Box<u32>,
        entries: Vec<u64>,
    }

    impl FakeRing {
        fn new(size: u32) -> FakeRing {
            FakeRing {
                prod: Box::new(0),
                cons: Box::new(0),
                flags: Box::new(0),
                entries: vec![0; size as usize],
            }
        }

        fn raw(&mut self, producer_side: bool) -> Box<RawRing> {
            let size = self.entries.len() as u32;
            Box::new(RawRing {
                cached_prod: 0,
                // As libxdp sets up a producer: the consumer seen `size` ahead.
                cached_cons: if producer_side { size } else { 0 },
                mask: size - 1,
                size,
                producer: &mut *self.prod,
                consumer: &mut *self.cons,
                ring: self.entries.as_mut_ptr().cast(),
                flags: &mut *self.flags,
            })
        }
    }

    #[test]
    fn a_producer_fills_the_ring_and_waits_for_the_consumer() {
        let mut fake = FakeRing::new(8);
        let mut p = Producer::new(fake.raw(true));
        assert_eq!(p.free(1), 8);
        let idx = p.reserve(6).unwrap();
        for i in 0..6 {
            p.set_addr(idx + i, 100 + u64::from(i));
        }
        p.submit(6);
        assert_eq!(*fake.prod, 6);
        assert_eq!(&fake.entries[..6], &[100, 101, 102, 103, 104, 105]);
        // Only two left until the kernel consumes.
        assert!(p.reserve(3).is_none());
        let idx = p.reserve(2).unwrap();
        p.set_addr(idx, 7);
        p.set_addr(idx + 1, 8);
        p.submit(2);
        assert!(p.reserve(1).is_none());
        // The kernel took five: five free again, entries wrapping around.
        *fake.cons = 5;
        let idx = p.reserve(5).unwrap();
        for i in 0..5 {
            p.set_addr(idx + i, 200 + u64::from(i));
        }
        p.submit(5);
        assert_eq!(*fake.prod, 13);
        assert_eq!(fake.entries, [200, 201, 202, 203, 204, 105, 7, 8]);
        assert!(!p.needs_wakeup());
        *fake.flags = libc::XDP_RING_NEED_WAKEUP;
        assert!(p.needs_wakeup());
    }

    #[test]
    fn a_consumer_takes_what_was_produced_at_most_a_ring_of_it() {
        let mut fake = FakeRing::new(4);
        fake.entries.copy_from_slice(&[10, 11, 12, 13]);
        let mut c = Consumer::new(fake.raw(false));
        assert_eq!(c.peek(8), (0, 0));
        *fake.prod = 3;
        let (n, idx) = c.peek(2);
        assert_eq!((n, idx), (2, 0));
        assert_eq!((c.addr(idx), c.addr(idx + 1)), (10, 11));
        // The third is still known to be ready without looking again.
        assert_eq!(c.peek(8), (1, 2));
        c.release(3);
        assert_eq!(*fake.cons, 3);
        // A producer index far ahead (not the kernel's doing) yields one ring at most, and
        // entries wrap around.
        *fake.prod = 3 + 1000;
        let (n, idx) = c.peek(u32::MAX);
        assert_eq!((n, idx), (4, 3));
        assert_eq!(c.addr(idx), 13);
        assert_eq!(c.addr(idx + 1), 10);
    }
}
