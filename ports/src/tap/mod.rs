//! TAP ports: the switch's link to the host's own network stack.
//!
//! The port opens (or creates) a TAP interface and publishes a [`TapQueue`]: its descriptor
//! and the port's own receive buffers. A worker reads frames from the kernel into those
//! buffers, one `read` each, and delivers them as it delivers a VM's: one copy, from the
//! buffer straight into the destination VM's. Frames for the kernel go out with one
//! `writev` straight from the sending VM's buffers, the virtio-net header and the VLAN edit
//! as first pieces: no copy on the switch's side.
//!
//! Each frame both ways has a virtio-net header ([`device::TAP_VNET_HDR`] bytes): with
//! offloads on, TSO frames and checksums left to the receiver pass between the kernel and
//! the VMs as they are (or are finished by the switch for a VM that cannot take them).
//!
//! The buffers are memory like a VM's (a [`FrameMem`] of the port's own), so the data path
//! reads them through the same checked views.

pub mod device;
mod egress;
mod ingress;

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryError};
use vringswitch_config::{KindSettings, TapSettings};

use crate::frame::FrameMem;
use crate::frame::MAX_FRAME_LEN;
use crate::interface_watch::{Health, Watch, Watched};
use crate::port::{Attachment, PortHandle, RunningPort, StartError};
pub use device::{TapDevice, TAP_VNET_HDR};

/// Bytes of one receive buffer: the virtio-net header, the longest frame the switch
/// forwards, and one byte more. The kernel cuts a frame too long for the buffer to its
/// length and says nothing; a read that fills the buffer is such a frame
/// ([`TapRead::TooLong`]).
pub const TAP_BUFFER: u64 = (TAP_VNET_HDR + MAX_FRAME_LEN + 1) as u64;
/// Receive buffers: one per frame of the longest burst.
pub const TAP_BUFFERS: usize = 64;

/// What the workers use of a TAP port.
pub struct TapQueue {
    device: TapDevice,
    mem: FrameMem,
    /// A read failed: the interface is gone. Workers leave the queue alone; the port's
    /// monitor withdraws it.
    failed: AtomicBool,
    /// Offloads were asked of the kernel: it takes and sends TSO frames and checksums left
    /// to complete.
    offloads: bool,
    /// The interface's MTU, read at open and again by the port's monitor (an operator may
    /// change it with `ip link`).
    mtu: AtomicU32,
}

/// Bytes a frame may have beyond its interface's MTU: the Ethernet header and one VLAN
/// tag, as Linux's bridge allows (`is_skb_forwardable`).
pub const MTU_OVERHEAD: u32 = vringswitch_wire::vlan::TAGGED_HEADER_LEN as u32;

/// How reading a frame from the kernel went.
#[derive(Debug)]
pub enum TapRead {
    /// A frame of that many bytes is in the buffer, virtio-net header included.
    Frame(u32),
    /// Nothing is waiting.
    Empty,
    /// The frame did not fit in the buffer and was cut (a GSO frame larger than 64 KiB,
    /// from an interface whose `gso_max_size` was raised): dropped.
    TooLong,
    /// The descriptor failed (the interface was deleted, most likely).
    Failed(io::Error),
}

impl TapQueue {
    /// A queue on `device`, whose MTU is `mtu` if known (a handed-over interface may live
    /// in another network namespace, where this one cannot ask), else asked.
    fn new(device: TapDevice, offloads: bool, mtu: Option<u32>) -> io::Result<TapQueue> {
        let size = TAP_BUFFER as usize * TAP_BUFFERS;
        let mem = crate::frame::host_memory(size)?;
        let mtu = match mtu {
            Some(m) => m,
            None => crate::netif::mtu(device.name())?,
        };
        Ok(TapQueue {
            device,
            mem,
            failed: AtomicBool::new(false),
            offloads,
            mtu: AtomicU32::new(mtu),
        })
    }

    /// The longest frame the interface takes: a longer one (or a TSO frame whose segments
    /// would be) is dropped as `too_big`, as a Linux bridge drops it.
    #[inline]
    pub fn max_frame(&self) -> u32 {
        self.mtu
            .load(Ordering::Relaxed)
            .saturating_add(MTU_OVERHEAD)
    }

