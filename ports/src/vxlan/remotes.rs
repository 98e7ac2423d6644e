//! The other ends of a tunnel's segment and the MAC addresses behind them.
//!
//! [`Remotes`] is the set of remote tunnel ends (VTEPs): their addresses, the outer headers
//! to each, which of them get broadcast and unknown frames (the flood list: head-end
//! replication), and counters per end. It is fixed while a queue is attached; a change
//! publishes a new queue around the same sockets and MAC table.
//!
//! [`RemoteMacs`] says behind which end each remote MAC address is: learnt from what
//! arrives (static mode's flood and learn) or installed by the control plane (EVPN's type-2
//! routes). Workers look it up for each frame they send and learn into it for each one
//! they receive, the control side ages and installs: every entry is one 64-bit word
//! (address and end) changed by compare-and-swap, so nobody waits for anybody.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Counters of one remote end, as the workers write them.
#[derive(Debug, Default)]
pub struct RemoteCounters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
}

/// What a burst sent to (or took from) one end, frame after frame: added to the end's
/// counters once per run of frames to the same end, not per frame (they are shared by the
/// workers, which count per worker everything else).
#[derive(Debug, Default)]
pub struct Tally {
    end: Option<RemoteId>,
    packets: u64,
    bytes: u64,
}

/// Which of an end's counters a [`Tally`] adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Sent,
    Received,
}

impl Tally {
    /// One frame of `bytes` to or from `end` of `remotes`.
    #[inline]
    pub fn add(&mut self, remotes: &Remotes, way: Way, end: RemoteId, bytes: u64) {
        if self.end != Some(end) {
            self.flush(remotes, way);
            self.end = Some(end);
        }
        self.packets += 1;
        self.bytes += bytes;
    }

    /// Adds what the run counted to its end's counters.
    pub fn flush(&mut self, remotes: &Remotes, way: Way) {
        if let Some(r) = self.end.take().and_then(|e| remotes.get(e)) {
            let c = &r.counters;
            let (packets, bytes) = match way {
                Way::Sent => (&c.tx_packets, &c.tx_bytes),
                Way::Received => (&c.rx_packets, &c.rx_bytes),
            };
            packets.fetch_add(self.packets, Ordering::Relaxed);
            bytes.fetch_add(self.bytes, Ordering::Relaxed);
        }
        (self.packets, self.bytes) = (0, 0);
    }
}

