//! Security groups in the data path (docs/architecture.md, "Security groups"): what a
//! port with groups or `allowed_ips` lets its VM send and receive, decided on a copy of
//! each frame's headers. The verdicts themselves are `vringswitch_filter`'s; this holds
//! what the switch adds around them: reading a frame's headers once per burst, the
//! address checks of `allowed_ips`, what is not IP, and the drop reasons.
//!
//! The worker asks [`from_vm`] for the frames a filtered port's VM sends (its egress
//! rules, before the forwarding decision is acted on) and [`to_vm`] for those delivered
//! to one (its ingress rules, per destination, flooding included); a port without a
//! filter costs one branch per burst.

use vringswitch_filter::conntrack::Table;
use vringswitch_filter::firewall::{self, Drop, Policy, Site, Verdict};
use vringswitch_filter::flow::Datagram;
use vringswitch_filter::{classify as classify_l3, Classified, Direction, Flow, Prefix};
use vringswitch_ports::DropReason;
use vringswitch_wire::ethernet::ethertype;

/// What filters a port.
#[derive(Debug, Clone, Default)]
pub struct PortFilter {
    /// The port's security groups, compiled; `None`: it has none (nothing is filtered by
    /// rules, only its addresses are checked).
    pub policy: Option<Policy>,
    /// `allowed_ips`: the addresses its VM may send from (an ARP or neighbour discovery
    /// sender too); `None`: any.
    pub allowed_ips: Option<Box<[Prefix]>>,
}

/// RARP's EtherType.
const RARP: u16 = 0x8035;

/// Most bytes of a frame the filter reads: Ethernet and a VLAN tag, IPv6 with extension
/// headers, the transport header. They are delivered as judged ([`JUDGED_LEN`]).
///
/// [`JUDGED_LEN`]: vringswitch_ports::frame::JUDGED_LEN
pub const HEADER_LEN: usize = vringswitch_ports::frame::JUDGED_LEN;

/// What a frame is to the filter, read from its first `bytes` (at most [`HEADER_LEN`]),
/// tagged or not as the decision found it. ARP keeps its sender's address for the
/// address check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FrameClass {
    /// A whole TCP or UDP datagram read straight into its connection's key
    /// ([`Datagram::read`]): the key is in the frame's [`Site`], made by [`classify`],
    /// with its TCP flags here (0 for UDP).
    Datagram {
        tcp_flags: u8,
    },
    Ip(Flow),
    /// ARP, with the sender's IPv4 address (`None`: too short to say).
    Arp(Option<[u8; 4]>),
    /// RARP: what a VM's hypervisor announces it with after a live migration (its MAC,
    /// no IP), so that the network learns where it is now.
    Rarp,
    /// Another EtherType.
    #[default]
    Other,
    /// IP whose headers cannot be read.
    Malformed,
}

/// Classifies a frame from its first bytes; `tagged`: it carries an 802.1Q tag (its
/// EtherType is after it).
pub fn frame_class(tagged: bool, bytes: &[u8]) -> FrameClass {
    let at = if tagged { 16 } else { 12 };
    let Some(&[hi, lo]) = bytes.get(at..at + 2) else {
        return FrameClass::Malformed;
    };
    let l3 = &bytes[at + 2..];
    match u16::from_be_bytes([hi, lo]) {
        RARP => FrameClass::Rarp,
        ethertype::ARP => FrameClass::Arp(l3.get(14..18).map(|s| [s[0], s[1], s[2], s[3]])),
        t => match classify_l3(t, l3) {
            Classified::Ip(flow) => FrameClass::Ip(flow),
            Classified::Malformed => FrameClass::Malformed,
            Classified::NotIp(_) => FrameClass::Other,
        },
    }
}

