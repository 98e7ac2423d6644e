//! Latency probe for the benchmark harness (`bench/run.py`): two test VMs (the Rust
//! frontend of `vringswitch_tests::frontend`) attached to a switch, measuring how long frames
//! take to cross it. Works against any vhost-user backend: vringswitch, testpmd's net_vhost,
//! OVS-DPDK (with `--accept`, as its dpdkvhostuserclient ports connect to us).
//!
//! ```text
//! vs-probe latency --a SOCK --b SOCK [--accept] [--samples N] [--interval-us U] [--size B]
//! vs-probe hold    --a SOCK --b SOCK [--accept] --secs S
//! vs-probe floor   [--samples N] [--interval-us U] [--core C]
//! vs-probe sink    --a SOCK [--accept] --secs S
//! vs-probe tso     --a SOCK --b SOCK [--accept] --secs S [--size B] [--segment]
//! vs-probe memcpy  [--size B] [--secs S] [--core C]
//! vs-probe stream  --a SOCK --b SOCK [--accept] --secs S [--size B] [--dirty-log]
//! vs-probe mirror  --a SOCK --b SOCK --c SOCK --secs S --pps N [--size B]
//! vs-probe gap     --a SOCK --b SOCK [--accept] --secs S [--size B]
//! ```
//!
//! `gap` measures how long forwarding stops (an upgrade, a restart): A sends B frames
//! numbered in sequence as fast as B takes them (at most 128 sent and not yet received,
//! fewer than B's receive buffers, so that the switch never lacks one), and B checks the
//! numbers.
//! Each time B received nothing for over 1 ms it prints `{"gap_ms", "at_s"}` once frames
//! come again; at the end, the totals: frames sent and received, numbers missing (lost),
//! numbers out of order or twice, the longest gap. With `--accept`, a switch that
//! connects again (restarted, its ports in client mode) is accepted and the frames go on
//! with the next numbers: what was in the old rings is lost with them.
//!
//! `mirror` has A and B send each other `--size`-byte frames at `--pps` frames per second
//! in all (half each way, paced by the clock), and C, the output of a mirror of A, take
//! what it is sent; each gives its RX buffers back as soon as they are used. It prints, each
//! second, the frames A and B offered and A, B and C received, one JSON line per second,
//! then a line with the totals.
//!
//! `latency` sends one frame A -> B every `interval`, times its arrival at B (one way), has
//! B send it back and times its arrival at A (round trip), and prints a JSON object with
//! p50/p99/max of both in microseconds. Before the timed frames it makes one untimed round
//! trip per posted receive buffer, so no timed frame is the first written into its buffer
//! (a first write costs a page fault). Frames that do not arrive within 100 ms count as
//! lost. `hold` connects both ports, exchanges one frame each way (so both are learnt), prints
//! `ready` and stays connected and silent for S seconds (the harness measures the switch's
//! idle CPU meanwhile).
//!
//! `sink` is a VM that only receives: one test VM on `--a` that gives every RX buffer back
//! as soon as it sees it used, checking every 20 µs (sleeping in between, so that it leaves
//! the core to a generator), and prints the frames received in each second, one JSON line
//! per second, for S seconds.
//!
//! `tso` has A, which negotiates checksum offload and TSO, send TCP frames of `--size` bytes
//! (65214 by default: 45 segments of 1448, as Linux sends them) to B, which takes TSO frames too, or with
//! `--segment` takes no offload at all (the switch then cuts every frame). A keeps 32
//! frames in flight (4 with `--segment`), offering each chain again as soon as the switch used it; B gives its
//! buffers (16 KiB, mergeable) back as soon as they are used. It prints, each second, the
//! frames A sent and the bytes B received (virtio-net headers included), one JSON line per
//! second, for S seconds.
//!
//! `memcpy` is the limit a switch's copy has: `--size`-byte copies (65214 by default) on
//! core C, from 32 buffers to 64 others in turn (the footprint of `tso`'s rings), for S
//! seconds; it prints the TSC cycles per copy.
//!
//! `stream` is a loopback for what a migration costs: A and B each keep 128 frames of
//! `--size` bytes in flight to the other, offering each chain again as soon as the switch
//! used it, and give every RX buffer back as soon as it is used. With `--dirty-log` both
//! negotiate LOG_SHMFD and log dirty pages all along, as QEMU does while a migration copies
//! memory (and clear the log every 100 ms, as its dirty syncs do). It prints, each second,
//! the frames A and B received, one JSON line per second, for S seconds.
//!
//! `floor` needs no switch: it measures what any sleeping switch pays at least to wake, a
//! thread pinned to core C (the switch's core) blocked on an eventfd, woken by a write from
//! this core after `interval`. It prints the same JSON (`one_way_us`: write to wake-up).

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vringswitch_tests::frontend::{TestVm, VmOptions};
use vringswitch_tests::{frame, mac, BROADCAST};

