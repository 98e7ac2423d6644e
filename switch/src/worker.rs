//! A forwarding worker: one pinned thread that polls its ingress queues in bursts.
//!
//! Per burst: the source's kind opens the queue (a VM's TX ring locked, a TAP read, an
//! AF_XDP ring's frames taken) and hands its frames over one by one, each left in the
//! memory it lies in; every frame is decided on a stack copy of its header as it comes
//! (its VLAN, port security, learning, the destination). Then, for each destination, its
//! kind opens it once (a VM's RX ring locked), takes the frames meant for it, each copied
//! once straight from the source's buffers (a VLAN tag pushed or popped on the way, the
//! offloads finished where the receiver cannot), and closes it (used entries published
//! with one index store, one notification). Finally the source's kind gives its buffers
//! back. The kinds' side of this is `vringswitch_ports::datapath`; nothing here names one.
//!
//! Nothing here allocates after start-up, logs per frame, or writes memory another core
//! writes (counters are per worker). When every queue stays empty for `idle_poll`, the
//! worker arms its queues and sleeps until one has frames or something changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vringswitch_filter::conntrack;
use vringswitch_filter::firewall::{Policy, Site};
use vringswitch_ports::counters::PortCounters;
use vringswitch_ports::datapath::{
    EgressBurst, IngressBurst, KindVisitor, Polled, PortKind, ReceiveBurst, Scratch, SendBuilt,
    SendBurst, Sent, Take, Taking, WaitSet,
};
use vringswitch_ports::frame::view::MemView;
use vringswitch_ports::frame::{
    self, FrameEdit, FrameMem, IngressFrame, Seg, JUDGED_LEN, MAX_SEGS, PEEK_LEN,
};
use vringswitch_ports::offload::software::{self, Outgoing, Sent as OffloadSent};
use vringswitch_ports::offload::{OffloadCaps, VnetHeader, VnetOffloads};
use vringswitch_ports::{Attachment, DropReason, OffloadAction, PortId};
use vringswitch_wire::ethernet::{rarp_announcement, EthernetFrame, MacAddr, RARP_LEN};

use crate::capture::{wall_clock_ns, PortCapture};
use crate::fdb::{fdb_key, FdbCache};
use crate::police::{Allowance, Policer};
use crate::security_groups::{self, FrameClass, PortFilter};
use crate::stats::cycles;
use crate::topology::{BridgeRt, PortRt, Topology};
use crate::vlan::{Ingress, VlanPolicy};
use crate::Switch;

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dest {
    Drop,
    Port(PortId),
    Flood,
}

/// The attachment a worker last saw for a port.
#[derive(Default)]
struct PortCache {
    generation: u64,
    attachment: Option<Arc<Attachment>>,
}

/// A frame of the burst and what was decided for it.
struct Slot {
    frame: IngressFrame,
    dest: Dest,
    /// The VLAN the frame came in on.
    ingress: Ingress,
    /// The destination being delivered to has a policer, and it had no room for this frame,
    /// or security groups, and they refuse it (meaningful only while such a destination is
    /// served: see `deliver_to`).
    held: bool,
    /// What the frame is to security groups (meaningful once [`Burst::classified`]).
    class: FrameClass,
    /// A port's security groups moved the frame's connection already: none after may.
    tracked: bool,
    /// How many of the frame's first bytes were read into its [`Burst::heads`] entry
    /// (meaningful once [`Burst::classified`]).
    head_len: u8,
    /// Where the frame's connection is in the table (an IP frame's, once classified
    /// with a table): made once for its prefetches and every port that judges it.
    site: Site,
}

/// What a dropped frame is recorded with (it is never delivered).
const UNTAGGED: Ingress = Ingress { vlan: 0, tci: None };

/// Scratch space of one burst, sized at start-up.
struct Burst {
    /// One slot per frame of a burst, popped into in place; the burst's frames are the
    /// first `len`.
    slots: Vec<Slot>,
    len: usize,
    segs: Vec<Seg>,
    targets: Vec<PortId>,
    /// The frames' virtio-net headers were read (their source may use offloads): only then
    /// does a frame's `vnet` mean anything.
    offloads: bool,
    /// What the destinations' kinds need to take a burst (lent them per destination).
    scratch: Scratch,
    /// The frames' headers were read for security groups ([`Slot::class`]): done once per
    /// burst, by the first port with a filter that sees it.
    classified: bool,
    /// Each frame's first bytes as security groups judged them (once [`Self::classified`]),
    /// one entry per slot.
    heads: Vec<[u8; JUDGED_LEN]>,
    /// The frames are where their sender put them (not copied into the worker's memory,
    /// see [`bounce_burst`]): once judged, each is delivered with its judged bytes
    /// ([`Self::heads`]) in place of the sender's.
    in_place: bool,
}

impl Burst {
    /// Empties it for the next burst.
    #[inline(always)]
    fn start(&mut self) {
        self.len = 0;
        self.offloads = false;
        self.classified = false;
        self.in_place = true;
        self.segs.clear();
        self.targets.clear();
    }

    fn new(burst: usize) -> Burst {
        let empty = || Slot {
            frame: IngressFrame::default(),
            dest: Dest::Drop,
            ingress: UNTAGGED,
            held: false,
            class: FrameClass::default(),
            tracked: false,
            head_len: 0,
            site: Site::default(),
        };
        Burst {
            slots: std::iter::repeat_with(empty).take(burst).collect(),
            len: 0,
            segs: Vec::with_capacity(burst * MAX_SEGS),
            targets: Vec::with_capacity(256),
            offloads: false,
            scratch: Scratch::new(burst),
            classified: false,
            heads: vec![[0; JUDGED_LEN]; burst],
            in_place: true,
        }
    }
}

/// Everything one worker thread owns.
pub struct Worker {
    index: usize,
    switch: Arc<Switch>,
    wake: Arc<EventFd>,
    topology: Arc<Topology>,
    topology_gen: u64,
    ingress_queues: Vec<(PortId, u16)>,
    ports: Vec<PortCache>,
    fdb_caches: Vec<FdbCache>,
    burst: Burst,
    idle_poll: Duration,
    /// What a sleeping worker waits on: its wake eventfd, and the kick eventfds of its TX
    /// queues as they were when it last went to sleep. Made anew with each topology, so it
    /// never keeps queues that moved to another worker.
    epoll: Epoll,
    /// Where an announcement a frontend asked for is built (see [`Self::announce`]).
    announce_mem: FrameMem,
    /// The worker's own copy of a burst whose frames security groups judge (see
    /// [`bounce_burst`]): room for a burst of the largest frames, mapped when first
    /// touched.
    bounce: FrameMem,
}

/// A new wait set holding only `wake` (a kick's eventfd is added when the worker sleeps).
fn wait_set(wake: &EventFd) -> std::io::Result<Epoll> {
    let epoll = Epoll::new()?;
    epoll.ctl(
        ControlOperation::Add,
        wake.as_raw_fd_i32(),
        EpollEvent::new(EventSet::IN, 0),
    )?;
    Ok(epoll)
}

impl Worker {
    pub(crate) fn new(index: usize, switch: Arc<Switch>) -> std::io::Result<Worker> {
        let wake = switch.workers[index].wake.clone();
        let epoll = wait_set(&wake)?;
        Ok(Worker {
            index,
            wake,
            topology: Arc::new(Topology::default()),
            topology_gen: u64::MAX,
            ingress_queues: Vec::new(),
            ports: Vec::new(),
            fdb_caches: Vec::new(),
            burst: Burst::new(switch.burst),
            idle_poll: switch.idle_poll,
            epoll,
            announce_mem: frame::host_memory(4096)?,
            bounce: frame::host_memory(switch.burst * BOUNCE_STRIDE)?,
            switch,
        })
    }