/// Classifies a frame from its first bytes as the data path does, for zone `zone` of
/// `table`, into `class` and `site` (written in place: a [`Flow`] is large, and only the
/// frames that need one get it): a datagram read straight ([`FrameClass::Datagram`]) gets
/// its key and hash in its [`Site`]; another IP frame gets them from its [`Flow`]; what
/// is not IP, or comes without a table, a site in the zone alone.
#[inline]
pub fn classify(
    tagged: bool,
    bytes: &[u8],
    table: Option<&Table>,
    zone: u32,
    class: &mut FrameClass,
    site: &mut Site,
) {
    let at = if tagged { 16 } else { 12 };
    if let (Some(table), Some(&[hi, lo])) = (table, bytes.get(at..at + 2)) {
        if let Some(d) = Datagram::read(u16::from_be_bytes([hi, lo]), &bytes[at + 2..], zone) {
            *site = Site::of(table, d.key, zone);
            *class = FrameClass::Datagram {
                tcp_flags: d.tcp_flags,
            };
            return;
        }
    }
    classify_slowly(tagged, bytes, table, zone, class, site);
}

/// [`classify`] for a frame that is not a datagram read straight.
#[cold]
#[inline(never)]
fn classify_slowly(
    tagged: bool,
    bytes: &[u8],
    table: Option<&Table>,
    zone: u32,
    class: &mut FrameClass,
    site: &mut Site,
) {
    *class = frame_class(tagged, bytes);
    *site = match (&*class, table) {
        (FrameClass::Ip(flow), Some(table)) => Site::new(table, flow, zone),
        _ => Site::zone(zone),
    };
}

fn reason(d: Drop) -> DropReason {
    match d {
        Drop::AclDenied => DropReason::AclDenied,
        Drop::CtInvalid => DropReason::CtInvalid,
        Drop::CtFull => DropReason::CtFull,
    }
}

/// Whether `allowed` lets a VM send from `src` (of family `v6`). The unspecified address
/// passes: a DHCP client and IPv6 duplicate address detection send from it before the
/// VM has an address.
fn may_send_from(allowed: &[Prefix], v6: bool, src: &[u8; 16]) -> bool {
    src.iter().all(|&b| b == 0) || allowed.iter().any(|p| p.contains(v6, src))
}

/// The verdict on a frame port `filter`'s VM sends, classified `class`, at `at`, at
/// second `now` (`site`: where its connection is, shared by every port that judges the
/// frame): `Ok(tracked)` if it passes (`tracked`: its connection's state moved
/// here, so the receivers' ports must not move it again), else why it is dropped.
#[inline]
pub fn from_vm(
    filter: &PortFilter,
    table: Option<&Table>,
    class: &FrameClass,
    site: &mut Site,
    now: u32,
) -> Result<bool, DropReason> {
    sender_addresses(filter, class, site)?;
    let Some(policy) = filter.policy.as_ref() else {
        return Ok(false);
    };
    judge(policy, table, Direction::Egress, class, site, now, true)
}

/// What [`from_vm`] would say of the frame now, changing nothing (`vringctl trace`; its
/// zone `zone`).
pub fn would_from_vm(
    filter: &PortFilter,
    table: Option<&Table>,
    class: &FrameClass,
    zone: u32,
    now: u32,
) -> Result<bool, DropReason> {
    // Never a datagram read straight (that is the data path's `classify`): no key needed.
    sender_addresses(filter, class, &Site::zone(zone))?;
    let Some(policy) = filter.policy.as_ref() else {
        return Ok(false);
    };
    would_judge(policy, table, Direction::Egress, class, zone, now, true)
}

/// What [`to_vm`] would say of the frame now, changing nothing (`vringctl trace`).
pub fn would_to_vm(
    policy: &Policy,
    table: Option<&Table>,
    class: &FrameClass,
    zone: u32,
    now: u32,
    track: bool,
) -> Result<bool, DropReason> {
    would_judge(policy, table, Direction::Ingress, class, zone, now, track)
}

/// The `allowed_ips` check of what a port's VM sends.
#[inline]
fn sender_addresses(
    filter: &PortFilter,
    class: &FrameClass,
    site: &Site,
) -> Result<(), DropReason> {
    if let Some(allowed) = filter.allowed_ips.as_deref() {
        let ok = match class {
            FrameClass::Datagram { .. } => {
                may_send_from(allowed, site.key().v6(), &site.key().src())
            }
            FrameClass::Ip(f) => may_send_from(allowed, f.v6, &f.src),
            FrameClass::Arp(Some(spa)) => {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(spa);
                may_send_from(allowed, false, &a)
            }
            FrameClass::Arp(None) => false,
            FrameClass::Rarp | FrameClass::Other | FrameClass::Malformed => true,
        };
        if !ok {
            return Err(DropReason::IpSpoofed);
        }
    }
    Ok(())
}