    /// Reads the interface's MTU again. Kept as it was if the interface cannot be asked
    /// (moved to another network namespace, where its name means nothing here).
    fn refresh_mtu(&self) {
        if let Ok(mtu) = crate::netif::mtu(self.device.name()) {
            self.mtu.store(mtu, Ordering::Relaxed);
        }
    }

    /// Marks the queue as failed (a read or write found the interface gone).
    pub fn mark_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// Whether a worker found the interface gone.
    #[inline]
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// The offloads the kernel takes in frames written to it, and may use in frames it
    /// sends.
    #[inline]
    pub fn offloads(&self) -> crate::offload::OffloadCaps {
        if self.offloads {
            crate::offload::OffloadCaps::ALL
        } else {
            crate::offload::OffloadCaps::NONE
        }
    }

    /// The memory the receive buffers are in.
    pub fn mem(&self) -> &FrameMem {
        &self.mem
    }

    /// The address of receive buffer `i` in [`Self::mem`]: the frame's virtio-net header,
    /// then the frame.
    #[inline]
    pub fn buffer(i: usize) -> u64 {
        i as u64 * TAP_BUFFER
    }

    /// Reads the next frame from the kernel into buffer `i` (below [`TAP_BUFFERS`]).
    #[inline]
    pub fn read_frame(&self, i: usize) -> TapRead {
        let mut file = self.device.file();
        let at = GuestAddress(Self::buffer(i % TAP_BUFFERS));
        match vm_memory::Bytes::read_volatile_from(&self.mem, at, &mut file, TAP_BUFFER as usize) {
            Ok(0) => TapRead::Empty,
            Ok(n) if n as u64 >= TAP_BUFFER => TapRead::TooLong,
            Ok(n) => TapRead::Frame(n as u32),
            Err(GuestMemoryError::IOError(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                TapRead::Empty
            }
            Err(GuestMemoryError::IOError(e)) => TapRead::Failed(e),
            Err(e) => TapRead::Failed(io::Error::other(e.to_string())),
        }
    }

    /// The descriptor frames are written to, and a sleeping worker waits on.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.device.file().as_fd()
    }

    pub fn ifname(&self) -> &str {
        self.device.name()
    }
}

/// How a TAP port is set up.
#[derive(Debug, Clone)]
pub struct TapPortConfig {
    pub ifname: String,
    pub mtu: Option<u32>,
    /// Whether TSO frames and checksums left to complete pass to and from the kernel (else
    /// the switch finishes them, and the kernel sends only finished frames).
    pub offloads: bool,
}

/// Why a TAP port could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot open TAP interface {ifname}: {error}")]
pub struct TapError {
    pub ifname: String,
    pub error: io::Error,
}

/// A running TAP port: its interface stays open until [`TapPort::stop`]. A monitor thread
/// takes the port down when the interface disappears (someone deleted it) and up again
/// when it can be opened again: at once if the port had created it (it is made again),
/// once it exists again otherwise.
pub struct TapPort {
    handle: Arc<PortHandle>,
    created: bool,
    ifname: String,
    watch: Watch,
    /// The MTU the interface is set to (0: left as it is), shared with the monitor, which
    /// sets it again on an interface it makes again.
    mtu: Arc<AtomicU32>,
}

/// Publishes a queue on `device` to the workers.
fn publish(
    handle: &PortHandle,
    device: TapDevice,
    offloads: bool,
    mtu: Option<u32>,
) -> io::Result<()> {
    let queue = TapQueue::new(device, offloads, mtu)?;
    handle.set_connected(true);
    handle.attach(Arc::new(Attachment::Tap(queue)));
    Ok(())
}

impl TapPort {
    /// Opens the interface (creating it if missing), sets it up and publishes it to the
    /// workers.
    pub fn start(handle: Arc<PortHandle>, config: TapPortConfig) -> Result<TapPort, TapError> {
        let fail = |error| TapError {
            ifname: config.ifname.clone(),
            error,
        };
        let device = TapDevice::open(&config.ifname, config.mtu, config.offloads).map_err(fail)?;
        tracing::info!(
            port = %handle.name(),
            ifname = %config.ifname,
            created = device.created(),
            "TAP interface open"
        );
        Self::serve(handle, config, device, None)
    }

