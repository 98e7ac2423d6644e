//! What the API and the state file say of the switch besides its ports (one schema with
//! the configuration file, [`vringswitch_config::PortSpec`]): bridges, changes to a port,
//! static FDB entries, the FDB as shown, and the state file's whole.

use serde::{Deserialize, Serialize};
pub use vringswitch_config::{
    AdminState, MirrorDirection, MirrorSpec, PortSpec, RuleSpec, SecurityGroupSpec, VlanConfig,
};
use vringswitch_config::{ExternalIds, PoliceConfig};

/// A bridge as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BridgeSpec {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// Seconds after which an idle learnt address is forgotten.
    #[serde(default = "default_aging")]
    #[schema(minimum = 1, maximum = 1_000_000, default = 300)]
    pub fdb_aging_s: u64,
    /// Most addresses the bridge learns over all its ports (static entries not counted);
    /// past it, frames to further addresses are flooded.
    #[serde(default = "default_bridge_max_learned")]
    #[schema(minimum = 1, maximum = 1_000_000, default = 8192)]
    pub fdb_max_learned: u32,
    /// Metadata for orchestrators, kept and shown, never acted on (see the port's).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub external_ids: ExternalIds,
}

/// A change to a bridge (`PATCH`): fields left out stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BridgePatch {
    /// Seconds after which an idle learnt address is forgotten, from now on.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub fdb_aging_s: Option<u64>,
    /// Most addresses the bridge learns; lowering it forgets none already learnt.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub fdb_max_learned: Option<u32>,
    /// Keys to set, or to remove (`null`); keys left out stay.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub external_ids: Option<ExternalIdsPatch>,
}

/// Changes to external IDs: a key with a value sets it, with `null` removes it.
pub type ExternalIdsPatch = std::collections::BTreeMap<String, Option<String>>;

/// `ids` with `patch` applied, checked.
pub fn patched_external_ids(
    ids: &ExternalIds,
    patch: &ExternalIdsPatch,
) -> Result<ExternalIds, String> {
    let mut out = ids.clone();
    for (key, value) in patch {
        vringswitch_config::check_external_id_key(key)?;
        match value {
            Some(v) => out.insert(key.clone(), v.clone()),
            None => out.remove(key),
        };
    }
    vringswitch_config::check_external_ids(&out)?;
    Ok(out)
}

fn default_aging() -> u64 {
    vringswitch_config::DEFAULT_FDB_AGING_S
}

fn default_bridge_max_learned() -> u32 {
    vringswitch_config::DEFAULT_BRIDGE_MAX_LEARNED
}

/// A change to a port (`PATCH`): fields left out stay as they are; `"vlan": null` removes
/// the VLAN setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortPatch {
    /// The bridge to move the port to.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub bridge: Option<String>,
    /// The new VLAN setting; null removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<VlanConfig>, nullable)]
    pub vlan: Option<Option<VlanConfig>>,
    /// The new port-security list; null unlocks the port.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>, nullable, min_items = 1, max_items = 16)]
    pub allowed_macs: Option<Option<Vec<String>>>,
    /// The port's new addresses (IPv4 and IPv6 prefixes); null: any.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>, nullable, min_items = 1, max_items = 64)]
    pub allowed_ips: Option<Option<Vec<String>>>,
    /// The port's new security groups; null or empty: none (nothing filtered).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>, nullable, max_items = 16)]
    pub security_groups: Option<Option<Vec<String>>>,
    /// The new limit on addresses learnt on the port.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub fdb_max_learned: Option<u32>,
    /// The new policer of what the port sends; null removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<PoliceConfig>, nullable)]
    pub police_rx: Option<Option<PoliceConfig>>,
    /// The new policer of what the port is sent; null removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<PoliceConfig>, nullable)]
    pub police_tx: Option<Option<PoliceConfig>>,
    /// `up` or `down`.
    #[serde(default)]
    pub admin: Option<AdminState>,
    /// External IDs to set, or to remove (`null`); keys left out stay. Changes nothing
    /// else: the port keeps forwarding and its addresses stay learnt.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub external_ids: Option<ExternalIdsPatch>,
    /// Settings of the port's kind to change while it runs (`null`: back to the default):
    /// those its kind takes live (a TAP port's `mtu`); any other is refused, as it needs
    /// the port made again.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Tells a field given as `null` (Some(None)) from one left out (None).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A static FDB entry as requested: `vlan` defaults to the port's untagged VLAN.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticMacRequest {
    /// A unicast MAC address, e.g. 02:00:00:00:00:01.
    #[schema(pattern = "^[0-9a-fA-F][02468aceACE](:[0-9a-fA-F]{2}){5}$")]
    pub mac: String,
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub port: String,
    /// The entry's VLAN; default: the port's untagged VLAN (0 without a VLAN setting).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 4094)]
    pub vlan: Option<u16>,
}

