//! VXLAN tunnel ports (RFC 7348): the bridge's link to the same segment on other hosts.
//!
//! A tunnel port sends each frame for a VM elsewhere to the tunnel end (VTEP) that VM is
//! behind, behind a VXLAN header, through UDP sockets (the kernel adds the outer IPv4 and
//! UDP headers): the frames of a burst go together from where they lie, each from the
//! socket its inner flow's hash picks (so that the outer source port follows the flow and
//! the underlay's ECMP spreads the tunnel's flows), "don't fragment" set (a packet over
//! the path's MTU is counted `too_big`, never fragmented); see [`socket`] and the egress.
//! Broadcast, multicast and unknown frames go to every end of the flood list (head-end
//! replication).
//!
//! It receives on its UDP port of this host's tunnel address, a burst at a time
//! (`recvmmsg`, UDP GRO) into its own buffers, and forwards the inner frames as a VM's, in
//! one copy.
//! Only the ends of the segment are listened to: a packet from any other address counts
//! as `unknown_vtep`, one without the VXLAN flag, with another VNI or cut short as
//! `bad_tunnel`.
//!
//! The ends and the MAC addresses behind them ([`remotes`]) come from the port's settings
//! in static mode (`remotes`, flood and learn: each inner source address is learnt behind
//! the end it came from). In EVPN mode they come from the control plane, which installs
//! them; until it does, the port has no remote end.

mod egress;
pub mod endpoint;
pub(crate) use egress::Batch;
mod ingress;
pub use ingress::admit;
pub mod remotes;
pub mod socket;

use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vringswitch_config::{VxlanControl, VxlanSettings};
use vringswitch_wire::vxlan::VXLAN_HEADER_LEN;

use crate::frame::{FrameMem, MAX_FRAME_LEN};
use crate::port::{Attachment, PortHandle, RunningPort, StartError};
pub use remotes::{Learnt, Remote, RemoteId, RemoteMacs, Remotes};
pub use socket::TunnelSockets;

/// Bytes of one receive buffer: a VXLAN header and the largest frame the switch forwards
/// (an outer IPv4 datagram holds less), and one byte more: a packet that fills the buffer
/// was cut.
pub const VXLAN_BUFFER: u64 = (VXLAN_HEADER_LEN + MAX_FRAME_LEN + 1) as u64;
/// Receive buffers: one per frame of the longest burst.
pub const VXLAN_BUFFERS: usize = 64;
/// Remote MAC addresses a port keeps (learnt and installed).
pub const REMOTE_MACS: usize = 16 * 1024;
/// A learnt remote address not seen for this long is forgotten (a Linux bridge's and the
/// switch's own FDB ageing).
pub const MAC_AGEING: Duration = Duration::from_secs(300);

/// What the workers use of a tunnel port.
pub struct VxlanQueue {
    /// What the port was set up with (`remotes`: the ends this queue has).
    config: VxlanPortConfig,
    sockets: Arc<TunnelSockets>,
    /// The receive buffers.
    mem: FrameMem,
    vni: u32,
    /// The VXLAN header of what it sends.
    header: [u8; VXLAN_HEADER_LEN],
    remotes: Arc<Remotes>,
    macs: Arc<RemoteMacs>,
    /// Inner source addresses are learnt behind the end they came from (static mode).
    learn: bool,
    /// The port's clock: learnt addresses carry the second they were last seen.
    epoch: Instant,
    /// A receive failed other than for want of packets: the socket is broken.
    failed: AtomicBool,
    /// What was received and not taken yet (see [`ingress`]).
    received: std::sync::Mutex<Box<ingress::Pending>>,
}

impl VxlanQueue {
    /// The memory the receive buffers are in.
    pub fn mem(&self) -> &FrameMem {
        &self.mem
    }

    /// The address of receive buffer `i` in [`Self::mem`].
    pub fn buffer(i: usize) -> u64 {
        (i % VXLAN_BUFFERS) as u64 * VXLAN_BUFFER
    }

    pub fn vni(&self) -> u32 {
        self.vni
    }

    pub fn remotes(&self) -> &Remotes {
        &self.remotes
    }

    pub fn macs(&self) -> &RemoteMacs {
        &self.macs
    }

