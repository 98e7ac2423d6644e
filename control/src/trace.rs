//! `POST /v1/trace` and `vringctl trace`: the frame a request describes, and the data
//! path's decision for it ([`vringswitch_switch::trace`]) in the API's words.

use serde::{Deserialize, Serialize};
use vringswitch_ports::PortId;
use vringswitch_switch::fdb::{Learned, Limit};
use vringswitch_switch::topology::Topology;
use vringswitch_switch::trace::{Lookup, OutputAction, Trace};

/// A frame to trace: sent by `port`, from `src` to `dst`, tagged with `vlan` if given.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// The port that sends the frame.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub port: String,
    /// Source MAC address.
    #[schema(pattern = "^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")]
    pub src: String,
    /// Destination MAC address (a group address floods).
    #[schema(pattern = "^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")]
    pub dst: String,
    /// The 802.1Q tag the frame carries (0: priority-tagged); none: untagged.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 4094)]
    pub vlan: Option<u16>,
    /// The EtherType after the addresses (and tag); default 0x0800 (IPv4), or that of
    /// `ip_src` and `ip_dst` when they are given.
    #[serde(default)]
    #[schema(minimum = 1536, maximum = 65535)]
    pub ethertype: Option<u16>,
    /// For security groups: the packet's source address (IPv4 or IPv6; with `ip_dst`).
    #[serde(default)]
    pub ip_src: Option<String>,
    /// The packet's destination address, of the same family.
    #[serde(default)]
    pub ip_dst: Option<String>,
    /// `tcp` (the default), `udp`, `sctp`, `icmp`, `icmpv6` or a protocol number.
    #[serde(default)]
    pub protocol: Option<String>,
    /// TCP, UDP or SCTP source port (default 40000).
    #[serde(default)]
    pub src_port: Option<u16>,
    /// TCP, UDP or SCTP destination port (default 80).
    #[serde(default)]
    pub dst_port: Option<u16>,
    /// TCP flags, comma-separated: `syn` (the default: a new connection), `ack`, `fin`,
    /// `rst`, `psh`, `urg`.
    #[serde(default)]
    pub tcp_flags: Option<String>,
    /// ICMP type (default: echo request, 8 for IPv4 and 128 for IPv6).
    #[serde(default)]
    pub icmp_type: Option<u8>,
    /// ICMP code (default 0).
    #[serde(default)]
    pub icmp_code: Option<u8>,
}

/// The protocol number `name` says.
fn protocol_number(name: &str, v6: bool) -> Result<u8, String> {
    Ok(match name {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        "icmp" if !v6 => 1,
        "icmpv6" if v6 => 58,
        "icmp" | "icmpv6" => {
            return Err(format!(
                "protocol {name} is not of the addresses' family (icmp: IPv4, icmpv6: IPv6)"
            ))
        }
        n => n.parse().map_err(|_| {
            format!("protocol {n:?} is none of tcp, udp, sctp, icmp, icmpv6 or a number")
        })?,
    })
}

/// TCP flags from their names.
fn tcp_flags(list: &str) -> Result<u8, String> {
    let mut f = 0u8;
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        f |= match name {
            "fin" => 0x01,
            "syn" => 0x02,
            "rst" => 0x04,
            "psh" => 0x08,
            "ack" => 0x10,
            "urg" => 0x20,
            other => {
                return Err(format!(
                    "tcp_flags: {other:?} is none of fin, syn, rst, psh, ack, urg"
                ))
            }
        };
    }
    Ok(f)
}

