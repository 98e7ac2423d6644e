//! Packet capture of a running daemon, read by an independent reader: tshark (Debian's
//! `tshark`) reads what `vringctl capture` writes, frame by frame, with lengths, addresses,
//! VLAN tags, direction and time; a stalled reader loses capture frames, counted, and
//! never traffic. The file format on its own is held to tshark's reading too.

use std::io::Read;
use std::process::{Command, Stdio};

use serde_json::json;
use vringswitch_control::pcapng::{interface, packet, section_header, Direction, StreamSummary};
use vringswitch_tests::api::{assert_error, call};
use vringswitch_tests::daemon::{vringctl, TempDir};
use vringswitch_tests::frontend::TestVm;
use vringswitch_tests::setup::{Setup, T};
use vringswitch_tests::{frame, mac, tag, wait_until, BROADCAST};

fn tshark(file: &std::path::Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(file)
        .args(["-T", "fields", "-E", "separator=|"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run tshark ({e}): install it with `apt-get install tshark` \
             (scripts/test.sh does)"
        )
    });
    assert!(
        out.status.success(),
        "tshark could not read the capture: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect()
}

#[test]
fn tshark_reads_every_frame_with_its_lengths_addresses_direction_and_time() {
    let dir = TempDir::new("pcapng");
    let mut out = Vec::new();
    section_header(&mut out, "vringswitch test capture");
    interface(&mut out, "vm1", 128);
    interface(&mut out, "vm2", 65535);
    let whole = frame(mac(2), mac(1), 60, 7);
    let long = frame(mac(1), mac(2), 1500, 8);
    // 2026-12-01T00:00:00Z plus 1.5 µs.
    let ns = 1_796_083_200_000_001_500u64;
    packet(
        &mut out,
        0,
        ns,
        Direction::FromVm,
        &whole,
        whole.len() as u32,
    );
    packet(
        &mut out,
        1,
        ns + 1000,
        Direction::ToVm,
        &long[..128],
        long.len() as u32,
    );
    let file = dir.path().join("c.pcapng");
    std::fs::write(&file, &out).unwrap();

    let rows = tshark(
        &file,
        &[
            "frame.interface_name",
            "frame.len",
            "frame.cap_len",
            "eth.src",
            "eth.dst",
            "frame.packet_flags_direction",
            "frame.time_epoch",
        ],
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    let direction = |v: &str| {
        v.trim_start_matches("0x")
            .trim_start_matches('0')
            .to_owned()
    };
    assert_eq!(
        &rows[0][..5],
        [
            "vm1",
            &whole.len().to_string(),
            &whole.len().to_string(),
            "02:00:00:00:00:01",
            "02:00:00:00:00:02"
        ]
    );
    assert_eq!(direction(&rows[0][5]), "1", "inbound: {rows:?}");
    assert_eq!(
        &rows[1][..5],
        [
            "vm2",
            &long.len().to_string(),
            "128",
            "02:00:00:00:00:02",
            "02:00:00:00:00:01"
        ]
    );
    assert_eq!(direction(&rows[1][5]), "2", "outbound: {rows:?}");
    assert!(rows[0][6].starts_with("1796083200.0000015"), "{rows:?}");
    assert!(rows[1][6].starts_with("1796083200.0000025"), "{rows:?}");
}

/// Waits until the daemon has started its `n`th capture.
fn wait_capture_started(s: &Setup, n: usize) {
    wait_until(T, "the capture to start", || {
        (s.daemon
            .log_text()
            .matches("packet capture started")
            .count()
            >= n)
            .then_some(())
    });
}

/// `vringctl capture ARGS` against the daemon of `s`, running.
fn start_vringctl_capture(s: &Setup, args: &[&str]) -> std::process::Child {
    Command::new(vringctl())
        .arg("--api")
        .arg(&s.daemon.api)
        .arg("capture")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vringctl capture")
}

/// Waits for `child` (vringctl capture, or a pipeline ending in it) to exit successfully;
/// returns its stderr.
fn finished(mut child: std::process::Child) -> String {
    let status = wait_until(T, "the capture to end", || child.try_wait().unwrap());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "the capture failed: {err}");
    err
}

