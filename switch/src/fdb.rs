//! Forwarding database of one bridge: (MAC, VLAN) -> port, learnt from source addresses.
//!
//! The table is shared by all workers (a sharded concurrent map), but the hot path reaches it
//! rarely: each worker keeps an [`FdbCache`] in front of it and writes to the shared table
//! only for a new address, a move, or a refresh at most once a second. Every change that
//! can make a cached entry wrong (move, ageing, flush) bumps a generation number, and a
//! worker whose cache is older clears it. Time is passed in (seconds), so ageing is exact in
//! tests.
//!
//! Learning is limited, so that one port sending from endless source addresses cannot fill
//! the table: each bridge learns at most [`Fdb::max_learned`] addresses and each port at most
//! the limit its caller passes. An address past a limit is not learnt (frames to it are
//! flooded, as to any unknown address) and the refusal is counted; static entries count
//! against neither limit.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use vringswitch_ports::PortId;

use vringswitch_wire::ethernet::MacAddr;

/// Key of an FDB entry: MAC in the low 48 bits, VLAN above it.
pub fn fdb_key(mac: MacAddr, vlan: u16) -> u64 {
    mac.to_u64() | (u64::from(vlan & 0x0fff) << 48)
}

/// The (MAC, VLAN) of a key made by [`fdb_key`].
pub fn split_key(key: u64) -> (MacAddr, u16) {
    (
        MacAddr::from_u64(key & 0xffff_ffff_ffff),
        (key >> 48) as u16 & 0x0fff,
    )
}

/// One learnt or static address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    pub port: PortId,
    /// Seconds (switch clock) when the address was last seen.
    pub last_seen: u64,
    /// Static entries are never aged out nor moved by learning.
    pub is_static: bool,
    /// Learnt on a tunnel port (the address is on another host): a local port's source
    /// takes it over, never the other way round.
    pub remote: bool,
    /// Put there by a control plane (an EVPN route): not aged, gone when withdrawn.
    pub pinned: bool,
}

/// What learning did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    New,
    Moved {
        from: PortId,
    },
    Refreshed,
    /// A static entry points elsewhere; nothing was changed.
    StaticConflict,
    /// A limit kept the address from being learnt (or moved); nothing was changed.
    Refused(Limit),
    /// Seen on a tunnel port while a local port holds it: the switch's own ports are
    /// authoritative for their addresses; nothing was changed.
    HeldLocally,
}

/// The limit that refused to learn an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The port learnt as many addresses as it may.
    Port,
    /// The bridge learnt as many addresses as it may.
    Bridge,
}

/// The forwarding database of one bridge.
#[derive(Debug)]
pub struct Fdb {
    map: DashMap<u64, FdbEntry>,
    aging_s: AtomicU64,
    generation: AtomicU64,
    learned: AtomicU64,
    moved: AtomicU64,
    aged: AtomicU64,
    max_learned: AtomicUsize,
    /// Learnt (not static) entries, over all ports.
    dynamic: AtomicUsize,
    /// Learnt entries by port. Locked only while an entry of `map` is (never the other
    /// way round), and only when an entry is added, moved or removed.
    per_port: DashMap<PortId, usize>,
    refused_port: AtomicU64,
    refused_bridge: AtomicU64,
}

impl Fdb {
    /// A table whose learnt addresses are forgotten after `aging_s` idle seconds, with no
    /// limit on how many it learns.
    pub fn new(aging_s: u64) -> Fdb {
        Fdb::with_limit(aging_s, usize::MAX)
    }

    /// [`Fdb::new`], learning at most `max_learned` addresses.
    pub fn with_limit(aging_s: u64, max_learned: usize) -> Fdb {
        Fdb {
            map: DashMap::new(),
            aging_s: AtomicU64::new(aging_s),
            generation: AtomicU64::new(0),
            learned: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            aged: AtomicU64::new(0),
            max_learned: AtomicUsize::new(max_learned),
            dynamic: AtomicUsize::new(0),
            per_port: DashMap::new(),
            refused_port: AtomicU64::new(0),
            refused_bridge: AtomicU64::new(0),
        }
    }

    /// Most addresses the bridge learns; the ones it has stay when it is lowered.
    pub fn max_learned(&self) -> usize {
        self.max_learned.load(Ordering::Relaxed)
    }

    pub fn set_max_learned(&self, n: usize) {
        self.max_learned.store(n, Ordering::Relaxed);
    }

