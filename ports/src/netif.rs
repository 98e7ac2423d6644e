//! Interfaces of the host, asked about and set up through ioctls on a socket: what the
//! port kinds on a kernel interface (TAP, AF_XDP) share.

// The interface ioctls: each unsafe block says why the call is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Longest interface name Linux takes (`IFNAMSIZ` less the terminating NUL).
pub const MAX_IFNAME: usize = 15;

/// Whether an interface of that name exists in this network namespace.
pub fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// An `ifreq` naming `name` (checked by [`check_ifname`]), the rest zero.
pub(crate) fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name and a union of integers, addresses and a
    // pointer); all zeroes is a valid value of each.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &b) in req
        .ifr_name
        .iter_mut()
        .zip(name.as_bytes().iter().take(MAX_IFNAME))
    {
        *dst = b as libc::c_char;
    }
    req
}

/// Runs `request` on `fd` with `req`.
pub(crate) fn ioctl(
    fd: &impl AsRawFd,
    request: libc::c_ulong,
    req: &mut libc::ifreq,
) -> io::Result<()> {
    // SAFETY: every request used with it (TUNSETIFF, TUNGETIFF, SIOCGIFFLAGS, SIOCSIFFLAGS,
    // SIOCGIFMTU, SIOCSIFMTU) reads and/or writes one `struct ifreq`, which `req` is, valid
    // for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, req as *mut libc::ifreq) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A socket to ask the kernel about interfaces with.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The interface's index, if it exists in this network namespace. A deleted and
/// re-created interface of the same name has a new one.
pub fn ifindex(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads the NUL-terminated name, valid for the call.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (i != 0).then_some(i)
}

/// Interface `name`'s MTU, as `ip link` shows it.
pub fn mtu(name: &str) -> io::Result<u32> {
    let sock = control_socket()?;
    let mut req = ifreq(name);
    ioctl(&sock, libc::SIOCGIFMTU, &mut req)?;
    // SAFETY: SIOCGIFMTU filled the mtu member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).map_err(|_| io::Error::other(format!("negative MTU {mtu}")))
}

/// The MAC address an interface the daemon creates is given: the same for the same name on
/// the same host (`host_id`: /etc/machine-id), so that a TAP made again after a restart
/// keeps its address (neighbours' ARP caches, DHCP leases, firewall rules stay right), and
/// different across hosts. Locally administered and unicast, as systemd's
/// `MACAddressPolicy=persistent` makes them; FNV-1a of the two, which needs to be stable,
/// not secret.
pub fn stable_mac(host_id: &[u8], ifname: &str) -> [u8; 6] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in host_id.iter().chain([0u8].iter()).chain(ifname.as_bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = hash.to_be_bytes();
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// This host's identity for [`stable_mac`]: /etc/machine-id, or nothing where there is none
/// (the MAC is then stable per name only).
pub fn host_id() -> Vec<u8> {
    std::fs::read("/etc/machine-id")
        .map(|id| id.trim_ascii().to_vec())
        .unwrap_or_default()
}

/// Sets interface `name`'s Ethernet address.
pub fn set_mac(name: &str, mac: [u8; 6]) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = ifreq(name);
    // SAFETY: writing plain-data members of the union, which was zeroed by ifreq.
    unsafe {
        req.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (d, s) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac) {
            *d = s as libc::c_char;
        }
    }
    ioctl(&sock, libc::SIOCSIFHWADDR, &mut req)
}

/// Sets interface `name` up, with `mtu` if given. An interface already up is left as it
/// is: one made and set up by whoever owns it needs no privilege.
pub fn set_up(name: &str, mtu: Option<u32>) -> io::Result<()> {
    let sock = control_socket()?;
    if let Some(mtu) = mtu {
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
        ioctl(&sock, libc::SIOCSIFMTU, &mut req)?;
    }
    let mut req = ifreq(name);
    ioctl(&sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let up = libc::IFF_UP as libc::c_short;
    if flags & up == 0 {
        req.ifr_ifru.ifru_flags = flags | up;
        ioctl(&sock, libc::SIOCSIFFLAGS, &mut req).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot set it up ({e}): give the daemon CAP_NET_ADMIN, or set it up \
                     first (ip link set {name} up)"
                ),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stable_mac_is_local_unicast_and_depends_on_the_host_and_the_name() {
        let id = b"4c4c4544003610468052b4c04f4d4d32";
        let mac = stable_mac(id, "up0");
        assert_eq!(mac, stable_mac(id, "up0"));
        assert_eq!(
            mac[0] & 0x03,
            0x02,
            "locally administered, unicast: {mac:02x?}"
        );
        assert_ne!(mac, stable_mac(id, "up1"));
        assert_ne!(mac, stable_mac(b"another host", "up0"));
        // Fixed by the algorithm (FNV-1a of one zero byte, checked by hand), not by a seed:
        // the same on every run and build.
        assert_eq!(stable_mac(b"", ""), [0xae, 0x63, 0xbd, 0x4c, 0x86, 0x01]);
    }

    #[test]
    fn an_ifreq_holds_the_name_nul_terminated() {
        let req = ifreq("tap0");
        let name: Vec<u8> = req.ifr_name.iter().map(|&c| c as u8).collect();
        assert_eq!(&name[..5], b"tap0\0");
        assert!(name[4..].iter().all(|&b| b == 0));
    }

    #[test]
    fn the_mtu_of_an_interface_is_read_and_a_missing_one_is_an_error() {
        let lo: u32 = std::fs::read_to_string("/sys/class/net/lo/mtu")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(mtu("lo").unwrap(), lo);
        assert!(mtu("vs-no-such-if").is_err());
    }
}
