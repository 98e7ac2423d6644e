//! Per-port packet counters, one cache-padded set per writer.
//!
//! Each forwarding worker owns one slot of every port and is its only writer, so the hot
//! path updates counters with a plain load and store (no read-modify-write shared across
//! cores). Readers (metrics, API) sum the slots at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// Why a frame was not delivered. Every drop is counted under exactly one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The destination RX ring had no (or not enough) free buffers.
    NoRxBuffer,
    /// A descriptor chain was malformed: wrong direction, outside guest memory, too short
    /// for the virtio-net header, or too many segments.
    BadDescriptor,
    /// The frame is larger than the switch forwards, or than the destination buffer without
    /// mergeable RX buffers.
    TooBig,
    /// The destination port has no connected peer (or its RX queue is not enabled).
    PortDown,
    /// The source MAC address is multicast or zero: such frames are never forwarded nor learnt.
    InvalidSrcMac,
    /// The destination MAC was learnt on the ingress port itself.
    Hairpin,
    /// The frame's VLAN is not allowed on the port it came in on or would go out of.
    VlanFiltered,
    /// The port is locked to a list of source MACs (port security) and the frame's source
    /// is not on it. Such frames are never learnt either.
    MacSpoofed,
    /// The frame's virtio-net header asked for an offload that was not negotiated, or
    /// described the frame wrongly: a checksum or header position outside it, an unknown
    /// segmentation type, a segment size under 536 bytes, a TSO frame over 64 KiB or one that
    /// is not TCP.
    BadOffload,
    /// The port's policer (`police_rx` for what it sends, `police_tx` for what it is sent)
    /// had no room for the frame.
    Policed,
    /// Sent by a mirror's output port, which carries mirrored frames only (its frames are
    /// taken, so that its guest's transmit queue never stalls, and dropped).
    MirrorOutput,
    /// A port with security groups: no rule allows the frame (on the sender's egress or
    /// the receiver's ingress), its connection was cut by a rule change, or it is neither
    /// IP nor ARP.
    AclDenied,
    /// A port with stateful security groups: the frame does not fit its connection's
    /// state (TCP flags or their order), or its headers cannot be read.
    CtInvalid,
    /// A port with stateful security groups: the frame would open a connection, and the
    /// connection table, or the port's share of it, is full.
    CtFull,
    /// A port with `allowed_ips`: the frame's source IP (an ARP or neighbour discovery
    /// sender too) is not one of them.
    IpSpoofed,
    /// A tunnel port: a packet from an address that is no tunnel end of its segment (not
    /// in its static list, not named by the control plane). Counted on the tunnel port.
    UnknownVtep,
    /// A tunnel port: a packet from a tunnel end that is not VXLAN (no VNI flag), carries
    /// another VNI, or less than an Ethernet header.
    BadTunnel,
}

impl DropReason {
    /// Every reason, in a stable order.
    pub const ALL: [DropReason; 17] = [
        DropReason::NoRxBuffer,
        DropReason::BadDescriptor,
        DropReason::TooBig,
        DropReason::PortDown,
        DropReason::InvalidSrcMac,
        DropReason::Hairpin,
        DropReason::VlanFiltered,
        DropReason::MacSpoofed,
        DropReason::BadOffload,
        DropReason::Policed,
        DropReason::MirrorOutput,
        DropReason::AclDenied,
        DropReason::CtInvalid,
        DropReason::CtFull,
        DropReason::IpSpoofed,
        DropReason::UnknownVtep,
        DropReason::BadTunnel,
    ];

    /// Label value used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoRxBuffer => "no_rx_buffer",
            DropReason::BadDescriptor => "bad_descriptor",
            DropReason::TooBig => "too_big",
            DropReason::PortDown => "port_down",
            DropReason::InvalidSrcMac => "invalid_src_mac",
            DropReason::Hairpin => "hairpin",
            DropReason::VlanFiltered => "vlan_filtered",
            DropReason::MacSpoofed => "mac_spoofed",
            DropReason::BadOffload => "bad_offload",
            DropReason::Policed => "policed",
            DropReason::MirrorOutput => "mirror_output",
            DropReason::AclDenied => "acl_denied",
            DropReason::CtInvalid => "ct_invalid",
            DropReason::CtFull => "ct_full",
            DropReason::IpSpoofed => "ip_spoofed",
            DropReason::UnknownVtep => "unknown_vtep",
            DropReason::BadTunnel => "bad_tunnel",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Queue pairs counted one by one; a port with more (none today: the configuration allows
/// 16) counts the rest under the last.
pub const COUNTED_QUEUE_PAIRS: usize = 16;

/// Counters of one port written by one worker. Direction is the switch's view: `rx` counts
/// frames received from the VM, `tx` frames delivered to the VM.
#[derive(Debug, Default)]
pub struct PortCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    /// Frames received on each queue pair's TX ring, and delivered into each RX ring.
    queue_rx_packets: [AtomicU64; COUNTED_QUEUE_PAIRS],
    queue_tx_packets: [AtomicU64; COUNTED_QUEUE_PAIRS],
    /// Cycles of this worker's polls of each queue pair's ingress that moved frames.
    queue_busy_cycles: [AtomicU64; COUNTED_QUEUE_PAIRS],
    offloads: [AtomicU64; OffloadAction::ALL.len()],
}

/// What the switch did with a frame delivered to a port whose header asked for offloads
/// (counted at the receiving port, once per frame whatever the number of segments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OffloadAction {
    /// Delivered with its header: the receiver completes the checksum or takes the TSO
    /// frame as it is.
    Passed,
    /// Its checksum was completed by the switch.
    Checksummed,
    /// Cut into segments by the switch.
    Segmented,
}

