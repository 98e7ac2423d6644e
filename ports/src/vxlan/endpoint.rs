//! Several tunnel ports on one address and UDP port (one per VNI, as a VTEP carries many
//! segments): each port's receiving socket joins one `SO_REUSEPORT` group bound there, and
//! a classic BPF program attached to the group gives each packet to the socket of its VNI
//! (read from the VXLAN header), so that every port receives its own segment's packets
//! only. A packet of a VNI no port has goes to the group's first socket, whose port counts
//! it as another VNI's (`bad_tunnel`).
//!
//! The program names sockets by their index in the group, which the kernel gives in the
//! order they joined and, when one leaves, fills with the last. The group's members are
//! kept here in the same order, and the program made again at each change. Across an
//! upgrade each port hands its index over with its sockets.
// setsockopt with a BPF program: the unsafe block says why it is sound.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Most tunnel ports on one address and UDP port (the program is two instructions each, a
/// classic BPF program at most 4096).
pub const MAX_PER_ENDPOINT: usize = 1024;

/// A member of a group: its port's VNI and its socket.
#[derive(Debug, Clone, Copy)]
struct Member {
    id: u64,
    vni: u32,
    fd: RawFd,
}

/// The groups of this process, by address and UDP port; each group's members in the
/// kernel's order (`None`: a place whose socket this process does not know yet, during
/// an upgrade).
fn groups() -> &'static Mutex<HashMap<SocketAddr, Vec<Option<Member>>>> {
    static GROUPS: OnceLock<Mutex<HashMap<SocketAddr, Vec<Option<Member>>>>> = OnceLock::new();
    GROUPS.get_or_init(Default::default)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A socket's place in its group; it leaves the group (here) when dropped, after the
/// socket closed.
#[derive(Debug)]
pub struct Membership {
    endpoint: SocketAddr,
    id: u64,
    /// The socket lives on in another process (handed over): this process leaves the
    /// group as it is.
    handed: AtomicBool,
}

