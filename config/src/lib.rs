//! The vringswitch configuration file.
//!
//! Owns the TOML schema, parsing with precise error locations (file, line, column) and the
//! semantic checks that make a configuration safe to start from (unique names, ports on
//! existing bridges, absolute socket paths...). It never touches sockets, threads or guests:
//! the daemon turns a validated [`Config`] into running parts.
#![deny(unsafe_code)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

pub mod mirror;
pub mod port;
pub mod security_group;

pub use mirror::{check_mirrors, MirrorDirection, MirrorSpec};
pub use port::afxdp::{check_xdp_queue, AfXdpSettings, XdpMode, MAX_XDP_QUEUE};
pub use port::tap::{check_mtu, TapSettings, MAX_MTU, MIN_MTU};
pub use port::vhost_user::{
    check_queues, check_socket_path, default_socket, SocketMode, VhostUserSettings,
    CLIENT_SOCKET_SUBDIR,
};
pub use port::vxlan::{VxlanControl, VxlanSettings};
pub use port::{
    check_ifname, check_port_settings, FieldError, KindSettings, KindSpec, KindWords, Live,
    PortSpec, PortType, MAX_IFNAME,
};
pub use security_group::{
    check_allowed_ips, check_port_groups, check_security_groups, parse_cidr, Cidr, Ethertype,
    Protocol, RuleDirection, RuleSpec, SecurityGroupSpec,
};

/// Default directory for vhost-user sockets of the built-in configuration.
pub const DEFAULT_SOCKET_DIR: &str = "/run/vringswitch";
/// Default FDB ageing time, as in OVS and Linux bridges.
pub const DEFAULT_FDB_AGING_S: u64 = 300;
/// Addresses a bridge learns at most unless configured otherwise. OVS's `mac-table-size`
/// defaults to 2048; this leaves room for a few hundred VMs with a few addresses each.
pub const DEFAULT_BRIDGE_MAX_LEARNED: u32 = 8192;
/// Addresses a port learns at most unless configured otherwise: one VM with containers or
/// nested VMs behind it has a few dozen; one that sends from endless addresses is held to
/// this many, so that it cannot fill its bridge's table.
pub const DEFAULT_PORT_MAX_LEARNED: u32 = 1024;
/// The highest `fdb_max_learned` accepted.
pub const MAX_MAX_LEARNED: u32 = 1_000_000;
/// Default number of frames a worker pops from one queue per poll.
pub const DEFAULT_BURST: usize = 32;
/// Default maximum number of queue pairs a vhost-user port accepts.
pub const DEFAULT_QUEUE_PAIRS: u16 = 4;
/// Largest number of queue pairs a port may accept.
pub const MAX_QUEUE_PAIRS: u16 = 16;
/// Largest burst a worker may be configured with.
pub const MAX_BURST: usize = 64;
/// Connections tracked at most unless configured otherwise (112 bytes each).
pub const DEFAULT_CONNTRACK_MAX: u32 = 1 << 20;
/// Connections one port holds at most unless configured otherwise.
pub const DEFAULT_CONNTRACK_PER_PORT: u32 = 65_536;
/// The bounds of `conntrack_max`.
pub const MIN_CONNTRACK: u32 = 1024;
pub const MAX_CONNTRACK: u32 = 1 << 26;
/// Largest vring size the switch accepts from a frontend.
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// Errors from loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("config file {path}, line {line}, column {column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The file parses but is inconsistent (duplicate names, missing bridge, ...).
    #[error("config file {path}, line {line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Whole daemon configuration.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Config {
    /// Directory of the vhost-user sockets: the default place of a port's socket and where
    /// the API's ports must put theirs. `--socket-dir` wins over it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_dir: Option<Spanned<PathBuf>>,
    pub dataplane: DataplaneConfig,
    pub bridges: Vec<BridgeConfig>,
    pub ports: Vec<PortSpec>,
    /// Port mirroring: frames of some ports copied to another.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorSpec>,
    /// Security groups ports name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<SecurityGroupSpec>,
    /// How EVPN tunnel ports work with FRR.
    pub evpn: EvpnConfig,
    /// Where each port's fields lie in the file (one per port; none for a configuration
    /// not read from a file), for the line of an error.
    #[serde(skip)]
    port_spans: SpansInFile,
    /// Where each mirror lies in the file, likewise.
    #[serde(skip)]
    mirror_spans: MirrorSpans,
    /// Where each security group lies in the file, likewise.
    #[serde(skip)]
    group_spans: MirrorSpans,
}

/// Where each mirror lies in the file it was read from (not part of what it says).
#[derive(Debug, Clone, Default)]
struct MirrorSpans(Vec<std::ops::Range<usize>>);

impl PartialEq for MirrorSpans {
    fn eq(&self, _: &MirrorSpans) -> bool {
        true
    }
}

/// Where each port lies in the file it was read from. Not part of what a configuration
/// says: two configurations that say the same are equal wherever their ports were written.
#[derive(Debug, Clone, Default)]
struct SpansInFile(Vec<PortSpans>);

impl PartialEq for SpansInFile {
    fn eq(&self, _: &SpansInFile) -> bool {
        true
    }
}

/// The configuration file as TOML reads it: ports as their fields, each with where it lies.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    socket_dir: Option<Spanned<PathBuf>>,
    #[serde(default)]
    dataplane: DataplaneConfig,
    #[serde(default)]
    bridges: Vec<BridgeConfig>,
    #[serde(default)]
    ports: Vec<Spanned<std::collections::BTreeMap<String, Spanned<toml::Value>>>>,
    #[serde(default)]
    mirrors: Vec<Spanned<MirrorSpec>>,
    #[serde(default)]
    security_groups: Vec<Spanned<SecurityGroupSpec>>,
    #[serde(default)]
    evpn: EvpnConfig,
}

/// Where a port's table and each of its fields lie in the configuration file.
#[derive(Debug, Clone, Default, PartialEq)]
struct PortSpans {
    table: std::ops::Range<usize>,
    fields: Vec<(String, std::ops::Range<usize>)>,
}

impl PortSpans {
    /// Where `field` lies, else the port's name, else its table.
    fn of(&self, field: Option<&str>) -> std::ops::Range<usize> {
        let find = |f: &str| {
            self.fields
                .iter()
                .find(|(k, _)| k == f)
                .map(|(_, s)| s.clone())
        };
        field
            .and_then(find)
            .or_else(|| find("name"))
            .unwrap_or_else(|| self.table.clone())
    }
}

/// How EVPN tunnel ports work with FRR (the `[evpn]` table).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvpnConfig {
    /// FRR's run directory, where the pid files of zebra and bgpd are: how the daemon knows
    /// FRR runs. While either does not, the routes zebra last installed are kept (stale)
    /// and the data path forwards on them.
    #[serde(default = "default_frr_run_dir")]
    pub frr_run_dir: Spanned<PathBuf>,
    /// Seconds the kept routes stay once FRR is back (unless every one of them comes
    /// back sooner); then the routes zebra has are taken whole, the others dropped.
    #[serde(default = "default_restart_hold_s")]
    pub restart_hold_s: Spanned<u64>,
}

/// Debian's FRR (`/var/run/frr` is the same directory; FRR started with `-N NAME` has
/// its files in `/var/run/frr/NAME`).
pub const DEFAULT_FRR_RUN_DIR: &str = "/run/frr";
/// FRR's BGP graceful restart time: the other hosts keep this host's routes as long.
pub const DEFAULT_RESTART_HOLD_S: u64 = 120;
/// Longest restart hold.
pub const MAX_RESTART_HOLD_S: u64 = 3600;

fn default_frr_run_dir() -> Spanned<PathBuf> {
    Spanned::new(0..0, PathBuf::from(DEFAULT_FRR_RUN_DIR))
}

fn default_restart_hold_s() -> Spanned<u64> {
    Spanned::new(0..0, DEFAULT_RESTART_HOLD_S)
}