/// An address as a key that sorts: its family, then the address as a number.
#[inline]
fn addr_key(a: IpAddr) -> (bool, u128) {
    match a {
        IpAddr::V4(v4) => (false, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (true, u128::from(v6)),
    }
}

/// One remote tunnel end.
#[derive(Debug)]
pub struct Remote {
    pub addr: IpAddr,
    /// Where what is sent to it goes: its address and the tunnel's UDP port.
    pub to: SocketAddr,
    pub counters: RemoteCounters,
}

/// Index of a remote end in its [`Remotes`].
pub type RemoteId = u16;

/// The remote ends of a segment.
#[derive(Debug)]
pub struct Remotes {
    ends: Vec<Remote>,
    /// Their addresses (as keys, see [`addr_key`]), sorted, with their index: a
    /// received packet's source is found with a binary search.
    by_addr: Vec<((bool, u128), RemoteId)>,
    /// The ends broadcast and unknown frames go to.
    flood: Vec<RemoteId>,
}

impl Remotes {
    /// The ends at `addrs` (at most 65,535), each in the flood list, sent to on UDP port
    /// `port`.
    pub fn new(addrs: &[IpAddr], port: u16) -> Remotes {
        Self::with_flood(addrs, addrs, port)
    }

    /// [`Self::new`] with only those of the ends in `flood` in the flood list (EVPN: the
    /// ends with a type-3 route).
    pub fn with_flood(addrs: &[IpAddr], flood: &[IpAddr], port: u16) -> Remotes {
        let ends: Vec<Remote> = addrs
            .iter()
            .take(usize::from(RemoteId::MAX))
            .map(|&a| Remote {
                addr: a,
                to: SocketAddr::new(a, port),
                counters: RemoteCounters::default(),
            })
            .collect();
        let mut by_addr: Vec<((bool, u128), RemoteId)> = ends
            .iter()
            .enumerate()
            .map(|(i, r)| (addr_key(r.addr), i as RemoteId))
            .collect();
        by_addr.sort_unstable();
        let flood = (0..ends.len() as RemoteId)
            .filter(|&i| flood.contains(&ends[usize::from(i)].addr))
            .collect();
        Remotes {
            ends,
            by_addr,
            flood,
        }
    }

    /// The end at `addr`, if it is one.
    #[inline]
    pub fn find(&self, addr: IpAddr) -> Option<RemoteId> {
        let a = addr_key(addr);
        self.by_addr
            .binary_search_by_key(&a, |&(x, _)| x)
            .ok()
            .map(|i| self.by_addr[i].1)
    }

    #[inline]
    pub fn get(&self, id: RemoteId) -> Option<&Remote> {
        self.ends.get(usize::from(id))
    }

    /// The ends broadcast, multicast and unknown frames go to.
    #[inline]
    pub fn flood(&self) -> &[RemoteId] {
        &self.flood
    }

    pub fn iter(&self) -> impl Iterator<Item = &Remote> {
        self.ends.iter()
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// A free slot.
const EMPTY: u64 = 0;
/// A slot whose entry went: skipped by lookups, reused by inserts.
const GONE: u64 = u64::MAX;
/// Slots a MAC address may be in from its hash on.
const PROBE: usize = 16;
/// `seen` of an entry the control plane installed: never aged.
const INSTALLED: u32 = u32::MAX;

/// What learning a MAC address did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learnt {
    New,
    /// It was behind another end.
    Moved,
    Refreshed,
    /// The control plane installed it (it is not learnt over), or every slot of its probe
    /// sequence is taken.
    Kept,
}

/// Remote MAC addresses and the end each is behind.
#[derive(Debug)]
pub struct RemoteMacs {
    /// MAC address (48 bits) << 16 | end + 1; [`EMPTY`] or [`GONE`].
    slots: Box<[AtomicU64]>,
    /// The second (on the caller's clock) each learnt entry was last seen; [`INSTALLED`].
    seen: Box<[AtomicU32]>,
    mask: usize,
}

/// A MAC address as the low 48 bits of a number.
pub fn mac_key(mac: [u8; 6]) -> u64 {
    u64::from_be_bytes([0, 0, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]])
}

fn entry(mac: u64, end: RemoteId) -> u64 {
    mac << 16 | (u64::from(end) + 1)
}

fn mac_of(slot: u64) -> u64 {
    slot >> 16
}

fn end_of(slot: u64) -> RemoteId {
    (slot as u16).wrapping_sub(1)
}

impl RemoteMacs {
    /// A table for about `capacity` addresses (its slots: the next power of two of twice
    /// that).
    pub fn new(capacity: usize) -> RemoteMacs {
        let n = (capacity.max(PROBE) * 2).next_power_of_two();
        RemoteMacs {
            slots: (0..n).map(|_| AtomicU64::new(EMPTY)).collect(),
            seen: (0..n).map(|_| AtomicU32::new(0)).collect(),
            mask: n - 1,
        }
    }

    #[inline]
    fn home(&self, mac: u64) -> usize {
        let h = mac.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> 32) as usize & self.mask
    }

    /// The slots of `mac`'s probe sequence, as indices.
    #[inline]
    fn probe(&self, mac: u64) -> impl Iterator<Item = usize> + '_ {
        let home = self.home(mac);
        (0..PROBE).map(move |i| (home + i) & self.mask)
    }

    /// The slot holding `mac`, and its value.
    #[inline]
    fn find(&self, mac: u64) -> Option<(usize, u64)> {
        for i in self.probe(mac) {
            let v = self.slots[i].load(Ordering::Acquire);
            if v == EMPTY {
                return None;
            }
            if v != GONE && mac_of(v) == mac {
                return Some((i, v));
            }
        }
        None
    }

    /// The end `mac` (see [`mac_key`]) is behind, if known.
    #[inline]
    pub fn lookup(&self, mac: u64) -> Option<RemoteId> {
        self.find(mac).map(|(_, v)| end_of(v))
    }

    /// Learns that `mac` is behind `end`, at second `now`: an address the control plane
    /// installed is kept as it is.
    pub fn learn(&self, mac: u64, end: RemoteId, now: u32) -> Learnt {
        self.put(mac, end, now.min(INSTALLED - 1), false)
    }

    /// Installs `mac` behind `end` for the control plane: never aged, never learnt over.
    /// [`Learnt::Kept`] if it could not (a group address, or no free slot).
    pub fn install(&self, mac: u64, end: RemoteId) -> Learnt {
        self.put(mac, end, INSTALLED, true)
    }

    fn put(&self, mac: u64, end: RemoteId, seen: u32, control: bool) -> Learnt {
        // A group address (its first octet's low bit) or zero is nobody's; the rest of the
        // table's words could not be told from it either.
        if mac == 0 || mac >> 40 & 1 == 1 || mac >> 48 != 0 {
            return Learnt::Kept;
        }
        let want = entry(mac, end);
        // Bounded: each turn either ends or finds a slot changed by another writer, and
        // there are few writers (the worker polling the port, the control side).
        for _ in 0..8 {
            if let Some((i, v)) = self.find(mac) {
                if !control && self.seen[i].load(Ordering::Relaxed) == INSTALLED {
                    return Learnt::Kept;
                }
                if v == want {
                    self.seen[i].store(seen, Ordering::Relaxed);
                    return Learnt::Refreshed;
                }
                if self.slots[i]
                    .compare_exchange(v, want, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    self.seen[i].store(seen, Ordering::Relaxed);
                    return Learnt::Moved;
                }
                continue;
            }
            let free = self
                .probe(mac)
                .find(|&i| matches!(self.slots[i].load(Ordering::Relaxed), EMPTY | GONE));
            let Some(i) = free else {
                return Learnt::Kept;
            };
            let cur = self.slots[i].load(Ordering::Relaxed);
            if !matches!(cur, EMPTY | GONE) {
                continue;
            }
            // `seen` first: a sweep that finds the slot taken reads a time of this entry.
            self.seen[i].store(seen, Ordering::Relaxed);
            if self.slots[i]
                .compare_exchange(cur, want, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                // Another writer may have added the address meanwhile, earlier in its
                // probe sequence: that entry stands (lookups find it first), this one
                // goes, and the next turn updates that one.
                let earlier = self
                    .probe(mac)
                    .take_while(|&k| k != i)
                    .any(|k| mac_of(self.slots[k].load(Ordering::Acquire)) == mac);
                if !earlier {
                    return Learnt::New;
                }
                let _ =
                    self.slots[i].compare_exchange(want, GONE, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
        Learnt::Kept
    }

    /// Forgets `mac`; whether it was there.
    pub fn remove(&self, mac: u64) -> bool {
        self.remove_where(|m, _, _| m == mac) > 0
    }

    /// Forgets the learnt addresses not seen since second `before`; returns how many.
    pub fn age(&self, before: u32) -> usize {
        self.remove_where(|_, _, seen| seen != INSTALLED && seen < before)
    }

    /// Forgets every address behind `end`; returns how many.
    pub fn forget_end(&self, end: RemoteId) -> usize {
        self.remove_where(|_, e, _| e == end)
    }

    fn remove_where(&self, mut pick: impl FnMut(u64, RemoteId, u32) -> bool) -> usize {
        let mut n = 0;
        for (slot, seen) in self.slots.iter().zip(self.seen.iter()) {
            let v = slot.load(Ordering::Acquire);
            if matches!(v, EMPTY | GONE) {
                continue;
            }
            if pick(mac_of(v), end_of(v), seen.load(Ordering::Relaxed))
                && slot
                    .compare_exchange(v, GONE, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Every address, with its end and whether it was learnt (else installed).
    pub fn list(&self) -> Vec<([u8; 6], RemoteId, bool)> {
        self.slots
            .iter()
            .zip(self.seen.iter())
            .filter_map(|(slot, seen)| {
                let v = slot.load(Ordering::Acquire);
                if matches!(v, EMPTY | GONE) {
                    return None;
                }
                let b = mac_of(v).to_be_bytes();
                let mac = [b[2], b[3], b[4], b[5], b[6], b[7]];
                Some((mac, end_of(v), seen.load(Ordering::Relaxed) != INSTALLED))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u32) -> u64 {
        mac_key([2, 0, 0, (n >> 16) as u8, (n >> 8) as u8, n as u8])
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn remotes_are_found_by_address_and_all_flooded_to() {
        let addrs = [ip("10.0.0.9"), ip("10.0.0.2"), ip("192.168.1.1")];
        let r = Remotes::new(&addrs, 4789);
        assert_eq!(r.find(ip("10.0.0.2")), Some(1));
        assert_eq!(r.find(ip("192.168.1.1")), Some(2));
        assert_eq!(r.find(ip("10.0.0.3")), None);
        // The same four bytes as an IPv4-mapped IPv6 address are no end.
        assert_eq!(r.find(ip("::ffff:10.0.0.2")), None);
        assert_eq!(r.flood(), [0, 1, 2]);
        assert_eq!(r.get(0).unwrap().to, "10.0.0.9:4789".parse().unwrap());
        assert!(Remotes::new(&[], 4789).is_empty());
        // EVPN: every end is listened to, only those with a type-3 route flooded to.
        let r = Remotes::with_flood(&addrs, &addrs[1..2], 4789);
        assert_eq!(r.find(ip("10.0.0.9")), Some(0));
        assert_eq!(r.flood(), [1]);
        // IPv6 ends.
        let v6 = [ip("2001:db8::9"), ip("2001:db8::2")];
        let r = Remotes::new(&v6, 4789);
        assert_eq!(r.find(ip("2001:db8::2")), Some(1));
        assert_eq!(r.find(ip("2001:db8::3")), None);
        assert_eq!(r.get(0).unwrap().to, "[2001:db8::9]:4789".parse().unwrap());
    }

    #[test]
    fn a_tally_adds_each_run_to_its_ends_counters_once() {
        let addrs = [ip("10.0.0.2"), ip("10.0.0.3")];
        let r = Remotes::new(&addrs, 4789);
        let mut t = Tally::default();
        for (end, bytes) in [(0, 100), (0, 50), (1, 10), (0, 1)] {
            t.add(&r, Way::Sent, end, bytes);
        }
        // The last run is not counted until flushed.
        let load = |e: RemoteId| {
            let c = &r.get(e).unwrap().counters;
            (
                c.tx_packets.load(Ordering::Relaxed),
                c.tx_bytes.load(Ordering::Relaxed),
                c.rx_packets.load(Ordering::Relaxed),
            )
        };
        assert_eq!((load(0), load(1)), ((2, 150, 0), (1, 10, 0)));
        t.flush(&r, Way::Sent);
        t.flush(&r, Way::Sent);
        assert_eq!(load(0), (3, 151, 0));
        t.add(&r, Way::Received, 1, 7);
        t.flush(&r, Way::Received);
        assert_eq!(load(1), (1, 10, 1));
    }

    #[test]
    fn macs_are_learnt_moved_aged_and_installed_ones_kept() {
        let t = RemoteMacs::new(64);
        assert_eq!(t.lookup(mac(1)), None);
        assert_eq!(t.learn(mac(1), 0, 10), Learnt::New);
        assert_eq!(t.learn(mac(1), 0, 11), Learnt::Refreshed);
        assert_eq!(t.learn(mac(1), 3, 12), Learnt::Moved);
        assert_eq!(t.lookup(mac(1)), Some(3));
        t.install(mac(2), 1);
        assert_eq!(t.learn(mac(2), 0, 12), Learnt::Kept);
        assert_eq!(t.lookup(mac(2)), Some(1));
        // Ageing takes the learnt address not seen since 13, never the installed one.
        assert_eq!(t.age(13), 1);
        assert_eq!((t.lookup(mac(1)), t.lookup(mac(2))), (None, Some(1)));
        assert_eq!(t.learn(mac(1), 2, 20), Learnt::New, "a gone slot is reused");
        assert_eq!(t.forget_end(1), 1);
        assert!(t.remove(mac(1)));
        assert!(!t.remove(mac(1)));
        assert!(t.list().is_empty());
    }

    #[test]
    fn a_full_table_keeps_what_it_has_and_finds_every_entry() {
        let t = RemoteMacs::new(16);
        let mut learnt = Vec::new();
        for n in 0..200 {
            if t.learn(mac(n), (n % 7) as RemoteId, 1) == Learnt::New {
                learnt.push(n);
            }
        }
        assert!(learnt.len() >= 16, "{} learnt", learnt.len());
        assert!(learnt.len() <= 32);
        for &n in &learnt {
            assert_eq!(t.lookup(mac(n)), Some((n % 7) as RemoteId));
        }
        let listed = t.list();
        assert_eq!(listed.len(), learnt.len());
        assert!(listed.iter().all(|&(_, _, l)| l));
    }

    #[test]
    fn two_threads_learning_one_address_leave_one_entry() {
        let t = std::sync::Arc::new(RemoteMacs::new(64));
        let handles: Vec<_> = (0..2)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u32 {
                        t.learn(mac(i % 8), w, i);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let listed = t.list();
        assert_eq!(listed.len(), 8, "{listed:?}");
    }
}