const RX: u16 = 0;
const TX: u16 = 1;
const RX_BUFS: usize = 128;
/// A sink's RX buffers: all the ring holds but one.
const SINK_BUFS: usize = 255;
const LOST_AFTER: Duration = Duration::from_millis(100);
/// The `tso` mode's frame: what Linux sends with TSO, 45 segments of 1448 bytes behind 54
/// bytes of headers (DPDK's vhost library takes no frame over 65535 bytes less its
/// headroom, so OVS-DPDK could not take a full 64 KiB).
const TSO_FRAME: usize = 54 + 45 * 1448;

struct Args {
    mode: String,
    /// tso: B takes no offloads, so the switch segments.
    segment: bool,
    /// stream: log dirty pages as a migrating VM does.
    dirty_log: bool,
    a: PathBuf,
    b: PathBuf,
    /// mirror: the mirror output's socket.
    c: PathBuf,
    /// mirror: frames per second A and B offer in all.
    pps: u64,
    accept: bool,
    samples: usize,
    interval: Duration,
    size: usize,
    secs: u64,
    core: usize,
}

fn usage(why: &str) -> ! {
    eprintln!("vs-probe: {why}");
    eprintln!(
        "usage: vs-probe latency|hold|floor|sink|tso|memcpy|stream|mirror|gap --a SOCK --b SOCK \
         [--c SOCK] [--accept] [--samples N] [--interval-us U] [--size BYTES] [--secs S] \
         [--core C] [--pps N] [--segment] [--dirty-log]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mode = it.next().unwrap_or_else(|| usage("no mode"));
    if ![
        "latency", "hold", "floor", "sink", "tso", "memcpy", "stream", "mirror", "gap",
    ]
    .contains(&mode.as_str())
    {
        usage(&format!("unknown mode {mode:?}"));
    }
    let tso = mode == "tso" || mode == "memcpy";
    let mut args = Args {
        segment: false,
        dirty_log: false,
        mode,
        a: PathBuf::new(),
        b: PathBuf::new(),
        c: PathBuf::new(),
        pps: 1_000_000,
        accept: false,
        samples: 1000,
        interval: Duration::from_millis(1),
        size: if tso { TSO_FRAME } else { 64 },
        secs: 10,
        core: 1,
    };
    while let Some(flag) = it.next() {
        if flag == "--accept" {
            args.accept = true;
            continue;
        }
        if flag == "--segment" {
            args.segment = true;
            continue;
        }
        if flag == "--dirty-log" {
            args.dirty_log = true;
            continue;
        }
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = || -> u64 {
            value
                .parse()
                .unwrap_or_else(|_| usage(&format!("{flag} wants a number, not {value:?}")))
        };
        match flag.as_str() {
            "--a" => args.a = PathBuf::from(&value),
            "--b" => args.b = PathBuf::from(&value),
            "--c" => args.c = PathBuf::from(&value),
            "--pps" => args.pps = number().max(1),
            "--samples" => args.samples = number() as usize,
            "--interval-us" => args.interval = Duration::from_micros(number()),
            "--size" => args.size = number() as usize,
            "--secs" => args.secs = number(),
            "--core" => args.core = number() as usize,
            _ => usage(&format!("unknown flag {flag:?}")),
        }
    }
    let needs_b =
        ["latency", "hold", "tso", "stream", "mirror", "gap"].contains(&args.mode.as_str());
    if args.mode == "mirror" && args.c.as_os_str().is_empty() {
        usage("--c is required");
    }
    if tso {
        if !(1514..=65_536).contains(&args.size) {
            usage("--size must be between 1514 and 65536 for tso and memcpy");
        }
        if args.mode == "tso" && (args.a.as_os_str().is_empty() || args.b.as_os_str().is_empty()) {
            usage("--a and --b are required");
        }
        return args;
    }
    if args.mode != "floor" && args.a.as_os_str().is_empty() {
        usage("--a is required");
    }
    if needs_b && args.b.as_os_str().is_empty() {
        usage("--b is required");
    }
    // A stream's frames may be as long as the other loopbacks' (testpmd's 1518 bytes).
    let longest = if args.mode == "stream" || args.mode == "mirror" {
        1518
    } else {
        1514
    };
    if !(60..=longest).contains(&args.size) {
        usage(&format!(
            "--size must be between 60 and {longest} (a frame without its FCS)"
        ));
    }
    args
}

fn attach(args: &Args) -> (TestVm, TestVm) {
    let opts = VmOptions {
        strict: false,
        ..VmOptions::default()
    };
    let (mut a, mut b) = pair(args, opts, opts);
    a.post_rx(RX, RX_BUFS, 2048);
    b.post_rx(RX, RX_BUFS, 2048);
    introduce(&mut a, &mut b, 2048);
    (a, b)
}

/// Test VMs A (mac 1, `a_opts`) and B (mac 2, `b_opts`) on `--a` and `--b`: connected to
/// the switch's sockets, or, with `--accept`, accepted on sockets of their own.
fn pair(args: &Args, a_opts: VmOptions, b_opts: VmOptions) -> (TestVm, TestVm) {
    if args.accept {
        // Both listeners exist before the switch looks for either.
        let la = UnixListener::bind(&args.a).expect("bind --a");
        let lb = UnixListener::bind(&args.b).expect("bind --b");
        let a = TestVm::accept(&la, mac(1), a_opts);
        let b = TestVm::accept(&lb, mac(2), b_opts);
        (a, b)
    } else {
        (
            TestVm::connect(&args.a, mac(1), a_opts),
            TestVm::connect(&args.b, mac(2), b_opts),
        )
    }
}

/// Once A and B posted their RX buffers: one frame each way, so that a learning switch knows
/// both MACs; the buffer each used is given back (`buf_len` bytes), its TX chain reaped.
fn introduce(a: &mut TestVm, b: &mut TestVm, buf_len: u32) {
    // Give the backend time to see the rings enabled before the first frame.
    std::thread::sleep(Duration::from_millis(500));
    b.send(TX, &frame(BROADCAST, mac(2), 46, 0));
    a.expect_frames(RX, 1, Duration::from_secs(5));
    a.send(TX, &frame(mac(2), mac(1), 46, 0));
    b.expect_frames(RX, 1, Duration::from_secs(5));
    a.post_rx(RX, 1, buf_len);
    b.post_rx(RX, 1, buf_len);
    a.reap_tx(TX);
    b.reap_tx(TX);
}

/// Spins until `vm` has a used entry on its RX queue; the arrival time, or None when lost.
fn arrival(vm: &mut TestVm) -> Option<Instant> {
    let start = Instant::now();
    loop {
        if vm.has_used(RX) {
            let t = Instant::now();
            vm.recv(RX);
            vm.post_rx(RX, 1, 2048);
            return Some(t);
        }
        if start.elapsed() > LOST_AFTER {
            return None;
        }
        std::hint::spin_loop();
    }
}

fn percentiles(mut v: Vec<f64>) -> serde_json::Value {
    if v.is_empty() {
        return serde_json::Value::Null;
    }
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    serde_json::json!({ "p50": at(0.50), "p99": at(0.99), "max": v[v.len() - 1] })
}

/// Sends `forth` A -> B, waits for it, sends `back` B -> A and waits for it: the one-way and
/// round-trip times in microseconds, or None when a frame was lost.
fn round_trip(a: &mut TestVm, b: &mut TestVm, forth: &[u8], back: &[u8]) -> Option<(f64, f64)> {
    a.reap_tx(TX);
    b.reap_tx(TX);
    let t0 = Instant::now();
    a.send(TX, forth);
    let t1 = arrival(b)?;
    b.send(TX, back);
    let t2 = arrival(a)?;
    let us = |t: Instant| (t - t0).as_secs_f64() * 1e6;
    Some((us(t1), us(t2)))
}

fn latency(args: &Args, a: &mut TestVm, b: &mut TestVm) {
    let mut one_way = Vec::with_capacity(args.samples);
    let mut rtt = Vec::with_capacity(args.samples);
    let forth = frame(mac(2), mac(1), args.size - 14, 1);
    let back = frame(mac(1), mac(2), args.size - 14, 2);
    // One untimed round trip per posted receive buffer first, so that every buffer has been
    // written once. A buffer's first use costs a page fault in whichever process touches its
    // page first (a backend maps guest memory lazily, as DPDK's vhost library does too); a
    // running guest has paid that long before, and it is no part of crossing the switch.
    let mut lost = 0;
    for _ in 0..RX_BUFS {
        lost += usize::from(round_trip(a, b, &forth, &back).is_none());
    }
    if lost > 0 {
        eprintln!("vs-probe: {lost} of {RX_BUFS} warm-up frames lost");
        std::process::exit(1);
    }
    for _ in 0..args.samples {
        std::thread::sleep(args.interval);
        match round_trip(a, b, &forth, &back) {
            Some((t1, t2)) => {
                one_way.push(t1);
                rtt.push(t2);
            }
            None => lost += 1,
        }
    }
    let out = serde_json::json!({
        "samples": args.samples,
        "lost": lost,
        "interval_us": args.interval.as_micros() as u64,
        "size": args.size,
        "one_way_us": percentiles(one_way),
        "rtt_us": percentiles(rtt),
    });
    println!("{out}");
}

fn floor(args: &Args) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use vmm_sys_util::eventfd::EventFd;

    let bell = Arc::new(EventFd::new(0).expect("eventfd"));
    let woke = Arc::new(AtomicBool::new(false));
    let core = args.core;
    let waiter = {
        let (bell, woke) = (bell.clone(), woke.clone());
        std::thread::spawn(move || {
            vringswitch_switch::affinity::pin_current_thread(core).expect("pin to --core");
            // A blocking read: the thread sleeps in the kernel, as a switch's idle worker.
            while bell.read().is_ok_and(|n| n != u64::MAX - 1) {
                woke.store(true, Ordering::Release);
            }
        })
    };
    let mut wake = Vec::with_capacity(args.samples);
    for _ in 0..args.samples {
        std::thread::sleep(args.interval);
        woke.store(false, Ordering::Relaxed);
        let t0 = Instant::now();
        bell.write(1).expect("eventfd write");
        while !woke.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        wake.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    // u64::MAX - 1 makes the read return that value: the waiter's signal to end.
    bell.write(u64::MAX - 1).expect("eventfd write");
    waiter.join().expect("waiter thread");
    let out = serde_json::json!({
        "samples": args.samples,
        "interval_us": args.interval.as_micros() as u64,
        "one_way_us": percentiles(wake),
    });
    println!("{out}");
}

/// The `sink` mode: receives on `--a` and prints the frames of each second.
fn sink(args: &Args) {
    let opts = VmOptions {
        strict: false,
        ..VmOptions::default()
    };
    let mut vm = if args.accept {
        let l = UnixListener::bind(&args.a).expect("bind --a");
        TestVm::accept(&l, mac(1), opts)
    } else {
        TestVm::connect(&args.a, mac(1), opts)
    };
    vm.post_rx(RX, SINK_BUFS, 2048);
    println!("ready");
    let start = Instant::now();
    let mut second = start + Duration::from_secs(1);
    let mut frames = 0u64;
    while start.elapsed() < Duration::from_secs(args.secs) {
        frames += vm.recycle(RX) as u64;
        let now = Instant::now();
        if now >= second {
            println!("{}", serde_json::json!({ "frames": frames }));
            frames = 0;
            second += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// The `tso` mode's frame: TCP over IPv4, mac(1) -> mac(2), `size` bytes, and the
/// virtio-net header that leaves its checksum and segmentation (1448 bytes) to the device.
fn tso_frame(size: usize) -> ([u8; 12], Vec<u8>) {
    let mut f = vec![0u8; size];
    f[..6].copy_from_slice(&mac(2));
    f[6..12].copy_from_slice(&mac(1));
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (size - 14) as u16;
    f[14..34].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    // TCP: ports, sequence, ack, data offset 5, ACK|PSH, window.
    f[34..54].copy_from_slice(&[
        0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    for (i, b) in f[54..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut hdr = [0u8; 12];
    hdr[0] = 1; // NEEDS_CSUM
    hdr[1] = 1; // GSO_TCPV4
    hdr[2..4].copy_from_slice(&54u16.to_le_bytes());
    hdr[4..6].copy_from_slice(&1448u16.to_le_bytes());
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
    (hdr, f)
}

/// The `tso` mode.
fn tso(args: &Args) {
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4,
    };
    // Cut into 45 segments, a frame takes 45 of B's 255 buffers: few frames in flight, so
    // that B's ring has room for what the switch cuts from one burst.
    let in_flight = if args.segment { 4 } else { 32 };
    let sender = VmOptions {
        strict: false,
        offloads: (1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_HOST_TSO4),
        ..VmOptions::default()
    };
    let receiver = VmOptions {
        strict: false,
        offloads: if args.segment {
            0
        } else {
            (1 << VIRTIO_NET_F_GUEST_CSUM) | (1 << VIRTIO_NET_F_GUEST_TSO4)
        },
        ..VmOptions::default()
    };
    let (mut a, mut b) = pair(args, sender, receiver);
    for (vm, want, what) in [(&a, sender, "A"), (&b, receiver, "B")] {
        if vm.features & want.offloads != want.offloads {
            eprintln!("vs-probe: the switch did not offer {what} its offloads");
            std::process::exit(1);
        }
    }
    a.post_rx(RX, 64, 16_384);
    b.post_rx(RX, SINK_BUFS, 16_384);
    introduce(&mut a, &mut b, 16_384);
    let (hdr, f) = tso_frame(args.size);
    let cuts: Vec<usize> = (1..=(f.len() + 12) / 16_384).map(|i| i * 16_384).collect();
    for _ in 0..in_flight {
        a.send_split_with_header(TX, hdr, &f, &cuts);
    }
    a.kick(TX);
    println!("ready");
    let start = Instant::now();
    let mut second = start + Duration::from_secs(1);
    let (mut sent, mut bytes) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs(args.secs) {
        let n = a.recycle(TX);
        if n > 0 {
            a.kick(TX);
        }
        sent += n as u64;
        let (k, got) = b.recycle_counting(RX);
        if k > 0 {
            b.kick(RX);
        }
        bytes += got;
        a.recycle(RX);
        let now = Instant::now();
        if now >= second {
            println!(
                "{}",
                serde_json::json!({ "frames": sent, "rx_bytes": bytes })
            );
            (sent, bytes) = (0, 0);
            second += Duration::from_secs(1);
        }
        std::hint::spin_loop();
    }
}

/// The `stream` mode.
fn stream(args: &Args) {
    const IN_FLIGHT: usize = 128;
    const CLEAR_EVERY: Duration = Duration::from_millis(100);
    let opts = VmOptions {
        strict: false,
        migration: args.dirty_log,
        ..VmOptions::default()
    };
    let (mut a, mut b) = pair(args, opts, opts);
    let logs = args
        .dirty_log
        .then(|| (a.start_dirty_log(), b.start_dirty_log()));
    a.post_rx(RX, SINK_BUFS, 2048);
    b.post_rx(RX, SINK_BUFS, 2048);
    introduce(&mut a, &mut b, 2048);
    let to_b = vec![frame(mac(2), mac(1), args.size - 14, 1); IN_FLIGHT];
    let to_a = vec![frame(mac(1), mac(2), args.size - 14, 2); IN_FLIGHT];
    a.offer_quietly(TX, &to_b);
    b.offer_quietly(TX, &to_a);
    a.kick(TX);
    b.kick(TX);
    println!("ready");
    let start = Instant::now();
    let mut second = start + Duration::from_secs(1);
    let mut cleared = start;
    let (mut at_a, mut at_b) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs(args.secs) {
        for vm in [&mut a, &mut b] {
            vm.recycle(TX);
        }
        at_a += a.recycle(RX) as u64;
        at_b += b.recycle(RX) as u64;
        let now = Instant::now();
        if let Some((la, lb)) = &logs {
            if now - cleared >= CLEAR_EVERY {
                la.clear();
                lb.clear();
                cleared = now;
            }
        }
        if now >= second {
            println!("{}", serde_json::json!({ "a": at_a, "b": at_b }));
            (at_a, at_b) = (0, 0);
            second += Duration::from_secs(1);
        }
    }
    if let Some((la, lb)) = &logs {
        // The log must have been written to, or the run measured nothing.
        if la.marked().is_empty() || lb.marked().is_empty() {
            eprintln!("vs-probe: the switch marked no page in a log while it logged");
            std::process::exit(1);
        }
    }
}

/// A frame from A to B carrying sequence number `seq` first in its payload.
fn numbered(seq: u64, size: usize) -> Vec<u8> {
    let mut f = frame(mac(2), mac(1), size - 14, 0);
    f[14..22].copy_from_slice(&seq.to_le_bytes());
    f
}

/// The `gap` mode.
fn gap(args: &Args) {
    const IN_FLIGHT: usize = 128;
    const GAP: Duration = Duration::from_millis(1);
    let opts = VmOptions {
        strict: false,
        ..VmOptions::default()
    };
    let listeners = args.accept.then(|| {
        (
            UnixListener::bind(&args.a).expect("bind --a"),
            UnixListener::bind(&args.b).expect("bind --b"),
        )
    });
    let connect = |listeners: &Option<(UnixListener, UnixListener)>| match listeners {
        Some((la, lb)) => (
            TestVm::accept(la, mac(1), opts),
            TestVm::accept(lb, mac(2), opts),
        ),
        None => (
            TestVm::connect(&args.a, mac(1), opts),
            TestVm::connect(&args.b, mac(2), opts),
        ),
    };
    let (mut a, mut b) = connect(&listeners);
    let start_pair = |a: &mut TestVm, b: &mut TestVm, next: &mut u64| {
        a.post_rx(RX, 16, 2048);
        b.post_rx(RX, SINK_BUFS, 2048);
        introduce(a, b, 2048);
        let first: Vec<Vec<u8>> = (0..IN_FLIGHT as u64)
            .map(|i| numbered(*next + i, args.size))
            .collect();
        *next += IN_FLIGHT as u64;
        a.offer_quietly(TX, &first);
        a.kick(TX);
    };
    let mut next = 1u64;
    start_pair(&mut a, &mut b, &mut next);
    println!("ready");
    let start = Instant::now();
    let (mut expected, mut lost, mut disorder, mut received) = (1u64, 0u64, 0u64, 0u64);
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    // Chains on A's TX ring not given back yet.
    let mut on_ring = IN_FLIGHT as u64;
    while start.elapsed() < Duration::from_secs(args.secs) {
        on_ring -= a.reap_tx(TX) as u64;
        // Frames sent and not yet seen by B (those lost are seen as such once a later one
        // comes).
        let unseen = next - expected;
        let more = (IN_FLIGHT as u64 - on_ring).min((IN_FLIGHT as u64).saturating_sub(unseen));
        if more > 0 {
            let frames: Vec<Vec<u8>> = (0..more).map(|i| numbered(next + i, args.size)).collect();
            next += more;
            on_ring += more;
            a.offer_quietly(TX, &frames);
            a.kick(TX);
        }
        let got = b.recv(RX);
        if !got.is_empty() {
            let now = Instant::now();
            let quiet = now - last;
            if quiet > GAP {
                println!(
                    "{}",
                    serde_json::json!({
                        "gap_ms": quiet.as_secs_f64() * 1e3,
                        "at_s": (last - start).as_secs_f64(),
                    })
                );
            }
            longest = longest.max(quiet);
            last = now;
            b.post_rx(RX, got.len(), 2048);
        }
        for r in &got {
            let seq = r
                .frame
                .get(14..22)
                .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])));
            received += 1;
            match seq.cmp(&expected) {
                std::cmp::Ordering::Equal => expected += 1,
                std::cmp::Ordering::Greater => {
                    lost += seq - expected;
                    expected = seq + 1;
                }
                std::cmp::Ordering::Less => disorder += 1,
            }
        }
        // A restarted switch connects again: carry on with the next numbers.
        if let Some((la, _)) = &listeners {
            la.set_nonblocking(true).expect("non-blocking listener");
            if let Ok((stream, _)) = la.accept() {
                stream.set_nonblocking(false).expect("blocking stream");
                let frontend = vhost::vhost_user::Frontend::from_stream(stream, 2);
                a = TestVm::handshake(frontend, mac(1), opts);
                b = TestVm::accept(&listeners.as_ref().unwrap().1, mac(2), opts);
                start_pair(&mut a, &mut b, &mut next);
                on_ring = IN_FLIGHT as u64;
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "sent": next - 1,
            "received": received,
            "lost": lost,
            "out_of_order": disorder,
            "longest_gap_ms": longest.as_secs_f64() * 1e3,
        })
    );
}

/// The `mirror` mode.
fn mirror(args: &Args) {
    // At most 64 frames each of A and B in flight: whatever C misses while this process is
    // not running (it shares its core), the 128 copies those make fit in C's RX ring.
    const IN_FLIGHT: usize = 64;
    let opts = VmOptions {
        strict: false,
        ..VmOptions::default()
    };
    let (mut a, mut b) = pair(args, opts, opts);
    let mut c = TestVm::connect(&args.c, mac(9), opts);
    for vm in [&mut a, &mut b, &mut c] {
        vm.post_rx(RX, SINK_BUFS, 2048);
    }
    introduce(&mut a, &mut b, 2048);
    // What the introduction copied to C.
    std::thread::sleep(Duration::from_millis(100));
    c.recycle(RX);
    let to_b = vec![frame(mac(2), mac(1), args.size - 14, 1); IN_FLIGHT];
    let to_a = vec![frame(mac(1), mac(2), args.size - 14, 2); IN_FLIGHT];
    println!("ready");
    a.offer_quietly(TX, &to_b);
    b.offer_quietly(TX, &to_a);
    a.kick(TX);
    b.kick(TX);
    let start = Instant::now();
    let mut offered = 2 * IN_FLIGHT as u64;
    let mut second = start + Duration::from_secs(1);
    let (mut at_a, mut at_b, mut at_c, mut sent) = (0u64, 0u64, 0u64, offered);
    let mut totals = [0u64; 4];
    let mut turn = 0usize;
    let (mut last_loop, mut longest) = (Instant::now(), Duration::ZERO);
    while start.elapsed() < Duration::from_secs(args.secs) {
        let now = Instant::now();
        longest = longest.max(now - last_loop);
        last_loop = now;
        // C first: its copies of the last turn are taken before more are made.
        at_c += c.recycle(RX) as u64;
        // Frames due by now, paced by the clock; A and B take turns. After this process was
        // off its core it catches up no faster than C takes copies, at most 64 frames a
        // turn; a backlog over 100 ms is let go (the rate printed shows it).
        let due = (start.elapsed().as_nanos() * u128::from(args.pps) / 1_000_000_000) as u64;
        offered = offered.max(due.saturating_sub(args.pps / 10));
        let mut budget = (due.saturating_sub(offered) as usize).min(IN_FLIGHT);
        for _ in 0..2 {
            if budget == 0 {
                break;
            }
            let vm = if turn.is_multiple_of(2) {
                &mut a
            } else {
                &mut b
            };
            turn += 1;
            let n = vm.recycle_at_most(TX, budget.div_ceil(2));
            budget -= n;
            offered += n as u64;
            sent += n as u64;
        }
        at_a += a.recycle(RX) as u64;
        at_b += b.recycle(RX) as u64;
        at_c += c.recycle(RX) as u64;
        let now = Instant::now();
        if now >= second {
            // The longest turn of this loop: over a ring's worth of frames, C's ring fills.
            println!(
                "{}",
                serde_json::json!({ "offered": sent, "a": at_a, "b": at_b, "c": at_c,
                    "longest_turn_us": longest.as_micros() as u64 })
            );
            longest = Duration::ZERO;
            totals[0] += sent;
            totals[1] += at_a;
            totals[2] += at_b;
            totals[3] += at_c;
            (at_a, at_b, at_c, sent) = (0, 0, 0, 0);
            second += Duration::from_secs(1);
        }
    }
    // What is still on its way, then the totals.
    std::thread::sleep(Duration::from_millis(200));
    totals[0] += sent;
    totals[1] += at_a + a.recycle(RX) as u64;
    totals[2] += at_b + b.recycle(RX) as u64;
    totals[3] += at_c + c.recycle(RX) as u64;
    println!(
        "{}",
        serde_json::json!({ "total": { "offered": totals[0], "a": totals[1], "b": totals[2], "c": totals[3] } })
    );
}

/// The `memcpy` mode.
fn memcpy(args: &Args) {
    vringswitch_switch::affinity::pin_current_thread(args.core).expect("pin to --core");
    let n = args.size;
    let src: Vec<Vec<u8>> = (0..32).map(|i| vec![i as u8; n]).collect();
    let mut dst: Vec<Vec<u8>> = (0..64).map(|_| vec![0u8; n]).collect();
    let tsc = || {
        // SAFETY: RDTSC has no preconditions; it reads the time-stamp counter.
        #[allow(unsafe_code)]
        unsafe {
            std::arch::x86_64::_rdtsc()
        }
    };
    let (start, t0) = (Instant::now(), tsc());
    let mut copies = 0u64;
    while start.elapsed() < Duration::from_secs(args.secs) {
        for i in 0..64 {
            let (s, d) = (&src[i % 32], &mut dst[i]);
            // SAFETY: both buffers are `n` bytes long and distinct allocations.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::copy(s.as_ptr(), d.as_mut_ptr(), n)
            };
        }
        copies += 64;
        std::hint::black_box(&mut dst);
    }
    let cycles = tsc() - t0;
    println!(
        "{}",
        serde_json::json!({ "size": n, "copies": copies, "cycles_per_copy": cycles as f64 / copies as f64 })
    );
}

fn main() {
    let args = parse_args();
    if args.mode == "floor" {
        return floor(&args);
    }
    if args.mode == "tso" {
        return tso(&args);
    }
    if args.mode == "memcpy" {
        return memcpy(&args);
    }
    if args.mode == "sink" {
        return sink(&args);
    }
    if args.mode == "stream" {
        return stream(&args);
    }
    if args.mode == "mirror" {
        return mirror(&args);
    }
    if args.mode == "gap" {
        return gap(&args);
    }
    let (mut a, mut b) = attach(&args);
    match args.mode.as_str() {
        "latency" => latency(&args, &mut a, &mut b),
        _ => {
            println!("ready");
            std::thread::sleep(Duration::from_secs(args.secs));
        }
    }
}