    /// Addresses learnt on `port` and still in the table.
    pub fn learned_on(&self, port: PortId) -> usize {
        self.per_port.get(&port).map_or(0, |n| *n)
    }

    /// Addresses learnt and still in the table, over all ports.
    pub fn learned_now(&self) -> usize {
        self.dynamic.load(Ordering::Relaxed)
    }

    /// Addresses refused by a port's limit, and by the bridge's, since creation.
    pub fn refusals(&self) -> (u64, u64) {
        (
            self.refused_port.load(Ordering::Relaxed),
            self.refused_bridge.load(Ordering::Relaxed),
        )
    }

    /// Counts one more address learnt on `port` if both limits allow it.
    fn admit(&self, port: PortId, port_limit: usize) -> Result<(), Limit> {
        let mut n = self.per_port.entry(port).or_insert(0);
        if *n >= port_limit {
            self.refused_port.fetch_add(1, Ordering::Relaxed);
            return Err(Limit::Port);
        }
        let max = self.max_learned();
        // One more unless that passes the bridge's limit; workers learning at once never
        // take it past the limit between them.
        if self
            .dynamic
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                (d < max).then_some(d + 1)
            })
            .is_err()
        {
            self.refused_bridge.fetch_add(1, Ordering::Relaxed);
            return Err(Limit::Bridge);
        }
        *n += 1;
        Ok(())
    }

    /// Counts a learnt address of `port` gone (aged, removed, replaced or moved away).
    fn forget(&self, port: PortId) {
        self.dynamic.fetch_sub(1, Ordering::Relaxed);
        if let dashmap::mapref::entry::Entry::Occupied(mut n) = self.per_port.entry(port) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
    }

    /// Changes whenever an entry moves or disappears. Acquire pairs with the Release bump so
    /// a worker that sees the new generation also sees the change.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn aging_s(&self) -> u64 {
        self.aging_s.load(Ordering::Relaxed)
    }

    pub fn set_aging_s(&self, s: u64) {
        self.aging_s.store(s, Ordering::Relaxed);
    }

    /// Records that `key` was seen on `port` at `now`: learns it, unless `port` has learnt
    /// `port_limit` addresses already or the bridge its [`Fdb::max_learned`].
    pub fn learn(&self, key: u64, port: PortId, now: u64, port_limit: usize) -> Learned {
        self.learn_as(key, port, now, port_limit, false)
    }

    /// [`Self::learn`] for `port` a tunnel to other hosts (`remote`): an address a local
    /// port holds is not taken from it.
    pub fn learn_as(
        &self,
        key: u64,
        port: PortId,
        now: u64,
        port_limit: usize,
        remote: bool,
    ) -> Learned {
        use dashmap::mapref::entry::Entry;
        match self.map.entry(key) {
            Entry::Vacant(v) => {
                if let Err(limit) = self.admit(port, port_limit) {
                    return Learned::Refused(limit);
                }
                v.insert(FdbEntry {
                    port,
                    last_seen: now,
                    is_static: false,
                    remote,
                    pinned: false,
                });
                self.learned.fetch_add(1, Ordering::Relaxed);
                Learned::New
            }
            Entry::Occupied(mut o) => {
                let e = o.get_mut();
                if e.is_static {
                    return if e.port == port {
                        Learned::Refreshed
                    } else {
                        Learned::StaticConflict
                    };
                }
                if e.port == port {
                    e.last_seen = now;
                    Learned::Refreshed
                } else if remote && !e.remote {
                    Learned::HeldLocally
                } else {
                    // A move counts against the new port's limit (never the bridge's: the
                    // entry is there already).
                    let mut n = self.per_port.entry(port).or_insert(0);
                    if *n >= port_limit {
                        self.refused_port.fetch_add(1, Ordering::Relaxed);
                        return Learned::Refused(Limit::Port);
                    }
                    *n += 1;
                    drop(n);
                    let from = e.port;
                    (e.port, e.last_seen, e.remote, e.pinned) = (port, now, remote, false);
                    self.dynamic.fetch_add(1, Ordering::Relaxed);
                    self.forget(from);
                    drop(o);
                    self.moved.fetch_add(1, Ordering::Relaxed);
                    self.invalidate();
                    Learned::Moved { from }
                }
            }
        }
    }

    /// What [`Fdb::learn`] would do now with `key` seen on `port`, changing nothing (for
    /// `vringctl trace`; a worker learning meanwhile may make it otherwise).
    pub fn would_learn(&self, key: u64, port: PortId, port_limit: usize, remote: bool) -> Learned {
        let on_port = self.learned_on(port);
        match self.get(key) {
            None if on_port >= port_limit => Learned::Refused(Limit::Port),
            None if self.learned_now() >= self.max_learned() => Learned::Refused(Limit::Bridge),
            None => Learned::New,
            Some(e) if e.port == port => Learned::Refreshed,
            Some(e) if e.is_static => Learned::StaticConflict,
            Some(e) if remote && !e.remote => Learned::HeldLocally,
            Some(_) if on_port >= port_limit => Learned::Refused(Limit::Port),
            Some(e) => Learned::Moved { from: e.port },
        }
    }

    /// Puts `key` behind tunnel port `port` as a control plane's route says (pinned: not
    /// aged, see [`Self::withdraw`]), within `port_limit` addresses for the port. As for
    /// learning on a tunnel, an address a local port holds stays there
    /// ([`Learned::HeldLocally`]) and a static entry is not replaced.
    pub fn install(&self, key: u64, port: PortId, now: u64, port_limit: usize) -> Learned {
        let learned = self.learn_as(key, port, now, port_limit, true);
        if matches!(
            learned,
            Learned::New | Learned::Moved { .. } | Learned::Refreshed
        ) {
            if let Some(mut e) = self.map.get_mut(&key) {
                if e.port == port && !e.is_static {
                    e.pinned = true;
                }
            }
        }
        learned
    }

    /// Removes `key` if a control plane put it behind `port` ([`Self::install`]) and it is
    /// still there; whether it did.
    pub fn withdraw(&self, key: u64, port: PortId) -> bool {
        let gone = self
            .map
            .remove_if(&key, |_, e| e.pinned && e.port == port)
            .is_some();
        if gone {
            self.forget(port);
            self.invalidate();
        }
        gone
    }

    /// Adds or replaces a static entry.
    pub fn add_static(&self, key: u64, port: PortId) {
        let old = self.map.insert(
            key,
            FdbEntry {
                port,
                last_seen: 0,
                is_static: true,
                remote: false,
                pinned: false,
            },
        );
        if let Some(e) = old.filter(|e| !e.is_static) {
            self.forget(e.port);
        }
        self.invalidate();
    }

    /// Removes the entries `drop` picks, counting the learnt ones gone; returns how many
    /// learnt ones went.
    fn remove_where(&self, mut drop: impl FnMut(&FdbEntry) -> bool) -> usize {
        let mut gone = 0;
        self.map.retain(|_, e| {
            if !drop(e) {
                return true;
            }
            if !e.is_static {
                self.forget(e.port);
                gone += 1;
            }
            false
        });
        gone
    }

    pub fn lookup(&self, key: u64) -> Option<PortId> {
        self.map.get(&key).map(|e| e.port)
    }

    pub fn get(&self, key: u64) -> Option<FdbEntry> {
        self.map.get(&key).map(|e| *e)
    }

    /// Removes dynamic entries not seen for longer than the ageing time. Returns how many.
    pub fn age(&self, now: u64) -> usize {
        let aging = self.aging_s();
        let removed = self.remove_where(|e| {
            !e.is_static && !e.pinned && now.saturating_sub(e.last_seen) >= aging
        });
        if removed > 0 {
            self.aged.fetch_add(removed as u64, Ordering::Relaxed);
            self.invalidate();
        }
        removed
    }

    /// Removes every entry of `port` (dynamic and static), e.g. when it is deleted.
    pub fn flush_port(&self, port: PortId) {
        self.remove_where(|e| e.port == port);
        self.invalidate();
    }

    /// Removes the dynamic (learnt) entries of `port`, keeping its static ones.
    pub fn flush_port_dynamic(&self, port: PortId) {
        self.remove_where(|e| e.port == port && !e.is_static);
        self.invalidate();
    }

    /// Removes one entry; returns whether there was one.
    pub fn remove(&self, key: u64) -> bool {
        let Some((_, e)) = self.map.remove(&key) else {
            return false;
        };
        if !e.is_static {
            self.forget(e.port);
        }
        self.invalidate();
        true
    }

    /// Removes every entry.
    pub fn flush(&self) {
        self.remove_where(|_| true);
        self.invalidate();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All entries, for the API.
    pub fn entries(&self) -> Vec<(u64, FdbEntry)> {
        self.map.iter().map(|r| (*r.key(), *r.value())).collect()
    }

    /// Sets the counts ([`Self::counts`], [`Self::refusals`]) to those the process before
    /// this one handed over: `[learned, moved, aged, refused by a port's limit, refused by
    /// the bridge's]`.
    pub fn carry_counts(&self, counts: [u64; 5]) {
        let [learned, moved, aged, refused_port, refused_bridge] = counts;
        self.learned.store(learned, Ordering::Relaxed);
        self.moved.store(moved, Ordering::Relaxed);
        self.aged.store(aged, Ordering::Relaxed);
        self.refused_port.store(refused_port, Ordering::Relaxed);
        self.refused_bridge.store(refused_bridge, Ordering::Relaxed);
    }

    /// (learned, moved, aged) counts since creation.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.learned.load(Ordering::Relaxed),
            self.moved.load(Ordering::Relaxed),
            self.aged.load(Ordering::Relaxed),
        )
    }
}

