//! A Linux TAP interface opened through `/dev/net/tun`: created when missing (and gone
//! again when its last descriptor closes, as the kernel does for a TAP nobody made
//! persistent; made again, it gets the same MAC: `netif::stable_mac`), or attached to when
//! it exists (`ip tuntap add NAME mode tap`, left as it is
//! when the port goes).
//!
//! Every frame read or written carries a virtio-net header (`IFF_VNET_HDR`, 10 bytes:
//! `TUNSETVNETHDRSZ`), so that checksums and TSO frames pass between the host's stack and
//! the VMs as they are; `TUNSETOFFLOAD` says which the kernel may leave to the switch in
//! the frames it sends.
//!
//! The ioctls are done here rather than through a TUN crate because those offload ioctls
//! are ioctls of the same descriptor, which the crates do not offer. Each is one small
//! `unsafe` call on a value built here.

// The TAP ioctls: each unsafe block says why the call is sound.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;

use crate::netif::{self, ifreq, interface_exists, ioctl, MAX_IFNAME};

/// Length of the virtio-net header in front of each frame read or written.
pub const TAP_VNET_HDR: usize = 10;

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
    /// it up (with `mtu` if given). With `offloads`, the kernel may send frames whose
    /// checksum is left to complete and TSO frames (TCP, IPv4 and IPv6, with ECN).
    pub fn open(name: &str, mtu: Option<u32>, offloads: bool) -> io::Result<TapDevice> {
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
        req.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
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
        dev.set_vnet_header(offloads)?;
        if dev.created {
            netif::set_mac(name, netif::stable_mac(&netif::host_id(), name))?;
        }
        netif::set_up(name, mtu)?;
        Ok(dev)
    }

    /// Takes on the descriptor of TAP interface `name` that the process before this one
    /// opened (a hitless upgrade), `created` by it or not, checking that it is one: a TAP
    /// descriptor of that interface. The header and offloads are set as here.
    pub fn adopt(file: File, name: &str, created: bool, offloads: bool) -> io::Result<TapDevice> {
        let mut req = ifreq("");
        ioctl(&file, libc::TUNGETIFF as libc::c_ulong, &mut req).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the descriptor handed over is no TAP: {e}"),
            )
        })?;
        let got: Vec<u8> = req
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        if got != name.as_bytes() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the descriptor handed over is of interface {}, not {name}",
                    String::from_utf8_lossy(&got)
                ),
            ));
        }
        // SAFETY: TUNGETIFF wrote the flags into the union's flags member.
        let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
        if flags & libc::IFF_TAP == 0 || flags & libc::IFF_VNET_HDR == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the descriptor handed over is not a TAP with virtio-net headers",
            ));
        }
        let dev = TapDevice {
            file,
            name: name.to_owned(),
            created,
        };
        dev.set_vnet_header(offloads)?;
        Ok(dev)
    }

    /// Sets the header's length (an interface used before may have another) and the
    /// offloads the kernel may use in what it sends.
    fn set_vnet_header(&self, offloads: bool) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        let size: libc::c_int = TAP_VNET_HDR as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points at our
        // own `size` for the duration of the call.
        if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ as _, &size) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if offloads {
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
        } else {
            0
        };
        // SAFETY: TUNSETOFFLOAD takes its flags as the argument itself, no pointer.
        if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD as _, libc::c_ulong::from(flags)) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the interface the descriptor is attached to now (someone may have
    /// renamed it), if it still has one.
    pub fn current_name(&self) -> Option<String> {
        let mut req = ifreq("");
        ioctl(&self.file, libc::TUNGETIFF as libc::c_ulong, &mut req).ok()?;
        Some(
            req.ifr_name
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8 as char)
                .collect(),
        )
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