impl Default for EvpnConfig {
    fn default() -> Self {
        EvpnConfig {
            frr_run_dir: default_frr_run_dir(),
            restart_hold_s: default_restart_hold_s(),
        }
    }
}

/// Worker threads and their polling behaviour.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// CPU cores to pin one worker each to.
    #[serde(default = "default_cores")]
    pub cores: Spanned<Vec<usize>>,
    /// Frames popped from one queue per poll (1 to 64).
    #[serde(default = "default_burst")]
    pub burst: Spanned<usize>,
    /// Microseconds of empty polls before a worker sleeps on the kick eventfds.
    #[serde(default = "default_idle_us")]
    pub idle_poll_us: u64,
    /// Connections the security groups' table tracks at most (its size, fixed at start;
    /// memory is taken when the first port with groups comes).
    #[serde(default = "default_conntrack_max")]
    pub conntrack_max: Spanned<u32>,
    /// Connections one port may hold at most (those it opened, or that came to it from a
    /// port without groups); past it its new connections are refused (`ct_full`), so
    /// that one VM cannot fill the table for the others.
    #[serde(default = "default_conntrack_per_port")]
    pub conntrack_per_port: Spanned<u32>,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            cores: default_cores(),
            burst: default_burst(),
            idle_poll_us: default_idle_us(),
            conntrack_max: default_conntrack_max(),
            conntrack_per_port: default_conntrack_per_port(),
        }
    }
}

/// One L2 learning bridge.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    pub name: Spanned<String>,
    /// Seconds after which an idle FDB entry is forgotten.
    #[serde(default = "default_aging")]
    pub fdb_aging_s: Spanned<u64>,
    /// Most addresses the bridge learns, over all its ports (static entries not counted).
    #[serde(default = "default_bridge_max_learned")]
    pub fdb_max_learned: Spanned<u32>,
    /// Metadata for orchestrators, kept and shown, never acted on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_ids: ExternalIds,
}

/// Whether a port is meant to carry traffic. Down: the switch neither polls it nor
/// delivers to it (its VM keeps its socket), and monitoring expects it to have no VM.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    #[default]
    Up,
    Down,
}

impl AdminState {
    pub fn is_up(&self) -> bool {
        *self == AdminState::Up
    }
}

impl std::fmt::Display for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AdminState::Up => "up",
            AdminState::Down => "down",
        })
    }
}

impl std::fmt::Display for VlanConfig {
    /// As the configuration says it, in words: `access 10`, `trunk 10,20`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VlanConfig::Access { tag } => write!(f, "access {tag}"),
            VlanConfig::Trunk { tags } => {
                let tags: Vec<String> = tags.iter().map(u16::to_string).collect();
                write!(f, "trunk {}", tags.join(","))
            }
        }
    }
}

/// A policer: the most a port may send (`police_rx`) or be sent (`police_tx`), in bits
/// and/or frames per second, with the burst it may reach above that. Frames past it are
/// dropped and counted as `policed`, as OVS's `ingress_policing_rate` and VPP's policers
/// do. At least one rate is given.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoliceConfig {
    /// Kilobits (1000 bits) of frames per second, Ethernet header to the end of the frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100_000_000)]
    pub rate_kbps: Option<u64>,
    /// Kilobits the port may send at once above the rate. Left out: half a second at the
    /// rate, and never less than the largest frame (525 kb: a 64 KiB TSO frame). TCP through
    /// a policer needs about that much: with 100 ms it was measured at half the rate (its
    /// losses come in bursts, and it waits out a 200 ms timeout), with 500 ms at 99%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 525, maximum = 100_000_000)]
    pub burst_kb: Option<u64>,
    /// Frames per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100_000_000)]
    pub rate_pps: Option<u64>,
    /// Frames the port may send at once above `rate_pps`. Left out: half a second at the
    /// rate, and never less than 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100_000_000)]
    pub burst_packets: Option<u64>,
}

/// Kilobits of the largest frame a port sends (a 64 KiB TSO frame, Ethernet header and
/// all): the smallest bit burst of a policer, or such a frame could never pass.
pub const MIN_POLICE_BURST_KB: u64 = 525;
/// Highest rate or burst a policer takes.
pub const MAX_POLICE: u64 = 100_000_000;

impl PoliceConfig {
    /// The bit rate and burst, defaults filled in, in bits: None without `rate_kbps`.
    pub fn bits(&self) -> Option<(u64, u64)> {
        let rate = self.rate_kbps?;
        let burst = self.burst_kb.unwrap_or((rate / 2).max(MIN_POLICE_BURST_KB));
        Some((rate * 1000, burst * 1000))
    }

    /// The frame rate and burst, defaults filled in: None without `rate_pps`.
    pub fn packets(&self) -> Option<(u64, u64)> {
        let rate = self.rate_pps?;
        Some((rate, self.burst_packets.unwrap_or((rate / 2).max(64))))
    }
}

impl std::fmt::Display for PoliceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some((rate, burst)) = self.bits() {
            parts.push(format!("{} kbit/s, burst {} kb", rate / 1000, burst / 1000));
        }
        if let Some((rate, burst)) = self.packets() {
            parts.push(format!("{rate} frames/s, burst {burst}"));
        }
        f.write_str(&parts.join(" and "))
    }
}

/// Checks a policer (`police_rx` or `police_tx`, named `what`).
pub fn check_police(what: &str, p: &PoliceConfig) -> Result<(), String> {
    if p.rate_kbps.is_none() && p.rate_pps.is_none() {
        return Err(format!(
            "{what} needs rate_kbps, rate_pps or both: without a rate it would police nothing"
        ));
    }
    if p.rate_kbps.is_none() && p.burst_kb.is_some() {
        return Err(format!("{what}: burst_kb goes with rate_kbps"));
    }
    if p.rate_pps.is_none() && p.burst_packets.is_some() {
        return Err(format!("{what}: burst_packets goes with rate_pps"));
    }
    for (field, v, min) in [
        ("rate_kbps", p.rate_kbps, 1),
        ("burst_kb", p.burst_kb, MIN_POLICE_BURST_KB),
        ("rate_pps", p.rate_pps, 1),
        ("burst_packets", p.burst_packets, 1),
    ] {
        if let Some(v) = v.filter(|v| !(min..=MAX_POLICE).contains(v)) {
            let why = if field == "burst_kb" && v < MIN_POLICE_BURST_KB {
                " (a 64 KiB frame is 525 kb: a smaller burst would never let one through)"
            } else {
                ""
            };
            return Err(format!(
                "{what}: {field} must be from {min} to {MAX_POLICE}, not {v}{why}"
            ));
        }
    }
    Ok(())
}

/// A port's VLAN setting.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum VlanConfig {
    /// Untagged frames enter VLAN `tag`; frames leave untagged; tagged frames are refused.
    Access {
        #[schema(minimum = 1, maximum = 4094)]
        tag: u16,
    },
    /// Frames tagged with one of `tags` enter and leave tagged; others are refused.
    Trunk {
        #[schema(schema_with = vlan_list_schema)]
        tags: Vec<u16>,
    },
}

/// OpenAPI schema of a trunk's VLAN list: 1 to 4094 distinct ids of 1 to 4094.
fn vlan_list_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    let id = ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Integer))
        .minimum(Some(1))
        .maximum(Some(MAX_VLAN_ID))
        .build();
    ArrayBuilder::new()
        .items(id)
        .min_items(Some(1))
        .max_items(Some(usize::from(MAX_VLAN_ID)))
        .unique_items(true)
        .build()
}

/// Most source MAC addresses one port may be locked to.
pub const MAX_ALLOWED_MACS: usize = 16;

/// Parses `aa:bb:cc:dd:ee:ff` (hex digits of either case).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)");
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

