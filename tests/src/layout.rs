//! A daemon's configuration, built typed and written out by the config crate: what the
//! tests start their daemons with. A test that wrote its TOML by hand could mean one thing
//! and have the daemon read another (a misspelt field, a setting on the wrong kind of
//! port); here the compiler checks the names and the config crate writes the file the
//! daemon reads. Only the tests of the parser itself (bad syntax, unknown fields) still
//! write text.
//!
//! ```ignore
//! let toml = Layout::new()
//!     .bridge("br0")
//!     .port(vhost_user("vm1", "br0", &sock))
//!     .port(PortSpec { vlan: Some(access(10)), ..tap("up0", "br0", "vs-up0") })
//!     .toml();
//! ```

use std::path::{Path, PathBuf};

use toml::Spanned;
pub use vringswitch_config::{
    AdminState, AfXdpSettings, KindSpec, PoliceConfig, PortSpec, SocketMode, TapSettings,
    VhostUserSettings, VlanConfig, VxlanControl, VxlanSettings, XdpMode,
};
use vringswitch_config::{BridgeConfig, Config, DataplaneConfig};

/// Bridges and ports, and the data plane that forwards between them.
#[derive(Debug, Clone)]
pub struct Layout {
    config: Config,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout::new()
    }
}

impl Layout {
    /// One worker on core 1 (the tests' core: CPU 0 is left to the peers), the default
    /// burst and idle time, no bridges or ports yet.
    pub fn new() -> Layout {
        let dataplane = DataplaneConfig {
            cores: Spanned::new(0..0, vec![1]),
            ..DataplaneConfig::default()
        };
        Layout {
            config: Config::new(None, dataplane, Vec::new(), Vec::new()),
        }
    }

    /// The cores of the workers, one worker each.
    pub fn cores(mut self, cores: &[usize]) -> Layout {
        self.config.dataplane.cores = Spanned::new(0..0, cores.to_vec());
        self
    }

    /// Frames a worker takes from one queue per poll.
    pub fn burst(mut self, burst: usize) -> Layout {
        self.config.dataplane.burst = Spanned::new(0..0, burst);
        self
    }

    /// Microseconds of empty polls before a worker sleeps.
    pub fn idle_poll_us(mut self, us: u64) -> Layout {
        self.config.dataplane.idle_poll_us = us;
        self
    }

    /// The socket directory of the configuration file (`socket_dir`).
    pub fn socket_dir(mut self, dir: &Path) -> Layout {
        self.config.socket_dir = Some(Spanned::new(0..0, dir.to_path_buf()));
        self
    }

    /// A bridge with the default ageing and limit.
    pub fn bridge(self, name: &str) -> Layout {
        self.bridge_with(name, vringswitch_config::DEFAULT_FDB_AGING_S, None)
    }

    /// A bridge whose idle addresses are forgotten after `aging_s`, and that learns at most
    /// `max_learned` addresses (the default without).
    pub fn bridge_with(mut self, name: &str, aging_s: u64, max_learned: Option<u32>) -> Layout {
        self.config.bridges.push(BridgeConfig {
            name: Spanned::new(0..0, name.to_owned()),
            fdb_aging_s: Spanned::new(0..0, aging_s),
            fdb_max_learned: Spanned::new(
                0..0,
                max_learned.unwrap_or(vringswitch_config::DEFAULT_BRIDGE_MAX_LEARNED),
            ),
            external_ids: Default::default(),
        });
        self
    }

    /// A port (see [`vhost_user`], [`tap`], [`afxdp`]).
    pub fn port(mut self, port: PortSpec) -> Layout {
        self.config.ports.push(port);
        self
    }

    /// Ports.
    pub fn ports(self, ports: impl IntoIterator<Item = PortSpec>) -> Layout {
        ports.into_iter().fold(self, Layout::port)
    }

    /// Security groups (ports name them in `security_groups`).
    pub fn security_groups(
        mut self,
        groups: impl IntoIterator<Item = vringswitch_config::SecurityGroupSpec>,
    ) -> Layout {
        self.config.security_groups.extend(groups);
        self
    }

    /// The connection table's size and the most connections one port holds.
    pub fn conntrack(mut self, max: u32, per_port: u32) -> Layout {
        self.config.dataplane.conntrack_max = Spanned::new(0..0, max);
        self.config.dataplane.conntrack_per_port = Spanned::new(0..0, per_port);
        self
    }

    /// The sockets of its vhost-user ports.
    /// How EVPN tunnel ports watch FRR: its run directory, the restart hold.
    pub fn evpn(mut self, frr_run_dir: &Path, restart_hold_s: u64) -> Layout {
        self.config.evpn = vringswitch_config::EvpnConfig {
            frr_run_dir: Spanned::new(0..0, frr_run_dir.to_path_buf()),
            restart_hold_s: Spanned::new(0..0, restart_hold_s),
        };
        self
    }

    /// The restart hold the layout's `evpn` settings have.
    pub fn restart_hold_s(&self) -> u64 {
        *self.config.evpn.restart_hold_s.get_ref()
    }

    pub fn sockets(&self) -> Vec<PathBuf> {
        self.config
            .ports
            .iter()
            .filter_map(|p| p.socket().map(Path::to_path_buf))
            .collect()
    }

    /// The configuration file, as the config crate writes it.
    pub fn toml(&self) -> String {
        vringswitch_config::to_toml(&self.config).expect("a layout writes as TOML")
    }
}