/// A static FDB entry as kept and saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticMac {
    pub bridge: String,
    pub mac: String,
    pub vlan: u16,
    pub port: String,
}

/// One FDB entry as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FdbEntryView {
    pub mac: String,
    pub vlan: u16,
    pub port: String,
    /// Seconds since last seen; none for static entries, which never age.
    pub age_s: Option<u64>,
    #[serde(rename = "static")]
    pub is_static: bool,
}

/// What the state file holds: the whole topology as built by the config file and the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    pub version: u32,
    pub bridges: Vec<BridgeSpec>,
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub static_macs: Vec<StaticMac>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<SecurityGroupSpec>,
}

/// A connection the security groups track, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectionView {
    /// `IPv4` or `IPv6`.
    pub ethertype: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or the protocol's number.
    pub protocol: String,
    /// The opener's address and port (an ICMP echo's identifier as both ports).
    pub src: String,
    pub sport: u16,
    /// The responder's.
    pub dst: String,
    pub dport: u16,
    /// TCP: `SYN_SENT`, `SYN_RECV`, `ESTABLISHED`, `FIN_WAIT`, `CLOSE_WAIT`, `TIME_WAIT`,
    /// `CLOSE`; others: `NEW` until answered, then `REPLIED`; `FRAGMENTS`: the verdict
    /// on a fragmented datagram, kept for its later fragments (the ports then hold its
    /// identification).
    pub state: String,
    /// Seconds until it expires without another packet.
    pub expires_in_s: u32,
    /// The port it is charged to (the first filtered port it crossed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// Its bridge and VLAN (0: untagged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    pub vlan: u16,
}

/// Which connections to list or flush: each field given narrows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConnectionFilter {
    /// Charged to this port.
    #[serde(default)]
    pub port: Option<String>,
    /// On this bridge.
    #[serde(default)]
    pub bridge: Option<String>,
    /// Of this protocol (`tcp`, `udp`, `icmp`, `icmpv6`, a number).
    #[serde(default)]
    pub protocol: Option<String>,
    /// With this address at either end.
    #[serde(default)]
    pub address: Option<String>,
    /// At most this many listed (1000 when left out).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// The state file's format version.
pub const STATE_VERSION: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_tell_null_from_absent() {
        let p: PortPatch = serde_json::from_str("{}").unwrap();
        assert_eq!(p, PortPatch::default());
        let p: PortPatch = serde_json::from_str(r#"{"vlan": null}"#).unwrap();
        assert_eq!(p.vlan, Some(None));
        let p: PortPatch =
            serde_json::from_str(r#"{"vlan": {"mode": "access", "tag": 3}, "bridge": "b"}"#)
                .unwrap();
        assert_eq!(p.vlan, Some(Some(VlanConfig::Access { tag: 3 })));
        assert_eq!(p.bridge.as_deref(), Some("b"));
        assert!(serde_json::from_str::<PortPatch>(r#"{"socket": "/x"}"#).is_err());
    }
}