    /// Seconds since the port started.
    fn now(&self) -> u32 {
        self.epoch.elapsed().as_secs() as u32
    }
}

/// A remote end as the control plane shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEnd {
    pub address: Ipv4Addr,
    /// The MAC addresses behind it, and whether each was learnt (else installed by the
    /// control plane).
    pub macs: Vec<([u8; 6], bool)>,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

/// The ends of `remotes` with the addresses `macs` puts behind them.
fn remote_ends(remotes: &Remotes, macs: &RemoteMacs) -> Vec<RemoteEnd> {
    let known = macs.list();
    remotes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            let mut behind: Vec<([u8; 6], bool)> = known
                .iter()
                .filter(|&&(_, end, _)| usize::from(end) == i)
                .map(|&(mac, _, learnt)| (mac, learnt))
                .collect();
            behind.sort_unstable();
            RemoteEnd {
                address: r.addr,
                macs: behind,
                tx_packets: load(&r.counters.tx_packets),
                tx_bytes: load(&r.counters.tx_bytes),
                rx_packets: load(&r.counters.rx_packets),
                rx_bytes: load(&r.counters.rx_bytes),
            }
        })
        .collect()
}

/// How a tunnel port is set up.
#[derive(Debug, Clone)]
pub struct VxlanPortConfig {
    pub vni: u32,
    pub local: Ipv4Addr,
    pub udp_port: u16,
    pub control: VxlanControl,
    pub remotes: Vec<Ipv4Addr>,
}

impl VxlanPortConfig {
    pub fn from_settings(s: &VxlanSettings) -> VxlanPortConfig {
        VxlanPortConfig {
            vni: s.vni(),
            local: s.local_addr(),
            udp_port: s.udp_port(),
            control: s.control(),
            remotes: s.remote_addrs(),
        }
    }
}

/// Why a tunnel port could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot open VXLAN tunnel on {local}:{port}: {error}")]
pub struct VxlanError {
    pub local: Ipv4Addr,
    pub port: u16,
    pub error: io::Error,
}

/// A running tunnel port: its sockets stay open until [`VxlanPort::stop`]. A thread ages
/// the learnt remote addresses.
pub struct VxlanPort {
    handle: Arc<PortHandle>,
    sockets: Arc<TunnelSockets>,
    /// The port's clock (see [`VxlanQueue::now`]), kept across changes.
    epoch: Instant,
    macs: Arc<RemoteMacs>,
    stop: Arc<AtomicBool>,
    ager: Option<std::thread::JoinHandle<()>>,
}

/// A queue for the workers on `sockets`, its remote ends as `config` says (flooding to
/// those in `flood`, else to all), knowing the addresses `carried` (MAC, the end's
/// address, learnt) behind those of them it has.
fn new_queue(
    config: &VxlanPortConfig,
    flood: Option<&[Ipv4Addr]>,
    sockets: Arc<TunnelSockets>,
    epoch: Instant,
    carried: &[([u8; 6], Ipv4Addr, bool)],
) -> io::Result<VxlanQueue> {
    let mem = crate::frame::host_memory(VXLAN_BUFFER as usize * VXLAN_BUFFERS)?;
    let remotes = Arc::new(Remotes::with_flood(
        &config.remotes,
        flood.unwrap_or(&config.remotes),
        config.udp_port,
    ));
    let macs = Arc::new(RemoteMacs::new(REMOTE_MACS));
    let now = epoch.elapsed().as_secs() as u32;
    for &(mac, end, learnt) in carried {
        let Some(id) = remotes.find(end) else {
            continue;
        };
        let key = remotes::mac_key(mac);
        if learnt {
            macs.learn(key, id, now);
        } else {
            let _ = macs.install(key, id);
        }
    }
    Ok(VxlanQueue {
        config: config.clone(),
        sockets,
        mem,
        vni: config.vni,
        header: vringswitch_wire::vxlan::header(config.vni),
        remotes,
        macs,
        learn: config.control == VxlanControl::Static,
        epoch,
        failed: AtomicBool::new(false),
        received: Default::default(),
    })
}

