//! The tunnel's sockets and the system calls on them: a UDP socket bound to this host's
//! tunnel address and port, which receives (the kernel checks the outer IP and UDP
//! headers and says who sent each packet), and a pool of [`SENDERS`] UDP sockets bound to
//! the same address and ports of the kernel's choosing, shared by the tunnel ports there,
//! which send: a frame goes out of the one its inner flow's hash picks, so that the outer
//! UDP source port follows the flow (the underlay's ECMP spreads the tunnel's flows and
//! keeps each in order). The kernel builds the outer IP and UDP headers (IPv4's "don't
//! fragment" set: a packet over the path's MTU is refused, never fragmented). IPv4 or
//! IPv6, as the tunnel address is.
//!
//! Packets are received a burst at a time with `recvmmsg` straight into the port's buffers
//! (memory of its own, read by the workers through the same checked views as a VM's), and
//! sent a burst at a time with `sendmmsg` from where the frames lie: consecutive packets
//! of one size to one end go as one UDP GSO message (`UDP_SEGMENT`), which the kernel
//! takes through its stack once and cuts at the device.
// The recvmmsg/sendmmsg calls and the sockets' options: each unsafe block says why it is
// sound.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::frame::view::MemView;

/// Most pieces one packet is sent in: the VXLAN header, the edit's prefix, and the
/// frame's segments (split where they cross a region of the sender's memory).
pub const MAX_SEND_PIECES: usize = 2 + crate::frame::MAX_SEGS * 2;

/// Sending sockets of a tunnel address: as many outer UDP source ports for its flows.
pub const SENDERS: usize = 16;

/// Most packets one UDP GSO message carries (the kernel's limit is 64 or more).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Most bytes of UDP payload one message carries (an IPv4 datagram's limit less the
/// headers; IPv6 would allow 20 more).
pub const MAX_DATAGRAM: usize = 65_507;

/// Most messages one `sendmmsg` is given.
pub const MAX_MESSAGES: usize = 64;

/// The tunnel's sockets.
#[derive(Debug)]
pub struct TunnelSockets {
    /// Receives: bound to the local tunnel address and UDP port, in the group of the
    /// tunnel ports there (one per VNI, see [`super::endpoint`]).
    pub udp: OwnedFd,
    /// Send: UDP, bound to the local tunnel address, each to a port of its own; shared by
    /// the tunnel ports on that address (see [`shared_senders`]).
    pub senders: Arc<Senders>,
    /// `udp`'s place in its group; dropped after it (fields drop in order).
    pub membership: super::endpoint::Membership,
}

/// One message for [`TunnelSockets::send_batch`]: to `to`, the bytes of `iov`, cut into
/// packets of `segment` bytes (the last one may be shorter) if it is set.
#[derive(Debug, Clone, Copy)]
pub struct Outbound<'a> {
    pub to: SocketAddr,
    pub iov: &'a [libc::iovec],
    pub segment: Option<u16>,
}

