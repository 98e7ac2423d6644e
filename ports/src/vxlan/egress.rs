//! Frames for the other hosts, a burst at a time: each frame is queued in the worker's
//! [`Batch`] once per tunnel end it goes to (the end its destination is behind, or every
//! end of the flood list), as iovecs over the VXLAN header, the edit's prefix (copied) and
//! the frame where it lies in the sender's memory. A small frame is copied whole into the
//! batch instead, behind its VXLAN header: the kernel copies a message's iovecs one by
//! one, and pieces of a few bytes each cost it more than the copy (a third of the worker's
//! time at 64 bytes). When the burst ends (or the batch is full) the packets go out with
//! one `sendmmsg` per sending socket used: a run of packets of one size to one end, their
//! iovecs adjacent, as one UDP GSO message, its iovecs that touch joined.
//!
//! A frame counts as sent if it reached one end at least; else as dropped, for the reason
//! the kernel gave for the last end it was refused by.

use super::remotes::{mac_key, RemoteId, Tally, Way};
use super::socket::{
    Iovecs, Outbound, MAX_DATAGRAM, MAX_GSO_SEGMENTS, MAX_MESSAGES, MAX_SEND_PIECES,
};
use super::VxlanQueue;
use crate::counters::{DropReason, PortCounters};
use crate::datapath::{Egress, Scratch, SendBuilt, SendBurst, SendsAsBuilt};
use crate::frame::view::MemView;
use crate::frame::Seg;
use crate::offload::software::Outgoing;
use crate::offload::{OffloadCaps, MAX_HEADERS};

/// Packets a batch holds before it is sent.
const BATCH_PACKETS: usize = 256;
/// Iovecs a batch holds (a frame takes two at least: header and bytes).
const BATCH_IOVS: usize = 1024;
/// Bytes of copied prefixes a batch holds.
const BATCH_HEADS: usize = 16 * 1024;
/// Frames a batch holds.
const BATCH_FRAMES: usize = BATCH_IOVS / 2;
/// Frames of at most this many bytes are copied into the batch.
const COPY_MAX: usize = 256;
/// Bytes of copied frames a batch holds (each with its VXLAN header).
const BATCH_BYTES: usize = 64 * 1024;

/// One tunnel packet queued: a frame to one end.
#[derive(Debug, Clone, Copy)]
struct Packet {
    end: RemoteId,
    /// The sending socket (its flow's).
    sender: u8,
    /// The frame it carries, in [`Batch::frames`].
    frame: u16,
    /// Its iovecs in [`Batch::iov`] (shared by the copies of a frame to several ends).
    iov_at: u16,
    iov_n: u16,
    /// Bytes of UDP payload: the VXLAN header and the frame.
    len: u32,
    /// Why the kernel refused it; `None` once sent (or before).
    refused: Option<DropReason>,
}

/// What became of one frame of the batch.
#[derive(Debug, Clone, Copy, Default)]
struct Fate {
    len: u32,
    sent: bool,
    refused: Option<DropReason>,
}

/// A worker's tunnel packets waiting to be sent, sized once: the data path never
/// allocates.
pub struct Batch {
    packets: Vec<Packet>,
    frames: Vec<Fate>,
    iov: Iovecs,
    iov_used: usize,
    /// The copied prefixes (its length only grows within a batch, never past its
    /// capacity: the iovecs into it stay valid).
    heads: Vec<u8>,
    /// The copied frames, each behind its VXLAN header (as `heads`).
    bytes: Vec<u8>,
    /// Room for the iovecs of the messages of one `sendmmsg`.
    joined: Iovecs,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            packets: Vec::with_capacity(BATCH_PACKETS),
            frames: Vec::with_capacity(BATCH_FRAMES),
            iov: Iovecs::new(BATCH_IOVS),
            iov_used: 0,
            heads: Vec::with_capacity(BATCH_HEADS),
            bytes: Vec::with_capacity(BATCH_BYTES),
            joined: Iovecs::new(BATCH_IOVS),
        }
    }
}

