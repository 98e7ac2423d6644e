//! Security group rules as OpenStack writes them, and their compiled form.
//!
//! A rule allows traffic in one direction (`ingress`, to the VM; `egress`, from it) of one
//! ethertype (IPv4 or IPv6), optionally one protocol, optionally a port range (for TCP and
//! UDP: destination ports; for ICMP: `port_range_min` is the type, `port_range_max` the
//! code, as OpenStack has it), and optionally a remote: a prefix, or a group (the addresses
//! of that group's member ports). What no rule allows is dropped.
//!
//! Rules are compiled when they or a group's members change ([`Compiled::new`]): remote
//! groups become prefix lists, rules are split by direction and checked once per new
//! connection (or, for a stateless group, per frame) by [`Compiled::allows`], a scan of a
//! port's few rules with no allocation.

use crate::flow::{Flow, L4};

/// Which way a rule lets traffic through, seen from the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// To the VM.
    Ingress,
    /// From the VM.
    Egress,
}

/// An address prefix: IPv4 addresses in the first four bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub v6: bool,
    pub addr: [u8; 16],
    pub len: u8,
}

impl Prefix {
    /// The prefix `addr`/`len`, its host bits cleared; `None` if `len` is longer than the
    /// family's addresses.
    pub fn new(v6: bool, addr: [u8; 16], len: u8) -> Option<Prefix> {
        let bits = if v6 { 128 } else { 32 };
        if len > bits {
            return None;
        }
        let mut a = [0u8; 16];
        for (i, byte) in a.iter_mut().enumerate().take(usize::from(bits / 8)) {
            let keep = (i32::from(len) - 8 * i as i32).clamp(0, 8);
            *byte = addr[i] & (0xffu16 << (8 - keep)) as u8;
        }
        Some(Prefix { v6, addr: a, len })
    }

    /// Whether address `a` of family `v6` lies in the prefix.
    #[inline]
    pub fn contains(&self, v6: bool, a: &[u8; 16]) -> bool {
        if v6 != self.v6 {
            return false;
        }
        let whole = usize::from(self.len / 8);
        if a[..whole] != self.addr[..whole] {
            return false;
        }
        let rest = self.len % 8;
        rest == 0 || (a[whole] ^ self.addr[whole]) & (0xffu16 << (8 - rest)) as u8 == 0
    }
}

/// The remote end a rule admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    Any,
    Prefix(Prefix),
    /// A security group's name: its member ports' addresses.
    Group(String),
}

/// One rule, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub direction: Direction,
    /// IPv6 rather than IPv4.
    pub v6: bool,
    /// The IP protocol number; `None`: any.
    pub protocol: Option<u8>,
    pub port_range_min: Option<u16>,
    pub port_range_max: Option<u16>,
    pub remote: Remote,
}

impl Rule {
    /// Anything of family `v6` going `direction` (`{"direction": "egress"}` in a group).
    pub fn any(direction: Direction, v6: bool) -> Rule {
        Rule {
            direction,
            v6,
            protocol: None,
            port_range_min: None,
            port_range_max: None,
            remote: Remote::Any,
        }
    }
}

/// What a compiled rule checks of the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    /// Anything (no protocol given, or one without ports).
    Any,
    /// Destination ports in this range (TCP, UDP, SCTP).
    Ports(u16, u16),
    /// ICMP type, and code if given.
    Icmp(u8, Option<u8>),
}

/// One rule, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CompiledRule {
    v6: bool,
    protocol: Option<u8>,
    transport: Match,
    /// Empty: any remote.
    remotes: Vec<Prefix>,
}

/// A port's rules, compiled: what may come in, what may go out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    ingress: Vec<CompiledRule>,
    egress: Vec<CompiledRule>,
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

