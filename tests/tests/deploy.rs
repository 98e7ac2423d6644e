//! The files in deploy/ work with the real tools: systemd accepts the unit and its system
//! call filter lets the daemon run; Prometheus scrapes the daemon, and every expression of
//! the Grafana dashboard and of the rules returns data.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vringswitch_tests::daemon::{binary, free_port, http_get, metric_value, KillOnDrop, TempDir};
use vringswitch_tests::frontend::{TestVm, VmOptions};
use vringswitch_tests::layout::{afxdp, tap, vhost_user, vhost_user_in, Layout, SocketMode};
use vringswitch_tests::setup::{Setup, T};
use vringswitch_tests::{frame, mac, wait_until};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy(file: &str) -> PathBuf {
    repo().join("deploy").join(file)
}

/// Fails, saying how to install it, if `tool` is not on PATH.
fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is missing: install it with `apt-get install {package}` (scripts/test.sh does)"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

// ---------------------------------------------------------------------------------------
// systemd

/// The unit with ExecStart and ExecReload pointing at the binaries under test (verify
/// checks they exist).
fn unit_for_test(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(deploy("systemd/vringswitch.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/vringswitch "));
    assert!(unit.contains("ExecReload=/usr/local/bin/vringctl "));
    let unit = unit
        .replace(
            "ExecStart=/usr/local/bin/vringswitch ",
            &format!("ExecStart={} ", binary().display()),
        )
        .replace(
            "ExecReload=/usr/local/bin/vringctl ",
            &format!(
                "ExecReload={} ",
                vringswitch_tests::daemon::vringctl().display()
            ),
        );
    let path = dir.join("vringswitch.service");
    std::fs::write(&path, unit).unwrap();
    path
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    require("systemd-analyze", "systemd");
    let dir = TempDir::new("unit");
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit_for_test(dir.path())));
    assert!(!out.contains("vringswitch.service:"), "warnings: {out}");
    // With the drop-in AF_XDP ports need: its settings appended, as systemd merges them.
    let with = TempDir::new("unit-afxdp");
    let unit = std::fs::read_to_string(unit_for_test(dir.path())).unwrap();
    let dropin = std::fs::read_to_string(deploy("systemd/afxdp-ports.conf")).unwrap();
    let merged = with.path().join("vringswitch.service");
    std::fs::write(&merged, format!("{unit}\n{dropin}")).unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&merged));
    assert!(
        !out.contains("vringswitch.service:"),
        "warnings with the drop-in: {out}"
    );
    // And with the tunnels' drop-in too.
    let tunnels = std::fs::read_to_string(deploy("systemd/vxlan-ports.conf")).unwrap();
    std::fs::write(&merged, format!("{unit}\n{dropin}\n{tunnels}")).unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&merged));
    assert!(
        !out.contains("vringswitch.service:"),
        "warnings with both drop-ins: {out}"
    );
    // And with EVPN's.
    let evpn = std::fs::read_to_string(deploy("systemd/evpn-ports.conf")).unwrap();
    std::fs::write(&merged, format!("{unit}\n{dropin}\n{tunnels}\n{evpn}")).unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&merged));
    assert!(
        !out.contains("vringswitch.service:"),
        "warnings with the EVPN drop-in: {out}"
    );
}

/// The system calls in systemd's filter set `set` (e.g. `@system-service`), groups expanded.
fn syscall_set(set: &str) -> BTreeSet<String> {
    let dump = run(Command::new("systemd-analyze").arg("syscall-filter"));
    let mut groups: HashMap<String, Vec<String>> = HashMap::new();
    let mut current = None;
    for line in dump.lines() {
        if let Some(g) = line.strip_prefix('@') {
            current = Some(format!("@{}", g.trim()));
            continue;
        }
        let item = line.trim();
        if item.is_empty() || item.starts_with('#') {
            continue;
        }
        if let Some(g) = &current {
            groups.entry(g.clone()).or_default().push(item.to_owned());
        }
    }
    let mut out = BTreeSet::new();
    let mut todo = vec![set.to_owned()];
    let mut seen = BTreeSet::new();
    while let Some(g) = todo.pop() {
        if !seen.insert(g.clone()) {
            continue;
        }
        for item in groups.get(&g).unwrap_or_else(|| panic!("no group {g}")) {
            if item.starts_with('@') {
                todo.push(item.clone());
            } else {
                out.insert(item.clone());
            }
        }
    }
    out
}

