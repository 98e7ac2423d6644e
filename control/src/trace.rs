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
    /// The EtherType after the addresses (and tag); default 0x0800 (IPv4).
    #[serde(default)]
    #[schema(minimum = 1536, maximum = 65535)]
    pub ethertype: Option<u16>,
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
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.resize(64, 0);
        Ok(frame)
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
    /// `deliver`, `not_in_vlan` (not offered; counted `vlan_filtered` if sent to it alone) or
    /// `down` (set down, or no peer: counted `port_down`).
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
            let why = if o.action == "down" {
                "down".to_owned()
            } else {
                format!("not in VLAN {vlan}")
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