impl OffloadAction {
    pub const ALL: [OffloadAction; 3] = [
        OffloadAction::Passed,
        OffloadAction::Checksummed,
        OffloadAction::Segmented,
    ];

    /// Label value used in metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            OffloadAction::Passed => "passed",
            OffloadAction::Checksummed => "checksummed",
            OffloadAction::Segmented => "segmented",
        }
    }
}

/// The counter slot of queue pair `qp`.
#[inline]
fn queue_slot(qp: usize) -> usize {
    qp.min(COUNTED_QUEUE_PAIRS - 1)
}

/// Adds to a counter that has a single writer: a load and a store, no locked instruction.
/// Relaxed suffices: readers only need each value to be one that was written.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

impl PortCounters {
    /// Frames and bytes received from the VM on queue pair `qp`.
    #[inline]
    pub fn add_rx(&self, qp: usize, packets: u64, bytes: u64) {
        bump(&self.rx_packets, packets);
        bump(&self.rx_bytes, bytes);
        bump(&self.queue_rx_packets[queue_slot(qp)], packets);
    }

    /// Frames and bytes delivered to the VM on queue pair `qp`.
    #[inline]
    pub fn add_tx(&self, qp: usize, packets: u64, bytes: u64) {
        bump(&self.tx_packets, packets);
        bump(&self.tx_bytes, bytes);
        bump(&self.queue_tx_packets[queue_slot(qp)], packets);
    }

    /// Cycles of a poll of queue pair `qp`'s ingress that moved frames (once per burst).
    #[inline]
    pub fn add_busy(&self, qp: usize, cycles: u64) {
        bump(&self.queue_busy_cycles[queue_slot(qp)], cycles);
    }

    /// Frames dropped for `reason`.
    #[inline]
    pub fn add_drop(&self, reason: DropReason, packets: u64) {
        bump(&self.drops[reason.index()], packets);
    }

    /// A frame that asked for offloads, delivered after `action`.
    #[inline]
    pub fn add_offload(&self, action: OffloadAction) {
        bump(&self.offloads[action as usize], 1);
    }
}

/// A port's counters: one [`PortCounters`] per writer (worker), summed on read.
#[derive(Debug)]
pub struct PortStats {
    slots: Box<[CachePadded<PortCounters>]>,
}

/// A sum of all writers' counters at one instant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PortCountersSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: [u64; DropReason::ALL.len()],
    /// Frames received from the VM on each queue pair.
    pub queue_rx_packets: [u64; COUNTED_QUEUE_PAIRS],
    /// Frames delivered to the VM on each queue pair.
    pub queue_tx_packets: [u64; COUNTED_QUEUE_PAIRS],
    /// Cycles of busy polls of each queue pair's ingress.
    pub queue_busy_cycles: [u64; COUNTED_QUEUE_PAIRS],
    /// Frames delivered after each [`OffloadAction`].
    pub offloads: [u64; OffloadAction::ALL.len()],
}

impl PortCountersSnapshot {
    /// Drops counted under `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// Frames delivered after `action`.
    pub fn offloads(&self, action: OffloadAction) -> u64 {
        self.offloads[action as usize]
    }
}

impl PortStats {
    /// Counters for `writers` independent writers.
    pub fn new(writers: usize) -> PortStats {
        PortStats {
            slots: (0..writers.max(1))
                .map(|_| CachePadded::new(PortCounters::default()))
                .collect(),
        }
    }

    /// The slot of writer `writer`. Each writer must use only its own slot.
    #[inline]
    pub fn slot(&self, writer: usize) -> &PortCounters {
        &self.slots[writer]
    }

    /// Number of writer slots.
    pub fn writers(&self) -> usize {
        self.slots.len()
    }

    /// Adds `carried` (the port's counts in the process before this one), so that they
    /// never go backwards across an upgrade. Only while no worker runs: it writes the
    /// first worker's slot.
    pub fn carry(&self, carried: &PortCountersSnapshot) {
        let c = &self.slots[0];
        bump(&c.rx_packets, carried.rx_packets);
        bump(&c.rx_bytes, carried.rx_bytes);
        bump(&c.tx_packets, carried.tx_packets);
        bump(&c.tx_bytes, carried.tx_bytes);
        let pairs = [
            (&c.drops[..], &carried.drops[..]),
            (&c.queue_rx_packets[..], &carried.queue_rx_packets[..]),
            (&c.queue_tx_packets[..], &carried.queue_tx_packets[..]),
            (&c.queue_busy_cycles[..], &carried.queue_busy_cycles[..]),
            (&c.offloads[..], &carried.offloads[..]),
        ];
        for (counters, values) in pairs {
            for (counter, &n) in counters.iter().zip(values) {
                bump(counter, n);
            }
        }
    }