/// Free key-value metadata on a bridge or port, kept and shown but never acted on: the
/// hook of orchestrators (a VM's UUID, a Neutron port's iface-id), as OVS's `external_ids`.
pub type ExternalIds = BTreeMap<String, String>;

/// Most entries of one [`ExternalIds`].
pub const MAX_EXTERNAL_IDS: usize = 64;
/// Longest key, in bytes.
pub const MAX_EXTERNAL_ID_KEY: usize = 64;
/// Longest value, in bytes.
pub const MAX_EXTERNAL_ID_VALUE: usize = 1024;

/// Checks external IDs: at most [`MAX_EXTERNAL_IDS`]; keys of 1 to 64 letters, digits and
/// `. _ - : /`; values of at most 1024 bytes, no control characters.
pub fn check_external_ids(ids: &ExternalIds) -> Result<(), String> {
    if ids.len() > MAX_EXTERNAL_IDS {
        return Err(format!(
            "external_ids has {} entries; at most {MAX_EXTERNAL_IDS}",
            ids.len()
        ));
    }
    for (key, value) in ids {
        check_external_id_key(key)?;
        if value.len() > MAX_EXTERNAL_ID_VALUE {
            return Err(format!(
                "external_ids {key:?}: the value is {} bytes long; at most {MAX_EXTERNAL_ID_VALUE}",
                value.len()
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(format!(
                "external_ids {key:?}: the value has a control character"
            ));
        }
    }
    Ok(())
}

/// Checks one external ID's key (see [`check_external_ids`]).
pub fn check_external_id_key(key: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-:/".contains(c);
    if key.is_empty() || key.len() > MAX_EXTERNAL_ID_KEY || !key.chars().all(ok_char) {
        return Err(format!(
            "external_ids key {key:?} must be 1 to {MAX_EXTERNAL_ID_KEY} letters, digits and \
             . _ - : /"
        ));
    }
    Ok(())
}

/// Checks a port-security list: 1 to [`MAX_ALLOWED_MACS`] unicast, non-zero MACs, none
/// twice. Returns them parsed.
pub fn check_allowed_macs(macs: &[String]) -> Result<Vec<[u8; 6]>, String> {
    if macs.is_empty() {
        return Err(
            "allowed_macs is empty, which would drop every frame: leave it out to allow any \
             source MAC"
                .into(),
        );
    }
    if macs.len() > MAX_ALLOWED_MACS {
        return Err(format!(
            "allowed_macs lists {} addresses; at most {MAX_ALLOWED_MACS}",
            macs.len()
        ));
    }
    let mut out: Vec<[u8; 6]> = Vec::with_capacity(macs.len());
    for m in macs {
        let mac = parse_mac(m)?;
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(format!(
                "{m} is a group or zero address: a port can only send from a unicast MAC"
            ));
        }
        if out.contains(&mac) {
            return Err(format!("{m} is listed twice in allowed_macs"));
        }
        out.push(mac);
    }
    Ok(out)
}

/// Highest VLAN id a port may name (4095 is reserved).
pub const MAX_VLAN_ID: u16 = 4094;

/// Checks a VLAN setting: ids from 1 to 4094, a trunk with at least one, none twice.
pub fn check_vlan(vlan: &VlanConfig) -> Result<(), String> {
    let check = |v: u16| {
        if (1..=MAX_VLAN_ID).contains(&v) {
            Ok(())
        } else {
            Err(format!(
                "VLAN id {v} is out of range: use 1 to {MAX_VLAN_ID}"
            ))
        }
    };
    match vlan {
        VlanConfig::Access { tag } => check(*tag),
        VlanConfig::Trunk { tags } => {
            if tags.is_empty() {
                return Err("a trunk must carry at least one VLAN (tags = [..])".into());
            }
            let mut seen = HashSet::new();
            for &v in tags {
                check(v)?;
                if !seen.insert(v) {
                    return Err(format!("VLAN {v} is listed twice in tags"));
                }
            }
            Ok(())
        }
    }
}

fn default_cores() -> Spanned<Vec<usize>> {
    Spanned::new(0..0, vec![default_core()])
}
fn default_burst() -> Spanned<usize> {
    Spanned::new(0..0, DEFAULT_BURST)
}
fn default_conntrack_max() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_CONNTRACK_MAX)
}

fn default_conntrack_per_port() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_CONNTRACK_PER_PORT)
}

fn default_idle_us() -> u64 {
    200
}
fn default_aging() -> Spanned<u64> {
    Spanned::new(0..0, DEFAULT_FDB_AGING_S)
}
fn default_bridge_max_learned() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_BRIDGE_MAX_LEARNED)
}
/// The last CPU of the machine: on a small host it leaves CPU 0 to the VMs and the kernel.
pub fn default_core() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() - 1)
        .unwrap_or(0)
}

impl Config {
    /// A configuration not read from a file.
    pub fn new(
        socket_dir: Option<Spanned<PathBuf>>,
        dataplane: DataplaneConfig,
        bridges: Vec<BridgeConfig>,
        ports: Vec<PortSpec>,
    ) -> Config {
        Config {
            socket_dir,
            dataplane,
            bridges,
            ports,
            mirrors: Vec::new(),
            security_groups: Vec::new(),
            evpn: EvpnConfig::default(),
            port_spans: SpansInFile::default(),
            mirror_spans: MirrorSpans::default(),
            group_spans: MirrorSpans::default(),
        }
    }

    /// The same, with these mirrors.
    pub fn with_mirrors(mut self, mirrors: Vec<MirrorSpec>) -> Config {
        self.mirrors = mirrors;
        self
    }

    /// The same, with these security groups.
    pub fn with_security_groups(mut self, groups: Vec<SecurityGroupSpec>) -> Config {
        self.security_groups = groups;
        self
    }

    /// The built-in configuration used when no `--config` is given: bridge `br0` with ports
    /// `vm1` and `vm2`, server-mode sockets in `socket_dir`.
    pub fn builtin(socket_dir: &Path) -> Config {
        let port = |name: &str| {
            let settings = VhostUserSettings {
                socket: socket_dir.join(format!("{name}.sock")),
                mode: Some(SocketMode::Server),
                ..VhostUserSettings::default()
            };
            PortSpec::new(name, "br0", KindSpec::VhostUser(settings))
        };
        Config::new(
            None,
            DataplaneConfig::default(),
            vec![BridgeConfig {
                name: Spanned::new(0..0, "br0".to_string()),
                fdb_aging_s: default_aging(),
                fdb_max_learned: default_bridge_max_learned(),
                external_ids: ExternalIds::new(),
            }],
            vec![port("vm1"), port("vm2")],
        )
    }