#[test]
fn every_system_call_of_the_daemon_passes_the_units_filter() {
    require("strace", "strace");
    require("systemd-analyze", "systemd");
    let unit = std::fs::read_to_string(deploy("systemd/vringswitch.service")).unwrap();
    let allowed = allowed_calls(&[&unit]);
    let families = allowed_families(&[&unit]);

    // A server port with two VMs, a client port whose peer never appears, and on a bridge
    // of their own a TAP port and a VM whose broadcast floods to it (the kernel's own
    // frames come from it, and reach only that VM), under strace.
    let dir = TempDir::new("syscalls");
    let sock = |n: &str| dir.path().join(format!("{n}.sock"));
    let tap_name = format!("vsd{}", std::process::id() % 100_000);
    let toml = Layout::new()
        .bridge("br0")
        .port(vhost_user_in(
            "a",
            "br0",
            &sock("a"),
            SocketMode::Server,
            None,
        ))
        .port(vhost_user_in(
            "b",
            "br0",
            &sock("b"),
            SocketMode::Server,
            None,
        ))
        .port(vhost_user_in(
            "c",
            "br0",
            &sock("c"),
            SocketMode::Client,
            None,
        ))
        .bridge("brt")
        .port(vhost_user("e", "brt", &sock("e")))
        .port(tap("t", "brt", &tap_name))
        .toml();
    let config = dir.path().join("vringswitch.toml");
    std::fs::write(&config, toml).unwrap();
    let (mut child, trace, api) = start_traced(dir.path(), &config);
    wait_until(Duration::from_secs(30), "the daemon under strace", || {
        http_get(&api, "/healthz").ok()
    });
    let mut a = TestVm::connect(&sock("a"), mac(1), VmOptions::default());
    let mut b = TestVm::connect(&sock("b"), mac(2), VmOptions::default());
    a.post_rx(TestVm::rx(0), 16, 2048);
    b.post_rx(TestVm::rx(0), 16, 2048);
    // Connected is not enough: a port's rings are ready after its first kick.
    wait_until(Duration::from_secs(30), "a and b ready", || {
        let m = http_get(&api, "/metrics").ok()?;
        ["a", "b"]
            .iter()
            .all(|p| metric_value(&m, "vringswitch_port_ready", &[("port", p)]) == Some(1))
            .then_some(())
    });
    for i in 0..4u8 {
        a.send(TestVm::tx(0), &frame(mac(2), mac(1), 100, i));
        b.expect_frames(TestVm::rx(0), 1, Duration::from_secs(30));
        b.send(TestVm::tx(0), &frame(mac(1), mac(2), 100, i));
        a.expect_frames(TestVm::rx(0), 1, Duration::from_secs(30));
    }
    let mut e = TestVm::connect(&sock("e"), mac(5), VmOptions::default());
    e.post_rx(TestVm::rx(0), 16, 2048);
    wait_until(Duration::from_secs(30), "e ready", || {
        let m = http_get(&api, "/metrics").ok()?;
        (metric_value(&m, "vringswitch_port_ready", &[("port", "e")]) == Some(1)).then_some(())
    });
    e.send(TestVm::tx(0), &frame([0xff; 6], mac(5), 100, 0));
    wait_until(
        Duration::from_secs(30),
        "the broadcast written to the TAP",
        || {
            let m = http_get(&api, "/metrics").ok()?;
            (metric_value(&m, "vringswitch_port_tx_packets_total", &[("port", "t")]) >= Some(1))
                .then_some(())
        },
    );
    drop(a);
    let _a = TestVm::connect(&sock("a"), mac(1), VmOptions::default());
    http_get(&api, "/metrics").unwrap();
    http_get(&api, "/v1/stats").unwrap();
    // Changes over TCP are refused (the unix socket serves them), reads are not.
    let (code, text) = vringswitch_tests::daemon::http_request(
        &api,
        "POST",
        "/v1/bridges",
        Some(r#"{"name": "br1"}"#),
    );
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("api.sock"), "{text}");
    // Topology changes over the unix socket, each saved to the state file.
    let port = format!(
        r#"{{"name": "d", "bridge": "br1", "type": "vhost-user", "socket": "{}", "mode": "server"}}"#,
        sock("d").display()
    );
    for (method, path, body, status) in [
        ("POST", "/v1/bridges", Some(r#"{"name": "br1"}"#), 201),
        ("POST", "/v1/ports", Some(port.as_str()), 201),
        (
            "PATCH",
            "/v1/ports/d",
            Some(r#"{"vlan": {"mode": "access", "tag": 3}}"#),
            200,
        ),
        (
            "POST",
            "/v1/bridges/br1/fdb",
            Some(r#"{"mac": "02:00:00:00:00:33", "port": "d"}"#),
            201,
        ),
        ("DELETE", "/v1/ports/d", None, 204),
        ("DELETE", "/v1/bridges/br1", None, 204),
    ] {
        let (code, text) = vringswitch_tests::daemon::http_request_unix(
            &dir.path().join("api.sock"),
            method,
            path,
            body,
        );
        assert_eq!(code, status, "{method} {path}: {text}");
    }
    // Upgraded in place over the unix socket, as the unit's ExecReload does: the new
    // process (traced too) carries every port on.
    let (code, text) = vringswitch_tests::daemon::http_request_unix(
        &dir.path().join("api.sock"),
        "POST",
        "/v1/upgrade",
        None,
    );
    assert_eq!(code, 200, "upgrade: {text}");
    let upgraded: serde_json::Value = serde_json::from_str(&text).unwrap();
    let new_pid = upgraded["new_pid"].as_u64().unwrap() as u32;
    wait_until(Duration::from_secs(30), "the new daemon to answer", || {
        let m = http_get(&api, "/metrics").ok()?;
        (metric_value(&m, "vringswitch_port_ready", &[("port", "b")]) == Some(1)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    let (log, used) = stop_traced(&mut child, &trace, Some(new_pid));
    assert!(
        used.contains("execve") && used.contains("sendmsg") && used.contains("recvmsg"),
        "the upgrade was traced: {used:?}"
    );
    assert!(used.contains("epoll_wait") || used.contains("epoll_pwait"));
    assert!(used.contains("sched_setaffinity"), "{used:?}");
    assert!(used.contains("mmap"), "{used:?}");
    // The TAP port was opened, set up and written to.
    assert!(
        log.contains("/dev/net/tun"),
        "the TAP port's device was not opened"
    );
    assert!(
        used.contains("ioctl") && used.contains("writev"),
        "{used:?}"
    );
    let refused: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        refused.is_empty(),
        "system calls outside the unit's SystemCallFilter: {refused:?}"
    );
    let opened = families_used(&log);
    let refused: Vec<&String> = opened.difference(&families).collect();
    assert!(
        refused.is_empty(),
        "socket families outside the unit's RestrictAddressFamilies: {refused:?}"
    );
}

#[test]
fn an_afxdp_ports_system_calls_pass_the_unit_with_its_drop_in() {
    require("strace", "strace");
    require("systemd-analyze", "systemd");
    require("ip", "iproute2");
    let unit = std::fs::read_to_string(deploy("systemd/vringswitch.service")).unwrap();
    let dropin = std::fs::read_to_string(deploy("systemd/afxdp-ports.conf")).unwrap();
    assert!(
        !allowed_calls(&[&unit]).contains("bpf"),
        "the unit alone allows bpf: the drop-in would not be needed"
    );

    // A VM whose broadcast goes out of an AF_XDP port, and frames from the veth's other end
    // that come in through it.
    let dir = TempDir::new("syscalls-xdp");
    let id = std::process::id() % 100_000;
    let (outer, peer) = (format!("vsdx{id}"), format!("vsdy{id}"));
    let ip = vringswitch_tests::netns::ip;
    let _ = Command::new("ip").args(["link", "del", &outer]).output();
    ip(&["link", "add", &outer, "type", "veth", "peer", "name", &peer]);
    ip(&["link", "set", &peer, "up"]);
    struct DelLink(String);
    impl Drop for DelLink {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).output();
        }
    }
    let _veth = DelLink(outer.clone());
    let sock = dir.path().join("e.sock");
    let config = dir.path().join("vringswitch.toml");
    let toml = Layout::new()
        .bridge("br0")
        .port(vhost_user("e", "br0", &sock))
        .port(afxdp("x", "br0", &outer))
        .toml();
    std::fs::write(&config, toml).unwrap();
    let (mut child, trace, api, mut e) = traced_with_vm(dir.path(), &config, &sock);
    let counter = |name: &str| {
        let m = http_get(&api, "/metrics").ok()?;
        metric_value(&m, name, &[("port", "x")])
    };
    e.send(TestVm::tx(0), &frame([0xff; 6], mac(5), 100, 0));
    wait_until(
        Duration::from_secs(30),
        "the broadcast sent on the AF_XDP port",
        || (counter("vringswitch_port_tx_packets_total")? >= 1).then_some(()),
    );
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind(('{peer}', 0))\n\
         for _ in range(5):\n\
         \x20   s.send(b'\\xff' * 6 + b'\\x02\\x00\\x00\\x00\\x00\\x09' + b'\\x88\\xb5' + bytes(50))\n"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        Duration::from_secs(30),
        "frames received on the AF_XDP port",
        || (counter("vringswitch_port_rx_packets_total")? >= 5).then_some(()),
    );
    let (log, used) = stop_traced(&mut child, &trace, None);

    for call in ["bpf", "sendto", "mmap", "setsockopt"] {
        assert!(used.contains(call), "{call} not seen: {used:?}");
    }
    let opened = families_used(&log);
    assert!(opened.contains("AF_XDP"), "{opened:?}");
    let allowed = allowed_calls(&[&unit, &dropin]);
    let refused: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        refused.is_empty(),
        "system calls outside the unit's and the drop-in's SystemCallFilter: {refused:?}"
    );
    let families = allowed_families(&[&unit, &dropin]);
    let refused: Vec<&String> = opened.difference(&families).collect();
    assert!(
        refused.is_empty(),
        "socket families outside the unit's and the drop-in's RestrictAddressFamilies: \
         {refused:?}"
    );
}

#[test]
fn a_vxlan_ports_system_calls_pass_the_unit_and_its_socket_families() {
    require("strace", "strace");
    require("systemd-analyze", "systemd");
    require("ip", "iproute2");
    let unit = std::fs::read_to_string(deploy("systemd/vringswitch.service")).unwrap();
    let dropin = std::fs::read_to_string(deploy("systemd/vxlan-ports.conf")).unwrap();
    assert!(
        dropin.contains("CAP_NET_BIND_SERVICE") && !dropin.contains("CAP_NET_RAW"),
        "the drop-in lets a port bind under 1024, and gives nothing more: a tunnel sends \
         through UDP sockets"
    );
    // This host's tunnel address and the remote end's, on lo.
    let (here, there) = ("10.98.8.1", "10.98.8.2");
    struct DelAddr(&'static str);
    impl Drop for DelAddr {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["addr", "del", &format!("{}/32", self.0), "dev", "lo"])
                .output();
        }
    }
    let mut held = Vec::new();
    for a in [here, there] {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{a}/32"), "dev", "lo"])
            .output();
        vringswitch_tests::netns::ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"]);
        held.push(DelAddr(a));
    }
    let dir = TempDir::new("syscalls-vxlan");
    let sock = dir.path().join("e.sock");
    let config = dir.path().join("vringswitch.toml");
    let toml = Layout::new()
        .bridge("br0")
        .port(vhost_user("e", "br0", &sock))
        .port(vringswitch_tests::layout::vxlan_static(
            "t",
            "br0",
            8,
            here,
            &[there],
        ))
        .toml();
    std::fs::write(&config, toml).unwrap();
    // The remote end: a UDP socket on its address, which gets what the tunnel sends and
    // sends it one packet back.
    let remote = std::net::UdpSocket::bind((there, 4789)).unwrap();
    remote
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (mut child, trace, api, mut e) = traced_with_vm(dir.path(), &config, &sock);
    let counter = |name: &str| {
        let m = http_get(&api, "/metrics").ok()?;
        metric_value(&m, name, &[("port", "t")])
    };
    e.send(TestVm::tx(0), &frame([0xff; 6], mac(5), 100, 0));
    let mut buf = [0u8; 2048];
    let (n, from) = remote
        .recv_from(&mut buf)
        .expect("the broadcast through the tunnel");
    assert_eq!(from.ip().to_string(), here);
    assert_eq!(
        &buf[..8],
        &[0x08, 0, 0, 0, 0, 0, 8, 0],
        "VXLAN header of VNI 8"
    );
    assert_eq!(n, 8 + 114);
    let inner = frame(mac(5), mac(9), 50, 1);
    remote
        .send_to(
            &[&[0x08, 0, 0, 0, 0, 0, 8, 0][..], &inner].concat(),
            (here, 4789),
        )
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the frame received on the tunnel",
        || (counter("vringswitch_port_rx_packets_total")? >= 1).then_some(()),
    );
    let (log, used) = stop_traced(&mut child, &trace, None);
    for call in ["recvmmsg", "sendmmsg"] {
        assert!(used.contains(call), "{call} not seen: {used:?}");
    }
    let allowed = allowed_calls(&[&unit, &dropin]);
    let refused: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        refused.is_empty(),
        "system calls outside the unit's SystemCallFilter: {refused:?}"
    );
    let opened = families_used(&log);
    let families = allowed_families(&[&unit, &dropin]);
    let refused: Vec<&String> = opened.difference(&families).collect();
    assert!(
        refused.is_empty(),
        "socket families outside the unit's RestrictAddressFamilies: {refused:?}"
    );
    drop(held);
}

