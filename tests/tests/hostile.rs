//! Hostile frontends and guests: one deterministic case per item of the bad-input list
//! (docs/testing.md maps each item to its case). For every case the test checks that
//! - the daemon stays alive and keeps answering its API;
//! - no byte outside the offending VM's own buffers changed: canary areas in every VM's
//!   memory (the offender's included) are compared at the end, and every frame the offender
//!   manages to send is compared byte for byte with what it put in its buffers;
//! - the offending connection is closed (vhost-user messages) or the chain is returned and
//!   dropped (ring contents), counted (`protocol_errors`, `drops{reason=...}`), and logged at
//!   a bounded rate;
//! - a healthy pair of ports on the same bridge forwards with zero loss all the while.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vringswitch_tests::daemon::Daemon;
use vringswitch_tests::frontend::{TestVm, BUF_STRIDE, HDR_LEN, MEM_SIZE, QUEUE_SIZE};
use vringswitch_tests::healthy_pair::{alive, HealthyPair, CANARY, CANARY_AT, CANARY_LEN};
use vringswitch_tests::process::open_fds;
use vringswitch_tests::raw_frontend::*;
use vringswitch_tests::setup::{Setup, T};
use vringswitch_tests::{frame, mac, wait_until, BROADCAST};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

fn protocol_errors(s: &Setup) -> u64 {
    s.counter("protocol_errors", "evil")
}

/// A frontend message (or sequence) that the switch must refuse by closing the
/// connection and counting a protocol error.
struct BadMessage {
    item: &'static str,
    what: &'static str,
    send: fn(&mut RawFrontend),
    /// Refused (connection closed, protocol error counted), or harmless enough to be
    /// answered (then the connection must stay usable).
    refused: bool,
}

/// Ignores send errors: the switch may hang up before the whole message is written.
fn raw(f: &mut RawFrontend, request: u32, flags: u32, size: u32, body: &[u8]) {
    let _ = f.send_raw(request, flags, size, body, &[]);
}

