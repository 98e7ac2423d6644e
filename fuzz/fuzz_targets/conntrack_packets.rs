//! The security groups' packet parsing and connection tracking on any frames: a stream of
//! frames, each read as the switch reads it (`classify` on its first 128 bytes, tagged or
//! not: a plain TCP or UDP datagram straight into its key, anything else as a `Flow`) and
//! judged at two filtered ports, one each way, as the worker judges it, against a small
//! table. The same stream is judged again against a second table with every frame read as
//! a `Flow` (`frame_class`): both must give every frame the same verdicts. Frames come
//! from the input: a length byte and flags, then the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vringswitch_filter::conntrack::{Charge, Table};
use vringswitch_filter::firewall::{Policy, Site};
use vringswitch_filter::{Compiled, Direction, Prefix, Remote, Rule};
use vringswitch_switch::security_groups::{
    classify, frame_class, from_vm, to_vm, FrameClass, PortFilter,
};

const CAPACITY: usize = 64;

fn policy(port: u32, stateful: bool) -> Policy {
    let v4 = |a: [u8; 4]| {
        let mut x = [0u8; 16];
        x[..4].copy_from_slice(&a);
        x
    };
    let rules = [
        Rule::any(Direction::Egress, false),
        Rule {
            direction: Direction::Ingress,
            v6: false,
            protocol: Some(6),
            port_range_min: Some(22),
            port_range_max: Some(80),
            remote: Remote::Prefix(Prefix::new(false, v4([10, 0, 0, 0]), 8).unwrap()),
        },
        Rule {
            direction: Direction::Ingress,
            v6: true,
            protocol: Some(58),
            port_range_min: Some(128),
            port_range_max: None,
            remote: Remote::Group("web".into()),
        },
    ];
    Policy {
        rules: Compiled::new(&rules, |_| {
            Some(vec![Prefix::new(true, [0xfd; 16], 8).unwrap()])
        }),
        stateful,
        epoch: 1,
        charge: Charge { port, limit: 16 },
    }
}

/// The verdicts of the two ports on one frame (the second port judges only what the
/// first passed), as the worker asks them.
fn judge(
    a: &PortFilter,
    b: &Policy,
    table: &Table,
    class: &FrameClass,
    site: &mut Site,
    from_a: bool,
    now: u32,
) -> (Option<bool>, Option<bool>) {
    let b_filter = |site: &mut Site, track| to_vm(b, Some(table), class, site, now, track).ok();
    if from_a {
        let first = from_vm(a, Some(table), class, site, now).ok();
        let second = first.and_then(|tracked| b_filter(site, !tracked));
        (first, second)
    } else {
        // B's ingress judged first (A's VM receives it from B's side), then A's egress
        // check as the data path never does it: only its verdict is compared.
        let first = b_filter(site, true);
        let second = first.and_then(|_| from_vm(a, Some(table), class, site, now).ok());
        (first, second)
    }
}

fuzz_target!(|data: &[u8]| {
    // One layout for both: a crowded probe sequence refuses the same connections.
    let table = Table::seeded(CAPACITY, 7);
    let flows = Table::seeded(CAPACITY, 7);
    let a = PortFilter {
        policy: Some(policy(1, data.first().is_some_and(|b| b & 1 == 0))),
        allowed_ips: None,
    };
    let b = policy(2, true);
    let mut rest = data.get(1..).unwrap_or_default();
    let mut now = 1u32;
    // Each frame: [length][flags: tagged, which way, zone, time step][bytes].
    while let [len, flags, more @ ..] = rest {
        let n = usize::from(*len).min(more.len());
        let (frame, after) = more.split_at(n);
        rest = after;
        let (tagged, bytes) = (flags & 1 != 0, &frame[..n.min(128)]);
        let zone = u32::from(flags >> 2 & 3);
        let slow = frame_class(tagged, bytes);
        if let FrameClass::Ip(f) = slow {
            if !f.v6 {
                assert!(f.src[4..].iter().chain(&f.dst[4..]).all(|&x| x == 0));
            }
        }
        // As the data path reads it: one class and site per frame, shared by both ports.
        let (mut class, mut site) = (FrameClass::default(), Site::zone(0));
        classify(tagged, bytes, Some(&table), zone, &mut class, &mut site);
        if !matches!(class, FrameClass::Datagram { .. }) {
            assert_eq!(class, slow);
        }
        now += u32::from(flags >> 4);
        let from_a = flags & 2 == 0;
        let fast = judge(&a, &b, &table, &class, &mut site, from_a, now);
        let slow = judge(&a, &b, &flows, &slow, &mut Site::zone(zone), from_a, now);
        assert_eq!(fast, slow, "{bytes:02x?}");
        assert_eq!(table.len(), flows.len());
        assert!(table.len() <= CAPACITY);
        assert!(table.port_connections(1) <= 16 && table.port_connections(2) <= 16);
    }
    // Everything expires, and every count goes back to zero.
    for t in [&table, &flows] {
        t.expire(u32::MAX);
        assert!(t.is_empty());
        assert_eq!(t.list(0).count(), 0);
        assert_eq!((t.port_connections(1), t.port_connections(2)), (0, 0));
        for z in 0..4 {
            assert_eq!(t.bridge_connections(z), 0);
        }
    }
});