#[test]
fn an_evpn_ports_system_calls_pass_the_unit_and_its_drop_ins() {
    require("strace", "strace");
    require("systemd-analyze", "systemd");
    require("ip", "iproute2");
    let unit = std::fs::read_to_string(deploy("systemd/vringswitch.service")).unwrap();
    let tunnels = std::fs::read_to_string(deploy("systemd/vxlan-ports.conf")).unwrap();
    let evpn = std::fs::read_to_string(deploy("systemd/evpn-ports.conf")).unwrap();
    assert!(evpn.contains("CAP_NET_ADMIN") && evpn.contains("AF_NETLINK"));
    // A namespace of its own, the tunnel address on its loopback; no FRR (the control
    // makes its mirror, reads it, and forwards on nothing, stale).
    let ns =
        vringswitch_tests::netns::Netns::new(&format!("vs-evsys-{}", std::process::id() % 100_000));
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["addr", "add", "10.98.7.1/32", "dev", "lo"]);
    let dir = TempDir::new("syscalls-evpn");
    let sock = dir.path().join("e.sock");
    let config = dir.path().join("vringswitch.toml");
    let toml = Layout::new()
        .bridge("br0")
        .port(vhost_user("e", "br0", &sock))
        .port(vringswitch_tests::layout::vxlan_evpn(
            "t",
            "br0",
            7,
            "10.98.7.1".parse().unwrap(),
        ))
        .evpn(&dir.path().join("no-frr"), 120)
        .toml();
    std::fs::write(&config, toml).unwrap();
    let (mut child, trace, api) = start_traced_in(dir.path(), &config, Some(&ns.0));
    wait_until(Duration::from_secs(30), "the daemon under strace", || {
        http_get(&api, "/healthz").ok()
    });
    let mut e = TestVm::connect(&sock, mac(5), VmOptions::default());
    e.post_rx(TestVm::rx(0), 64, 2048);
    // The VM's address learnt and advertised on the mirror; the control stale (no FRR).
    e.send(TestVm::tx(0), &frame([0xff; 6], mac(5), 100, 0));
    wait_until(Duration::from_secs(30), "the address advertised", || {
        let (_, port) = vringswitch_tests::daemon::http_request(&api, "GET", "/v1/ports/t", None);
        let v: serde_json::Value = serde_json::from_str(&port).ok()?;
        (v["evpn"]["advertised"] == 1 && v["evpn"]["state"] == "stale").then_some(())
    });
    let fdb = Command::new("ip")
        .args([
            "netns", "exec", &ns.0, "bridge", "fdb", "show", "dev", "vsa7",
        ])
        .output()
        .unwrap();
    let fdb = String::from_utf8_lossy(&fdb.stdout).into_owned();
    assert!(
        fdb.contains("02:00:00:00:00:05 master vsb7 static"),
        "{fdb}"
    );
    let (log, used) = stop_traced(&mut child, &trace, None);
    assert!(
        used.contains("sendto") || used.contains("sendmsg"),
        "{used:?}"
    );
    let allowed = allowed_calls(&[&unit, &tunnels, &evpn]);
    let refused: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        refused.is_empty(),
        "system calls outside the unit's SystemCallFilter: {refused:?}"
    );
    let opened = families_used(&log);
    assert!(opened.contains("AF_NETLINK"), "{opened:?}");
    let families = allowed_families(&[&unit, &tunnels, &evpn]);
    let refused: Vec<&String> = opened.difference(&families).collect();
    assert!(
        refused.is_empty(),
        "socket families outside the unit's RestrictAddressFamilies: {refused:?}"
    );
}

