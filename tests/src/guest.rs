//! Real VMs for the end-to-end tests: the tiny test guest (tests/guest/build-guest.sh) booted
//! by QEMU under TCG, and the ping rounds it prints on its serial console.
//!
//! The guest configures eth0 from its kernel command line and pings a peer forever, 20
//! pings a round; with two CPUs each CPU pings (CPU 1's rounds are labelled `VS-PING1`), so a
//! multiqueue NIC sends on both queue pairs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait_until;

/// Time a TCG guest gets to boot and finish a ping round.
pub const BOOT_AND_PING: Duration = Duration::from_secs(120);

/// The guest's kernel and initramfs, built (once) by tests/guest/build-guest.sh.
pub fn guest_dir() -> PathBuf {
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

/// `qemu-system-x86_64`, or a panic saying how to install it.
pub fn qemu_binary() -> &'static str {
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

/// Test VM `n`'s MAC address: 52:54:00:00:00:0n.
pub fn guest_mac(n: u8) -> String {
    format!("52:54:00:00:00:{n:02x}")
}

/// The kernel command line of test VM `n` (addresses 10.0.0.n and fd00::n) pinging VM
/// `peer`.
pub fn guest_cmdline(n: u8, peer: u8) -> String {
    format!(
        "console=ttyS0 panic=-1 quiet vs.ip=10.0.0.{n}/24 vs.ip6=fd00::{n}/64 \
         vs.peer=10.0.0.{peer}"
    )
}

/// The text of README.md's section `title` (`## title`), up to the next section.
pub fn readme_section(title: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../README.md")).expect("read README.md");
    let section = readme
        .split(&format!("\n## {title}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("README.md has no \"{title}\" section"));
    section.split("\n## ").next().unwrap_or_default().to_owned()
}

/// The QEMU options of README.md's examples ("Attach a QEMU VM"), made concrete for one test
/// guest: what a user copies is what the suite boots. The first example (a server-mode
/// port: QEMU connects, with `reconnect=`) gives the memory, machine, chardev, netdev and
/// device; the client-mode example gives the chardev QEMU listens on. Under TCG the device
/// gets `vectors=0`, as the README says.
fn readme_qemu_args(socket: &Path, mac: &str, memory: &str, qemu_listens: bool) -> Vec<String> {
    let section = readme_section("Attach a QEMU VM");
    let blocks: Vec<&str> = section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(
        blocks.len() >= 2,
        "README.md's QEMU section lost its examples"
    );
    assert!(
        section.contains("Without KVM (TCG), add `vectors=0`"),
        "README.md no longer says what TCG needs"
    );
    let words = |block: &str| -> Vec<String> {
        block
            .replace("\\\n", " ")
            .split_whitespace()
            .filter(|w| !["qemu-system-x86_64", "..."].contains(w))
            .map(str::to_owned)
            .collect()
    };
    let first = words(blocks[0]);
    let listening = words(blocks[1]);
    let concrete = |w: &str| -> String {
        let w = w.replace("/run/vringswitch/vm1.sock", &socket.display().to_string());
        let w = w.replace("52:54:00:00:00:01", mac);
        let w = w.replace("size=1G", &format!("size={memory}"));
        if w == "1G" {
            memory.to_owned()
        } else {
            w
        }
    };
    let mut out = Vec::new();
    let mut it = first.iter();
    while let (Some(opt), Some(value)) = (it.next(), it.next()) {
        assert!(
            opt.starts_with('-'),
            "README.md's QEMU example: {opt} {value}"
        );
        let value = match opt.as_str() {
            "-chardev" if qemu_listens => {
                assert_eq!(listening[0], "-chardev", "README.md's client-mode example");
                concrete(&listening[1])
            }
            "-device" => concrete(value) + ",vectors=0",
            _ => concrete(value),
        };
        out.push(opt.clone());
        out.push(value);
    }
    let joined = out.join(" ");
    for (what, expected) in [
        ("the socket", socket.display().to_string()),
        ("the MAC", mac.to_owned()),
        ("the memory", format!("size={memory}")),
        (
            "reconnect=1",
            if qemu_listens {
                "server=on"
            } else {
                "reconnect=1"
            }
            .to_owned(),
        ),
    ] {
        assert!(
            joined.contains(&expected),
            "README.md's QEMU example no longer has {what} where the suite expects it: {joined}"
        );
    }
    out
}

/// The machine QEMU emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// q35 with virtio-net-pci.
    Q35,
    /// microvm with virtio-net-device: virtio-mmio, no PCI at all.
    Microvm,
}