/// A tunnel port opened for a burst.
struct VxlanBurst<'q> {
    q: &'q VxlanQueue,
    batch: &'q mut Batch,
    sent: Tally,
    counters: &'q PortCounters,
}

impl<'m> SendsAsBuilt<'m> for VxlanBurst<'_> {
    #[inline]
    fn offloads(&self) -> OffloadCaps {
        OffloadCaps::NONE
    }
}

/// Bytes of a frame's start read for its destination and its flow's hash: Ethernet, a VLAN
/// tag, IPv6's addresses, and the ports after an IPv4 header without options.
const FLOW_BYTES: usize = 64;

/// A hash of the inner frame's flow, from its first bytes: its addresses (and for TCP and
/// UDP over IPv4 without options, its ports), else its MAC addresses.
fn flow_hash(b: &[u8]) -> u32 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut mix = |bytes: &[u8]| {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0xff51_afd7_ed55_8ccd);
            h ^= h >> 29;
        }
    };
    let l3 = match b.get(12..14) {
        Some([0x81, 0x00]) => 18,
        _ => 14,
    };
    match b.get(l3 - 2..l3) {
        Some([0x08, 0x00]) if b.len() >= l3 + 20 => {
            mix(&b[l3 + 12..l3 + 20]);
            let proto = b[l3 + 9];
            let ihl = usize::from(b[l3] & 0x0f) * 4;
            if (proto == 6 || proto == 17) && b.len() >= l3 + ihl + 4 {
                mix(&b[l3 + ihl..l3 + ihl + 4]);
            }
        }
        Some([0x86, 0xdd]) if b.len() >= l3 + 40 => mix(&b[l3 + 8..l3 + 40]),
        _ => mix(&b[..b.len().min(12)]),
    }
    (h ^ (h >> 32)) as u32
}

/// The sending socket of a flow that hashes to `hash`.
fn sender_of(hash: u32) -> u8 {
    let h = hash ^ (hash >> 16);
    (h as usize % super::socket::SENDERS) as u8
}

impl<'m> SendBuilt<'m> for VxlanBurst<'_> {
    fn send_built(
        &mut self,
        src: &mut MemView<'m>,
        segs: &[Seg],
        out: &Outgoing<'_>,
    ) -> Result<u32, DropReason> {
        let q = self.q;
        // The frame's first bytes as it leaves: the prefix, then the source's.
        let mut first = [0u8; FLOW_BYTES];
        let n = out.head.len().min(FLOW_BYTES);
        first[..n].copy_from_slice(&out.head[..n]);
        let more = (out.len as usize).min(FLOW_BYTES - n);
        if more > 0 && !src.read_frame(segs, out.skip, &mut first[n..n + more]) {
            return Err(DropReason::BadDescriptor);
        }
        let seen = &first[..n + more];
        let Some(dst) = seen.get(..6) else {
            return Err(DropReason::BadDescriptor);
        };
        let one: [RemoteId; 1];
        let ends: &[RemoteId] = match q
            .macs
            .lookup(mac_key([dst[0], dst[1], dst[2], dst[3], dst[4], dst[5]]))
        {
            Some(end) if dst[0] & 1 == 0 => {
                one = [end];
                &one
            }
            _ => q.remotes.flood(),
        };
        if ends.is_empty() {
            // No end to send to (an EVPN port before its routes, a static one without
            // remotes): the frame has nowhere to go on this segment.
            return Err(DropReason::PortDown);
        }
        let frame_len = out.frame_len();
        let len = frame_len as usize + super::VXLAN_HEADER_LEN;
        if len > MAX_DATAGRAM {
            return Err(DropReason::TooBig);
        }
        let sender = sender_of(flow_hash(seen));
        // The frame's bytes read already (after the prefix): a small frame's copy takes
        // them from here, not from the sender's memory again.
        let read = &first[n..n + more];
        self.queue(src, segs, out, read, ends, sender, len as u32)?;
        Ok(frame_len)
    }
}