/// An EVPN tunnel port `evpn` added over the API (VNI `vni`, tunnel address `local` put
/// on lo); on drop the port is deleted, and the address and its mirror's interfaces go
/// whatever became of the daemon.
struct EvpnPort {
    api: String,
    local: &'static str,
    vni: u32,
}

impl EvpnPort {
    fn add(d: &vringswitch_tests::daemon::Daemon, local: &'static str, vni: u32) -> EvpnPort {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{local}/32"), "dev", "lo"])
            .output();
        vringswitch_tests::netns::ip(&["addr", "add", &format!("{local}/32"), "dev", "lo"]);
        let guard = EvpnPort {
            api: d.api.clone(),
            local,
            vni,
        };
        let body = format!(
            r#"{{"name": "evpn", "bridge": "br0", "type": "vxlan", "vni": {vni}, "local": "{local}"}}"#
        );
        let (code, text) =
            vringswitch_tests::daemon::http_request(&d.api, "POST", "/v1/ports", Some(&body));
        assert_eq!(code, 201, "{text}");
        guard
    }
}

impl Drop for EvpnPort {
    fn drop(&mut self) {
        // Deleted, the port takes its mirror with it; the daemon may be gone already.
        let _ = std::panic::catch_unwind(|| {
            vringswitch_tests::daemon::http_request(&self.api, "DELETE", "/v1/ports/evpn", None)
        });
        for dev in ["vsa", "vsx", "vsb"] {
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{dev}{}", self.vni)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.local), "dev", "lo"])
            .output();
    }
}

/// What the `SystemCallFilter=` lines of `units` (a unit and its drop-ins) allow, groups
/// expanded.
fn allowed_calls(units: &[&str]) -> BTreeSet<String> {
    let filter: Vec<&str> = units
        .iter()
        .flat_map(|u| u.lines())
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(!filter.is_empty(), "the unit has no SystemCallFilter");
    let mut allowed = BTreeSet::new();
    for f in filter {
        if f.starts_with('@') {
            allowed.extend(syscall_set(f));
        } else {
            allowed.insert(f.to_owned());
        }
    }
    allowed
}

/// The socket families the `RestrictAddressFamilies=` lines of `units` allow.
fn allowed_families(units: &[&str]) -> BTreeSet<String> {
    let families: BTreeSet<String> = units
        .iter()
        .flat_map(|u| u.lines())
        .filter_map(|l| l.strip_prefix("RestrictAddressFamilies="))
        .flat_map(str::split_whitespace)
        .map(str::to_owned)
        .collect();
    assert!(
        !families.is_empty(),
        "the unit has no RestrictAddressFamilies"
    );
    families
}

/// The families of the sockets an strace log shows opened (`socket(AF_XDP, ...`).
fn families_used(log: &str) -> BTreeSet<String> {
    log.match_indices("socket(AF_")
        .filter_map(|(i, m)| {
            let rest = &log[i + m.len() - 3..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
            Some(rest[..end].to_owned())
        })
        .collect()
}

/// The daemon, run with `config` under `strace -f` as the unit runs it (a state file and the
/// API's unix socket in `dir`). Returns strace, its log's path and the API's address.
/// [`start_traced`], once the daemon answers, with test VM `e` (MAC 5) on `sock` and its
/// port ready.
fn traced_with_vm(dir: &Path, config: &Path, sock: &Path) -> (KillOnDrop, PathBuf, String, TestVm) {
    let (child, trace, api) = start_traced(dir, config);
    wait_until(Duration::from_secs(30), "the daemon under strace", || {
        http_get(&api, "/healthz").ok()
    });
    let mut e = TestVm::connect(sock, mac(5), VmOptions::default());
    e.post_rx(TestVm::rx(0), 64, 2048);
    wait_until(Duration::from_secs(30), "e ready", || {
        let m = http_get(&api, "/metrics").ok()?;
        (metric_value(&m, "vringswitch_port_ready", &[("port", "e")]) == Some(1)).then_some(())
    });
    (child, trace, api, e)
}

fn start_traced(dir: &Path, config: &Path) -> (KillOnDrop, PathBuf, String) {
    start_traced_in(dir, config, None)
}

/// [`start_traced`] in network namespace `netns` if given (then the API to use is the
/// unix socket, returned instead of the TCP address).
fn start_traced_in(
    dir: &Path,
    config: &Path,
    netns: Option<&str>,
) -> (KillOnDrop, PathBuf, String) {
    let trace = dir.join("strace.log");
    let tcp = format!("127.0.0.1:{}", free_port());
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "strace"]);
            c
        }
        None => Command::new("strace"),
    };
    let api = match netns {
        Some(_) => dir.join("api.sock").display().to_string(),
        None => tcp.clone(),
    };
    let child = cmd
        .process_group(0)
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .arg("--")
        .arg(binary())
        .arg("--config")
        .arg(config)
        .arg("--api")
        .arg(&tcp)
        // As the unit runs it: a state file and the API's unix socket.
        .arg("--state")
        .arg(dir.join("state/state.json"))
        .arg("--api-socket")
        .arg(dir.join("api.sock"))
        .arg("--socket-dir")
        .arg(dir)
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    (child, trace, api)
}