fn bad_messages() -> Vec<BadMessage> {
    vec![
        BadMessage {
            item: "1",
            what: "version 2 in the header",
            send: |f| raw(f, GET_FEATURES, 2, 0, &[]),
            refused: true,
        },
        BadMessage {
            item: "1",
            what: "the reply bit on a request",
            send: |f| raw(f, GET_FEATURES, VERSION_1 | REPLY, 0, &[]),
            refused: true,
        },
        BadMessage {
            item: "1",
            what: "an unknown header flag",
            send: |f| raw(f, GET_FEATURES, VERSION_1 | 0x40, 0, &[]),
            refused: true,
        },
        BadMessage {
            item: "1",
            what: "a body over 4 KiB",
            send: |f| raw(f, SET_FEATURES, VERSION_1, 8192, &[0; 8192]),
            refused: true,
        },
        BadMessage {
            item: "1",
            what: "a size other than the request's",
            send: |f| {
                f.send(SET_OWNER, &[], &[]).unwrap();
                raw(f, SET_FEATURES, VERSION_1, 4, &[0; 4]);
            },
            refused: true,
        },
        BadMessage {
            item: "2",
            what: "a file descriptor on GET_FEATURES",
            send: |f| {
                let file = memory_file(4096);
                let _ = f.send(GET_FEATURES, &[], &[file.as_raw_fd()]);
            },
            refused: true,
        },
        BadMessage {
            item: "2",
            what: "a table of two regions with one fd",
            send: |f| {
                f.negotiate();
                let file = memory_file(8192);
                let t = mem_table(&[(0, 4096, 0x1000, 0), (0x10_0000, 4096, 0x9000, 4096)]);
                let _ = f.send(SET_MEM_TABLE, &t, &[file.as_raw_fd()]);
            },
            refused: true,
        },
        BadMessage {
            item: "2",
            what: "two fds on SET_VRING_KICK",
            send: |f| {
                f.negotiate();
                let (x, y) = (memory_file(1), memory_file(1));
                let _ = f.send(
                    SET_VRING_KICK,
                    &0u64.to_le_bytes(),
                    &[x.as_raw_fd(), y.as_raw_fd()],
                );
            },
            refused: true,
        },
        BadMessage {
            item: "4",
            what: "a vring index beyond the queues",
            send: |f| {
                f.negotiate();
                let _ = f.send_acked(SET_VRING_NUM, &vring_state(2, 256), &[]);
            },
            refused: true,
        },
        BadMessage {
            item: "4",
            what: "a vring index that truncates to 0 as a u16",
            send: |f| {
                f.negotiate();
                let _ = f.send_acked(SET_VRING_NUM, &vring_state(0x1_0000, 256), &[]);
            },
            refused: true,
        },
        BadMessage {
            item: "5",
            what: "ring size 0",
            send: |f| {
                f.negotiate();
                let _ = f.send_acked(SET_VRING_NUM, &vring_state(0, 0), &[]);
            },
            refused: true,
        },
        BadMessage {
            item: "5",
            what: "ring size 3 (not a power of two)",
            send: |f| {
                f.negotiate();
                let _ = f.send_acked(SET_VRING_NUM, &vring_state(0, 3), &[]);
            },
            refused: true,
        },
        BadMessage {
            item: "5",
            what: "ring size 65536",
            send: |f| {
                f.negotiate();
                let _ = f.send_acked(SET_VRING_NUM, &vring_state(0, 65536), &[]);
            },
            refused: true,
        },
        BadMessage {
            item: "6",
            what: "a misaligned descriptor table",
            send: |f| {
                f.negotiate();
                let _mem = f.set_memory(1 << 20);
                let body = vring_addr(0, 0, 0x7000_0008, 0x7000_4000, 0x7000_2000);
                let _ = f.send_acked(SET_VRING_ADDR, &body, &[]);
            },
            refused: true,
        },
        BadMessage {
            item: "6",
            what: "a misaligned used ring",
            send: |f| {
                f.negotiate();
                let _mem = f.set_memory(1 << 20);
                let body = vring_addr(0, 0, 0x7000_0000, 0x7000_4002, 0x7000_2000);
                let _ = f.send_acked(SET_VRING_ADDR, &body, &[]);
            },
            refused: true,
        },
        BadMessage {
            item: "22",
            what: "a used-ring log address at the end of the address space",
            send: |f| {
                f.negotiate();
                let _mem = f.set_memory(1 << 20);
                let mut body = vring_addr(0, 1, 0x7000_0000, 0x7000_4000, 0x7000_2000);
                body[32..40].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
                let _ = f.send_acked(SET_VRING_ADDR, &body, &[]);
            },
            refused: true,
        },
        BadMessage {
            item: "6",
            what: "unknown ring address flags",
            send: |f| {
                f.negotiate();
                let _mem = f.set_memory(1 << 20);
                let body = vring_addr(0, 0x80, 0x7000_0000, 0x7000_4000, 0x7000_2000);
                let _ = f.send_acked(SET_VRING_ADDR, &body, &[]);
            },
            refused: true,
        },
        BadMessage {
            item: "6",
            what: "rings outside the memory table",
            send: |f| {
                f.negotiate();
                let _mem = f.set_memory(1 << 20);
                let body = vring_addr(0, 0, 0x9000_0000, 0x9000_4000, 0x9000_2000);
                let _ = f.send_acked(SET_VRING_ADDR, &body, &[]);
            },
            refused: true,
        },
        BadMessage {
            item: "7",
            what: "a table of 0 regions",
            send: |f| {
                f.negotiate();
                let _ = f.send_acked(SET_MEM_TABLE, &mem_table(&[]), &[]);
            },
            refused: true,
        },
        BadMessage {
            item: "7",
            what: "a table of 9 regions",
            send: |f| {
                f.negotiate();
                let files: Vec<_> = (0..9).map(|_| memory_file(4096)).collect();
                let regions: Vec<_> = (0..9).map(|i| (i << 20, 4096, i << 20, 0)).collect();
                let fds: Vec<_> = files.iter().map(|f| f.as_raw_fd()).collect();
                let _ = f.send_acked(SET_MEM_TABLE, &mem_table(&regions), &fds);
            },
            refused: true,
        },
        BadMessage {
            item: "7",
            what: "a region of size 0",
            send: |f| {
                f.negotiate();
                let file = memory_file(4096);
                let _ = f.send_acked(
                    SET_MEM_TABLE,
                    &mem_table(&[(0, 0, 0x1000, 0)]),
                    &[file.as_raw_fd()],
                );
            },
            refused: true,
        },
        BadMessage {
            item: "7",
            what: "guest address + size overflowing",
            send: |f| {
                f.negotiate();
                let file = memory_file(4096);
                let t = mem_table(&[(u64::MAX - 100, 4096, 0x1000, 0)]);
                let _ = f.send_acked(SET_MEM_TABLE, &t, &[file.as_raw_fd()]);
            },
            refused: true,
        },
        BadMessage {
            item: "7",
            what: "frontend address + size overflowing",
            send: |f| {
                f.negotiate();
                let file = memory_file(4096);
                let t = mem_table(&[(0, 4096, u64::MAX - 100, 0)]);
                let _ = f.send_acked(SET_MEM_TABLE, &t, &[file.as_raw_fd()]);
            },
            refused: true,
        },
        BadMessage {
            item: "7",
            what: "file offset + size overflowing",
            send: |f| {
                f.negotiate();
                let file = memory_file(4096);
                let t = mem_table(&[(0, 4096, 0x1000, u64::MAX - 100)]);
                let _ = f.send_acked(SET_MEM_TABLE, &t, &[file.as_raw_fd()]);
            },
            refused: true,
        },
        BadMessage {
            item: "7",
            what: "overlapping regions",
            send: |f| {
                f.negotiate();
                let (x, y) = (memory_file(8192), memory_file(8192));
                let t = mem_table(&[(0, 8192, 0x10_0000, 0), (4096, 8192, 0x20_0000, 0)]);
                let _ = f.send_acked(SET_MEM_TABLE, &t, &[x.as_raw_fd(), y.as_raw_fd()]);
            },
            refused: true,
        },
        BadMessage {
            item: "7",
            what: "a region larger than its file (would fault on first access)",
            send: |f| {
                f.negotiate();
                let file = memory_file(4096);
                let t = mem_table(&[(0, 16 << 20, 0x1000, 0)]);
                let _ = f.send_acked(SET_MEM_TABLE, &t, &[file.as_raw_fd()]);
            },
            refused: true,
        },
        BadMessage {
            item: "7",
            what: "a region whose fd is not a file",
            send: |f| {
                f.negotiate();
                let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
                let t = mem_table(&[(0, 4096, 0x1000, 0)]);
                let _ = f.send_acked(SET_MEM_TABLE, &t, &[x.as_raw_fd()]);
            },
            refused: true,
        },
        BadMessage {
            item: "7",
            what: "ADD_MEM_REG beyond the slot limit",
            send: |f| {
                f.negotiate();
                let slots = f.get_u64(GET_MAX_MEM_SLOTS);
                let mut files = Vec::new();
                for i in 0..=slots {
                    let file = memory_file(4096);
                    let mut body = 0u64.to_le_bytes().to_vec();
                    for w in [i << 20, 4096, 0x1000_0000 + (i << 20), 0] {
                        body.extend_from_slice(&w.to_le_bytes());
                    }
                    match f.send_acked(ADD_MEM_REG, &body, &[file.as_raw_fd()]) {
                        Ok(0) => files.push(file),
                        _ => return,
                    }
                }
            },
            refused: true,
        },
        BadMessage {
            item: "8",
            what: "SET_LOG_BASE whose size and offset overflow",
            send: |f| {
                f.negotiate();
                let file = memory_file(4096);
                let mut body = u64::MAX.to_le_bytes().to_vec();
                body.extend_from_slice(&u64::MAX.to_le_bytes());
                let _ = f.send_acked(SET_LOG_BASE, &body, &[file.as_raw_fd()]);
            },
            refused: true,
        },
        BadMessage {
            item: "9",
            what: "GET_VRING_BASE before any ring exists",
            send: |f| {
                f.send(GET_VRING_BASE, &vring_state(0, 0), &[]).unwrap();
                let (r, _, body) = f.reply().expect("an answer to GET_VRING_BASE");
                assert_eq!((r, body), (GET_VRING_BASE, vring_state(0, 0)));
            },
            refused: false,
        },
        BadMessage {
            item: "9",
            what: "features never offered",
            send: |f| {
                f.send(SET_OWNER, &[], &[]).unwrap();
                let _ = f.send_acked(SET_FEATURES, &u64::MAX.to_le_bytes(), &[]);
            },
            refused: true,
        },
        BadMessage {
            item: "9",
            what: "SET_VRING_ADDR before any memory table",
            send: |f| {
                f.negotiate();
                let body = vring_addr(0, 0, 0x7000_0000, 0x7000_4000, 0x7000_2000);
                let _ = f.send_acked(SET_VRING_ADDR, &body, &[]);
            },
            refused: true,
        },
    ]
}

