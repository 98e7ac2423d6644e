//! The verdict on one frame at one port with security groups: what the port's VM sends
//! (egress) or is to receive (ingress). It joins the pieces: what OpenStack lets every VM
//! do without a rule, the port's compiled rules, and, for stateful groups, the connection
//! table and the tracker.
//!
//! A connection is checked at each filtered port it crosses, on that port's side: the
//! port whose VM opened it checks its egress rules, the port whose VM answers its ingress
//! rules, each once, the first time the connection passes it. Each side's check is kept
//! with the rules' epoch it was made under ([`Policy::epoch`]); a frame that finds its
//! side checked under older rules is checked again against the current ones, and the
//! connection is cut (removed, the frame dropped) if they no longer allow it.

use crate::conntrack::{Charge, Found, Full, Key, Packed, Table};
use crate::flow::{Datagram, Flow, Fragment, L4};
use crate::rules::{Compiled, Direction};
use crate::tracker::{self, TcpState};

/// A port's rules, compiled, and how they apply.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub rules: Compiled,
    /// Connections tracked (replies pass without a rule); else every frame is checked
    /// against the rules, both ways.
    pub stateful: bool,
    /// Changes whenever the rules do (never 0: 0 means "not checked").
    pub epoch: u16,
    /// The port the connections it opens are charged to, and its limit.
    pub charge: Charge,
}

/// How long the verdict on a datagram's first fragment holds for the rest, in seconds.
pub const FRAGMENT_TIMEOUT: u32 = 5;

/// Why a frame is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// No rule allows it (or it no longer does: the connection was cut).
    AclDenied,
    /// It does not go with its connection (TCP flags or order), or opens none it could.
    CtInvalid,
    /// The connection table (or the probe sequence of its key) is full.
    CtFull,
}

/// What happens to a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop(Drop),
}

const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const TCP: u8 = 6;
const SCTP: u8 = 132;

