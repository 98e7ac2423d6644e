//! The connection table: sized once, shared by every worker without a lock, nothing
//! allocated per frame (docs/architecture.md, "Security groups").
//!
//! Entries live in one array; an open-addressed index of 64-bit slots (a 24-bit hash tag,
//! the entry's 8-bit generation, a 32-bit entry number) finds them, two slots per connection, one per direction's tuple,
//! so that the workers of both VMs find it with one probe sequence of at most
//! [`MAX_PROBE`] slots. An entry's key is written under its own sequence counter (odd while
//! it changes) and read twice-checked, so a lookup that races with the entry's reuse sees
//! either the old key, the new one, or a retry, never a mix; a lookup compares the whole
//! key, so a slot pointing at a reused entry is a miss. Free entries come from a lock-free
//! bounded queue. Expiry is lazy (an expired entry is absent to lookups) and swept by
//! [`Table::expire`], called once a second off the data path.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crossbeam_queue::ArrayQueue;

/// Most index slots a lookup or an insert looks at.
pub const MAX_PROBE: usize = 16;

/// One direction of a connection: both addresses and ports (an ICMP echo's id as both
/// ports), the protocol, the family and the zone (the bridge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub v6: bool,
    pub proto: u8,
    pub zone: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

impl Key {
    /// The other direction's tuple.
    pub fn reversed(&self) -> Key {
        Key {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..*self
        }
    }

    /// The key as five words.
    fn words(&self) -> [u64; 5] {
        let w = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        [
            w(&self.src[..8]),
            w(&self.src[8..]),
            w(&self.dst[..8]),
            w(&self.dst[8..]),
            u64::from(self.v6)
                | u64::from(self.proto) << 8
                | u64::from(self.zone) << 16
                | u64::from(self.sport) << 32
                | u64::from(self.dport) << 48,
        ]
    }

    fn from_words(w: [u64; 5]) -> Key {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..8].copy_from_slice(&w[0].to_le_bytes());
        src[8..].copy_from_slice(&w[1].to_le_bytes());
        dst[..8].copy_from_slice(&w[2].to_le_bytes());
        dst[8..].copy_from_slice(&w[3].to_le_bytes());
        Key {
            v6: w[4] & 1 != 0,
            proto: (w[4] >> 8) as u8,
            zone: (w[4] >> 16) as u16,
            src,
            dst,
            sport: (w[4] >> 32) as u16,
            dport: (w[4] >> 48) as u16,
        }
    }
}

/// A connection as the table keeps it: its key (the first direction seen), when it
/// expires, and a word of state its tracker owns (the TCP state and flags).
struct Entry {
    /// Odd while the key is being written.
    seq: AtomicU32,
    /// Bumped each time the entry serves a new connection (its low 8 bits in the slots).
    generation: AtomicU32,
    key: [AtomicU64; 5],
    /// Seconds on the caller's clock; 0: free.
    expires: AtomicU32,
    state: AtomicU32,
    /// The rules epochs the connection was last allowed under: the opener's port in the
    /// low half, the responder's in the high half (0: not checked there).
    epochs: AtomicU32,
}

/// A connection found: its entry, and whether the frame goes the reply way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub entry: u32,
    pub reply: bool,
    /// Which connection of the entry it is (see [`Table::remove`]).
    pub generation: u8,
}

/// Why a connection could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Every entry is in use.
    Table,
    /// The key's probe sequence is full (the index is crowded there).
    Probe,
}

const EMPTY: u64 = 0;
/// A slot whose connection went: skipped by lookups, reused by inserts.
const GONE: u64 = u64::MAX;

/// The connection table.
pub struct Table {
    entries: Box<[Entry]>,
    slots: Box<[AtomicU64]>,
    mask: usize,
    free: ArrayQueue<u32>,
    seed: u64,
    live: AtomicUsize,
}