    /// Gives every port without a socket its default path in `socket_dir` (see
    /// [`default_socket`]), then checks the paths as [`Config::parse`] checks given ones.
    pub fn fill_default_sockets(&mut self, socket_dir: &Path) -> Result<(), String> {
        let mut seen = HashSet::new();
        for port in &mut self.ports {
            let name = port.name.clone();
            port.kind.settings_mut().fill_socket(&name, socket_dir);
            let Some(socket) = port.socket() else {
                continue;
            };
            check_socket_path(socket).map_err(|m| format!("port {name}: {m}"))?;
            if !seen.insert(socket.to_path_buf()) {
                return Err(format!("socket {} is used by two ports", socket.display()));
            }
        }
        Ok(())
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let syntax = |span: Option<std::ops::Range<usize>>, message: &str| {
            let (line, column) = span.map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message: in_words(message),
            }
        };
        let file: ConfigFile = toml::from_str(text).map_err(|e| syntax(e.span(), e.message()))?;
        let mut ports = Vec::with_capacity(file.ports.len());
        let mut port_spans = Vec::with_capacity(file.ports.len());
        for table in file.ports {
            let table_span = table.span();
            let mut fields: Vec<(String, Spanned<toml::Value>)> =
                table.into_inner().into_iter().collect();
            // In the order written: the first field at fault is the one reported.
            fields.sort_by_key(|(_, v)| v.span().start);
            let spans = PortSpans {
                table: table_span,
                fields: fields.iter().map(|(k, v)| (k.clone(), v.span())).collect(),
            };
            let mut values = Vec::with_capacity(fields.len());
            for (key, value) in fields {
                let span = value.span();
                let value = serde_json::to_value(value.into_inner())
                    .map_err(|e| syntax(Some(span), &e.to_string()))?;
                values.push((key, value));
            }
            match PortSpec::from_fields(values) {
                Ok(spec) => ports.push(spec),
                Err(e) if e.syntax => {
                    return Err(syntax(Some(spans.of(e.field.as_deref())), &e.message))
                }
                Err(e) => {
                    return Err(ConfigError::Invalid {
                        path: path.to_path_buf(),
                        line: line_col(text, spans.of(e.field.as_deref()).start).0,
                        message: e.message,
                    })
                }
            }
            port_spans.push(spans);
        }
        let mirror_spans = MirrorSpans(file.mirrors.iter().map(|m| m.span()).collect());
        let group_spans = MirrorSpans(file.security_groups.iter().map(|g| g.span()).collect());
        let config = Config {
            socket_dir: file.socket_dir,
            dataplane: file.dataplane,
            bridges: file.bridges,
            ports,
            mirrors: file.mirrors.into_iter().map(Spanned::into_inner).collect(),
            security_groups: file
                .security_groups
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
            evpn: file.evpn,
            port_spans: SpansInFile(port_spans),
            mirror_spans,
            group_spans,
        };
        config.validate(text, path)?;
        Ok(config)
    }

    fn validate(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let invalid = |span: std::ops::Range<usize>, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: line_col(text, span.start).0,
            message,
        };

        if let Some(dir) = &self.socket_dir {
            if !dir.get_ref().is_absolute() {
                return Err(invalid(
                    dir.span(),
                    format!("socket_dir {} must be absolute", dir.get_ref().display()),
                ));
            }
        }
        let cores = &self.dataplane.cores;
        if cores.get_ref().is_empty() {
            return Err(invalid(
                cores.span(),
                "dataplane.cores must name at least one core".into(),
            ));
        }
        let mut seen_cores = HashSet::new();
        for core in cores.get_ref() {
            if !seen_cores.insert(core) {
                return Err(invalid(
                    cores.span(),
                    format!("dataplane.cores names core {core} twice"),
                ));
            }
        }
        let run_dir = &self.evpn.frr_run_dir;
        if !run_dir.get_ref().is_absolute() {
            return Err(invalid(
                run_dir.span(),
                format!(
                    "evpn.frr_run_dir must be an absolute path, not {:?}",
                    run_dir.get_ref().display().to_string()
                ),
            ));
        }
        let hold = &self.evpn.restart_hold_s;
        if !(1..=MAX_RESTART_HOLD_S).contains(hold.get_ref()) {
            return Err(invalid(
                hold.span(),
                format!(
                    "evpn.restart_hold_s must be between 1 and {MAX_RESTART_HOLD_S}, not {}",
                    hold.get_ref()
                ),
            ));
        }
        let burst = *self.dataplane.burst.get_ref();
        if burst == 0 || burst > MAX_BURST {
            return Err(invalid(
                self.dataplane.burst.span(),
                format!("dataplane.burst must be between 1 and {MAX_BURST}, not {burst}"),
            ));
        }

        let (max, per_port) = (
            &self.dataplane.conntrack_max,
            &self.dataplane.conntrack_per_port,
        );
        if !(MIN_CONNTRACK..=MAX_CONNTRACK).contains(max.get_ref()) {
            return Err(invalid(
                max.span(),
                format!(
                    "dataplane.conntrack_max must be between {MIN_CONNTRACK} and \
                     {MAX_CONNTRACK} connections, not {}",
                    max.get_ref()
                ),
            ));
        }
        if *per_port.get_ref() == 0 || per_port.get_ref() > max.get_ref() {
            return Err(invalid(
                per_port.span(),
                format!(
                    "dataplane.conntrack_per_port must be between 1 and conntrack_max ({}), \
                     not {}",
                    max.get_ref(),
                    per_port.get_ref()
                ),
            ));
        }

        let mut bridges = HashSet::new();
        for bridge in &self.bridges {
            check_name("bridge", &bridge.name).map_err(|m| invalid(bridge.name.span(), m))?;
            if !bridges.insert(bridge.name.get_ref().as_str()) {
                return Err(invalid(
                    bridge.name.span(),
                    format!("duplicate bridge name {:?}", bridge.name.get_ref()),
                ));
            }
            check_aging(*bridge.fdb_aging_s.get_ref())
                .map_err(|m| invalid(bridge.fdb_aging_s.span(), m))?;
            check_max_learned(*bridge.fdb_max_learned.get_ref())
                .map_err(|m| invalid(bridge.fdb_max_learned.span(), m))?;
            check_external_ids(&bridge.external_ids).map_err(|m| {
                invalid(
                    bridge.name.span(),
                    format!("bridge {:?}: {m}", bridge.name.get_ref()),
                )
            })?;
        }

        let mut ports = HashSet::new();
        let mut sockets = HashSet::new();
        let mut ifnames = HashSet::new();
        let mut endpoints = HashSet::new();
        let no_spans = PortSpans::default();
        for (i, port) in self.ports.iter().enumerate() {
            let spans = self.port_spans.0.get(i).unwrap_or(&no_spans);
            let at = |field: &str| spans.of(Some(field));
            port.check()
                .map_err(|e| invalid(spans.of(e.field.as_deref()), e.message))?;
            if !ports.insert(port.name.as_str()) {
                return Err(invalid(
                    at("name"),
                    format!("duplicate port name {:?}", port.name),
                ));
            }
            if !bridges.contains(port.bridge.as_str()) {
                return Err(invalid(
                    at("bridge"),
                    format!(
                        "port {:?} names bridge {:?}, which is not defined in [[bridges]]",
                        port.name, port.bridge
                    ),
                ));
            }
            if let Some(name) = port.ifname() {
                if !ifnames.insert(name.to_owned()) {
                    return Err(invalid(
                        at("ifname"),
                        format!("interface {name} is used by two ports"),
                    ));
                }
            }
            for claim in port.claims() {
                if !endpoints.insert(claim.clone()) {
                    return Err(invalid(
                        at("vni"),
                        format!("{claim} is taken by two tunnel ports"),
                    ));
                }
            }
            // A port without a socket gets its default from fill_default_sockets.
            if let Some(socket) = port.socket() {
                if !sockets.insert(socket.to_owned()) {
                    return Err(invalid(
                        at("socket"),
                        format!("socket {} is used by two ports", socket.display()),
                    ));
                }
            }
        }
        let specs: Vec<&PortSpec> = self.ports.iter().collect();
        check_mirrors(&self.mirrors, &specs).map_err(|(i, message)| {
            invalid(self.mirror_spans.0.get(i).cloned().unwrap_or(0..0), message)
        })?;
        check_security_groups(&self.security_groups, &specs).map_err(|(i, message)| {
            let span = match i.checked_sub(self.security_groups.len()) {
                None => self.group_spans.0.get(i).cloned(),
                Some(p) => self
                    .port_spans
                    .0
                    .get(p)
                    .map(|s| s.of(Some("security_groups"))),
            };
            invalid(span.unwrap_or(0..0), message)
        })?;
        Ok(())
    }
}

/// Checks a limit on learnt addresses (a bridge's or a port's `fdb_max_learned`).
pub fn check_max_learned(n: u32) -> Result<(), String> {
    if !(1..=MAX_MAX_LEARNED).contains(&n) {
        return Err(format!(
            "fdb_max_learned must be between 1 and {MAX_MAX_LEARNED} addresses, not {n}"
        ));
    }
    Ok(())
}