/// The Internet checksum of `bytes` (for the traced packet to be as a VM sends it).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl TraceRequest {
    /// The 64-byte frame the request describes.
    pub fn frame(&self) -> Result<Vec<u8>, String> {
        let src = vringswitch_config::parse_mac(&self.src).map_err(|e| format!("src: {e}"))?;
        let dst = vringswitch_config::parse_mac(&self.dst).map_err(|e| format!("dst: {e}"))?;
        let ethertype = self.ethertype.unwrap_or(0x0800);
        if ethertype < 0x0600 {
            return Err(format!(
                "ethertype {ethertype:#06x} is a length, not a type: give 0x0600 or more"
            ));
        }
        let mut frame = Vec::with_capacity(64);
        frame.extend_from_slice(&dst);
        frame.extend_from_slice(&src);
        if let Some(vid) = self.vlan {
            if vid > 4094 {
                return Err(format!("vlan {vid} is out of range: 0 to 4094"));
            }
            frame.extend_from_slice(&[0x81, 0x00]);
            frame.extend_from_slice(&vid.to_be_bytes());
        }
        match self.ip_packet()? {
            None => frame.extend_from_slice(&ethertype.to_be_bytes()),
            Some((ethertype, packet)) => {
                if self.ethertype.is_some_and(|t| t != ethertype) {
                    return Err(format!(
                        "ethertype {:#06x} is not that of the addresses ({ethertype:#06x})",
                        self.ethertype.unwrap_or(0)
                    ));
                }
                frame.extend_from_slice(&ethertype.to_be_bytes());
                frame.extend_from_slice(&packet);
            }
        }
        if frame.len() < 64 {
            frame.resize(64, 0);
        }
        Ok(frame)
    }

    /// The IP packet the request describes, with its EtherType, if it gives addresses.
    fn ip_packet(&self) -> Result<Option<(u16, Vec<u8>)>, String> {
        use std::net::IpAddr;
        let (src, dst) = match (&self.ip_src, &self.ip_dst) {
            (None, None) => {
                if self.protocol.is_some() || self.src_port.is_some() || self.dst_port.is_some() {
                    return Err("give ip_src and ip_dst for a protocol or ports".into());
                }
                return Ok(None);
            }
            (Some(s), Some(d)) => (s, d),
            _ => return Err("give both ip_src and ip_dst, or neither".into()),
        };
        let parse = |what: &str, a: &str| {
            a.parse::<IpAddr>()
                .map_err(|_| format!("{what}: {a:?} is not an IPv4 or IPv6 address"))
        };
        let (src, dst) = (parse("ip_src", src)?, parse("ip_dst", dst)?);
        let v6 = match (src, dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => false,
            (IpAddr::V6(_), IpAddr::V6(_)) => true,
            _ => return Err("ip_src and ip_dst are not of one family".into()),
        };
        let proto = protocol_number(self.protocol.as_deref().unwrap_or("tcp"), v6)?;
        let (sport, dport) = (self.src_port.unwrap_or(40000), self.dst_port.unwrap_or(80));
        let l4: Vec<u8> = match proto {
            6 => {
                let flags = tcp_flags(self.tcp_flags.as_deref().unwrap_or("syn"))?;
                let mut t = Vec::with_capacity(20);
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&1u32.to_be_bytes());
                t.extend_from_slice(&u32::from(flags & 0x10 != 0).to_be_bytes());
                t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
                t
            }
            17 | 132 => {
                let mut u = Vec::with_capacity(12);
                u.extend_from_slice(&sport.to_be_bytes());
                u.extend_from_slice(&dport.to_be_bytes());
                u.extend_from_slice(&[0, 12, 0, 0, 0, 0, 0, 0]);
                u
            }
            1 | 58 => {
                let kind = self.icmp_type.unwrap_or(if v6 { 128 } else { 8 });
                let mut i = vec![kind, self.icmp_code.unwrap_or(0), 0, 0, 0x12, 0x34, 0, 1];
                let c = checksum(&i);
                i[2..4].copy_from_slice(&c.to_be_bytes());
                i
            }
            _ => Vec::new(),
        };
        let packet = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = (20 + l4.len()) as u16;
                let mut ip = vec![0x45, 0];
                ip.extend_from_slice(&total.to_be_bytes());
                ip.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                let c = checksum(&ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                ip.extend_from_slice(&l4);
                (0x0800, ip)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                ip.extend_from_slice(&[proto, 64]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend_from_slice(&l4);
                (0x86dd, ip)
            }
            _ => unreachable!("families checked above"),
        };
        Ok(Some(packet))
    }
}

/// The data path's decision for a traced frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TraceView {
    /// The port that sent it.
    pub port: String,
    /// The VLAN it belongs to once in (none if dropped on the way in).
    pub vlan: Option<u16>,
    /// Why it is dropped before reaching any port (a drop reason of the metrics), if it is.
    pub dropped: Option<String>,
    /// What learning its source address does: `new`, `refreshed`, `moved` (from
    /// `learning_from`), `static_elsewhere` (a static entry keeps it), `held_locally` (seen
    /// on a tunnel port while a local port holds it), `refused_port_limit`,
    /// `refused_bridge_limit`; none if dropped on the way in.
    pub learning: Option<String>,
    pub learning_from: Option<String>,
    /// How its destination was found: `group` (flooded), `found` (on `found_port`,
    /// `found_static`), `hairpin` (on the port it came from: dropped), `unknown` (flooded),
    /// `not_reached`.
    pub lookup: String,
    pub found_port: Option<String>,
    pub found_static: Option<bool>,
    /// Each port it is offered to.
    pub outputs: Vec<TraceOutput>,
    /// The whole in one sentence.
    pub summary: String,
}

/// What one port does with the frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TraceOutput {
    pub port: String,
    /// `deliver`, `not_in_vlan` (not offered; counted `vlan_filtered` if sent to it alone),
    /// `down` (set down, or no peer: counted `port_down`), or what its security groups
    /// drop it as (`acl_denied`, `ct_invalid`, `ct_full`).
    pub action: String,
    /// The VLAN tag it leaves with, when delivered tagged.
    pub tag: Option<u16>,
}