    /// Carries on a TAP port from the descriptor the process before this one handed over,
    /// with whether it created the interface and the interface's MTU (`None`: its
    /// interface was gone then, and is opened as at a start). The interface is left as it
    /// is: it may have been moved to another network namespace.
    pub fn take_over(
        handle: Arc<PortHandle>,
        config: TapPortConfig,
        handed: Option<(std::fs::File, bool, u32)>,
    ) -> Result<TapPort, TapError> {
        let Some((file, created, mtu)) = handed else {
            return Self::start(handle, config);
        };
        let device =
            TapDevice::adopt(file, &config.ifname, created, config.offloads).map_err(|error| {
                TapError {
                    ifname: config.ifname.clone(),
                    error,
                }
            })?;
        tracing::info!(port = %handle.name(), ifname = %config.ifname,
            "TAP interface carried on from the previous process");
        Self::serve(handle, config, device, Some(mtu))
    }

    /// Publishes `device` (of MTU `mtu`, if known) to the workers and starts the port's
    /// monitor.
    fn serve(
        handle: Arc<PortHandle>,
        config: TapPortConfig,
        device: TapDevice,
        mtu: Option<u32>,
    ) -> Result<TapPort, TapError> {
        let fail = |error| TapError {
            ifname: config.ifname.clone(),
            error,
        };
        let created = device.created();
        publish(&handle, device, config.offloads, mtu).map_err(fail)?;
        let mtu = Arc::new(AtomicU32::new(config.mtu.unwrap_or(0)));
        let watched = TapWatch {
            config: config.clone(),
            created,
            mtu: mtu.clone(),
        };
        let watch = Watch::start(format!("tap-{}", config.ifname), handle.clone(), watched)
            .map_err(fail)?;
        Ok(TapPort {
            handle,
            created,
            ifname: config.ifname,
            watch,
            mtu,
        })
    }

    pub fn handle(&self) -> &Arc<PortHandle> {
        &self.handle
    }

    /// Whether the port created its interface (which then goes with it).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Withdraws the interface from the workers; it closes once the last worker let go of
    /// it, and is gone then if the port created it.
    pub fn stop(&mut self) {
        if self.watch.stop(&self.handle) {
            tracing::debug!(port = %self.handle.name(), ifname = %self.ifname, "TAP port stopped");
        }
    }
}

impl Drop for TapPort {
    fn drop(&mut self) {
        self.stop();
    }
}

impl RunningPort for TapPort {
    fn handle(&self) -> &Arc<PortHandle> {
        &self.handle
    }

    fn stop(&mut self) {
        TapPort::stop(self)
    }

    fn change(&mut self, settings: &vringswitch_config::KindSpec) -> Result<(), String> {
        let vringswitch_config::KindSpec::Tap(tap) = settings else {
            return Err("not the settings of a TAP port".into());
        };
        if let Some(mtu) = tap.mtu {
            crate::netif::set_up(&self.ifname, Some(mtu))
                .map_err(|e| format!("cannot set the MTU of {} to {mtu}: {e}", self.ifname))?;
        }
        self.mtu.store(tap.mtu.unwrap_or(0), Ordering::Relaxed);
        tracing::info!(port = %self.handle.name(), ifname = %self.ifname,
            mtu = tap.mtu.unwrap_or(0), "TAP interface changed");
        Ok(())
    }

    /// A new process finds the interface by the port's `ifname`: one renamed under the
    /// port (which carries on with its descriptor) could not be carried over.
    fn handover_refusal(&self) -> Option<String> {
        let attachment = self.handle.attachment();
        let Some(Attachment::Tap(q)) = attachment.as_deref() else {
            return None;
        };
        match q.device.current_name() {
            Some(now) if now != self.ifname => Some(format!(
                "its interface {} was renamed {now}: give it its name back, or add the port \
                 again with ifname = \"{now}\"",
                self.ifname
            )),
            _ => None,
        }
    }

