//! Migration downtime for the benchmark harness (`bench/run.py --only migration`): live
//! migrations of a real QEMU guest (TCG) between two ports of one switch while another
//! guest pings it every 10 ms, measured the same way through vringswitch and through QEMU's
//! own userspace virtio-net on TAP interfaces of a Linux bridge (the anchor: what the guest
//! loses when no vhost-user backend takes part).
//!
//! ```text
//! vs-migration --switch vringswitch|tap --migrations N --dir DIR [--guest-announce on|off]
//! ```
//!
//! Guest A migrates N times, from port `a` to `a2` and back (taps `vsm-a`, `vsm-a2` on
//! bridge `vsmbr0` for `tap`), each time into a new QEMU. For each migration it prints one
//! JSON line: QEMU's downtime (the guest stopped on the source until it runs on the target),
//! the time from `migrate` to the guest running on the target, how long after that the
//! bridge had A's MAC on its new port (`fdb_after_ms`), and the 10 ms pings from
//! guest B to A lost over the migration (counted on B's console, from the last ping round
//! before it to the first whole round after it). With `--guest-announce off` the guest's
//! NIC does not offer VIRTIO_NET_F_GUEST_ANNOUNCE: QEMU then announces the guest's MAC itself,
//! through the switch (SEND_RARP) or straight onto the TAP, instead of asking the guest to.
//! Needs root (TAP interfaces, a bridge) and vringswitch's release binary in VRINGSWITCH_BIN
//! for `vringswitch`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vringswitch_tests::api::call;
use vringswitch_tests::daemon::Daemon;
use vringswitch_tests::guest::{guest_mac, Guest, GuestSpec};
use vringswitch_tests::layout::{vhost_user, Layout};
use vringswitch_tests::netns::ip;
use vringswitch_tests::wait_until;

const BRIDGE: &str = "vsmbr0";
const MIGRATION: Duration = Duration::from_secs(120);

fn usage(why: &str) -> ! {
    eprintln!("vs-migration: {why}");
    eprintln!(
        "usage: vs-migration --switch vringswitch|tap --migrations N --dir DIR \
         [--guest-announce on|off]"
    );
    std::process::exit(2)
}

/// Where each guest's NIC is: a vhost-user port or a TAP interface.
enum Nics {
    Vringswitch(Box<Daemon>),
    Tap,
}

impl Nics {
    fn spec(&self, dir: &Path, port: &str, n: u8, peer: u8) -> GuestSpec {
        let spec = GuestSpec::new(port, &dir.join(format!("{port}.sock")), n, peer);
        match self {
            Nics::Vringswitch(_) => spec,
            Nics::Tap => spec.on_tap(&tap(port)),
        }
    }

    /// Ready for a guest whose NIC is `port` to use it: connected to the switch, or the tap
    /// QEMU made up and bridged.
    fn attach(&self, port: &str) {
        match self {
            Nics::Vringswitch(d) => wait_until(
                Duration::from_secs(10),
                "the guest's vhost-user connection",
                || (d.metric("vringswitch_port_connected", &[("port", port)]) == 1).then_some(()),
            ),
            Nics::Tap => {
                let ifname = tap(port);
                wait_until(Duration::from_secs(10), "QEMU's TAP interface", || {
                    Path::new("/sys/class/net")
                        .join(&ifname)
                        .exists()
                        .then_some(())
                });
                ip(&["link", "set", &ifname, "master", BRIDGE, "up"]);
            }
        }
    }

    /// Whether the bridge has `mac` on `port`: vringswitch's FDB (its API), or the Linux
    /// bridge's forwarding table (`brforward` in sysfs, read without a process per look).
    fn knows(&self, mac: &str, port: &str) -> bool {
        match self {
            Nics::Vringswitch(d) => {
                let (code, entries) = call(d, "GET", "/v1/bridges/br0/fdb", None);
                assert_eq!(code, 200, "{entries}");
                entries.as_array().is_some_and(|all| {
                    all.iter()
                        .any(|e| e["mac"] == mac && e["port"].as_str() == Some(port))
                })
            }
            Nics::Tap => {
                let sys = Path::new("/sys/class/net");
                let Ok(no) = std::fs::read_to_string(sys.join(tap(port)).join("brport/port_no"))
                else {
                    return false;
                };
                let Ok(no) = u8::from_str_radix(no.trim().trim_start_matches("0x"), 16) else {
                    return false;
                };
                let table = std::fs::read(sys.join(BRIDGE).join("brforward")).unwrap_or_default();
                // struct __fdb_entry: MAC, port number (low byte), is_local, ageing, ...
                table.chunks_exact(16).any(|e| {
                    let m: Vec<String> = e[..6].iter().map(|b| format!("{b:02x}")).collect();
                    m.join(":") == mac && e[6] == no
                })
            }
        }
    }

