//! Security groups as the workers use them: each port's groups compiled into its filter
//! (rules of all its groups, remote groups as their members' `allowed_ips`), under the
//! state's rules epoch, and the connection table, made when the first port with groups
//! comes.

use std::sync::Arc;

use vringswitch_config::{parse_cidr, Ethertype, RuleDirection, RuleSpec};
use vringswitch_filter::conntrack::{Charge, Table};
use vringswitch_filter::firewall::Policy;
use vringswitch_filter::{Compiled, Direction, Prefix, Remote, Rule};
use vringswitch_switch::security_groups::PortFilter;

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use vringswitch_filter::conntrack::{Listed, PORT_SLOTS};
use vringswitch_filter::tracker::{self, TcpState};

use crate::desired::{PortEntry, State};
use crate::schema::{ConnectionFilter, ConnectionView};

/// The filter of port `p` in `st`, if it has groups or `allowed_ips`.
pub(crate) fn port_filter(st: &State, p: &PortEntry) -> Option<Arc<PortFilter>> {
    let groups: Vec<&vringswitch_config::SecurityGroupSpec> = p
        .spec
        .security_groups
        .iter()
        .flatten()
        .filter_map(|g| st.security_groups.iter().find(|s| &s.name == g))
        .collect();
    let allowed_ips = p.spec.allowed_ips.as_ref().map(|ips| prefixes(ips).into());
    if groups.is_empty() && allowed_ips.is_none() {
        return None;
    }
    let policy = (!groups.is_empty()).then(|| {
        let rules: Vec<Rule> = groups
            .iter()
            .flat_map(|g| g.rules.iter().map(rule))
            .collect();
        Policy {
            rules: Compiled::new(&rules, |group| Some(members(st, group))),
            // All of a port's groups are one or the other (checked on every change).
            stateful: groups.iter().any(|g| g.stateful),
            epoch: st.filter_epoch,
            charge: Charge {
                port: p.id,
                limit: st.conntrack_limits.1,
            },
        }
    });
    Some(Arc::new(PortFilter {
        policy,
        allowed_ips,
    }))
}

/// The connection table, made at its configured size the first time a port has groups.
pub(crate) fn table(st: &State) -> Option<Arc<Table>> {
    let needed = st.ports.values().any(|p| {
        p.spec
            .security_groups
            .as_ref()
            .is_some_and(|g| !g.is_empty())
    });
    if !needed && st.conntrack.get().is_none() {
        return None;
    }
    Some(
        st.conntrack
            .get_or_init(|| {
                let size = st.conntrack_limits.0 as usize;
                let table = Table::new(size);
                tracing::info!(
                    connections = size,
                    bytes = table.bytes(),
                    "connection table made for security groups"
                );
                Arc::new(table)
            })
            .clone(),
    )
}

/// The addresses of the ports in group `group`: their `allowed_ips` (a member without
/// them adds none: its addresses are not known).
fn members(st: &State, group: &str) -> Vec<Prefix> {
    st.ports
        .values()
        .filter(|p| p.spec.security_groups.iter().flatten().any(|g| g == group))
        .filter_map(|p| p.spec.allowed_ips.as_ref())
        .flat_map(|ips| prefixes(ips))
        .collect()
}

/// `ips` (checked when set) as prefixes; one that does not read is left out.
fn prefixes(ips: &[String]) -> Vec<Prefix> {
    ips.iter()
        .filter_map(|s| parse_cidr(s).ok())
        .filter_map(|c| Prefix::new(c.v6, c.addr, c.len))
        .collect()
}