/// Kernel command line parameters a machine type needs.
///
/// microvm has no HPET and no ACPI PM timer, only a PIT, and under TCG the kernel's TSC
/// calibration against the PIT fails now and then ("tsc: Unable to calibrate against PIT"),
/// the more often the busier the host: the kernel then hangs before it prints anything
/// under `quiet`. Under TCG the guest's TSC is the host's, so its rate is given instead.
fn machine_cmdline(machine: Machine) -> String {
    match machine {
        Machine::Q35 => String::new(),
        Machine::Microvm => format!(
            " tsc_early_khz={}",
            vringswitch_switch::stats::cycles_per_second() / 1000
        ),
    }
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub name: String,
    pub socket: PathBuf,
    /// Test VM number: MAC 52:54:00:00:00:0n, address 10.0.0.n.
    pub n: u8,
    pub peer: u8,
    /// QEMU listens on the socket (the switch connects: a client-mode port).
    pub server: bool,
    pub cpus: u8,
    /// Queue pairs of the NIC (multiqueue when above 1).
    pub queues: u16,
    pub machine: Machine,
    /// More kernel command line parameters (`vs.send=...`, see tests/guest/init.sh).
    pub cmdline_extra: String,
    /// More properties of the NIC (`,guest_tso4=off`...).
    pub device_extra: String,
    /// Wait for an incoming migration on this unix socket instead of booting.
    pub incoming: Option<PathBuf>,
    /// The NIC is QEMU's own userspace virtio-net on this TAP interface (created by QEMU,
    /// the caller brings it up and bridges it) instead of vhost-user on `socket`: the
    /// anchor the benchmark measures migrations against.
    pub tap: Option<String>,
}

impl GuestSpec {
    /// A one-CPU, one-queue q35 guest connecting to a server-mode port.
    pub fn new(name: &str, socket: &Path, n: u8, peer: u8) -> GuestSpec {
        GuestSpec {
            name: name.to_owned(),
            socket: socket.to_owned(),
            n,
            peer,
            server: false,
            cpus: 1,
            queues: 1,
            machine: Machine::Q35,
            cmdline_extra: String::new(),
            device_extra: String::new(),
            incoming: None,
            tap: None,
        }
    }

    /// The NIC on TAP interface `ifname`, QEMU's userspace virtio-net (see
    /// [`GuestSpec::tap`]); `socket` is then unused.
    pub fn on_tap(mut self, ifname: &str) -> GuestSpec {
        self.tap = Some(ifname.to_owned());
        self
    }

    /// Pings every `interval` seconds (`"0.01"`), `count` pings a round, rounds back to
    /// back: outages of a few pings show as lost pings (see [`Console::lost_pings`]).
    pub fn pinging_every(mut self, interval: &str, count: u32) -> GuestSpec {
        self.cmdline_extra += &format!(" vs.ping={interval}_{count}");
        self
    }

    /// The same VM, waiting for a live migration on `socket` (QEMU's `-incoming`): named
    /// `name` (its console and QEMU log), its NIC on vhost-user socket `on`.
    pub fn migration_target(&self, name: &str, on: &Path, socket: &Path) -> GuestSpec {
        GuestSpec {
            name: name.to_owned(),
            socket: on.to_owned(),
            incoming: Some(socket.to_owned()),
            ..self.clone()
        }
    }

    /// The guest also sends `mb` MiB of random bytes once to `addr:port` over TCP, and
    /// prints their md5 (see [`Console::sent_md5`]).
    pub fn sending(mut self, addr: &str, port: u16, mb: u32) -> GuestSpec {
        self.cmdline_extra += &format!(" vs.send={addr}_{port}_{mb}");
        self
    }

    /// The guest sends `mb` MiB to each `(addr, port)` in turn, once (see
    /// [`Console::sent_md5_to`], [`Console::sent_status_to`]).
    pub fn sending_to(mut self, to: &[(&str, u16)], mb: u32) -> GuestSpec {
        let list: Vec<String> = to.iter().map(|(a, p)| format!("{a}_{p}_{mb}")).collect();
        self.cmdline_extra += &format!(" vs.send={}", list.join(","));
        self
    }