    /// Runs until the switch stops.
    ///
    /// Cycles are counted per poll of an ingress queue, as `testpmd --record-core-cycles` counts
    /// them per stream: a poll that moved a frame is busy, an empty one idle, and so is
    /// sleeping. One cycle-counter read per poll; the loop's own overhead goes to the poll
    /// after it.
    pub fn run(mut self) {
        let switch = self.switch.clone();
        let stats = &switch.workers[self.index].stats;
        let mut last_work = Instant::now();
        let mut t_prev = cycles();
        while !self.switch.stopping() {
            self.refresh_topology();
            // One clock read per loop serves both the FDB clock and the idle timer.
            let now = Instant::now();
            let now_s = self.switch.secs_at(now);
            let mut moved = 0;
            for i in 0..self.ingress_queues.len() {
                let n = self.poll_ingress(i, now_s);
                let t = cycles();
                let spent = t.wrapping_sub(t_prev);
                t_prev = t;
                if n > 0 {
                    stats.add_busy(spent);
                    // Per queue too, for `vringctl cores`: once per burst.
                    let (src, qp) = self.ingress_queues[i];
                    if let Some(p) = self.topology.port(src) {
                        p.handle
                            .stats()
                            .slot(self.index)
                            .add_busy(usize::from(qp), spent);
                    }
                } else {
                    stats.add_idle(spent);
                }
                moved += n;
            }
            if moved > 0 {
                last_work = now;
            } else if now.duration_since(last_work) >= self.idle_poll {
                self.sleep();
                last_work = Instant::now();
                let t = cycles();
                stats.add_idle(t.wrapping_sub(t_prev));
                t_prev = t;
            } else {
                std::hint::spin_loop();
            }
        }
    }

    fn refresh_topology(&mut self) {
        let g = self.switch.topology_generation();
        if g == self.topology_gen {
            return;
        }
        self.topology_gen = g;
        self.topology = self.switch.topology.load_full();
        self.ingress_queues = self
            .topology
            .ingress_queues_of(self.index, self.switch.workers.len());
        self.ports.clear();
        self.ports
            .resize_with(self.topology.ports.len(), PortCache::default);
        self.fdb_caches.clear();
        self.fdb_caches
            .resize_with(self.topology.bridges.len(), FdbCache::default);
        match wait_set(&self.wake) {
            Ok(epoll) => self.epoll = epoll,
            // The old set still works: a queue that left this worker only wakes it in vain.
            Err(e) => tracing::warn!(error = %e, "worker keeps its old wait set"),
        }
        self.switch.mark_seen(self.index, g);
    }

    /// Sleeps until one of its queues has frames or the topology changes, unless a queue
    /// has work once armed (each kind arms its queues, [`vringswitch_ports::datapath::Ingress::arm_wakeup`],
    /// and says whether frames came meanwhile: that closes the race with a peer that added
    /// some just before).
    ///
    /// A wake-up costs as few system calls as possible, since each is slow on a core that
    /// was just halted: the doorbell is drained before sleeping, not after, and what the
    /// kinds add to the wait set stays there (a VM's kick, edge-triggered, wakes it once
    /// however long nobody consumes it). Adding an fd already there fails with EEXIST; a
    /// closed one leaves by itself.
    ///
    /// A kick that came while the worker polled stays reported until an `epoll_wait`
    /// returns it: with EVENT_IDX a driver kicks for its first frame after every sleep,
    /// polled or not. Those are cleared before the queues are armed (the frames they
    /// announced are taken, or seen by the check after), so they do not end the next sleep
    /// at once.
    fn sleep(&mut self) {
        // Whatever the doorbell announced before this point is seen below: a new topology
        // or a stop by the checks, a new attachment or a kick by arming the queues.
        let _ = self.wake.read();
        if self.switch.topology_generation() != self.topology_gen || self.switch.stopping() {
            return;
        }
        let mut stale = [EpollEvent::default(); 16];
        // Bounded: each round clears a full buffer of kicks, one per queue at most.
        for _ in 0..=self.ingress_queues.len() / stale.len() {
            match self.epoll.wait(0, &mut stale) {
                Ok(n) if n == stale.len() => continue,
                _ => break,
            }
        }
        let waits = WaitSet::new(&self.epoll);
        let mut pending = false;
        for &(port, qp) in &self.ingress_queues {
            if let Some(att) = attachment(&self.topology, &mut self.ports, port) {
                pending |= att.visit(ArmWakeup { qp, waits: &waits });
            }
        }
        if !pending {
            let mut events = [EpollEvent::default(); 4];
            // A timeout bounds the effect of anything missed; nothing should be.
            let _ = self.epoll.wait(1000, &mut events);
            self.switch.workers[self.index].stats.add_wakeup();
        }
        for &(port, qp) in &self.ingress_queues {
            if let Some(att) = attachment(&self.topology, &mut self.ports, port) {
                att.visit(DisarmWakeup { qp });
            }
        }
    }

    /// Moves one burst from ingress queue `i`. Returns the turns it took (frames, and what
    /// the port's kind took and dropped).
    fn poll_ingress(&mut self, i: usize, now_s: u64) -> usize {
        let (src, qp) = self.ingress_queues[i];
        if attachment(&self.topology, &mut self.ports, src).is_none() {
            return 0;
        }
        // Lend the source's attachment out of its cache slot for the burst, so destinations
        // can be looked up meanwhile without cloning an Arc (a refcount shared by every
        // worker) per burst. The source is never a destination of its own frames.
        let Some(att) = self.ports[src as usize].attachment.take() else {
            return 0;
        };
        let topology: &Topology = &self.topology;
        let polled = match topology.port(src) {
            // The port's kind is chosen here, once per burst.
            Some(src_rt) => att.visit(Poll {
                qp,
                burst: FromPort {
                    worker: self.index,
                    switch: &self.switch,
                    topology,
                    ports: &mut self.ports,
                    cache: &mut self.fdb_caches[src_rt.bridge],
                    b: &mut self.burst,
                    bounce: &self.bounce,
                    src,
                    src_rt,
                    now_s,
                },
            }),
            None => Polled::default(),
        };
        self.ports[src as usize].attachment = Some(att);
        if let Some(mac) = polled.announce {
            self.announce(i, mac, now_s);
        }
        polled.taken
    }

    /// Sends the RARP a port asked for (a VM's frontend, with SEND_RARP after a live
    /// migration) from ingress queue `i`, as if the port had sent it: the bridge learns
    /// the MAC at this port, and the frame floods to the other ports and on to the network.
    #[cold]
    #[inline(never)]
    fn announce(&mut self, i: usize, mac: MacAddr, now_s: u64) {
        let (src, qp) = self.ingress_queues[i];
        let topology: &Topology = &self.topology;
        let Some(src_rt) = topology.port(src) else {
            return;
        };
        let mem = &self.announce_mem;
        if !MemView::new(mem).write(0, &rarp_announcement(mac)) {
            return;
        }
        let mut port = OneFrame {
            view: MemView::new(mem),
            len: RARP_LEN as u32,
            taken: false,
        };
        let burst = FromPort {
            worker: self.index,
            switch: &self.switch,
            topology,
            ports: &mut self.ports,
            cache: &mut self.fdb_caches[src_rt.bridge],
            b: &mut self.burst,
            bounce: &self.bounce,
            src,
            src_rt,
            now_s,
        };
        let taking = Taking {
            mem,
            headers: None,
            qp,
        };
        burst.receive_from(&mut port, taking);
        tracing::info!(port = %src_rt.handle.name(), mac = %mac,
            "sent a RARP for a migrated VM's address, as its frontend asked");
    }
}

/// A port's kind polled for one burst.
struct Poll<R> {
    qp: u16,
    burst: R,
}

impl<R: ReceiveBurst> KindVisitor for Poll<R> {
    type Out = Polled;

    #[inline(always)]
    fn visit<K: PortKind>(self, port: &K) -> Polled {
        port.ingress(self.qp, self.burst)
    }
}

/// A port's queue armed before its worker sleeps.
struct ArmWakeup<'a, 'e> {
    qp: u16,
    waits: &'a WaitSet<'e>,
}

impl KindVisitor for ArmWakeup<'_, '_> {
    type Out = bool;

    fn visit<K: PortKind>(self, port: &K) -> bool {
        port.arm_wakeup(self.qp, self.waits)
    }
}

/// A port's queue disarmed after its worker woke.
struct DisarmWakeup {
    qp: u16,
}

impl KindVisitor for DisarmWakeup {
    type Out = ();

    fn visit<K: PortKind>(self, port: &K) {
        port.disarm_wakeup(self.qp)
    }
}

/// One frame the switch built in its own memory, taken as if a port had sent it.
struct OneFrame<'m> {
    view: MemView<'m>,
    len: u32,
    taken: bool,
}

impl<'m> IngressBurst<'m> for OneFrame<'m> {
    fn take(&mut self, frame: &mut IngressFrame, _segs: &mut Vec<Seg>) -> Take {
        if std::mem::replace(&mut self.taken, true) {
            Take::Empty
        } else if frame.fill_from_buffer(&mut self.view, 0, self.len) {
            Take::Frame
        } else {
            Take::Dropped(DropReason::BadDescriptor)
        }
    }
}