    /// Sums every writer's counters.
    pub fn snapshot(&self) -> PortCountersSnapshot {
        let mut s = PortCountersSnapshot::default();
        for c in self.slots.iter() {
            s.rx_packets += c.rx_packets.load(Ordering::Relaxed);
            s.rx_bytes += c.rx_bytes.load(Ordering::Relaxed);
            s.tx_packets += c.tx_packets.load(Ordering::Relaxed);
            s.tx_bytes += c.tx_bytes.load(Ordering::Relaxed);
            for (sum, d) in s.drops.iter_mut().zip(c.drops.iter()) {
                *sum += d.load(Ordering::Relaxed);
            }
            for (sum, q) in s.queue_rx_packets.iter_mut().zip(&c.queue_rx_packets) {
                *sum += q.load(Ordering::Relaxed);
            }
            for (sum, q) in s.queue_tx_packets.iter_mut().zip(&c.queue_tx_packets) {
                *sum += q.load(Ordering::Relaxed);
            }
            for (sum, q) in s.queue_busy_cycles.iter_mut().zip(&c.queue_busy_cycles) {
                *sum += q.load(Ordering::Relaxed);
            }
            for (sum, o) in s.offloads.iter_mut().zip(&c.offloads) {
                *sum += o.load(Ordering::Relaxed);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sums_all_writers() {
        let stats = PortStats::new(3);
        stats.slot(0).add_rx(0, 2, 128);
        stats.slot(2).add_rx(1, 1, 64);
        stats.slot(1).add_tx(1, 5, 500);
        stats.slot(1).add_drop(DropReason::NoRxBuffer, 3);
        stats.slot(2).add_drop(DropReason::NoRxBuffer, 1);
        stats.slot(0).add_drop(DropReason::Hairpin, 1);
        stats.slot(0).add_offload(OffloadAction::Segmented);
        stats.slot(2).add_offload(OffloadAction::Segmented);
        stats.slot(0).add_busy(1, 700);
        stats.slot(2).add_busy(1, 300);
        let s = stats.snapshot();
        assert_eq!(&s.queue_busy_cycles[..2], &[0, 1000]);
        assert_eq!(s.offloads(OffloadAction::Segmented), 2);
        assert_eq!(s.offloads(OffloadAction::Passed), 0);
        assert_eq!((s.rx_packets, s.rx_bytes), (3, 192));
        assert_eq!((s.tx_packets, s.tx_bytes), (5, 500));
        assert_eq!(s.drops(DropReason::NoRxBuffer), 4);
        assert_eq!(s.drops(DropReason::Hairpin), 1);
        assert_eq!(s.drops(DropReason::TooBig), 0);
        assert_eq!(&s.queue_rx_packets[..3], &[2, 1, 0]);
        assert_eq!(&s.queue_tx_packets[..3], &[0, 5, 0]);
    }

    #[test]
    fn carried_counts_add_to_every_counter() {
        let old = PortStats::new(2);
        old.slot(0).add_rx(0, 2, 128);
        old.slot(1).add_tx(1, 5, 500);
        old.slot(1).add_drop(DropReason::NoRxBuffer, 3);
        old.slot(0).add_offload(OffloadAction::Segmented);
        old.slot(1).add_busy(1, 700);
        let carried = old.snapshot();
        let new = PortStats::new(3);
        new.carry(&carried);
        assert_eq!(new.snapshot(), carried, "nothing lost, nothing added");
        new.slot(2).add_drop(DropReason::NoRxBuffer, 1);
        new.slot(1).add_rx(0, 1, 60);
        let s = new.snapshot();
        assert_eq!(s.drops(DropReason::NoRxBuffer), 4);
        assert_eq!(
            (s.rx_packets, s.rx_bytes, s.queue_rx_packets[0]),
            (3, 188, 3)
        );
        assert_eq!(s.queue_busy_cycles[1], 700);
        assert_eq!(s.offloads(OffloadAction::Segmented), 1);
    }

    #[test]
    fn queue_pairs_beyond_the_counted_ones_go_to_the_last() {
        let stats = PortStats::new(1);
        stats.slot(0).add_rx(COUNTED_QUEUE_PAIRS + 4, 1, 60);
        stats.slot(0).add_tx(usize::MAX, 2, 60);
        let s = stats.snapshot();
        assert_eq!(s.queue_rx_packets[COUNTED_QUEUE_PAIRS - 1], 1);
        assert_eq!(s.queue_tx_packets[COUNTED_QUEUE_PAIRS - 1], 2);
        assert_eq!(s.rx_packets, 1);
    }

    #[test]
    fn reason_labels_are_distinct() {
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::ALL.len());
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn zero_writers_still_has_a_slot() {
        assert_eq!(PortStats::new(0).writers(), 1);
    }
}
