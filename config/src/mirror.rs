//! Port mirroring (SPAN), as OVS's Mirror: the frames some ports send and/or are sent,
//! copied to an output port, for an IDS or a capture VM. One schema for the configuration
//! file (`[[mirrors]]`), the API and the state file.

use serde::{Deserialize, Serialize};

use crate::{check_name_str, PortSpec};

/// Which frames of the mirrored ports are copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MirrorDirection {
    /// The frames they send.
    Rx,
    /// The frames delivered to them.
    Tx,
    /// Both.
    #[default]
    Both,
}

impl MirrorDirection {
    pub fn rx(self) -> bool {
        matches!(self, MirrorDirection::Rx | MirrorDirection::Both)
    }

    pub fn tx(self) -> bool {
        matches!(self, MirrorDirection::Tx | MirrorDirection::Both)
    }

    pub fn name(self) -> &'static str {
        match self {
            MirrorDirection::Rx => "rx",
            MirrorDirection::Tx => "tx",
            MirrorDirection::Both => "both",
        }
    }
}

/// Most ports one mirror copies.
pub const MAX_MIRRORED_PORTS: usize = 64;

/// A mirror: the frames of `ports` (in `direction`) copied to `output`, all on one bridge.
/// The output carries nothing else: it is not flooded to, never a destination, and what it
/// sends is not taken. Copies leave it tagged with their VLAN (untagged in VLAN 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// The ports whose frames are copied (1 to 64).
    #[schema(min_items = 1, max_items = 64)]
    pub ports: Vec<String>,
    /// `rx`: what they send; `tx`: what they are sent; `both` (the default).
    #[serde(default)]
    pub direction: MirrorDirection,
    /// The port that gets the copies, on the same bridge as them.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub output: String,
}

/// Checks `mirrors` against `ports` (the ports they would run with): names and lists well
/// formed, every port there and on the output's bridge, no port both mirrored and an
/// output, no name twice. The error names the mirror at fault (its index, and why).
pub fn check_mirrors(mirrors: &[MirrorSpec], ports: &[&PortSpec]) -> Result<(), (usize, String)> {
    let port = |name: &str| ports.iter().find(|p| p.name == name);
    let outputs: Vec<&str> = mirrors.iter().map(|m| m.output.as_str()).collect();
    for (i, m) in mirrors.iter().enumerate() {
        let fail = |message: String| Err((i, format!("mirror {:?}: {message}", m.name)));
        if let Err(e) = check_name_str("mirror", &m.name) {
            return Err((i, e));
        }
        if mirrors[..i].iter().any(|other| other.name == m.name) {
            return fail("a mirror of that name exists already".into());
        }
        if m.ports.is_empty() || m.ports.len() > MAX_MIRRORED_PORTS {
            return fail(format!(
                "ports lists {} ports; a mirror copies 1 to {MAX_MIRRORED_PORTS}",
                m.ports.len()
            ));
        }
        let Some(out) = port(&m.output) else {
            return fail(format!("no port named {:?} (its output)", m.output));
        };
        for (j, p) in m.ports.iter().enumerate() {
            if m.ports[..j].contains(p) {
                return fail(format!("port {p:?} is listed twice"));
            }
            let Some(spec) = port(p) else {
                return fail(format!("no port named {p:?}"));
            };
            if spec.bridge != out.bridge {
                return fail(format!(
                    "port {p:?} is on bridge {:?}, its output {:?} on {:?}: a mirror stays \
                     within one bridge",
                    spec.bridge, m.output, out.bridge
                ));
            }
            if outputs.contains(&p.as_str()) {
                return fail(format!(
                    "port {p:?} is a mirror's output, which carries nothing else and cannot \
                     be mirrored"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::{KindSpec, VhostUserSettings};

    fn port(name: &str, bridge: &str) -> PortSpec {
        PortSpec::new(
            name,
            bridge,
            KindSpec::VhostUser(VhostUserSettings {
                socket: format!("/run/{name}.sock").into(),
                ..VhostUserSettings::default()
            }),
        )
    }

    fn mirror(name: &str, ports: &[&str], output: &str) -> MirrorSpec {
        MirrorSpec {
            name: name.into(),
            ports: ports.iter().map(|p| (*p).to_owned()).collect(),
            direction: MirrorDirection::Both,
            output: output.into(),
        }
    }

    #[test]
    fn mirrors_stay_in_a_bridge_and_outputs_carry_nothing_else() {
        let specs = [
            port("a", "br0"),
            port("b", "br0"),
            port("ids", "br0"),
            port("ids2", "br0"),
            port("x", "br1"),
        ];
        let ports: Vec<&PortSpec> = specs.iter().collect();
        let ok = [mirror("m", &["a", "b"], "ids"), mirror("n", &["a"], "ids2")];
        assert_eq!(check_mirrors(&ok, &ports), Ok(()));
        let refused = |mirrors: &[MirrorSpec]| check_mirrors(mirrors, &ports).unwrap_err();
        assert_eq!(
            refused(&[mirror("m", &["x"], "ids")]),
            (
                0,
                "mirror \"m\": port \"x\" is on bridge \"br1\", its output \"ids\" on \"br0\": \
                 a mirror stays within one bridge"
                    .into()
            )
        );
        assert!(refused(&[mirror("m", &["a"], "nope")])
            .1
            .contains("no port named \"nope\""));
        assert!(refused(&[mirror("m", &["zz"], "ids")])
            .1
            .contains("no port named \"zz\""));
        assert!(refused(&[mirror("m", &[], "ids")])
            .1
            .contains("lists 0 ports"));
        assert!(refused(&[mirror("m", &["a", "a"], "ids")])
            .1
            .contains("listed twice"));
        assert!(refused(&[mirror("m", &["ids"], "ids")])
            .1
            .contains("is a mirror's output"));
        // An output of one mirror is not mirrored by another.
        let e = refused(&[mirror("m", &["a"], "ids"), mirror("n", &["ids"], "ids2")]);
        assert_eq!(e.0, 1);
        assert!(e.1.contains("is a mirror's output"), "{e:?}");
        let e = refused(&[mirror("m", &["a"], "ids"), mirror("m", &["b"], "ids")]);
        assert!(e.1.contains("exists already"), "{e:?}");
        assert!(refused(&[mirror("bad name", &["a"], "ids")])
            .1
            .contains("mirror"));
    }
}