/// The engine's side of a burst taken from a port: its frames decided as they are taken
/// (VLAN, port security, learning, the destination), then delivered.
struct FromPort<'w> {
    worker: usize,
    switch: &'w Switch,
    topology: &'w Topology,
    ports: &'w mut [PortCache],
    /// The source's bridge's FDB cache.
    cache: &'w mut FdbCache,
    b: &'w mut Burst,
    /// The worker's copy of a filtered burst ([`bounce_burst`]).
    bounce: &'w FrameMem,
    src: PortId,
    src_rt: &'w PortRt,
    now_s: u64,
}

impl ReceiveBurst for FromPort<'_> {
    fn room(&self) -> usize {
        self.b.slots.len()
    }

    #[inline(always)]
    fn receive_from<'m, I: IngressBurst<'m>>(self, port: &mut I, taking: Taking<'m>) -> usize {
        let FromPort {
            worker,
            switch,
            topology,
            ports,
            cache,
            b,
            bounce,
            src,
            src_rt,
            now_s,
        } = self;
        let counters = src_rt.handle.stats().slot(worker);
        b.start();
        // Headers are read only from a sender that may use offloads: only then do they
        // mean anything.
        let read_vnet = taking.headers.is_some();
        let sent = taking.headers.unwrap_or(OffloadCaps::NONE);
        b.offloads = read_vnet;
        let mut decide = Decision::new(src, src_rt, topology, counters, cache, now_s);
        let mut rx_bytes = 0u64;
        let mut flood = false;
        let mut consumed = 0;
        // One frame per slot at most; what the kind drops takes its turn without a slot,
        // and a TSO frame the switch is to cut one turn per segment: a burst of them is
        // then no more work than a burst of full-size frames. The turns are counted at TSO
        // frames only (a check per frame cost 5 instructions at 64 B), so a burst whose TSO
        // frames come first may take up to twice its turns.
        let mut charged = 0;
        for turn in 0..b.slots.len() {
            // Taken straight into its slot: a frame returned was moved through the stack.
            let Some(f) = b.slots.get_mut(b.len) else {
                break;
            };
            match port.take(&mut f.frame, &mut b.segs) {
                Take::Frame => {}
                Take::Empty => break,
                Take::Broken(reason) => {
                    counters.add_drop(reason, 1);
                    break;
                }
                Take::Dropped(reason) => {
                    consumed += 1;
                    counters.add_drop(reason, 1);
                    continue;
                }
            }
            consumed += 1;
            if read_vnet
                && f.frame.vnet != VnetHeader::default()
                && !accept_offload(taking.mem, &b.segs, &mut f.frame, sent)
            {
                counters.add_drop(DropReason::BadOffload, 1);
                continue;
            }
            rx_bytes += u64::from(f.frame.len);
            b.len += 1;
            // Decided on in place: moving a decided frame cost a store per field of its
            // header copy (callgrind).
            let (ingress, dest) = decide.frame(&f.frame);
            (f.ingress, f.dest) = (ingress, dest);
            match dest {
                Dest::Flood => flood = true,
                // Usually the port of the frame before: checked first.
                Dest::Port(p) if b.targets.last() != Some(&p) && !b.targets.contains(&p) => {
                    b.targets.push(p)
                }
                _ => {}
            }
            if read_vnet && f.frame.vnet.is_gso() {
                charged += cut_charge(topology, ports, &f.frame, dest);
                if turn + 1 + charged >= b.slots.len() {
                    break;
                }
            }
        }
        if consumed == 0 {
            return 0;
        }
        switch.workers[worker].stats.add_burst(consumed);
        counters.add_rx(usize::from(taking.qp), b.len as u64, rx_bytes);
        // The frames are read where the kind took them, which it holds until this returns.
        let from = Source {
            id: src,
            rt: src_rt,
            qp: taking.qp,
            mem: taking.mem,
            now: now_s as u32,
        };
        deliver_burst(worker, topology, ports, &from, b, flood, bounce);
        consumed
    }
}

/// The turns of a burst that TSO frame `frame`, going to `dest`, takes beyond its own: one per
/// further segment if a receiver is to get it cut by the switch (flooded, it is charged as
/// if one were), else none.
#[cold]
#[inline(never)]
fn cut_charge(
    topology: &Topology,
    ports: &mut [PortCache],
    frame: &IngressFrame,
    dest: Dest,
) -> usize {
    let cut = match dest {
        Dest::Drop => false,
        Dest::Flood => true,
        Dest::Port(p) => attachment(topology, ports, p)
            .is_some_and(|a| !a.taken_offloads().contains(frame.vnet.needs())),
    };
    if cut {
        frame.vnet.segments(frame.len) as usize - 1
    } else {
        0
    }
}

/// The port a burst came from.
struct Source<'a> {
    id: PortId,
    rt: &'a PortRt,
    qp: u16,
    /// The memory its frames are in.
    mem: &'a FrameMem,
    /// The switch's clock, in seconds.
    now: u32,
}

/// Delivers the decided frames of burst `b` from `from` to each destination (every other
/// port of the bridge when one frame floods), one destination at a time.
fn deliver_burst(
    worker: usize,
    topology: &Topology,
    ports: &mut [PortCache],
    from: &Source<'_>,
    b: &mut Burst,
    flood: bool,
    bounce: &FrameMem,
) {
    if flood {
        b.targets.clear();
        b.targets.extend(flood_targets(topology, from.id, from.rt));
    }
    // Security groups judge a copy of each frame's headers; the sender could change the
    // frame meanwhile, so the judged bytes are what is delivered (`Burst::heads`, written
    // in place of the sender's during the one copy). A frame the switch may have to finish
    // (a checksum, TSO segments) has its headers read again on the way: a burst holding one
    // is judged and copied from the worker's own copy instead, on bridges with groups only.
    let guarded = from.rt.filter.is_some() || topology.bridges[from.rt.bridge].guarded;
    let mut src_view = if guarded && asks_offloads(b) {
        b.in_place = false;
        bounce_burst(worker, from, bounce, b)
    } else {
        MemView::new(from.mem)
    };
    if let Some(cap) = from.rt.capture.as_deref() {
        capture_from_vm(cap, &mut src_view, &b.slots[..b.len], &b.segs);
    }
    // After the capture: it shows what the port sent, filtered, policed or not.
    if let Some(f) = from.rt.filter.as_deref() {
        filter_from_vm(worker, topology, from, f, &mut src_view, b);
    }
    if let Some(p) = from.rt.police_rx.as_deref() {
        police(p, from.rt.handle.stats().slot(worker), b, |f, allowance| {
            let policed = f.dest != Dest::Drop && !allowance.admit(f.frame.len);
            if policed {
                f.dest = Dest::Drop;
            }
            policed
        });
    }
    if !from.rt.mirror.rx.is_empty() {
        mirror(
            worker,
            topology,
            ports,
            &from.rt.mirror.rx,
            from.qp,
            &mut src_view,
            b,
            |_| true,
        );
    }
    for t in 0..b.targets.len() {
        let dst = b.targets[t];
        deliver_to(
            worker,
            topology,
            ports,
            dst,
            from.qp,
            from.now,
            &mut src_view,
            b,
        );
    }
}

/// Sends the frames of `b` that `wanted` picks to each mirror output of `outputs` too, as
/// they were sent or delivered, tagged with their VLAN (untagged in VLAN 0): the output's
/// policy is made so ([`PortMirrors::output`]).
///
/// [`PortMirrors::output`]: crate::topology::PortMirrors::output
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn mirror(
    worker: usize,
    topology: &Topology,
    ports: &mut [PortCache],
    outputs: &[PortId],
    qp_hint: u16,
    src: &mut MemView<'_>,
    b: &mut Burst,
    wanted: impl Fn(&Slot) -> bool + Copy,
) {
    for &out in outputs {
        let Some(out_rt) = topology.port(out) else {
            continue;
        };
        deliver_wanted(
            (worker, out, out_rt, qp_hint),
            topology,
            ports,
            src,
            b,
            wanted,
        );
    }
}