impl Compiled {
    /// Compiles `rules` (of every group of a port), the members' addresses of each group
    /// that `members` knows (a remote group it does not know admits nothing).
    pub fn new<'a>(
        rules: impl IntoIterator<Item = &'a Rule>,
        members: impl Fn(&str) -> Option<Vec<Prefix>>,
    ) -> Compiled {
        let mut c = Compiled::default();
        for r in rules {
            // OpenStack's `icmp` on an IPv6 rule means ICMPv6.
            let protocol = match (r.protocol, r.v6) {
                (Some(ICMP), true) => Some(ICMPV6),
                (p, _) => p,
            };
            let ports_given = r.port_range_min.is_some() || r.port_range_max.is_some();
            let transport = match protocol {
                Some(TCP | UDP | SCTP) if ports_given => Match::Ports(
                    r.port_range_min.unwrap_or(0),
                    r.port_range_max.or(r.port_range_min).unwrap_or(u16::MAX),
                ),
                Some(ICMP | ICMPV6) => match r.port_range_min {
                    Some(kind) => Match::Icmp(
                        u8::try_from(kind).unwrap_or(u8::MAX),
                        r.port_range_max.map(|c| u8::try_from(c).unwrap_or(u8::MAX)),
                    ),
                    None => Match::Any,
                },
                _ => Match::Any,
            };
            let remotes = match &r.remote {
                Remote::Any => Vec::new(),
                Remote::Prefix(p) => vec![*p],
                Remote::Group(g) => {
                    let of_family: Vec<Prefix> = members(g)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|p| p.v6 == r.v6)
                        .collect();
                    if of_family.is_empty() {
                        // A group with no member of this family admits nothing.
                        continue;
                    }
                    of_family
                }
            };
            let compiled = CompiledRule {
                v6: r.v6,
                protocol,
                transport,
                remotes,
            };
            match r.direction {
                Direction::Ingress => c.ingress.push(compiled),
                Direction::Egress => c.egress.push(compiled),
            }
        }
        c
    }

    /// Whether a rule allows `flow` going `direction` (ingress: from its source to the VM;
    /// egress: from the VM to its destination, the remote end).
    pub fn allows(&self, direction: Direction, flow: &Flow) -> bool {
        let (rules, remote) = match direction {
            Direction::Ingress => (&self.ingress, &flow.src),
            Direction::Egress => (&self.egress, &flow.dst),
        };
        rules.iter().any(|r| {
            r.v6 == flow.v6
                && r.protocol.is_none_or(|p| p == flow.proto)
                && match (r.transport, flow.l4) {
                    (Match::Any, _) => true,
                    (Match::Ports(lo, hi), L4::Ports { dst, .. }) => (lo..=hi).contains(&dst),
                    (
                        Match::Icmp(kind, code),
                        L4::Icmp {
                            kind: k, code: c, ..
                        }
                        | L4::IcmpError {
                            kind: k, code: c, ..
                        },
                    ) => kind == k && code.is_none_or(|code| code == c),
                    // Ports or a type asked of a frame without them (a later fragment):
                    // not this rule's to allow.
                    _ => false,
                }
                && (r.remotes.is_empty() || r.remotes.iter().any(|p| p.contains(flow.v6, remote)))
        })
    }

    /// Whether no rule allows anything.
    pub fn is_empty(&self) -> bool {
        self.ingress.is_empty() && self.egress.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Fragment;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut x = [0u8; 16];
        x[..4].copy_from_slice(&a);
        x
    }

    fn prefix(a: [u8; 4], len: u8) -> Prefix {
        Prefix::new(false, v4(a), len).unwrap()
    }

    fn tcp(src: [u8; 4], dst: [u8; 4], dport: u16) -> Flow {
        Flow {
            v6: false,
            src: v4(src),
            dst: v4(dst),
            proto: TCP,
            l4: L4::Ports {
                src: 40000,
                dst: dport,
                tcp_flags: 2,
            },
            fragment: Fragment::Whole,
        }
    }

    fn rule(
        direction: Direction,
        protocol: Option<u8>,
        ports: Option<(u16, u16)>,
        remote: Remote,
    ) -> Rule {
        Rule {
            direction,
            v6: false,
            protocol,
            port_range_min: ports.map(|p| p.0),
            port_range_max: ports.map(|p| p.1),
            remote,
        }
    }

    #[test]
    fn prefixes_hold_what_they_cover_and_nothing_else() {
        let p = prefix([10, 1, 2, 3], 20);
        assert_eq!(p.addr[..4], [10, 1, 0, 0], "host bits cleared");
        assert!(p.contains(false, &v4([10, 1, 15, 255])));
        assert!(!p.contains(false, &v4([10, 1, 16, 0])));
        assert!(!p.contains(true, &v4([10, 1, 15, 255])), "another family");
        assert!(prefix([0, 0, 0, 0], 0).contains(false, &v4([203, 0, 113, 9])));
        assert!(Prefix::new(false, v4([1, 2, 3, 4]), 33).is_none());
        let host = prefix([192, 0, 2, 7], 32);
        assert!(host.contains(false, &v4([192, 0, 2, 7])));
        assert!(!host.contains(false, &v4([192, 0, 2, 6])));
    }

    #[test]
    fn a_port_range_a_remote_prefix_and_a_direction_each_narrow_a_rule() {
        let rules = [
            rule(
                Direction::Ingress,
                Some(TCP),
                Some((22, 22)),
                Remote::Prefix(prefix([10, 0, 0, 0], 24)),
            ),
            rule(
                Direction::Egress,
                Some(TCP),
                Some((8000, 8080)),
                Remote::Any,
            ),
        ];
        let c = Compiled::new(&rules, |_| None);
        let ssh = tcp([10, 0, 0, 9], [10, 0, 0, 2], 22);
        assert!(c.allows(Direction::Ingress, &ssh));
        assert!(
            !c.allows(Direction::Egress, &ssh),
            "ingress rules only go in"
        );
        assert!(
            !c.allows(Direction::Ingress, &tcp([10, 0, 1, 9], [10, 0, 0, 2], 22)),
            "remote"
        );
        assert!(
            !c.allows(Direction::Ingress, &tcp([10, 0, 0, 9], [10, 0, 0, 2], 23)),
            "port"
        );
        assert!(c.allows(Direction::Egress, &tcp([10, 0, 0, 2], [8, 8, 8, 8], 8080)));
        assert!(!c.allows(Direction::Egress, &tcp([10, 0, 0, 2], [8, 8, 8, 8], 8081)));
        let mut udp = tcp([10, 0, 0, 9], [10, 0, 0, 2], 22);
        udp.proto = UDP;
        assert!(!c.allows(Direction::Ingress, &udp), "protocol");
        let mut v6 = ssh;
        v6.v6 = true;
        assert!(!c.allows(Direction::Ingress, &v6), "ethertype");
        // SCTP's ports are ranged as TCP's and UDP's are.
        let sctp = Compiled::new(
            &[rule(
                Direction::Ingress,
                Some(SCTP),
                Some((3868, 3868)),
                Remote::Any,
            )],
            |_| None,
        );
        let mut diameter = tcp([10, 0, 0, 9], [10, 0, 0, 2], 3868);
        diameter.proto = SCTP;
        assert!(sctp.allows(Direction::Ingress, &diameter));
        let mut other = tcp([10, 0, 0, 9], [10, 0, 0, 2], 3869);
        other.proto = SCTP;
        assert!(!sctp.allows(Direction::Ingress, &other), "sctp port");
        diameter.proto = TCP;
        assert!(
            !sctp.allows(Direction::Ingress, &diameter),
            "tcp is not sctp"
        );
    }

    #[test]
    fn a_remote_group_admits_its_members_of_the_rules_family_and_an_empty_one_nothing() {
        let rules = [
            rule(Direction::Ingress, None, None, Remote::Group("web".into())),
            rule(
                Direction::Ingress,
                None,
                None,
                Remote::Group("nobody".into()),
            ),
        ];
        let c = Compiled::new(&rules, |g| {
            (g == "web").then(|| {
                vec![
                    prefix([10, 0, 0, 5], 32),
                    Prefix::new(true, [0xfd; 16], 128).unwrap(),
                ]
            })
        });
        assert!(c.allows(Direction::Ingress, &tcp([10, 0, 0, 5], [10, 0, 0, 2], 1)));
        assert!(!c.allows(Direction::Ingress, &tcp([10, 0, 0, 6], [10, 0, 0, 2], 1)));
        // "nobody" has no members: no rule at all, not "any remote".
        assert_eq!(c.ingress.len(), 1);
    }

    #[test]
    fn icmp_rules_match_type_and_code_as_openstack_writes_them() {
        let echo = rule(Direction::Ingress, Some(ICMP), Some((8, 0)), Remote::Any);
        let any_unreachable = Rule {
            port_range_max: None,
            ..rule(Direction::Ingress, Some(ICMP), Some((3, 0)), Remote::Any)
        };
        let c = Compiled::new(&[echo, any_unreachable], |_| None);
        let icmp = |kind, code| Flow {
            proto: ICMP,
            l4: L4::Icmp {
                kind,
                code,
                echo_id: None,
            },
            ..tcp([1, 1, 1, 1], [2, 2, 2, 2], 0)
        };
        assert!(c.allows(Direction::Ingress, &icmp(8, 0)));
        assert!(!c.allows(Direction::Ingress, &icmp(8, 1)));
        assert!(!c.allows(Direction::Ingress, &icmp(13, 0)));
        assert!(c.allows(Direction::Ingress, &icmp(3, 13)), "any code");
        // `icmp` on an IPv6 rule is ICMPv6.
        let v6 = Rule {
            v6: true,
            ..rule(Direction::Egress, Some(ICMP), None, Remote::Any)
        };
        let c = Compiled::new(&[v6], |_| None);
        let mut ping6 = icmp(128, 0);
        ping6.v6 = true;
        ping6.proto = ICMPV6;
        assert!(c.allows(Direction::Egress, &ping6));
    }

    #[test]
    fn a_rule_with_ports_does_not_allow_a_fragment_without_them() {
        let c = Compiled::new(
            &[rule(
                Direction::Ingress,
                Some(UDP),
                Some((53, 53)),
                Remote::Any,
            )],
            |_| None,
        );
        let mut later = tcp([1, 1, 1, 1], [2, 2, 2, 2], 0);
        later.proto = UDP;
        later.l4 = L4::None;
        later.fragment = Fragment::Later { id: 1 };
        assert!(!c.allows(Direction::Ingress, &later));
        // A rule for the whole protocol does.
        let c = Compiled::new(
            &[rule(Direction::Ingress, Some(UDP), None, Remote::Any)],
            |_| None,
        );
        assert!(c.allows(Direction::Ingress, &later));
        assert!(Compiled::default().is_empty());
    }
}