/// The verdict on a frame delivered to a port with groups `policy`; `track`: no port
/// before this one moved its connection's state (see [`from_vm`]). `Ok(tracked)` as
/// there.
#[inline]
pub fn to_vm(
    policy: &Policy,
    table: Option<&Table>,
    class: &FrameClass,
    site: &mut Site,
    now: u32,
    track: bool,
) -> Result<bool, DropReason> {
    judge(policy, table, Direction::Ingress, class, site, now, track)
}

/// The verdict at a port with groups: a datagram read straight is judged here, inlined
/// into the worker's loops; any other frame by [`judge_flow`].
#[inline(always)]
fn judge(
    policy: &Policy,
    table: Option<&Table>,
    direction: Direction,
    class: &FrameClass,
    site: &mut Site,
    now: u32,
    track: bool,
) -> Result<bool, DropReason> {
    // A compare and a branch the usual frame predicts, not a jump through the match's
    // table (perf: the function's entry and that jump were a quarter of its time).
    if let (&FrameClass::Datagram { tcp_flags }, Some(table)) = (class, table) {
        let v = firewall::check_datagram(table, policy, direction, tcp_flags, site, now, track);
        return verdict(v).map(|()| track && policy.stateful);
    }
    judge_flow(policy, table, direction, class, site, now, track)
}

/// [`judge`] for a frame judged by its [`Flow`], or not IP.
#[inline(never)]
fn judge_flow(
    policy: &Policy,
    table: Option<&Table>,
    direction: Direction,
    class: &FrameClass,
    site: &mut Site,
    now: u32,
    track: bool,
) -> Result<bool, DropReason> {
    let read_straight;
    let flow = match class {
        &FrameClass::Datagram { tcp_flags } => {
            read_straight = Datagram {
                key: *site.key(),
                tcp_flags,
            }
            .flow();
            &read_straight
        }
        _ => match ip_flow(class)? {
            Some(flow) => flow,
            None => return Ok(false),
        },
    };
    if !policy.stateful {
        return verdict(firewall::check_stateless(policy, direction, flow)).map(|()| false);
    }
    // The control side makes the table before any stateful port runs; without one, a
    // stateful port fails closed.
    let Some(table) = table else {
        return Err(DropReason::CtFull);
    };
    verdict(firewall::check_at(
        table, policy, direction, flow, site, now, track,
    ))
    .map(|()| track)
}

/// [`judge`] changing nothing: the connection table only read.
fn would_judge(
    policy: &Policy,
    table: Option<&Table>,
    direction: Direction,
    class: &FrameClass,
    zone: u32,
    now: u32,
    track: bool,
) -> Result<bool, DropReason> {
    let Some(flow) = ip_flow(class)? else {
        return Ok(false);
    };
    if !policy.stateful {
        return verdict(firewall::check_stateless(policy, direction, flow)).map(|()| false);
    }
    verdict(firewall::would_pass(
        table, policy, direction, flow, zone, now, track,
    ))
    .map(|()| track)
}

/// The IP flow of a frame a port with groups judges (`None`: ARP or RARP, which port
/// security and `allowed_ips` judge, no rule), or why a frame that is not IP is dropped.
#[inline(always)]
fn ip_flow(class: &FrameClass) -> Result<Option<&Flow>, DropReason> {
    match class {
        FrameClass::Ip(f) => Ok(Some(f)),
        // Its flow is made from its site's key (see `judge`); `vringctl trace` never
        // reads one.
        FrameClass::Datagram { .. } => Err(DropReason::CtInvalid),
        FrameClass::Arp(_) | FrameClass::Rarp => Ok(None),
        // As Neutron's firewall: a port with groups carries IP and ARP only.
        FrameClass::Other => Err(DropReason::AclDenied),
        FrameClass::Malformed => Err(DropReason::CtInvalid),
    }
}