/// Hasher for FDB keys: they are already well mixed in their low bits except for vendor
/// prefixes, so one multiply-and-fold is enough and avoids SipHash on the hot path.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        let m = v.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = m ^ (m >> 29);
    }
}

/// How often a worker refreshes an address it keeps seeing in the shared table.
const REFRESH_S: u64 = 1;
/// Entries a worker cache holds before it starts over (it never grows past this).
pub const CACHE_CAPACITY: usize = 4096;

/// A worker's private view of one bridge's FDB.
pub struct FdbCache {
    /// The shared table's generation the cache was last synced with: entries cached under
    /// another are stale.
    generation: u64,
    map: HashMap<u64, Cached, BuildHasherDefault<KeyHasher>>,
}

/// What a worker's cache knows of an address.
#[derive(Debug, Clone, Copy)]
struct Cached {
    port: PortId,
    /// When this worker last wrote the entry to the shared table, or was refused: then
    /// the entry is no destination, and only says when to try again.
    written: u64,
    refused: bool,
    /// The shared table's generation it was cached under.
    generation: u64,
}

impl Default for FdbCache {
    fn default() -> Self {
        FdbCache {
            generation: u64::MAX,
            map: HashMap::with_capacity_and_hasher(CACHE_CAPACITY, Default::default()),
        }
    }
}

