//! Security groups, with OpenStack's model and field names (docs/configuration.md,
//! "Security groups"): a group is a named list of allow rules; a port names its groups
//! (`security_groups`) and its addresses (`allowed_ips`). One schema for the
//! configuration file (`[[security_groups]]`), the API and the state file.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{check_name_str, PortSpec};

/// Most rules in one group.
pub const MAX_RULES: usize = 4096;
/// Most groups one port has.
pub const MAX_PORT_GROUPS: usize = 16;
/// Most prefixes in a port's `allowed_ips`.
pub const MAX_ALLOWED_IPS: usize = 64;

/// Which way a rule looks, from the VM's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuleDirection {
    /// What the VM may receive.
    Ingress,
    /// What the VM may send.
    Egress,
}

/// The IP family of a rule, as OpenStack spells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Ethertype {
    #[default]
    IPv4,
    IPv6,
}

/// A rule's protocol: a name OpenStack knows or an IP protocol number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Protocol {
    Number(u8),
    /// `tcp`, `udp`, `icmp`, `icmpv6` (also `ipv6-icmp`), `sctp`.
    Name(String),
}

impl Protocol {
    /// The IP protocol number, or why there is none.
    pub fn number(&self) -> Result<u8, String> {
        match self {
            Protocol::Number(n) => Ok(*n),
            Protocol::Name(n) => match n.to_ascii_lowercase().as_str() {
                "tcp" => Ok(6),
                "udp" => Ok(17),
                "icmp" => Ok(1),
                "icmpv6" | "ipv6-icmp" => Ok(58),
                "sctp" => Ok(132),
                other => match other.parse::<u8>() {
                    Ok(n) => Ok(n),
                    Err(_) => Err(format!(
                        "protocol {n:?} is not one of tcp, udp, icmp, icmpv6, sctp or a \
                         number from 0 to 255"
                    )),
                },
            },
        }
    }
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub direction: RuleDirection,
    /// `IPv4` (the default) or `IPv6`.
    #[serde(default)]
    pub ethertype: Ethertype,
    /// Absent: any protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// TCP and UDP: the lowest destination port; ICMP: the type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range_min: Option<u16>,
    /// TCP and UDP: the highest destination port; ICMP: the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range_max: Option<u16>,
    /// The other end's addresses, as a CIDR (`10.0.0.0/24`, `2001:db8::/64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip_prefix: Option<String>,
    /// The other end is a port of this group (its `allowed_ips`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub remote_group: Option<String>,
}

/// A security group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupSpec {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// Connections tracked, their replies passing without a rule (the default); `false`:
    /// every frame is checked against the rules, both ways.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    #[schema(default = true)]
    pub stateful: bool,
    /// The rules (up to 4096); none: the group allows nothing.
    #[serde(default)]
    #[schema(max_items = 4096)]
    pub rules: Vec<RuleSpec>,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A CIDR read: family, address, prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub v6: bool,
    /// IPv4 addresses in the first four bytes.
    pub addr: [u8; 16],
    pub len: u8,
}

/// Reads `s` as a CIDR (`10.0.0.0/24`); an address without a length is a host
/// (`/32`, `/128`).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = a
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 address or prefix"))?;
    let (v6, bits, mut addr) = match ip {
        IpAddr::V4(v4) => {
            let mut x = [0u8; 16];
            x[..4].copy_from_slice(&v4.octets());
            (false, 32u8, x)
        }
        IpAddr::V6(v6) => (true, 128u8, v6.octets()),
    };
    let len = match len {
        None => bits,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|&l| l <= bits)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {bits}"))?,
    };
    // Host bits are cleared, as Neutron stores them.
    for (i, b) in addr.iter_mut().enumerate().take(usize::from(bits / 8)) {
        let keep = (i32::from(len) - 8 * i as i32).clamp(0, 8);
        *b &= (0xffu16 << (8 - keep)) as u8;
    }
    Ok(Cidr { v6, addr, len })
}