#[test]
fn vringctl_captures_a_trunk_port_both_ways_with_its_tags_as_seen_on_the_port() {
    let s = Setup::new("capture-vlan", &[("br0", &["a", "t"])], 1);
    for (port, vlan) in [
        ("a", json!({"mode": "access", "tag": 10})),
        ("t", json!({"mode": "trunk", "tags": [10]})),
    ] {
        let (code, got) = call(
            &s.daemon,
            "PATCH",
            &format!("/v1/ports/{port}"),
            Some(json!({ "vlan": vlan })),
        );
        assert_eq!(code, 200, "{got}");
    }
    let (mut a, mut t) = (s.vm("a", 1), s.vm("t", 2));
    s.wait_connected(&["a", "t"]);
    let file = s.dir.path().join("t.pcapng");
    let child = start_vringctl_capture(&s, &["t", "-c", "3", "-w", file.to_str().unwrap()]);
    wait_capture_started(&s, 1);

    // Untagged from the access port: delivered to the trunk with tag 10 pushed.
    let from_a = frame(BROADCAST, mac(1), 100, 1);
    a.send(TestVm::tx(0), &from_a);
    let to_t = t.expect_frames(TestVm::rx(0), 1, T);
    assert_eq!(to_t[0].frame, tag(&from_a, 10, 0));
    // Tagged from the trunk: delivered to the access port untagged.
    let from_t = tag(&frame(mac(1), mac(2), 1400, 2), 10, 5);
    t.send(TestVm::tx(0), &from_t);
    t.send(TestVm::tx(0), &from_t);
    a.expect_frames(TestVm::rx(0), 2, T);

    let err = finished(child);
    assert!(err.contains("3 frames captured on port t"), "{err}");
    let rows = tshark(
        &file,
        &[
            "frame.interface_name",
            "frame.packet_flags_direction",
            "frame.len",
            "eth.src",
            "vlan.id",
            "vlan.priority",
            "frame.time_epoch",
        ],
    );
    let flags = |v: &str| {
        v.trim_start_matches("0x")
            .trim_start_matches('0')
            .to_owned()
    };
    let summary: Vec<(String, String, String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r[0].clone(),
                flags(&r[1]),
                r[2].clone(),
                r[3].clone(),
                format!("{}/{}", r[4], r[5]),
            )
        })
        .collect();
    let row = |dir: &str, len: usize, src: &str, vlan: &str| {
        (
            "t".to_owned(),
            dir.to_owned(),
            len.to_string(),
            src.to_owned(),
            vlan.to_owned(),
        )
    };
    assert_eq!(
        summary,
        [
            // Outbound (to the VM), tagged as the VM got it.
            row("2", from_a.len() + 4, "02:00:00:00:00:01", "10/0"),
            // Inbound (from the VM), as it sent it.
            row("1", from_t.len(), "02:00:00:00:00:02", "10/5"),
            row("1", from_t.len(), "02:00:00:00:00:02", "10/5"),
        ],
        "{rows:?}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let at: f64 = rows[0][6].parse().unwrap();
    assert!((now - at).abs() < 60.0, "time {at}, now {now}");
}