/// Stops the traced daemon with SIGTERM (it must exit cleanly) and returns strace's log and
/// the system calls in it. The daemon is `upgraded` (the pid an upgrade gave it), else
/// strace's child.
fn stop_traced(
    child: &mut KillOnDrop,
    trace: &Path,
    upgraded: Option<u32>,
) -> (String, BTreeSet<String>) {
    // SIGTERM goes to the daemon; strace exits once every process it traces has, with the
    // status of its own child (the daemon as started, which an upgrade ends with 0).
    let strace = child.0.id();
    let daemon = match upgraded {
        Some(pid) => pid.to_string(),
        None => std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
            .unwrap()
            .trim()
            .to_owned(),
    };
    assert!(!daemon.is_empty() && !daemon.contains(' '), "{daemon:?}");
    let ok = Command::new("kill")
        .args(["-TERM", &daemon])
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(child.0.wait().unwrap().success(), "the daemon failed");

    let log = std::fs::read_to_string(trace).unwrap();
    let mut used = BTreeSet::new();
    for line in log.lines() {
        // "PID  name(args" or "PID  <... name resumed>"
        let rest = line.split_once(' ').map_or("", |(_, r)| r.trim_start());
        let name = rest
            .strip_prefix("<... ")
            .unwrap_or(rest)
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("");
        if !name.is_empty() && rest.len() > name.len() {
            used.insert(name.to_owned());
        }
    }
    (log, used)
}