/// What one burst's frames are decided with: the source port, its bridge and the bridge's
/// FDB cache.
struct Decision<'a> {
    src: PortId,
    src_rt: &'a PortRt,
    bridge: &'a BridgeRt,
    topology: &'a Topology,
    counters: &'a PortCounters,
    cache: &'a mut FdbCache,
    /// Whether `cache` was synced with the FDB in this burst (before its first frame).
    synced: bool,
    now_s: u64,
    /// The decision of the previous frame that reached learning: (source key, destination
    /// key, destination). Reusing it within the burst changes nothing: the FDB cache it came
    /// from is synced once per burst, and the checks before learning (source address, port
    /// security, VLAN) still run for every frame.
    last: Option<(u64, u64, Dest)>,
}

impl<'a> Decision<'a> {
    /// The decision of a burst from port `src`, whose bridge's FDB cache is `cache`.
    #[inline(always)]
    fn new(
        src: PortId,
        src_rt: &'a PortRt,
        topology: &'a Topology,
        counters: &'a PortCounters,
        cache: &'a mut FdbCache,
        now_s: u64,
    ) -> Decision<'a> {
        Decision {
            src,
            src_rt,
            bridge: &topology.bridges[src_rt.bridge],
            topology,
            counters,
            cache,
            synced: false,
            now_s,
            last: None,
        }
    }
}

impl Decision<'_> {
    /// The VLAN `frame` belongs to and where it goes; drops are counted here.
    #[inline(always)]
    fn frame(&mut self, frame: &IngressFrame) -> (Ingress, Dest) {
        let (vlan, smac, dmac) = match admit(self.src_rt, &frame.peek, frame.len) {
            Ok(admitted) => admitted,
            Err(reason) => {
                self.counters.add_drop(reason, 1);
                return (UNTAGGED, Dest::Drop);
            }
        };
        let counters = self.counters;
        let (skey, dkey) = (fdb_key(smac, vlan.vlan), fdb_key(dmac, vlan.vlan));
        let dest = match self.last {
            // A run of frames of one flow: learned and looked up once.
            Some((s, d, dest)) if s == skey && d == dkey => dest,
            _ => {
                let dest = self.learn_and_look_up(skey, dkey, dmac.is_multicast());
                self.last = Some((skey, dkey, dest));
                dest
            }
        };
        if dest == Dest::Drop {
            // The destination was learned on the source port.
            counters.add_drop(DropReason::Hairpin, 1);
        }
        (vlan, dest)
    }

    fn learn_and_look_up(&mut self, skey: u64, dkey: u64, multicast: bool) -> Dest {
        let fdb = &self.bridge.fdb;
        if !self.synced {
            self.cache.sync(fdb);
            self.synced = true;
        }
        self.cache.learn(
            fdb,
            skey,
            self.src,
            self.now_s,
            self.src_rt.fdb_max_learned,
            self.src_rt.remote,
        );
        if multicast {
            return Dest::Flood;
        }
        destination(
            self.cache.lookup(fdb, dkey),
            self.src,
            self.src_rt,
            self.topology,
        )
    }
}

/// The checks on a frame's way in, before learning: a source address that can send, one
/// port security allows, a VLAN the port carries. The frame's VLAN and addresses, or why
/// it is dropped. Shared by the data path and [`crate::trace`].
#[inline(always)]
pub(crate) fn admit(
    src_rt: &PortRt,
    peek: &[u8; PEEK_LEN],
    len: u32,
) -> Result<(Ingress, MacAddr, MacAddr), DropReason> {
    let eth = EthernetFrame::new_unchecked(&peek[..]);
    let (smac, dmac) = (eth.src(), eth.dst());
    let ingress = src_rt.vlan.ingress(peek, len);
    match ingress {
        _ if smac.is_multicast() || smac.is_zero() => Err(DropReason::InvalidSrcMac),
        // Before learning: a spoofed source must not move anyone's FDB entry. A mirror's
        // output permits no source at all: what it sends is dropped as such.
        _ if !src_rt.security.permits(smac) => Err(if src_rt.mirror.output {
            DropReason::MirrorOutput
        } else {
            DropReason::MacSpoofed
        }),
        Err(_) => Err(DropReason::VlanFiltered),
        Ok(i) => Ok((i, smac, dmac)),
    }
}

/// Where a unicast frame from `src` goes, given the port its destination was found on:
/// that port if it is on the source's bridge, nowhere if it is the source itself (a
/// hairpin), else every port (flooded). Shared by the data path and [`crate::trace`].
#[inline(always)]
pub(crate) fn destination(
    found: Option<PortId>,
    src: PortId,
    src_rt: &PortRt,
    topology: &Topology,
) -> Dest {
    match found {
        Some(p) if p == src => Dest::Drop,
        Some(p) if topology.port(p).is_some_and(|d| d.bridge == src_rt.bridge) => Dest::Port(p),
        _ => Dest::Flood,
    }
}

/// The ports a burst from `src` is offered to when one of its frames floods: every other
/// port of its bridge (each then takes the frames of its VLANs). Shared by the data path
/// and [`crate::trace`].
#[inline]
pub(crate) fn flood_targets<'t>(
    topology: &'t Topology,
    src: PortId,
    src_rt: &PortRt,
) -> impl Iterator<Item = PortId> + 't {
    topology.bridges[src_rt.bridge]
        .ports
        .iter()
        .copied()
        .filter(move |&p| p != src)
}

/// Whether a frame decided as `dest`, in VLAN `vlan`, is for port `dst` with VLAN policy
/// `policy`: flooded frames go to the ports of their VLAN only. Shared by the data path
/// and [`crate::trace`].
#[inline(always)]
pub(crate) fn is_for(dest: Dest, vlan: u16, dst: PortId, policy: &VlanPolicy) -> bool {
    match dest {
        Dest::Port(p) => p == dst,
        Dest::Flood => policy.is_member(vlan),
        Dest::Drop => false,
    }
}

/// Sends every frame of the burst meant for `dst` to it (`now`: the switch's clock, in
/// seconds).
#[allow(clippy::too_many_arguments)]
fn deliver_to(
    worker: usize,
    topology: &Topology,
    ports: &mut [PortCache],
    dst: PortId,
    qp_hint: u16,
    now: u32,
    src: &mut MemView<'_>,
    b: &mut Burst,
) {
    let Some(dst_rt) = topology.port(dst) else {
        return;
    };
    let policy = &dst_rt.vlan;
    // Flooded frames go to the ports of their VLAN only; a frame sent to one port outside
    // its VLAN (a static entry, a policy changed meanwhile) is counted as filtered below.
    let wanted = |f: &Slot| is_for(f.dest, f.ingress.vlan, dst, policy);
    // Usually the first frame is wanted: a scan, not a count, on the common path.
    if !b.slots[..b.len].iter().any(wanted) {
        return;
    }
    let to = (worker, dst, dst_rt, qp_hint);
    let policy = dst_rt.filter.as_deref().and_then(|f| f.policy.as_ref());
    if policy.is_none() && dst_rt.police_tx.is_none() {
        return deliver_and_mirror(to, topology, ports, src, b, wanted);
    }
    // Held back for this destination: `held` is meaningful until the next one.
    hold_back(worker, topology, dst_rt, policy, now, src, b, wanted);
    deliver_and_mirror(to, topology, ports, src, b, |f| wanted(f) && !f.held);
}

/// Marks `held` the frames of `b` that `wanted` picks for destination `dst_rt` and that
/// its security groups (`policy`) refuse or its policer has no room for, counting them
/// on it; the others are not held.
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn hold_back(
    worker: usize,
    topology: &Topology,
    dst_rt: &PortRt,
    policy: Option<&Policy>,
    now: u32,
    src: &mut MemView<'_>,
    b: &mut Burst,
    wanted: impl Fn(&Slot) -> bool + Copy,
) {
    let counters = dst_rt.handle.stats().slot(worker);
    match policy {
        None => b.slots[..b.len].iter_mut().for_each(|f| f.held = false),
        Some(policy) => {
            let table = topology.conntrack.as_deref();
            classify_burst(src, b, table, dst_rt.bridge);
            for f in &mut b.slots[..b.len] {
                f.held = false;
                if !wanted(f) {
                    continue;
                }
                let site = &mut f.site;
                match security_groups::to_vm(policy, table, &f.class, site, now, !f.tracked) {
                    Ok(tracked) => f.tracked |= tracked,
                    Err(reason) => {
                        f.held = true;
                        counters.add_drop(reason, 1);
                    }
                }
            }
        }
    }
    if let Some(p) = dst_rt.police_tx.as_deref() {
        police(p, counters, b, |f, allowance| {
            if !wanted(f) || f.held {
                return false;
            }
            f.held = !allowance.admit(f.frame.len);
            f.held
        });
    }
}