#[test]
fn hostile_frontend_messages_are_refused_counted_and_harm_no_one() {
    let s = Setup::new("hostile-msg", &[("br0", &["a", "b", "evil"])], 1);
    let healthy = HealthyPair::start(&s);
    let fds_before = open_fds(s.daemon.pid());
    let cases = bad_messages();
    let started = Instant::now();
    let mut refused = 0;
    for case in &cases {
        let before = protocol_errors(&s);
        let mut f = RawFrontend::connect(&s.socket("evil"));
        (case.send)(&mut f);
        let label = format!("item {}, {}", case.item, case.what);
        if case.refused {
            assert!(
                f.hung_up_within(Duration::from_secs(5)),
                "{label}: the switch kept the connection open"
            );
            wait_until(T, &format!("{label}: a counted protocol error"), || {
                (protocol_errors(&s) == before + 1).then_some(())
            });
            refused += 1;
        } else {
            // Answered: the connection still works.
            assert_ne!(f.get_u64(GET_FEATURES), 0, "{label}: connection unusable");
            drop(f);
            s.daemon.wait_port_connected("evil", false);
            assert_eq!(protocol_errors(&s), before, "{label}: counted as an error");
        }
        alive(&s.daemon);
        assert_eq!(protocol_errors(&s), refused);
    }
    // Not a protocol error, but must be survived: a header cut short, then a hang-up.
    let mut f = RawFrontend::connect(&s.socket("evil"));
    let _ = std::io::Write::write_all(&mut f.sock, &[1, 0, 0, 0, 1, 0]);
    drop(f);
    // Allocating messages in a loop leak nothing: 200 memory tables and kick fds.
    let mut f = RawFrontend::connect(&s.socket("evil"));
    f.negotiate();
    for _ in 0..200 {
        let _mem = f.set_memory(1 << 20);
        let kick = memory_file(1);
        assert_eq!(
            f.send_acked(SET_VRING_CALL, &0u64.to_le_bytes(), &[kick.as_raw_fd()])
                .unwrap(),
            0
        );
    }
    drop(f);
    s.daemon.wait_port_connected("evil", false);
    // Every fd received on every error path was closed.
    wait_until(T, "the daemon's open fds to fall back", || {
        (open_fds(s.daemon.pid()) <= fds_before).then_some(())
    });
    alive(&s.daemon);
    healthy.finish(3);
    // Logged, at a bounded rate: one line per 10 s however many errors.
    let lines = s
        .daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("evil") && l.contains("protocol error"))
        .count();
    let periods = started.elapsed().as_secs() / 10 + 1;
    assert!(
        (1..=periods as usize).contains(&lines),
        "{lines} log lines for {} protocol errors in {:?}",
        cases.len(),
        started.elapsed()
    );
}