// ---------------------------------------------------------------------------------------
// Prometheus

/// Percent-encodes a PromQL expression for a query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn prom_query(prom: &str, expr: &str) -> Vec<Value> {
    let body = http_get(prom, &format!("/api/v1/query?query={}", encode(expr)))
        .unwrap_or_else(|e| panic!("query {expr}: {e}"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{expr}: {body}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// The expression to the left of an alert's final comparison against a constant: the signal
/// the alert watches, which must return data even when the alert does not fire.
fn signal_of(expr: &str) -> &str {
    for op in [" > ", " < ", " == ", " >= ", " <= ", " != "] {
        if let Some((lhs, rhs)) = expr.rsplit_once(op) {
            if rhs.trim().parse::<f64>().is_ok() {
                return lhs.trim();
            }
        }
    }
    expr
}

/// Every `expr` in the dashboard, with Grafana's `$__rate_interval` and the dashboard's
/// variables (`$job`, `$instance`) made concrete.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("grafana/vringswitch-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut out = Vec::new();
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["job", "instance"]);
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let e = t["expr"].as_str().expect("expr");
            // Every series is of the host picked, so that several hosts never merge.
            if e.contains("vringswitch_") {
                assert!(
                    e.contains(r#"instance=~"$instance""#) && e.contains(r#"job=~"$job""#),
                    "{e} does not select the dashboard's host"
                );
            }
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".+")
                .replace("$job", "vringswitch");
            assert!(!e.contains('$'), "{e}");
            out.push(e);
        }
    }
    assert!(out.len() >= 10, "{out:?}");
    out
}

/// (name, expr, is_alert) of every rule. The rules file keeps to a simple YAML subset
/// (one-line or folded `expr`), read line by line; the count is checked against what
/// Prometheus itself loaded.
fn rules() -> Vec<(String, String, bool)> {
    let text = std::fs::read_to_string(deploy("prometheus/vringswitch.rules.yml")).unwrap();
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    let mut name: Option<(String, bool)> = None;
    while let Some(line) = lines.next() {
        let t = line.trim_start().trim_start_matches("- ");
        if let Some(n) = t.strip_prefix("record: ") {
            name = Some((n.trim().to_owned(), false));
        } else if let Some(n) = t.strip_prefix("alert: ") {
            name = Some((n.trim().to_owned(), true));
        } else if let Some(e) = t.strip_prefix("expr:") {
            let (n, alert) = name.take().expect("expr after record or alert");
            let mut expr = e.trim().to_owned();
            if expr == ">" {
                // A folded block: the indented lines that follow.
                expr.clear();
                let indent = line.len() - line.trim_start().len();
                while let Some(next) = lines.peek() {
                    if next.len() - next.trim_start().len() <= indent || next.trim().is_empty() {
                        break;
                    }
                    expr.push_str(next.trim());
                    expr.push(' ');
                    lines.next();
                }
            }
            out.push((n, expr.trim().to_owned(), alert));
        }
    }
    assert!(out.iter().filter(|r| r.2).count() >= 3, "{out:?}");
    out
}