/// Whether a frame of `b` asks its receivers for an offload the switch may have to do for
/// them (see `send_offloaded`).
#[inline]
fn asks_offloads(b: &Burst) -> bool {
    b.offloads && b.slots[..b.len].iter().any(|f| f.frame.vnet.flags != 0)
}

/// Room for one frame in the bounce memory: the largest frame, rounded to a cache line.
const BOUNCE_STRIDE: usize = (frame::MAX_FRAME_LEN + 63) & !63;

/// Copies the burst's frames from the sender's memory into the worker's own (`bounce`),
/// each starting with the bytes the forwarding decision read, and makes the slots name
/// the copies: what security groups judge is then what is delivered, whatever the sender
/// writes into its buffers meanwhile (a double fetch). The sender's kind still gives its
/// buffers back by their heads. A frame that cannot be copied (its buffers are not the
/// sender's memory any more) is dropped. Returns the view the burst is read through.
#[cold]
#[inline(never)]
fn bounce_burst<'m>(
    worker: usize,
    from: &Source<'_>,
    bounce: &'m FrameMem,
    b: &mut Burst,
) -> MemView<'m> {
    let mut src = MemView::new(from.mem);
    let mut out = MemView::new(bounce);
    let Burst { slots, segs, .. } = b;
    let mut at = 0u64;
    for f in &mut slots[..b.len] {
        let len = f.frame.len;
        let n = (len as usize).min(PEEK_LEN);
        // Room for every frame of a burst (`BOUNCE_STRIDE` each); `gather_from` checks the
        // range in the bounce memory all the same.
        let copied = out.gather_from(
            at,
            &mut src,
            &f.frame.peek[..n],
            f.frame.segs_in(segs),
            n,
            len as usize - n,
        );
        if !copied {
            if f.dest != Dest::Drop {
                f.dest = Dest::Drop;
                from.rt
                    .handle
                    .stats()
                    .slot(worker)
                    .add_drop(DropReason::BadDescriptor, 1);
            }
            continue;
        }
        let (head, peek) = (f.frame.head, f.frame.peek);
        f.frame.fill_one_buffer(head, at, len, peek);
        at = (at + u64::from(len) + 63) & !63;
    }
    out
}

/// Reads the headers of the burst's frames for security groups, once per burst, and
/// starts loading their connections' index buckets, then entries, into the cache (bridge
/// `bridge`'s zones, `table`): a burst's misses overlap, where one lookup after another
/// would wait for each in turn.
fn classify_burst(
    src: &mut MemView<'_>,
    b: &mut Burst,
    table: Option<&conntrack::Table>,
    bridge: usize,
) {
    if b.classified {
        return;
    }
    b.classified = true;
    let segs = &b.segs;
    for (f, bytes) in b.slots[..b.len].iter_mut().zip(b.heads.iter_mut()) {
        let n = match f.frame.segs_in(segs) {
            // The usual frame, and every bounced one: in one buffer.
            [one] => {
                let n = (one.len as usize).min(bytes.len());
                if src.read(one.addr, &mut bytes[..n]) {
                    n
                } else {
                    0
                }
            }
            more => copy_for_capture(src, more, &FrameEdit::NONE, bytes),
        };
        f.head_len = n as u8;
    }
    // Read back once every frame's copy is made: a header read right after its copy
    // waited for the copy's stores whenever a field straddled two of them (perf: the
    // IPv4 destination address, bytes 30 to 33, across the copy's 16-byte moves).
    for (f, bytes) in b.slots[..b.len].iter_mut().zip(b.heads.iter()) {
        let zone = conntrack::zone(bridge, f.ingress.vlan);
        let tagged = f.ingress.tci.is_some();
        let n = usize::from(f.head_len);
        security_groups::classify(tagged, &bytes[..n], table, zone, &mut f.class, &mut f.site);
        f.tracked = false;
        if let Some(table) = table {
            if f.site.keyed() {
                table.prefetch(f.site.hash());
            }
        }
    }
    let Some(table) = table else {
        return;
    };
    for f in &b.slots[..b.len] {
        if f.site.keyed() {
            table.prefetch_entries(f.site.hash());
        }
    }
}

/// Judges the frames of `b` that port `from` (with filter `filter`) sent: what its
/// `allowed_ips` and egress rules refuse is dropped, counted on it.
#[cold]
#[inline(never)]
fn filter_from_vm(
    worker: usize,
    topology: &Topology,
    from: &Source<'_>,
    filter: &PortFilter,
    src: &mut MemView<'_>,
    b: &mut Burst,
) {
    let table = topology.conntrack.as_deref();
    classify_burst(src, b, table, from.rt.bridge);
    let counters = from.rt.handle.stats().slot(worker);
    for f in &mut b.slots[..b.len] {
        if f.dest == Dest::Drop {
            continue;
        }
        match security_groups::from_vm(filter, table, &f.class, &mut f.site, from.now) {
            Ok(tracked) => f.tracked = tracked,
            Err(reason) => {
                f.dest = Dest::Drop;
                counters.add_drop(reason, 1);
            }
        }
    }
}

/// Sends the frames `wanted` picks to one port, and copies them to the outputs of the
/// mirrors of what that port is sent, if any.
#[inline(always)]
fn deliver_and_mirror(
    to: (usize, PortId, &PortRt, u16),
    topology: &Topology,
    ports: &mut [PortCache],
    src: &mut MemView<'_>,
    b: &mut Burst,
    wanted: impl Fn(&Slot) -> bool + Copy,
) {
    deliver_wanted(to, topology, ports, src, b, wanted);
    let (worker, _, dst_rt, qp_hint) = to;
    if !dst_rt.mirror.tx.is_empty() {
        mirror(
            worker,
            topology,
            ports,
            &dst_rt.mirror.tx,
            qp_hint,
            src,
            b,
            wanted,
        );
    }
}

/// Runs the frames of `b` past policer `p`: `each` gets every frame and the burst's
/// allowance (to admit the frames it polices) and says whether the frame was policed.
/// Policed frames are counted on `counters`, the policed port's.
#[cold]
#[inline(never)]
fn police(
    p: &Policer,
    counters: &PortCounters,
    b: &mut Burst,
    mut each: impl FnMut(&mut Slot, &mut Allowance) -> bool,
) {
    let mut allowance = p.allowance(cycles());
    let mut policed = 0;
    for f in &mut b.slots[..b.len] {
        policed += u64::from(each(f, &mut allowance));
    }
    p.settle(&allowance);
    if policed > 0 {
        counters.add_drop(DropReason::Policed, policed);
    }
}

/// [`deliver_to`] once the frames are known to be wanted by `to`: (worker, destination,
/// its topology entry, the source's queue pair).
#[inline(always)]
fn deliver_wanted(
    (worker, dst, dst_rt, qp_hint): (usize, PortId, &PortRt, u16),
    topology: &Topology,
    ports: &mut [PortCache],
    src: &mut MemView<'_>,
    b: &mut Burst,
    wanted: impl Fn(&Slot) -> bool + Copy,
) {
    let counters = dst_rt.handle.stats().slot(worker);
    let frames = &b.slots[..b.len];
    let count = || frames.iter().filter(|f| wanted(f)).count() as u64;
    let Some(att) = attachment(topology, ports, dst) else {
        counters.add_drop(DropReason::PortDown, count());
        return;
    };
    let burst = ToPort {
        src,
        frames,
        heads: (b.classified && b.in_place).then_some(&b.heads[..b.len]),
        segs: &b.segs,
        offloads: b.offloads,
        policy: &dst_rt.vlan,
        capture: dst_rt.capture.as_deref(),
        counters,
        wanted,
    };
    // The destination's kind is chosen here, once per burst and destination.
    let opened = att.visit(Send {
        qp_hint,
        counters,
        scratch: &mut b.scratch,
        burst,
    });
    if let Err(reason) = opened {
        counters.add_drop(reason, count());
    }
}

/// A port's kind sent one burst.
struct Send<'a, S> {
    qp_hint: u16,
    counters: &'a PortCounters,
    scratch: &'a mut Scratch,
    burst: S,
}