/// A guest's bad descriptors: the test writes descriptors itself on the evil VM's queues.
struct EvilVm {
    vm: TestVm,
}

/// Where the evil VM's frames live: well inside its memory, clear of rings and canaries.
const EVIL_BUF: u64 = 0x300_0000;

impl EvilVm {
    fn tx() -> u16 {
        TestVm::tx(0)
    }

    /// Writes a chain of (addr, len, flags) into fresh descriptors, linking them with NEXT
    /// unless a descriptor's flags say otherwise, and offers its head.
    fn offer(&mut self, q: u16, descs: &[(u64, u32, u16)]) -> u16 {
        let ids = self.vm.alloc_descs(q, descs.len());
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let (flags, next) = if i + 1 < ids.len() {
                (flags | NEXT, ids[i + 1])
            } else {
                (flags, 0)
            };
            self.vm.write_desc(q, ids[i], addr, len, flags, next);
        }
        self.vm.make_available(q, &ids[..1]);
        ids[0]
    }

    /// A valid frame (header then frame) at EVIL_BUF + off; returns its address.
    fn put_frame(&self, off: u64, f: &[u8]) -> u64 {
        let at = EVIL_BUF + off;
        self.vm.fill(at, HDR_LEN, 0);
        vm_write(&self.vm, at + HDR_LEN as u64, f);
        at
    }
}