/// `trace` of `port` in the API's words, ports named through `topology`.
pub fn view(port: &str, trace: &Trace, topology: &Topology) -> TraceView {
    let name = |id: PortId| {
        topology
            .port(id)
            .map_or_else(|| format!("#{id}"), |p| p.handle.name().to_owned())
    };
    let (learning, learning_from) = match trace.learning {
        None => (None, None),
        Some(Learned::New) => (Some("new"), None),
        Some(Learned::Refreshed) => (Some("refreshed"), None),
        Some(Learned::Moved { from }) => (Some("moved"), Some(name(from))),
        Some(Learned::StaticConflict) => (Some("static_elsewhere"), None),
        Some(Learned::HeldLocally) => (Some("held_locally"), None),
        Some(Learned::Refused(Limit::Port)) => (Some("refused_port_limit"), None),
        Some(Learned::Refused(Limit::Bridge)) => (Some("refused_bridge_limit"), None),
    };
    let (lookup, found_port, found_static) = match trace.lookup {
        Lookup::NotReached => ("not_reached", None, None),
        Lookup::Group => ("group", None, None),
        Lookup::Found { port, is_static } => ("found", Some(name(port)), Some(is_static)),
        Lookup::Hairpin => ("hairpin", None, None),
        Lookup::Unknown => ("unknown", None, None),
    };
    let outputs: Vec<TraceOutput> = trace
        .outputs
        .iter()
        .map(|o| {
            let (action, tag) = match o.action {
                OutputAction::Delivered { tag } => ("deliver", tag),
                OutputAction::NotInVlan => ("not_in_vlan", None),
                OutputAction::Down => ("down", None),
                OutputAction::Filtered(reason) => (reason.as_str(), None),
            };
            TraceOutput {
                port: name(o.port),
                action: action.to_owned(),
                tag,
            }
        })
        .collect();
    let dropped = trace.dropped.map(|r| r.as_str().to_owned());
    let summary = summary(trace, &dropped, &found_port, &outputs);
    TraceView {
        port: port.to_owned(),
        vlan: trace.vlan,
        dropped,
        learning: learning.map(str::to_owned),
        learning_from,
        lookup: lookup.to_owned(),
        found_port,
        found_static,
        outputs,
        summary,
    }
}

fn summary(
    trace: &Trace,
    dropped: &Option<String>,
    found: &Option<String>,
    outputs: &[TraceOutput],
) -> String {
    if let (Some(reason), Lookup::NotReached) = (dropped, trace.lookup) {
        return format!("dropped on the way in ({reason})");
    }
    if let Some(reason) = dropped
        .as_deref()
        .filter(|_| trace.lookup != Lookup::Hairpin)
    {
        return format!("dropped by its port's security groups or addresses ({reason})");
    }
    let vlan = trace.vlan.unwrap_or(0);
    let how = match trace.lookup {
        Lookup::Hairpin => {
            return format!("dropped (hairpin): its destination was learnt on the port it came from, in VLAN {vlan}")
        }
        Lookup::Found { .. } => format!(
            "sent to {} (FDB, VLAN {vlan})",
            found.as_deref().unwrap_or("?")
        ),
        Lookup::Group => format!("flooded in VLAN {vlan} (group address)"),
        _ => format!("flooded in VLAN {vlan} (unknown destination)"),
    };
    let delivered: Vec<String> = outputs
        .iter()
        .filter(|o| o.action == "deliver")
        .map(|o| match o.tag {
            Some(t) => format!("{} tagged {t}", o.port),
            None => format!("{} untagged", o.port),
        })
        .collect();
    let not: Vec<String> = outputs
        .iter()
        .filter(|o| o.action != "deliver")
        .map(|o| {
            let why = match o.action.as_str() {
                "down" => "down".to_owned(),
                "not_in_vlan" => format!("not in VLAN {vlan}"),
                reason => format!("its security groups: {reason}"),
            };
            format!("{} ({why})", o.port)
        })
        .collect();
    let mut out = how;
    out.push_str(&match delivered.is_empty() {
        true => ": delivered nowhere".to_owned(),
        false => format!(": delivered to {}", delivered.join(", ")),
    });
    if !not.is_empty() {
        out.push_str(&format!("; not to {}", not.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> TraceRequest {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_request_is_made_a_frame_tagged_as_asked() {
        let f = request(serde_json::json!({"port": "a", "src": "02:00:00:00:00:01",
            "dst": "ff:ff:ff:ff:ff:ff", "vlan": 10, "ethertype": 2054}))
        .frame()
        .unwrap();
        assert_eq!(f.len(), 64);
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&f[12..18], &[0x81, 0x00, 0x00, 0x0a, 0x08, 0x06]);
        let f = request(serde_json::json!({"port": "a", "src": "02:00:00:00:00:01",
            "dst": "02:00:00:00:00:02"}))
        .frame()
        .unwrap();
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        for (json, says) in [
            (
                serde_json::json!({"port": "a", "src": "02:00:00:00:01", "dst": "02:00:00:00:00:02"}),
                "src:",
            ),
            (
                serde_json::json!({"port": "a", "src": "02:00:00:00:00:01", "dst": "x"}),
                "dst:",
            ),
            (
                serde_json::json!({"port": "a", "src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02", "vlan": 4095}),
                "out of range",
            ),
            (
                serde_json::json!({"port": "a", "src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02", "ethertype": 100}),
                "is a length",
            ),
        ] {
            let e = request(json.clone()).frame().unwrap_err();
            assert!(e.contains(says), "{json}: {e}");
        }
    }
}
