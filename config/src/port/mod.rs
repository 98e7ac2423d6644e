//! A port as the configuration file, the API, the state file and vringctl say it: one
//! schema ([`PortSpec`]), flat as users write it and tagged by `type`.
//!
//! What every port has (its name, bridge, VLANs, port security, policers) is here; each
//! kind's own settings are a type in this folder ([`vhost_user`], [`tap`], [`afxdp`],
//! [`vxlan`]) with
//! its checks and defaults, listed once in [`port_kinds!`]. A port is read from its fields
//! one by one ([`PortSpec::from_fields`]), so that whoever reads it (the TOML file with
//! its line numbers, the API's JSON) learns which field is wrong.

pub mod afxdp;
pub mod tap;
pub mod vhost_user;
pub mod vxlan;

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{
    check_allowed_macs, check_max_learned, check_name_str, check_police, check_vlan, in_words,
    AdminState, PoliceConfig, VlanConfig,
};
pub use afxdp::AfXdpSettings;
pub use tap::TapSettings;
pub use vhost_user::VhostUserSettings;
pub use vxlan::{VxlanControl, VxlanSettings};

/// What is wrong with a port as given, and in which of its fields (none: the port as a
/// whole, such as a field missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: Option<String>,
    pub message: String,
    /// The field's value has the wrong type or is not one of its words (`mode = "both"`),
    /// rather than a value of the right type that a check refused.
    pub syntax: bool,
}

