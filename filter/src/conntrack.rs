//! The connection table: sized once, shared by every worker without a lock, nothing
//! allocated per frame (docs/architecture.md, "Security groups").
//!
//! Entries live in one array; an open-addressed index of 64-bit slots (a 24-bit hash tag,
//! the entry's 8-bit generation, a 32-bit entry number) finds them, two slots per
//! connection, one per direction's tuple, so that the workers of both VMs find it among
//! the [`MAX_PROBE`] slots of its tuple's two buckets (a cache line each). An entry's key is written under its own sequence counter (odd while
//! it changes) and read twice-checked, so a lookup that races with the entry's reuse sees
//! either the old key, the new one, or a retry, never a mix; a lookup compares the whole
//! key, so a slot pointing at a reused entry is a miss. Free entries come from a lock-free
//! bounded queue. Expiry is lazy (an expired entry is absent to lookups) and swept by
//! [`Table::expire`], called once a second off the data path.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crossbeam_queue::ArrayQueue;

use crate::huge::{HugeArray, Zeroable};

/// Index slots per bucket: one cache line.
const BUCKET: usize = 8;

/// Most index slots a lookup or an insert looks at: the key's two buckets.
pub const MAX_PROBE: usize = 2 * BUCKET;

/// One cache line of index slots.
#[repr(align(64))]
struct Bucket([AtomicU64; BUCKET]);

// SAFETY: atomics of zero bits: every slot EMPTY.
#[allow(unsafe_code)]
unsafe impl Zeroable for Bucket {}

/// Zones are this many bits wide: a bridge's number and a VLAN (see [`zone`]).
pub const ZONE_BITS: u32 = 22;

/// The zone of VLAN `vlan` (0: untagged) of bridge number `bridge`: connections in two
/// zones never meet, so that addresses may repeat across bridges and VLANs. Bridges
/// beyond the 1024th share zones with the first ones.
pub fn zone(bridge: usize, vlan: u16) -> u32 {
    ((bridge as u32) << 12 | u32::from(vlan & 0xfff)) & ((1 << ZONE_BITS) - 1)
}

/// One direction of a connection: both addresses and ports (an ICMP echo's id as both
/// ports), the protocol, the family and the zone ([`zone`]). A datagram's fragments have
/// a key of their own kind (`fragments`), the datagram's id in the ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub v6: bool,
    pub fragments: bool,
    pub proto: u8,
    pub zone: u32,
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

    /// The key as the table compares and hashes it ([`Packed`]).
    #[inline]
    pub fn packed(&self) -> Packed {
        let w = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        let mut p = Packed::of(
            self.v6,
            self.proto,
            self.zone,
            [w(&self.src[..8]), w(&self.src[8..])],
            [w(&self.dst[..8]), w(&self.dst[8..])],
            (self.sport, self.dport),
        );
        p.0[4] |= u64::from(self.fragments) << 1;
        p
    }

    fn words(&self) -> [u64; 5] {
        self.packed().0
    }

    fn from_words(w: [u64; 5]) -> Key {
        Key {
            v6: w[4] & 1 != 0,
            fragments: w[4] & 2 != 0,
            proto: (w[4] >> 2) as u8,
            zone: (w[4] >> 10) as u32 & ((1 << ZONE_BITS) - 1),
            src: bytes_of(w[0], w[1]),
            dst: bytes_of(w[2], w[3]),
            sport: (w[4] >> 32) as u16,
            dport: (w[4] >> 48) as u16,
        }
    }
}

/// A [`Key`] as five words, the form the table stores, hashes and compares: made once
/// per frame, it serves the hash, the prefetches and every lookup of the frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Packed([u64; 5]);

impl Packed {
    /// The other direction's key ([`Key::reversed`]): addresses and ports swapped.
    #[inline]
    pub fn reversed(&self) -> Packed {
        let [s0, s1, d0, d1, rest] = self.0;
        let low = rest & 0xffff_ffff;
        let (sport, dport) = ((rest >> 32) & 0xffff, rest >> 48);
        Packed([d0, d1, s0, s1, low | dport << 32 | sport << 48])
    }

