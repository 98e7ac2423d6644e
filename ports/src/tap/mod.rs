//! TAP ports: the switch's link to the host's own network stack.
//!
//! The port opens (or creates) a TAP interface and publishes a [`TapQueue`]: its descriptor
//! and the port's own receive buffers. A worker reads frames from the kernel into those
//! buffers, one `read` each, and delivers them as it delivers a VM's: one copy, from the
//! buffer straight into the destination VM's. Frames for the kernel go out with one
//! `writev` straight from the sending VM's buffers, the VLAN edit as a first piece: no copy
//! on the switch's side.
//!
//! The buffers are memory like a VM's (a [`GuestMem`] of the port's own), so the data path
//! reads them through the same checked views.

pub mod device;

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vm_memory::{GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::port::{Attachment, GuestMem, PortHandle};
use crate::vhost_user::rings::MAX_FRAME_LEN;
pub use device::TapDevice;

/// Bytes of one receive buffer: the longest frame the switch forwards.
pub const TAP_BUFFER: u64 = MAX_FRAME_LEN as u64;
/// Receive buffers: one per frame of the longest burst.
pub const TAP_BUFFERS: usize = 64;

/// What the workers use of a TAP port.
pub struct TapQueue {
    device: TapDevice,
    mem: GuestMem,
    /// A read failed: the interface is gone. Workers leave the queue alone; the port's
    /// monitor withdraws it.
    failed: AtomicBool,
}

/// How reading a frame from the kernel went.
#[derive(Debug)]
pub enum TapRead {
    /// A frame of that many bytes is in the buffer.
    Frame(u32),
    /// Nothing is waiting.
    Empty,
    /// The descriptor failed (the interface was deleted, most likely).
    Failed(io::Error),
}

impl TapQueue {
    fn new(device: TapDevice) -> io::Result<TapQueue> {
        let size = TAP_BUFFER as usize * TAP_BUFFERS;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)])
            .map_err(|e| io::Error::other(format!("cannot map the receive buffers: {e}")))?;
        Ok(TapQueue {
            device,
            mem,
            failed: AtomicBool::new(false),
        })
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

    /// The memory the receive buffers are in.
    pub fn mem(&self) -> &GuestMem {
        &self.mem
    }

    /// The address of receive buffer `i` in [`Self::mem`].
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
}

/// Why a TAP port could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot open TAP interface {ifname}: {error}")]
pub struct TapError {
    pub ifname: String,
    pub error: io::Error,
}

/// How often a TAP port checks that its interface is still there, or back.
const MONITOR_EVERY: Duration = Duration::from_millis(250);

/// A running TAP port: its interface stays open until [`TapPort::stop`]. A monitor thread
/// takes the port down when the interface disappears (someone deleted it) and up again
/// when it can be opened again: at once if the port had created it (it is made again),
/// once it exists again otherwise.
pub struct TapPort {
    handle: Arc<PortHandle>,
    created: bool,
    ifname: String,
    stop: Arc<AtomicBool>,
    monitor: Option<JoinHandle<()>>,
}

/// Publishes a queue on `device` to the workers.
fn publish(handle: &PortHandle, device: TapDevice) -> io::Result<()> {
    let queue = TapQueue::new(device)?;
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
        let device = TapDevice::open(&config.ifname, config.mtu).map_err(fail)?;
        let created = device.created();
        publish(&handle, device).map_err(fail)?;
        tracing::info!(
            port = handle.name(),
            ifname = %config.ifname,
            created,
            "TAP interface open"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let monitor = {
            let (handle, stop, config) = (handle.clone(), stop.clone(), config.clone());
            std::thread::Builder::new()
                .name(format!("tap-{}", config.ifname))
                .spawn(move || monitor(&handle, &config, created, &stop))
                .map_err(fail)?
        };
        Ok(TapPort {
            handle,
            created,
            ifname: config.ifname,
            stop,
            monitor: Some(monitor),
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
        self.stop.store(true, Ordering::Relaxed);
        if let Some(m) = self.monitor.take() {
            m.thread().unpark();
            let _ = m.join();
        }
        self.handle.detach();
        self.handle.set_connected(false);
        tracing::debug!(port = self.handle.name(), ifname = %self.ifname, "TAP port stopped");
    }
}

impl Drop for TapPort {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The monitor of a TAP port: down when its interface is gone, up when it is back.
fn monitor(handle: &PortHandle, config: &TapPortConfig, created: bool, stop: &AtomicBool) {
    let mut failures = crate::log_limit::LogLimiter::new(Duration::from_secs(60));
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(MONITOR_EVERY);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let current = handle.attachment();
        match current.as_deref() {
            Some(Attachment::Tap(q)) => {
                if !q.failed() && q.device.is_attached() {
                    continue;
                }
                handle.detach();
                handle.set_connected(false);
                tracing::warn!(
                    port = handle.name(),
                    ifname = %config.ifname,
                    "TAP interface is gone (deleted?): the port is down until it is back"
                );
            }
            Some(_) => continue,
            None => {
                // The port made its interface: it makes it again. Otherwise it waits for
                // whoever made it to make it again.
                if !created && !crate::netif::interface_exists(&config.ifname) {
                    continue;
                }
                match TapDevice::open(&config.ifname, config.mtu).and_then(|d| publish(handle, d)) {
                    Ok(()) => tracing::info!(
                        port = handle.name(),
                        ifname = %config.ifname,
                        "TAP interface is back: the port is up"
                    ),
                    Err(e) => {
                        if let Some(suppressed) = failures.check() {
                            tracing::warn!(port = handle.name(), ifname = %config.ifname,
                                error = %e, suppressed, "cannot open the TAP interface again");
                        }
                    }
                }
            }
        }
    }
}
