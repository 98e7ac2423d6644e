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
use std::os::unix::fs::OpenOptionsExt;

use crate::netif::{self, ifreq, interface_exists, ioctl, MAX_IFNAME};

/// A TAP interface and the descriptor its frames are read from and written to.
#[derive(Debug)]
pub struct TapDevice {
    file: File,
    name: String,
    /// The daemon created the interface (it goes when `file` closes).
    created: bool,
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
        netif::set_up(name, mtu)?;
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