impl VxlanBurst<'_> {
    /// Queues the frame `out` (of `segs` in `src`; its first bytes after the prefix, `read`,
    /// read from there already) for `ends`, from `sender`, as packets of `len` bytes;
    /// sends what the batch holds first if it has no room for it.
    #[allow(clippy::too_many_arguments)]
    fn queue(
        &mut self,
        src: &mut MemView<'_>,
        segs: &[Seg],
        out: &Outgoing<'_>,
        read: &[u8],
        ends: &[RemoteId],
        sender: u8,
        len: u32,
    ) -> Result<(), DropReason> {
        let b = &mut *self.batch;
        if b.iov.0.len() - b.iov_used < MAX_SEND_PIECES
            || b.heads.capacity() - b.heads.len() < MAX_HEADERS
            || b.bytes.capacity() - b.bytes.len() < COPY_MAX + super::VXLAN_HEADER_LEN
            || b.frames.len() == b.frames.capacity()
        {
            self.flush();
        }
        let b = &mut *self.batch;
        let pieces = if len as usize <= COPY_MAX + super::VXLAN_HEADER_LEN {
            // Header, prefix and frame one after the other in the batch's bytes.
            let at = b.bytes.len();
            b.bytes.extend_from_slice(&self.q.header);
            b.bytes.extend_from_slice(out.head);
            b.bytes.extend_from_slice(read);
            let from = b.bytes.len();
            b.bytes.resize(at + len as usize, 0);
            // The rest (none, for a frame of at most 64 bytes).
            if from < b.bytes.len()
                && !src.read_frame(segs, out.skip + read.len(), &mut b.bytes[from..])
            {
                b.bytes.truncate(at);
                return Err(DropReason::BadDescriptor);
            }
            b.iov.0[b.iov_used] = libc::iovec {
                iov_base: b.bytes[at..].as_ptr().cast_mut().cast(),
                iov_len: len as usize,
            };
            1
        } else {
            let head_at = b.heads.len();
            b.heads
                .extend_from_slice(&out.head[..out.head.len().min(MAX_HEADERS)]);
            let head = &b.heads[head_at..];
            src.gather_iovecs(
                &mut b.iov.0[b.iov_used..],
                &[&self.q.header, head],
                segs,
                out.skip,
                out.len as usize,
            )
            .map_err(|_| DropReason::BadDescriptor)?
        };
        let (iov_at, iov_n) = (b.iov_used as u16, pieces as u16);
        b.iov_used += pieces;
        let frame = b.frames.len() as u16;
        b.frames.push(Fate {
            len: out.frame_len(),
            ..Fate::default()
        });
        for &end in ends {
            if self.batch.packets.len() == self.batch.packets.capacity() {
                self.send_packets();
            }
            self.batch.packets.push(Packet {
                end,
                sender,
                frame,
                iov_at,
                iov_n,
                len,
                refused: None,
            });
        }
        Ok(())
    }

    /// Sends every packet queued, then counts each frame of the batch as sent or dropped
    /// and empties the batch.
    fn flush(&mut self) {
        self.send_packets();
        let b = &mut *self.batch;
        let (mut packets, mut bytes) = (0u64, 0u64);
        for f in &b.frames {
            if f.sent {
                packets += 1;
                bytes += u64::from(f.len);
            } else if let Some(reason) = f.refused {
                self.counters.add_drop(reason, 1);
            }
        }
        if packets > 0 {
            self.counters.add_tx(0, packets, bytes);
        }
        b.frames.clear();
        b.heads.clear();
        b.bytes.clear();
        b.iov_used = 0;
    }

    /// Sends the packets queued, socket by socket, each socket's in their order, and
    /// notes on their frames which went.
    fn send_packets(&mut self) {
        let b = &mut *self.batch;
        if b.packets.is_empty() {
            return;
        }
        let mut used = 0u32;
        for p in &b.packets {
            used |= 1 << p.sender;
        }
        while used != 0 {
            let sender = used.trailing_zeros() as u8;
            used &= used - 1;
            send_from(self.q, b, sender);
        }
        for p in &b.packets {
            let fate = &mut b.frames[usize::from(p.frame)];
            match p.refused {
                None => {
                    fate.sent = true;
                    self.sent
                        .add(&self.q.remotes, Way::Sent, p.end, u64::from(p.len));
                }
                Some(reason) => fate.refused = Some(reason),
            }
        }
        b.packets.clear();
    }
}