/// A port of `kind` on `bridge`, with nothing else set.
pub fn port(name: &str, bridge: &str, kind: KindSpec) -> PortSpec {
    PortSpec::new(name, bridge, kind)
}

/// A vhost-user port on `bridge`: vringswitch listens on `socket`.
pub fn vhost_user(name: &str, bridge: &str, socket: &Path) -> PortSpec {
    port(
        name,
        bridge,
        KindSpec::VhostUser(VhostUserSettings {
            socket: socket.to_path_buf(),
            mode: Some(SocketMode::Server),
            ..VhostUserSettings::default()
        }),
    )
}

/// A vhost-user port on `bridge`, on `socket` in `mode`, with `queues` queue pairs (the
/// default without).
pub fn vhost_user_in(
    name: &str,
    bridge: &str,
    socket: &Path,
    mode: SocketMode,
    queues: Option<u16>,
) -> PortSpec {
    vhost_user_with(
        name,
        bridge,
        VhostUserSettings {
            socket: socket.to_path_buf(),
            mode: Some(mode),
            queues,
            offloads: None,
        },
    )
}

/// A vhost-user port on `bridge` with these settings.
pub fn vhost_user_with(name: &str, bridge: &str, settings: VhostUserSettings) -> PortSpec {
    port(name, bridge, KindSpec::VhostUser(settings))
}

/// A TAP port on `bridge`, interface `ifname`.
pub fn tap(name: &str, bridge: &str, ifname: &str) -> PortSpec {
    tap_with(
        name,
        bridge,
        TapSettings {
            ifname: Some(ifname.to_owned()),
            ..TapSettings::default()
        },
    )
}

/// A TAP port on `bridge` with these settings.
pub fn tap_with(name: &str, bridge: &str, settings: TapSettings) -> PortSpec {
    port(name, bridge, KindSpec::Tap(settings))
}

/// An AF_XDP port on `bridge`, on queue 0 of interface `ifname`.
pub fn afxdp(name: &str, bridge: &str, ifname: &str) -> PortSpec {
    afxdp_with(
        name,
        bridge,
        AfXdpSettings {
            ifname: Some(ifname.to_owned()),
            ..AfXdpSettings::default()
        },
    )
}

/// An AF_XDP port on `bridge` with these settings.
pub fn afxdp_with(name: &str, bridge: &str, settings: AfXdpSettings) -> PortSpec {
    port(name, bridge, KindSpec::AfXdp(settings))
}

/// A VXLAN port on `bridge` for VNI `vni` from `local`, in static mode to `remotes`.
pub fn vxlan_static(
    name: &str,
    bridge: &str,
    vni: u32,
    local: impl ToString,
    remotes: &[impl ToString],
) -> PortSpec {
    port(
        name,
        bridge,
        KindSpec::Vxlan(VxlanSettings {
            vni: Some(vni),
            local: Some(local.to_string()),
            control: Some(VxlanControl::Static),
            remotes: Some(remotes.iter().map(|r| r.to_string()).collect()),
            ..VxlanSettings::default()
        }),
    )
}

/// A VXLAN tunnel port under EVPN control (FRR's routes name the other ends).
pub fn vxlan_evpn(name: &str, bridge: &str, vni: u32, local: std::net::Ipv4Addr) -> PortSpec {
    port(
        name,
        bridge,
        KindSpec::Vxlan(VxlanSettings {
            vni: Some(vni),
            local: Some(local.to_string()),
            control: Some(VxlanControl::Evpn),
            ..VxlanSettings::default()
        }),
    )
}

/// The VLAN setting of an access port of VLAN `tag`.
pub fn access(tag: u16) -> VlanConfig {
    VlanConfig::Access { tag }
}

/// The VLAN setting of a trunk of `tags`.
pub fn trunk(tags: &[u16]) -> VlanConfig {
    VlanConfig::Trunk {
        tags: tags.to_vec(),
    }
}

/// Port security: the port may send only from `macs`.
pub fn macs(macs: &[&str]) -> Option<Vec<String>> {
    Some(macs.iter().map(|m| (*m).to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_is_read_back_as_it_was_built() {
        let text = Layout::new()
            .cores(&[1])
            .burst(16)
            .bridge("br0")
            .bridge_with("br1", 60, Some(100))
            .port(PortSpec {
                vlan: Some(trunk(&[10, 20])),
                allowed_macs: macs(&["02:00:00:00:00:01"]),
                ..vhost_user("vm1", "br0", Path::new("/run/vs/vm1.sock"))
            })
            .port(tap_with(
                "up0",
                "br1",
                TapSettings {
                    ifname: Some("vs-up0".into()),
                    mtu: Some(9000),
                    offloads: Some(false),
                },
            ))
            .port(afxdp("wire", "br1", "eth1"))
            .toml();
        let c = Config::parse(&text, Path::new("layout.toml")).unwrap();
        assert_eq!(*c.dataplane.burst.get_ref(), 16);
        assert_eq!(*c.bridges[1].fdb_aging_s.get_ref(), 60);
        assert_eq!(c.ports.len(), 3);
        assert_eq!(c.ports[0].vlan, Some(trunk(&[10, 20])));
        assert_eq!(
            c.ports[1].kind,
            KindSpec::Tap(TapSettings {
                ifname: Some("vs-up0".into()),
                mtu: Some(9000),
                offloads: Some(false),
            })
        );
        assert_eq!(c.ports[2].ifname(), Some("eth1"));
    }
}