/// What OpenStack lets a VM do without a rule: IPv6 neighbour discovery both ways, DHCP
/// and DHCPv6 as a client; and what it never lets it do: answer as a DHCP or DHCPv6
/// server. (ARP is not IP: the caller passes it, under port security.)
pub fn implicit(direction: Direction, flow: &Flow) -> Option<Verdict> {
    match (flow.proto, flow.l4) {
        // Router solicitation and advertisement, neighbour solicitation and advertisement,
        // redirect; and multicast listener queries and reports (130 to 132, 143).
        (ICMPV6, L4::Icmp { kind, .. }) if (130..=137).contains(&kind) || kind == 143 => {
            Some(Verdict::Pass)
        }
        (UDP, L4::Ports { src, dst, .. }) => match (direction, flow.v6, src, dst) {
            (Direction::Egress, false, 68, 67) | (Direction::Ingress, false, 67, 68) => {
                Some(Verdict::Pass)
            }
            (Direction::Egress, true, 546, 547) | (Direction::Ingress, true, 547, 546) => {
                Some(Verdict::Pass)
            }
            (Direction::Egress, false, 67, _) | (Direction::Egress, true, 547, _) => {
                Some(Verdict::Drop(Drop::AclDenied))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The table's key of `flow` in zone `zone` (its bridge): an ICMP echo's identifier
/// stands for both ports, so that the reply's key is the request's reversed.
pub fn key_of(flow: &Flow, zone: u32) -> Key {
    let (sport, dport) = match flow.l4 {
        L4::Ports { src, dst, .. } => (src, dst),
        L4::Icmp {
            echo_id: Some(id), ..
        } => (id, id),
        _ => (0, 0),
    };
    Key {
        v6: flow.v6,
        fragments: false,
        proto: flow.proto,
        zone,
        src: flow.src,
        dst: flow.dst,
        sport,
        dport,
    }
}

/// Where a frame's connection is in the table: its zone, its key as the table stores it
/// and that key's hash, made once per frame; and the connection the frame's first lookup
/// found, which the next port judging the frame reuses (once [`Table::still`] says it is
/// there), so that a frame between two ports with groups is looked up once.
#[derive(Debug, Clone, Copy, Default)]
pub struct Site {
    pub zone: u32,
    /// `key` and `hash` are made (else they are, from the flow, when first judged).
    keyed: bool,
    key: Packed,
    hash: u64,
    found: Option<Found>,
}

impl Site {
    /// Where `flow`'s connection in zone `zone` is in `table`.
    #[inline]
    pub fn new(table: &Table, flow: &Flow, zone: u32) -> Site {
        let key = key_of(flow, zone).packed();
        Site {
            zone,
            keyed: true,
            key,
            hash: table.hash_packed(&key),
            found: None,
        }
    }

    /// Where the connection of a datagram read straight ([`Datagram::read`]) is in
    /// `table`: its key is made already.
    #[inline]
    pub fn of(table: &Table, key: Packed, zone: u32) -> Site {
        Site {
            zone,
            keyed: true,
            key,
            hash: table.hash_packed(&key),
            found: None,
        }
    }

    /// In zone `zone`, the key to be made from the flow when first judged.
    pub fn zone(zone: u32) -> Site {
        Site {
            zone,
            ..Site::default()
        }
    }

    /// Whether its key and hash are made (an IP frame's, classified with a table).
    pub fn keyed(&self) -> bool {
        self.keyed
    }

    /// The connection's key (zeroed until made).
    pub fn key(&self) -> &Packed {
        &self.key
    }

    /// The key's hash in the table (for [`Table::prefetch`]).
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The connection, looked up unless a port before found it and it is still there.
    #[inline]
    fn find(&mut self, table: &Table, now: u32) -> Option<Found> {
        match self.found {
            Some(f) if table.still(&f, now) => Some(f),
            _ => {
                self.found = table.lookup_packed(&self.key, self.hash, now);
                self.found
            }
        }
    }
}

/// The tracker's timeout and state for a new connection opened by `flow`, or why it
/// cannot open one.
fn opening(flow: &Flow) -> Result<(u32, u32), Drop> {
    match (flow.proto, flow.l4) {
        (TCP, L4::Ports { tcp_flags, .. }) => {
            let s = tracker::tcp_open(tcp_flags).map_err(|_| Drop::CtInvalid)?;
            Ok((s.timeout(), tracker::pack(Some(s), false)))
        }
        // SCTP as UDP: by time (its heartbeats keep an idle association seen).
        (UDP | SCTP, _) => Ok((tracker::UDP_TIMEOUT, tracker::pack(None, false))),
        // An echo reply answers a request: alone, it opens nothing (as Linux's tracker).
        (_, L4::Icmp { kind: 0 | 129, .. }) if flow.proto == ICMP || flow.proto == ICMPV6 => {
            Err(Drop::CtInvalid)
        }
        (_, L4::Icmp { echo_id: None, .. }) => {
            // An ICMP error or query that is not an echo opens nothing: it is related
            // to a connection or not allowed (the related check is the next step).
            Err(Drop::AclDenied)
        }
        _ => Ok((tracker::ICMP_TIMEOUT, tracker::pack(None, false))),
    }
}

/// The verdict on `flow` going `direction` at a port with `policy`, in zone `zone`, at
/// second `now`, the connections in `table`. With `track`, this is the first port with
/// groups the frame crosses (its sender's, or its receiver's if the sender has none): the
/// frame moves its connection's state here, and only here.
pub fn check(
    table: &Table,
    policy: &Policy,
    direction: Direction,
    flow: &Flow,
    zone: u32,
    now: u32,
    track: bool,
) -> Verdict {
    let mut site = Site::new(table, flow, zone);
    check_at(table, policy, direction, flow, &mut site, now, track)
}

/// [`check`] with the frame's [`Site`] made: the data path makes it once per frame, for
/// its prefetches and every port that judges it.
#[inline]
pub fn check_at(
    table: &Table,
    policy: &Policy,
    direction: Direction,
    flow: &Flow,
    site: &mut Site,
    now: u32,
    track: bool,
) -> Verdict {
    let zone = site.zone;
    if !site.keyed {
        *site = Site::new(table, flow, zone);
    }
    if !policy.stateful {
        return check_stateless(policy, direction, flow);
    }
    if let Some(v) = implicit(direction, flow) {
        return v;
    }
    match flow.fragment {
        Fragment::Whole => connection(table, policy, direction, flow, site, now, track),
        // A later fragment has no transport header: it follows the verdict this port's
        // side gave the datagram's first fragment, which must have come first.
        Fragment::Later { id } => later_fragment(table, direction, flow, zone, id, now),
        Fragment::First { id } => {
            let v = connection(table, policy, direction, flow, site, now, track);
            if v != Verdict::Pass {
                return v;
            }
            // Kept for the rest: where it cannot be, the first fragment goes too, so that
            // no part of the datagram passes without the others.
            let key = datagram_key(flow, zone, id);
            let shift = side_shift(direction);
            match table.lookup(&key, now) {
                Some(f) => {
                    table.set_epoch(f.entry, shift != 0, policy.epoch.max(1));
                    Verdict::Pass
                }
                None => {
                    let epochs = u32::from(policy.epoch.max(1)) << shift;
                    match table.insert_checked(
                        &key,
                        now + FRAGMENT_TIMEOUT,
                        0,
                        epochs,
                        policy.charge,
                    ) {
                        Ok(_) => Verdict::Pass,
                        Err(_) => Verdict::Drop(Drop::CtFull),
                    }
                }
            }
        }
    }
}

/// What [`check`] would say of `flow` now, changing nothing: the connection table is only
/// read (`vringctl trace`). A new connection passes if the rules allow it and it may open
/// one; whether the table has room for it is only known by trying. Without a table, a
/// stateful port fails closed, as in the data path.
pub fn would_pass(
    table: Option<&Table>,
    policy: &Policy,
    direction: Direction,
    flow: &Flow,
    zone: u32,
    now: u32,
    track: bool,
) -> Verdict {
    if !policy.stateful {
        return check_stateless(policy, direction, flow);
    }
    if let Some(v) = implicit(direction, flow) {
        return v;
    }
    let Some(table) = table else {
        return Verdict::Drop(Drop::CtFull);
    };
    if let Fragment::Later { id } = flow.fragment {
        return later_fragment(table, direction, flow, zone, id, now);
    }
    if let L4::IcmpError { quoted, .. } = flow.l4 {
        return related(table, flow, &quoted, zone, now);
    }
    let Some(found) = table.lookup(&key_of(flow, zone), now) else {
        if !policy.rules.allows(direction, flow) {
            return Verdict::Drop(Drop::AclDenied);
        }
        return match opening(flow) {
            Ok(_) => Verdict::Pass,
            Err(d) => Verdict::Drop(d),
        };
    };
    let responder = (direction == Direction::Ingress) != found.reply;
    let shift = if responder { 16 } else { 0 };
    if (table.epochs(found.entry) >> shift) as u16 != policy.epoch
        && !allows_first(policy, direction, flow, found.reply)
    {
        return Verdict::Drop(Drop::AclDenied);
    }
    if !track {
        return Verdict::Pass;
    }
    let (tcp, _) = tracker::unpack(table.state(found.entry));
    match (tcp, flow.l4) {
        (Some(s), L4::Ports { tcp_flags, .. }) => {
            match tracker::tcp_next(s, tcp_flags, found.reply) {
                Ok(_) => Verdict::Pass,
                Err(_) => Verdict::Drop(Drop::CtInvalid),
            }
        }
        (Some(_), _) => Verdict::Drop(Drop::CtInvalid),
        (None, _) => Verdict::Pass,
    }
}

/// [`check`] for a port whose groups are stateless: the implicit allows, then its rules,
/// on every frame; no table is read.
pub fn check_stateless(policy: &Policy, direction: Direction, flow: &Flow) -> Verdict {
    if let Some(v) = implicit(direction, flow) {
        return v;
    }
    if policy.rules.allows(direction, flow) {
        Verdict::Pass
    } else {
        Verdict::Drop(Drop::AclDenied)
    }
}

/// A later fragment's verdict at a port: the one this port's side gave its datagram's
/// first fragment (recorded under the datagram's key), else dropped.
fn later_fragment(
    table: &Table,
    direction: Direction,
    flow: &Flow,
    zone: u32,
    id: u32,
    now: u32,
) -> Verdict {
    match table.lookup(&datagram_key(flow, zone, id), now) {
        Some(f) if (table.epochs(f.entry) >> side_shift(direction)) & 0xffff != 0 => Verdict::Pass,
        _ => Verdict::Drop(Drop::AclDenied),
    }
}

/// An ICMP error's verdict, related as Linux's tracker has it: an error about a datagram
/// of a tracked connection, on its way back to that datagram's sender, passes without a
/// rule; one about nothing tracked opens nothing.
fn related(
    table: &Table,
    flow: &Flow,
    quoted: &crate::flow::Quoted,
    zone: u32,
    now: u32,
) -> Verdict {
    let about = Key {
        v6: flow.v6,
        fragments: false,
        proto: quoted.proto,
        zone,
        src: quoted.src,
        dst: quoted.dst,
        sport: quoted.sport,
        dport: quoted.dport,
    };
    match table.lookup(&about, now) {
        Some(_) if flow.dst == quoted.src => Verdict::Pass,
        _ => Verdict::Drop(Drop::CtInvalid),
    }
}

/// Where a datagram's fragments record each side's verdict: egress in the low half of the
/// entry's epochs, ingress in the high half.
fn side_shift(direction: Direction) -> u32 {
    match direction {
        Direction::Egress => 0,
        Direction::Ingress => 16,
    }
}

/// The key of the datagram `flow` is a fragment of, identification `id`.
fn datagram_key(flow: &Flow, zone: u32, id: u32) -> Key {
    Key {
        v6: flow.v6,
        fragments: true,
        proto: flow.proto,
        zone,
        src: flow.src,
        dst: flow.dst,
        sport: (id >> 16) as u16,
        dport: id as u16,
    }
}

/// [`check`] for a whole datagram or a first fragment, at a stateful port.
fn connection(
    table: &Table,
    policy: &Policy,
    direction: Direction,
    flow: &Flow,
    site: &mut Site,
    now: u32,
    track: bool,
) -> Verdict {
    if let L4::IcmpError { quoted, .. } = flow.l4 {
        return related(table, flow, &quoted, site.zone, now);
    }
    let Some(found) = site.find(table, now) else {
        return open(table, policy, direction, flow, site, now);
    };
    let tcp_flags = match flow.l4 {
        L4::Ports { tcp_flags, .. } => Some(tcp_flags),
        _ => None,
    };
    let frame = Established {
        found,
        proto: flow.proto,
        tcp_flags,
    };
    established(table, policy, direction, frame, now, track, || *flow)
}

/// [`check_at`] for a datagram read straight ([`Datagram::read`]: a whole TCP or UDP
/// datagram no implicit rule judges), its key in `site` ([`Site::of`]), `tcp_flags` its
/// TCP flags (0 for UDP): the data path's usual frame. What needs the frame's [`Flow`]
/// (a new connection, rules changed since its side was checked, stateless groups) has it
/// made from the key; an established connection's frame is judged from the key alone.
#[inline]
pub fn check_datagram(
    table: &Table,
    policy: &Policy,
    direction: Direction,
    tcp_flags: u8,
    site: &mut Site,
    now: u32,
    track: bool,
) -> Verdict {
    let flow = |key: Packed| Datagram { key, tcp_flags }.flow();
    if !policy.stateful {
        return check_stateless(policy, direction, &flow(site.key));
    }
    let Some(found) = site.find(table, now) else {
        return open(table, policy, direction, &flow(site.key), site, now);
    };
    let frame = Established {
        found,
        proto: site.key.proto(),
        tcp_flags: Some(tcp_flags),
    };
    let key = &site.key;
    established(table, policy, direction, frame, now, track, || flow(*key))
}

/// A new connection, opened here (egress) or arriving (ingress): this port's rules must
/// allow it, and it must be able to open one. Added to the table, found in `site`.
#[cold]
fn open(
    table: &Table,
    policy: &Policy,
    direction: Direction,
    flow: &Flow,
    site: &mut Site,
    now: u32,
) -> Verdict {
    if !policy.rules.allows(direction, flow) {
        return Verdict::Drop(Drop::AclDenied);
    }
    let (timeout, state) = match opening(flow) {
        Ok(s) => s,
        Err(d) => return Verdict::Drop(d),
    };
    let responder = direction == Direction::Ingress;
    let epochs = u32::from(policy.epoch) << if responder { 16 } else { 0 };
    let key = site.key.key();
    match table.insert_checked(&key, now + timeout, state, epochs, policy.charge) {
        Ok(found) => {
            site.found = Some(found);
            Verdict::Pass
        }
        Err(Full::Table | Full::Probe | Full::Port) => Verdict::Drop(Drop::CtFull),
    }
}

/// A frame of a connection the table holds: where, its protocol and its TCP flags (if
/// it has ports).
#[derive(Clone, Copy)]
struct Established {
    found: Found,
    proto: u8,
    tcp_flags: Option<u8>,
}

/// The verdict on a frame of connection `frame.found`, going `direction` at a port with
/// `policy`; `flow` makes its [`Flow`] if this side must be checked against the rules.
#[inline]
fn established(
    table: &Table,
    policy: &Policy,
    direction: Direction,
    frame: Established,
    now: u32,
    track: bool,
    flow: impl FnOnce() -> Flow,
) -> Verdict {
    let Established {
        found,
        proto,
        tcp_flags,
    } = frame;
    // This port's side of the connection: the opener's (it sent the first frame) or the
    // responder's.
    let responder = (direction == Direction::Ingress) != found.reply;
    let shift = if responder { 16 } else { 0 };
    if (table.epochs(found.entry) >> shift) as u16 != policy.epoch {
        // Not checked here yet, or under older rules: the connection's first frame must
        // be allowed by this port's rules as they are now.
        if !allows_first(policy, direction, &flow(), found.reply) {
            table.remove(found.entry, found.generation);
            return Verdict::Drop(Drop::AclDenied);
        }
        table.set_epoch(found.entry, responder, policy.epoch);
    }
    if !track {
        return Verdict::Pass;
    }
    let (tcp, replied) = tracker::unpack(table.state(found.entry));
    let replied = replied || found.reply;
    let (tcp, timeout) = match (tcp, tcp_flags) {
        (Some(s), Some(tcp_flags)) => match tracker::tcp_next(s, tcp_flags, found.reply) {
            Ok(next) => (Some(next), next.timeout()),
            Err(_) => return Verdict::Drop(Drop::CtInvalid),
        },
        (Some(_), None) => return Verdict::Drop(Drop::CtInvalid),
        (None, _) if matches!(proto, UDP | SCTP) && replied => (None, tracker::UDP_STREAM_TIMEOUT),
        (None, _) if matches!(proto, UDP | SCTP) => (None, tracker::UDP_TIMEOUT),
        (None, _) => (None, tracker::ICMP_TIMEOUT),
    };
    let closing = matches!(tcp, Some(TcpState::Close));
    table.update(
        found.entry,
        tracker::pack(tcp, replied),
        now + if closing {
            TcpState::Close.timeout()
        } else {
            timeout
        },
    );
    Verdict::Pass
}

/// Whether `policy`'s rules allow the first frame of the connection `flow` (going
/// `direction`, a reply if `reply`) belongs to.
fn allows_first(policy: &Policy, direction: Direction, flow: &Flow, reply: bool) -> bool {
    if reply {
        policy.rules.allows(opposite(direction), &reversed(flow))
    } else {
        policy.rules.allows(direction, flow)
    }
}

fn opposite(d: Direction) -> Direction {
    match d {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    }
}

/// `flow` as its reply would be: addresses and ports swapped.
fn reversed(flow: &Flow) -> Flow {
    let l4 = match flow.l4 {
        L4::Ports {
            src,
            dst,
            tcp_flags,
        } => L4::Ports {
            src: dst,
            dst: src,
            tcp_flags,
        },
        other => other,
    };
    Flow {
        src: flow.dst,
        dst: flow.src,
        l4,
        ..*flow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Fragment;
    use crate::rules::{Prefix, Remote, Rule};
    use crate::tracker::flags::{ACK, FIN, SYN};

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut x = [0u8; 16];
        x[..4].copy_from_slice(&a);
        x
    }

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];
    const C: [u8; 4] = [10, 0, 0, 3];

    fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Flow {
        Flow {
            v6: false,
            src: v4(src),
            dst: v4(dst),
            proto: TCP,
            l4: L4::Ports {
                src: sport,
                dst: dport,
                tcp_flags: flags,
            },
            fragment: Fragment::Whole,
        }
    }

    /// A stateful policy allowing ingress TCP `port` from 10.0.0.0/24 (and nothing out).
    fn server(port: u16, epoch: u16) -> Policy {
        let rule = Rule {
            direction: Direction::Ingress,
            v6: false,
            protocol: Some(TCP),
            port_range_min: Some(port),
            port_range_max: Some(port),
            remote: Remote::Prefix(Prefix::new(false, v4([10, 0, 0, 0]), 24).unwrap()),
        };
        Policy {
            rules: Compiled::new(&[rule], |_| None),
            stateful: true,
            epoch,
            charge: Charge::NONE,
        }
    }

    /// A stateful policy allowing every egress (and nothing in).
    fn client(epoch: u16) -> Policy {
        let rule = Rule::any(Direction::Egress, false);
        Policy {
            rules: Compiled::new(&[rule], |_| None),
            stateful: true,
            epoch,
            charge: Charge::NONE,
        }
    }

    const PASS: Verdict = Verdict::Pass;

    #[test]
    fn an_allowed_connection_passes_both_ports_and_its_replies_need_no_rule() {
        let t = Table::new(64);
        let (a, b) = (client(1), server(22, 1));
        // The sender's port tracks; both are filtered.
        let go = |flow: &Flow, at_a: Direction, at_b: Direction| {
            let a_sends = at_a == Direction::Egress;
            (
                check(&t, &a, at_a, flow, 0, 5, a_sends),
                check(&t, &b, at_b, flow, 0, 5, !a_sends),
            )
        };
        use Direction::{Egress as Out, Ingress as In};
        // A opens to B's port 22: A's egress, B's ingress.
        assert_eq!(go(&tcp(A, 40000, B, 22, SYN), Out, In), (PASS, PASS));
        // B answers: no rule lets B send anything, the connection does.
        assert_eq!(go(&tcp(B, 22, A, 40000, SYN | ACK), In, Out), (PASS, PASS));
        assert_eq!(go(&tcp(A, 40000, B, 22, ACK), Out, In), (PASS, PASS));
        assert_eq!(go(&tcp(B, 22, A, 40000, ACK), In, Out), (PASS, PASS));
        assert_eq!(t.len(), 1, "one entry for the connection, both ports");
        // B may not open anything to A.
        assert_eq!(
            check(&t, &b, Out, &tcp(B, 5000, A, 80, SYN), 0, 5, true),
            Verdict::Drop(Drop::AclDenied)
        );
        // Another port of B: not allowed in.
        assert_eq!(
            check(&t, &b, In, &tcp(A, 40001, B, 23, SYN), 0, 5, true),
            Verdict::Drop(Drop::AclDenied)
        );
        // Out of order in the connection: invalid.
        assert_eq!(
            check(&t, &b, In, &tcp(A, 40000, B, 22, SYN), 0, 5, true),
            Verdict::Drop(Drop::CtInvalid)
        );
        // A FIN each way closes it; the entry expires in time.
        assert_eq!(go(&tcp(A, 40000, B, 22, FIN | ACK), Out, In), (PASS, PASS));
        assert_eq!(go(&tcp(B, 22, A, 40000, FIN | ACK), In, Out), (PASS, PASS));
        let f = t.lookup(&key_of(&tcp(A, 40000, B, 22, ACK), 0), 5).unwrap();
        assert_eq!(
            tracker::unpack(t.state(f.entry)).0,
            Some(TcpState::TimeWait),
            "one FIN each way, each seen once"
        );
        assert_eq!(t.expire(5 + TcpState::TimeWait.timeout()), 1);
    }

    #[test]
    fn would_pass_says_what_check_then_does_and_changes_nothing() {
        let t = Table::new(64);
        let (a, b) = (client(1), server(22, 1));
        use Direction::{Egress as Out, Ingress as In};
        let would = |p: &Policy, d, f: &Flow, track| would_pass(Some(&t), p, d, f, 0, 5, track);
        let syn = tcp(A, 40000, B, 22, SYN);
        // A new connection: allowed out of A and into B; nothing stored by asking.
        assert_eq!(
            (would(&a, Out, &syn, true), would(&b, In, &syn, false)),
            (PASS, PASS)
        );
        assert_eq!(t.len(), 0);
        // Not allowed into B on port 23; B may not open anything.
        let deny = Verdict::Drop(Drop::AclDenied);
        assert_eq!(would(&b, In, &tcp(A, 40001, B, 23, SYN), false), deny);
        assert_eq!(would(&b, Out, &tcp(B, 5000, A, 80, SYN), true), deny);
        // A segment that opens nothing: invalid.
        assert_eq!(
            would(&a, Out, &tcp(A, 40002, B, 22, ACK), true),
            Verdict::Drop(Drop::CtInvalid)
        );
        // Opened for real, then asked of the reply, of a retransmitted SYN and of an ACK
        // before any answer.
        assert_eq!(check(&t, &a, Out, &syn, 0, 5, true), PASS);
        assert_eq!(check(&t, &b, In, &syn, 0, 5, false), PASS);
        let reply = tcp(B, 22, A, 40000, SYN | ACK);
        assert_eq!(would(&b, Out, &reply, false), PASS);
        assert_eq!(would(&a, In, &reply, true), PASS);
        assert_eq!(would(&a, Out, &syn, true), PASS);
        assert_eq!(
            would(&a, Out, &tcp(A, 40000, B, 22, ACK), true),
            Verdict::Drop(Drop::CtInvalid)
        );
        let f = t.lookup(&key_of(&syn, 0), 5).unwrap();
        assert_eq!(tracker::unpack(t.state(f.entry)).0, Some(TcpState::SynSent));
        // B's rules changed (epoch 2) to allow nothing: the connection would be cut, and
        // asking does not cut it.
        let closed = Policy {
            rules: Compiled::new(&[], |_| None),
            stateful: true,
            epoch: 2,
            charge: Charge::NONE,
        };
        assert_eq!(would(&closed, Out, &reply, false), deny);
        assert!(t.lookup(&key_of(&syn, 0), 5).is_some());
        // Stateless, and without a table.
        let stateless = Policy {
            stateful: false,
            ..server(22, 1)
        };
        assert_eq!(would(&stateless, Out, &reply, false), deny);
        assert_eq!(
            would_pass(None, &b, In, &syn, 0, 5, false),
            Verdict::Drop(Drop::CtFull)
        );
    }

    #[test]
    fn a_frame_judged_at_two_ports_is_looked_up_once_and_never_through_a_stale_site() {
        let t = Table::new(1);
        let (a, b) = (client(1), server(22, 1));
        use Direction::{Egress as Out, Ingress as In};
        let syn = tcp(A, 40000, B, 22, SYN);
        // A's port opens the connection; B's port finds it through the site.
        let mut site = Site::new(&t, &syn, 0);
        assert_eq!(check_at(&t, &a, Out, &syn, &mut site, 5, true), PASS);
        let opened = site.found.expect("the opening port keeps what it added");
        assert_eq!(check_at(&t, &b, In, &syn, &mut site, 5, false), PASS);
        assert_eq!(site.found, Some(opened));
        assert_eq!(t.epochs(opened.entry) >> 16, 1, "B's side checked");
        // Between the two ports the connection goes and another takes its entry: the
        // second port looks again and does not judge the frame by the other connection.
        let mut site = Site::new(&t, &syn, 0);
        site.found = Some(opened);
        assert!(t.remove(opened.entry, opened.generation));
        let other = tcp(C, 1, B, 22, SYN);
        assert_eq!(check(&t, &a, Out, &other, 0, 5, true), PASS);
        assert!(!t.still(&opened, 5));
        assert_eq!(
            check_at(&t, &b, In, &syn, &mut site, 5, false),
            Verdict::Drop(Drop::CtFull),
            "a new connection to B, and the one entry is taken"
        );
        assert_eq!(site.found, None);
        // An expired connection is not still there either.
        let f = t.lookup(&key_of(&other, 0), 5).unwrap();
        assert!(t.still(&f, 5) && !t.still(&f, 5 + TcpState::SynSent.timeout()));
    }

    #[test]
    fn a_segment_that_opens_nothing_is_invalid_and_a_full_table_refuses() {
        let t = Table::new(1);
        let b = server(22, 1);
        assert_eq!(
            check(
                &t,
                &b,
                Direction::Ingress,
                &tcp(A, 1, B, 22, ACK),
                0,
                1,
                true
            ),
            Verdict::Drop(Drop::CtInvalid),
            "no mid-stream pick-up"
        );
        assert_eq!(
            check(
                &t,
                &b,
                Direction::Ingress,
                &tcp(A, 1, B, 22, SYN),
                0,
                1,
                true
            ),
            PASS
        );
        assert_eq!(
            check(
                &t,
                &b,
                Direction::Ingress,
                &tcp(A, 2, B, 22, SYN),
                0,
                1,
                true
            ),
            Verdict::Drop(Drop::CtFull)
        );
    }

    #[test]
    fn a_rule_removed_cuts_its_connections_at_their_next_frame_and_others_carry_on() {
        let t = Table::new(64);
        // Ingress TCP 22 and 80 from anywhere.
        let both = |epoch| {
            let port = |p: u16| Rule {
                direction: Direction::Ingress,
                v6: false,
                protocol: Some(TCP),
                port_range_min: Some(p),
                port_range_max: Some(p),
                remote: Remote::Any,
            };
            Policy {
                rules: Compiled::new(&[port(22), port(80)], |_| None),
                stateful: true,
                epoch,
                charge: Charge::NONE,
            }
        };
        let before = both(1);
        for (sport, dport) in [(40000, 22), (40001, 80)] {
            assert_eq!(
                check(
                    &t,
                    &before,
                    Direction::Ingress,
                    &tcp(A, sport, B, dport, SYN),
                    0,
                    1,
                    true
                ),
                PASS
            );
        }
        // Port 80 no longer allowed: its connection is cut at its next frame (a reply,
        // here); the one to 22 carries on.
        let after = server(22, 2);
        assert_eq!(
            check(
                &t,
                &after,
                Direction::Egress,
                &tcp(B, 80, A, 40001, SYN | ACK),
                0,
                2,
                true
            ),
            Verdict::Drop(Drop::AclDenied)
        );
        assert_eq!(
            check(
                &t,
                &after,
                Direction::Egress,
                &tcp(B, 22, A, 40000, SYN | ACK),
                0,
                2,
                true
            ),
            PASS
        );
        assert_eq!(t.len(), 1, "the cut connection's entry is gone");
    }

    #[test]
    fn later_fragments_follow_their_first_on_each_side_and_die_with_it() {
        let t = Table::new(16);
        let (a, b) = (client(1), server(22, 1));
        let mut first = tcp(A, 40000, B, 22, SYN);
        first.fragment = Fragment::First { id: 77 };
        let mut later = tcp(A, 0, B, 0, 0);
        later.l4 = L4::None;
        later.fragment = Fragment::Later { id: 77 };
        use Direction::{Egress as Out, Ingress as In};
        // Not before the first.
        assert_eq!(
            check(&t, &a, Out, &later, 0, 1, true),
            Verdict::Drop(Drop::AclDenied)
        );
        assert_eq!(check(&t, &a, Out, &first, 0, 1, true), PASS);
        // The sender's side passed it: the rest may leave, but not yet arrive at B.
        assert_eq!(check(&t, &a, Out, &later, 0, 1, true), PASS);
        assert_eq!(
            check(&t, &b, In, &later, 0, 1, false),
            Verdict::Drop(Drop::AclDenied)
        );
        assert_eq!(check(&t, &b, In, &first, 0, 1, false), PASS);
        assert_eq!(check(&t, &b, In, &later, 0, 1, false), PASS);
        // Another datagram's fragments, or these in another zone, follow nothing.
        let other = Flow {
            fragment: Fragment::Later { id: 78 },
            ..later
        };
        assert_eq!(
            check(&t, &a, Out, &other, 0, 1, true),
            Verdict::Drop(Drop::AclDenied)
        );
        assert_eq!(
            check(&t, &a, Out, &later, 1, 1, true),
            Verdict::Drop(Drop::AclDenied)
        );
        // A first fragment B's rules refuse lets none of the rest in.
        let mut refused = tcp(A, 40000, B, 23, SYN);
        refused.fragment = Fragment::First { id: 79 };
        let refused_later = Flow {
            fragment: Fragment::Later { id: 79 },
            ..later
        };
        assert_eq!(check(&t, &a, Out, &refused, 0, 1, true), PASS);
        assert_eq!(
            check(&t, &b, In, &refused, 0, 1, false),
            Verdict::Drop(Drop::AclDenied)
        );
        assert_eq!(
            check(&t, &b, In, &refused_later, 0, 1, false),
            Verdict::Drop(Drop::AclDenied)
        );
        // The datagram's verdict lasts FRAGMENT_TIMEOUT seconds.
        let late = 1 + FRAGMENT_TIMEOUT;
        assert_eq!(
            check(&t, &a, Out, &later, 0, late, true),
            Verdict::Drop(Drop::AclDenied)
        );
    }

    #[test]
    fn a_port_holding_its_limit_opens_no_more_connections_and_others_still_can() {
        let t = Table::new(16);
        let mut a = client(1);
        a.charge = Charge { port: 3, limit: 2 };
        let mut c = client(1);
        c.charge = Charge { port: 4, limit: 2 };
        let out = Direction::Egress;
        assert_eq!(check(&t, &a, out, &tcp(A, 1, B, 22, SYN), 0, 1, true), PASS);
        assert_eq!(check(&t, &a, out, &tcp(A, 2, B, 22, SYN), 0, 1, true), PASS);
        assert_eq!(
            check(&t, &a, out, &tcp(A, 3, B, 22, SYN), 0, 1, true),
            Verdict::Drop(Drop::CtFull)
        );
        // Its open connections carry on; another port opens its own.
        assert_eq!(check(&t, &a, out, &tcp(A, 1, B, 22, SYN), 0, 1, true), PASS);
        assert_eq!(check(&t, &c, out, &tcp(B, 3, A, 22, SYN), 0, 1, true), PASS);
        assert_eq!((t.port_connections(3), t.port_connections(4)), (2, 1));
        // One gone (expired), one more may open.
        assert_eq!(t.expire(1000), 3);
        assert_eq!(t.port_connections(3), 0);
        assert_eq!(
            check(&t, &a, out, &tcp(A, 3, B, 22, SYN), 0, 1000, true),
            PASS
        );
    }

    #[test]
    fn a_later_fragment_is_dropped_by_a_stateful_group_and_judged_by_a_stateless_one() {
        let t = Table::new(4);
        let mut later = tcp(A, 0, B, 0, 0);
        later.l4 = L4::None;
        later.fragment = Fragment::Later { id: 9 };
        assert_eq!(
            check(&t, &client(1), Direction::Egress, &later, 0, 1, true),
            Verdict::Drop(Drop::AclDenied)
        );
        // Stateless: a rule for the whole protocol allows it, one with ports cannot.
        let mut any_out = client(1);
        any_out.stateful = false;
        assert_eq!(
            check(&t, &any_out, Direction::Egress, &later, 0, 1, true),
            PASS
        );
        let mut ports_in = server(22, 1);
        ports_in.stateful = false;
        assert_eq!(
            check(&t, &ports_in, Direction::Ingress, &later, 0, 1, true),
            Verdict::Drop(Drop::AclDenied)
        );
        assert!(t.is_empty());
    }

    #[test]
    fn stateless_groups_check_every_frame_both_ways() {
        let t = Table::new(4);
        let mut p = server(22, 1);
        p.stateful = false;
        assert_eq!(
            check(
                &t,
                &p,
                Direction::Ingress,
                &tcp(A, 1, B, 22, SYN),
                0,
                1,
                true
            ),
            PASS
        );
        // The reply has no rule: dropped, and nothing was tracked.
        assert_eq!(
            check(
                &t,
                &p,
                Direction::Egress,
                &tcp(B, 22, A, 1, SYN | ACK),
                0,
                1,
                true
            ),
            Verdict::Drop(Drop::AclDenied)
        );
        assert!(t.is_empty());
    }

    #[test]
    fn neighbour_discovery_and_dhcp_as_a_client_need_no_rule_and_a_dhcp_server_is_refused() {
        let t = Table::new(4);
        let nothing = Policy {
            stateful: true,
            epoch: 1,
            ..Policy::default()
        };
        let udp = |src: u16, dst: u16, v6: bool| Flow {
            v6,
            proto: UDP,
            l4: L4::Ports {
                src,
                dst,
                tcp_flags: 0,
            },
            ..tcp(A, 0, B, 0, 0)
        };
        let ns = Flow {
            v6: true,
            proto: ICMPV6,
            l4: L4::Icmp {
                kind: 135,
                code: 0,
                echo_id: None,
            },
            ..tcp(A, 0, B, 0, 0)
        };
        for (d, f) in [
            (Direction::Egress, ns),
            (Direction::Ingress, ns),
            (Direction::Egress, udp(68, 67, false)),
            (Direction::Ingress, udp(67, 68, false)),
            (Direction::Egress, udp(546, 547, true)),
        ] {
            assert_eq!(check(&t, &nothing, d, &f, 0, 1, true), PASS, "{d:?} {f:?}");
        }
        for f in [udp(67, 68, false), udp(547, 546, true)] {
            assert_eq!(
                check(&t, &nothing, Direction::Egress, &f, 0, 1, true),
                Verdict::Drop(Drop::AclDenied)
            );
        }
        // Anything else: no rule, no entry.
        assert_eq!(
            check(
                &t,
                &nothing,
                Direction::Egress,
                &udp(5000, 53, false),
                0,
                1,
                true
            ),
            Verdict::Drop(Drop::AclDenied)
        );
    }

    #[test]
    fn an_echo_and_its_reply_share_a_key_and_an_icmp_error_opens_nothing() {
        let echo = |src, dst, kind| Flow {
            proto: 1,
            l4: L4::Icmp {
                kind,
                code: 0,
                echo_id: Some(7),
            },
            ..tcp(src, 0, dst, 0, 0)
        };
        assert_eq!(
            key_of(&echo(A, B, 8), 3).reversed(),
            key_of(&echo(B, A, 0), 3)
        );
        let t = Table::new(4);
        let any_out = client(1);
        let unreachable = Flow {
            proto: 1,
            l4: L4::Icmp {
                kind: 3,
                code: 1,
                echo_id: None,
            },
            ..tcp(A, 0, B, 0, 0)
        };
        assert_eq!(
            check(&t, &any_out, Direction::Egress, &unreachable, 0, 1, true),
            Verdict::Drop(Drop::AclDenied)
        );
        assert_eq!(
            check(&t, &any_out, Direction::Egress, &echo(A, B, 8), 0, 1, true),
            PASS
        );
        assert_eq!(
            check(&t, &any_out, Direction::Ingress, &echo(B, A, 0), 0, 1, true),
            PASS,
            "the reply"
        );
        // A reply to no request opens nothing, whatever the rules.
        assert_eq!(
            check(&t, &any_out, Direction::Egress, &echo(A, C, 0), 0, 1, true),
            Verdict::Drop(Drop::CtInvalid)
        );
    }

    #[test]
    fn an_icmp_error_about_a_tracked_connection_is_related_and_passes_without_a_rule() {
        use crate::flow::Quoted;
        let t = Table::new(8);
        // A opens UDP 5000 -> 53 at B; B's port has no rule for ICMP at all.
        let (a, b) = (client(1), server(22, 1));
        let query = Flow {
            proto: UDP,
            l4: L4::Ports {
                src: 5000,
                dst: 53,
                tcp_flags: 0,
            },
            ..tcp(A, 0, B, 0, 0)
        };
        assert_eq!(check(&t, &a, Direction::Egress, &query, 0, 1, true), PASS);
        let quoted = Quoted {
            proto: UDP,
            src: v4(A),
            dst: v4(B),
            sport: 5000,
            dport: 53,
        };
        let error = |from: [u8; 4], to: [u8; 4], quoted: Quoted| Flow {
            proto: 1,
            l4: L4::IcmpError {
                kind: 3,
                code: 3,
                quoted,
            },
            ..tcp(from, 0, to, 0, 0)
        };
        // B (or a router on the way) says port unreachable, back to A: related, both ports.
        let back = error(B, A, quoted);
        assert_eq!(check(&t, &b, Direction::Egress, &back, 0, 1, true), PASS);
        assert_eq!(check(&t, &a, Direction::Ingress, &back, 0, 1, false), PASS);
        // About a datagram of no connection, or sent to someone other than its sender.
        let other = Quoted {
            dport: 54,
            ..quoted
        };
        assert_eq!(
            check(&t, &a, Direction::Ingress, &error(B, A, other), 0, 1, true),
            Verdict::Drop(Drop::CtInvalid)
        );
        assert_eq!(
            check(&t, &a, Direction::Ingress, &error(B, C, quoted), 0, 1, true),
            Verdict::Drop(Drop::CtInvalid)
        );
        // A stateless group judges it by its rules, as any ICMP.
        let mut loose = client(1);
        loose.stateful = false;
        assert_eq!(
            check(
                &t,
                &loose,
                Direction::Egress,
                &error(A, B, other),
                0,
                1,
                true
            ),
            PASS
        );
        assert_eq!(t.len(), 1, "an error opens nothing");
    }

    /// The verdict at a port as the data path asks it: through [`check_datagram`] when
    /// the frame is a datagram read straight, else through [`check_at`] (the site shared
    /// by the ports that judge the frame, as there).
    fn judged_as_the_data_path(
        t: &Table,
        policy: &Policy,
        direction: Direction,
        flow: &Flow,
        site: &mut Site,
        now: u32,
        track: bool,
    ) -> Verdict {
        match (flow.proto, flow.l4, flow.fragment) {
            (TCP | UDP, L4::Ports { tcp_flags, .. }, Fragment::Whole)
                if implicit(Direction::Egress, flow).is_none()
                    && implicit(Direction::Ingress, flow).is_none() =>
            {
                check_datagram(t, policy, direction, tcp_flags, site, now, track)
            }
            _ => check_at(t, policy, direction, flow, site, now, track),
        }
    }

    #[test]
    fn a_datagram_judged_from_its_key_gets_the_verdicts_a_flow_does_whatever_the_sequence() {
        use crate::tracker::flags::RST;
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Two tables, one judged as `check` does for everything, one as the data path.
        let (flows, datagrams) = (Table::seeded(48, 3), Table::seeded(48, 3));
        let hosts = [A, B, C];
        // Mostly what a connection carries, sometimes what none does.
        let flag_sets = [
            SYN,
            SYN | ACK,
            ACK,
            ACK,
            ACK,
            ACK | 0x08,
            FIN | ACK,
            RST,
            0,
            SYN | FIN,
        ];
        // B serves TCP on one port (22, then 23 after some changes) and any UDP, and may
        // open anything; A only opens.
        let server = |port: u16, epoch: u16| {
            let tcp = Rule {
                protocol: Some(TCP),
                port_range_min: Some(port),
                port_range_max: Some(port),
                remote: Remote::Prefix(Prefix::new(false, v4([10, 0, 0, 0]), 24).unwrap()),
                ..Rule::any(Direction::Ingress, false)
            };
            let udp = Rule {
                protocol: Some(UDP),
                ..Rule::any(Direction::Ingress, false)
            };
            Policy {
                rules: Compiled::new(&[tcp, udp, Rule::any(Direction::Egress, false)], |_| None),
                ..server(port, epoch)
            }
        };
        let (mut a, mut b) = (client(1), server(22, 1));
        let mut now = 1;
        let mut passed = 0;
        for step in 0..40_000 {
            let r = next();
            if step % 5000 == 4999 {
                // The rules change (an epoch each time), or the group turns stateless.
                b = match r % 3 {
                    0 => server(22 + (r >> 8) as u16 % 2, b.epoch + 1),
                    1 => Policy {
                        stateful: false,
                        epoch: b.epoch + 1,
                        ..server(22, 1)
                    },
                    _ => server(22, b.epoch + 1),
                };
                a.epoch += 1;
            }
            now += (r >> 60) as u32 % 3;
            let (src, dst) = (hosts[(r >> 8) as usize % 3], hosts[(r >> 10) as usize % 3]);
            let ports = [22, 40000, 22, 40000, 23, 40001, 68, 67];
            let (sport, dport) = (ports[(r >> 12) as usize % 8], ports[(r >> 15) as usize % 8]);
            let flags = flag_sets[(r >> 18) as usize % flag_sets.len()];
            let mut flow = tcp(src, sport, dst, dport, flags);
            if r >> 22 & 3 == 0 {
                flow.proto = UDP;
                flow.l4 = L4::Ports {
                    src: sport,
                    dst: dport,
                    tcp_flags: 0,
                };
            }
            if r >> 24 & 15 == 0 {
                flow.fragment = Fragment::First { id: 9 };
            }
            let zone = (r >> 28) as u32 % 2;
            let a_sends = r >> 30 & 1 == 0;
            let (first, second) = if a_sends {
                ((&a, Direction::Egress), (&b, Direction::Ingress))
            } else {
                ((&b, Direction::Egress), (&a, Direction::Ingress))
            };
            let mut verdicts = [[PASS; 2]; 2];
            for (i, t) in [&flows, &datagrams].into_iter().enumerate() {
                let mut site = Site::new(t, &flow, zone);
                let judge = |policy, direction, site: &mut Site, track| {
                    if i == 0 {
                        check_at(t, policy, direction, &flow, site, now, track)
                    } else {
                        judged_as_the_data_path(t, policy, direction, &flow, site, now, track)
                    }
                };
                verdicts[i][0] = judge(first.0, first.1, &mut site, true);
                verdicts[i][1] = if verdicts[i][0] == PASS {
                    judge(second.0, second.1, &mut site, false)
                } else {
                    verdicts[i][0]
                };
            }
            assert_eq!(verdicts[0], verdicts[1], "step {step}: {flow:?}");
            assert_eq!(flows.len(), datagrams.len(), "step {step}");
            passed += usize::from(verdicts[0] == [PASS; 2]);
            if step % 1000 == 999 {
                flows.expire(now);
                datagrams.expire(now);
            }
        }
        assert!(passed > 1000, "only {passed} frames passed both ports");
    }
}