/// Checks an FDB ageing time in seconds.
pub fn check_aging(aging: u64) -> Result<(), String> {
    if !(1..=1_000_000).contains(&aging) {
        return Err(format!(
            "fdb_aging_s must be between 1 and 1000000 seconds, not {aging}"
        ));
    }
    Ok(())
}

/// A parser's message with Rust's type names said in words: "expected u16" becomes
/// "expected an integer from 0 to 65535".
pub fn in_words(message: &str) -> String {
    let mut out = message.to_owned();
    for (rust, words) in [
        ("usize", "a non-negative integer"),
        ("u64", "a non-negative integer"),
        ("u32", "an integer from 0 to 4294967295"),
        ("u16", "an integer from 0 to 65535"),
        ("u8", "an integer from 0 to 255"),
        ("a sequence", "a list"),
        ("a map", "a table"),
    ] {
        out = out.replace(&format!("expected {rust}"), &format!("expected {words}"));
    }
    out
}

/// Renders a configuration as TOML (e.g. to show the built-in one).
pub fn to_toml(config: &Config) -> Result<String, toml::ser::Error> {
    toml::to_string(config)
}

fn check_name(what: &str, name: &Spanned<String>) -> Result<(), String> {
    check_name_str(what, name.get_ref())
}

/// Checks a bridge or port name: 1 to 64 characters of A-Z a-z 0-9 - _ . (`what` names it in
/// the message).
pub fn check_name_str(what: &str, name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        return Err(format!(
            "{what} name {name:?} must be 1 to 64 characters of A-Z a-z 0-9 - _ ."
        ));
    }
    Ok(())
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[dataplane]
cores = [1]

[[bridges]]
name = "br0"

[[bridges]]
name = "br1"
fdb_aging_s = 60

[[ports]]
name = "vm1"
bridge = "br0"
type = "vhost-user"
socket = "/run/vringswitch/vm1.sock"
mode = "server"