impl Table {
    /// A table of `capacity` connections (at least one), its index four slots per
    /// connection (two in use: at most half full).
    pub fn new(capacity: usize) -> Table {
        let capacity = capacity.clamp(1, u32::MAX as usize - 1);
        let slots = (capacity * 4).next_power_of_two();
        let free = ArrayQueue::new(capacity);
        for i in 0..capacity as u32 {
            let _ = free.push(i);
        }
        Table {
            entries: (0..capacity)
                .map(|_| Entry {
                    seq: AtomicU32::new(0),
                    generation: AtomicU32::new(0),
                    key: Default::default(),
                    expires: AtomicU32::new(0),
                    state: AtomicU32::new(0),
                    epochs: AtomicU32::new(0),
                })
                .collect(),
            slots: (0..slots).map(|_| AtomicU64::new(EMPTY)).collect(),
            mask: slots - 1,
            free,
            // Random per table: the index's layout cannot be predicted from outside, so a
            // VM cannot aim its connections at one probe sequence.
            seed: std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) | 1,
            live: AtomicUsize::new(0),
        }
    }

    /// Connections in the table (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    #[inline]
    fn hash(&self, k: &Key) -> u64 {
        let mut h = self.seed;
        for w in k.words() {
            h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(31);
        }
        // MurmurHash3's finaliser: every bit of the words reaches the low bits (the slot)
        // and the high ones (the tag).
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ h >> 33
    }

    /// The key of entry `i`, read consistently (`None` if it changed meanwhile twice).
    #[inline]
    fn key_of(&self, i: u32) -> Option<Key> {
        let e = self.entries.get(i as usize)?;
        for _ in 0..2 {
            let before = e.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                continue;
            }
            let w = [0, 1, 2, 3, 4].map(|j| e.key[j].load(Ordering::Relaxed));
            std::sync::atomic::fence(Ordering::Acquire);
            if e.seq.load(Ordering::Relaxed) == before {
                return Some(Key::from_words(w));
            }
        }
        None
    }

    /// The live connection `key` is a direction of, if there is one at `now`.
    #[inline]
    pub fn lookup(&self, key: &Key, now: u32) -> Option<Found> {
        let h = self.hash(key);
        let start = h as usize;
        for p in 0..MAX_PROBE {
            let slot = self.slots[(start + p) & self.mask].load(Ordering::Acquire);
            if slot == EMPTY {
                return None;
            }
            if slot == GONE || slot >> 40 != h >> 40 {
                continue;
            }
            let i = (slot as u32).wrapping_sub(1);
            let generation = (slot >> 32) as u8;
            let Some(stored) = self.key_of(i) else {
                continue;
            };
            let reply = stored != *key;
            if (reply && stored.reversed() != *key)
                || !self.alive(i, now)
                || self.entries[i as usize].generation.load(Ordering::Relaxed) as u8 != generation
            {
                continue;
            }
            return Some(Found {
                entry: i,
                reply,
                generation,
            });
        }
        None
    }

    #[inline]
    fn alive(&self, i: u32, now: u32) -> bool {
        self.entries[i as usize].expires.load(Ordering::Relaxed) > now
    }

    /// Adds connection `key` (its first direction), alive until `expires`, with tracker
    /// state `state`; both directions' slots are published once its key is written.
    pub fn insert(&self, key: &Key, expires: u32, state: u32) -> Result<u32, Full> {
        self.insert_checked(key, expires, state, 0)
    }

    /// [`Self::insert`], the connection allowed under `epochs` ([`Self::epochs`]).
    pub fn insert_checked(
        &self,
        key: &Key,
        expires: u32,
        state: u32,
        epochs: u32,
    ) -> Result<u32, Full> {
        let i = self.free.pop().ok_or(Full::Table)?;
        let e = &self.entries[i as usize];
        let generation = e.generation.fetch_add(1, Ordering::Relaxed).wrapping_add(1) as u8;
        e.seq.fetch_add(1, Ordering::AcqRel);
        for (slot, w) in e.key.iter().zip(key.words()) {
            slot.store(w, Ordering::Relaxed);
        }
        e.state.store(state, Ordering::Relaxed);
        e.epochs.store(epochs, Ordering::Relaxed);
        e.expires.store(expires.max(1), Ordering::Relaxed);
        e.seq.fetch_add(1, Ordering::Release);
        let Some(first) = self.claim(key, i, generation) else {
            self.release(i);
            return Err(Full::Probe);
        };
        if self.claim(&key.reversed(), i, generation).is_none() {
            self.slots[first].store(GONE, Ordering::Release);
            self.release(i);
            return Err(Full::Probe);
        }
        self.live.fetch_add(1, Ordering::Relaxed);
        Ok(i)
    }

    /// The slot value of entry `i`, generation `generation`, for a key of hash `h`.
    fn slot_value(h: u64, generation: u8, i: u32) -> u64 {
        (h >> 40) << 40 | u64::from(generation) << 32 | u64::from(i + 1)
    }

    /// Claims a free slot on `k`'s probe sequence for entry `i`.
    fn claim(&self, k: &Key, i: u32, generation: u8) -> Option<usize> {
        let h = self.hash(k);
        let value = Self::slot_value(h, generation, i);
        let start = h as usize;
        for p in 0..MAX_PROBE {
            let s = (start + p) & self.mask;
            let cur = self.slots[s].load(Ordering::Relaxed);
            if (cur == EMPTY || cur == GONE)
                && self.slots[s]
                    .compare_exchange(cur, value, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(s);
            }
        }
        None
    }

    /// Gives entry `i` back once no slot names it.
    fn release(&self, i: u32) {
        self.entries[i as usize].expires.store(0, Ordering::Relaxed);
        let _ = self.free.push(i);
    }

    /// The tracker state of entry `i`.
    #[inline]
    pub fn state(&self, i: u32) -> u32 {
        self.entries[i as usize].state.load(Ordering::Relaxed)
    }

    /// The rules epochs entry `i` was last allowed under: the opener's port's in the low
    /// half, the responder's in the high half.
    #[inline]
    pub fn epochs(&self, i: u32) -> u32 {
        self.entries[i as usize].epochs.load(Ordering::Relaxed)
    }

    /// Records that entry `i` is allowed under `epoch` on its opener's side
    /// (`responder` false) or its responder's.
    pub fn set_epoch(&self, i: u32, responder: bool, epoch: u16) {
        let shift = if responder { 16 } else { 0 };
        let _ = self.entries[i as usize].epochs.fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |e| Some(e & !(0xffff << shift) | u32::from(epoch) << shift),
        );
    }

    /// Sets entry `i`'s tracker state and expiry (a frame of it went through).
    #[inline]
    pub fn update(&self, i: u32, state: u32, expires: u32) {
        let e = &self.entries[i as usize];
        e.state.store(state, Ordering::Relaxed);
        e.expires.store(expires.max(1), Ordering::Relaxed);
    }

    /// Removes connection `generation` of entry `i` (a connection cut): its slots are
    /// marked gone, the entry freed. Nothing if the entry serves another connection now.
    /// Returns whether it removed it.
    pub fn remove(&self, i: u32, generation: u8) -> bool {
        let Some(key) = self.key_of(i) else {
            return false;
        };
        let mut found = false;
        for k in [key, key.reversed()] {
            let h = self.hash(&k);
            let value = Self::slot_value(h, generation, i);
            for p in 0..MAX_PROBE {
                let s = (h as usize + p) & self.mask;
                if self.slots[s]
                    .compare_exchange(value, GONE, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    found = true;
                    break;
                }
            }
        }
        if found {
            self.live.fetch_sub(1, Ordering::Relaxed);
            self.release(i);
        }
        found
    }

    /// Removes every connection expired at `now`; returns how many. Off the data path
    /// (once a second): it reads every entry.
    pub fn expire(&self, now: u32) -> usize {
        let mut n = 0;
        for i in 0..self.entries.len() as u32 {
            let e = &self.entries[i as usize];
            let generation = e.generation.load(Ordering::Relaxed) as u8;
            let at = e.expires.load(Ordering::Relaxed);
            if at != 0 && at <= now && self.remove(i, generation) {
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(a: u8, b: u8, sport: u16, dport: u16) -> Key {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..4].copy_from_slice(&[10, 0, 0, a]);
        dst[..4].copy_from_slice(&[10, 0, 0, b]);
        Key {
            v6: false,
            proto: 6,
            zone: 0,
            src,
            dst,
            sport,
            dport,
        }
    }

    #[test]
    fn a_connection_is_found_both_ways_until_it_expires_or_goes() {
        let t = Table::new(8);
        let k = key(1, 2, 40000, 22);
        let i = t.insert(&k, 100, 7).unwrap();
        let there = t.lookup(&k, 10).unwrap();
        assert_eq!((there.entry, there.reply), (i, false));
        let back = t.lookup(&k.reversed(), 10).unwrap();
        assert_eq!((back.entry, back.reply), (i, true));
        assert_eq!(back.generation, there.generation);
        assert_eq!(t.state(i), 7);
        // Another connection between the same hosts is another.
        assert_eq!(t.lookup(&key(1, 2, 40001, 22), 10), None);
        assert_eq!(t.lookup(&Key { zone: 1, ..k }, 10), None, "another bridge");
        // Expired: absent, then swept.
        assert_eq!(t.lookup(&k, 100), None);
        assert_eq!(t.expire(100), 1);
        assert!(t.is_empty());
        // Removed at once.
        t.insert(&k, 1000, 0).unwrap();
        let f = t.lookup(&k, 10).unwrap();
        assert!(t.remove(f.entry, f.generation));
        assert_eq!(t.lookup(&k, 10), None);
        assert!(t.is_empty());
    }

    #[test]
    fn a_full_table_refuses_and_frees_as_connections_go() {
        let t = Table::new(4);
        let ids: Vec<u32> = (0..4)
            .map(|p| t.insert(&key(1, 2, 1000 + p, 80), 50, 0).unwrap())
            .collect();
        assert_eq!(t.insert(&key(1, 2, 2000, 80), 50, 0), Err(Full::Table));
        assert_eq!(t.len(), 4);
        let old = t.lookup(&key(1, 2, 1002, 80), 1).unwrap();
        assert!(t.remove(ids[2], old.generation));
        let again = t.insert(&key(1, 2, 2000, 80), 50, 0).unwrap();
        assert_eq!(again, ids[2], "the freed entry serves again");
        assert!(t.lookup(&key(1, 2, 1002, 80), 1).is_none());
        let new = t.lookup(&key(1, 2, 2000, 80), 1).unwrap();
        assert_ne!(new.generation, old.generation);
        // A late removal of the old connection leaves the new one alone.
        assert!(!t.remove(ids[2], old.generation));
        assert!(t.lookup(&key(1, 2, 2000, 80), 1).is_some());
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn many_connections_are_each_found_and_gone_slots_are_reused() {
        let t = Table::new(10_000);
        for p in 0..10_000u16 {
            t.insert(&key((p % 200) as u8, 2, p, 443), 100, u32::from(p))
                .unwrap();
        }
        for p in 0..10_000u16 {
            let f = t
                .lookup(&key((p % 200) as u8, 2, p, 443).reversed(), 1)
                .unwrap();
            assert!(f.reply);
            assert_eq!(t.state(f.entry), u32::from(p));
        }
        assert_eq!(t.expire(100), 10_000);
        // The index is all gone slots now: inserts reuse them.
        for p in 0..10_000u16 {
            t.insert(&key(3, 4, p, 53), 200, 0).unwrap();
        }
        assert_eq!(t.len(), 10_000);
    }

    #[test]
    fn workers_on_two_threads_find_what_the_other_added() {
        let t = std::sync::Arc::new(Table::new(20_000));
        let writers: Vec<_> = (0..2u8)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for p in 0..5_000u16 {
                        t.insert(&key(w, 9, p, 80), 100, 0).unwrap();
                        // The other thread's connections, as its reply direction.
                        let _ = t.lookup(&key(1 - w, 9, p, 80).reversed(), 1);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        for w in 0..2u8 {
            for p in 0..5_000u16 {
                assert!(t.lookup(&key(w, 9, p, 80).reversed(), 1).is_some());
            }
        }
    }
}