    pub fn key(&self) -> Key {
        Key::from_words(self.0)
    }

    /// The key of a whole datagram (not a fragments' key) of family `v6`, protocol
    /// `proto`, in zone `zone`, its addresses as the little-endian words of their 16
    /// bytes (an IPv4 address in the low half of the first, the second 0), and its ports
    /// (source, destination).
    #[inline(always)]
    pub fn of(
        v6: bool,
        proto: u8,
        zone: u32,
        src: [u64; 2],
        dst: [u64; 2],
        (sport, dport): (u16, u16),
    ) -> Packed {
        Packed([
            src[0],
            src[1],
            dst[0],
            dst[1],
            u64::from(v6)
                | u64::from(proto) << 2
                | u64::from(zone & ((1 << ZONE_BITS) - 1)) << 10
                | u64::from(sport) << 32
                | u64::from(dport) << 48,
        ])
    }

    pub fn v6(&self) -> bool {
        self.0[4] & 1 != 0
    }

    pub fn proto(&self) -> u8 {
        (self.0[4] >> 2) as u8
    }

    /// The source address's 16 bytes (an IPv4 address in the first four).
    pub fn src(&self) -> [u8; 16] {
        bytes_of(self.0[0], self.0[1])
    }

    pub fn dst(&self) -> [u8; 16] {
        bytes_of(self.0[2], self.0[3])
    }

    /// Source and destination ports (an echo's id as both).
    pub fn ports(&self) -> (u16, u16) {
        ((self.0[4] >> 32) as u16, (self.0[4] >> 48) as u16)
    }

    /// Whether `self` and `other` are the same key: the words compared without a branch
    /// or a call (an array's `==` calls `memcmp`).
    #[inline(always)]
    fn same(&self, other: &[u64; 5]) -> bool {
        self.0
            .iter()
            .zip(other)
            .fold(0, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// The 128-bit product of `a` and `b`, its halves folded into 64 bits: every bit of either
/// reaches most bits of the result.
#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    p as u64 ^ (p >> 64) as u64
}

/// Six secret words from `seed` (splitmix64's steps): none zero, so that no word of a key
/// is multiplied away.
fn hash_keys(seed: u64) -> [u64; 6] {
    let mut x = seed;
    [0; 6].map(|_| {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ z >> 30).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ z >> 27).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ z >> 31) | 1
    })
}

/// 16 address bytes from their two little-endian words.
fn bytes_of(lo: u64, hi: u64) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&lo.to_le_bytes());
    a[8..].copy_from_slice(&hi.to_le_bytes());
    a
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
    /// The slot of [`Table::per_port`] the connection is charged to.
    owner: AtomicU32,
}

impl Entry {
    /// The entry's key words, read consistently (`None` if a writer was at them both
    /// times tried).
    #[inline]
    fn key_words(&self) -> Option<[u64; 5]> {
        for _ in 0..2 {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                continue;
            }
            let w = [0, 1, 2, 3, 4].map(|j| self.key[j].load(Ordering::Relaxed));
            std::sync::atomic::fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return Some(w);
            }
        }
        None
    }
}

// SAFETY: atomics of zero bits: a free entry (expires 0), generation 0, no key.
#[allow(unsafe_code)]
unsafe impl Zeroable for Entry {}

/// A connection found: its entry, and whether the frame goes the reply way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub entry: u32,
    pub reply: bool,
    /// Which connection of the entry it is (see [`Table::remove`]).
    pub generation: u8,
}

/// A connection as [`Table::list`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    pub entry: u32,
    pub generation: u8,
    /// Its first direction.
    pub key: Key,
    /// The tracker's word ([`crate::tracker::unpack`]).
    pub state: u32,
    /// When it expires, on the table's clock.
    pub expires: u32,
    /// The port slot it is charged to (a port's number modulo [`PORT_SLOTS`]).
    pub port: u32,
}

