//! Forwarding database of one bridge: (MAC, VLAN) -> port, learnt from source addresses.
//!
//! The table is shared by all workers (a sharded concurrent map), but the hot path reaches it
//! rarely: each worker keeps an [`FdbCache`] in front of it and writes to the shared table
//! only for a new address, a move, or a refresh at most once a second. Every change that
//! can make a cached entry wrong (move, ageing, flush) bumps a generation number, and a
//! worker whose cache is older clears it. Time is passed in (seconds), so ageing is exact in
//! tests.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use vringswitch_ports::PortId;

use crate::ethernet::MacAddr;

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
}

impl Fdb {
    pub fn new(aging_s: u64) -> Fdb {
        Fdb {
            map: DashMap::new(),
            aging_s: AtomicU64::new(aging_s),
            generation: AtomicU64::new(0),
            learned: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            aged: AtomicU64::new(0),
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

    /// Records that `key` was seen on `port` at `now`.
    pub fn learn(&self, key: u64, port: PortId, now: u64) -> Learned {
        use dashmap::mapref::entry::Entry;
        match self.map.entry(key) {
            Entry::Vacant(v) => {
                v.insert(FdbEntry {
                    port,
                    last_seen: now,
                    is_static: false,
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
                e.last_seen = now;
                if e.port == port {
                    Learned::Refreshed
                } else {
                    let from = e.port;
                    e.port = port;
                    drop(o);
                    self.moved.fetch_add(1, Ordering::Relaxed);
                    self.invalidate();
                    Learned::Moved { from }
                }
            }
        }
    }

    /// Adds or replaces a static entry.
    pub fn add_static(&self, key: u64, port: PortId) {
        self.map.insert(
            key,
            FdbEntry {
                port,
                last_seen: 0,
                is_static: true,
            },
        );
        self.invalidate();
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
        let before = self.map.len();
        self.map
            .retain(|_, e| e.is_static || now.saturating_sub(e.last_seen) < aging);
        let removed = before.saturating_sub(self.map.len());
        if removed > 0 {
            self.aged.fetch_add(removed as u64, Ordering::Relaxed);
            self.invalidate();
        }
        removed
    }

    /// Removes every entry of `port` (dynamic and static), e.g. when it is deleted.
    pub fn flush_port(&self, port: PortId) {
        self.map.retain(|_, e| e.port != port);
        self.invalidate();
    }

    /// Removes the dynamic (learnt) entries of `port`, keeping its static ones.
    pub fn flush_port_dynamic(&self, port: PortId) {
        self.map.retain(|_, e| e.port != port || e.is_static);
        self.invalidate();
    }

    /// Removes one entry; returns whether there was one.
    pub fn remove(&self, key: u64) -> bool {
        let removed = self.map.remove(&key).is_some();
        if removed {
            self.invalidate();
        }
        removed
    }

    /// Removes every entry.
    pub fn flush(&self) {
        self.map.clear();
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
    generation: u64,
    /// key -> (port, time this worker last wrote the entry to the shared table)
    map: HashMap<u64, (PortId, u64), BuildHasherDefault<KeyHasher>>,
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
    /// Drops the cache if the shared table changed in a way that can make it wrong.
    #[inline]
    pub fn sync(&mut self, fdb: &Fdb) {
        let g = fdb.generation();
        if g != self.generation {
            self.map.clear();
            self.generation = g;
        }
    }

    fn insert(&mut self, key: u64, value: (PortId, u64)) {
        if self.map.len() >= CACHE_CAPACITY && !self.map.contains_key(&key) {
            // Clearing keeps the allocation: no growth, no allocation on the hot path.
            self.map.clear();
        }
        self.map.insert(key, value);
    }

    /// Learns a source address through the cache.
    #[inline]
    pub fn learn(&mut self, fdb: &Fdb, key: u64, port: PortId, now: u64) {
        if let Some(&(p, t)) = self.map.get(&key) {
            if p == port && now.saturating_sub(t) < REFRESH_S {
                return;
            }
        }
        match fdb.learn(key, port, now) {
            Learned::StaticConflict => {}
            Learned::Moved { .. } => {
                // Our own move invalidated every cache, ours included.
                self.sync(fdb);
                self.insert(key, (port, now));
            }
            Learned::New | Learned::Refreshed => self.insert(key, (port, now)),
        }
    }

    /// Looks a destination up, through the cache.
    #[inline]
    pub fn lookup(&mut self, fdb: &Fdb, key: u64) -> Option<PortId> {
        if let Some(&(p, _)) = self.map.get(&key) {
            return Some(p);
        }
        let p = fdb.lookup(key)?;
        // Time 0: the next time this address is a source here, it is written through.
        self.insert(key, (p, 0));
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn learns_moves_and_refreshes() {
        let fdb = Fdb::new(300);
        let k = fdb_key(mac(1), 0);
        assert_eq!(fdb.learn(k, 1, 10), Learned::New);
        assert_eq!(fdb.learn(k, 1, 11), Learned::Refreshed);
        let g = fdb.generation();
        assert_eq!(fdb.learn(k, 2, 12), Learned::Moved { from: 1 });
        assert_ne!(fdb.generation(), g, "a move invalidates caches");
        assert_eq!(fdb.lookup(k), Some(2));
        assert_eq!(fdb.get(k).unwrap().last_seen, 12);
        assert_eq!(fdb.counts(), (1, 1, 0));
    }

    #[test]
    fn ages_out_exactly_at_the_ageing_time() {
        let fdb = Fdb::new(300);
        let k1 = fdb_key(mac(1), 0);
        let k2 = fdb_key(mac(2), 0);
        fdb.learn(k1, 1, 100);
        fdb.learn(k2, 2, 200);
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
        assert_eq!(fdb.learn(k, 6, 10), Learned::StaticConflict);
        assert_eq!(fdb.age(1000), 0);
        assert_eq!(fdb.lookup(k), Some(5));
        fdb.flush_port(5);
        assert_eq!(fdb.lookup(k), None);
    }

    #[test]
    fn vlans_are_separate_keys() {
        let fdb = Fdb::new(300);
        fdb.learn(fdb_key(mac(1), 10), 1, 0);
        fdb.learn(fdb_key(mac(1), 20), 2, 0);
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
        fdb.learn(fdb_key(mac(1), 0), 1, 0);
        fdb.add_static(fdb_key(mac(2), 0), 1);
        fdb.learn(fdb_key(mac(3), 0), 2, 0);
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
        c.learn(&fdb, k, 1, 100);
        assert_eq!(fdb.get(k).unwrap().last_seen, 100);
        c.learn(&fdb, k, 1, 100);
        fdb.learn(k, 1, 50); // make the shared copy visibly older
        c.learn(&fdb, k, 1, 100);
        assert_eq!(
            fdb.get(k).unwrap().last_seen,
            50,
            "no write within the second"
        );
        c.learn(&fdb, k, 1, 101);
        assert_eq!(fdb.get(k).unwrap().last_seen, 101);
    }

    #[test]
    fn cache_follows_moves_made_elsewhere() {
        let fdb = Fdb::new(300);
        let (mut a, mut b) = (FdbCache::default(), FdbCache::default());
        let k = fdb_key(mac(1), 0);
        a.sync(&fdb);
        b.sync(&fdb);
        a.learn(&fdb, k, 1, 0);
        assert_eq!(b.lookup(&fdb, k), Some(1));
        // The address moves, learnt by worker a.
        a.learn(&fdb, k, 2, 1);
        b.sync(&fdb);
        assert_eq!(b.lookup(&fdb, k), Some(2));
        // It ages out.
        fdb.age(1000);
        b.sync(&fdb);
        assert_eq!(b.lookup(&fdb, k), None);
    }

    #[test]
    fn cache_never_grows_past_capacity() {
        let fdb = Fdb::new(300);
        let mut c = FdbCache::default();
        c.sync(&fdb);
        for i in 0..(CACHE_CAPACITY as u64 + 10) {
            c.learn(&fdb, i, 1, 0);
        }
        assert!(c.map.len() <= CACHE_CAPACITY);
        assert_eq!(fdb.len(), CACHE_CAPACITY + 10);
    }
}
