//! End to end with real VMs: QEMU guests (TCG) built by tests/guest/build-guest.sh, attached
//! over vhost-user, pinging each other through the switch. Run one at a time
//! (`--test-threads=1`): each boots several guests on a 2-core machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vringswitch_tests::daemon::{Daemon, TempDir};
use vringswitch_tests::wait_until;

const BOOT_AND_PING: Duration = Duration::from_secs(120);

fn guest_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("../target/guest");
    let status = Command::new("bash")
        .arg(root.join("guest/build-guest.sh"))
        .env("OUT", &out)
        .status()
        .expect("run tests/guest/build-guest.sh");
    assert!(status.success(), "building the test guest failed");
    out
}

fn qemu_binary() -> &'static str {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "qemu-system-x86_64 is missing: install it with `apt-get install qemu-system-x86` \
         (scripts/test.sh does this)"
    );
    "qemu-system-x86_64"
}

/// One QEMU guest whose serial console goes to a file.
struct Guest {
    child: Child,
    console: PathBuf,
    monitor: PathBuf,
}

impl Guest {
    /// Boots a guest with `ip`, pinging `peer` forever. `server` makes QEMU listen on the
    /// socket (the switch connects: client-mode port).
    /// Boots test VM `n` (MAC 52:54:00:00:00:0n, address 10.0.0.n) pinging VM `peer`.
    fn boot(dir: &Path, name: &str, socket: &Path, n: u8, peer: u8, server: bool) -> Guest {
        let (mac, ip, peer) = (
            format!("52:54:00:00:00:{n:02x}"),
            format!("10.0.0.{n}"),
            format!("10.0.0.{peer}"),
        );
        let g = guest_dir();
        let console = dir.join(format!("{name}.console"));
        let _ = std::fs::remove_file(&console);
        let monitor = dir.join(format!("{name}.monitor"));
        let chardev = if server {
            format!("socket,id=c0,path={},server=on,wait=off", socket.display())
        } else {
            format!("socket,id=c0,path={}", socket.display())
        };
        let child = Command::new(qemu_binary())
            .args([
                "-accel",
                "tcg",
                "-machine",
                "q35,memory-backend=mem",
                "-m",
                "256M",
            ])
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
            .args(["-smp", "1", "-display", "none", "-nodefaults"])
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(g.join("vmlinuz"))
            .arg("-initrd")
            .arg(g.join("initramfs.gz"))
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 quiet vs.ip={ip}/24 vs.peer={peer}"
            ))
            .arg("-chardev")
            .arg(chardev)
            .args(["-netdev", "vhost-user,id=n0,chardev=c0"])
            // vectors=0: QEMU 7.2 under TCG crashes setting up MSI-X notifiers for vhost.
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,vectors=0,mac={mac}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.qemu.log"))).unwrap())
            .spawn()
            .expect("start qemu");
        Guest {
            child,
            console,
            monitor,
        }
    }

    /// Resets the VM as a reboot does (virtio reset, vhost rings stopped and set up again
    /// on the same vhost-user connection).
    fn reset(&self) {
        use std::io::Write;
        let mut s = wait_until(Duration::from_secs(10), "the QEMU monitor", || {
            std::os::unix::net::UnixStream::connect(&self.monitor).ok()
        });
        s.write_all(b"system_reset\n").unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Times the guest finished booting.
    fn boots(&self) -> usize {
        self.console_text().matches("VS-GUEST-READY").count()
    }

    fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Ping rounds printed so far: (round, transmitted, received).
    /// Rounds of the current boot.
    fn rounds(&self) -> Vec<(u32, u32, u32)> {
        let text = self.console_text();
        let current = text
            .rsplit("VS-GUEST-READY")
            .next()
            .unwrap_or("")
            .to_string();
        current
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                let rest = l.strip_prefix("VS-PING round=")?;
                let mut w = rest.split_whitespace();
                let round = w.next()?.parse().ok()?;
                let tx = w.next()?.parse().ok()?;
                let rx = rest
                    .split(", ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()?;
                Some((round, tx, rx))
            })
            .collect()
    }

    /// Waits for a complete round (20 of 20) that started after round `after`.
    fn wait_clean_round(&self, after: u32, what: &str) -> u32 {
        wait_until(BOOT_AND_PING, what, || {
            self.rounds()
                .into_iter()
                .find(|&(r, tx, rx)| r > after + 1 && tx == 20 && rx == 20)
                .map(|(r, _, _)| r)
        })
    }

    fn last_round(&self) -> u32 {
        self.rounds().last().map_or(0, |r| r.0)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(dir: &Path, ports: &[(&str, &str)], mode: &str) -> (String, Vec<PathBuf>) {
    let mut toml = String::from(
        "[dataplane]\ncores = [1]\n[[bridges]]\nname = \"br0\"\n[[bridges]]\nname = \"br1\"\n",
    );
    let mut sockets = Vec::new();
    for (port, bridge) in ports {
        let s = dir.join(format!("{port}.sock"));
        toml.push_str(&format!(
            "[[ports]]\nname = \"{port}\"\nbridge = \"{bridge}\"\ntype = \"vhost-user\"\nsocket = \"{}\"\nmode = \"{mode}\"\nqueues = 1\n",
            s.display()
        ));
        sockets.push(s);
    }
    (toml, sockets)
}

#[test]
fn guests_ping_through_server_ports_are_isolated_by_bridge_and_survive_qemu_restart_and_reboot() {
    let dir = TempDir::new("qemu-server");
    let (toml, sockets) = config(
        dir.path(),
        &[("vm1", "br0"), ("vm2", "br0"), ("vm3", "br1")],
        "server",
    );
    let daemon = Daemon::start(dir.path(), &toml, &sockets);
    let mut g1 = Guest::boot(dir.path(), "g1", &sockets[0], 1, 2, false);
    let g2 = Guest::boot(dir.path(), "g2", &sockets[1], 2, 1, false);
    let g3 = Guest::boot(dir.path(), "g3", &sockets[2], 3, 1, false);

    // 20 pings each way with no loss.
    g1.wait_clean_round(0, "g1 -> g2 pings");
    g2.wait_clean_round(0, "g2 -> g1 pings");

    // g3 is on br1: it must never reach g1.
    wait_until(BOOT_AND_PING, "g3 to finish two ping rounds", || {
        (g3.rounds().len() >= 2).then_some(())
    });
    for (round, tx, rx) in g3.rounds() {
        assert_eq!((tx, rx), (20, 0), "g3 on br1 reached br0 in round {round}");
    }

    // Kill g1's QEMU and start it again: ping works again.
    g1.kill();
    daemon.wait_port_connected("vm1", false);
    let g1 = Guest::boot(dir.path(), "g1b", &sockets[0], 1, 2, false);
    g1.wait_clean_round(0, "pings after g1's QEMU restarted");
    let after = g2.last_round();
    g2.wait_clean_round(after, "g2 -> g1 pings after the restart");
    assert!(daemon.metric("vringswitch_port_rx_packets_total", &[("port", "vm1")]) >= 40);

    // Reboot g2 (same QEMU, same vhost-user connection): ping works again afterwards.
    let connections = daemon.metric("vringswitch_port_connected", &[("port", "vm2")]);
    assert_eq!(connections, 1);
    g2.reset();
    wait_until(BOOT_AND_PING, "g2 to boot again", || {
        (g2.boots() >= 2).then_some(())
    });
    g2.wait_clean_round(0, "g2 -> g1 pings after g2 rebooted");
    let after = g1.last_round();
    g1.wait_clean_round(after, "g1 -> g2 pings after g2 rebooted");
}

#[test]
fn client_mode_survives_daemon_restart_and_qemu_restart() {
    let dir = TempDir::new("qemu-client");
    let (toml, sockets) = config(dir.path(), &[("vm1", "br0"), ("vm2", "br0")], "client");
    // QEMU listens (server=on): the guests come up first, the switch connects later.
    let g1 = Guest::boot(dir.path(), "g1", &sockets[0], 1, 2, true);
    let g2 = Guest::boot(dir.path(), "g2", &sockets[1], 2, 1, true);
    wait_until(Duration::from_secs(10), "QEMU sockets", || {
        sockets.iter().all(|s| s.exists()).then_some(())
    });
    let mut daemon = Daemon::start(dir.path(), &toml, &[]);
    g1.wait_clean_round(0, "g1 -> g2 pings in client mode");
    g2.wait_clean_round(0, "g2 -> g1 pings in client mode");

    // SIGKILL the daemon while both guests stay up, and start it again.
    daemon.kill();
    let (r1, r2) = (g1.last_round(), g2.last_round());
    std::thread::sleep(Duration::from_secs(2));
    daemon.restart(&[]);
    g1.wait_clean_round(r1 + 1, "g1 pings after the daemon restart");
    g2.wait_clean_round(r2 + 1, "g2 pings after the daemon restart");

    // Restart g1's QEMU (the socket server): the switch reconnects by itself.
    let mut g1 = g1;
    g1.kill();
    let g1 = Guest::boot(dir.path(), "g1b", &sockets[0], 1, 2, true);
    g1.wait_clean_round(0, "g1 pings after its QEMU restarted");
    let after = g2.last_round();
    g2.wait_clean_round(after, "g2 pings after g1's QEMU restarted");
    assert!(
        daemon
            .log_text()
            .matches("vhost-user frontend connected port=vm1")
            .count()
            >= 3
    );
}