/// Checks one rule of group `group`.
fn check_rule(group: &str, i: usize, r: &RuleSpec, groups: &[&str]) -> Result<(), String> {
    let at = |m: String| format!("security group {group:?}, rule {}: {m}", i + 1);
    let proto = r
        .protocol
        .as_ref()
        .map(Protocol::number)
        .transpose()
        .map_err(at)?;
    let v6 = r.ethertype == Ethertype::IPv6;
    if proto == Some(58) && !v6 {
        return Err(at("icmpv6 is for IPv6 rules (ethertype = \"IPv6\")".into()));
    }
    let ranged = r.port_range_min.is_some() || r.port_range_max.is_some();
    match proto {
        Some(6 | 17 | 132) => {
            let (lo, hi) = (
                r.port_range_min.unwrap_or(1),
                r.port_range_max.unwrap_or(65535),
            );
            if ranged && (lo == 0 || lo > hi) {
                return Err(at(format!(
                    "port_range_min {lo} and port_range_max {hi}: ports are 1 to 65535, the \
                     lowest first"
                )));
            }
        }
        Some(1 | 58) => {
            if r.port_range_max.is_some() && r.port_range_min.is_none() {
                return Err(at("an ICMP code (port_range_max) needs its type \
                               (port_range_min)"
                    .into()));
            }
            for (what, v) in [
                ("port_range_min", r.port_range_min),
                ("port_range_max", r.port_range_max),
            ] {
                if v.is_some_and(|v| v > 255) {
                    return Err(at(format!("{what} is an ICMP type or code here: 0 to 255")));
                }
            }
        }
        _ if ranged => {
            return Err(at(
                "port_range_min and port_range_max need protocol tcp, udp, sctp, icmp or \
                 icmpv6"
                    .into(),
            ))
        }
        _ => {}
    }
    match (&r.remote_ip_prefix, &r.remote_group) {
        (Some(_), Some(_)) => Err(at("give remote_ip_prefix or remote_group, not both".into())),
        (Some(p), None) => {
            let c = parse_cidr(p).map_err(at)?;
            if c.v6 != v6 {
                return Err(at(format!(
                    "remote_ip_prefix {p} is not of the rule's ethertype {}",
                    if v6 { "IPv6" } else { "IPv4" }
                )));
            }
            Ok(())
        }
        (None, Some(g)) if !groups.contains(&g.as_str()) => Err(at(format!(
            "remote_group {g:?}: no security group of that name"
        ))),
        _ => Ok(()),
    }
}

/// Checks `groups` against `ports` (those they would run with): names, rules, remote
/// groups that exist, and every group a port names. The error names the group at fault
/// (its index, and why), or a port's (index `groups.len()` and up: the port's).
pub fn check_security_groups(
    groups: &[SecurityGroupSpec],
    ports: &[&PortSpec],
) -> Result<(), (usize, String)> {
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    for (i, g) in groups.iter().enumerate() {
        check_name_str("security group", &g.name).map_err(|e| (i, e))?;
        if names[..i].contains(&g.name.as_str()) {
            return Err((i, format!("security group {:?} is defined twice", g.name)));
        }
        if g.rules.len() > MAX_RULES {
            return Err((
                i,
                format!(
                    "security group {:?} has {} rules; at most {MAX_RULES}",
                    g.name,
                    g.rules.len()
                ),
            ));
        }
        for (j, r) in g.rules.iter().enumerate() {
            check_rule(&g.name, j, r, &names).map_err(|e| (i, e))?;
        }
    }
    for (j, p) in ports.iter().enumerate() {
        let mut stateful = None;
        for g in p.security_groups.iter().flatten() {
            let Some(spec) = groups.iter().find(|s| &s.name == g) else {
                return Err((
                    groups.len() + j,
                    format!("port {:?}: no security group named {g:?}", p.name),
                ));
            };
            if stateful.is_some_and(|s| s != spec.stateful) {
                return Err((
                    groups.len() + j,
                    format!(
                        "port {:?}: its groups are stateful and stateless both; as in \
                         OpenStack, a port's groups are all one or the other",
                        p.name
                    ),
                ));
            }
            stateful = Some(spec.stateful);
        }
    }
    Ok(())
}

/// Checks a port's `security_groups` list alone (not that the groups exist).
pub fn check_port_groups(groups: &[String]) -> Result<(), String> {
    if groups.len() > MAX_PORT_GROUPS {
        return Err(format!(
            "security_groups lists {} groups; at most {MAX_PORT_GROUPS}",
            groups.len()
        ));
    }
    for (i, g) in groups.iter().enumerate() {
        check_name_str("security group", g)?;
        if groups[..i].contains(g) {
            return Err(format!("security group {g:?} is listed twice"));
        }
    }
    Ok(())
}