fn vm_write(vm: &TestVm, addr: u64, bytes: &[u8]) {
    use vm_memory::Bytes;
    vm.mem
        .write_slice(bytes, vm_memory::GuestAddress(addr))
        .unwrap();
}

#[test]
fn hostile_guest_rings_are_dropped_counted_and_harm_no_one() {
    let s = Setup::new("hostile-ring", &[("br0", &["a", "b", "evil", "watch"])], 1);
    let healthy = HealthyPair::start(&s);
    let mut watch = s.vm("watch", 4);
    let mut evil = EvilVm {
        vm: s.vm("evil", 9),
    };
    s.wait_connected(&["evil", "watch"]);
    for vm in [&watch, &evil.vm] {
        vm.fill(CANARY_AT, CANARY_LEN, CANARY);
    }
    // Watch's own RX buffers hold a pattern: the switch writes only the header and the frame
    // (item 21), so the rest of a buffer must keep it.
    let watch_rx = watch.queues[0].buf_addr(0);
    // (post_rx offered descriptors 0..64 of queue 0 in setup; the pattern covers them all.)
    watch.fill(watch_rx, 64 * BUF_STRIDE as usize, 0xEE);

    let t = EvilVm::tx();
    let bad_before = s.drops("evil", "bad_descriptor");
    let mut bad = 0u64;
    // Frames that must reach watch, in order.
    let mut sent = Vec::new();
    let good = |n: u8| frame(BROADCAST, mac(9), 80, n);
    let whole = |f: &[u8]| (HDR_LEN + f.len()) as u32;

    // 11: next beyond the ring; a head beyond the ring.
    let at = evil.put_frame(0, &good(1));
    let h = evil.vm.alloc_descs(t, 1)[0];
    evil.vm
        .write_desc(t, h, at, whole(&good(1)), NEXT, QUEUE_SIZE + 44);
    evil.vm.make_available(t, &[h]);
    bad += 1;
    evil.vm.make_available(t, &[QUEUE_SIZE + 7]);
    bad += 1;
    // 12: a descriptor chained to itself; a loop of two.
    let h = evil.vm.alloc_descs(t, 1)[0];
    evil.vm.write_desc(t, h, at, 20, NEXT, h);
    evil.vm.make_available(t, &[h]);
    bad += 1;
    let ids = evil.vm.alloc_descs(t, 2);
    evil.vm.write_desc(t, ids[0], at, 20, NEXT, ids[1]);
    evil.vm.write_desc(t, ids[1], at + 20, 20, NEXT, ids[0]);
    evil.vm.make_available(t, &ids[..1]);
    bad += 1;
    // 13: nested indirect; indirect tables of 17 bytes, of 0 bytes, outside memory.
    let table = EVIL_BUF + 0x10_0000;
    let mut nested = (table + 64).to_le_bytes().to_vec();
    nested.extend_from_slice(&32u32.to_le_bytes());
    nested.extend_from_slice(&INDIRECT.to_le_bytes());
    nested.extend_from_slice(&0u16.to_le_bytes());
    vm_write(&evil.vm, table, &nested);
    for (addr, len) in [(table, 16), (table, 17), (table, 0), (MEM_SIZE + 4096, 64)] {
        evil.offer(t, &[(addr, len, INDIRECT)]);
        bad += 1;
    }
    // 14: a buffer running past the end of memory.
    evil.offer(t, &[(at, HDR_LEN as u32, 0), (MEM_SIZE - 10, 100, 0)]);
    bad += 1;
    // 14: a zero-length descriptor at a wild address adds no bytes: the frame around it
    // arrives intact, and nothing is read there.
    let n = whole(&good(1));
    evil.offer(
        t,
        &[(at, 50, 0), (u64::MAX - 5, 0, 0), (at + 50, n - 50, 0)],
    );
    sent.push(good(1));
    // 15: lengths adding up beyond u32.
    evil.offer(t, &[(at, u32::MAX, 0), (at, u32::MAX, 0), (at, 16, 0)]);
    bad += 1;
    // 18: a chain shorter than the header.
    evil.offer(t, &[(at, 8, 0)]);
    bad += 1;
    // 18: a header spread over three descriptors is legal: the frame arrives intact.
    let f = good(2);
    let at2 = evil.put_frame(0x1000, &f);
    evil.offer(
        t,
        &[
            (at2, 4, 0),
            (at2 + 4, 4, 0),
            (at2 + 8, 4, 0),
            (at2 + 12, f.len() as u32, 0),
        ],
    );
    sent.push(f);
    // 18: checksum and GSO fields never negotiated, pointing far beyond the frame:
    // NEEDS_CSUM, GSO TCPv4, hdr_len, gso_size, csum_start and csum_offset all huge.
    let f = good(3);
    let at3 = evil.put_frame(0x2000, &f);
    vm_write(
        &evil.vm,
        at3,
        &[1, 1, 0xff, 0xff, 0xff, 0x7f, 0xf0, 0xff, 0xf0, 0xff],
    );
    evil.offer(t, &[(at3, whole(&f), 0)]);
    sent.push(f);
    // 19: a write-only descriptor in a TX chain (pointing at a canary).
    evil.offer(t, &[(at, HDR_LEN as u32, 0), (CANARY_AT, 64, WRITE)]);
    bad += 1;
    // A good frame at the end shows the queue still works after all the bad chains.
    let f = good(4);
    let at4 = evil.put_frame(0x3000, &f);
    evil.offer(t, &[(at4, whole(&f), 0)]);
    sent.push(f);

    // Every chain comes back, the bad ones counted; all but the head beyond the ring,
    // which names no descriptor the used ring could give back.
    wait_until(
        T,
        "every chain but the out-of-range head to come back",
        || {
            // Judged on what was taken, not on a second read of the used index: a chain
            // returned between the two would be left untaken, and seen later as served.
            evil.vm.reap_tx(t);
            (evil.vm.taken_idx(t) == evil.vm.avail_idx(t).wrapping_sub(1)).then_some(())
        },
    );
    wait_until(T, "bad chains to be counted", || {
        (s.drops("evil", "bad_descriptor") >= bad_before + bad).then_some(())
    });
    assert_eq!(s.drops("evil", "bad_descriptor"), bad_before + bad);
    // Watch gets exactly the good frames, with a header that says nothing of checksums or
    // GSO, used lengths that are exact, and no byte written beyond the frame (item 21).
    let got = watch.expect_frames(TestVm::rx(0), sent.len(), T);
    for (g, f) in got.iter().zip(&sent) {
        assert!(g.frame == *f, "a frame from the evil VM changed on the way");
        assert_eq!(g.header[..10], [0; 10], "header fields leaked through");
        assert_eq!(g.used_lens, vec![whole(f)]);
        let end = watch.queues[0].buf_addr(g.heads[0]) + u64::from(g.used_lens[0]);
        assert_eq!(
            watch.find_changed(end, 256, 0xEE),
            None,
            "bytes written beyond the frame"
        );
    }

    // 16: the avail index more than a ring ahead of the switch. The queue is taken out of
    // service (counted) and stays so, even once the index is put right, until the guest
    // sets it up again: here by reconnecting.
    let idx = evil.vm.avail_idx(t);
    let before = s.drops("evil", "bad_descriptor");
    evil.vm
        .corrupt_avail_idx(t, idx.wrapping_add(QUEUE_SIZE + 100));
    wait_until(T, "the corrupt ring to be counted", || {
        (s.drops("evil", "bad_descriptor") == before + 1).then_some(())
    });
    evil.vm.corrupt_avail_idx(t, idx);
    let f = good(5);
    let at5 = evil.put_frame(0x4000, &f);
    evil.offer(t, &[(at5, whole(&f), 0)]);
    watch.expect_nothing(TestVm::rx(0), Duration::from_millis(300));
    assert!(!evil.vm.has_used(t), "a disabled queue was served");
    drop(evil);
    s.daemon.wait_port_connected("evil", false);
    let mut evil = EvilVm {
        vm: s.vm("evil", 9),
    };
    s.wait_connected(&["evil"]);
    evil.vm.fill(CANARY_AT, CANARY_LEN, CANARY);
    let at5 = evil.put_frame(0x4000, &f);
    evil.offer(t, &[(at5, whole(&f), 0)]);
    assert!(watch.expect_frames(TestVm::rx(0), 1, T)[0].frame == f);
    evil.vm.wait_tx_done(t, T);

    // 19, 20: the evil VM's RX chains. First its good buffers are used up by broadcasts
    // from watch; then it offers only bad ones: read-only (over a canary), outside its
    // memory, and one-byte buffers against a stream of frames.
    let rx = TestVm::rx(0);
    let wt = TestVm::tx(0);
    for i in 0..64u8 {
        watch.send(wt, &frame(BROADCAST, mac(4), 100, i));
    }
    watch.wait_tx_done(wt, T);
    let taken = wait_until(T, "the evil VM's RX buffers to fill", || {
        let n = evil.vm.used_idx(rx);
        (n == 64).then_some(n)
    });
    assert_eq!(evil.vm.recv(rx).len(), usize::from(taken));
    let used_before = evil.vm.used_idx(rx);
    let mut returned = 0u16;
    for i in 0..20u64 {
        evil.offer(rx, &[(CANARY_AT + i * 4096, 2048, 0)]);
        evil.offer(rx, &[(MEM_SIZE - 8 + (i << 32), 2048, WRITE)]);
        returned += 2;
    }
    let drops = |s: &Setup| {
        ["bad_descriptor", "no_rx_buffer", "too_big"]
            .iter()
            .map(|r| s.drops("evil", r))
            .sum::<u64>()
    };
    let before = drops(&s);
    for i in 0..40u8 {
        watch.send(wt, &frame(BROADCAST, mac(4), 100, i));
    }
    watch.wait_tx_done(wt, T);
    wait_until(T, "every bad RX chain to come back unused", || {
        (evil.vm.used_idx(rx) == used_before.wrapping_add(returned)).then_some(())
    });
    wait_until(T, "frames to the evil VM to be counted as dropped", || {
        (drops(&s) >= before + 40).then_some(())
    });
    // One-byte buffers: no frame fits (not even its header); none may be used.
    let used_before = evil.vm.used_idx(rx);
    let ones = EVIL_BUF + 0x20_0000;
    evil.vm.fill(ones, 4096, 0x77);
    for i in 0..64u64 {
        evil.offer(rx, &[(ones + i * 64, 1, WRITE)]);
    }
    let before = drops(&s);
    for i in 0..40u8 {
        watch.send(wt, &frame(BROADCAST, mac(4), 100, i));
    }
    watch.wait_tx_done(wt, T);
    wait_until(
        T,
        "frames to one-byte buffers to be counted as dropped",
        || (drops(&s) >= before + 40).then_some(()),
    );
    assert_eq!(
        evil.vm.used_idx(rx),
        used_before,
        "one-byte buffers were used"
    );
    assert_eq!(
        evil.vm.find_changed(ones, 4096, 0x77),
        None,
        "one-byte buffers were written"
    );

    alive(&s.daemon);
    for (name, vm) in [("watch", &watch), ("evil", &evil.vm)] {
        assert_eq!(
            vm.find_changed(CANARY_AT, CANARY_LEN, CANARY),
            None,
            "canary of VM {name} overwritten"
        );
    }
    healthy.finish(3);
    // The drops were logged as a guest fault, at most once per 10 s.
    let started = Instant::now();
    let log_line = |d: &Daemon| {
        d.log_text()
            .lines()
            .filter(|l| l.contains("evil") && l.contains("bad_descriptor="))
            .count()
    };
    wait_until(
        Duration::from_secs(12),
        "a log line about evil's drops",
        || (log_line(&s.daemon) >= 1).then_some(()),
    );
    assert!(log_line(&s.daemon) <= 2 + started.elapsed().as_secs() as usize / 10);
}
