//! The tunnel's two sockets and the system calls on them: a UDP socket bound to this
//! host's tunnel address and port, which receives (the kernel checks the outer IPv4 and UDP
//! headers and says who sent each packet), and a raw IPv4 socket that sends packets whose
//! outer headers the port builds itself (so that each frame's UDP source port follows its
//! inner flow, and "don't fragment" is set).
//!
//! Packets are received a burst at a time with `recvmmsg` straight into the port's buffers
//! (memory of its own, read by the workers through the same checked views as a VM's), and
//! each frame is sent with one `sendmsg` from where it lies: the outer headers and the
//! edit's prefix from the stack, the rest from the sender's buffers.
// The recvmmsg/sendmsg calls and the sockets' options: each unsafe block says why it is
// sound.
#![allow(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::frame::view::MemView;
use crate::frame::Seg;

/// Most pieces one packet is sent in: outer headers, the edit's prefix, and the frame's
/// segments (split where they cross a region of the sender's memory).
pub const MAX_SEND_PIECES: usize = 2 + crate::frame::MAX_SEGS * 2;

/// The tunnel's sockets.
#[derive(Debug)]
pub struct TunnelSockets {
    /// Receives: bound to the local tunnel address and UDP port, in the group of the
    /// tunnel ports there (one per VNI, see [`super::endpoint`]).
    pub udp: OwnedFd,
    /// Sends: raw IPv4, headers included.
    pub raw: OwnedFd,
    /// `udp`'s place in its group; dropped after it (fields drop in order).
    pub membership: super::endpoint::Membership,
}

/// A packet received: its length and who sent it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    pub len: usize,
    pub from: Option<SocketAddrV4>,
    /// Longer than the buffer: cut by the kernel.
    pub truncated: bool,
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

/// A new socket of `domain`, `kind` and `protocol`, non-blocking and close-on-exec.
fn socket(kind: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: no pointer is passed; a descriptor returned is ours to own.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(last_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Socket buffers asked for both ways: a burst of large frames each way fits many times.
const SOCKET_BUFFER: i32 = 4 << 20;

impl TunnelSockets {
    /// Binds the receiving socket to `local:port` for the port of VNI `vni` (other VNIs'
    /// ports may bind there too) and opens the sending one (needs CAP_NET_RAW).
    pub fn open(local: Ipv4Addr, port: u16, vni: u32) -> io::Result<TunnelSockets> {
        let udp = socket(libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
        set_int(udp.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        // Bigger buffers if the system allows; the defaults do otherwise.
        let _ = set_int(
            udp.as_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            SOCKET_BUFFER,
        );
        let sa = sockaddr(SocketAddrV4::new(local, port));
        // SAFETY: `sa` is a sockaddr_in that lives for the call, its size given.
        let r = unsafe {
            libc::bind(
                udp.as_raw_fd(),
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if r < 0 {
            let e = last_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot bind UDP {local}:{port}: {e}"),
            ));
        }
        let raw = socket(libc::SOCK_RAW, libc::IPPROTO_RAW).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open a raw IPv4 socket to send with (needs CAP_NET_RAW): {e}"),
            )
        })?;
        let _ = set_int(
            raw.as_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            SOCKET_BUFFER,
        );
        // Path MTU discovery: a packet over the route's MTU is refused (EMSGSIZE) rather
        // than fragmented; the headers carry "don't fragment" besides.
        set_int(
            raw.as_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )?;
        let membership =
            super::endpoint::join(SocketAddrV4::new(local, port), vni, udp.as_fd(), None)?;
        Ok(TunnelSockets {
            udp,
            raw,
            membership,
        })
    }

    /// The sockets the process before this one opened for the port of VNI `vni` on
    /// `local:port`, its receiving one at `place` in its group.
    pub fn adopt(
        udp: OwnedFd,
        raw: OwnedFd,
        endpoint: SocketAddrV4,
        vni: u32,
        place: usize,
    ) -> io::Result<TunnelSockets> {
        let membership = super::endpoint::join(endpoint, vni, udp.as_fd(), Some(place))?;
        Ok(TunnelSockets {
            udp,
            raw,
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
        // SAFETY: plain old data, all zeroes valid.
        let mut names: [libc::sockaddr_in; MAX] = unsafe { std::mem::zeroed() };
        // SAFETY: plain old data, all zeroes valid (null pointers, zero lengths).
        let mut msgs: [libc::mmsghdr; MAX] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: each of the first `n` headers names a sockaddr_in of ours and one iovec
        // over a range of the port's own memory, mapped for as long as `view`'s memory
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
            let name = &names[i];
            let from = (m.msg_hdr.msg_namelen as usize >= std::mem::size_of::<libc::sockaddr_in>()
                && i32::from(name.sin_family) == libc::AF_INET)
                .then(|| {
                    SocketAddrV4::new(
                        Ipv4Addr::from(name.sin_addr.s_addr.to_ne_bytes()),
                        u16::from_be(name.sin_port),
                    )
                });
            out[i] = Received {
                len: (m.msg_len as usize).min(bufs[i].1),
                from,
                truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            };
        }
        Ok(got)
    }

    /// Sends one packet to `to`: `heads` (host bytes: the outer headers, the edit's
    /// prefix), then `len` bytes of the frame in `segs` of the memory `src` sees, after
    /// its first `skip` bytes. Returns the bytes sent.
    pub fn send(
        &self,
        to: Ipv4Addr,
        heads: &[&[u8]],
        src: &mut MemView<'_>,
        segs: &[Seg],
        skip: usize,
        len: usize,
    ) -> io::Result<usize> {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut iov = [empty; MAX_SEND_PIECES];
        let n = src.gather_iovecs(&mut iov, heads, segs, skip, len)?;
        let sa = sockaddr(SocketAddrV4::new(to, 0));
        // SAFETY: zeroed plain old data, then every pointer set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&sa as *const libc::sockaddr_in).cast_mut().cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = n;
        // SAFETY: `msg` names `sa` and the first `n` iovecs, which point at `heads` (our
        // own slices, borrowed for the call) or at memory of `src` valid for their lengths
        // (gather_iovecs); sendmsg only reads them.
        let r = unsafe { libc::sendmsg(self.raw.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
        if r < 0 {
            Err(last_error())
        } else {
            Ok(r as usize)
        }
    }

    /// The descriptor a sleeping worker waits on.
    pub fn receiver(&self) -> BorrowedFd<'_> {
        self.udp.as_fd()
    }
}