    /// The guest receives one TCP stream on each of `ports` and prints its md5 (see
    /// [`Console::received_md5`]).
    pub fn receiving(mut self, ports: &[u16]) -> GuestSpec {
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        self.cmdline_extra += &format!(" vs.recv={}", list.join(","));
        self
    }

    /// The guest prints eth0's packet counters and carrier changes every `secs` seconds
    /// (see [`Console::netstats`], [`Console::carrier_changes`]).
    pub fn counting(mut self, secs: &str) -> GuestSpec {
        self.cmdline_extra += &format!(" vs.stats={secs}");
        self
    }

    /// More properties for the NIC, e.g. `guest_tso4=off`.
    pub fn nic(mut self, properties: &str) -> GuestSpec {
        self.device_extra += &format!(",{properties}");
        self
    }

    /// QEMU listens: for a client-mode port.
    pub fn listening(mut self) -> GuestSpec {
        self.server = true;
        self
    }

    /// `cpus` CPUs and `queues` queue pairs.
    pub fn multiqueue(mut self, cpus: u8, queues: u16) -> GuestSpec {
        self.cpus = cpus;
        self.queues = queues;
        self
    }

    pub fn machine(mut self, machine: Machine) -> GuestSpec {
        self.machine = machine;
        self
    }
}

/// The serial console of a guest, written to a file: boots and ping rounds.
#[derive(Debug, Clone)]
pub struct Console {
    pub path: PathBuf,
}

impl Console {
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// Times the guest finished booting.
    pub fn boots(&self) -> usize {
        self.text().matches("VS-GUEST-READY").count()
    }