impl FdbCache {
    /// Forgets what the cache knows if the shared table changed in a way that can make it
    /// wrong: its entries stay, stale, until overwritten, so that this costs the same
    /// however many there are (a MAC address flapping between two ports changes the
    /// table at every burst; clearing a map of this capacity wrote 8 KiB each time).
    #[inline]
    pub fn sync(&mut self, fdb: &Fdb) {
        self.generation = fdb.generation();
    }

    /// The cache's current entry for `key`, if any.
    #[inline]
    fn get(&self, key: u64) -> Option<Cached> {
        self.map
            .get(&key)
            .filter(|c| c.generation == self.generation)
            .copied()
    }

    fn insert(&mut self, key: u64, port: PortId, written: u64, refused: bool) {
        if self.map.len() >= CACHE_CAPACITY && !self.map.contains_key(&key) {
            // Clearing keeps the allocation: no growth, no allocation on the hot path.
            self.map.clear();
        }
        let generation = self.generation;
        self.map.insert(
            key,
            Cached {
                port,
                written,
                refused,
                generation,
            },
        );
    }

    /// Learns a source address through the cache, within `port_limit` addresses for the
    /// port (`remote`: a tunnel port, see [`Fdb::learn_as`]). A refused address is tried
    /// again a second later, not at every frame.
    #[inline]
    pub fn learn(
        &mut self,
        fdb: &Fdb,
        key: u64,
        port: PortId,
        now: u64,
        port_limit: usize,
        remote: bool,
    ) {
        if let Some(c) = self.get(key) {
            if c.port == port && now.saturating_sub(c.written) < REFRESH_S {
                return;
            }
        }
        match fdb.learn_as(key, port, now, port_limit, remote) {
            Learned::StaticConflict => {}
            Learned::Moved { .. } => {
                // Our own move invalidated every cache, ours included.
                self.sync(fdb);
                self.insert(key, port, now, false);
            }
            Learned::New | Learned::Refreshed => self.insert(key, port, now, false),
            // Kept as refused: tried again a second later, and looked up as a destination
            // in the shared table (which says where it is).
            Learned::Refused(_) | Learned::HeldLocally => self.insert(key, port, now, true),
        }
    }

