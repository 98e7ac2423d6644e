//! Frames a VM sends: one of its TX rings locked for a burst, each chain popped straight
//! into the engine's burst (its header copied to the stack, its buffers left where they
//! are), the used entries published with one index store once the burst is delivered, and
//! the VM notified once. Also what wakes a worker for the ring (its kick eventfd) and the
//! status the control plane shows.

use vhost_user_backend::{VringState, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vringswitch_wire::ethernet::MacAddr;

use super::migration::{ANNOUNCE, LOGGING};
use super::queues::VhostUserQueues;
use super::queues::{log_notification, publish_logged};
use super::rings::{PopTx, RingView};
use crate::counters::DropReason;
use crate::datapath::{Ingress, IngressBurst, Polled, ReceiveBurst, Take, Taking, WaitSet};
use crate::frame::{FrameMem, IngressFrame, Seg};
use crate::port::GuestMemAtomic;

/// One TX ring of a VM, locked for a burst.
struct VmTake<'r, 'q, 'm> {
    ring: &'r mut RingView<'q, 'm>,
    hdr_len: usize,
    /// The VM may send offloads: its frames' headers are read.
    read_vnet: bool,
}

impl<'m> IngressBurst<'m> for VmTake<'_, '_, '_> {
    #[inline(always)]
    fn take(&mut self, frame: &mut IngressFrame, segs: &mut Vec<Seg>) -> Take {
        match self
            .ring
            .pop_tx_into(self.hdr_len, self.read_vnet, segs, frame)
        {
            PopTx::Frame(()) => {
                // The used entry is written now, published after the burst's copies.
                self.ring.add_used(frame.head, 0);
                Take::Frame
            }
            PopTx::Empty => Take::Empty,
            PopTx::Broken => Take::Broken(DropReason::BadDescriptor),
            PopTx::Bad { head, reason } => {
                self.ring.add_used(head, 0);
                Take::Dropped(reason)
            }
        }
    }
}

impl Ingress for VhostUserQueues {
    #[inline(always)]
    fn ingress<R: ReceiveBurst>(&self, qp: u16, burst: R) -> Polled {
        let ring = 2 * usize::from(qp) + 1;
        let Some(vring) = self.vrings.get(ring) else {
            return Polled::default();
        };
        let hdr_len = self.hdr_len();
        // Headers are read only from a VM that may send offloads: without, they mean nothing.
        let sent = self.sent_offloads();
        let read_vnet = !sent.is_empty();
        let guard = self.mem.memory();
        let mem: &FrameMem = &guard;
        let mut st = vring.get_mut();
        if !self.serviceable(ring, &mut st) {
            return Polled::default();
        }
        // The one look at a migration per burst, under the vring lock: the relay switches
        // logging on before the library takes that lock to apply LOG_ALL, so a burst that
        // saw it off has ended by the time the frontend hears back. What the burst writes
        // into this VM's memory (its used entries) is marked at publish.
        let pending = self.migration().pending();
        let mut tx_ring = RingView::new(st.get_queue_mut(), mem);
        let mut port = VmTake {
            ring: &mut tx_ring,
            hdr_len,
            read_vnet,
        };
        let taking = Taking {
            mem,
            headers: read_vnet.then_some(sent),
            qp,
        };
        let taken = burst.receive_from(&mut port, taking);
        if taken > 0 {
            // Give the TX chains back, notify the sender once.
            let published = if pending & LOGGING == 0 {
                tx_ring.publish_used()
            } else {
                publish_logged(self.migration(), ring, &mut tx_ring)
            };
            if let Ok(true) = published {
                let _ = st.signal_used_queue();
            }
        }
        let announce = if pending & ANNOUNCE != 0 {
            self.migration().take_announce().map(MacAddr)
        } else {
            None
        };
        Polled { taken, announce }
    }

    /// The ring's kick eventfd, which the library never sees (the relay hands it a
    /// stand-in, see [`super::kicks`]), wakes the worker directly; notifications are
    /// switched on, and the ring checked once more, which closes the race with a driver
    /// that added buffers meanwhile.
    fn arm_wakeup(&self, qp: u16, waits: &WaitSet<'_>) -> bool {
        self.with_ready_tx(qp, |ring, st, mem| {
            self.with_tx_kick(ring, |kick| waits.wake_on_signal(kick));
            let pending = st.get_queue_mut().enable_notification(mem).unwrap_or(true);
            if self.migration().pending() & LOGGING != 0 {
                log_notification(self, ring, st.get_queue());
            }
            pending
        })
        .unwrap_or(false)
    }

    fn disarm_wakeup(&self, qp: u16) {
        self.with_ready_tx(qp, |ring, st, mem| {
            let _ = st.get_queue_mut().disable_notification(mem);
            if self.migration().pending() & LOGGING != 0 {
                log_notification(self, ring, st.get_queue());
            }
        });
    }
}

impl VhostUserQueues {
    /// Calls `f` on the TX ring of queue pair `qp` (its index, its state locked, the
    /// guest memory), if it is ready and enabled.
    fn with_ready_tx<T>(
        &self,
        qp: u16,
        f: impl FnOnce(usize, &mut VringState<GuestMemAtomic>, &FrameMem) -> T,
    ) -> Option<T> {
        let ring = 2 * usize::from(qp) + 1;
        let vring = self.vrings.get(ring)?;
        let mem = self.mem.memory();
        let mut st = vring.get_mut();
        self.serviceable(ring, &mut st)
            .then(|| f(ring, &mut st, &mem))
    }
}