    /// Hands over a duplicate of the interface's descriptor (frames the kernel queued on
    /// it wait there for the new process), whether the port created the interface, and
    /// its MTU. Bytes: that flag (0 or 1), then 1 and the MTU (4 bytes, little-endian) if
    /// a descriptor follows, else 0.
    fn hand_over(&mut self) -> Result<crate::port::HandedPort, String> {
        // What can fail comes first: until the monitor stops, nothing has changed.
        let mut handed = crate::port::HandedPort {
            data: vec![u8::from(self.created), 0],
            fds: Vec::new(),
        };
        if let Some(Attachment::Tap(q)) = self.handle.attachment().as_deref() {
            if !q.failed() {
                let fd = q
                    .device
                    .file()
                    .try_clone()
                    .map_err(|e| format!("cannot duplicate its descriptor: {e}"))?;
                handed.data[1] = 1;
                handed
                    .data
                    .extend_from_slice(&q.mtu.load(Ordering::Relaxed).to_le_bytes());
                handed.fds.push(fd.into());
            }
        }
        // The workers are stopped, and only the monitor changes the attachment.
        self.watch.stop_for_handover(&self.handle);
        self.handle.set_connected(false);
        Ok(handed)
    }
}

/// Carries on a TAP port the process before this one handed over
/// ([`RunningPort::hand_over`]).
pub fn take_over_port(
    handle: Arc<PortHandle>,
    settings: &TapSettings,
    handed: crate::port::HandedPort,
) -> Result<crate::port::TakenOver, StartError> {
    let config = config_of(&handle, settings);
    let bad = |what: &str| {
        StartError::new(TapError {
            ifname: config.ifname.clone(),
            error: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("what the previous process handed over does not read: {what}"),
            ),
        })
    };
    let mut fds = handed.fds.into_iter();
    let device = match (handed.data.as_slice(), fds.next(), fds.next()) {
        (&[created @ (0 | 1), 1, a, b, c, d], Some(fd), None) => Some((
            std::fs::File::from(fd),
            created == 1,
            u32::from_le_bytes([a, b, c, d]),
        )),
        (&[0 | 1, 0], None, None) => None,
        _ => return Err(bad("not a flag, an MTU and one descriptor")),
    };
    TapPort::take_over(handle, config, device)
        .map(|p| (Box::new(p) as Box<dyn RunningPort>, Ok(())))
        .map_err(StartError::new)
}

fn config_of(handle: &PortHandle, settings: &TapSettings) -> TapPortConfig {
    TapPortConfig {
        ifname: settings
            .ifname
            .clone()
            .unwrap_or_else(|| handle.name().to_owned()),
        mtu: settings.mtu,
        offloads: settings.offloads(),
    }
}

/// Starts a TAP port as its settings say (the interface named after the port unless
/// `ifname` is given).
pub fn start_port(
    handle: Arc<PortHandle>,
    settings: &TapSettings,
) -> Result<Box<dyn RunningPort>, StartError> {
    let config = config_of(&handle, settings);
    TapPort::start(handle, config)
        .map(|p| Box::new(p) as Box<dyn RunningPort>)
        .map_err(StartError::new)
}

/// The monitor's view of a TAP port.
struct TapWatch {
    config: TapPortConfig,
    created: bool,
    /// The MTU as last set (0: left as it is): see [`TapPort::change`].
    mtu: Arc<AtomicU32>,
}

impl Watched for TapWatch {
    const WHAT: &'static str = "TAP interface";

    fn ifname(&self) -> &str {
        &self.config.ifname
    }

    fn health(&mut self, _: &PortHandle, att: &Attachment) -> Option<Health> {
        let Attachment::Tap(q) = att else { return None };
        Some(if !q.failed() && q.device.is_attached() {
            q.refresh_mtu();
            Health::Up
        } else {
            Health::Gone
        })
    }

    /// The port made its interface: it makes it again. Otherwise it waits for whoever made
    /// it to make it again.
    fn may_return(&self) -> bool {
        self.created || crate::netif::interface_exists(&self.config.ifname)
    }

    fn reopen(&mut self, handle: &PortHandle) -> Result<(), String> {
        let mtu = Some(self.mtu.load(Ordering::Relaxed)).filter(|&m| m != 0);
        TapDevice::open(&self.config.ifname, mtu, self.config.offloads)
            .and_then(|d| publish(handle, d, self.config.offloads, None))
            .map_err(|e| e.to_string())
    }
}