/// One classic BPF instruction.
fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_RSH_K: u16 = (libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// The steering program for members with VNIs `vnis` (by index; `None` leaves a place
/// unreached): the VNI from the VXLAN header (bytes 4 to 6 of the UDP payload), compared
/// with each member's; the index of the one that has it, else 0.
pub fn program(vnis: &[Option<u32>]) -> Vec<libc::sock_filter> {
    let mut p = vec![insn(BPF_LD_W_ABS, 0, 0, 4), insn(BPF_RSH_K, 0, 0, 8)];
    for (i, vni) in vnis.iter().enumerate() {
        if let Some(v) = vni {
            // Equal: the next instruction (return i); else past it.
            p.push(insn(BPF_JEQ_K, 0, 1, *v));
            p.push(insn(BPF_RET_K, 0, 0, i as u32));
        }
    }
    p.push(insn(BPF_RET_K, 0, 0, 0));
    p
}

/// Attaches `prog` to the group of socket `fd`.
fn attach(fd: RawFd, prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `prog`, which lives for the call; the kernel copies the
    // program. `fd` is a socket of ours, open while its member is in the group.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Attaches the program for `members` to their group (through any of their sockets).
fn steer(members: &[Option<Member>]) -> io::Result<()> {
    let Some(fd) = members.iter().flatten().map(|m| m.fd).next() else {
        return Ok(());
    };
    let vnis: Vec<Option<u32>> = members.iter().map(|m| m.map(|m| m.vni)).collect();
    attach(fd, &program(&vnis))
}

/// A UDP socket bound to `endpoint` in its `SO_REUSEPORT` group, for the port of VNI
/// `vni`; `place`: its index in the group, when it was made by the process before this
/// one (and `socket` is it).
pub fn join(
    endpoint: SocketAddr,
    vni: u32,
    socket: BorrowedFd<'_>,
    place: Option<usize>,
) -> io::Result<Membership> {
    let mut groups = groups().lock().unwrap_or_else(|e| e.into_inner());
    let members = groups.entry(endpoint).or_default();
    if members.iter().flatten().count() >= MAX_PER_ENDPOINT {
        return Err(io::Error::other(format!(
            "at most {MAX_PER_ENDPOINT} tunnel ports on UDP {endpoint}"
        )));
    }
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let member = Member {
        id,
        vni,
        fd: socket.as_raw_fd(),
    };
    match place {
        None => members.push(Some(member)),
        Some(i) => {
            if members.len() <= i {
                members.resize(i + 1, None);
            }
            members[i] = Some(member);
        }
    }
    if let Err(e) = steer(members) {
        members.retain(|m| m.is_none_or(|m| m.id != id));
        return Err(io::Error::new(
            e.kind(),
            format!("cannot steer UDP {endpoint} by VNI: {e}"),
        ));
    }
    Ok(Membership {
        endpoint,
        id,
        handed: AtomicBool::new(false),
    })
}

impl Membership {
    /// The socket's index in its group.
    pub fn place(&self) -> Option<usize> {
        let groups = groups().lock().unwrap_or_else(|e| e.into_inner());
        groups
            .get(&self.endpoint)?
            .iter()
            .position(|m| m.is_some_and(|m| m.id == self.id))
    }

    /// The socket now lives in another process too: when it closes here, the group does
    /// not change.
    pub fn handed_over(&self) {
        self.handed.store(true, Ordering::Relaxed);
    }
}

impl Drop for Membership {
    /// Called once the socket closed (a field after it): the kernel filled its place with
    /// the group's last socket; so does this, and steers the group again.
    fn drop(&mut self) {
        let mut groups = groups().lock().unwrap_or_else(|e| e.into_inner());
        let Some(members) = groups.get_mut(&self.endpoint) else {
            return;
        };
        let Some(i) = members
            .iter()
            .position(|m| m.is_some_and(|m| m.id == self.id))
        else {
            return;
        };
        if self.handed.load(Ordering::Relaxed) {
            return;
        }
        members.swap_remove(i);
        if members.iter().all(Option::is_none) {
            groups.remove(&self.endpoint);
            return;
        }
        if let Err(e) = steer(members) {
            tracing::warn!(endpoint = %self.endpoint, error = %e,
                "cannot steer the tunnel ports' packets by VNI after one went");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, UdpSocket};
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    use std::time::{Duration, Instant};

    /// A fresh descriptor of a UDP socket.
    fn udp_socket() -> io::Result<OwnedFd> {
        // SAFETY: no pointer is passed; a descriptor returned is ours to own.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::IPPROTO_UDP,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// A member socket of VNI `vni` on `endpoint`, as the port opens it.
    fn member(endpoint: SocketAddr, vni: u32) -> (UdpSocket, Membership) {
        let fd = udp_socket().unwrap();
        let one: i32 = 1;
        // SAFETY: `one` lives for the call, its size given; the socket is ours.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEPORT,
                (&one as *const i32).cast(),
                4,
            )
        };
        assert_eq!(r, 0);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: endpoint.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(match endpoint.ip() {
                    std::net::IpAddr::V4(a) => a.octets(),
                    std::net::IpAddr::V6(_) => unreachable!("IPv4 here"),
                }),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `sa` lives for the call, its size given; the socket is ours.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        let s = UdpSocket::from(fd);
        let m = join(endpoint, vni, s.as_fd(), None).unwrap();
        (s, m)
    }

    fn vxlan(vni: u32, tag: u8) -> Vec<u8> {
        let v = vni.to_be_bytes();
        vec![0x08, 0, 0, 0, v[1], v[2], v[3], 0, tag]
    }

    /// Which of `sockets` gets a packet sent to `to`, if one does within a second.
    fn who_gets(
        sockets: &[&UdpSocket],
        from: &UdpSocket,
        to: SocketAddr,
        p: &[u8],
    ) -> Option<usize> {
        from.send_to(p, to).unwrap();
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut buf = [0u8; 64];
        while Instant::now() < deadline {
            for (i, s) in sockets.iter().enumerate() {
                if let Ok(n) = s.recv(&mut buf) {
                    assert_eq!(&buf[..n], p);
                    return Some(i);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }

    #[test]
    fn each_vnis_packets_go_to_its_ports_socket_and_keep_going_when_one_leaves() {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let endpoint = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        let (a, ma) = member(endpoint, 10);
        let (b, mb) = member(endpoint, 20);
        let (c, mc) = member(endpoint, 30);
        assert_eq!(
            (ma.place(), mb.place(), mc.place()),
            (Some(0), Some(1), Some(2))
        );
        let from = UdpSocket::bind("127.0.0.1:0").unwrap();
        for round in 0..5u8 {
            // Many packets of each VNI, never to another port's socket.
            assert_eq!(
                who_gets(&[&a, &b, &c], &from, endpoint, &vxlan(20, round)),
                Some(1)
            );
            assert_eq!(
                who_gets(&[&a, &b, &c], &from, endpoint, &vxlan(30, round)),
                Some(2)
            );
            assert_eq!(
                who_gets(&[&a, &b, &c], &from, endpoint, &vxlan(10, round)),
                Some(0)
            );
            // An unknown VNI, and a packet too short to have one: the first socket.
            assert_eq!(
                who_gets(&[&a, &b, &c], &from, endpoint, &vxlan(99, round)),
                Some(0)
            );
            assert_eq!(who_gets(&[&a, &b, &c], &from, endpoint, &[round]), Some(0));
        }
        // The first leaves: the kernel moves the last into its place, and so does the
        // program.
        drop(a);
        drop(ma);
        assert_eq!((mc.place(), mb.place()), (Some(0), Some(1)));
        for round in 0..5u8 {
            assert_eq!(
                who_gets(&[&b, &c], &from, endpoint, &vxlan(30, round)),
                Some(1)
            );
            assert_eq!(
                who_gets(&[&b, &c], &from, endpoint, &vxlan(20, round)),
                Some(0)
            );
        }
        // Handed over: leaving here changes nothing of the group.
        mb.handed_over();
        let kept = b.try_clone().unwrap();
        drop(b);
        drop(mb);
        assert_eq!(mc.place(), Some(0));
        assert_eq!(
            who_gets(&[&kept, &c], &from, endpoint, &vxlan(20, 9)),
            Some(0)
        );
        assert_eq!(
            who_gets(&[&kept, &c], &from, endpoint, &vxlan(30, 9)),
            Some(1)
        );
    }

    #[test]
    fn the_program_is_two_instructions_a_member_and_returns_the_first_by_default() {
        let p = program(&[Some(7), None, Some(9)]);
        assert_eq!(p.len(), 2 + 4 + 1);
        assert_eq!((p[2].code, p[2].k, p[2].jt, p[2].jf), (BPF_JEQ_K, 7, 0, 1));
        assert_eq!((p[3].code, p[3].k), (BPF_RET_K, 0));
        assert_eq!((p[4].k, p[5].k), (9, 2));
        assert_eq!((p[6].code, p[6].k), (BPF_RET_K, 0));
        assert!(program(&vec![Some(1); MAX_PER_ENDPOINT]).len() <= 4096);
    }
}
