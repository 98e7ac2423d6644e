//! A daemon with a given layout of bridges and server-mode ports, and test VMs on them.

use std::path::PathBuf;
use std::time::Duration;

use crate::daemon::{Daemon, TempDir};
use crate::frontend::{TestVm, VmOptions};
use crate::mac;

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
        Setup::with_dataplane(tag, layout, queues, "")
    }

    /// As [`Setup::new`], with `dataplane` (TOML lines) added to the `[dataplane]` table.
    pub fn with_dataplane(
        tag: &str,
        layout: &[(&str, &[&str])],
        queues: u16,
        dataplane: &str,
    ) -> Setup {
        Setup::with_settings(tag, layout, queues, dataplane, &[])
    }

    /// As [`Setup::with_dataplane`], with `settings` (TOML lines) added to the table of the
    /// bridge or port they name.
    pub fn with_settings(
        tag: &str,
        layout: &[(&str, &[&str])],
        queues: u16,
        dataplane: &str,
        settings: &[(&str, &str)],
    ) -> Setup {
        let dir = TempDir::new(tag);
        let mut toml = format!("[dataplane]\ncores = [1]\n{dataplane}\n");
        let extra = |name: &str| -> String {
            settings
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, lines)| format!("{lines}\n"))
                .collect()
        };
        let mut sockets = Vec::new();
        for (bridge, ports) in layout {
            toml.push_str(&format!(
                "[[bridges]]\nname = \"{bridge}\"\n{}",
                extra(bridge)
            ));
            for p in *ports {
                let s = dir.path().join(format!("{p}.sock"));
                toml.push_str(&format!(
                    "[[ports]]\nname = \"{p}\"\nbridge = \"{bridge}\"\ntype = \"vhost-user\"\n\
                     socket = \"{}\"\nmode = \"server\"\nqueues = {queues}\n{}",
                    s.display(),
                    extra(p)
                ));
                sockets.push(s);
            }
        }
        let daemon = Daemon::start(dir.path(), &toml, &sockets);
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
