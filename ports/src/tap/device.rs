//! A Linux TAP interface opened through `/dev/net/tun`: created when missing (and gone
//! again when its last descriptor closes, as the kernel does for a TAP nobody made
//! persistent), or attached to when it exists (`ip tuntap add NAME mode tap`, left as it is
//! when the port goes).
//!
//! The ioctls are done here rather than through a TUN crate because the offloads to come
//! (`IFF_VNET_HDR`, `TUNSETOFFLOAD`, `TUNSETVNETHDRSZ`) are ioctls of the same descriptor,
//! which the crates do not offer. Each is one small `unsafe` call on a struct built here.

// The TAP ioctls: each unsafe block says why the call is sound.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Longest interface name Linux takes (`IFNAMSIZ` less the terminating NUL).
pub const MAX_IFNAME: usize = 15;

/// A TAP interface and the descriptor its frames are read from and written to.
#[derive(Debug)]
pub struct TapDevice {
    file: File,
    name: String,
    /// The daemon created the interface (it goes when `file` closes).
    created: bool,
}

/// Whether an interface of that name exists in this network namespace.
pub fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// An `ifreq` naming `name` (checked by [`check_ifname`]), the rest zero.
fn ifreq(name: &str) -> libc::ifreq {
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
fn ioctl(fd: &impl AsRawFd, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every request used here (TUNSETIFF, TUNGETIFF, SIOCGIFFLAGS, SIOCSIFFLAGS,
    // SIOCSIFMTU) reads and/or writes one `struct ifreq`, which `req` is, valid for the call.
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

impl TapDevice {
    /// Opens TAP interface `name` non-blocking, creating it if it does not exist, and sets
    /// it up (with `mtu` if given).
    pub fn open(name: &str, mtu: Option<u32>) -> io::Result<TapDevice> {
        // The name's characters are checked with the configuration; its length bounds the
        // copy into the kernel's struct.
        if name.is_empty() || name.len() > MAX_IFNAME || name.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} cannot be an interface name"),
            ));
        }
        let existed = interface_exists(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        ioctl(&file, libc::TUNSETIFF as libc::c_ulong, &mut req).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EPERM) if !existed => {
                    ": creating an interface needs CAP_NET_ADMIN; or make it first for the \
                     daemon's user (ip tuntap add NAME mode tap user USER)"
                }
                Some(libc::EPERM) => ": the interface belongs to another user",
                Some(libc::EINVAL) | Some(libc::EBUSY) => {
                    ": it is not a free TAP interface (another kind of interface, or in use)"
                }
                _ => "",
            };
            io::Error::new(e.kind(), format!("{e}{hint}"))
        })?;
        let dev = TapDevice {
            file,
            name: name.to_owned(),
            created: !existed,
        };
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
        // An interface already up (made and set up by whoever owns it) needs no privilege.
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
        Ok(dev)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the descriptor still has its interface: false once someone deleted it
    /// (`ip link del`), whichever network namespace it was moved to.
    pub fn is_attached(&self) -> bool {
        let mut req = ifreq("");
        ioctl(&self.file, libc::TUNGETIFF as libc::c_ulong, &mut req).is_ok()
    }

    /// Whether the daemon created the interface (it goes with the port).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The descriptor frames are read from and written to.
    pub fn file(&self) -> &File {
        &self.file
    }
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
}