#[test]
fn promtool_accepts_the_rules_the_config_and_the_metrics() {
    require("promtool", "prometheus");
    run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy("prometheus/vringswitch.rules.yml")));
    run(Command::new("promtool")
        .args(["check", "config"])
        .arg(deploy("prometheus/prometheus.yml")));
    // The rules' own unit tests: which drops page someone and which do not, per host.
    run(Command::new("promtool")
        .current_dir(deploy("prometheus"))
        .args(["test", "rules", "vringswitch.rules.test.yml"]));
    let s = Setup::new("promtool", &[("br0", &["a", "b"])], 1);
    let mut a = s.vm("a", 1);
    let mut b = s.vm("b", 2);
    s.wait_connected(&["a", "b"]);
    a.send(TestVm::tx(0), &frame(mac(2), mac(1), 100, 0));
    b.expect_frames(TestVm::rx(0), 1, T);
    let metrics = s.daemon.metrics();
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_scrapes_and_every_dashboard_and_rule_expression_returns_data() {
    require("prometheus", "prometheus");
    // c never connects: it is the port that is down, and flooding to it drops frames. d
    // never connects either, but the operator set it down: no alert is expected for it.
    let s = Setup::new("prometheus", &[("br0", &["a", "b", "c", "d"])], 1);
    let (code, text) = vringswitch_tests::daemon::http_request(
        &s.daemon.api,
        "PATCH",
        "/v1/ports/d",
        Some(r#"{"admin": "down"}"#),
    );
    assert_eq!(code, 200, "{text}");
    let mut a = s.vm("a", 1);
    let mut b = s.vm("b", 2);
    s.wait_connected(&["a", "b"]);
    // An EVPN tunnel port without FRR: its control stale, its series there. Its address on
    // lo and its kernel mirror are taken away however the test ends.
    let _evpn = EvpnPort::add(&s.daemon, "10.98.6.1", 6);

    let dir = TempDir::new("prom");
    let config = std::fs::read_to_string(deploy("prometheus/prometheus.yml")).unwrap();
    let rules_file = deploy("prometheus/vringswitch.rules.yml");
    let mut patched = config.clone();
    for (from, to) in [
        ("scrape_interval: 5s", "scrape_interval: 1s".to_owned()),
        (
            "evaluation_interval: 5s",
            "evaluation_interval: 1s".to_owned(),
        ),
        ("\"127.0.0.1:9180\"", format!("\"{}\"", s.daemon.api)),
        (
            "- vringswitch.rules.yml",
            format!("- {}", rules_file.display()),
        ),
    ] {
        assert!(
            patched.contains(from),
            "prometheus.yml no longer has {from}"
        );
        patched = patched.replace(from, &to);
    }
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, patched).unwrap();
    let prom = format!("127.0.0.1:{}", free_port());
    let child = Command::new("prometheus")
        .process_group(0)
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={prom}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    let _prometheus = KillOnDrop(child);
    wait_until(Duration::from_secs(30), "Prometheus ready", || {
        http_get(&prom, "/-/ready").ok()
    });

    // Every expression that must return data: the dashboard's, the recording rules' (both
    // the expression and the recorded series), the alerts that this setup makes fire (port
    // c is down and drops frames), and the watched signal of the others.
    let mut exprs: Vec<String> = dashboard_exprs();
    let firing = [
        "VringswitchPortDown",
        "VringswitchDropsRising",
        "VringswitchRxRingFull",
    ];
    for (name, expr, alert) in rules() {
        if alert {
            exprs.push(signal_of(&expr).to_owned());
            if firing.contains(&name.as_str()) {
                exprs.push(expr);
            }
        } else {
            exprs.push(expr);
            exprs.push(name);
        }
    }

    // Traffic a -> b, a flood that reaches c (down: port_down drops, which DropsRising
    // leaves out), a frame from a group address (invalid_src_mac: DropsRising), and b -> a,
    // which a never takes (its RX ring fills up: RxRingFull), until everything has data.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0u8;
    let mut empty: Vec<String>;
    loop {
        for _ in 0..5 {
            a.send(TestVm::tx(0), &frame(mac(2), mac(1), 100, round));
            a.send(TestVm::tx(0), &frame(mac(9), mac(1), 100, round));
            a.send(
                TestVm::tx(0),
                &frame(mac(2), [0x01, 0, 0x5e, 0, 0, 1], 100, round),
            );
            a.wait_tx_done(TestVm::tx(0), T);
            b.send(TestVm::tx(0), &frame(mac(1), mac(2), 100, round));
            b.wait_tx_done(TestVm::tx(0), T);
            let got = b.recv(TestVm::rx(0)).len();
            b.post_rx(TestVm::rx(0), got, 2048);
            round = round.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(100));
        }
        empty = exprs
            .iter()
            .filter(|e| prom_query(&prom, e).is_empty())
            .cloned()
            .collect();
        if empty.is_empty() || Instant::now() > deadline {
            break;
        }
    }
    let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    assert!(
        empty.is_empty(),
        "no data for: {empty:#?}\nPrometheus log:\n{log}"
    );

    // The target is up, and every rule evaluates without error.
    let up = prom_query(&prom, "up{job=\"vringswitch\"}");
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
    let loaded: Value = serde_json::from_str(&http_get(&prom, "/api/v1/rules").unwrap()).unwrap();
    let mut n = 0;
    for g in loaded["data"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            assert_eq!(r["health"], "ok", "{r}");
            n += 1;
        }
    }
    assert_eq!(n, rules().len());
    // Port c's alert is on its way (pending for its `for:` duration, or firing).
    let alerts: Value = serde_json::from_str(&http_get(&prom, "/api/v1/alerts").unwrap()).unwrap();
    let down: Vec<&Value> = alerts["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["alertname"] == "VringswitchPortDown")
        .collect();
    assert_eq!(down.len(), 1, "{alerts}");
    assert_eq!(down[0]["labels"]["port"], "c");
    // Drops rise for a's group-address frames, not for the flood to c (the rule is
    // evaluated every second: wait for it).
    let drops = wait_until(Duration::from_secs(20), "the DropsRising alert", || {
        let alerts: Value = serde_json::from_str(&http_get(&prom, "/api/v1/alerts").ok()?).ok()?;
        let drops: Vec<Value> = alerts["data"]["alerts"]
            .as_array()?
            .iter()
            .filter(|a| a["labels"]["alertname"] == "VringswitchDropsRising")
            .cloned()
            .collect();
        (!drops.is_empty()).then_some(drops)
    });
    assert!(
        drops.iter().all(|a| a["labels"]["reason"] != "port_down"),
        "{drops:?}"
    );
}