fn verdict(v: Verdict) -> Result<(), DropReason> {
    match v {
        Verdict::Pass => Ok(()),
        Verdict::Drop(d) => Err(reason(d)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vringswitch_filter::{Compiled, Rule};

    /// An Ethernet frame (tagged with VLAN 5 if `tagged`) of EtherType `t` carrying `l3`.
    fn frame(tagged: bool, t: u16, l3: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        if tagged {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        }
        f.extend_from_slice(&t.to_be_bytes());
        f.extend_from_slice(l3);
        f
    }

    /// IPv4 10.0.0.1 -> 10.0.0.2, UDP 5000 -> 53.
    fn udp4(src: [u8; 4]) -> Vec<u8> {
        let mut ip = vec![
            0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0, src[0], src[1], src[2], src[3], 10, 0, 0, 2,
        ];
        ip.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0, 8, 0, 0]);
        ip
    }

    /// An ARP request from `spa`.
    fn arp(spa: [u8; 4]) -> Vec<u8> {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1, 0x02, 0, 0, 0, 0, 1];
        a.extend_from_slice(&spa);
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&[10, 0, 0, 2]);
        a
    }

    fn allowing(ips: &[[u8; 4]]) -> PortFilter {
        let p = |a: &[u8; 4]| {
            let mut x = [0u8; 16];
            x[..4].copy_from_slice(a);
            Prefix::new(false, x, 32).unwrap()
        };
        PortFilter {
            policy: None,
            allowed_ips: Some(ips.iter().map(p).collect()),
        }
    }

    #[test]
    fn frames_are_classified_after_their_tag_and_arp_keeps_its_sender() {
        let c = frame_class(true, &frame(true, 0x0800, &udp4([10, 0, 0, 1])));
        let FrameClass::Ip(f) = c else {
            panic!("{c:?}")
        };
        assert_eq!((f.proto, &f.src[..4]), (17, &[10, 0, 0, 1][..]));
        assert_eq!(
            frame_class(false, &frame(false, 0x0806, &arp([10, 0, 0, 9]))),
            FrameClass::Arp(Some([10, 0, 0, 9]))
        );
        assert_eq!(
            frame_class(false, &frame(false, 0x0806, &[0, 1])),
            FrameClass::Arp(None)
        );
        assert_eq!(
            frame_class(false, &frame(false, 0x88cc, &[0; 40])),
            FrameClass::Other
        );
        assert_eq!(
            frame_class(false, &frame(false, 0x8035, &[0; 28])),
            FrameClass::Rarp
        );
        // Cut inside the IP header, or no EtherType at all.
        assert_eq!(
            frame_class(false, &frame(false, 0x0800, &udp4([10, 0, 0, 1])[..12])),
            FrameClass::Malformed
        );
        assert_eq!(frame_class(false, &[0; 13]), FrameClass::Malformed);
    }

    #[test]
    fn allowed_ips_drop_a_spoofed_source_or_arp_sender_and_pass_the_unspecified() {
        let f = allowing(&[[10, 0, 0, 1]]);
        let class = |l3: Vec<u8>, t| frame_class(false, &frame(false, t, &l3));
        let own = class(udp4([10, 0, 0, 1]), 0x0800);
        assert_eq!(from_vm(&f, None, &own, &mut Site::zone(0), 1), Ok(false));
        let spoofed = class(udp4([10, 0, 0, 7]), 0x0800);
        assert_eq!(
            from_vm(&f, None, &spoofed, &mut Site::zone(0), 1),
            Err(DropReason::IpSpoofed)
        );
        let dhcp_discover = class(udp4([0, 0, 0, 0]), 0x0800);
        assert_eq!(
            from_vm(&f, None, &dhcp_discover, &mut Site::zone(0), 1),
            Ok(false)
        );
        let arp_own = class(arp([10, 0, 0, 1]), 0x0806);
        assert_eq!(
            from_vm(&f, None, &arp_own, &mut Site::zone(0), 1),
            Ok(false)
        );
        let arp_other = class(arp([10, 0, 0, 8]), 0x0806);
        assert_eq!(
            from_vm(&f, None, &arp_other, &mut Site::zone(0), 1),
            Err(DropReason::IpSpoofed)
        );
        // Without groups, what is not IP passes (port security still judges its MAC).
        assert_eq!(
            from_vm(&f, None, &FrameClass::Other, &mut Site::zone(0), 1),
            Ok(false)
        );
    }

    #[test]
    fn a_port_with_groups_carries_ip_and_arp_only_and_tracks_what_it_opens() {
        let rule = Rule::any(Direction::Egress, false);
        let f = PortFilter {
            policy: Some(Policy {
                rules: Compiled::new(&[rule], |_| None),
                stateful: true,
                epoch: 1,
                ..Policy::default()
            }),
            allowed_ips: None,
        };
        let t = Table::new(8);
        let udp = frame_class(false, &frame(false, 0x0800, &udp4([10, 0, 0, 1])));
        assert_eq!(from_vm(&f, Some(&t), &udp, &mut Site::zone(0), 1), Ok(true));
        assert_eq!(t.len(), 1);
        assert_eq!(
            from_vm(
                &f,
                Some(&t),
                &FrameClass::Arp(Some([10, 0, 0, 1])),
                &mut Site::zone(0),
                1
            ),
            Ok(false)
        );
        assert_eq!(
            from_vm(&f, Some(&t), &FrameClass::Other, &mut Site::zone(0), 1),
            Err(DropReason::AclDenied)
        );
        assert_eq!(
            from_vm(&f, Some(&t), &FrameClass::Malformed, &mut Site::zone(0), 1),
            Err(DropReason::CtInvalid)
        );
        // Nothing comes in without a connection: the reply of the UDP flow does.
        let policy = f.policy.as_ref().unwrap();
        let mut back = udp4([10, 0, 0, 2]);
        back[16..20].copy_from_slice(&[10, 0, 0, 1]);
        back[20..24].copy_from_slice(&[0x00, 0x35, 0x13, 0x88]);
        let reply = frame_class(false, &frame(false, 0x0800, &back));
        assert_eq!(
            to_vm(policy, Some(&t), &reply, &mut Site::zone(0), 1, true),
            Ok(true)
        );
        let mut other = back.clone();
        other[20..22].copy_from_slice(&[0x00, 0x36]);
        let unasked = frame_class(false, &frame(false, 0x0800, &other));
        assert_eq!(
            to_vm(policy, Some(&t), &unasked, &mut Site::zone(0), 1, true),
            Err(DropReason::AclDenied)
        );
        // Without a table a stateful port fails closed.
        assert_eq!(
            from_vm(&f, None, &udp, &mut Site::zone(0), 1),
            Err(DropReason::CtFull)
        );
    }

    #[test]
    fn the_data_path_reads_a_plain_datagram_into_its_site_and_judges_it_as_its_flow() {
        let t = Table::new(8);
        for tagged in [false, true] {
            let bytes = frame(tagged, 0x0800, &udp4([10, 0, 0, 1]));
            let (mut class, mut site) = (FrameClass::default(), Site::default());
            classify(tagged, &bytes, Some(&t), 7, &mut class, &mut site);
            assert_eq!(class, FrameClass::Datagram { tcp_flags: 0 });
            let FrameClass::Ip(flow) = frame_class(tagged, &bytes) else {
                panic!("IP")
            };
            assert_eq!(site.key(), Site::new(&t, &flow, 7).key());
            assert_eq!(site.hash(), Site::new(&t, &flow, 7).hash());
            // Without a table, or not a plain datagram: read as a flow, as before.
            classify(tagged, &bytes, None, 7, &mut class, &mut site);
            assert_eq!(class, FrameClass::Ip(flow));
            assert!(!site.keyed());
        }
        let (mut class, mut site) = (FrameClass::default(), Site::default());
        classify(
            false,
            &frame(false, 0x0806, &arp([10, 0, 0, 9])),
            Some(&t),
            0,
            &mut class,
            &mut site,
        );
        assert_eq!(class, FrameClass::Arp(Some([10, 0, 0, 9])));
        assert!(!site.keyed());
        // `allowed_ips` judge the key's source address.
        let f = allowing(&[[10, 0, 0, 1]]);
        for (src, want) in [
            ([10, 0, 0, 1], Ok(false)),
            ([10, 0, 0, 7], Err(DropReason::IpSpoofed)),
        ] {
            classify(
                false,
                &frame(false, 0x0800, &udp4(src)),
                Some(&t),
                0,
                &mut class,
                &mut site,
            );
            assert!(matches!(class, FrameClass::Datagram { .. }));
            assert_eq!(from_vm(&f, Some(&t), &class, &mut site, 1), want);
        }
    }
}