#[test]
fn a_capture_pipes_into_tshark_and_takes_one_direction_cut_to_the_snaplen() {
    let s = Setup::new("capture-pipe", &[("br0", &["a", "b"])], 1);
    let (mut a, mut b) = (s.vm("a", 1), s.vm("b", 2));
    s.wait_connected(&["a", "b"]);
    let file = s.dir.path().join("rx.txt");
    let pipeline = format!(
        "'{}' --api {} capture a --direction rx -c 2 --snaplen 40 | tshark -r - -T fields \
         -e frame.len -e frame.cap_len -e eth.dst > '{}'",
        vringctl().display(),
        s.daemon.api,
        file.display()
    );
    let child = Command::new("sh")
        .args(["-c", &pipeline])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_capture_started(&s, 1);
    // b's frame is delivered to a (tx on a): not taken.
    b.send(TestVm::tx(0), &frame(BROADCAST, mac(2), 60, 1));
    a.expect_frames(TestVm::rx(0), 1, T);
    for n in 0..2 {
        a.send(TestVm::tx(0), &frame(mac(2), mac(1), 200 + n, 2));
    }
    b.expect_frames(TestVm::rx(0), 2, T);
    let err = finished(child);
    assert!(err.contains("2 frames captured on port a"), "{err}");
    let text = std::fs::read_to_string(&file).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        rows,
        [
            ["214", "40", "02:00:00:00:00:02"],
            ["215", "40", "02:00:00:00:00:02"]
        ],
        "{text}"
    );
}

#[test]
fn a_stalled_reader_loses_capture_frames_counted_and_no_traffic() {
    let s = Setup::new("capture-stall", &[("br0", &["a", "b"])], 1);
    let (mut a, mut b) = (s.vm("a", 1), s.vm("b", 2));
    s.wait_connected(&["a", "b"]);
    b.send(TestVm::tx(0), &frame(BROADCAST, mac(2), 60, 1));
    a.expect_frames(TestVm::rx(0), 1, T);

    // Asked for and never read while the traffic runs.
    let url = format!(
        "http://{}/v1/ports/a/capture?direction=rx&snaplen=65535",
        s.daemon.api
    );
    let capture = ureq::get(&url).call().expect("start the capture");
    assert_eq!(capture.content_type(), "application/x-pcapng");
    wait_capture_started(&s, 1);

    const BATCHES: usize = 160;
    const BATCH: usize = 50;
    let big = frame(mac(2), mac(1), 1500, 3);
    let mut received = 0;
    for _ in 0..BATCHES {
        a.offer_quietly(TestVm::tx(0), &vec![big.clone(); BATCH]);
        a.kick(TestVm::tx(0));
        received += b.expect_frames_at_least(TestVm::rx(0), BATCH, T).len();
        a.wait_tx_done(TestVm::tx(0), T);
        b.post_rx(TestVm::rx(0), BATCH, 2048);
    }
    let sent = (BATCHES * BATCH) as u64;
    assert_eq!(received as u64, sent, "every frame reached b");
    assert_eq!(s.counter("tx_packets", "b"), sent, "b's counter");

    // Removing the port ends the capture: what was kept, then the statistics.
    let (code, body) = call(&s.daemon, "DELETE", "/v1/ports/a", None);
    assert_eq!(code, 204, "{body}");
    let mut bytes = Vec::new();
    capture
        .into_reader()
        .take(1 << 30)
        .read_to_end(&mut bytes)
        .expect("read the capture to its end");
    let mut summary = StreamSummary::default();
    assert_eq!(
        summary.whole_blocks(&bytes),
        Ok(bytes.len()),
        "whole blocks"
    );
    let dropped = summary.dropped.expect("statistics at the end");
    assert!(
        dropped > 0,
        "a stalled reader must lose capture frames: {summary:?}"
    );
    assert!(summary.packets > 0, "{summary:?}");
    assert_eq!(summary.packets + dropped, sent, "{summary:?}");
    assert_eq!(summary.received, Some(sent));
    let log = s.daemon.log_text();
    assert!(
        log.contains("packet capture ended because its port was removed"),
        "{log}"
    );
}