/// The addresses `q` knows, with the address of the end each is behind.
fn known(q: &VxlanQueue) -> Vec<([u8; 6], Ipv4Addr, bool)> {
    q.macs
        .list()
        .into_iter()
        .filter_map(|(mac, end, learnt)| Some((mac, q.remotes.get(end)?.addr, learnt)))
        .collect()
}

impl VxlanPort {
    /// Opens the sockets and publishes the port to the workers.
    pub fn start(
        handle: Arc<PortHandle>,
        config: VxlanPortConfig,
    ) -> Result<VxlanPort, VxlanError> {
        let sockets =
            TunnelSockets::open(config.local, config.udp_port, config.vni).map_err(|error| {
                VxlanError {
                    local: config.local,
                    port: config.udp_port,
                    error,
                }
            })?;
        let port = Self::serve(handle, config.clone(), sockets, &[])?;
        tracing::info!(
            port = %port.handle.name(),
            vni = config.vni,
            local = %config.local,
            udp_port = config.udp_port,
            control = %config.control,
            remotes = config.remotes.len(),
            "VXLAN tunnel open"
        );
        Ok(port)
    }

    /// Publishes a port on `sockets` to the workers, knowing the remote addresses
    /// `carried` (address, the end's address, learnt) from the process before.
    fn serve(
        handle: Arc<PortHandle>,
        config: VxlanPortConfig,
        sockets: TunnelSockets,
        carried: &[([u8; 6], Ipv4Addr, bool)],
    ) -> Result<VxlanPort, VxlanError> {
        let fail = |error| VxlanError {
            local: config.local,
            port: config.udp_port,
            error,
        };
        let sockets = Arc::new(sockets);
        let epoch = Instant::now();
        let queue = new_queue(&config, None, sockets.clone(), epoch, carried).map_err(fail)?;
        let macs = queue.macs.clone();
        handle.set_connected(true);
        handle.attach(Arc::new(Attachment::Vxlan(queue)));
        let stop = Arc::new(AtomicBool::new(false));
        let ager = {
            // The queue in effect (a change of remotes publishes another).
            let (stop, attached) = (stop.clone(), handle.clone());
            std::thread::Builder::new()
                .name(format!("vxlan-{}", handle.name()))
                .spawn(move || {
                    // Woken every 100 ms to see the stop flag; ages once a second.
                    let mut ticks = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                        ticks += 1;
                        if ticks.is_multiple_of(10) {
                            if let Some(Attachment::Vxlan(q)) = attached.attachment().as_deref() {
                                let before = q.now().saturating_sub(MAC_AGEING.as_secs() as u32);
                                q.macs.age(before);
                            }
                        }
                    }
                })
                .map_err(fail)?
        };
        Ok(VxlanPort {
            handle,
            sockets,
            epoch,
            macs,
            stop,
            ager: Some(ager),
        })
    }

    /// Stops the ager thread (the port's only thread); whether it ran.
    fn stop_ager(&mut self) -> bool {
        self.stop.store(true, Ordering::Relaxed);
        match self.ager.take() {
            Some(t) => {
                let _ = t.join();
                true
            }
            None => false,
        }
    }

    /// The remote addresses the port knows (those of the queue in effect).
    pub fn macs(&self) -> Arc<RemoteMacs> {
        match self.handle.attachment().as_deref() {
            Some(Attachment::Vxlan(q)) => q.macs.clone(),
            _ => self.macs.clone(),
        }
    }

    /// Withdraws the port from the workers; its sockets close once the last worker let go.
    pub fn stop(&mut self) {
        if self.stop_ager() {
            self.handle.detach();
            self.handle.set_connected(false);
            tracing::debug!(port = %self.handle.name(), "VXLAN tunnel closed");
        }
    }
}

impl Drop for VxlanPort {
    fn drop(&mut self) {
        self.stop();
    }
}

impl RunningPort for VxlanPort {
    fn handle(&self) -> &Arc<PortHandle> {
        &self.handle
    }

    fn stop(&mut self) {
        VxlanPort::stop(self)
    }