    /// Waits until the port of a guest that was killed is free again.
    fn detach(&self, port: &str) {
        match self {
            Nics::Vringswitch(d) => d.wait_port_connected(port, false),
            Nics::Tap => {
                let ifname = tap(port);
                wait_until(Duration::from_secs(10), "the TAP interface to go", || {
                    (!Path::new("/sys/class/net").join(&ifname).exists()).then_some(())
                });
            }
        }
    }
}

fn tap(port: &str) -> String {
    format!("vsm-{port}")
}

fn main() {
    let mut it = std::env::args().skip(1);
    let (mut switch, mut migrations, mut dir) = (String::new(), 4u32, PathBuf::new());
    let mut guest_announce = true;
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--switch" => switch = value,
            "--migrations" => {
                migrations = value
                    .parse()
                    .unwrap_or_else(|_| usage("--migrations wants a number"))
            }
            "--dir" => dir = PathBuf::from(value),
            "--guest-announce" => {
                guest_announce = match value.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => usage("--guest-announce is on or off"),
                }
            }
            _ => usage(&format!("unknown flag {flag:?}")),
        }
    }
    if dir.as_os_str().is_empty() {
        usage("--dir is required");
    }
    let nics = match switch.as_str() {
        "vringswitch" => {
            let mut layout = Layout::new().bridge("br0");
            for port in ["a", "a2", "b"] {
                layout = layout.port(vhost_user(port, "br0", &dir.join(format!("{port}.sock"))));
            }
            Nics::Vringswitch(Box::new(Daemon::start(
                &dir,
                &layout.toml(),
                &layout.sockets(),
            )))
        }
        "tap" => {
            let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
            ip(&["link", "add", BRIDGE, "type", "bridge"]);
            ip(&["link", "set", BRIDGE, "up"]);
            Nics::Tap
        }
        _ => usage("--switch is vringswitch or tap"),
    };
    run(&dir, &nics, migrations, guest_announce);
    if let Nics::Tap = nics {
        ip(&["link", "del", BRIDGE]);
    }
}

fn run(dir: &Path, nics: &Nics, migrations: u32, guest_announce: bool) {
    let b = Guest::boot(dir, &nics.spec(dir, "b", 2, 1).pinging_every("0.01", 100));
    nics.attach("b");
    let mut a_spec = nics.spec(dir, "a", 1, 2);
    if !guest_announce {
        a_spec = a_spec.nic("guest_announce=off");
    }
    let mut on = ("a", Guest::boot(dir, &a_spec));
    nics.attach("a");
    b.wait_clean_round(0, "b -> a pings");
    for k in 1..=migrations {
        let to = if on.0 == "a" { "a2" } else { "a" };
        let name = format!("a{}", k + 1);
        let channel = dir.join(format!("{name}.migration"));
        let on_socket = dir.join(format!("{to}.sock"));
        let target_spec = a_spec.migration_target(&name, &on_socket, &channel);
        let target_spec = match &nics {
            Nics::Tap => target_spec.on_tap(&tap(to)),
            Nics::Vringswitch(_) => target_spec,
        };
        let before = b.last_round();
        let target = Guest::boot(dir, &target_spec);
        wait_until(Duration::from_secs(10), "the target to listen", || {
            // Bound is not yet listening: QEMU binds the socket, then listens, and a
            // source connecting in between is refused and fails its migration.
            vringswitch_ports::socket_file::is_listening(&channel).then_some(())
        });
        nics.attach(to);
        let migrated = on.1.migrate_into(&target, &channel, MIGRATION);
        let mac = guest_mac(1);
        let moved = wait_until(
            Duration::from_secs(10),
            "the bridge to learn A's port",
            || nics.knows(&mac, to).then(std::time::Instant::now),
        );
        let fdb_after = moved.saturating_duration_since(migrated.running_at);
        let (from, mut source) = std::mem::replace(&mut on, (to, target));
        source.kill();
        nics.detach(from);
        b.wait_clean_round(before, "b -> a pings after the migration");
        let (lost, rounds) = b.lost_pings(before);
        println!(
            "{}",
            serde_json::json!({
                "migration": k,
                "downtime_ms": migrated.downtime.as_millis() as u64,
                "took_ms": migrated.took.as_millis() as u64,
                "fdb_after_ms": fdb_after.as_millis() as u64,
                "lost_pings": lost,
                "ping_rounds": rounds,
            })
        );
    }
}