/// A reader that asks for a capture of 2 s and then stops reading, while enough frames
/// pass to fill every buffer between the switch and it: the capture still ends at its
/// deadline, and the port can be captured again.
#[test]
fn a_reader_that_stops_reading_keeps_no_capture_past_its_seconds() {
    let s = Setup::new("capture-stuck", &[("br0", &["a", "b"])], 1);
    let (mut a, mut b) = (s.vm("a", 1), s.vm("b", 2));
    s.wait_connected(&["a", "b"]);
    b.send(TestVm::tx(0), &frame(BROADCAST, mac(2), 60, 1));
    a.expect_frames(TestVm::rx(0), 1, T);
    let url = format!(
        "http://{}/v1/ports/a/capture?direction=rx&seconds=2",
        s.daemon.api
    );
    let started = std::time::Instant::now();
    let stuck = ureq::get(&url).call().expect("start the capture");
    wait_capture_started(&s, 1);
    // About 24 MB of frames, more than the socket buffers and the stream's queue hold.
    let big = frame(mac(2), mac(1), 1500, 3);
    for _ in 0..320 {
        a.offer_quietly(TestVm::tx(0), &vec![big.clone(); 50]);
        a.kick(TestVm::tx(0));
        b.expect_frames_at_least(TestVm::rx(0), 50, T);
        a.wait_tx_done(TestVm::tx(0), T);
        b.post_rx(TestVm::rx(0), 50, 2048);
    }
    let again = wait_until(T, "the port to be free for another capture", || {
        let url = format!("http://{}/v1/ports/a/capture?count=1", s.daemon.api);
        ureq::get(&url).call().ok()
    });
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "the second capture started before the first one's deadline"
    );
    drop(again);
    drop(stuck);
    assert!(s.daemon.log_text().contains("packet capture ended"));
}

#[test]
fn capture_requests_are_checked_and_one_capture_runs_per_port() {
    let s = Setup::new("capture-checks", &[("br0", &["a", "b"])], 1);
    let d = &s.daemon;
    for (query, says) in [
        ("direction=in", "direction \"in\" is none of rx"),
        ("snaplen=0", "snaplen 0 is not from 1 to 262144"),
        ("count=0", "count 0 would capture nothing"),
        ("seconds=100000", "seconds 100000 is not from 1 to 86400"),
        ("vlan=3", "unknown field `vlan`"),
        ("count=-1", "count"),
    ] {
        assert_error(
            call(d, "GET", &format!("/v1/ports/a/capture?{query}"), None),
            400,
            "bad_request",
            says,
        );
    }
    assert_error(
        call(d, "GET", "/v1/ports/nope/capture", None),
        404,
        "not_found",
        "nope",
    );

    let url = format!("http://{}/v1/ports/a/capture?seconds=1", d.api);
    let first = ureq::get(&url).call().expect("start a capture");
    assert_error(
        call(d, "GET", "/v1/ports/a/capture", None),
        409,
        "conflict",
        "port \"a\" is already being captured",
    );
    // Another port's capture is its own.
    let other = ureq::get(&format!("http://{}/v1/ports/b/capture?seconds=1", d.api))
        .call()
        .expect("capture b");
    // seconds=1 ends them: header blocks and statistics, no frame.
    for c in [first, other] {
        let mut bytes = Vec::new();
        c.into_reader().read_to_end(&mut bytes).unwrap();
        let mut summary = StreamSummary::default();
        assert_eq!(summary.whole_blocks(&bytes), Ok(bytes.len()));
        assert_eq!(
            summary,
            StreamSummary {
                packets: 0,
                received: Some(0),
                dropped: Some(0)
            }
        );
    }
    // Ended, so the port can be captured again.
    let again = ureq::get(&format!("http://{}/v1/ports/a/capture?count=1", d.api))
        .call()
        .expect("capture a again");
    drop(again);
    // A client that goes away ends its capture, traffic or not.
    wait_until(T, "the abandoned capture to end", || {
        let url = format!("http://{}/v1/ports/a/capture?seconds=1", d.api);
        ureq::get(&url).call().ok()
    });
}

#[test]
fn vringctl_capture_refuses_a_terminal_and_says_what_to_do() {
    // No terminal in a test run: checked through `script`, which gives vringctl one.
    let out = Command::new("script")
        .args([
            "-qec",
            &format!("'{}' capture vm1", vringctl().display()),
            "/dev/null",
        ])
        .output()
        .expect("run script(1): install it with `apt-get install bsdutils` (scripts/test.sh does)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("a capture is binary pcapng: write it to a file (-w FILE) or pipe it"),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
}