    /// A static port's `remotes` change while it runs: a queue with the new ends is
    /// published around the same sockets, keeping the addresses known behind the ends
    /// that stay (those behind an end that went are forgotten).
    fn change(&mut self, settings: &vringswitch_config::KindSpec) -> Result<(), String> {
        let vringswitch_config::KindSpec::Vxlan(v) = settings else {
            return Err("not the settings of a VXLAN port".into());
        };
        let config = VxlanPortConfig::from_settings(v);
        let attachment = self.handle.attachment();
        let carried = match attachment.as_deref() {
            Some(Attachment::Vxlan(q)) => known(q),
            _ => Vec::new(),
        };
        let queue = new_queue(&config, None, self.sockets.clone(), self.epoch, &carried)
            .map_err(|e| format!("cannot make the port's buffers: {e}"))?;
        self.macs = queue.macs.clone();
        self.handle.attach(Arc::new(Attachment::Vxlan(queue)));
        tracing::info!(port = %self.handle.name(), remotes = config.remotes.len(),
            "VXLAN tunnel's remote ends changed");
        Ok(())
    }

    fn handover_refusal(&self) -> Option<String> {
        None
    }

    /// Hands over duplicates of its sockets, the receiving one first (packets queued on it
    /// wait there for the new process), the receiving socket's place in its group and the
    /// remote addresses known. Bytes: 2 (the version), the place (2 bytes, little-endian),
    /// then per address its MAC (6 bytes), its end's IPv4 address (4) and whether it was
    /// learnt (1).
    fn hand_over(&mut self) -> Result<crate::port::HandedPort, String> {
        let attachment = self.handle.attachment();
        let Some(Attachment::Vxlan(q)) = attachment.as_deref() else {
            return Err("its sockets are not open".into());
        };
        let dup = |fd: &std::os::fd::OwnedFd| {
            fd.try_clone()
                .map_err(|e| format!("cannot duplicate a socket: {e}"))
        };
        let mut fds = vec![dup(&q.sockets.udp)?];
        for fd in &q.sockets.senders {
            fds.push(dup(fd)?);
        }
        let place = q
            .sockets
            .membership
            .place()
            .ok_or("its receiving socket has no place in its group")?;
        let mut data = vec![2u8];
        data.extend_from_slice(&(place as u16).to_le_bytes());
        for (mac, end, learnt) in q.macs.list() {
            let Some(remote) = q.remotes.get(end) else {
                continue;
            };
            data.extend_from_slice(&mac);
            data.extend_from_slice(&remote.addr.octets());
            data.push(u8::from(learnt));
        }
        q.sockets.membership.handed_over();
        self.stop_ager();
        self.handle.set_connected(false);
        Ok(crate::port::HandedPort { data, fds })
    }
}

/// A control plane's hold on a running tunnel port (EVPN): which ends it has and floods
/// to, which MAC address is behind which end. It works on the queue in effect: a change of
/// ends publishes a new one around the same sockets.
pub struct Routing {
    handle: Arc<PortHandle>,
}

impl Routing {
    pub fn new(handle: Arc<PortHandle>) -> Routing {
        Routing { handle }
    }

