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
pub use ingress::{admit, Pending};
pub mod remotes;
pub mod socket;

use std::io;
use std::net::IpAddr;
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
    /// The receive buffers and what they hold.
    receiving: Arc<Receiving>,
    vni: u32,
    /// The VXLAN header of what it sends.
    header: [u8; VXLAN_HEADER_LEN],
    remotes: Arc<Remotes>,
    macs: Arc<RemoteMacs>,
    /// Inner source addresses are learnt behind the end they came from (static mode).
    learn: bool,
    /// The port's clock: learnt addresses carry the second they were last seen.
    epoch: Instant,
}

/// What a port receives into, shared by the queues published around its sockets (a change
/// of ends publishes another): packets received and not taken yet are taken by the next
/// queue polled, and no change allocates buffers.
struct Receiving {
    /// The receive buffers.
    mem: FrameMem,
    /// What was received and not taken yet (see [`ingress`]).
    pending: std::sync::Mutex<Box<ingress::Pending>>,
    /// A receive failed other than for want of packets: the socket is broken (for every
    /// queue published around it).
    failed: AtomicBool,
}

impl Receiving {
    fn new() -> io::Result<Arc<Receiving>> {
        Ok(Arc::new(Receiving {
            mem: crate::frame::host_memory(VXLAN_BUFFER as usize * VXLAN_BUFFERS)?,
            pending: Default::default(),
            failed: AtomicBool::new(false),
        }))
    }
}