impl<'m, S: SendBurst<'m>> KindVisitor for Send<'_, S> {
    type Out = Result<(), DropReason>;

    #[inline(always)]
    fn visit<K: PortKind>(self, port: &K) -> Result<(), DropReason> {
        port.egress(self.qp_hint, self.counters, self.scratch, self.burst)
    }
}

/// The frames of a burst that `wanted` picks, as the engine sends them to one port: each
/// changed as the port's VLAN policy says, finished by the offloads where the port cannot
/// take what the frame asks, captured first if the port is.
struct ToPort<'b, 'v, 'm, W> {
    src: &'v mut MemView<'m>,
    frames: &'b [Slot],
    /// The frames' judged first bytes, to deliver in place of the sender's (see
    /// [`Burst::in_place`]).
    heads: Option<&'b [[u8; JUDGED_LEN]]>,
    segs: &'b [Seg],
    /// The frames' virtio-net headers were read (see [`Burst::offloads`]).
    offloads: bool,
    policy: &'b VlanPolicy,
    capture: Option<&'b PortCapture>,
    counters: &'b PortCounters,
    wanted: W,
}

impl<'m, W: Fn(&Slot) -> bool> SendBurst<'m> for ToPort<'_, '_, 'm, W> {
    #[inline(always)]
    fn send_to<E: EgressBurst<'m>>(self, port: &mut E) -> Sent {
        let ToPort {
            src,
            frames,
            heads,
            segs,
            offloads,
            policy,
            capture,
            counters,
            wanted,
        } = self;
        if let Some(cap) = capture {
            capture_to_vm(cap, policy, src, frames, heads, segs, &wanted);
        }
        // The loop twice, with and without judged heads to carry: the plain path pays no
        // branch and no index for them.
        let to = (src, segs, offloads, policy, counters);
        match heads {
            None => send_frames(port, to, frames, &wanted, |_, _, _| {}),
            Some(heads) => send_frames(port, to, frames, &wanted, |i, f: &Slot, edit| {
                // A frame too short for its edit was judged malformed (only a port
                // without groups gets it): sent as it is.
                edit.carry_head(&heads[i][..usize::from(f.head_len)]);
            }),
        }
    }
}

/// [`ToPort::send_to`]'s loop over the frames `wanted` picks, `carry` changing each edit
/// once it is made (the judged heads, see [`Burst::in_place`]).
#[inline(always)]
fn send_frames<'m, E: EgressBurst<'m>>(
    port: &mut E,
    (src, segs, offloads, policy, counters): (
        &mut MemView<'m>,
        &[Seg],
        bool,
        &VlanPolicy,
        &PortCounters,
    ),
    frames: &[Slot],
    wanted: &impl Fn(&Slot) -> bool,
    carry: impl Fn(usize, &Slot, &mut FrameEdit),
) -> Sent {
    let mut sent = Sent::default();
    let mut edit = FrameEdit::NONE;
    for (i, f) in frames.iter().enumerate() {
        if !wanted(f) {
            continue;
        }
        let frame = &f.frame;
        if !policy.egress_into(f.ingress, &frame.peek, &mut edit) {
            counters.add_drop(DropReason::VlanFiltered, 1);
            continue;
        }
        carry(i, f, &mut edit);
        if offloads && frame.vnet.flags != 0 {
            // Only a frame whose source asked for an offload (see `accept_offload`).
            let rx = port.offloads();
            let frame_segs = frame.segs_in(segs);
            let mut built = port.built();
            let (p, n) = send_offloaded(src, frame, frame_segs, &edit, rx, counters, |v, out| {
                built.send_built(v, frame_segs, out)
            });
            (sent.packets, sent.bytes) = (sent.packets + p, sent.bytes + n);
            continue;
        }
        match port.send(src, frame.segs_in(segs), frame.len, &edit) {
            Ok(n) => {
                sent.packets += 1;
                sent.bytes += u64::from(n);
            }
            Err(reason) => counters.add_drop(reason, 1),
        }
    }
    sent
}

/// Sends the frame `frame` (in `segs` of the source seen by `src`, changed by `edit`), whose
/// source asked for offloads, to a receiver that takes `rx`, writing each frame that leaves
/// with `write` (which returns its length). Counts what was done, or the drop, on the
/// receiver's `counters`; returns the frames and bytes delivered.
#[cold]
#[inline(never)]
fn send_offloaded<'m>(
    src: &mut MemView<'m>,
    frame: &IngressFrame,
    segs: &[Seg],
    edit: &FrameEdit,
    rx: OffloadCaps,
    counters: &PortCounters,
    mut write: impl FnMut(&mut MemView<'m>, &Outgoing<'_>) -> Result<u32, DropReason>,
) -> (u64, u64) {
    let (mut packets, mut bytes) = (0u64, 0u64);
    let frame = software::Source {
        view: src,
        segs,
        len: frame.len,
        vnet: frame.vnet,
    };
    let sent = software::send(frame, edit, rx, |view, out| {
        let n = write(view, out)?;
        packets += 1;
        bytes += u64::from(n);
        Ok(())
    });
    match sent {
        Ok(OffloadSent::Passed) => counters.add_offload(OffloadAction::Passed),
        Ok(OffloadSent::Checksummed) => counters.add_offload(OffloadAction::Checksummed),
        Ok(OffloadSent::Segmented(_)) => counters.add_offload(OffloadAction::Segmented),
        Err(reason) => counters.add_drop(reason, 1),
    }
    (packets, bytes)
}

/// Checks the virtio-net header of `frame`, a frame from a VM that may send the offloads
/// `sent`, and leaves in it what its receivers are to see ([`vringswitch_ports::offload::accept`]).
/// False if the header is refused.
#[cold]
#[inline(never)]
fn accept_offload(
    mem: &FrameMem,
    segs: &[Seg],
    frame: &mut IngressFrame,
    sent: OffloadCaps,
) -> bool {
    let mut view = MemView::new(mem);
    let mut vnet = frame.vnet;
    let ok = vringswitch_ports::offload::accept(
        &mut view,
        frame.segs_in(segs),
        frame.len,
        &mut vnet,
        sent,
    )
    .is_ok();
    frame.vnet = vnet;
    ok
}

/// Records the frames of a burst from a captured port's VM.
#[cold]
fn capture_from_vm(cap: &PortCapture, src: &mut MemView<'_>, frames: &[Slot], segs: &[Seg]) {
    if !cap.settings().from_vm {
        return;
    }
    let mut burst = cap.burst(wall_clock_ns());
    for f in frames {
        let frame_segs = f.frame.segs_in(segs);
        burst.record(false, f.frame.len, |buf| {
            copy_for_capture(src, frame_segs, &FrameEdit::NONE, buf)
        });
    }
}

/// Records the frames of a burst the switch sends to a captured port's VM, as the VM gets
/// them (VLAN tag pushed or popped), before they are delivered: as tcpdump on an interface
/// sees what is sent to it, also a frame its ring then has no room for. Kept out of the
/// delivery loop, which has nothing of the capture.
#[cold]
fn capture_to_vm(
    cap: &PortCapture,
    policy: &VlanPolicy,
    src: &mut MemView<'_>,
    frames: &[Slot],
    heads: Option<&[[u8; JUDGED_LEN]]>,
    segs: &[Seg],
    wanted: impl Fn(&Slot) -> bool,
) {
    if !cap.settings().to_vm {
        return;
    }
    let mut burst = cap.burst(wall_clock_ns());
    let mut edit = FrameEdit::NONE;
    for (i, f) in frames.iter().enumerate().filter(|(_, f)| wanted(f)) {
        let frame = &f.frame;
        if !policy.egress_into(f.ingress, &frame.peek, &mut edit) {
            continue;
        }
        if let Some(heads) = heads {
            // What is delivered (see `ToPort::send_to`).
            edit.carry_head(&heads[i][..usize::from(f.head_len)]);
        }
        let Some(len) = edit.out_len(frame.len) else {
            continue;
        };
        let frame_segs = frame.segs_in(segs);
        burst.record(true, len, |buf| {
            copy_for_capture(src, frame_segs, &edit, buf)
        });
    }
}