/// Why a connection could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Every entry is in use.
    Table,
    /// Both buckets of the key are full (the index is crowded there).
    Probe,
    /// The port it would be charged to holds its limit of connections.
    Port,
}

/// Ports are counted in this many slots (a port's number modulo it).
pub const PORT_SLOTS: usize = 4096;

/// The port a new connection is charged to and the most connections that port may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub port: u32,
    pub limit: u32,
}

impl Charge {
    /// Charged to nobody in particular (tests, tools): the last port slot, no limit.
    pub const NONE: Charge = Charge {
        port: PORT_SLOTS as u32 - 1,
        limit: u32::MAX,
    };
}

impl Default for Charge {
    fn default() -> Charge {
        Charge::NONE
    }
}

const EMPTY: u64 = 0;
/// A slot whose connection went: skipped by lookups, reused by inserts.
const GONE: u64 = u64::MAX;

/// The connection table.
pub struct Table {
    entries: HugeArray<Entry>,
    /// The index: a key's slot is in one of two buckets (two choices, as a cuckoo
    /// table's, without moving anything): a bucket is full only when both are, which at
    /// most half full is vanishingly rare, where one linear probe sequence of 16 slots
    /// overflowed in a table of ten thousand.
    buckets: HugeArray<Bucket>,
    mask: usize,
    free: ArrayQueue<u32>,
    /// The hash's secret keys, drawn from the table's seed.
    keys: [u64; 6],
    live: AtomicUsize,
    /// Connections each port holds, by port number modulo [`PORT_SLOTS`].
    per_port: Box<[AtomicU32]>,
    /// Connections in each bridge's zones, by bridge number (see [`zone`]).
    per_bridge: Box<[AtomicU32]>,
    /// Where the next [`Table::expire_slice`] starts.
    sweep: AtomicUsize,
}

/// [`Table::expire_slice`] reads the table in this many slices.
pub const EXPIRY_SLICES: usize = 8;

/// Bridges counted apart: the bridge numbers zones hold.
const BRIDGE_SLOTS: usize = 1 << (ZONE_BITS - 12);

fn bridge_of(zone: u32) -> usize {
    (zone >> 12) as usize % BRIDGE_SLOTS
}

impl Table {
    /// A table of `capacity` connections (at least one), its index four slots per
    /// connection (two in use: at most half full).
    pub fn new(capacity: usize) -> Table {
        // Random per table: the index's layout cannot be predicted from outside, so a VM
        // cannot aim its connections at one probe sequence.
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        Table::seeded(capacity, seed)
    }

