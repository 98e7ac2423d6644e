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
