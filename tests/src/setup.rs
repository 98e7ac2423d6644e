//! A daemon with a given layout of bridges and server-mode ports, and test VMs on them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::daemon::{Daemon, TempDir};
use crate::frontend::{TestVm, VmOptions};
use crate::layout::{vhost_user_with, Layout, PortSpec, SocketMode, VhostUserSettings};
use crate::mac;

/// The port [`Setup::new`] makes: vhost-user, server mode, `queues` queue pairs, its socket
/// `NAME.sock` in `dir`.
pub fn server_port(dir: &Path, name: &str, bridge: &str, queues: u16) -> PortSpec {
    vhost_user_with(
        name,
        bridge,
        VhostUserSettings {
            socket: dir.join(format!("{name}.sock")),
            mode: Some(SocketMode::Server),
            queues: Some(queues),
            offloads: None,
        },
    )
}

/// How long a test waits for anything that should happen.
pub const T: Duration = Duration::from_secs(10);

/// A daemon with the given (bridge, [ports]) layout, server-mode sockets in a temp dir, one
/// worker on core 1.
pub struct Setup {
    pub dir: TempDir,
    pub daemon: Daemon,
}

impl Setup {
    pub fn new(tag: &str, layout: &[(&str, &[&str])], queues: u16) -> Setup {
        Setup::with_layout(tag, |dir| Setup::layout(dir, layout, queues))
    }

    /// The layout [`Setup::new`] starts: each bridge with its server-mode ports of `queues`
    /// queue pairs, their sockets `PORT.sock` in `dir`.
    pub fn layout(dir: &Path, layout: &[(&str, &[&str])], queues: u16) -> Layout {
        layout.iter().fold(Layout::new(), |l, (bridge, ports)| {
            l.bridge(bridge)
                .ports(ports.iter().map(|p| server_port(dir, p, bridge, queues)))
        })
    }

    /// A daemon with the layout `build` makes, given the temp dir its sockets go in.
    pub fn with_layout(tag: &str, build: impl FnOnce(&Path) -> Layout) -> Setup {
        let dir = TempDir::new(tag);
        let layout = build(dir.path());
        let daemon = Daemon::start(dir.path(), &layout.toml(), &layout.sockets());
        Setup { dir, daemon }
    }

    pub fn socket(&self, port: &str) -> PathBuf {
        self.dir.path().join(format!("{port}.sock"))
    }

    /// A test VM with MAC `mac(n)` on `port`, 64 RX buffers of 2048 bytes per queue pair.
    pub fn vm(&self, port: &str, n: u8) -> TestVm {
        self.vm_with(port, n, VmOptions::default())
    }

    pub fn vm_with(&self, port: &str, n: u8, opts: VmOptions) -> TestVm {
        let mut vm = TestVm::connect(&self.socket(port), mac(n), opts);
        for pair in 0..opts.queue_pairs {
            vm.post_rx(TestVm::rx(pair), 64, 2048);
        }
        vm
    }

    /// `vringswitch_port_<name>_total` of `port`.
    pub fn counter(&self, name: &str, port: &str) -> u64 {
        self.daemon
            .metric(&format!("vringswitch_port_{name}_total"), &[("port", port)])
    }

    /// Drops of `port` for `reason`.
    pub fn drops(&self, port: &str, reason: &str) -> u64 {
        self.daemon.metric(
            "vringswitch_port_drops_total",
            &[("port", port), ("reason", reason)],
        )
    }

    /// Waits until every port of `ports` reports a connected frontend.
    pub fn wait_connected(&self, ports: &[&str]) {
        for p in ports {
            self.daemon.wait_port_connected(p, true);
        }
    }
}
