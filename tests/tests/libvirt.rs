//! libvirt domains on vringswitch ports, set up as docs/operations.md tells an operator:
//! the daemon runs as the `vringswitch` user with a socket directory of mode 0750, QEMU runs
//! as `libvirt-qemu` in the `vringswitch` group. One domain connects to a server-mode port
//! (`mode='client'` in libvirt), one listens for a client-mode port (`mode='server'`, its
//! socket in the socket directory's `client/`); both ping a plain QEMU guest, are destroyed
//! with `virsh destroy`, started again and ping again.
//!
//! Needs root, QEMU and Debian's libvirt packages (scripts/test.sh installs them);
//! tests/guest/libvirt-host.sh creates the users and starts virtlogd and libvirtd. Run one
//! at a time (`--test-threads=1`): three TCG guests share two cores.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use vringswitch_tests::daemon::{Daemon, TempDir};
use vringswitch_tests::guest::{guest_cmdline, guest_dir, guest_mac, Console, Guest, GuestSpec};
use vringswitch_tests::layout::{vhost_user_in, Layout, SocketMode};

/// The libvirt URI of the system QEMU driver.
const URI: &str = "qemu:///system";

fn prepare_host() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/libvirt-host.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run tests/guest/libvirt-host.sh");
    assert!(
        out.status.success(),
        "preparing libvirt failed (install libvirt-daemon libvirt-daemon-driver-qemu \
         libvirt-clients; scripts/test.sh does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn virsh(args: &[&str]) -> Result<String, String> {
    let out = Command::new("virsh")
        .args(["-q", "-c", URI])
        .args(args)
        .output()
        .map_err(|e| format!("virsh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "virsh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A transient libvirt domain running the test guest, destroyed on drop.
struct Domain {
    name: String,
    xml: PathBuf,
    console: Console,
}

/// The NIC of README.md's libvirt example, made concrete: what a user copies is what the
/// suite runs. For `mode='server'` (QEMU listens) the example's `mode` is changed and its
/// `<reconnect>` left out, as the README says.
fn readme_interface(mac: &str, socket: &Path, mode: &str) -> String {
    let section = vringswitch_tests::guest::readme_section("Attach a libvirt domain");
    let start = section
        .find("<interface type='vhostuser'>")
        .expect("README.md's libvirt example has a vhostuser interface");
    let end = section[start..].find("</interface>").expect("its end") + start;
    let mut xml = section[start..end + "</interface>".len()].to_owned();
    for (from, to) in [
        ("52:54:00:00:00:01", mac.to_owned()),
        ("/run/vringswitch/vm1.sock", socket.display().to_string()),
    ] {
        assert!(
            xml.contains(from),
            "README.md's libvirt example lost {from}: {xml}"
        );
        xml = xml.replace(from, &to);
    }
    assert!(
        xml.contains("mode='client'") && xml.contains("<reconnect enabled='yes'"),
        "README.md's libvirt example no longer reconnects: {xml}"
    );
    if mode == "server" {
        let open = xml.find("<reconnect").unwrap();
        let close = xml[open..].find("/>").unwrap() + open + 2;
        xml.replace_range(open..close, "");
        xml = xml.replace("mode='client'", "mode='server'");
    }
    xml
}

impl Domain {
    /// Test VM `n` pinging `peer`, its NIC on `socket`; `mode` is libvirt's (`client`: QEMU
    /// connects; `server`: QEMU listens).
    fn new(dir: &Path, n: u8, peer: u8, socket: &Path, mode: &str) -> Domain {
        let name = format!("vs-test-{}-{n}", std::process::id());
        let console = dir.join(format!("{name}.console"));
        // QEMU (libvirt-qemu) reads the kernel and initramfs: copies in the test's directory.
        let g = guest_dir();
        for f in ["vmlinuz", "initramfs.gz"] {
            if !dir.join(f).exists() {
                std::fs::copy(g.join(f), dir.join(f)).unwrap();
            }
        }
        let xml = format!(
            "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {interface}
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
  <qemu:override>
    <qemu:device alias='net0'>
      <qemu:frontend><qemu:property name='vectors' type='unsigned' value='0'/></qemu:frontend>
    </qemu:device>
  </qemu:override>
</domain>
",
            kernel = dir.join("vmlinuz").display(),
            initrd = dir.join("initramfs.gz").display(),
            cmdline = guest_cmdline(n, peer),
            interface = readme_interface(&guest_mac(n), socket, mode),
            console = console.display(),
        );
        let path = dir.join(format!("{name}.xml"));
        std::fs::write(&path, xml).unwrap();
        Domain {
            name,
            xml: path,
            console: Console { path: console },
        }
    }

    fn start(&self) {
        let _ = std::fs::remove_file(&self.console.path);
        virsh(&["create", self.xml.to_str().unwrap()]).unwrap();
    }

    fn destroy(&self) {
        virsh(&["destroy", &self.name]).unwrap();
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
    }
}

#[test]
fn libvirt_domains_on_server_and_client_mode_ports_ping_through_domain_and_switch_restarts() {
    assert!(is_root(), "the libvirt test needs root (libvirtd, users)");
    prepare_host();
    let dir = TempDir::new("libvirt");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The socket directory as the unit's RuntimeDirectory= makes it.
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let ok = Command::new("chown")
        .args(["vringswitch:vringswitch", run.to_str().unwrap()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "chown of the socket directory");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o750)).unwrap();

    let a = run.join("a.sock");
    let b = run.join("client/b.sock");
    let peer = run.join("peer.sock");
    let toml = Layout::new()
        .bridge("br0")
        .port(vhost_user_in("a", "br0", &a, SocketMode::Server, Some(1)))
        .port(vhost_user_in("b", "br0", &b, SocketMode::Client, Some(1)))
        .port(vhost_user_in(
            "peer",
            "br0",
            &peer,
            SocketMode::Server,
            Some(1),
        ))
        .toml();
    let mut daemon = Daemon::start_as(
        dir.path(),
        &toml,
        &[a.clone(), peer.clone()],
        &[],
        Some("vringswitch"),
        &run,
    );
    // The daemon made client/ for the hypervisor: setgid, group-writable, nobody else.
    let mode = std::fs::metadata(run.join("client"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o2770, "mode of {}", run.join("client").display());

    let peer_vm = Guest::boot(dir.path(), &GuestSpec::new("peer", &peer, 3, 1));
    let dom_a = Domain::new(dir.path(), 1, 3, &a, "client");
    let dom_b = Domain::new(dir.path(), 2, 3, &b, "server");
    let t0 = std::time::Instant::now();
    let stage = |what: &str| eprintln!("{:>6.1} s: {what}", t0.elapsed().as_secs_f64());
    for round in 0..2 {
        dom_a.start();
        stage("a started");
        dom_b.start();
        stage("b started");
        dom_a.console.wait_clean_round(
            0,
            &format!("domain a (server-mode port) pings, start {round}"),
        );
        dom_b.console.wait_clean_round(
            0,
            &format!("domain b (client-mode port) pings, start {round}"),
        );
        stage("a and b pinged");
        let after = peer_vm.last_round();
        peer_vm.wait_clean_round(after, &format!("the peer pings domain a, start {round}"));
        // QEMU made b's socket itself, as libvirt-qemu, in the directory meant for it.
        // Its group is the switch's (setgid directory) and may write (libvirt's umask).
        let meta = std::fs::symlink_metadata(&b).unwrap();
        assert_eq!(
            meta.uid(),
            id_of("-u", "libvirt-qemu"),
            "owner of {}",
            b.display()
        );
        assert_eq!(
            meta.gid(),
            id_of("-g", "vringswitch"),
            "group of {}",
            b.display()
        );
        assert_ne!(
            meta.mode() & 0o020,
            0,
            "{} is not group-writable",
            b.display()
        );
        stage("the peer pinged");
        dom_a.destroy();
        dom_b.destroy();
        stage("destroyed");
        for port in ["a", "b"] {
            daemon.wait_port_connected(port, false);
        }
        stage("disconnected");
    }

    // SIGKILL the daemon under running domains and start it again: domain a reconnects by
    // itself (README.md's `<reconnect>`), the daemon reconnects to domain b.
    dom_a.start();
    dom_b.start();
    dom_a
        .console
        .wait_clean_round(0, "domain a pings before the daemon restart");
    dom_b
        .console
        .wait_clean_round(0, "domain b pings before the daemon restart");
    daemon.kill();
    let (ra, rb) = (dom_a.console.last_round(), dom_b.console.last_round());
    std::thread::sleep(std::time::Duration::from_secs(2));
    daemon.restart(&[a.clone(), peer.clone()]);
    stage("daemon restarted");
    dom_a
        .console
        .wait_clean_round(ra + 1, "domain a pings after the daemon restart");
    dom_b
        .console
        .wait_clean_round(rb + 1, "domain b pings after the daemon restart");
    stage("a and b pinged after the daemon restart");
    let log = daemon.log_text();
    assert!(
        log.matches("vhost-user frontend connected port=b").count() >= 2,
        "{log}"
    );
}

/// Whether the test runs as root (owner of /proc/self).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `id -u USER` or `id -g USER`.
fn id_of(which: &str, user: &str) -> u32 {
    let out = Command::new("id").args([which, user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no user {user}"))
}