    /// Gives the port the ends `ends`, flooding to those of them in `flood`, unless it has
    /// them already: a queue with them is published around the same sockets, keeping the
    /// addresses behind the ends that stay. Whether it changed anything.
    pub fn set_ends(&self, ends: &[Ipv4Addr], flood: &[Ipv4Addr]) -> io::Result<bool> {
        let attachment = self.handle.attachment();
        let Some(Attachment::Vxlan(q)) = attachment.as_deref() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the tunnel port is not open",
            ));
        };
        let have: Vec<Ipv4Addr> = q.remotes.iter().map(|r| r.addr).collect();
        let flooded: Vec<Ipv4Addr> = q
            .remotes
            .flood()
            .iter()
            .filter_map(|&i| q.remotes.get(i).map(|r| r.addr))
            .collect();
        let same = |a: &[Ipv4Addr], b: &[Ipv4Addr]| {
            let (mut a, mut b) = (a.to_vec(), b.to_vec());
            a.sort_unstable();
            b.sort_unstable();
            a == b
        };
        if same(&have, ends) && same(&flooded, flood) {
            return Ok(false);
        }
        let mut config = q.config.clone();
        config.remotes = ends.to_vec();
        let queue = new_queue(&config, Some(flood), q.sockets.clone(), q.epoch, &known(q))?;
        self.handle.attach(Arc::new(Attachment::Vxlan(queue)));
        tracing::debug!(port = %self.handle.name(), ends = ends.len(), flood = flood.len(),
            "VXLAN tunnel's remote ends changed by its control plane");
        Ok(true)
    }

    /// Puts `mac` behind end `end`; false if the port has no such end (or is not open).
    pub fn install(&self, mac: [u8; 6], end: Ipv4Addr) -> bool {
        let attachment = self.handle.attachment();
        let Some(Attachment::Vxlan(q)) = attachment.as_deref() else {
            return false;
        };
        let Some(id) = q.remotes.find(end) else {
            return false;
        };
        q.macs.install(remotes::mac_key(mac), id) != Learnt::Kept
    }

    /// Forgets where `mac` is; whether the port knew.
    pub fn withdraw(&self, mac: [u8; 6]) -> bool {
        match self.handle.attachment().as_deref() {
            Some(Attachment::Vxlan(q)) => q.macs.remove(remotes::mac_key(mac)),
            _ => false,
        }
    }

    /// The addresses the port knows, each with its end's address.
    pub fn known(&self) -> Vec<([u8; 6], Ipv4Addr)> {
        match self.handle.attachment().as_deref() {
            Some(Attachment::Vxlan(q)) => known(q).into_iter().map(|(m, a, _)| (m, a)).collect(),
            _ => Vec::new(),
        }
    }
}

/// Starts a tunnel port as its settings say.
pub fn start_port(
    handle: Arc<PortHandle>,
    settings: &VxlanSettings,
) -> Result<Box<dyn RunningPort>, StartError> {
    VxlanPort::start(handle, VxlanPortConfig::from_settings(settings))
        .map(|p| Box::new(p) as Box<dyn RunningPort>)
        .map_err(StartError::new)
}

/// Carries on a tunnel port on the sockets the process before this one handed over
/// ([`RunningPort::hand_over`]), with the remote addresses it knew.
pub fn take_over_port(
    handle: Arc<PortHandle>,
    settings: &VxlanSettings,
    handed: crate::port::HandedPort,
) -> Result<crate::port::TakenOver, StartError> {
    let config = VxlanPortConfig::from_settings(settings);
    let bad = |what: &str| {
        StartError::new(VxlanError {
            local: config.local,
            port: config.udp_port,
            error: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("what the previous process handed over does not read: {what}"),
            ),
        })
    };
    let mut fds = handed.fds.into_iter();
    let Some(udp) = fds.next() else {
        return Err(bad("no socket"));
    };
    // The sending sockets (a process that sent through one raw socket handed that over:
    // it is closed, and sending sockets are opened).
    let senders: Vec<_> = fds.collect();
    // Version 1 (one tunnel port per address and UDP port then): its socket alone there.
    let (place, entries) = match handed.data.split_first() {
        Some((&1, entries)) => (0, entries),
        Some((&2, [a, b, entries @ ..])) => (usize::from(u16::from_le_bytes([*a, *b])), entries),
        _ => return Err(bad("not version 1 or 2")),
    };
    if entries.len() % 11 != 0 {
        return Err(bad("not addresses of 11 bytes each"));
    }
    let carried: Vec<([u8; 6], Ipv4Addr, bool)> = entries
        .chunks_exact(11)
        .map(|e| {
            let mac = [e[0], e[1], e[2], e[3], e[4], e[5]];
            (mac, Ipv4Addr::new(e[6], e[7], e[8], e[9]), e[10] == 1)
        })
        .collect();
    tracing::info!(port = %handle.name(), addresses = carried.len(),
        "VXLAN tunnel carried on from the previous process");
    let endpoint = std::net::SocketAddrV4::new(config.local, config.udp_port);
    let sockets =
        TunnelSockets::adopt(udp, senders, endpoint, config.vni, place).map_err(|error| {
            StartError::new(VxlanError {
                local: config.local,
                port: config.udp_port,
                error,
            })
        })?;
    VxlanPort::serve(handle, config, sockets, &carried)
        .map(|p| (Box::new(p) as Box<dyn RunningPort>, Ok(())))
        .map_err(StartError::new)
}
