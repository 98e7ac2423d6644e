//! Packet capture, checked by an independent reader: what `vringswitch_control::pcapng`
//! writes, tshark (Debian's `tshark`) reads back frame by frame, with lengths, addresses,
//! direction and time. The capture endpoint itself is not there yet (issue 29); this
//! suite holds its file format to Wireshark's reading of it.

use std::process::Command;

use vringswitch_control::pcapng::{interface, packet, section_header, Direction};
use vringswitch_tests::daemon::TempDir;
use vringswitch_tests::{frame, mac};

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