/// A message being made of packets of one sender: the indexes of its packets in
/// [`Batch::packets`] are `members[first..first + count]`.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    first: u16,
    count: u16,
    bytes: u32,
}

/// Sends the packets of `b` from socket `sender`, a run of packets of one size to one end
/// whose iovecs follow each other as one message, and notes on each packet refused why.
fn send_from(q: &VxlanQueue, b: &mut Batch, sender: u8) {
    let mut members = [0u16; BATCH_PACKETS];
    let mut n = 0;
    for (i, p) in b.packets.iter().enumerate() {
        if p.sender == sender {
            members[n] = i as u16;
            n += 1;
        }
    }
    let members = &members[..n];
    let mut runs = [Run::default(); MAX_MESSAGES];
    let mut i = 0;
    while i < members.len() {
        // Runs of at most MAX_MESSAGES messages, each sent with one system call.
        let mut count = 0;
        while i < members.len() && count < MAX_MESSAGES {
            let first = b.packets[usize::from(members[i])];
            let mut run = Run {
                first: i as u16,
                count: 1,
                bytes: first.len,
            };
            let mut last = first;
            i += 1;
            while i < members.len() {
                let p = b.packets[usize::from(members[i])];
                let fits = p.end == first.end
                    && p.len <= first.len
                    && last.len == first.len
                    && p.iov_at == last.iov_at + last.iov_n
                    && usize::from(run.count) < MAX_GSO_SEGMENTS
                    && (run.bytes + p.len) as usize <= MAX_DATAGRAM;
                if !fits {
                    break;
                }
                run.count += 1;
                run.bytes += p.len;
                last = p;
                i += 1;
            }
            runs[count] = run;
            count += 1;
        }
        send_runs(q, b, sender, members, &runs[..count]);
    }
}

/// Sends `runs` (of `members` of `b`'s packets) from socket `sender`: one system call,
/// then one per packet of a run the kernel refused (to know which of them it refuses and
/// why), and again for the runs after a refused one.
fn send_runs(q: &VxlanQueue, b: &mut Batch, sender: u8, members: &[u16], runs: &[Run]) {
    let message = |b: &Batch, r: &Run| {
        let first = b.packets[usize::from(members[usize::from(r.first)])];
        let last = b.packets[usize::from(members[usize::from(r.first + r.count - 1)])];
        let at = usize::from(first.iov_at);
        let to = q.remotes.get(first.end).map(|e| e.to);
        (
            to,
            at..usize::from(last.iov_at + last.iov_n),
            (r.count > 1).then_some(first.len as u16),
        )
    };
    let mut done = 0;
    // The messages' iovecs, those that touch joined (lent by the batch: no allocation).
    let mut joined = std::mem::replace(&mut b.joined, Iovecs(Box::new([])));
    // Each turn sends one message at least, or marks it refused: bounded by the runs.
    while done < runs.len() {
        let mut places = [(0usize, 0usize); MAX_MESSAGES];
        let mut tos = [None; MAX_MESSAGES];
        let mut segments = [None; MAX_MESSAGES];
        let mut used = 0;
        let mut k = 0;
        for r in &runs[done..] {
            let (to, iov, segment) = message(b, r);
            let Some(to) = to else { break };
            let at = used;
            for v in &b.iov.0[iov] {
                let last = &mut joined.0[used.max(1) - 1];
                if used > at
                    && (last.iov_base as usize).wrapping_add(last.iov_len) == v.iov_base as usize
                {
                    last.iov_len += v.iov_len;
                } else {
                    joined.0[used] = *v;
                    used += 1;
                }
            }
            (places[k], tos[k], segments[k]) = ((at, used), Some(to), segment);
            k += 1;
        }
        let mut msgs = [Outbound {
            to: std::net::SocketAddr::from(([0u8; 4], 0)),
            iov: &[],
            segment: None,
        }; MAX_MESSAGES];
        for i in 0..k {
            let (from, to) = places[i];
            msgs[i] = Outbound {
                to: tos[i].unwrap_or(msgs[i].to),
                iov: &joined.0[from..to],
                segment: segments[i],
            };
        }
        let (went, refused) = match q.sockets.send_batch(usize::from(sender), &msgs[..k]) {
            Ok(went) => (went, None),
            Err((went, e)) => (went, Some(e)),
        };
        done += went;
        let Some(e) = refused else {
            if k == 0 {
                // An end gone from the queue (cannot happen: a queue's ends are fixed).
                mark(b, members, &runs[done], DropReason::PortDown);
                done += 1;
            }
            continue;
        };
        let r = runs[done];
        if r.count == 1 {
            mark(b, members, &r, send_failed(&e));
        } else {
            // Each packet of the run alone: the kernel says which it refuses.
            for m in &members[usize::from(r.first)..usize::from(r.first + r.count)] {
                let p = b.packets[usize::from(*m)];
                let to = q.remotes.get(p.end).map(|e| e.to);
                let at = usize::from(p.iov_at);
                let res = match to {
                    Some(to) => q
                        .sockets
                        .send_batch(
                            usize::from(sender),
                            &[Outbound {
                                to,
                                iov: &b.iov.0[at..at + usize::from(p.iov_n)],
                                segment: None,
                            }],
                        )
                        .map_err(|(_, e)| send_failed(&e)),
                    None => Err(DropReason::PortDown),
                };
                if let Err(reason) = res {
                    b.packets[usize::from(*m)].refused = Some(reason);
                }
            }
        }
        done += 1;
    }
    b.joined = joined;
}