/// Copies the first bytes of a frame, as `edit` changes it, into `buf`; returns how many.
/// The frame is in `segs` of the source VM's memory (checked there again: a segment that is
/// not ends the copy).
fn copy_for_capture(
    src: &mut MemView<'_>,
    segs: &[Seg],
    edit: &FrameEdit,
    buf: &mut [u8],
) -> usize {
    let prefix = edit.prefix();
    let mut n = prefix.len().min(buf.len());
    buf[..n].copy_from_slice(&prefix[..n]);
    let mut skip = u64::from(edit.skip);
    for s in segs {
        if n == buf.len() {
            break;
        }
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let take = ((len - skip) as usize).min(buf.len() - n);
        if !src.read(s.addr + skip, &mut buf[n..n + take]) {
            break;
        }
        n += take;
        skip = 0;
    }
    n
}

/// The current attachment of `port`, refreshed if it changed since last looked at.
#[inline]
fn attachment<'a>(
    topology: &Topology,
    ports: &'a mut [PortCache],
    port: PortId,
) -> Option<&'a Arc<Attachment>> {
    let rt = topology.port(port).filter(|rt| rt.admin_up)?;
    let cache = ports.get_mut(port as usize)?;
    let g = rt.handle.generation();
    if g != cache.generation {
        cache.generation = g;
        cache.attachment = rt.handle.attachment();
    }
    cache.attachment.as_ref()
}

trait AsRawFdI32 {
    fn as_raw_fd_i32(&self) -> i32;
}