impl FieldError {
    /// A value the checks refuse, in `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> FieldError {
        FieldError {
            field: Some(field.to_owned()),
            message: message.into(),
            syntax: false,
        }
    }

    /// A port the checks refuse as a whole.
    pub fn port(message: impl Into<String>) -> FieldError {
        FieldError {
            field: None,
            message: message.into(),
            syntax: false,
        }
    }

    fn syntax(field: Option<&str>, message: String) -> FieldError {
        FieldError {
            field: field.map(str::to_owned),
            message: in_words(&message),
            syntax: true,
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.field, self.syntax) {
            (Some(field), true) => write!(f, "{field}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for FieldError {}

/// The settings of one kind of port: what only ports of that kind have.
pub trait KindSettings {
    /// The fields, as written.
    fn fields(&self) -> &'static [&'static str];

    /// Checks the settings of port `port`: the error names the field.
    fn check(&self, port: &str) -> Result<(), FieldError>;

    /// Fills in the defaults left out, as the port runs and is shown (a vhost-user port's
    /// mode and queues, an interface named after the port).
    fn fill_defaults(&mut self, port: &str);

    /// Fills in what a view of the running port shows of its settings beside its queue
    /// pairs (which every view shows): the offloads in effect, where the kind has them.
    fn show(&mut self) {}

    /// The fields a running port of this kind takes a change of (`vringctl port set NAME
    /// --set KEY=VALUE`); any other needs the port made again (its peer reconnecting).
    fn live_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// Queue pairs the port runs.
    fn queue_pairs(&self) -> u16 {
        1
    }

    /// Whether checksum and segmentation offloads are offered to the port's peer.
    fn offloads(&self) -> bool;

    /// The host interface the port uses (one port per interface), for a port named `port`.
    fn ifname<'a>(&'a self, _port: &'a str) -> Option<&'a str> {
        None
    }

    /// The unix socket the port serves or connects to, once given.
    fn socket(&self) -> Option<&Path> {
        None
    }

    /// What the port holds on the host that no other port may hold too, in words (a
    /// tunnel's VNI on its address and UDP port: `VNI 42 on UDP 10.0.0.1:4789`).
    fn claims(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether ports of this kind have a unix socket: one must lie in the daemon's socket
    /// directory when made over the API, and goes there when left out.
    fn has_a_socket(&self) -> bool {
        false
    }

    /// Gives a port named `port` without a socket its place in `socket_dir`.
    fn fill_socket(&mut self, _port: &str, _socket_dir: &Path) {}

    /// The settings as a log line shows them: `socket=/run/vm1.sock mode=server`.
    fn describe(&self) -> String;

    /// How views show a port of this kind named `port` (normalized), in words, given what
    /// its running side reports (`live`).
    fn words(&self, port: &str, live: &Live<'_>) -> KindWords;
}

/// What the running side of a port reports that its views show.
#[derive(Debug, Clone, Copy, Default)]
pub struct Live<'a> {
    /// How it is attached to its interface (AF_XDP: `native`, `generic`...), while it is.
    pub attach_mode: Option<&'a str>,
}

/// How views (vringctl's list, tree and messages) show a port of a kind, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct KindWords {
    /// The list's mode column: a vhost-user port's socket mode, else its kind.
    pub mode: String,
    /// What the port is attached to: a socket, an interface (and its queue).
    pub attached_to: String,
    /// The port in a few words: `socket /run/vm1.sock`, `interface up0`.
    pub summary: String,
    /// The line under the port in the tree: its summary and what else it was given.
    pub detail: String,
    /// Its queue pairs are its own to show (how many are active, the features that came
    /// with them): a VM's.
    pub own_queues: bool,
}

/// Defines [`PortType`] and [`KindSpec`], one variant per port kind, and what dispatches on
/// them: the one place the kinds of the schema are listed.
macro_rules! port_kinds {
    ($($(#[$doc:meta])* $kind:ident = $name:tt, $article:tt, $settings:ty;)+) => {
        /// Kind of port.
        #[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
        pub enum PortType {
            $($(#[$doc])* #[serde(rename = $name)] $kind,)+
        }

        impl PortType {
            /// The kind of a port that does not say: a VM's.
            pub const DEFAULT: PortType = PortType::VhostUser;

            /// Every kind, in the order they are listed.
            pub const ALL: &'static [PortType] = &[$(PortType::$kind),+];

            /// The kind's name, as `type` says it.
            pub fn name(self) -> &'static str {
                match self {
                    $(PortType::$kind => $name,)+
                }
            }

            /// "a vhost-user port", "an afxdp port".
            pub fn a_port(self) -> String {
                match self {
                    $(PortType::$kind => format!("{} {} port", $article, $name),)+
                }
            }

            /// The settings only ports of this kind have.
            pub fn own_settings(self) -> &'static [&'static str] {
                match self {
                    $(PortType::$kind => <$settings>::FIELDS,)+
                }
            }

            /// Reads the settings of a port of this kind from its own `fields`.
            fn settings_from(self, fields: Fields) -> Result<KindSpec, FieldError> {
                match self {
                    $(PortType::$kind => from_fields::<$settings>(fields).map(KindSpec::$kind),)+
                }
            }
        }

        /// A port's kind and the settings only ports of that kind have: `type` and the
        /// kind's fields, beside the port's others.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
        #[serde(tag = "type")]
        pub enum KindSpec {
            $($(#[$doc])* #[serde(rename = $name)] $kind($settings),)+
        }

        impl KindSpec {
            pub fn port_type(&self) -> PortType {
                match self {
                    $(KindSpec::$kind(_) => PortType::$kind,)+
                }
            }

            /// The settings, whatever their kind.
            pub fn settings(&self) -> &dyn KindSettings {
                match self {
                    $(KindSpec::$kind(s) => s,)+
                }
            }

            pub fn settings_mut(&mut self) -> &mut dyn KindSettings {
                match self {
                    $(KindSpec::$kind(s) => s,)+
                }
            }
        }
    };
}

port_kinds! {
    /// A VM's vhost-user socket.
    VhostUser = "vhost-user", "a", VhostUserSettings;
    /// A TAP interface on the host: the switch's link to the host's own network stack.
    Tap = "tap", "a", TapSettings;
    /// An AF_XDP socket on one queue of a host interface: frames to and from the wire (or
    /// a veth) without the host's network stack.
    AfXdp = "afxdp", "an", AfXdpSettings;
    /// A VXLAN tunnel to the other hosts of the segment (RFC 7348): the bridge's frames to
    /// and from VMs elsewhere, learnt through BGP EVPN or from a static list of hosts.
    Vxlan = "vxlan", "a", VxlanSettings;
}

impl std::fmt::Display for PortType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A port attached to a bridge, as given (defaults left out) or as it runs
/// ([`PortSpec::normalized`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PortSpec {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub bridge: String,
    #[serde(flatten)]
    pub kind: KindSpec,
    /// VLAN membership; none: every VLAN as it comes, untagged frames in VLAN 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<VlanConfig>,
    /// Port security: the only source MACs the port may send from (1 to 16 unicast
    /// addresses). Frames from any other are dropped (counted as `mac_spoofed`) and never
    /// learnt. None: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 16)]
    pub allowed_macs: Option<Vec<String>>,
    /// The port's IP addresses (IPv4 and IPv6 prefixes, as OpenStack's fixed IPs and
    /// allowed address pairs): the only sources its VM may send from (an ARP or neighbour
    /// discovery sender too; others are dropped as `ip_spoofed`), and what makes it a
    /// member of its groups for rules naming them (`remote_group`). None: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 64)]
    pub allowed_ips: Option<Vec<String>>,
    /// The port's security groups (up to 16): what its VM may send and receive is what
    /// their rules allow. None or empty: nothing is filtered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 16)]
    pub security_groups: Option<Vec<String>>,
    /// Most addresses the bridge learns on this port (1024 when left out); past it, frames
    /// to the port's further addresses are flooded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000, default = 1024)]
    pub fdb_max_learned: Option<u32>,
    /// Policing of what the port sends (its VM's frames); none: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub police_rx: Option<PoliceConfig>,
    /// Policing of what the port is sent (frames delivered to its VM); none: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub police_tx: Option<PoliceConfig>,
    /// `down`: the switch neither polls the port nor delivers to it, and monitoring expects
    /// it to have no VM (the PortDown alert leaves it out). Default `up`.
    #[serde(default, skip_serializing_if = "AdminState::is_up")]
    pub admin: AdminState,
    /// Metadata for orchestrators (a VM's UUID, an iface-id), kept and shown, never acted
    /// on: up to 64 keys of letters, digits and `. _ - : /`, values up to 1024 bytes.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub external_ids: crate::ExternalIds,
}

/// The fields every port has, read apart from its kind's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    name: String,
    bridge: String,
    #[serde(default)]
    vlan: Option<VlanConfig>,
    #[serde(default)]
    allowed_macs: Option<Vec<String>>,
    #[serde(default)]
    allowed_ips: Option<Vec<String>>,
    #[serde(default)]
    security_groups: Option<Vec<String>>,
    #[serde(default)]
    fdb_max_learned: Option<u32>,
    #[serde(default)]
    police_rx: Option<PoliceConfig>,
    #[serde(default)]
    police_tx: Option<PoliceConfig>,
    #[serde(default)]
    admin: AdminState,
    #[serde(default)]
    external_ids: crate::ExternalIds,
}

/// The fields of [`Common`], as written.
const COMMON_FIELDS: &[&str] = &[
    "name",
    "bridge",
    "vlan",
    "allowed_macs",
    "allowed_ips",
    "security_groups",
    "fdb_max_learned",
    "police_rx",
    "police_tx",
    "admin",
    "external_ids",
];

/// A port's fields as read, in the order given: any reader's values, held as JSON values.
pub type Fields = Vec<(String, serde_json::Value)>;

/// Reads a `T` (a struct that refuses unknown fields) from `fields`. On an error, each
/// field is tried alone to find the one at fault.
fn from_fields<T: DeserializeOwned>(fields: Fields) -> Result<T, FieldError> {
    let object = |fields: &[(String, serde_json::Value)]| {
        serde_json::Value::Object(fields.iter().cloned().collect())
    };
    match serde_json::from_value(object(&fields)) {
        Ok(t) => Ok(t),
        Err(e) => {
            let culprit = fields.iter().find_map(|f| {
                serde_json::from_value::<T>(object(std::slice::from_ref(f)))
                    .err()
                    .filter(|e| !e.to_string().starts_with("missing field"))
                    .map(|e| (f.0.clone(), e))
            });
            Err(match culprit {
                Some((field, e)) => FieldError::syntax(Some(&field), e.to_string()),
                None => FieldError::syntax(None, e.to_string()),
            })
        }
    }
}

impl PortSpec {
    /// Reads a port from its fields, as given: `type`, the fields every port has, and its
    /// kind's. A field of another kind is refused naming its kind; an unknown one as such.
    pub fn from_fields(fields: Fields) -> Result<PortSpec, FieldError> {
        let mut kind = None;
        let (mut common, mut own) = (Fields::new(), Fields::new());
        for (key, value) in fields {
            if key == "type" {
                let t = serde_json::from_value::<PortType>(value)
                    .map_err(|e| FieldError::syntax(Some("type"), e.to_string()))?;
                kind = Some(t);
            } else if COMMON_FIELDS.contains(&key.as_str()) {
                common.push((key, value));
            } else {
                own.push((key, value));
            }
        }
        // As vringctl and OVS do: a port says its type when it is not a VM's.
        let kind = kind.unwrap_or(PortType::DEFAULT);
        let given: Vec<&str> = own.iter().map(|(k, _)| k.as_str()).collect();
        check_port_settings(kind, &given).map_err(|m| {
            let name = common
                .iter()
                .find(|(k, _)| k == "name")
                .and_then(|(_, v)| v.as_str())
                .unwrap_or("");
            FieldError::port(format!("port {name:?}: {m}"))
        })?;
        if let Some((unknown, _)) = own.iter().find(|(k, _)| {
            !PortType::ALL
                .iter()
                .any(|t| t.own_settings().contains(&k.as_str()))
        }) {
            let known: Vec<String> = COMMON_FIELDS
                .iter()
                .chain(["type"].iter())
                .chain(kind.own_settings())
                .map(|f| format!("`{f}`"))
                .collect();
            return Err(FieldError::syntax(
                Some(unknown),
                format!(
                    "unknown field `{unknown}`, expected one of {}",
                    known.join(", ")
                ),
            ));
        }
        let common: Common = from_fields(common)?;
        Ok(PortSpec {
            name: common.name,
            bridge: common.bridge,
            kind: kind.settings_from(own)?,
            vlan: common.vlan,
            allowed_macs: common.allowed_macs,
            allowed_ips: common.allowed_ips,
            security_groups: common.security_groups,
            fdb_max_learned: common.fdb_max_learned,
            police_rx: common.police_rx,
            police_tx: common.police_tx,
            admin: common.admin,
            external_ids: common.external_ids,
        })
    }

    /// A port of `kind` on `bridge`, with nothing else set.
    pub fn new(name: &str, bridge: &str, kind: KindSpec) -> PortSpec {
        PortSpec {
            name: name.to_owned(),
            bridge: bridge.to_owned(),
            kind,
            vlan: None,
            allowed_macs: None,
            allowed_ips: None,
            security_groups: None,
            fdb_max_learned: None,
            police_rx: None,
            police_tx: None,
            admin: AdminState::Up,
            external_ids: crate::ExternalIds::new(),
        }
    }

    /// The port's kind.
    pub fn port_type(&self) -> PortType {
        self.kind.port_type()
    }

    /// Its kind's settings.
    pub fn settings(&self) -> &dyn KindSettings {
        self.kind.settings()
    }

    /// Checks everything about the port alone (not against other ports): the error names
    /// the field.
    pub fn check(&self) -> Result<(), FieldError> {
        check_name_str("port", &self.name).map_err(|m| FieldError::invalid("name", m))?;
        self.kind.settings().check(&self.name)?;
        if let Some(vlan) = &self.vlan {
            check_vlan(vlan).map_err(|m| FieldError::invalid("vlan", m))?;
            if let (KindSpec::Vxlan(v), VlanConfig::Trunk { .. }) = (&self.kind, vlan) {
                if v.control() == VxlanControl::Evpn {
                    return Err(FieldError::invalid(
                        "vlan",
                        "an EVPN tunnel carries one VLAN of the bridge (its VNI's): give it an \
                         access vlan, or none for the untagged frames",
                    ));
                }
            }
        }
        if let Some(macs) = &self.allowed_macs {
            check_allowed_macs(macs).map_err(|m| FieldError::invalid("allowed_macs", m))?;
        }
        if let Some(ips) = &self.allowed_ips {
            crate::check_allowed_ips(ips).map_err(|m| FieldError::invalid("allowed_ips", m))?;
        }
        if let Some(groups) = &self.security_groups {
            crate::check_port_groups(groups)
                .map_err(|m| FieldError::invalid("security_groups", m))?;
        }
        if let Some(n) = self.fdb_max_learned {
            check_max_learned(n).map_err(|m| FieldError::invalid("fdb_max_learned", m))?;
        }
        for (what, p) in [
            ("police_rx", &self.police_rx),
            ("police_tx", &self.police_tx),
        ] {
            if let Some(p) = p {
                check_police(what, p).map_err(|m| FieldError::invalid(what, m))?;
            }
        }
        crate::check_external_ids(&self.external_ids)
            .map_err(|m| FieldError::invalid("external_ids", m))?;
        Ok(())
    }

    /// Checked, with the defaults its kind leaves out filled in, as the port runs and is
    /// shown.
    /// The port with its kind's settings changed as `changes` says (a field's new value,
    /// or `null` for its default), checked; defaults filled in. A field its kind does not
    /// have is refused by name.
    pub fn with_settings(
        &self,
        changes: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<PortSpec, FieldError> {
        let kind = self.port_type();
        let mut fields: serde_json::Map<String, serde_json::Value> =
            match serde_json::to_value(&self.kind) {
                Ok(serde_json::Value::Object(o)) => o,
                _ => serde_json::Map::new(),
            };
        fields.remove("type");
        for (key, value) in changes {
            if !kind.own_settings().contains(&key.as_str()) {
                return Err(FieldError::invalid(
                    key,
                    format!(
                        "{key} is not a setting of {}; it has {}",
                        kind.a_port(),
                        kind.own_settings().join(", ")
                    ),
                ));
            }
            if value.is_null() {
                fields.remove(key);
            } else {
                fields.insert(key.clone(), value.clone());
            }
        }
        let mut changed = self.clone();
        changed.kind = kind.settings_from(fields.into_iter().collect())?;
        changed.normalized()
    }

    pub fn normalized(mut self) -> Result<PortSpec, FieldError> {
        self.check()?;
        let name = self.name.clone();
        self.kind.settings_mut().fill_defaults(&name);
        Ok(self)
    }

    /// Most addresses the bridge learns on the port, the default filled in.
    pub fn fdb_max_learned(&self) -> u32 {
        self.fdb_max_learned
            .unwrap_or(crate::DEFAULT_PORT_MAX_LEARNED)
    }

    /// Queue pairs the port runs.
    pub fn queue_pairs(&self) -> u16 {
        self.settings().queue_pairs()
    }

    /// Whether offloads are offered to the port's peer.
    pub fn offloads(&self) -> bool {
        self.settings().offloads()
    }

    /// The host interface the port uses, if its kind uses one.
    pub fn ifname(&self) -> Option<&str> {
        self.settings().ifname(&self.name)
    }

    /// The unix socket the port serves or connects to, once given.
    pub fn socket(&self) -> Option<&Path> {
        self.settings().socket()
    }

    /// The UDP address and port the port holds alone, if any.
    pub fn claims(&self) -> Vec<String> {
        self.settings().claims()
    }

    /// The kind's settings as a view of the running port shows them beside its queue
    /// pairs ([`KindSettings::show`]).
    pub fn shown_kind(&self) -> KindSpec {
        let mut kind = self.kind.clone();
        kind.settings_mut().show();
        kind
    }

    /// How views show the port, in words (see [`KindSettings::words`]).
    pub fn words(&self, live: &Live<'_>) -> KindWords {
        self.settings().words(&self.name, live)
    }

    /// The fields whose values differ between two ports (`type` if their kinds do).
    pub fn differences(&self, other: &PortSpec) -> Vec<String> {
        let fields = |p: &PortSpec| match serde_json::to_value(p) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let (a, b) = (fields(self), fields(other));
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k) && k.as_str() != "name")
            .cloned()
            .collect()
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PortSpec, D::Error> {
        let object = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        PortSpec::from_fields(object.into_iter().collect())
            .map_err(|e| serde::de::Error::custom(e.to_string()))
    }
}

/// Which settings a port of each type has, given which were set: a field another kind has
/// is refused, naming that kind.
pub fn check_port_settings(kind: PortType, given: &[&str]) -> Result<(), String> {
    let own = kind.own_settings();
    // Named in the order the kinds list them, whatever the order given.
    let listed: Vec<&str> = PortType::ALL
        .iter()
        .flat_map(|k| k.own_settings().iter().copied())
        .collect();
    let mut foreign: Vec<&str> = given
        .iter()
        .copied()
        .filter(|name| !own.contains(name) && listed.contains(name))
        .collect();
    foreign.sort_by_key(|f| listed.iter().position(|l| l == f));
    foreign.dedup();
    if foreign.is_empty() {
        return Ok(());
    }
    let named = match foreign.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => foreign.join(""),
    };
    // The kind they belong to, if one kind has them all.
    let owner = PortType::ALL
        .iter()
        .copied()
        .find(|k| k != &kind && foreign.iter().all(|f| k.own_settings().contains(f)));
    let whose = match (owner, foreign.len()) {
        (Some(k), 1) => format!("is a setting of {}", k.a_port()),
        (Some(k), _) => format!("are settings of {}", k.a_port()),
        (None, _) => format!("are not settings of {}", kind.a_port()),
    };
    Err(format!(
        "{named} {whose}; {} has {}",
        kind.a_port(),
        own.join(", ")
    ))
}

/// Why an interface name cannot be used.
pub fn check_ifname(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_IFNAME {
        return Err(format!(
            "interface name {name:?} must be 1 to {MAX_IFNAME} characters"
        ));
    }
    if !name.chars().all(ok_char) || name == "." || name == ".." {
        return Err(format!(
            "interface name {name:?} may only have A-Z a-z 0-9 - _ . (and is not . or ..)"
        ));
    }
    Ok(())
}

/// Longest interface name Linux takes (`IFNAMSIZ` less the terminating NUL).
pub const MAX_IFNAME: usize = 15;

/// Checks the interface a port of a kind with one uses (`ifname`, else the port's name):
/// the error names `ifname`.
fn check_port_ifname(ifname: Option<&str>, port: &str) -> Result<(), FieldError> {
    check_ifname(ifname.unwrap_or(port)).map_err(|m| FieldError::invalid("ifname", m))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(v: serde_json::Value) -> Fields {
        match v {
            serde_json::Value::Object(m) => m.into_iter().collect(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_port_reads_and_writes_the_flat_shape_users_write() {
        for given in [
            json!({"name": "vm1", "bridge": "br0", "type": "vhost-user",
                   "socket": "/run/vm1.sock", "mode": "client", "queues": 2,
                   "vlan": {"mode": "access", "tag": 10}}),
            json!({"name": "up0", "bridge": "br0", "type": "tap", "ifname": "vs-up0",
                   "mtu": 9000, "offloads": false, "admin": "down"}),
            json!({"name": "wire", "bridge": "br0", "type": "afxdp", "ifname": "eth1",
                   "queue": 3, "xdp_mode": "native-with-zerocopy",
                   "police_rx": {"rate_pps": 1000}}),
        ] {
            let spec: PortSpec = serde_json::from_value(given.clone()).unwrap();
            assert_eq!(serde_json::to_value(&spec).unwrap(), given);
            assert_eq!(PortSpec::from_fields(fields(given)).unwrap(), spec);
        }
    }

    #[test]
    fn the_field_at_fault_is_named() {
        let bad = |v: serde_json::Value| PortSpec::from_fields(fields(v)).unwrap_err();
        let e = bad(json!({"name": "a", "bridge": "b", "type": "vhost-user", "queues": 70000}));
        assert_eq!(e.field.as_deref(), Some("queues"));
        assert!(
            e.syntax && e.message.contains("an integer from 0 to 65535"),
            "{e}"
        );
        let e = bad(json!({"name": "a", "bridge": "b", "type": "tap", "vlan": {"mode": "x"}}));
        assert_eq!(e.field.as_deref(), Some("vlan"));
        let e = bad(json!({"name": "a", "bridge": "b", "type": "tun"}));
        assert_eq!(e.field.as_deref(), Some("type"));
        assert!(e.message.contains("unknown variant `tun`"), "{e}");
        let e = bad(json!({"name": "a", "bridge": "b", "type": "tap", "colour": 1}));
        assert_eq!(e.field.as_deref(), Some("colour"));
        assert!(e.message.contains("unknown field `colour`"), "{e}");
        // No type: a VM's port, in the config file and the API alike.
        let spec = PortSpec::from_fields(fields(json!({"name": "a", "bridge": "b"}))).unwrap();
        assert_eq!(spec.port_type(), PortType::VhostUser);
        let e = bad(json!({"name": "a", "bridge": "b", "ifname": "x"}));
        assert!(e.message.contains("is a setting of a tap port"), "{e}");
        let e = bad(json!({"name": "a", "type": "tap"}));
        assert!(e.message.contains("missing field `bridge`"), "{e}");
        // Checks that pass the types name their field too.
        let spec = |v| PortSpec::from_fields(fields(v)).unwrap();
        let e = spec(json!({"name": "a", "bridge": "b", "type": "tap", "mtu": 20}))
            .check()
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("mtu"));
        let e = spec(json!({"name": "a", "bridge": "b", "type": "vhost-user", "queues": 0}))
            .check()
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("queues"));
    }

    #[test]
    fn a_field_of_another_kind_names_its_kind() {
        let e = PortSpec::from_fields(fields(json!({"name": "vm1", "bridge": "b",
            "type": "tap", "socket": "/s", "mode": "server"})))
        .unwrap_err();
        assert_eq!(
            e.message,
            "port \"vm1\": socket and mode are settings of a vhost-user port; a tap port has \
             ifname, mtu, offloads"
        );
    }

    #[test]
    fn each_kind_lists_the_fields_it_writes() {
        let full = [
            json!({"name": "a", "bridge": "b", "type": "vhost-user", "socket": "/s",
                   "mode": "server", "queues": 1, "offloads": true}),
            json!({"name": "a", "bridge": "b", "type": "tap", "ifname": "i", "mtu": 1500,
                   "offloads": true}),
            json!({"name": "a", "bridge": "b", "type": "afxdp", "ifname": "i", "queue": 0,
                   "xdp_mode": "native"}),
        ];
        for v in full {
            let spec: PortSpec = serde_json::from_value(v.clone()).unwrap();
            let written = serde_json::to_value(&spec).unwrap();
            let mut own: Vec<&str> = written
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .filter(|k| !COMMON_FIELDS.contains(k) && *k != "type")
                .collect();
            let mut listed = spec.settings().fields().to_vec();
            own.sort();
            listed.sort();
            assert_eq!(own, listed, "{v}");
            assert_eq!(spec.port_type().own_settings(), spec.settings().fields());
        }
    }
}
