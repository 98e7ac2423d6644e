//! A VXLAN tunnel port's settings: its VNI, this host's tunnel end (VTEP) address and UDP
//! port, and how it learns the other ends: from BGP EVPN (through FRR) or from a static
//! list, as OVS's `type=vxlan` interfaces take `options:key` and `options:remote_ip`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::{FieldError, KindSettings, KindWords, Live};

/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// VXLAN's IANA port, a tunnel port's when left out.
pub const DEFAULT_UDP_PORT: u16 = 4789;
/// The UDP port of the kernel VXLAN devices EVPN keeps as FRR's mirror of each segment
/// (Linux's historical VXLAN port): the kernel holds it while they are up, so no EVPN
/// tunnel port may use it.
pub const MIRROR_UDP_PORT: u16 = 8472;
/// Most remote tunnel ends a static port lists.
pub const MAX_REMOTES: usize = 1024;

/// How a tunnel port learns the other ends of its segment and the MAC addresses behind
/// them.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VxlanControl {
    /// BGP EVPN through FRR (RFC 7432, RFC 8365): the local MACs advertised, the remote
    /// ones and the flood list installed from the routes.
    #[default]
    Evpn,
    /// A configured list of remote ends (`remotes`): broadcast and unknown frames go to
    /// each, MAC addresses are learnt from what arrives (flood and learn).
    Static,
}

impl std::fmt::Display for VxlanControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VxlanControl::Evpn => "evpn",
            VxlanControl::Static => "static",
        })
    }
}

/// What only VXLAN ports have.
// Without `deny_unknown_fields`, as the other kinds (see TapSettings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct VxlanSettings {
    /// The VXLAN network identifier the segment has on the wire (1 to 16777215).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 16777215)]
    pub vni: Option<u32>,
    /// This host's tunnel end: an IPv4 or IPv6 address of the host (IPv4 under EVPN), the
    /// source of what the port sends and where it receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    /// The UDP port tunnel packets are sent to and received on (4789 when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 65535, default = 4789)]
    pub udp_port: Option<u16>,
    /// How the other ends are learnt (`evpn` when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<VxlanControl>,
    /// With `control = "static"`: the other ends' addresses (of `local`'s family, up to
    /// 1024, this host's own excluded). Only these are sent to and received from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 1024)]
    pub remotes: Option<Vec<String>>,
}

impl VxlanSettings {
    pub const FIELDS: &'static [&'static str] = &["vni", "local", "udp_port", "control", "remotes"];

    /// The VNI (checked: present).
    pub fn vni(&self) -> u32 {
        self.vni.unwrap_or(0)
    }

    /// This host's tunnel end (checked: present and an IP address).
    pub fn local_addr(&self) -> IpAddr {
        self.local
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// This host's tunnel end and UDP port.
    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::new(self.local_addr(), self.udp_port())
    }

    /// The UDP port.
    pub fn udp_port(&self) -> u16 {
        self.udp_port.unwrap_or(DEFAULT_UDP_PORT)
    }

    pub fn control(&self) -> VxlanControl {
        self.control.unwrap_or_default()
    }

    /// The static remote ends (checked: addresses of `local`'s family).
    pub fn remote_addrs(&self) -> Vec<IpAddr> {
        self.remotes
            .iter()
            .flatten()
            .filter_map(|s| s.parse().ok())
            .collect()
    }
}