/// Checks a port's `allowed_ips`.
pub fn check_allowed_ips(ips: &[String]) -> Result<Vec<Cidr>, String> {
    if ips.is_empty() {
        return Err(
            "allowed_ips is empty, which would drop every IP frame: leave it out to allow any \
             address"
                .into(),
        );
    }
    if ips.len() > MAX_ALLOWED_IPS {
        return Err(format!(
            "allowed_ips lists {} prefixes; at most {MAX_ALLOWED_IPS}",
            ips.len()
        ));
    }
    ips.iter()
        .map(|s| parse_cidr(s).map_err(|e| format!("allowed_ips: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::{KindSpec, VhostUserSettings};

    fn rule(json: &str) -> RuleSpec {
        serde_json::from_str(json).unwrap()
    }

    fn group(name: &str, rules: Vec<RuleSpec>) -> SecurityGroupSpec {
        SecurityGroupSpec {
            name: name.into(),
            stateful: true,
            rules,
        }
    }

    fn port(groups: &[&str]) -> PortSpec {
        let mut p = PortSpec::new(
            "vm1",
            "br0",
            KindSpec::VhostUser(VhostUserSettings {
                socket: "/run/vm1.sock".into(),
                ..VhostUserSettings::default()
            }),
        );
        p.security_groups = Some(groups.iter().map(|g| g.to_string()).collect());
        p
    }

    #[test]
    fn cidrs_are_read_with_host_bits_cleared() {
        let c = parse_cidr("10.1.2.3/24").unwrap();
        assert_eq!((c.v6, &c.addr[..4], c.len), (false, &[10, 1, 2, 0][..], 24));
        assert_eq!(parse_cidr("2001:db8::1").unwrap().len, 128);
        assert_eq!(parse_cidr("10.0.0.1").unwrap().len, 32);
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("10.0.0/8").is_err());
        assert!(parse_cidr("::/129").is_err());
    }

    #[test]
    fn rules_are_checked_as_openstack_has_them() {
        let ok = [
            r#"{"direction": "ingress", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "remote_group": "web"}"#,
            r#"{"direction": "ingress", "protocol": "icmp", "port_range_min": 8}"#,
            r#"{"direction": "egress"}"#,
            r#"{"direction": "egress", "ethertype": "IPv6", "protocol": "icmpv6", "remote_ip_prefix": "::/0"}"#,
            r#"{"direction": "ingress", "protocol": 47}"#,
        ];
        for r in ok {
            let g = group("web", vec![rule(r)]);
            assert_eq!(check_security_groups(&[g], &[]), Ok(()), "{r}");
        }
        let bad = [
            (
                r#"{"direction": "ingress", "protocol": "tcp", "port_range_min": 80, "port_range_max": 22}"#,
                "lowest first",
            ),
            (
                r#"{"direction": "ingress", "protocol": "gre"}"#,
                "not one of",
            ),
            (
                r#"{"direction": "ingress", "port_range_min": 22}"#,
                "need protocol",
            ),
            (
                r#"{"direction": "ingress", "protocol": "icmp", "port_range_max": 0}"#,
                "needs its type",
            ),
            (
                r#"{"direction": "ingress", "protocol": "icmp", "port_range_min": 256}"#,
                "0 to 255",
            ),
            (
                r#"{"direction": "ingress", "remote_ip_prefix": "::/0"}"#,
                "not of the rule's ethertype",
            ),
            (
                r#"{"direction": "ingress", "remote_ip_prefix": "10.0.0.0/8", "remote_group": "web"}"#,
                "not both",
            ),
            (
                r#"{"direction": "ingress", "remote_group": "db"}"#,
                "no security group of that name",
            ),
            (
                r#"{"direction": "ingress", "protocol": "icmpv6"}"#,
                "for IPv6 rules",
            ),
            (
                r#"{"direction": "ingress", "protocol": "sctp", "port_range_min": 0}"#,
                "ports are 1 to 65535",
            ),
        ];
        for (r, why) in bad {
            let g = group("web", vec![rule(r)]);
            let e = check_security_groups(&[g], &[]).unwrap_err();
            assert!(e.1.contains(why) && e.1.contains("rule 1"), "{r}: {}", e.1);
        }
        assert!(serde_json::from_str::<RuleSpec>(r#"{"direction": "in"}"#).is_err());
        assert!(
            serde_json::from_str::<RuleSpec>(r#"{"direction": "ingress", "ports": 1}"#).is_err()
        );
    }

    #[test]
    fn groups_and_the_ports_naming_them_are_checked_together() {
        let web = group("web", vec![]);
        assert_eq!(
            check_security_groups(std::slice::from_ref(&web), &[&port(&["web"])]),
            Ok(())
        );
        let e = check_security_groups(std::slice::from_ref(&web), &[&port(&["db"])]).unwrap_err();
        assert_eq!(e.0, 1);
        assert!(e.1.contains("no security group named \"db\""), "{}", e.1);
        let e = check_security_groups(&[web.clone(), web], &[]).unwrap_err();
        assert_eq!(e.0, 1);
        let mut loose = group("loose", vec![]);
        loose.stateful = false;
        let both = port(&["web", "loose"]);
        let e = check_security_groups(&[group("web", vec![]), loose], &[&both]).unwrap_err();
        assert!(e.1.contains("stateful and stateless"), "{}", e.1);
        assert!(check_port_groups(&["a".into(), "a".into()]).is_err());
        assert!(check_allowed_ips(&[]).is_err());
        assert_eq!(check_allowed_ips(&["10.0.0.5".into()]).unwrap()[0].len, 32);
        assert!(check_allowed_ips(&["nope".into()]).is_err());
    }
}