/// The shell completions and manual pages that docs/operations.md installs come from the
/// binaries themselves (clap's definitions): bash reads the completion script, and the
/// pages name every command and option.
#[test]
fn completions_and_manual_pages_are_generated_from_the_binaries() {
    use vringswitch_tests::daemon::vringctl;
    let run = |bin: &std::path::Path, args: &[&str]| {
        let out = Command::new(bin).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&vringctl(), &["completions", "bash"]);
    let dir = TempDir::new("completions");
    let script = dir.path().join("vringctl.bash");
    std::fs::write(&script, &bash).unwrap();
    let checked = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(checked.success(), "bash cannot read the completion script");
    for word in [
        "bridge",
        "port",
        "fdb",
        "show",
        "stats",
        "--may-exist",
        "--if-exists",
    ] {
        assert!(
            bash.contains(word),
            "{word} missing from the bash completions"
        );
    }
    for shell in ["zsh", "fish"] {
        assert!(
            run(&vringctl(), &["completions", shell]).contains("fdb"),
            "{shell}"
        );
    }
    let page = run(&vringctl(), &["manpage"]);
    assert!(page.contains(".TH vringctl 1"), "{page}");
    for cmd in ["bridge", "port", "fdb", "show", "stats", "completions"] {
        assert!(page.contains(cmd), "{cmd} missing from vringctl(1)");
    }
    for section in ["ENVIRONMENT", "\"EXIT STATUS\"", "FILES", "\"SEE ALSO\""] {
        assert!(
            page.contains(&format!(".SH {section}")),
            "{section} missing from vringctl(1)"
        );
    }
    // Every page a page refers to is written by `vringctl manpage --dir`, and man reads it.
    let man_dir = dir.path().join("man1");
    std::fs::create_dir(&man_dir).unwrap();
    let listed = run(
        &vringctl(),
        &["manpage", "--dir", man_dir.to_str().unwrap()],
    );
    let page_names = |text: &str| -> Vec<String> {
        let mut out = Vec::new();
        for (i, _) in text.match_indices("(1)") {
            let name: String = text[..i]
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '\\')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let name = name.replace("\\-", "-").trim_start_matches('-').to_owned();
            if name.starts_with("vringctl") {
                out.push(name);
            }
        }
        out
    };
    let mut referred = 0;
    for file in listed.lines() {
        let text = std::fs::read_to_string(file).unwrap();
        for name in page_names(&text) {
            assert!(
                man_dir.join(format!("{name}.1")).exists(),
                "{file} refers to {name}(1), which vringctl manpage --dir did not write"
            );
            referred += 1;
        }
    }
    assert!(referred >= 20, "{referred} references in {listed}");
    if Command::new("man").arg("--version").output().is_ok() {
        let shown = Command::new("man")
            .arg("-l")
            .arg(man_dir.join("vringctl-port-add.1"))
            .env("MANPAGER", "cat")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(text.contains("--may-exist"), "{text}");
    }
    let page = run(&binary(), &["--manpage"]);
    assert!(page.contains(".TH vringswitch 1"), "{page}");
    for opt in ["socket\\-dir", "api\\-socket", "state", "api\\-host"] {
        assert!(page.contains(opt), "{opt} missing from vringswitch(1)");
    }
    for section in [
        "ENVIRONMENT",
        "SIGNALS",
        "\"EXIT STATUS\"",
        "FILES",
        "\"SEE ALSO\"",
    ] {
        assert!(
            page.contains(&format!(".SH {section}")),
            "{section} missing from vringswitch(1)"
        );
    }
    for word in ["VRINGSWITCH_LOG", "SIGTERM", "SIGHUP"] {
        assert!(page.contains(word), "{word} missing from vringswitch(1)");
    }
}