impl KindSettings for VxlanSettings {
    fn fields(&self) -> &'static [&'static str] {
        Self::FIELDS
    }

    fn check(&self, _port: &str) -> Result<(), FieldError> {
        match self.vni {
            None => {
                return Err(FieldError::invalid(
                    "vni",
                    format!("a VXLAN port needs its vni (1 to {MAX_VNI})"),
                ))
            }
            Some(v) if !(1..=MAX_VNI).contains(&v) => {
                return Err(FieldError::invalid(
                    "vni",
                    format!("vni must be between 1 and {MAX_VNI}, not {v}"),
                ))
            }
            Some(_) => {}
        }
        let local = match self.local.as_deref() {
            None => {
                return Err(FieldError::invalid(
                    "local",
                    "a VXLAN port needs local, this host's tunnel address (IPv4 or IPv6)",
                ))
            }
            Some(s) => unicast(s).map_err(|m| FieldError::invalid("local", m))?,
        };
        if local.is_ipv6() && self.control() == VxlanControl::Evpn {
            return Err(FieldError::invalid(
                "local",
                format!(
                    "{local} is IPv6: EVPN tunnels have IPv4 ends (FRR 8.4's EVPN); an IPv6 \
                     underlay takes control = \"static\""
                ),
            ));
        }
        if self.udp_port == Some(0) {
            return Err(FieldError::invalid("udp_port", "udp_port must not be 0"));
        }
        if self.control() == VxlanControl::Evpn && self.udp_port() == MIRROR_UDP_PORT {
            return Err(FieldError::invalid(
                "udp_port",
                format!(
                    "{MIRROR_UDP_PORT} is the port of the kernel mirrors EVPN keeps for FRR: \
                     give the tunnel another (4789 is VXLAN's)"
                ),
            ));
        }
        match (self.control(), self.remotes.as_deref()) {
            (VxlanControl::Evpn, Some(_)) => return Err(FieldError::invalid(
                "remotes",
                "remotes are for control = \"static\"; with EVPN the routes name the other ends",
            )),
            (VxlanControl::Static, Some(remotes)) => {
                if remotes.len() > MAX_REMOTES {
                    return Err(FieldError::invalid(
                        "remotes",
                        format!("at most {MAX_REMOTES} remotes, not {}", remotes.len()),
                    ));
                }
                let mut seen = std::collections::HashSet::new();
                for r in remotes {
                    let a = unicast(r).map_err(|m| FieldError::invalid("remotes", m))?;
                    if a.is_ipv6() != local.is_ipv6() {
                        return Err(FieldError::invalid(
                            "remotes",
                            format!("{a} is not of local's family ({local})"),
                        ));
                    }
                    if a == local {
                        return Err(FieldError::invalid(
                            "remotes",
                            format!("{a} is this host's own address (local)"),
                        ));
                    }
                    if !seen.insert(a) {
                        return Err(FieldError::invalid(
                            "remotes",
                            format!("{a} is listed twice"),
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn fill_defaults(&mut self, _port: &str) {
        self.udp_port.get_or_insert(DEFAULT_UDP_PORT);
        let control = *self.control.get_or_insert_with(VxlanControl::default);
        if control == VxlanControl::Static {
            self.remotes.get_or_insert_with(Vec::new);
        }
    }

    /// A static port's remote ends change while it runs (`vringctl port set NAME --set
    /// 'remotes=["192.0.2.11"]'`).
    fn live_fields(&self) -> &'static [&'static str] {
        &["remotes"]
    }

    /// One tunnel port per VNI on a local address and UDP port (several VNIs share them:
    /// each port's socket gets its VNI's packets); under EVPN one per VNI on the host (the
    /// VNI names its kernel mirror).
    fn claims(&self) -> Vec<String> {
        // The address as parsed: one address written two ways is one claim.
        let mut c = vec![format!("VNI {} on UDP {}", self.vni(), self.endpoint())];
        if self.control() == VxlanControl::Evpn {
            c.push(format!("the EVPN segment of VNI {}", self.vni()));
        }
        c
    }

    /// Not yet: a frame asking for TSO or a checksum is finished by the switch before it is
    /// encapsulated.
    fn offloads(&self) -> bool {
        false
    }

    fn words(&self, _port: &str, _live: &Live<'_>) -> KindWords {
        let vni = self.vni();
        let summary = format!("vni {vni} from {}", self.endpoint());
        let detail = match self.control() {
            VxlanControl::Evpn => format!("{summary}, evpn"),
            VxlanControl::Static => {
                let remotes = self.remotes.as_deref().unwrap_or_default();
                if remotes.is_empty() {
                    format!("{summary}, static, no remote")
                } else {
                    format!("{summary}, static to {}", remotes.join(", "))
                }
            }
        };
        KindWords {
            mode: "vxlan".into(),
            attached_to: format!("vni {vni}"),
            summary,
            detail,
            own_queues: false,
        }
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "vni={} local={} udp_port={} control={}",
            self.vni(),
            self.local.as_deref().unwrap_or(""),
            self.udp_port(),
            self.control()
        );
        if let Some(r) = self.remotes.as_deref() {
            s.push_str(&format!(" remotes={}", r.join(",")));
        }
        s
    }
}

/// Checks that `s` is a unicast IPv4 or IPv6 address a tunnel end may have.
fn unicast(s: &str) -> Result<IpAddr, String> {
    let a: IpAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 address"))?;
    let broadcast = matches!(a, IpAddr::V4(v4) if v4.is_broadcast());
    // An IPv4-mapped IPv6 address is IPv4 written otherwise: the IPv4 one is asked for.
    let mapped = matches!(a, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
    if a.is_unspecified() || broadcast || a.is_multicast() || a.is_loopback() || mapped {
        return Err(format!(
            "{a} cannot be a tunnel end (unspecified, broadcast, multicast, loopback or \
             IPv4-mapped)"
        ));
    }
    if matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80) {
        return Err(format!(
            "{a} is link-local (it needs an interface to mean anything): give a global or \
             unique local address"
        ));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(f: impl FnOnce(&mut VxlanSettings)) -> VxlanSettings {
        let mut s = VxlanSettings {
            vni: Some(42),
            local: Some("10.0.0.1".into()),
            control: Some(VxlanControl::Static),
            ..VxlanSettings::default()
        };
        f(&mut s);
        s
    }

    fn refused(s: VxlanSettings) -> (String, String) {
        let e = s.check("t0").expect_err("refused");
        (e.field.unwrap_or_default(), e.message)
    }

    #[test]
    fn a_tunnel_needs_a_vni_and_a_local_unicast_address() {
        assert_eq!(settings(|_| {}).check("t0"), Ok(()));
        assert_eq!(refused(settings(|s| s.vni = None)).0, "vni");
        let (field, msg) = refused(settings(|s| s.vni = Some(MAX_VNI + 1)));
        assert_eq!(field, "vni");
        assert!(msg.contains("16777215"), "{msg}");
        assert_eq!(refused(settings(|s| s.vni = Some(0))).0, "vni");
        assert_eq!(refused(settings(|s| s.local = None)).0, "local");
        for bad in [
            "10.0.0",
            "::1",
            "::",
            "ff02::1",
            "::ffff:10.0.0.1",
            "fe80::1",
            "0.0.0.0",
            "239.1.1.1",
            "127.0.0.1",
        ] {
            assert_eq!(
                refused(settings(|s| s.local = Some(bad.into()))).0,
                "local",
                "{bad}"
            );
        }
        assert_eq!(refused(settings(|s| s.udp_port = Some(0))).0, "udp_port");
    }

    #[test]
    fn remotes_are_for_static_control_unique_and_not_this_host() {
        let evpn = settings(|s| {
            s.control = Some(VxlanControl::Evpn);
            s.remotes = Some(vec!["10.0.0.2".into()]);
        });
        assert_eq!(refused(evpn).0, "remotes");
        // EVPN (the default) names no remote; the kernel mirrors' port is not its.
        assert_eq!(settings(|s| s.control = None).check("t0"), Ok(()));
        let (field, msg) = refused(settings(|s| {
            s.control = None;
            s.udp_port = Some(MIRROR_UDP_PORT);
        }));
        assert_eq!(field, "udp_port");
        assert!(msg.contains("mirror"), "{msg}");
        let ok = settings(|s| {
            s.control = Some(VxlanControl::Static);
            s.remotes = Some(vec!["10.0.0.2".into(), "10.0.0.3".into()]);
        });
        assert_eq!(ok.check("t0"), Ok(()));
        assert_eq!(
            ok.remote_addrs(),
            [
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3))
            ]
        );
        for bad in [
            vec!["10.0.0.2", "10.0.0.2"],
            vec!["10.0.0.1"],
            vec!["nowhere"],
            vec!["2001:db8::2"],
        ] {
            let s = settings(|s| {
                s.control = Some(VxlanControl::Static);
                s.remotes = Some(bad.iter().map(|r| r.to_string()).collect());
            });
            let (field, msg) = refused(s);
            assert_eq!(field, "remotes", "{bad:?}: {msg}");
        }
    }

    #[test]
    fn an_ipv6_underlay_is_static_and_of_one_family() {
        let v6 = |local: &str, remotes: &[&str], control| {
            settings(|s| {
                s.local = Some(local.into());
                s.control = Some(control);
                s.remotes = (control == VxlanControl::Static)
                    .then(|| remotes.iter().map(|r| r.to_string()).collect());
            })
        };
        let ok = v6("2001:db8::1", &["2001:db8::2"], VxlanControl::Static);
        assert_eq!(ok.check("t0"), Ok(()));
        assert_eq!(
            ok.remote_addrs(),
            ["2001:db8::2".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(ok.claims()[0], "VNI 42 on UDP [2001:db8::1]:4789");
        // The same address written out in full claims the same.
        let long = v6("2001:0db8:0:0::1", &[], VxlanControl::Static);
        assert_eq!(long.claims()[0], ok.claims()[0]);
        let (field, msg) = refused(v6("2001:db8::1", &["10.0.0.2"], VxlanControl::Static));
        assert_eq!(field, "remotes");
        assert!(msg.contains("family"), "{msg}");
        let (field, msg) = refused(v6("2001:db8::1", &[], VxlanControl::Evpn));
        assert_eq!(field, "local");
        assert!(msg.contains("static"), "{msg}");
    }

    #[test]
    fn defaults_and_words_say_what_the_port_does() {
        let mut s = settings(|s| s.control = Some(VxlanControl::Static));
        s.fill_defaults("t0");
        assert_eq!(
            (s.udp_port, s.remotes.as_deref()),
            (Some(4789), Some(&[][..]))
        );
        assert_eq!(
            s.words("t0", &Live::default()).detail,
            "vni 42 from 10.0.0.1:4789, static, no remote"
        );
        let mut e = settings(|s| s.control = None);
        e.fill_defaults("t0");
        assert_eq!(e.remotes, None);
        assert_eq!(e.control, Some(VxlanControl::Evpn));
        assert_eq!(
            e.describe(),
            "vni=42 local=10.0.0.1 udp_port=4789 control=evpn"
        );
    }
}