impl AsRawFdI32 for EventFd {
    fn as_raw_fd_i32(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vringswitch_ports::PortHandle;

    use super::*;
    use crate::fdb::Fdb;
    use crate::port_security::PortSecurity;
    use crate::vlan::VlanPolicy;
    use vringswitch_ports::frame::PEEK_LEN;
    use vringswitch_wire::ethernet::MacAddr;

    /// One bridge of four ports: 0 transparent, 1 access VLAN 10, 2 trunk of 10 and 20,
    /// 3 locked to MAC 02::03.
    fn topology() -> Topology {
        let port = |id: PortId, vlan: VlanPolicy, security: PortSecurity| {
            Some(PortRt {
                handle: Arc::new(PortHandle::new(id, "p", 1)),
                bridge: 0,
                queue_pairs: 1,
                vlan,
                security,
                fdb_max_learned: usize::MAX,
                police_rx: None,
                police_tx: None,
                admin_up: true,
                capture: None,
                mirror: Default::default(),
                filter: None,
                remote: false,
            })
        };
        Topology {
            bridges: vec![BridgeRt {
                name: "br0".into(),
                fdb: Arc::new(Fdb::new(300)),
                ports: vec![0, 1, 2, 3],
                guarded: false,
            }],
            ports: vec![
                port(0, VlanPolicy::transparent(), PortSecurity::open()),
                port(1, VlanPolicy::access(10), PortSecurity::open()),
                port(2, VlanPolicy::trunk(&[10, 20]), PortSecurity::open()),
                port(
                    3,
                    VlanPolicy::transparent(),
                    PortSecurity::locked(&[MacAddr(mac(3))]).unwrap(),
                ),
            ],
            conntrack: None,
        }
    }

    fn mac(n: u8) -> [u8; 6] {
        [2, 0, 0, 0, 0, n]
    }

    /// A frame dst <- src, with an 802.1Q tag of `vid` if given, as a IngressFrame's peek.
    fn frame(dst: [u8; 6], src: [u8; 6], vid: Option<u16>) -> IngressFrame {
        let mut peek = [0u8; PEEK_LEN];
        peek[..6].copy_from_slice(&dst);
        peek[6..12].copy_from_slice(&src);
        match vid {
            Some(v) => {
                peek[12..14].copy_from_slice(&[0x81, 0x00]);
                peek[14..16].copy_from_slice(&v.to_be_bytes());
                peek[16..18].copy_from_slice(&[0x88, 0xb5]);
            }
            None => peek[12..14].copy_from_slice(&[0x88, 0xb5]),
        }
        IngressFrame::in_one_buffer(0, 0x1000, 64, peek)
    }

    /// Decides `frame` as sent on port `src`, with `cache` as the bridge's cache.
    fn decide(
        t: &Topology,
        cache: &mut FdbCache,
        src: PortId,
        frame: &IngressFrame,
    ) -> (Ingress, Dest) {
        let src_rt = t.port(src).unwrap();
        let counters = src_rt.handle.stats().slot(0);
        Decision::new(src, src_rt, t, counters, cache, 1).frame(frame)
    }

    fn drops(t: &Topology, port: PortId, reason: DropReason) -> u64 {
        t.port(port).unwrap().handle.stats().snapshot().drops[reason as usize]
    }

    #[test]
    fn unknown_and_group_destinations_flood_and_learnt_ones_go_to_their_port() {
        let t = topology();
        let mut cache = FdbCache::default();
        // Unknown unicast floods; the source is learnt on its port and VLAN 0.
        let (ingress, dest) = decide(&t, &mut cache, 0, &frame(mac(9), mac(1), None));
        assert_eq!((ingress.vlan, dest), (0, Dest::Flood));
        // Back to the learnt source: to its port only.
        let (_, dest) = decide(&t, &mut cache, 3, &frame(mac(1), mac(3), None));
        assert_eq!(dest, Dest::Port(0));
        // Broadcast always floods.
        let (_, dest) = decide(&t, &mut cache, 3, &frame([0xff; 6], mac(3), None));
        assert_eq!(dest, Dest::Flood);
        // To an address learnt on the ingress port itself: dropped, counted as hairpin.
        let (_, dest) = decide(&t, &mut cache, 0, &frame(mac(1), mac(1), None));
        assert_eq!(dest, Dest::Drop);
        assert_eq!(drops(&t, 0, DropReason::Hairpin), 1);
    }

    #[test]
    fn vlans_key_learning_and_refuse_what_a_port_does_not_carry() {
        let t = topology();
        let mut cache = FdbCache::default();
        // Untagged on the access port: VLAN 10, learnt there.
        let (ingress, _) = decide(&t, &mut cache, 1, &frame(mac(9), mac(1), None));
        assert_eq!(ingress.vlan, 10);
        // The same MAC is unknown in VLAN 20: a frame to it from the trunk floods.
        let (ingress, dest) = decide(&t, &mut cache, 2, &frame(mac(1), mac(2), Some(20)));
        assert_eq!((ingress.vlan, dest), (20, Dest::Flood));
        // In VLAN 10 it is known on the access port.
        let (_, dest) = decide(&t, &mut cache, 2, &frame(mac(1), mac(2), Some(10)));
        assert_eq!(dest, Dest::Port(1));
        // A tag the trunk does not carry is refused, and nothing is learnt from it.
        let (_, dest) = decide(&t, &mut cache, 2, &frame(mac(9), mac(7), Some(30)));
        assert_eq!(dest, Dest::Drop);
        assert_eq!(drops(&t, 2, DropReason::VlanFiltered), 1);
        let (_, dest) = decide(&t, &mut cache, 0, &frame(mac(7), mac(1), Some(30)));
        assert_eq!(
            dest,
            Dest::Flood,
            "02::07 was not learnt from the refused frame"
        );
    }

    #[test]
    fn bad_and_spoofed_sources_are_dropped_before_learning() {
        let t = topology();
        let mut cache = FdbCache::default();
        for src in [[0u8; 6], [0x01, 0, 0x5e, 0, 0, 1]] {
            let (_, dest) = decide(&t, &mut cache, 0, &frame(mac(9), src, None));
            assert_eq!(dest, Dest::Drop);
        }
        assert_eq!(drops(&t, 0, DropReason::InvalidSrcMac), 2);
        // Port 3 may only send from 02::03: a spoofed 02::01 moves nobody's entry.
        decide(&t, &mut cache, 0, &frame(mac(9), mac(1), None));
        let (_, dest) = decide(&t, &mut cache, 3, &frame(mac(9), mac(1), None));
        assert_eq!(dest, Dest::Drop);
        assert_eq!(drops(&t, 3, DropReason::MacSpoofed), 1);
        let (_, dest) = decide(&t, &mut cache, 3, &frame(mac(1), mac(3), None));
        assert_eq!(dest, Dest::Port(0), "02::01 is still on port 0");
    }

    /// 64 KiB of guest memory at 0, bytes 0, 1, 2... from 0x1000.
    fn mem() -> FrameMem {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let pattern: Vec<u8> = (0..=255).collect();
        mem.write_slice(&pattern, GuestAddress(0x1000)).unwrap();
        mem
    }

    fn seg(addr: u64, len: u32) -> Seg {
        Seg { addr, len }
    }

    #[test]
    fn a_capture_copy_follows_segments_and_edits_and_stops_at_the_buffer() {
        let mem = mem();
        let mut view = MemView::new(&mem);
        // Two segments: 0..10 then 100..110 of the pattern.
        let segs = [seg(0x1000, 10), seg(0x1000 + 100, 10)];
        let mut buf = [0u8; 64];
        let n = copy_for_capture(&mut view, &segs, &FrameEdit::NONE, &mut buf);
        let want: Vec<u8> = (0..10).chain(100..110).collect();
        assert_eq!(&buf[..n], &want[..]);

        // An edit replacing the first 12 bytes (crossing into the second segment) by 4.
        let mut edit = FrameEdit::NONE;
        edit.prefix[..4].copy_from_slice(&[0xAA; 4]);
        edit.prefix_len = 4;
        edit.skip = 12;
        let n = copy_for_capture(&mut view, &segs, &edit, &mut buf);
        let want: Vec<u8> = [0xAA; 4].into_iter().chain(102..110).collect();
        assert_eq!(&buf[..n], &want[..]);

        // A short buffer (the snaplen) is filled and no more.
        let mut small = [0u8; 6];
        assert_eq!(copy_for_capture(&mut view, &segs, &edit, &mut small), 6);
        assert_eq!(small, [0xAA, 0xAA, 0xAA, 0xAA, 102, 103]);
    }

    #[test]
    fn a_capture_copy_ends_at_a_segment_outside_guest_memory() {
        let mem = mem();
        let mut view = MemView::new(&mem);
        let segs = [seg(0x1000, 4), seg(0xFFF0, 0x20), seg(0x1000, 4)];
        let mut buf = [0u8; 64];
        let n = copy_for_capture(&mut view, &segs, &FrameEdit::NONE, &mut buf);
        assert_eq!(&buf[..n], &[0, 1, 2, 3]);
    }

    #[test]
    fn a_bounced_burst_is_what_the_decision_read_whatever_the_sender_writes_after() {
        let guest = frame::host_memory(1 << 16).unwrap();
        let bounce = frame::host_memory(2 * BOUNCE_STRIDE).unwrap();
        let t = topology();
        let rt = t.port(0).unwrap();
        // Two frames: one in one buffer, one in two segments.
        let one: Vec<u8> = (0..100u8).collect();
        let two: Vec<u8> = (100..=255u8).collect();
        guest.write_slice(&one, GuestAddress(0x100)).unwrap();
        guest.write_slice(&two[..50], GuestAddress(0x1000)).unwrap();
        guest.write_slice(&two[50..], GuestAddress(0x3000)).unwrap();
        let mut b = Burst::new(2);
        b.start();
        let mut peek = [0u8; PEEK_LEN];
        peek.copy_from_slice(&one[..PEEK_LEN]);
        b.slots[0].frame = IngressFrame::in_one_buffer(7, 0x100, 100, peek);
        b.segs.extend([
            Seg {
                addr: 0x1000,
                len: 50,
            },
            Seg {
                addr: 0x3000,
                len: two.len() as u32 - 50,
            },
        ]);
        let mut peek2 = [0u8; PEEK_LEN];
        peek2.copy_from_slice(&two[..PEEK_LEN]);
        b.slots[1].frame = IngressFrame::new(9, 0..2, two.len() as u32, peek2);
        b.slots[0].dest = Dest::Port(1);
        b.slots[1].dest = Dest::Port(1);
        b.len = 2;
        // The sender changed its first bytes after the decision read them.
        guest.write_slice(&[0xee; 4], GuestAddress(0x100)).unwrap();
        let from = Source {
            id: 0,
            rt,
            qp: 0,
            mem: &guest,
            now: 0,
        };
        let mut view = bounce_burst(0, &from, &bounce, &mut b);
        // And changes them all again now: the copies do not follow.
        guest
            .write_slice(&[0xdd; 100], GuestAddress(0x100))
            .unwrap();
        guest
            .write_slice(&[0xdd; 50], GuestAddress(0x1000))
            .unwrap();
        for (i, want) in [(0, &one), (1, &two)] {
            let f = &b.slots[i].frame;
            assert_eq!(
                f.head,
                [7, 9][i],
                "the sender's buffers are given back by head"
            );
            let segs = f.segs_in(&b.segs);
            assert_eq!(segs.len(), 1);
            let mut got = vec![0u8; f.len as usize];
            assert!(view.read_frame(segs, 0, &mut got));
            assert_eq!(&got, want, "frame {i}");
        }
        // A frame whose buffer is not the sender's memory is dropped, counted.
        b.start();
        b.slots[0].frame = IngressFrame::in_one_buffer(1, 1 << 20, 100, peek);
        b.slots[0].dest = Dest::Flood;
        b.len = 1;
        bounce_burst(0, &from, &bounce, &mut b);
        assert_eq!(b.slots[0].dest, Dest::Drop);
        assert_eq!(drops(&t, 0, DropReason::BadDescriptor), 1);
    }

    /// A port that records each frame as it would be written: the prefix, then the
    /// source's bytes after the bytes it replaces.
    #[derive(Default)]
    struct Recorder(Vec<Vec<u8>>);

    impl<'m> vringswitch_ports::datapath::SendsAsBuilt<'m> for Recorder {
        fn offloads(&self) -> OffloadCaps {
            OffloadCaps::NONE
        }
    }

    impl<'m> SendBuilt<'m> for Recorder {
        fn send_built(
            &mut self,
            src: &mut MemView<'m>,
            segs: &[Seg],
            out: &Outgoing<'_>,
        ) -> Result<u32, DropReason> {
            let mut rest = vec![0u8; out.len as usize];
            assert!(src.read_frame(segs, out.skip, &mut rest));
            self.0.push([out.head, &rest[..]].concat());
            Ok(out.frame_len())
        }
    }

    #[test]
    fn a_judged_frame_in_place_is_delivered_with_the_headers_judged_whatever_the_sender_writes() {
        let guest = frame::host_memory(1 << 16).unwrap();
        let t = topology();
        // 10.0.0.1:5000 -> 10.0.0.2:53 over UDP, 200 bytes: the first 128 are judged.
        let mut f: Vec<u8> = [mac(2), mac(1)].concat();
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[
            0x45, 0, 0, 186, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        f.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0, 166, 0, 0]);
        f.resize(200, 0x11);
        guest.write_slice(&f, GuestAddress(0x100)).unwrap();
        let mut b = Burst::new(1);
        b.start();
        let mut peek = [0u8; PEEK_LEN];
        peek.copy_from_slice(&f[..PEEK_LEN]);
        b.slots[0].frame = IngressFrame::in_one_buffer(7, 0x100, 200, peek);
        b.slots[0].dest = Dest::Flood;
        b.slots[0].ingress = Ingress {
            vlan: 10,
            tci: None,
        };
        b.len = 1;
        let mut view = MemView::new(&guest);
        classify_burst(&mut view, &mut b, None, 0);
        let FrameClass::Ip(flow) = b.slots[0].class else {
            panic!("classified {:?}", b.slots[0].class)
        };
        assert_eq!(
            flow.l4,
            vringswitch_filter::L4::Ports {
                src: 5000,
                dst: 53,
                tcp_flags: 0
            }
        );
        // After the verdict the sender makes it a frame to port 22, and changes its payload.
        guest
            .write_slice(&[0x00, 0x16], GuestAddress(0x100 + 36))
            .unwrap();
        guest
            .write_slice(&[0x22; 72], GuestAddress(0x100 + 128))
            .unwrap();
        // In VLAN 10, to its access port and to a trunk (a tag pushed).
        for (dst, tagged) in [(1, false), (2, true)] {
            let dst_rt = t.port(dst).unwrap();
            let counters = dst_rt.handle.stats().slot(0);
            let mut got = Recorder::default();
            let burst = ToPort {
                src: &mut view,
                frames: &b.slots[..1],
                heads: (b.classified && b.in_place).then_some(&b.heads[..1]),
                segs: &b.segs,
                offloads: false,
                policy: &dst_rt.vlan,
                capture: None,
                counters,
                wanted: |_: &Slot| true,
            };
            assert_eq!(burst.send_to(&mut got).packets, 1);
            let mut want = f.clone();
            want[128..].fill(0x22);
            if tagged {
                want.splice(12..12, [0x81, 0x00, 0x00, 10]);
            }
            assert_eq!(
                got.0,
                [want],
                "to port {dst}: judged headers, the payload as it is now"
            );
        }
    }
}