    /// Looks a destination up, through the cache.
    #[inline]
    pub fn lookup(&mut self, fdb: &Fdb, key: u64) -> Option<PortId> {
        match self.get(key) {
            Some(c) if !c.refused => return Some(c.port),
            // Refused here a moment ago; another worker may have learnt it since.
            Some(_) => return fdb.lookup(key),
            None => {}
        }
        let p = fdb.lookup(key)?;
        // Time 0: the next time this address is a source here, it is written through.
        self.insert(key, p, 0, false);
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_counts_are_taken_as_they_were() {
        let fdb = Fdb::new(300);
        fdb.learn(1, 0, 5, usize::MAX);
        fdb.carry_counts([10, 2, 3, 4, 5]);
        assert_eq!(fdb.counts(), (10, 2, 3));
        assert_eq!(fdb.refusals(), (4, 5));
        fdb.learn(2, 0, 5, usize::MAX);
        assert_eq!(fdb.counts().0, 11);
    }

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn learns_moves_and_refreshes() {
        let fdb = Fdb::new(300);
        let k = fdb_key(mac(1), 0);
        assert_eq!(fdb.learn(k, 1, 10, usize::MAX), Learned::New);
        assert_eq!(fdb.learn(k, 1, 11, usize::MAX), Learned::Refreshed);
        let g = fdb.generation();
        assert_eq!(fdb.learn(k, 2, 12, usize::MAX), Learned::Moved { from: 1 });
        assert_ne!(fdb.generation(), g, "a move invalidates caches");
        assert_eq!(fdb.lookup(k), Some(2));
        assert_eq!(fdb.get(k).unwrap().last_seen, 12);
        assert_eq!(fdb.counts(), (1, 1, 0));
    }

    #[test]
    fn a_tunnel_never_takes_an_address_a_local_port_holds_and_a_local_port_takes_it_back() {
        let fdb = Fdb::new(300);
        let (local, other_local, tunnel) = (1, 2, 9);
        let k = fdb_key(mac(1), 0);
        assert_eq!(fdb.learn(k, local, 10, usize::MAX), Learned::New);
        assert_eq!(
            fdb.would_learn(k, tunnel, usize::MAX, true),
            Learned::HeldLocally
        );
        assert_eq!(
            fdb.learn_as(k, tunnel, 11, usize::MAX, true),
            Learned::HeldLocally
        );
        assert_eq!(fdb.lookup(k), Some(local));
        // Gone from its port (flushed, aged), it is learnt from the tunnel...
        fdb.flush_port(local);
        assert_eq!(fdb.learn_as(k, tunnel, 12, usize::MAX, true), Learned::New);
        assert!(fdb.get(k).unwrap().remote);
        // ...and a local port takes it back at once (a VM that moved here).
        assert_eq!(
            fdb.learn(k, other_local, 13, usize::MAX),
            Learned::Moved { from: tunnel }
        );
        assert!(!fdb.get(k).unwrap().remote);
        // Through a worker's cache too: the refusal is kept a second, the entry stands.
        let mut c = FdbCache::default();
        c.sync(&fdb);
        c.learn(&fdb, k, tunnel, 14, usize::MAX, true);
        assert_eq!(c.lookup(&fdb, k), Some(other_local));
    }

    #[test]
    fn an_installed_route_is_not_aged_goes_when_withdrawn_and_yields_to_a_local_port() {
        let fdb = Fdb::new(300);
        let (local, tunnel) = (1, 9);
        let k = fdb_key(mac(1), 5);
        assert_eq!(fdb.install(k, tunnel, 10, usize::MAX), Learned::New);
        let e = fdb.get(k).unwrap();
        assert!(e.pinned && e.remote && !e.is_static);
        // Seen on the tunnel as a frame's source: still pinned. Never aged.
        assert_eq!(
            fdb.learn_as(k, tunnel, 11, usize::MAX, true),
            Learned::Refreshed
        );
        assert_eq!(fdb.age(10_000), 0);
        assert_eq!(fdb.lookup(k), Some(tunnel));
        // Withdrawn: gone, counted gone.
        assert!(fdb.withdraw(k, tunnel));
        assert!(!fdb.withdraw(k, tunnel));
        assert_eq!((fdb.lookup(k), fdb.learned_on(tunnel)), (None, 0));
        // A local port holds it: the route does not take it; a withdrawal leaves it.
        fdb.learn(k, local, 20, usize::MAX);
        assert_eq!(fdb.install(k, tunnel, 21, usize::MAX), Learned::HeldLocally);
        assert!(!fdb.withdraw(k, tunnel));
        assert_eq!(fdb.lookup(k), Some(local));
        // Learnt (not installed) on the tunnel, then installed: pinned from then on.
        fdb.flush_port(local);
        fdb.learn_as(k, tunnel, 30, usize::MAX, true);
        assert!(!fdb.get(k).unwrap().pinned);
        assert_eq!(fdb.install(k, tunnel, 31, usize::MAX), Learned::Refreshed);
        assert!(fdb.get(k).unwrap().pinned);
        // A VM moving here takes it over, unpinned: ageing applies again.
        assert_eq!(
            fdb.learn(k, local, 40, usize::MAX),
            Learned::Moved { from: tunnel }
        );
        assert!(!fdb.get(k).unwrap().pinned);
        assert_eq!(fdb.age(10_000), 1);
    }
    #[test]
    fn would_learn_says_what_learn_then_does() {
        // Port 1 may learn 2 addresses, the bridge 3; mac 9 is static on port 3.
        let fdb = Fdb::with_limit(300, 3);
        fdb.add_static(fdb_key(mac(9), 0), 3);
        let steps: &[(u8, PortId)] = &[
            (1, 1), // new
            (1, 1), // refreshed
            (2, 1), // new: port 1 at its limit
            (3, 1), // refused: port 1's limit
            (1, 2), // moved from 1
            (3, 1), // new again: the move freed one of port 1's
            (4, 2), // refused: the bridge's limit (1 on 2, 2 on 1)
            (9, 1), // static elsewhere
            (9, 3), // its own static entry
        ];
        for &(m, port) in steps {
            let k = fdb_key(mac(m), 0);
            let said = fdb.would_learn(k, port, 2, false);
            assert_eq!(said, fdb.learn(k, port, 10, 2), "mac {m} on port {port}");
        }
    }

    #[test]
    fn ages_out_exactly_at_the_ageing_time() {
        let fdb = Fdb::new(300);
        let k1 = fdb_key(mac(1), 0);
        let k2 = fdb_key(mac(2), 0);
        fdb.learn(k1, 1, 100, usize::MAX);
        fdb.learn(k2, 2, 200, usize::MAX);
        assert_eq!(fdb.age(399), 0);
        assert_eq!(fdb.age(400), 1);
        assert_eq!(fdb.lookup(k1), None);
        assert_eq!(fdb.lookup(k2), Some(2));
        fdb.set_aging_s(10);
        assert_eq!(fdb.age(210), 1);
        assert!(fdb.is_empty());
        assert_eq!(fdb.counts().2, 2);
    }

    #[test]
    fn static_entries_neither_age_nor_move() {
        let fdb = Fdb::new(1);
        let k = fdb_key(mac(1), 0);
        fdb.add_static(k, 5);
        assert_eq!(fdb.learn(k, 6, 10, usize::MAX), Learned::StaticConflict);
        assert_eq!(fdb.age(1000), 0);
        assert_eq!(fdb.lookup(k), Some(5));
        fdb.flush_port(5);
        assert_eq!(fdb.lookup(k), None);
    }

    #[test]
    fn vlans_are_separate_keys() {
        let fdb = Fdb::new(300);
        fdb.learn(fdb_key(mac(1), 10), 1, 0, usize::MAX);
        fdb.learn(fdb_key(mac(1), 20), 2, 0, usize::MAX);
        assert_eq!(fdb.lookup(fdb_key(mac(1), 10)), Some(1));
        assert_eq!(fdb.lookup(fdb_key(mac(1), 20)), Some(2));
        assert_eq!(fdb.lookup(fdb_key(mac(1), 0)), None);
        assert_eq!(fdb_key(mac(1), 0xffff), fdb_key(mac(1), 0x0fff));
        assert_eq!(split_key(fdb_key(mac(1), 20)), (mac(1), 20));
        assert_eq!(
            split_key(fdb_key(MacAddr([0xfe; 6]), 4094)),
            (MacAddr([0xfe; 6]), 4094)
        );
    }

    #[test]
    fn flushing_dynamic_entries_keeps_static_ones() {
        let fdb = Fdb::new(300);
        fdb.learn(fdb_key(mac(1), 0), 1, 0, usize::MAX);
        fdb.add_static(fdb_key(mac(2), 0), 1);
        fdb.learn(fdb_key(mac(3), 0), 2, 0, usize::MAX);
        fdb.flush_port_dynamic(1);
        assert_eq!(fdb.lookup(fdb_key(mac(1), 0)), None);
        assert_eq!(fdb.lookup(fdb_key(mac(2), 0)), Some(1));
        assert_eq!(fdb.lookup(fdb_key(mac(3), 0)), Some(2));
        assert!(fdb.remove(fdb_key(mac(2), 0)));
        assert!(!fdb.remove(fdb_key(mac(2), 0)));
        assert_eq!(fdb.len(), 1);
    }

    #[test]
    fn cache_writes_through_at_most_once_a_second() {
        let fdb = Fdb::new(300);
        let mut c = FdbCache::default();
        c.sync(&fdb);
        let k = fdb_key(mac(1), 0);
        c.learn(&fdb, k, 1, 100, usize::MAX, false);
        assert_eq!(fdb.get(k).unwrap().last_seen, 100);
        c.learn(&fdb, k, 1, 100, usize::MAX, false);
        fdb.learn(k, 1, 50, usize::MAX); // make the shared copy visibly older
        c.learn(&fdb, k, 1, 100, usize::MAX, false);
        assert_eq!(
            fdb.get(k).unwrap().last_seen,
            50,
            "no write within the second"
        );
        c.learn(&fdb, k, 1, 101, usize::MAX, false);
        assert_eq!(fdb.get(k).unwrap().last_seen, 101);
    }

    #[test]
    fn cache_follows_moves_made_elsewhere() {
        let fdb = Fdb::new(300);
        let (mut a, mut b) = (FdbCache::default(), FdbCache::default());
        let k = fdb_key(mac(1), 0);
        a.sync(&fdb);
        b.sync(&fdb);
        a.learn(&fdb, k, 1, 0, usize::MAX, false);
        assert_eq!(b.lookup(&fdb, k), Some(1));
        // The address moves, learnt by worker a.
        a.learn(&fdb, k, 2, 1, usize::MAX, false);
        b.sync(&fdb);
        assert_eq!(b.lookup(&fdb, k), Some(2));
        // It ages out.
        fdb.age(1000);
        b.sync(&fdb);
        assert_eq!(b.lookup(&fdb, k), None);
    }

    #[test]
    fn a_cache_entry_from_before_a_move_elsewhere_is_not_trusted() {
        let fdb = Fdb::new(300);
        let (mut a, mut b) = (FdbCache::default(), FdbCache::default());
        let k = fdb_key(mac(1), 0);
        a.sync(&fdb);
        b.sync(&fdb);
        a.learn(&fdb, k, 1, 0, usize::MAX, false);
        // Within the second, the address shows up on port 2 through worker b, then on port
        // 1 again through a: a's entry (port 1, written at 0) is stale, so a writes through.
        b.learn(&fdb, k, 2, 0, usize::MAX, false);
        a.sync(&fdb);
        a.learn(&fdb, k, 1, 0, usize::MAX, false);
        assert_eq!(fdb.lookup(k), Some(1));
        assert_eq!(fdb.counts().1, 2, "two moves");
        // Flapping at every burst keeps following the address, and the cache its size.
        for t in 0..100 {
            a.sync(&fdb);
            a.learn(&fdb, k, 1 + (t % 2) as PortId, 0, usize::MAX, false);
            assert_eq!(a.lookup(&fdb, k), Some(1 + (t % 2) as PortId));
        }
        assert_eq!(a.map.len(), 1);
    }

    #[test]
    fn cache_never_grows_past_capacity() {
        let fdb = Fdb::new(300);
        let mut c = FdbCache::default();
        c.sync(&fdb);
        for i in 0..(CACHE_CAPACITY as u64 + 10) {
            c.learn(&fdb, i, 1, 0, usize::MAX, false);
        }
        assert!(c.map.len() <= CACHE_CAPACITY);
        assert_eq!(fdb.len(), CACHE_CAPACITY + 10);
    }
    #[test]
    fn a_port_learns_no_more_than_its_limit_and_refusals_are_counted() {
        let fdb = Fdb::new(300);
        for n in 0..3 {
            assert_eq!(fdb.learn(fdb_key(mac(n), 0), 1, 0, 3), Learned::New);
        }
        assert_eq!(
            fdb.learn(fdb_key(mac(3), 0), 1, 0, 3),
            Learned::Refused(Limit::Port)
        );
        assert_eq!(fdb.lookup(fdb_key(mac(3), 0)), None);
        // What it has is refreshed as before; another port learns on.
        assert_eq!(fdb.learn(fdb_key(mac(0), 0), 1, 5, 3), Learned::Refreshed);
        assert_eq!(fdb.learn(fdb_key(mac(9), 0), 2, 0, 3), Learned::New);
        assert_eq!((fdb.learned_on(1), fdb.learned_on(2)), (3, 1));
        assert_eq!(fdb.refusals(), (1, 0));
        // Once one ages out, the port learns again.
        fdb.learn(fdb_key(mac(0), 0), 1, 200, 3);
        assert_eq!(fdb.age(350), 3, "mac 1, 2 and 9");
        assert_eq!(fdb.learned_on(1), 1);
        assert_eq!(fdb.learn(fdb_key(mac(3), 0), 1, 350, 3), Learned::New);
    }

    #[test]
    fn the_bridge_learns_no_more_than_its_limit_over_all_ports() {
        let fdb = Fdb::with_limit(300, 4);
        for n in 0..4 {
            assert_eq!(
                fdb.learn(fdb_key(mac(n), 0), u32::from(n % 2), 0, 10),
                Learned::New
            );
        }
        assert_eq!(
            fdb.learn(fdb_key(mac(4), 0), 2, 0, 10),
            Learned::Refused(Limit::Bridge)
        );
        // Static entries count against neither limit.
        fdb.add_static(fdb_key(mac(5), 0), 2);
        assert_eq!(fdb.learned_now(), 4);
        assert_eq!(fdb.refusals(), (0, 1));
        // Removing, flushing and replacing by a static entry each make room.
        assert!(fdb.remove(fdb_key(mac(0), 0)));
        assert_eq!(fdb.learn(fdb_key(mac(4), 0), 2, 0, 10), Learned::New);
        fdb.add_static(fdb_key(mac(4), 0), 2);
        fdb.flush_port_dynamic(1);
        assert_eq!((fdb.learned_now(), fdb.learned_on(1)), (1, 0));
        fdb.set_max_learned(1);
        assert_eq!(
            fdb.learn(fdb_key(mac(6), 0), 2, 0, 10),
            Learned::Refused(Limit::Bridge)
        );
        fdb.flush();
        assert_eq!((fdb.learned_now(), fdb.learned_on(0), fdb.len()), (0, 0, 0));
    }

    #[test]
    fn a_move_counts_against_the_new_port_and_frees_the_old_one() {
        let fdb = Fdb::with_limit(300, 2);
        let k = fdb_key(mac(1), 0);
        fdb.learn(k, 1, 0, 1);
        fdb.learn(fdb_key(mac(2), 0), 2, 0, 1);
        // Port 2 is full: the address stays where it was.
        assert_eq!(fdb.learn(k, 2, 1, 1), Learned::Refused(Limit::Port));
        assert_eq!(fdb.lookup(k), Some(1));
        // Port 3 has room: it moves, though the bridge is full.
        assert_eq!(fdb.learn(k, 3, 2, 1), Learned::Moved { from: 1 });
        assert_eq!(
            (fdb.learned_on(1), fdb.learned_on(3), fdb.learned_now()),
            (0, 1, 2)
        );
    }

    #[test]
    fn workers_learning_at_once_never_pass_the_bridge_limit() {
        let fdb = std::sync::Arc::new(Fdb::with_limit(300, 1000));
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let fdb = fdb.clone();
                std::thread::spawn(move || {
                    for n in 0..1000u64 {
                        fdb.learn(u64::from(t) << 32 | n, t, 0, usize::MAX);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!((fdb.len(), fdb.learned_now()), (1000, 1000));
        assert_eq!(fdb.refusals(), (0, 3000));
        let per_port: usize = (0..4).map(|p| fdb.learned_on(p)).sum();
        assert_eq!(per_port, 1000);
    }

    #[test]
    fn a_refused_address_is_no_destination_and_is_tried_again_a_second_later() {
        let fdb = Fdb::new(300);
        let mut c = FdbCache::default();
        c.sync(&fdb);
        let (k1, k2) = (fdb_key(mac(1), 0), fdb_key(mac(2), 0));
        c.learn(&fdb, k1, 1, 100, 1, false);
        c.learn(&fdb, k2, 1, 100, 1, false);
        assert_eq!(fdb.refusals(), (1, 0));
        // Frames to it are flooded, not sent to the port it came from.
        assert_eq!(c.lookup(&fdb, k2), None);
        // Within the second, the shared table is not asked again.
        c.learn(&fdb, k2, 1, 100, 1, false);
        assert_eq!(fdb.refusals(), (1, 0));
        // Room made elsewhere (mac 1 removed): the next second learns it.
        fdb.remove(k1);
        c.sync(&fdb);
        c.learn(&fdb, k2, 1, 101, 1, false);
        assert_eq!(fdb.lookup(k2), Some(1));
        assert_eq!(c.lookup(&fdb, k2), Some(1));
    }
}