    /// Ping rounds of the current boot labelled `label` (`VS-PING` for CPU 0, `VS-PING1`
    /// for CPU 1): (round, transmitted, received).
    pub fn rounds_of(&self, label: &str) -> Vec<(u32, u32, u32)> {
        let text = self.text();
        let current = text.rsplit("VS-GUEST-READY").next().unwrap_or("");
        let prefix = format!("{label} round=");
        current
            .lines()
            .filter_map(|l| {
                let rest = l.trim().strip_prefix(&prefix)?;
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

    /// CPU 0's rounds.
    pub fn rounds(&self) -> Vec<(u32, u32, u32)> {
        self.rounds_of("VS-PING")
    }

    /// Waits for a complete round (all of 20 pings or more) labelled `label` that started
    /// after round `after`, and returns its number.
    pub fn wait_clean_round_of(&self, label: &str, after: u32, what: &str) -> u32 {
        wait_until(BOOT_AND_PING, what, || {
            self.rounds_of(label)
                .into_iter()
                .find(|&(r, tx, rx)| r > after + 1 && tx >= 20 && rx == tx)
                .map(|(r, _, _)| r)
        })
    }

    pub fn wait_clean_round(&self, after: u32, what: &str) -> u32 {
        self.wait_clean_round_of("VS-PING", after, what)
    }

    /// The packets eth0 received and sent, as the guest printed them last (see
    /// [`GuestSpec::counting`]).
    pub fn netstats(&self) -> Option<(u64, u64)> {
        Some((self.netstat("rx")?, self.netstat("tx")?))
    }

    /// How many times eth0's link went down or up since the guest booted, as it printed
    /// last (see [`GuestSpec::counting`]): QEMU sets it down when its vhost-user
    /// connection closes.
    pub fn carrier_changes(&self) -> Option<u64> {
        self.netstat("carrier_changes")
    }

    /// Field `key` of the last VS-NETSTATS line.
    fn netstat(&self, key: &str) -> Option<u64> {
        let v = self.value_of("VS-NETSTATS ")?;
        v.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    }

    /// The md5 of what the guest sends with [`GuestSpec::sending`], once it printed it.
    pub fn sent_md5(&self) -> Option<String> {
        self.value_of("VS-MD5 ")
    }

    /// The line `PREFIX VALUE` the guest printed last, its value. Only whole lines: the
    /// serial console writes a line a few characters at a time, and a line still being
    /// written would give a value cut short.
    fn value_of(&self, prefix: &str) -> Option<String> {
        let text = self.text();
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let line = whole.lines().rev().find(|l| l.starts_with(prefix))?;
        Some(line[prefix.len()..].trim().to_owned())
    }

    /// The md5 of what the guest sends to `addr:port`, once it printed it.
    pub fn sent_md5_to(&self, addr: &str, port: u16) -> Option<String> {
        self.value_of(&format!("VS-MD5-{addr}:{port} "))
    }

    /// The exit status of the guest's `nc` to `addr:port` once that transfer ended.
    pub fn sent_status_to(&self, addr: &str, port: u16) -> Option<i32> {
        self.value_of(&format!("VS-SENT-{addr}:{port} rc="))?
            .parse()
            .ok()
    }

    /// The md5 of the stream the guest received on `port`, once it ended.
    pub fn received_md5(&self, port: u16) -> Option<String> {
        self.value_of(&format!("VS-RECV-{port} "))
    }

    /// Whether the guest's NIC negotiated virtio feature `bit` (as the guest's driver
    /// shows it), once it printed them.
    pub fn has_feature(&self, bit: u32) -> Option<bool> {
        let bits = self.value_of("VS-FEATURES ")?;
        Some(bits.as_bytes().get(bit as usize) == Some(&b'1'))
    }

    /// The exit status of the guest's `nc` once the transfer ended.
    pub fn sent_status(&self) -> Option<i32> {
        self.value_of("VS-SENT rc=")?.parse().ok()
    }

    pub fn last_round(&self) -> u32 {
        self.rounds().last().map_or(0, |r| r.0)
    }

    /// Pings lost in CPU 0's rounds after round `after`, and the rounds counted.
    pub fn lost_pings(&self, after: u32) -> (u32, usize) {
        let rounds: Vec<_> = self.rounds().into_iter().filter(|r| r.0 > after).collect();
        (
            rounds.iter().map(|&(_, tx, rx)| tx - rx.min(tx)).sum(),
            rounds.len(),
        )
    }
}

/// What one live migration showed ([`Guest::migrate_into`]).
#[derive(Debug)]
pub struct Migrated {
    /// From `migrate` to the guest running on the target.
    pub took: Duration,
    /// When the guest was seen running on the target.
    pub running_at: std::time::Instant,
    /// The downtime QEMU reports: the guest stopped on the source until it ran on the target.
    pub downtime: Duration,
    /// The source's `info migrate`.
    pub status: String,
}

/// One QEMU guest whose serial console goes to a file; killed on drop.
pub struct Guest {
    child: Child,
    pub console: Console,
    monitor: PathBuf,
}

impl Guest {
    /// Boots `spec` with its files (console, monitor socket, QEMU's log) in `dir`.
    pub fn boot(dir: &Path, spec: &GuestSpec) -> Guest {
        let g = guest_dir();
        let console = dir.join(format!("{}.console", spec.name));
        let _ = std::fs::remove_file(&console);
        let monitor = dir.join(format!("{}.monitor", spec.name));
        let mac = guest_mac(spec.n);
        let memory = "256M";
        let nic: Vec<String> = match (&spec.tap, spec.machine) {
            // README.md's example, as a user would copy it.
            (None, Machine::Q35) => {
                let mut args = readme_qemu_args(&spec.socket, &mac, memory, spec.server);
                for pair in args.chunks_mut(2) {
                    match pair[0].as_str() {
                        "-netdev" if spec.queues > 1 => {
                            pair[1].push_str(&format!(",queues={}", spec.queues))
                        }
                        "-device" => {
                            if spec.queues > 1 {
                                pair[1].push_str(",mq=on");
                            }
                            pair[1].push_str(&spec.device_extra);
                        }
                        _ => {}
                    }
                }
                args
            }
            (tap, machine) => {
                let mut chardev = format!("socket,id=c0,path={}", spec.socket.display());
                if spec.server {
                    chardev.push_str(",server=on,wait=off");
                }
                let mut netdev = match tap {
                    Some(ifname) => {
                        format!("tap,id=n0,ifname={ifname},script=no,downscript=no")
                    }
                    None => "vhost-user,id=n0,chardev=c0".to_owned(),
                };
                if spec.queues > 1 {
                    netdev.push_str(&format!(",queues={}", spec.queues));
                }
                let (machine, device) = match machine {
                    // vectors=0: QEMU 7.2 under TCG crashes setting up MSI-X notifiers for
                    // vhost.
                    Machine::Q35 => {
                        let mut d = format!("virtio-net-pci,netdev=n0,vectors=0,mac={mac}");
                        if spec.queues > 1 {
                            d.push_str(",mq=on");
                        }
                        d.push_str(&spec.device_extra);
                        ("q35,memory-backend=mem", d)
                    }
                    Machine::Microvm => (
                        "microvm,memory-backend=mem",
                        format!("virtio-net-device,netdev=n0,mac={mac}{}", spec.device_extra),
                    ),
                };
                let mut args: Vec<String> = [
                    "-object",
                    &format!("memory-backend-memfd,id=mem,size={memory},share=on"),
                    "-machine",
                    machine,
                    "-m",
                    memory,
                ]
                .map(str::to_owned)
                .to_vec();
                if tap.is_none() {
                    args.extend(["-chardev".to_owned(), chardev]);
                }
                args.extend(["-netdev".to_owned(), netdev, "-device".to_owned(), device]);
                args
            }
        };
        let child = Command::new(qemu_binary())
            .args(["-accel", "tcg"])
            .args(nic)
            .args(["-smp", &spec.cpus.to_string(), "-display", "none"])
            .args(["-nodefaults", "-no-user-config"])
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(g.join("vmlinuz"))
            .arg("-initrd")
            .arg(g.join("initramfs.gz"))
            .arg("-append")
            .arg(
                guest_cmdline(spec.n, spec.peer)
                    + &machine_cmdline(spec.machine)
                    + &spec.cmdline_extra,
            )
            .args(
                spec.incoming
                    .iter()
                    .flat_map(|p| ["-incoming".to_owned(), format!("unix:{}", p.display())]),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{}.qemu.log", spec.name))).unwrap())
            .spawn()
            .expect("start qemu");
        Guest {
            child,
            console: Console { path: console },
            monitor,
        }
    }

    /// Resets the VM as a reboot does (virtio reset, vhost rings stopped and set up again
    /// on the same vhost-user connection).
    pub fn reset(&self) {
        use std::io::Write;
        let mut s = wait_until(Duration::from_secs(10), "the QEMU monitor", || {
            std::os::unix::net::UnixStream::connect(&self.monitor).ok()
        });
        s.write_all(b"system_reset\n").unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Runs `command` on the QEMU monitor (HMP) and returns what it printed.
    pub fn monitor(&self, command: &str) -> String {
        use std::io::{Read, Write};
        let mut s = wait_until(Duration::from_secs(10), "the QEMU monitor", || {
            std::os::unix::net::UnixStream::connect(&self.monitor).ok()
        });
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = Vec::new();
        let mut read_to_prompt = |s: &mut std::os::unix::net::UnixStream| {
            out.clear();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&out).contains("(qemu) ") {
                let n = s.read(&mut buf).expect("the QEMU monitor's answer");
                assert!(n > 0, "the QEMU monitor hung up");
                out.extend_from_slice(&buf[..n]);
            }
            String::from_utf8_lossy(&out).into_owned()
        };
        read_to_prompt(&mut s);
        s.write_all(format!("{command}\n").as_bytes()).unwrap();
        // The monitor echoes the command, with terminal escapes, on its first line.
        let answer = read_to_prompt(&mut s);
        let answer = answer.split_once('\n').map_or("", |(_, rest)| rest);
        answer.replace("(qemu) ", "")
    }

    /// Migrates this guest into `target`, a QEMU started from
    /// [`GuestSpec::migration_target`] whose incoming socket is `channel` and is listening:
    /// returns once the guest runs there, with what QEMU said of the migration. The source is
    /// left paused; the caller ends it.
    pub fn migrate_into(&self, target: &Guest, channel: &Path, timeout: Duration) -> Migrated {
        let start = std::time::Instant::now();
        let answer = self.monitor(&format!("migrate -d unix:{}", channel.display()));
        assert!(!answer.contains("rror"), "migrate: {answer}");
        let running_at = wait_until(timeout, "the guest to run on the target", || {
            target
                .monitor("info status")
                .contains("VM status: running")
                .then(std::time::Instant::now)
        });
        let status = self.monitor("info migrate");
        assert!(
            status.contains("Migration status: completed"),
            "source after the switch-over: {status}"
        );
        let downtime = status
            .lines()
            .find_map(|l| {
                l.strip_prefix("downtime: ")?
                    .strip_suffix(" ms")?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no downtime in QEMU's `info migrate`: {status}"));
        Migrated {
            took: running_at - start,
            running_at,
            downtime: Duration::from_millis(downtime),
            status,
        }
    }

    /// Whether the QEMU process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl std::ops::Deref for Guest {
    type Target = Console;
    fn deref(&self) -> &Console {
        &self.console
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}