/// Notes the packets of run `r` refused for `reason`.
fn mark(b: &mut Batch, members: &[u16], r: &Run, reason: DropReason) {
    for m in &members[usize::from(r.first)..usize::from(r.first + r.count)] {
        b.packets[usize::from(*m)].refused = Some(reason);
    }
}

/// Why the kernel refused a tunnel packet, as a drop reason.
fn send_failed(e: &std::io::Error) -> DropReason {
    match e.raw_os_error() {
        // Over the path's MTU, "don't fragment" set.
        Some(libc::EMSGSIZE) => DropReason::TooBig,
        // The socket's buffer is full.
        Some(libc::EAGAIN) | Some(libc::ENOBUFS) => DropReason::NoRxBuffer,
        // No route or neighbour for the end: it cannot be reached now.
        _ => DropReason::PortDown,
    }
}

impl Egress for VxlanQueue {
    fn egress<'m, S: SendBurst<'m>>(
        &self,
        _qp_hint: u16,
        counters: &PortCounters,
        scratch: &mut Scratch,
        burst: S,
    ) -> Result<(), DropReason> {
        let mut port = VxlanBurst {
            q: self,
            batch: &mut scratch.tunnel,
            sent: Tally::default(),
            counters,
        };
        // What the engine counts as sent is what was queued: the batch counts what went.
        let _queued = burst.send_to(&mut port);
        port.flush();
        port.sent.flush(&self.remotes, Way::Sent);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_hash_follows_addresses_and_ports_and_not_the_payload() {
        let mut f = vec![0u8; 64];
        f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 17;
        f[26..34].copy_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f[34..38].copy_from_slice(&[0x13, 0x88, 0x00, 0x35]);
        let h = flow_hash(&f);
        let mut payload = f.clone();
        payload[50] = 0xff;
        assert_eq!(flow_hash(&payload), h);
        let mut port = f.clone();
        port[35] = 0x89;
        assert_ne!(flow_hash(&port), h);
        let mut addr = f.clone();
        addr[33] = 3;
        assert_ne!(flow_hash(&addr), h);
        // Not IP: the MAC addresses; too short for its header: as not IP.
        let arp = [&f[..12], &[0x08, 0x06][..], &[0u8; 28][..]].concat();
        assert_eq!(
            flow_hash(&arp),
            flow_hash(&[&f[..12], &[0u8; 30][..]].concat())
        );
        assert_eq!(flow_hash(&f[..20]), flow_hash(&f[..12]));
    }
}