/// A rule as the filter takes it (checked when set: a prefix that does not read
/// admits nothing rather than anything).
fn rule(r: &RuleSpec) -> Rule {
    let v6 = r.ethertype == Ethertype::IPv6;
    let remote = match (&r.remote_ip_prefix, &r.remote_group) {
        (Some(p), _) => match parse_cidr(p)
            .ok()
            .and_then(|c| Prefix::new(c.v6, c.addr, c.len))
        {
            Some(prefix) => Remote::Prefix(prefix),
            None => Remote::Group(String::new()),
        },
        (None, Some(g)) => Remote::Group(g.clone()),
        (None, None) => Remote::Any,
    };
    Rule {
        direction: match r.direction {
            RuleDirection::Ingress => Direction::Ingress,
            RuleDirection::Egress => Direction::Egress,
        },
        v6,
        // Checked when set: a protocol that does not read is 255 (reserved), which
        // nothing sends.
        protocol: r.protocol.as_ref().map(|p| p.number().unwrap_or(255)),
        port_range_min: r.port_range_min,
        port_range_max: r.port_range_max,
        remote,
    }
}

/// Port and bridge names by what the table knows of them: a port's slot, a bridge's
/// number.
pub(crate) struct Names {
    ports: HashMap<u32, String>,
    bridges: Vec<String>,
}

/// The names of `st`'s ports and bridges, for views of connections.
pub(crate) fn names(st: &State) -> Names {
    Names {
        ports: st
            .ports
            .values()
            .map(|p| (p.id % PORT_SLOTS as u32, p.spec.name.clone()))
            .collect(),
        bridges: st.bridges.iter().map(|b| b.spec.name.clone()).collect(),
    }
}

fn protocol_name(v6: bool, proto: u8) -> String {
    match (proto, v6) {
        (6, _) => "tcp".into(),
        (17, _) => "udp".into(),
        (1, false) => "icmp".into(),
        (58, true) => "icmpv6".into(),
        (n, _) => n.to_string(),
    }
}

fn address(v6: bool, a: &[u8; 16]) -> String {
    if v6 {
        Ipv6Addr::from(*a).to_string()
    } else {
        Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
    }
}

fn state_name(c: &Listed) -> &'static str {
    if c.key.fragments {
        return "FRAGMENTS";
    }
    match tracker::unpack(c.state) {
        (Some(TcpState::SynSent), _) => "SYN_SENT",
        (Some(TcpState::SynRecv), _) => "SYN_RECV",
        (Some(TcpState::Established), _) => "ESTABLISHED",
        (Some(TcpState::FinOpener), _) => "FIN_WAIT",
        (Some(TcpState::FinResponder), _) => "CLOSE_WAIT",
        (Some(TcpState::TimeWait), _) => "TIME_WAIT",
        (Some(TcpState::Close), _) => "CLOSE",
        (None, true) => "REPLIED",
        (None, false) => "NEW",
    }
}

impl ConnectionView {
    /// Connection `c` of the table at second `now`.
    pub(crate) fn of(c: &Listed, now: u32, names: &Names) -> ConnectionView {
        let k = &c.key;
        let bridge = (k.zone >> 12) as usize;
        ConnectionView {
            ethertype: if k.v6 { "IPv6" } else { "IPv4" }.into(),
            protocol: protocol_name(k.v6, k.proto),
            src: address(k.v6, &k.src),
            sport: k.sport,
            dst: address(k.v6, &k.dst),
            dport: k.dport,
            state: state_name(c).into(),
            expires_in_s: c.expires.saturating_sub(now),
            port: names.ports.get(&c.port).cloned(),
            bridge: names.bridges.get(bridge).cloned(),
            vlan: (k.zone & 0xfff) as u16,
        }
    }
}

impl ConnectionFilter {
    /// Whether `c` is one of those asked for.
    pub(crate) fn picks(&self, c: &ConnectionView) -> bool {
        self.port
            .as_ref()
            .is_none_or(|p| c.port.as_ref() == Some(p))
            && self
                .bridge
                .as_ref()
                .is_none_or(|b| c.bridge.as_ref() == Some(b))
            && self
                .protocol
                .as_ref()
                .is_none_or(|p| p.eq_ignore_ascii_case(&c.protocol))
            && self
                .address
                .as_ref()
                .is_none_or(|a| *a == c.src || *a == c.dst)
    }
}