impl VxlanQueue {
    /// The memory the receive buffers are in.
    pub fn mem(&self) -> &FrameMem {
        &self.receiving.mem
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
    pub address: IpAddr,
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
    pub local: IpAddr,
    pub udp_port: u16,
    pub control: VxlanControl,
    pub remotes: Vec<IpAddr>,
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
    pub local: IpAddr,
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

/// A queue for the workers on `sockets` (receiving into `receiving`), its remote ends as
/// `config` says (flooding to those in `flood`, else to all), knowing the addresses
/// `carried` (MAC, the end's address, learnt) behind those of them it has.
fn new_queue(
    config: &VxlanPortConfig,
    flood: Option<&[IpAddr]>,
    sockets: Arc<TunnelSockets>,
    receiving: Arc<Receiving>,
    epoch: Instant,
    carried: &[([u8; 6], IpAddr, bool)],
) -> VxlanQueue {
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
    VxlanQueue {
        config: config.clone(),
        sockets,
        receiving,
        vni: config.vni,
        header: vringswitch_wire::vxlan::header(config.vni),
        remotes,
        macs,
        learn: config.control == VxlanControl::Static,
        epoch,
    }
}

/// The addresses `q` knows, with the address of the end each is behind.
fn known(q: &VxlanQueue) -> Vec<([u8; 6], IpAddr, bool)> {
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
        carried: &[([u8; 6], IpAddr, bool)],
    ) -> Result<VxlanPort, VxlanError> {
        let fail = |error| VxlanError {
            local: config.local,
            port: config.udp_port,
            error,
        };
        let sockets = Arc::new(sockets);
        let epoch = Instant::now();
        let receiving = Receiving::new().map_err(fail)?;
        let queue = new_queue(&config, None, sockets.clone(), receiving, epoch, carried);
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
        let Some(Attachment::Vxlan(q)) = attachment.as_deref() else {
            return Err("its sockets are not open".into());
        };
        let queue = new_queue(
            &config,
            None,
            self.sockets.clone(),
            q.receiving.clone(),
            self.epoch,
            &known(q),
        );
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
    /// remote addresses known. Bytes: 3 (the version), the place (2 bytes, little-endian),
    /// then per address its MAC (6 bytes), whether it was learnt (1), the length of its
    /// end's address (4 or 16) and that address (see [`carried_addresses`]).
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
        for fd in &q.sockets.senders.0 {
            fds.push(dup(fd)?);
        }
        let place = q
            .sockets
            .membership
            .place()
            .ok_or("its receiving socket has no place in its group")?;
        let mut data = vec![3u8];
        data.extend_from_slice(&(place as u16).to_le_bytes());
        for (mac, end, learnt) in q.macs.list() {
            let Some(remote) = q.remotes.get(end) else {
                continue;
            };
            data.extend_from_slice(&mac);
            data.push(u8::from(learnt));
            match remote.addr {
                IpAddr::V4(a) => {
                    data.push(4);
                    data.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    data.push(16);
                    data.extend_from_slice(&a.octets());
                }
            }
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
    pub fn set_ends(&self, ends: &[IpAddr], flood: &[IpAddr]) -> io::Result<bool> {
        let attachment = self.handle.attachment();
        let Some(Attachment::Vxlan(q)) = attachment.as_deref() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the tunnel port is not open",
            ));
        };
        let have: Vec<IpAddr> = q.remotes.iter().map(|r| r.addr).collect();
        let flooded: Vec<IpAddr> = q
            .remotes
            .flood()
            .iter()
            .filter_map(|&i| q.remotes.get(i).map(|r| r.addr))
            .collect();
        let same = |a: &[IpAddr], b: &[IpAddr]| {
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
        let queue = new_queue(
            &config,
            Some(flood),
            q.sockets.clone(),
            q.receiving.clone(),
            q.epoch,
            &known(q),
        );
        self.handle.attach(Arc::new(Attachment::Vxlan(queue)));
        tracing::debug!(port = %self.handle.name(), ends = ends.len(), flood = flood.len(),
            "VXLAN tunnel's remote ends changed by its control plane");
        Ok(true)
    }

    /// Puts `mac` behind end `end`; false if the port has no such end (or is not open).
    pub fn install(&self, mac: [u8; 6], end: IpAddr) -> bool {
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
    pub fn known(&self) -> Vec<([u8; 6], IpAddr)> {
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

/// What a process before this one handed over of a tunnel port ([`RunningPort::hand_over`]):
/// its receiving socket's place in its group and the addresses it knew (MAC, the end's
/// address, learnt). Version 3 is this one's; version 2 (IPv4 ends only) had per address
/// its MAC, the end's IPv4 address and whether it was learnt, 11 bytes; version 1 had no
/// place (one tunnel port per address and UDP port then: its socket alone there).
#[allow(clippy::type_complexity)]
fn carried_addresses(data: &[u8]) -> Result<(usize, Vec<([u8; 6], IpAddr, bool)>), &'static str> {
    let place = |a: u8, b: u8| usize::from(u16::from_le_bytes([a, b]));
    let v2 = |entries: &[u8]| {
        if !entries.len().is_multiple_of(11) {
            return Err("not addresses of 11 bytes each");
        }
        Ok(entries
            .chunks_exact(11)
            .map(|e| {
                let mac = [e[0], e[1], e[2], e[3], e[4], e[5]];
                let addr = std::net::Ipv4Addr::new(e[6], e[7], e[8], e[9]);
                (mac, IpAddr::V4(addr), e[10] == 1)
            })
            .collect())
    };
    match data {
        [1, entries @ ..] => Ok((0, v2(entries)?)),
        [2, a, b, entries @ ..] => Ok((place(*a, *b), v2(entries)?)),
        [3, a, b, entries @ ..] => {
            let mut rest: &[u8] = entries;
            let mut out = Vec::new();
            // Each turn takes 8 bytes at least: bounded by the data's length.
            while !rest.is_empty() {
                let [m0, m1, m2, m3, m4, m5, learnt, len, tail @ ..] = rest else {
                    return Err("an address cut short");
                };
                let mac = [*m0, *m1, *m2, *m3, *m4, *m5];
                let (addr, tail) = match (*len, tail) {
                    (4, [a, b, c, d, tail @ ..]) => (IpAddr::from([*a, *b, *c, *d]), tail),
                    (16, t) if t.len() >= 16 => {
                        let mut o = [0u8; 16];
                        o.copy_from_slice(&t[..16]);
                        (IpAddr::from(o), &t[16..])
                    }
                    _ => return Err("an address neither IPv4 nor IPv6"),
                };
                out.push((mac, addr, *learnt == 1));
                rest = tail;
            }
            Ok((place(*a, *b), out))
        }
        _ => Err("not version 1, 2 or 3"),
    }
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
    let (place, carried) = carried_addresses(&handed.data).map_err(bad)?;
    tracing::info!(port = %handle.name(), addresses = carried.len(),
        "VXLAN tunnel carried on from the previous process");
    let endpoint = std::net::SocketAddr::new(config.local, config.udp_port);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_process_before_handed_over_reads_in_every_version() {
        let mac = [2, 0, 0, 0, 0, 7];
        let v4: IpAddr = "10.0.0.2".parse().unwrap();
        let v6: IpAddr = "2001:db8::2".parse().unwrap();
        // Version 2: the place, then MAC, IPv4 address, learnt.
        let v2 = [&[2, 5, 0][..], &mac, &[10, 0, 0, 2, 1]].concat();
        assert_eq!(carried_addresses(&v2), Ok((5, vec![(mac, v4, true)])));
        // Version 1: no place.
        let v1 = [&[1][..], &mac, &[10, 0, 0, 2, 0]].concat();
        assert_eq!(carried_addresses(&v1), Ok((0, vec![(mac, v4, false)])));
        // Version 3: MAC, learnt, the address's length and the address.
        let v3 = [
            &[3, 1, 1][..],
            &mac,
            &[1, 4, 10, 0, 0, 2],
            &mac,
            &[0, 16],
            &v6_octets(v6),
        ]
        .concat();
        assert_eq!(
            carried_addresses(&v3),
            Ok((257, vec![(mac, v4, true), (mac, v6, false)]))
        );
        assert_eq!(carried_addresses(&[3, 0, 0]), Ok((0, vec![])));
        // Cut short, a length of neither family, an unknown version: refused.
        assert!(carried_addresses(&v3[..v3.len() - 1]).is_err());
        assert!(
            carried_addresses(&[&[3, 0, 0][..], &mac, &[1, 6, 1, 2, 3, 4, 5, 6]].concat()).is_err()
        );
        assert!(carried_addresses(&v2[..v2.len() - 1]).is_err());
        assert!(carried_addresses(&[4, 0, 0]).is_err());
        assert!(carried_addresses(&[]).is_err());
    }

    fn v6_octets(a: IpAddr) -> [u8; 16] {
        match a {
            IpAddr::V6(a) => a.octets(),
            IpAddr::V4(_) => unreachable!(),
        }
    }
}