    /// [`Self::new`] with the index's layout fixed by `seed`: two tables of one seed and
    /// capacity fill alike (tests and fuzzing compare two ways of judging the same frames;
    /// the data path's table is [`Self::new`]'s).
    pub fn seeded(capacity: usize, seed: u64) -> Table {
        let capacity = capacity.clamp(1, u32::MAX as usize - 1);
        let slots = (capacity * 4).next_power_of_two().max(2 * BUCKET);
        let free = ArrayQueue::new(capacity);
        for i in 0..capacity as u32 {
            let _ = free.push(i);
        }
        Table {
            // Zeroed: every entry free (expires 0), every slot empty.
            entries: HugeArray::zeroed(capacity),
            buckets: HugeArray::zeroed(slots / BUCKET),
            mask: slots / BUCKET - 1,
            free,
            keys: hash_keys(seed),
            live: AtomicUsize::new(0),
            per_port: (0..PORT_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            per_bridge: (0..BRIDGE_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            sweep: AtomicUsize::new(0),
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

    /// Bytes the table holds: its entries, its index and its free list (mapped when made,
    /// backed by memory as they are first used).
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val::<[Entry]>(&self.entries)
            + std::mem::size_of_val::<[Bucket]>(&self.buckets)
            + self.free.capacity() * 2 * std::mem::size_of::<usize>()
    }

    #[inline]
    fn hash(&self, k: &Key) -> u64 {
        self.hash_packed(&k.packed())
    }

    /// `key`'s hash in this table ([`Self::hash_of`] for a [`Packed`] key).
    #[inline]
    pub fn hash_packed(&self, key: &Packed) -> u64 {
        // Each pair of words keyed and multiplied into 128 bits, the halves folded
        // together (as wyhash does), then once more: three independent multiplications
        // and one after them, where a chain of a multiplication per word had made the
        // hash wait on itself (perf: its rotations were a fifth of reading a burst).
        let [w0, w1, w2, w3, w4] = key.0;
        let k = &self.keys;
        let h = fold(w0 ^ k[0], w1 ^ k[1]) ^ fold(w2 ^ k[2], w3 ^ k[3]) ^ fold(w4 ^ k[4], k[5]);
        fold(h ^ k[5], 0x9e37_79b9_7f4a_7c15)
    }

    /// The key of entry `i`, read consistently (`None` if it changed meanwhile twice).
    #[inline]
    fn key_of(&self, i: u32) -> Option<Key> {
        self.entries
            .get(i as usize)?
            .key_words()
            .map(Key::from_words)
    }

    /// Starts loading the index's first bucket of the key of hash `hash` ([`Self::hash_of`])
    /// into the cache: the data path calls
    /// it for a burst's frames before it looks any up, so that their buckets' misses
    /// overlap instead of following one another (at ten thousand connections a lookup spent
    /// nearly half its time waiting for its bucket).
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        prefetch(self.first_bucket(hash));
    }

    /// Starts loading the entries the first bucket of the key of hash `hash` names with its
    /// tag (the bucket is in the cache by then: see [`Self::prefetch`]).
    #[inline]
    pub fn prefetch_entries(&self, hash: u64) {
        let h = hash;
        for slot in &self.first_bucket(h).0 {
            let v = slot.load(Ordering::Relaxed);
            if v == EMPTY {
                break;
            }
            if v != GONE && v >> 40 == h >> 40 {
                if let Some(e) = self.entries.get((v as u32).wrapping_sub(1) as usize) {
                    prefetch(e);
                }
            }
        }
    }

    /// The live connection `key` is a direction of, if there is one at `now`.
    #[inline]
    pub fn lookup(&self, key: &Key, now: u32) -> Option<Found> {
        self.lookup_hashed(key, self.hash(key), now)
    }

    /// `key`'s hash in this table: computed once per frame, it serves the prefetches and
    /// every lookup of the frame ([`Self::lookup_hashed`]).
    #[inline]
    pub fn hash_of(&self, key: &Key) -> u64 {
        self.hash(key)
    }

    /// [`Self::lookup`] with `key`'s [`Self::hash_of`] known.
    #[inline]
    pub fn lookup_hashed(&self, key: &Key, hash: u64, now: u32) -> Option<Found> {
        self.lookup_packed(&key.packed(), hash, now)
    }

    /// [`Self::lookup`] of a [`Packed`] key whose [`Self::hash_packed`] is `hash`: the
    /// data path's, the key's words compared as they are stored (a key is stored as its
    /// connection's first direction; a reply's frame finds it turned round).
    #[inline]
    pub fn lookup_packed(&self, key: &Packed, hash: u64, now: u32) -> Option<Found> {
        let tag = hash >> 40;
        for bucket in self.buckets_of(hash) {
            // Slots are claimed in order and never become empty again: an empty slot
            // ends the bucket.
            for slot in &bucket.0 {
                let v = slot.load(Ordering::Acquire);
                if v == EMPTY {
                    break;
                }
                if v == GONE || v >> 40 != tag {
                    continue;
                }
                let i = (v as u32).wrapping_sub(1);
                let Some(e) = self.entries.get(i as usize) else {
                    continue;
                };
                let Some(stored) = e.key_words() else {
                    continue;
                };
                // The stored key turned round only when it is not the frame's as it is
                // (a reply's frames), not the frame's key for every lookup.
                let reply = if key.same(&stored) {
                    false
                } else if key.same(&Packed(stored).reversed().0) {
                    true
                } else {
                    continue;
                };
                let generation = (v >> 32) as u8;
                if e.expires.load(Ordering::Relaxed) <= now
                    || e.generation.load(Ordering::Relaxed) as u8 != generation
                {
                    continue;
                }
                return Some(Found {
                    entry: i,
                    reply,
                    generation,
                });
            }
        }
        None
    }

    /// Whether connection `found` is still in the table at `now` (not expired, removed or
    /// replaced since it was found): a frame judged at two ports looks its connection up
    /// once, and the second port checks this instead.
    #[inline]
    pub fn still(&self, found: &Found, now: u32) -> bool {
        self.entries.get(found.entry as usize).is_some_and(|e| {
            e.expires.load(Ordering::Relaxed) > now
                && e.generation.load(Ordering::Relaxed) as u8 == found.generation
        })
    }

    /// Adds connection `key` (its first direction), alive until `expires`, with tracker
    /// state `state`; both directions' slots are published once its key is written.
    pub fn insert(&self, key: &Key, expires: u32, state: u32) -> Result<u32, Full> {
        self.insert_checked(key, expires, state, 0, Charge::NONE)
            .map(|f| f.entry)
    }

    /// [`Self::insert`], the connection allowed under `epochs` ([`Self::epochs`]) and
    /// charged to `charge`'s port, refused if that port holds its limit already; the
    /// connection as a lookup of `key` would find it.
    pub fn insert_checked(
        &self,
        key: &Key,
        expires: u32,
        state: u32,
        epochs: u32,
        charge: Charge,
    ) -> Result<Found, Full> {
        let owner = charge.port as usize % PORT_SLOTS;
        let held = &self.per_port[owner];
        held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < charge.limit).then_some(n + 1)
        })
        .map_err(|_| Full::Port)?;
        let Some(i) = self.free.pop() else {
            held.fetch_sub(1, Ordering::Relaxed);
            return Err(Full::Table);
        };
        let e = &self.entries[i as usize];
        e.owner.store(owner as u32, Ordering::Relaxed);
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
            held.fetch_sub(1, Ordering::Relaxed);
            self.release(i);
            return Err(Full::Probe);
        };
        if self.claim(&key.reversed(), i, generation).is_none() {
            first.store(GONE, Ordering::Release);
            held.fetch_sub(1, Ordering::Relaxed);
            self.release(i);
            return Err(Full::Probe);
        }
        self.live.fetch_add(1, Ordering::Relaxed);
        self.per_bridge[bridge_of(key.zone)].fetch_add(1, Ordering::Relaxed);
        Ok(Found {
            entry: i,
            reply: false,
            generation,
        })
    }

    /// The slot value of entry `i`, generation `generation`, for a key of hash `h`.
    fn slot_value(h: u64, generation: u8, i: u32) -> u64 {
        (h >> 40) << 40 | u64::from(generation) << 32 | u64::from(i + 1)
    }

    /// The first of [`Self::buckets_of`] alone (the prefetches': the second's index and
    /// its bounds check are not worked out for nothing).
    #[inline]
    fn first_bucket(&self, h: u64) -> &Bucket {
        &self.buckets[h as usize & self.mask]
    }

    /// The two buckets a key of hash `h` may be in.
    #[inline]
    fn buckets_of(&self, h: u64) -> [&Bucket; 2] {
        let first = h as usize & self.mask;
        let mut second =
            (h.rotate_right(24).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & self.mask;
        if second == first {
            second ^= 1;
        }
        [&self.buckets[first], &self.buckets[second]]
    }

    /// The slots a key of hash `h` may be in. Within a bucket slots are claimed in order
    /// and never become empty again, so an empty slot ends the search of its bucket.
    #[inline]
    fn probe(&self, h: u64) -> impl Iterator<Item = &AtomicU64> {
        self.buckets_of(h).into_iter().flat_map(|b| {
            b.0.iter()
                .take_while(|s| s.load(Ordering::Acquire) != EMPTY)
        })
    }

    /// Claims a free slot for entry `i` in the less crowded of `k`'s two buckets (the
    /// other if that one has none): with two choices the fullest bucket of a table at
    /// its capacity stays well under its eight slots.
    fn claim(&self, k: &Key, i: u32, generation: u8) -> Option<&AtomicU64> {
        let h = self.hash(k);
        let value = Self::slot_value(h, generation, i);
        let used = |b: &Bucket| {
            b.0.iter()
                .filter(|s| !matches!(s.load(Ordering::Relaxed), EMPTY | GONE))
                .count()
        };
        let [one, two] = self.buckets_of(h);
        let order = if used(two) < used(one) {
            [two, one]
        } else {
            [one, two]
        };
        order.into_iter().flat_map(|b| b.0.iter()).find(|slot| {
            let cur = slot.load(Ordering::Relaxed);
            (cur == EMPTY || cur == GONE)
                && slot
                    .compare_exchange(cur, value, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
        })
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
    /// What has not changed is not stored: an entry's cache line stays shared by the
    /// cores that read it while its connection's state holds (within a second, the
    /// expiry does too).
    #[inline]
    pub fn update(&self, i: u32, state: u32, expires: u32) {
        let e = &self.entries[i as usize];
        let expires = expires.max(1);
        if e.state.load(Ordering::Relaxed) != state {
            e.state.store(state, Ordering::Relaxed);
        }
        if e.expires.load(Ordering::Relaxed) != expires {
            e.expires.store(expires, Ordering::Relaxed);
        }
    }

    /// Removes connection `generation` of entry `i` (a connection cut): its slots are
    /// marked gone, the entry freed. Nothing if the entry serves another connection now,
    /// or another caller removed it first: the one that takes its first direction's slot
    /// removes it. Returns whether this call removed it.
    pub fn remove(&self, i: u32, generation: u8) -> bool {
        let Some(key) = self.key_of(i) else {
            return false;
        };
        if !self.unpublish(&key, i, generation) {
            return false;
        }
        self.unpublish(&key.reversed(), i, generation);
        self.live.fetch_sub(1, Ordering::Relaxed);
        let _ = self.per_bridge[bridge_of(key.zone)].fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |n| n.checked_sub(1),
        );
        let owner = self.entries[i as usize].owner.load(Ordering::Relaxed);
        if let Some(n) = self.per_port.get(owner as usize) {
            let _ = n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        self.release(i);
        true
    }

    /// Marks the slot of `k` naming entry `i`, generation `generation`, gone; whether this
    /// call did.
    fn unpublish(&self, k: &Key, i: u32, generation: u8) -> bool {
        let h = self.hash(k);
        let value = Self::slot_value(h, generation, i);
        self.probe(h).any(|slot| {
            slot.compare_exchange(value, GONE, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// Connections in the zones of bridge number `bridge` (expired ones not yet swept
    /// included).
    pub fn bridge_connections(&self, bridge: usize) -> u32 {
        self.per_bridge[bridge % BRIDGE_SLOTS].load(Ordering::Relaxed)
    }

    /// Connections port `port` holds (those it was charged for, see [`Charge`]).
    pub fn port_connections(&self, port: u32) -> u32 {
        self.per_port[port as usize % PORT_SLOTS].load(Ordering::Relaxed)
    }

    /// The connections alive at `now`, as the control side lists them (off the data path:
    /// it reads every entry). A connection that changes meanwhile may be missed.
    pub fn list(&self, now: u32) -> impl Iterator<Item = Listed> + '_ {
        (0..self.entries.len() as u32).filter_map(move |i| {
            let e = &self.entries[i as usize];
            let generation = e.generation.load(Ordering::Relaxed) as u8;
            let expires = e.expires.load(Ordering::Relaxed);
            if expires <= now {
                return None;
            }
            let key = self.key_of(i)?;
            // Listed only while published: an entry being added or removed is not.
            let h = self.hash(&key);
            let value = Self::slot_value(h, generation, i);
            let published = self
                .probe(h)
                .any(|slot| slot.load(Ordering::Acquire) == value);
            published.then(|| Listed {
                entry: i,
                generation,
                key,
                state: e.state.load(Ordering::Relaxed),
                expires,
                port: e.owner.load(Ordering::Relaxed),
            })
        })
    }

    /// Removes every connection alive at `now` that `which` picks; returns how many.
    pub fn flush(&self, now: u32, mut which: impl FnMut(&Listed) -> bool) -> usize {
        let picked: Vec<(u32, u8)> = self
            .list(now)
            .filter(|l| which(l))
            .map(|l| (l.entry, l.generation))
            .collect();
        picked
            .into_iter()
            .filter(|&(i, g)| self.remove(i, g))
            .count()
    }

    /// Removes every connection expired at `now`; returns how many. Off the data path:
    /// it reads every entry.
    pub fn expire(&self, now: u32) -> usize {
        self.expire_range(now, 0..self.entries.len())
    }

    /// Removes the connections expired at `now` among the next of the table's
    /// `1/EXPIRY_SLICES` (each call the next slice, round the table), or among all of them
    /// when it is seven-eighths full; returns how many. Called once a second, each entry is
    /// read every [`EXPIRY_SLICES`] seconds: an expired one is absent to lookups at once
    /// (lazy expiry), it only holds its place longer, and a whole table is not read into
    /// the cache the workers share every second.
    pub fn expire_slice(&self, now: u32) -> usize {
        let len = self.entries.len();
        if self.len() >= len / 8 * 7 {
            return self.expire(now);
        }
        let step = len.div_ceil(EXPIRY_SLICES);
        let from = self.sweep.fetch_add(step, Ordering::Relaxed) % (step * EXPIRY_SLICES);
        self.expire_range(now, from.min(len)..(from + step).min(len))
    }

    fn expire_range(&self, now: u32, range: std::ops::Range<usize>) -> usize {
        let mut n = 0;
        for i in range.start as u32..range.end as u32 {
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

/// Starts loading the cache line of `t` (a hint: no architectural effect).
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch<T>(t: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 only hints the cache; it reads nothing into the program and never
    // faults. The address is a live reference's besides.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (t as *const T).cast(),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = t;
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
            fragments: false,
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
    fn a_packed_key_reversed_is_the_reversed_key_packed_and_finds_the_reply() {
        let mut k = key(1, 2, 40000, 22);
        k.src[5] = 9;
        k.dst[12] = 7;
        k.zone = 0x2a_bcde;
        k.v6 = true;
        assert_eq!(k.packed().reversed(), k.reversed().packed());
        assert_eq!(k.packed().key(), k);
        let t = Table::new(8);
        let i = t.insert(&k, 100, 0).unwrap();
        let back = k.reversed().packed();
        let f = t.lookup_packed(&back, t.hash_packed(&back), 10).unwrap();
        assert_eq!((f.entry, f.reply), (i, true));
        assert_eq!(t.hash_packed(&back), t.hash_of(&k.reversed()));
    }

    #[test]
    fn an_update_that_changes_nothing_keeps_the_entry_as_it_was() {
        let t = Table::new(8);
        let k = key(1, 2, 40000, 22);
        let i = t.insert(&k, 100, 7).unwrap();
        t.update(i, 7, 100);
        assert_eq!((t.state(i), t.lookup(&k, 99).is_some()), (7, true));
        t.update(i, 8, 0);
        // An expiry of 0 would free it: it is kept at 1 at least.
        assert_eq!((t.state(i), t.lookup(&k, 0).is_some()), (8, true));
        assert!(t.lookup(&k, 1).is_none());
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

    #[test]
    fn two_threads_removing_one_connection_free_it_once() {
        for round in 0..200u16 {
            let t = std::sync::Arc::new(Table::new(4));
            let i = t.insert(&key(1, 2, round, 80), 100, 0).unwrap();
            let g = t.lookup(&key(1, 2, round, 80), 1).unwrap().generation;
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    let t = t.clone();
                    std::thread::spawn(move || t.remove(i, g))
                })
                .collect();
            let removed: usize = racers
                .into_iter()
                .map(|r| usize::from(r.join().unwrap()))
                .sum();
            assert_eq!(removed, 1);
            assert_eq!(t.len(), 0);
            // Freed once: the table still holds exactly its capacity.
            for p in 0..4 {
                t.insert(&key(3, 4, p, 80), 100, 0).unwrap();
            }
            assert_eq!(t.insert(&key(3, 4, 9, 80), 100, 0), Err(Full::Table));
        }
    }

    #[test]
    fn keys_keep_every_field_through_the_index_words() {
        let k = Key {
            v6: true,
            fragments: true,
            proto: 58,
            zone: zone(1023, 4095),
            src: [0xfe; 16],
            dst: [0x80; 16],
            sport: 0xfffe,
            dport: 1,
        };
        assert_eq!(Key::from_words(k.words()), k);
        assert_ne!(zone(1, 0), zone(0, 0));
        assert_ne!(zone(0, 1), zone(0, 0));
    }

    #[test]
    fn listing_shows_live_connections_and_flush_removes_the_picked() {
        let t = Table::new(8);
        let charged = Charge { port: 7, limit: 10 };
        t.insert_checked(&key(1, 2, 1, 22), 100, 5, 0, charged)
            .unwrap();
        t.insert_checked(&key(1, 2, 2, 22), 3, 0, 0, charged)
            .unwrap();
        t.insert(&key(3, 4, 1, 53), 100, 0).unwrap();
        let live: Vec<Listed> = t.list(10).collect();
        assert_eq!(live.len(), 2, "the expired one is not listed");
        let first = live.iter().find(|l| l.key == key(1, 2, 1, 22)).unwrap();
        assert_eq!((first.state, first.expires, first.port), (5, 100, 7));
        assert_eq!(t.flush(10, |l| l.port == 7), 1);
        assert_eq!(t.list(10).count(), 1);
        assert_eq!(
            t.port_connections(7),
            1,
            "the expired one is still charged until swept"
        );
        assert_eq!(t.expire(10), 1);
        assert_eq!(t.port_connections(7), 0);
        assert_eq!(t.bridge_connections(0), 1);
        let other = Key {
            zone: zone(3, 7),
            ..key(1, 2, 1, 22)
        };
        t.insert(&other, 100, 0).unwrap();
        assert_eq!((t.bridge_connections(0), t.bridge_connections(3)), (1, 1));
    }

    #[test]
    fn a_table_fills_to_its_capacity_without_a_crowded_bucket() {
        for _ in 0..3 {
            let t = Table::new(60_000);
            for p in 0..60_000u32 {
                let k = key((p >> 16) as u8, (p >> 8) as u8, p as u16, 80);
                t.insert(&k, 100, 0).unwrap();
            }
            assert_eq!(t.insert(&key(9, 9, 9, 9), 100, 0), Err(Full::Table));
        }
    }

    #[test]
    fn expiry_by_slices_reaches_every_entry_within_its_round_and_all_of_a_full_table() {
        let t = Table::new(64);
        for p in 0..16u16 {
            t.insert(&key(1, 2, p, 80), 10, 0).unwrap();
        }
        let mut removed = 0;
        for _ in 0..EXPIRY_SLICES {
            removed += t.expire_slice(20);
        }
        assert_eq!(
            (removed, t.len()),
            (16, 0),
            "one round of slices reads every entry"
        );
        // Seven-eighths full: one call reads all.
        for p in 0..56u16 {
            t.insert(&key(3, 4, p, 80), 10, 0).unwrap();
        }
        assert_eq!(t.expire_slice(20), 56);
    }
}