[[ports]]
name = "vm2"
bridge = "br1"
type = "vhost-user"
socket = "/run/vringswitch/vm2.sock"
mode = "client"
queues = 2
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/vringswitch.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    fn vu_of(p: &PortSpec) -> &VhostUserSettings {
        match &p.kind {
            KindSpec::VhostUser(s) => s,
            k => panic!("a vhost-user port, not {}", k.port_type()),
        }
    }

    fn tap_of(p: &PortSpec) -> &TapSettings {
        match &p.kind {
            KindSpec::Tap(s) => s,
            k => panic!("a tap port, not {}", k.port_type()),
        }
    }

    fn xdp_of(p: &PortSpec) -> &AfXdpSettings {
        match &p.kind {
            KindSpec::AfXdp(s) => s,
            k => panic!("an afxdp port, not {}", k.port_type()),
        }
    }

    #[test]
    fn parses_the_documented_shape() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.dataplane.cores.get_ref(), &vec![1]);
        assert_eq!(*c.dataplane.burst.get_ref(), DEFAULT_BURST);
        assert_eq!(c.bridges.len(), 2);
        assert_eq!(*c.bridges[0].fdb_aging_s.get_ref(), 300);
        assert_eq!(*c.bridges[1].fdb_aging_s.get_ref(), 60);
        assert_eq!(vu_of(&c.ports[0]).mode, Some(SocketMode::Server));
        assert_eq!(vu_of(&c.ports[1]).mode, Some(SocketMode::Client));
        assert_eq!(vu_of(&c.ports[0]).queues, None);
        assert_eq!(vu_of(&c.ports[1]).queues, Some(2));
        assert_eq!(c.ports[1].port_type(), PortType::VhostUser);
    }

    #[test]
    fn builtin_is_valid() {
        let c = Config::builtin(Path::new(DEFAULT_SOCKET_DIR));
        let text = toml::to_string(&c).unwrap();
        let back = parse(&text).unwrap();
        assert_eq!(back.ports.len(), 2);
        assert_eq!(
            vu_of(&back.ports[0]).socket.as_path(),
            Path::new("/run/vringswitch/vm1.sock")
        );
    }

    #[test]
    fn syntax_error_names_file_line_and_column() {
        let e = err("[dataplane]\ncores = [1,,2]\n");
        assert!(
            e.starts_with("config file /etc/vringswitch.toml, line 2, column 12:"),
            "{e}"
        );
        // An unterminated array is reported where the file ends.
        let e = err("[dataplane]\ncores = [1\n");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn unknown_field_is_rejected_with_its_line() {
        let e = err("[[bridges]]\nname = \"br0\"\ncolour = \"red\"\n");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn policers_parse_with_their_defaults_and_are_checked() {
        let with = |v: &str| GOOD.replace("queues = 2", &format!("queues = 2\n{v}"));
        let c = Config::parse(
            &with("police_rx = { rate_kbps = 10000 }\npolice_tx = { rate_pps = 1000, burst_packets = 10 }"),
            Path::new("t"),
        )
        .unwrap();
        let rx = c.ports[1].police_rx.unwrap();
        assert_eq!(rx.bits(), Some((10_000_000, 5_000_000)), "half a second");
        assert_eq!(rx.packets(), None);
        let tx = c.ports[1].police_tx.unwrap();
        assert_eq!(tx.packets(), Some((1000, 10)));
        assert_eq!(tx.to_string(), "1000 frames/s, burst 10");
        // A slow rate still lets the largest frame through.
        let slow = PoliceConfig {
            rate_kbps: Some(100),
            burst_kb: None,
            rate_pps: Some(10),
            burst_packets: None,
        };
        assert_eq!(slow.bits(), Some((100_000, 525_000)));
        assert_eq!(slow.packets(), Some((10, 64)));
        for (v, message) in [
            (
                "police_rx = {}",
                "police_rx needs rate_kbps, rate_pps or both",
            ),
            ("police_rx = { burst_kb = 600 }", "needs rate_kbps"),
            (
                "police_tx = { rate_kbps = 100, burst_kb = 524 }",
                "burst_kb must be from 525 to 100000000, not 524 (a 64 KiB frame",
            ),
            ("police_tx = { rate_pps = 0 }", "rate_pps must be from 1"),
            (
                "police_tx = { rate_kbps = 100, burst_packets = 5 }",
                "burst_packets goes with rate_pps",
            ),
            ("police_tx = { rate_bps = 100 }", "unknown field `rate_bps`"),
        ] {
            let e = Config::parse(&with(v), Path::new("t"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(message), "{v}: {e}");
        }
    }

    #[test]
    fn allowed_macs_parse_and_are_checked() {
        let with = |v: &str| GOOD.replace("queues = 2", &format!("queues = 2\nallowed_macs = {v}"));
        let c = Config::parse(
            &with(r#"["02:00:00:00:00:01", "0A:bb:cc:dd:ee:ff"]"#),
            Path::new("t"),
        )
        .unwrap();
        assert_eq!(
            c.ports[1].allowed_macs.clone(),
            Some(vec![
                "02:00:00:00:00:01".to_string(),
                "0A:bb:cc:dd:ee:ff".to_string()
            ])
        );
        assert_eq!(c.ports[0].allowed_macs, None);
        let many = format!(
            "[{}]",
            (0..=MAX_ALLOWED_MACS)
                .map(|i| format!("\"02:00:00:00:00:{i:02x}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (v, message) in [
            ("[]", "drop every frame"),
            (r#"["02:00:00:00:00"]"#, "is not a MAC address"),
            (r#"["02:00:00:00:00:01:02"]"#, "is not a MAC address"),
            (r#"["02:00:00:00:00:+1"]"#, "is not a MAC address"),
            (r#"["02-00-00-00-00-01"]"#, "is not a MAC address"),
            (r#"["02:00:00:00:00:zz"]"#, "is not a MAC address"),
            (r#"["002:00:00:00:00:0"]"#, "is not a MAC address"),
            (r#"["01:00:5e:00:00:01"]"#, "group or zero"),
            (r#"["ff:ff:ff:ff:ff:ff"]"#, "group or zero"),
            (r#"["00:00:00:00:00:00"]"#, "group or zero"),
            (
                r#"["02:00:00:00:00:01", "02:00:00:00:00:01"]"#,
                "listed twice",
            ),
            (many.as_str(), "at most 16"),
            ("\"02:00:00:00:00:01\"", "invalid type"),
        ] {
            let e = err(&with(v));
            assert!(e.contains(message), "{v}: {e}");
        }
        let text = with("[]");
        let line = 1 + text
            .lines()
            .position(|l| l.starts_with("allowed_macs"))
            .unwrap();
        let e = err(&text);
        assert!(e.contains(&format!("line {line}")), "{e}");
    }

    #[test]
    fn vlans_parse_and_are_checked() {
        let with = |vlan: &str| GOOD.replace("queues = 2", &format!("queues = 2\nvlan = {vlan}"));
        let c = Config::parse(&with(r#"{ mode = "access", tag = 10 }"#), Path::new("t")).unwrap();
        assert_eq!(
            c.ports[1].vlan.clone(),
            Some(VlanConfig::Access { tag: 10 })
        );
        assert_eq!(c.ports[0].vlan, None);
        let c = Config::parse(
            &with(r#"{ mode = "trunk", tags = [10, 20] }"#),
            Path::new("t"),
        )
        .unwrap();
        assert_eq!(
            c.ports[1].vlan.clone(),
            Some(VlanConfig::Trunk { tags: vec![10, 20] })
        );
        for (vlan, message) in [
            (
                r#"{ mode = "access", tag = 0 }"#,
                "VLAN id 0 is out of range",
            ),
            (
                r#"{ mode = "access", tag = 4095 }"#,
                "VLAN id 4095 is out of range",
            ),
            (r#"{ mode = "trunk", tags = [] }"#, "at least one VLAN"),
            (
                r#"{ mode = "trunk", tags = [5, 5] }"#,
                "VLAN 5 is listed twice",
            ),
            (
                r#"{ mode = "trunk", tags = [1, 5000] }"#,
                "VLAN id 5000 is out of range",
            ),
            (
                r#"{ mode = "hybrid", tag = 1 }"#,
                "unknown variant `hybrid`",
            ),
            (
                r#"{ mode = "access", tag = 1, tags = [2] }"#,
                "unknown field `tags`",
            ),
            (r#"{ mode = "access", tag = 70000 }"#, "line 26"),
        ] {
            let e = err(&with(vlan));
            assert!(e.contains(message), "{vlan}: {e}");
        }
        // The rendering round-trips.
        let c = Config::parse(&with(r#"{ mode = "access", tag = 10 }"#), Path::new("t")).unwrap();
        let again = Config::parse(&to_toml(&c).unwrap(), Path::new("t")).unwrap();
        assert_eq!(
            again.ports[1].vlan.clone(),
            Some(VlanConfig::Access { tag: 10 })
        );
    }

    #[test]
    fn wrong_mode_and_type_are_rejected() {
        let bad = GOOD.replace("mode = \"client\"", "mode = \"both\"");
        assert!(err(&bad).contains("line 24"), "{}", err(&bad));
        let bad = GOOD.replacen("type = \"vhost-user\"", "type = \"tun\"", 1);
        assert!(err(&bad).contains("unknown variant `tun`"), "{}", err(&bad));
        // A vhost-user port's settings on a tap port are refused, naming them.
        let bad = GOOD.replacen("type = \"vhost-user\"", "type = \"tap\"", 1);
        assert!(
            err(&bad).contains(
                "port \"vm1\": socket and mode are settings of a vhost-user port; a tap port \
                 has ifname, mtu"
            ),
            "{}",
            err(&bad)
        );
    }

    #[test]
    fn vxlan_ports_take_a_vni_a_local_address_and_how_they_learn_the_others() {
        let base = "[dataplane]\ncores = [1]\n[[bridges]]\nname = \"br0\"\n";
        let port = |name: &str, extra: &str| {
            format!("[[ports]]\nname = \"{name}\"\nbridge = \"br0\"\ntype = \"vxlan\"\n{extra}")
        };
        let one = format!(
            "{base}{}",
            port(
                "t0",
                "vni = 42\nlocal = \"10.0.0.1\"\ncontrol = \"static\"\nremotes = [\"10.0.0.2\"]\n"
            )
        );
        let c = Config::parse(&one, Path::new("t")).unwrap();
        assert_eq!(c.ports[0].port_type(), PortType::Vxlan);
        let KindSpec::Vxlan(v) = &c.ports[0].kind else {
            panic!("a vxlan port")
        };
        assert_eq!(
            (v.vni(), v.udp_port(), v.control()),
            (42, 4789, VxlanControl::Static)
        );
        // Errors name the field and its line.
        let e = err(&format!("{base}{}", port("t0", "local = \"10.0.0.1\"\n")));
        assert!(e.contains("vni"), "{e}");
        let e = err(&format!(
            "{base}{}",
            port(
                "t0",
                "vni = 42\nlocal = \"10.0.0.1\"\nremotes = [\"10.0.0.2\"]\n"
            )
        ));
        assert!(e.contains("control = \"static\""), "{e}");
        assert!(e.contains("line 11"), "{e}");
        let e = err(&format!(
            "{base}{}",
            port("t0", "vni = 42\nlocal = \"10.0.0.1\"\nmtu = 1500\n")
        ));
        assert!(e.contains("mtu"), "{e}");
        // Two tunnel ports may share a local address and UDP port with different VNIs, not
        // with the same one (on another port they may); two EVPN ports never take one VNI.
        let two = |t1: &str| {
            format!(
                "{base}{}{}",
                port(
                    "t0",
                    "vni = 42\nlocal = \"10.0.0.1\"\ncontrol = \"static\"\n"
                ),
                port("t1", t1)
            )
        };
        Config::parse(
            &two("vni = 43\nlocal = \"10.0.0.1\"\ncontrol = \"static\"\n"),
            Path::new("t"),
        )
        .unwrap();
        let e = err(&two(
            "vni = 42\nlocal = \"10.0.0.1\"\ncontrol = \"static\"\n",
        ));
        assert!(
            e.contains("VNI 42 on UDP 10.0.0.1:4789 is taken by two tunnel ports"),
            "{e}"
        );
        Config::parse(
            &two("vni = 42\nlocal = \"10.0.0.1\"\ncontrol = \"static\"\nudp_port = 4790\n"),
            Path::new("t"),
        )
        .unwrap();
        let evpn = |local: &str| {
            format!(
                "{base}{}{}",
                port("t0", "vni = 7\nlocal = \"10.0.0.1\"\n"),
                port("t1", &format!("vni = 7\nlocal = \"{local}\"\n"))
            )
        };
        let e = err(&evpn("10.0.0.2"));
        assert!(
            e.contains("the EVPN segment of VNI 7 is taken by two tunnel ports"),
            "{e}"
        );
    }

    #[test]
    fn tap_ports_take_an_interface_name_and_an_mtu() {
        let base = "[dataplane]\ncores = [1]\n[[bridges]]\nname = \"br0\"\n";
        let tap = |extra: &str| {
            format!("{base}[[ports]]\nname = \"up0\"\nbridge = \"br0\"\ntype = \"tap\"\n{extra}")
        };
        let c = Config::parse(&tap(""), Path::new("t")).unwrap();
        assert_eq!(c.ports[0].port_type(), PortType::Tap);
        assert!(
            tap_of(&c.ports[0]).ifname.is_none(),
            "the port's name, filled in later"
        );
        let c = Config::parse(&tap("ifname = \"vs-up0\"\nmtu = 9000\n"), Path::new("t")).unwrap();
        assert_eq!(tap_of(&c.ports[0]).ifname.as_deref(), Some("vs-up0"));
        assert_eq!(tap_of(&c.ports[0]).mtu, Some(9000));
        for (extra, says) in [
            (
                "ifname = \"a234567890123456\"\n",
                "must be 1 to 15 characters",
            ),
            ("ifname = \"up/0\"\n", "may only have A-Z a-z 0-9 - _ ."),
            ("mtu = 20\n", "mtu must be between 68 and 65500, not 20"),
            ("queues = 2\n", "queues is a setting of a vhost-user port"),
        ] {
            let e = err(&tap(extra));
            assert!(e.contains(says), "{extra}: {e}");
        }
        let two = format!(
            "{}[[ports]]\nname = \"up1\"\nbridge = \"br0\"\ntype = \"tap\"\nifname = \"up0\"\n",
            tap("")
        );
        assert!(
            err(&two).contains("interface up0 is used by two ports"),
            "{}",
            err(&two)
        );
        // A port name too long for an interface needs an ifname.
        let long = tap("").replace("\"up0\"", "\"a-port-name-too-long\"");
        assert!(
            err(&long).contains("must be 1 to 15 characters"),
            "{}",
            err(&long)
        );
        // vhost-user ports refuse the tap settings.
        let vu = format!(
            "{base}[[ports]]\nname = \"vm1\"\nbridge = \"br0\"\ntype = \"vhost-user\"\nmtu = 1500\n"
        );
        assert!(
            err(&vu).contains("mtu is a setting of a tap port"),
            "{}",
            err(&vu)
        );
    }

    #[test]
    fn afxdp_ports_take_an_interface_a_queue_and_a_mode() {
        let base = "[dataplane]\ncores = [1]\n[[bridges]]\nname = \"br0\"\n";
        let xdp = |extra: &str| {
            format!("{base}[[ports]]\nname = \"wire\"\nbridge = \"br0\"\ntype = \"afxdp\"\n{extra}")
        };
        let c = Config::parse(&xdp(""), Path::new("t")).unwrap();
        assert_eq!(c.ports[0].port_type(), PortType::AfXdp);
        assert!(xdp_of(&c.ports[0]).queue.is_none() && xdp_of(&c.ports[0]).xdp_mode.is_none());
        let c = Config::parse(
            &xdp("ifname = \"eth1\"\nqueue = 3\nxdp_mode = \"native-with-zerocopy\"\n"),
            Path::new("t"),
        )
        .unwrap();
        assert_eq!(xdp_of(&c.ports[0]).ifname.as_deref(), Some("eth1"));
        assert_eq!(xdp_of(&c.ports[0]).queue, Some(3));
        assert_eq!(
            xdp_of(&c.ports[0]).xdp_mode,
            Some(XdpMode::NativeWithZerocopy)
        );
        for (extra, want) in [
            (
                "queue = 1024\n",
                "queue must be between 0 and 1023, not 1024",
            ),
            ("xdp_mode = \"fast\"\n", "unknown variant `fast`"),
            (
                "mtu = 1500\n",
                "mtu is a setting of a tap port; an afxdp port has ifname, queue, xdp_mode",
            ),
            (
                "socket = \"/run/x.sock\"\nmtu = 1500\n",
                "socket and mtu are not settings of an afxdp port; an afxdp port has ifname, \
                 queue, xdp_mode",
            ),
        ] {
            let e = err(&xdp(extra));
            assert!(e.contains(want), "{extra}: {e}");
        }
        // One interface for two ports, whatever their kinds, is refused.
        let two = format!(
            "{}[[ports]]\nname = \"t\"\nbridge = \"br0\"\ntype = \"tap\"\nifname = \"wire\"\n",
            xdp("")
        );
        assert!(err(&two).contains("interface wire is used by two ports"));
        // A tap port refuses the AF_XDP settings.
        let tap = xdp("queue = 1\n").replace("\"afxdp\"", "\"tap\"");
        assert!(
            err(&tap).contains("queue is a setting of an afxdp port; a tap port has ifname, mtu"),
            "{}",
            err(&tap)
        );
    }

    #[test]
    fn semantic_errors_point_at_the_offending_line() {
        let bad = GOOD.replace("bridge = \"br1\"", "bridge = \"nope\"");
        let e = err(&bad);
        assert!(e.contains("line 21"), "{e}");
        assert!(e.contains("\"nope\", which is not defined"), "{e}");

        let bad = GOOD.replace("name = \"br1\"", "name = \"br0\"");
        assert!(err(&bad).contains("duplicate bridge name \"br0\""));

        let bad = GOOD.replace("name = \"vm2\"", "name = \"vm1\"");
        let e = err(&bad);
        assert!(
            e.contains("line 20") && e.contains("duplicate port name"),
            "{e}"
        );

        let bad = GOOD.replace("/run/vringswitch/vm2.sock", "/run/vringswitch/vm1.sock");
        assert!(err(&bad).contains("used by two ports"));

        let bad = GOOD.replace("/run/vringswitch/vm2.sock", "vm2.sock");
        assert!(err(&bad).contains("must be absolute"));

        let long = format!("/{}", "x".repeat(120));
        let bad = GOOD.replace("/run/vringswitch/vm2.sock", &long);
        assert!(err(&bad).contains("longer than the 107 bytes"));

        let bad = GOOD.replace("queues = 2", "queues = 0");
        assert!(err(&bad).contains("queues must be between 1 and 16"));

        let bad = GOOD.replace("fdb_aging_s = 60", "fdb_aging_s = 0");
        assert!(err(&bad).contains("fdb_aging_s must be between"));

        let bad = GOOD.replace("cores = [1]", "cores = []");
        assert!(err(&bad).contains("at least one core"));

        let bad = GOOD.replace("cores = [1]", "cores = [1, 1]");
        assert!(err(&bad).contains("core 1 twice"));

        let bad = GOOD.replace("cores = [1]", "cores = [1]\nburst = 65");
        assert!(err(&bad).contains("burst must be between 1 and 64"));

        let evpn = |t: &str| format!("{GOOD}\n[evpn]\n{t}\n");
        let c = parse(&evpn("frr_run_dir = \"/run/frr/h1\"")).unwrap();
        assert_eq!(
            (
                c.evpn.frr_run_dir.get_ref().to_str(),
                *c.evpn.restart_hold_s.get_ref()
            ),
            (Some("/run/frr/h1"), DEFAULT_RESTART_HOLD_S)
        );
        assert!(err(&evpn("frr_run_dir = \"frr\"")).contains("absolute path"));
        assert!(err(&evpn("restart_hold_s = 0")).contains("between 1 and 3600"));
        assert!(err(&evpn("hold = 3")).contains("unknown field"));

        let bad = GOOD.replace("name = \"vm1\"", "name = \"vm 1\"");
        assert!(err(&bad).contains("must be 1 to 64 characters"));
    }

    #[test]
    fn negative_numbers_are_syntax_errors() {
        let e = err("[dataplane]\ncores = [-1]\n");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = Config::load(Path::new("/nonexistent/v.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/v.toml"));
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 99), (1, 3));
    }

    #[test]
    fn ports_without_a_socket_get_one_in_the_socket_directory() {
        let text = "socket_dir = \"/run/vs\"\n[[bridges]]\nname = \"br0\"\n\
            [[ports]]\nname = \"vm9\"\nbridge = \"br0\"\ntype = \"vhost-user\"\nmode = \"server\"\n\
            [[ports]]\nname = \"vm8\"\nbridge = \"br0\"\ntype = \"vhost-user\"\nmode = \"client\"\n\
            [[ports]]\nname = \"vm7\"\nbridge = \"br0\"\ntype = \"vhost-user\"\nmode = \"server\"\n\
            socket = \"/elsewhere/vm7.sock\"\n";
        let mut c = Config::parse(text, Path::new("t.toml")).unwrap();
        let dir = c.socket_dir.as_ref().unwrap().get_ref().clone();
        assert_eq!(dir, Path::new("/run/vs"));
        c.fill_default_sockets(&dir).unwrap();
        let sockets: Vec<_> = c.ports.iter().map(|p| vu_of(p).socket.clone()).collect();
        assert_eq!(
            sockets,
            [
                PathBuf::from("/run/vs/vm9.sock"),
                PathBuf::from("/run/vs/client/vm8.sock"),
                PathBuf::from("/elsewhere/vm7.sock"),
            ]
        );
        // What --print-config shows names them.
        assert!(to_toml(&c)
            .unwrap()
            .contains("socket = \"/run/vs/client/vm8.sock\""));
        // A default that collides with a given socket, and a relative socket_dir.
        let text = "[[bridges]]\nname = \"br0\"\n\
            [[ports]]\nname = \"a\"\nbridge = \"br0\"\ntype = \"vhost-user\"\nmode = \"server\"\n\
            [[ports]]\nname = \"b\"\nbridge = \"br0\"\ntype = \"vhost-user\"\nmode = \"server\"\n\
            socket = \"/run/vs/a.sock\"\n";
        let mut c = Config::parse(text, Path::new("t.toml")).unwrap();
        let e = c.fill_default_sockets(Path::new("/run/vs")).unwrap_err();
        assert!(e.contains("used by two ports"), "{e}");
        let e = Config::parse("socket_dir = \"run/vs\"\n", Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("must be absolute"), "{e}");
    }

    #[test]
    fn type_errors_speak_of_numbers_not_rust_types() {
        let e = err("[dataplane]\nburst = \"x\"\n");
        assert!(!e.contains("usize"), "{e}");
        assert!(e.contains("a non-negative integer"), "{e}");
        let e = err(
            "[[bridges]]\nname = \"b\"\n[[ports]]\nname = \"p\"\nbridge = \"b\"\n\
                     type = \"vhost-user\"\nmode = \"server\"\nqueues = 70000\n",
        );
        assert!(e.contains("an integer from 0 to 65535"), "{e}");
        assert_eq!(in_words("expected u8"), "expected an integer from 0 to 255");
    }

    #[test]
    fn modes_and_vlans_read_as_in_the_file() {
        assert_eq!(SocketMode::Client.to_string(), "client");
        assert_eq!(VlanConfig::Access { tag: 10 }.to_string(), "access 10");
        assert_eq!(
            VlanConfig::Trunk { tags: vec![10, 20] }.to_string(),
            "trunk 10,20"
        );
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../deploy/vringswitch.example.toml");
        let mut c = Config::parse(text, Path::new("vringswitch.example.toml")).unwrap();
        c.fill_default_sockets(Path::new("/run/vringswitch"))
            .unwrap();
        let vm3 = c.ports.iter().find(|p| p.name == "vm3").unwrap();
        assert_eq!(
            vu_of(vm3).socket.as_path(),
            Path::new("/run/vringswitch/vm3.sock")
        );
    }

    #[test]
    fn external_ids_are_read_checked_and_written_back() {
        let base = "[[bridges]]\nname = \"br0\"\n";
        let c = parse(
            "[[bridges]]\nname = \"br0\"\nexternal_ids = { owner = \"ops\" }\n\
             [[ports]]\nname = \"vm1\"\nbridge = \"br0\"\nsocket = \"/run/a.sock\"\n\
             external_ids = { \"iface-id\" = \"5f\", \"vm-uuid\" = \"9c\" }\n",
        )
        .unwrap();
        assert_eq!(c.bridges[0].external_ids["owner"], "ops");
        assert_eq!(c.ports[0].external_ids["iface-id"], "5f");
        let written = to_toml(&c).unwrap();
        let again = parse(&written).unwrap();
        assert_eq!(again.ports[0].external_ids, c.ports[0].external_ids);
        assert_eq!(again.bridges[0].external_ids, c.bridges[0].external_ids);
        // A bad key names its port and line, or its bridge.
        let e = err(&format!(
            "{base}[[ports]]\nname = \"vm1\"\nbridge = \"br0\"\nsocket = \"/run/a.sock\"\n\
             external_ids = {{ \"a b\" = \"1\" }}\n"
        ));
        assert!(
            e.contains("line 7") && e.contains("external_ids key \"a b\""),
            "{e}"
        );
        let e = err("[[bridges]]\nname = \"br0\"\nexternal_ids = { \"k\" = \"a\\u0007\" }\n");
        assert!(
            e.contains("bridge \"br0\"") && e.contains("control character"),
            "{e}"
        );
    }

    #[test]
    fn mirrors_are_read_and_checked_with_their_line() {
        let base = "[[bridges]]\nname = \"br0\"\n\
            [[ports]]\nname = \"a\"\nbridge = \"br0\"\nsocket = \"/run/a.sock\"\n\
            [[ports]]\nname = \"ids\"\nbridge = \"br0\"\nsocket = \"/run/ids.sock\"\n";
        let c = parse(&format!(
            "{base}[[mirrors]]\nname = \"span\"\nports = [\"a\"]\noutput = \"ids\"\n"
        ))
        .unwrap();
        assert_eq!(c.mirrors[0].direction, MirrorDirection::Both);
        let again = parse(&to_toml(&c).unwrap()).unwrap();
        assert_eq!(again.mirrors, c.mirrors);
        let e = err(&format!(
            "{base}[[mirrors]]\nname = \"span\"\nports = [\"a\"]\noutput = \"nope\"\n"
        ));
        assert!(
            e.contains("line 11") && e.contains("no port named \"nope\""),
            "{e}"
        );
        let e = err(&format!(
            "{base}[[mirrors]]\nname = \"span\"\nports = [\"a\"]\noutput = \"ids\"\n\
             direction = \"sideways\"\n"
        ));
        assert!(e.contains("sideways"), "{e}");
    }

    #[test]
    fn security_groups_are_read_and_checked_with_their_line() {
        let base = "[[bridges]]\nname = \"br0\"\n\
            [[ports]]\nname = \"a\"\nbridge = \"br0\"\nsocket = \"/run/a.sock\"\n\
            security_groups = [\"web\"]\nallowed_ips = [\"10.0.0.5\", \"2001:db8::5/128\"]\n";
        let good = "[[security_groups]]\nname = \"web\"\n\
            [[security_groups.rules]]\ndirection = \"ingress\"\nprotocol = \"tcp\"\n\
            port_range_min = 22\nport_range_max = 22\nremote_group = \"web\"\n";
        let c = parse(&format!("{base}{good}")).unwrap();
        assert!(c.security_groups[0].stateful);
        assert_eq!(
            c.security_groups[0].rules[0].protocol,
            Some(Protocol::Name("tcp".into()))
        );
        assert_eq!(c.ports[0].allowed_ips.as_ref().unwrap().len(), 2);
        let again = parse(&to_toml(&c).unwrap()).unwrap();
        assert_eq!(again.security_groups, c.security_groups);
        assert_eq!(again.ports, c.ports);
        // A port naming a group that is not there: the port's line.
        let e = err(&format!("{base}{}", good.replace("\"web\"", "\"db\"")));
        assert!(
            e.contains("line 7") && e.contains("no security group named \"web\""),
            "{e}"
        );
        // A bad rule: the group's line.
        let e = err(&format!(
            "{base}{}",
            good.replace("= 22\nport_range_max = 22", "= 80\nport_range_max = 22")
        ));
        assert!(e.contains("line 9") && e.contains("lowest first"), "{e}");
        let e = err(&format!("{base}{good}").replace("10.0.0.5", "10.0.0.500"));
        assert!(e.contains("allowed_ips"), "{e}");
        let e = err(&format!("{base}{good}[dataplane]\nconntrack_max = 10\n"));
        assert!(e.contains("conntrack_max must be between"), "{e}");
    }
}