/// A message received: its length and who sent it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    pub len: usize,
    pub from: Option<SocketAddr>,
    /// Longer than the buffer: cut by the kernel.
    pub truncated: bool,
    /// Packets of one sender the kernel joined (UDP GRO): each `segment` bytes, the last
    /// one maybe shorter; 0 if the message is one packet.
    pub segment: u16,
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// Sets an integer socket option.
fn set_int(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` lives for the call and its size is given; the descriptor is open.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(last_error())
    } else {
        Ok(())
    }
}

/// A new UDP socket of the family of `family`, non-blocking and close-on-exec; an IPv6
/// one takes IPv6 only.
fn udp_socket(family: IpAddr) -> io::Result<OwnedFd> {
    let domain = if family.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: no pointer is passed; a descriptor returned is ours to own.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_UDP,
        )
    };
    if fd < 0 {
        return Err(last_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if family.is_ipv6() {
        set_int(fd.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    Ok(fd)
}

/// A socket address as the kernel takes it, of either family.
#[repr(C)]
#[derive(Clone, Copy)]
pub union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl RawAddr {
    /// Room for an address the kernel writes.
    fn empty() -> RawAddr {
        RawAddr {
            // All zeroes: valid for both members.
            v6: libc::sockaddr_in6 {
                sin6_family: 0,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
                sin6_scope_id: 0,
            },
        }
    }

    fn new(addr: SocketAddr) -> (RawAddr, libc::socklen_t) {
        match addr {
            SocketAddr::V4(a) => (
                RawAddr {
                    v4: libc::sockaddr_in {
                        sin_family: libc::AF_INET as libc::sa_family_t,
                        sin_port: a.port().to_be(),
                        sin_addr: libc::in_addr {
                            s_addr: u32::from_ne_bytes(a.ip().octets()),
                        },
                        sin_zero: [0; 8],
                    },
                },
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            SocketAddr::V6(a) => (
                RawAddr {
                    v6: libc::sockaddr_in6 {
                        sin6_family: libc::AF_INET6 as libc::sa_family_t,
                        sin6_port: a.port().to_be(),
                        sin6_flowinfo: 0,
                        sin6_addr: libc::in6_addr {
                            s6_addr: a.ip().octets(),
                        },
                        sin6_scope_id: a.scope_id(),
                    },
                },
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ),
        }
    }

    /// The address the kernel wrote, `len` bytes of it; `None` if it is of neither family.
    fn get(&self, len: libc::socklen_t) -> Option<SocketAddr> {
        // SAFETY: both members are plain old data for which any bytes are valid, and the
        // union was made whole (see `empty`); the family is read first.
        unsafe {
            match i32::from(self.v4.sin_family) {
                libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
                    Some(SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::from(self.v4.sin_addr.s_addr.to_ne_bytes())),
                        u16::from_be(self.v4.sin_port),
                    ))
                }
                libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
                    Some(SocketAddr::new(
                        IpAddr::V6(Ipv6Addr::from(self.v6.sin6_addr.s6_addr)),
                        u16::from_be(self.v6.sin6_port),
                    ))
                }
                _ => None,
            }
        }
    }
}

/// Socket buffers asked for both ways: a burst of large frames each way fits many times.
const SOCKET_BUFFER: i32 = 4 << 20;

/// Iovecs kept from one burst's frames until they are sent. They point into the sender's
/// memory and into buffers of the batch that holds them, for the length of one burst: a
/// batch is emptied before the burst that filled it ends.
pub struct Iovecs(pub Box<[libc::iovec]>);

impl Iovecs {
    /// `n` empty iovecs.
    pub fn new(n: usize) -> Iovecs {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Iovecs(vec![empty; n].into_boxed_slice())
    }
}

// SAFETY: the pointers are only handed to the kernel by the thread that owns the batch,
// during the burst that wrote them; Rust never dereferences them.
unsafe impl Send for Iovecs {}

/// A classic BPF program that takes nothing: a sending socket never reads, and what
/// somebody sends to its port is dropped before it is queued.
fn refuse_all(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut insn = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: insn.as_mut_ptr(),
    };
    // SAFETY: `prog` points at one instruction that lives for the call, its size given;
    // the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(last_error())
    } else {
        Ok(())
    }
}

/// Binds `fd` to `addr`.
fn bind(fd: BorrowedFd<'_>, addr: SocketAddr) -> io::Result<()> {
    let (sa, len) = RawAddr::new(addr);
    // SAFETY: `sa` is a socket address of `len` bytes that lives for the call.
    let r = unsafe { libc::bind(fd.as_raw_fd(), (&sa as *const RawAddr).cast(), len) };
    if r < 0 {
        Err(last_error())
    } else {
        Ok(())
    }
}

/// A sending socket from `local`, on a port of the kernel's choosing.
fn sender(local: IpAddr) -> io::Result<OwnedFd> {
    let fd = udp_socket(local)?;
    refuse_all(fd.as_fd())?;
    let _ = set_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, SOCKET_BUFFER);
    // Path MTU discovery: a packet over the route's MTU is refused (EMSGSIZE) rather
    // than fragmented (IPv4: "don't fragment" is set on every packet).
    let ttl = i32::from(vringswitch_wire::vxlan::OUTER_TTL);
    if local.is_ipv6() {
        set_int(
            fd.as_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )?;
        set_int(fd.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, ttl)?;
    } else {
        set_int(
            fd.as_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )?;
        set_int(fd.as_fd(), libc::IPPROTO_IP, libc::IP_TTL, ttl)?;
    }
    bind(fd.as_fd(), SocketAddr::new(local, 0)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind a UDP socket to send from {local}: {e}"),
        )
    })?;
    Ok(fd)
}

/// Asks the kernel to hand packets of one sender that arrive together (from a GSO send,
/// or joined by a device's GRO) as one message, with their size ([`Received::segment`]).
fn join_packets(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot turn on UDP GRO: {e}")))
}

/// The sending sockets of the tunnel ports on one address ([`SENDERS`] of them).
#[derive(Debug)]
pub struct Senders(pub Vec<OwnedFd>);

/// The sending sockets of each local tunnel address in use: what a VXLAN header says
/// (the VNI) is the packet's own, so every tunnel port there sends through the same
/// ones, and a host with many VNIs holds [`SENDERS`] descriptors per address, not per
/// port. Gone with the last port that holds them.
fn pools() -> &'static Mutex<HashMap<IpAddr, Weak<Senders>>> {
    static POOLS: OnceLock<Mutex<HashMap<IpAddr, Weak<Senders>>>> = OnceLock::new();
    POOLS.get_or_init(Default::default)
}

/// The sending sockets of `local`: those the ports there share, else `handed` (the
/// process before this one's, if it handed over a whole set), else new ones.
fn shared_senders(local: IpAddr, handed: Vec<OwnedFd>) -> io::Result<Arc<Senders>> {
    let mut pools = pools().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = pools.get(&local).and_then(Weak::upgrade) {
        return Ok(s);
    }
    let fds = if handed.len() == SENDERS {
        handed
    } else {
        (0..SENDERS)
            .map(|_| sender(local))
            .collect::<io::Result<_>>()?
    };
    let s = Arc::new(Senders(fds));
    pools.retain(|_, w| w.strong_count() > 0);
    pools.insert(local, Arc::downgrade(&s));
    Ok(s)
}

/// Space for one UDP_SEGMENT control message.
#[repr(C)]
#[derive(Clone, Copy)]
struct SegmentCmsg {
    hdr: libc::cmsghdr,
    size: u16,
    _pad: [u8; 6],
}

/// Space for one UDP_GRO control message (an int).
#[repr(C)]
#[derive(Clone, Copy)]
struct GroCmsg {
    hdr: libc::cmsghdr,
    size: i32,
    _pad: [u8; 4],
}

impl TunnelSockets {
    /// Binds the receiving socket to `local:port` for the port of VNI `vni` (other VNIs'
    /// ports may bind there too) and the sending ones to `local`.
    pub fn open(local: IpAddr, port: u16, vni: u32) -> io::Result<TunnelSockets> {
        let udp = udp_socket(local)?;
        set_int(udp.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        // Bigger buffers if the system allows; the defaults do otherwise.
        let _ = set_int(
            udp.as_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            SOCKET_BUFFER,
        );
        let endpoint = SocketAddr::new(local, port);
        bind(udp.as_fd(), endpoint)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot bind UDP {endpoint}: {e}")))?;
        join_packets(udp.as_fd())?;
        let senders = shared_senders(local, Vec::new())?;
        let membership = super::endpoint::join(endpoint, vni, udp.as_fd(), None)?;
        Ok(TunnelSockets {
            udp,
            senders,
            membership,
        })
    }

    /// The sockets the process before this one opened for the port of VNI `vni` on
    /// `local:port`, its receiving one at `place` in its group: `senders` are the sending
    /// sockets it handed over (those of the address, if another port took them over
    /// already: these close), or none (a process that sent otherwise: new ones open).
    pub fn adopt(
        udp: OwnedFd,
        senders: Vec<OwnedFd>,
        endpoint: SocketAddr,
        vni: u32,
        place: usize,
    ) -> io::Result<TunnelSockets> {
        let senders = shared_senders(endpoint.ip(), senders)?;
        join_packets(udp.as_fd())?;
        let membership = super::endpoint::join(endpoint, vni, udp.as_fd(), Some(place))?;
        Ok(TunnelSockets {
            udp,
            senders,
            membership,
        })
    }

    /// Receives up to `bufs.len()` packets without waiting, each into its buffer (a range
    /// of `view`'s memory: `(address, length)`), and says of each what came in `out`.
    /// Returns how many came (0 when none is waiting).
    pub fn receive(
        &self,
        view: &mut MemView<'_>,
        bufs: &[(u64, usize)],
        out: &mut [Received],
    ) -> io::Result<usize> {
        const MAX: usize = 64;
        let n = bufs.len().min(out.len()).min(MAX);
        if n == 0 {
            return Ok(0);
        }
        let empty_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut iov = [empty_iov; MAX];
        for (slot, &(addr, len)) in iov.iter_mut().zip(&bufs[..n]) {
            let p = view.contiguous(addr, len).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "buffer outside the port's memory",
                )
            })?;
            *slot = libc::iovec {
                iov_base: p.as_ptr().cast(),
                iov_len: len,
            };
        }
        let mut names = [RawAddr::empty(); MAX];
        // SAFETY: plain old data, all zeroes valid (null pointers, zero lengths).
        let mut msgs: [libc::mmsghdr; MAX] = unsafe { std::mem::zeroed() };
        // SAFETY: plain old data, all zeroes valid.
        let mut cmsgs: [GroCmsg; MAX] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut RawAddr).cast();
            h.msg_namelen = std::mem::size_of::<RawAddr>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            h.msg_control = (&mut cmsgs[i] as *mut GroCmsg).cast();
            h.msg_controllen = std::mem::size_of::<GroCmsg>();
        }
        // SAFETY: each of the first `n` headers names room of ours for a socket address
        // (its size given), space of ours
        // for control messages (its size given) and one iovec over a range of the port's
        // own memory, mapped for as long as `view`'s memory
        // lives and written by nobody else meanwhile (the buffers are the port's, reused
        // only by the one worker that polls it); the kernel writes at most the lengths
        // given.
        let r = unsafe {
            libc::recvmmsg(
                self.udp.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = last_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let got = r as usize;
        for i in 0..got {
            let m = &msgs[i];
            let from = names[i].get(m.msg_hdr.msg_namelen);
            // The one control message asked for, if the kernel wrote it first.
            let c = &cmsgs[i];
            // SAFETY: CMSG_LEN only computes a length.
            let gro_len = unsafe { libc::CMSG_LEN(4) } as usize;
            let segment = if m.msg_hdr.msg_controllen >= gro_len
                && c.hdr.cmsg_len == gro_len
                && c.hdr.cmsg_level == libc::SOL_UDP
                && c.hdr.cmsg_type == libc::UDP_GRO
            {
                u16::try_from(c.size).unwrap_or(0)
            } else {
                0
            };
            out[i] = Received {
                len: (m.msg_len as usize).min(bufs[i].1),
                from,
                truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                segment,
            };
        }
        Ok(got)
    }

    /// Sends `msgs` from sending socket `sender` (taken modulo [`SENDERS`]), at most
    /// [`MAX_MESSAGES`] of them, with one system call. Returns how many went: all, or
    /// those before the first the kernel refused, with its error (an `Err` if it was the
    /// first).
    pub fn send_batch(
        &self,
        sender: usize,
        msgs: &[Outbound<'_>],
    ) -> Result<usize, (usize, io::Error)> {
        let n = msgs.len().min(MAX_MESSAGES);
        if n == 0 {
            return Ok(0);
        }
        let fd = self.senders.0[sender % self.senders.0.len()].as_raw_fd();
        let mut names = [RawAddr::empty(); MAX_MESSAGES];
        // SAFETY: plain old data, all zeroes valid (null pointers, zero lengths).
        let mut hdrs: [libc::mmsghdr; MAX_MESSAGES] = unsafe { std::mem::zeroed() };
        // SAFETY: plain old data, all zeroes valid.
        let mut cmsgs: [SegmentCmsg; MAX_MESSAGES] = unsafe { std::mem::zeroed() };
        for (i, m) in msgs[..n].iter().enumerate() {
            let (name, len) = RawAddr::new(m.to);
            names[i] = name;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut RawAddr).cast();
            h.msg_namelen = len;
            h.msg_iov = m.iov.as_ptr().cast_mut();
            h.msg_iovlen = m.iov.len();
            if let Some(size) = m.segment {
                let c = &mut cmsgs[i];
                // SAFETY: CMSG_LEN only computes a length.
                c.hdr.cmsg_len = unsafe { libc::CMSG_LEN(2) } as usize;
                c.hdr.cmsg_level = libc::SOL_UDP;
                c.hdr.cmsg_type = libc::UDP_SEGMENT;
                c.size = size;
                h.msg_control = (c as *mut SegmentCmsg).cast();
                // SAFETY: CMSG_SPACE only computes a length.
                h.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
            }
        }
        // SAFETY: each of the first `n` headers names a socket address of ours, at most one
        // control message of ours (UDP_SEGMENT, its data right after its header as
        // CMSG_DATA places it) and the iovecs of its message, which point at memory valid
        // for their lengths for the call (the caller's: the VXLAN header and heads it
        // keeps, the frames' bytes in the sender's mapped memory); sendmmsg only reads
        // them.
        let r =
            unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT) };
        if r < 0 {
            return Err((0, last_error()));
        }
        let sent = r as usize;
        if sent < n {
            // The kernel stops at a refused message and reports those before it as sent;
            // the refusal's error is lost. Ask that message alone.
            return match self.send_batch(sender, &msgs[sent..sent + 1]) {
                Ok(_) => Ok(sent + 1),
                Err((_, e)) => Err((sent, e)),
            };
        }
        Ok(sent)
    }

    /// The descriptor a sleeping worker waits on.
    pub fn receiver(&self) -> BorrowedFd<'_> {
        self.udp.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ports_on_one_address_share_its_sending_sockets() {
        let here = IpAddr::V4(Ipv4Addr::LOCALHOST);
        // A port of its own, so that no other test's sockets are in the way.
        let port = {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let a = TunnelSockets::open(here, port, 10).unwrap();
        let b = TunnelSockets::open(here, port, 11).unwrap();
        assert!(Arc::ptr_eq(&a.senders, &b.senders));
        assert_eq!(a.senders.0.len(), SENDERS);
        // Another address has its own.
        let there = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let c = TunnelSockets::open(there, port, 10).unwrap();
        assert!(!Arc::ptr_eq(&a.senders, &c.senders));
        // Handed-over sockets are taken only where the address has none yet.
        let dups: Vec<OwnedFd> = a.senders.0.iter().map(|f| f.try_clone().unwrap()).collect();
        let kept = shared_senders(here, dups).unwrap();
        assert!(Arc::ptr_eq(&kept, &a.senders));
        drop((a, b, c, kept));
        let again = TunnelSockets::open(here, port, 10).unwrap();
        assert_eq!(again.senders.0.len(), SENDERS);
        let whole: Vec<OwnedFd> = again
            .senders
            .0
            .iter()
            .map(|f| f.try_clone().unwrap())
            .collect();
        let raw: Vec<i32> = whole.iter().map(|f| f.as_raw_fd()).collect();
        drop(again);
        // The last port gone, what is handed over is what the address sends through.
        let adopted = shared_senders(here, whole).unwrap();
        let fds: Vec<i32> = adopted.0.iter().map(|f| f.as_raw_fd()).collect();
        assert_eq!(fds, raw);
    }
}
