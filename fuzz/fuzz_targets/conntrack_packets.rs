//! The security groups' packet parsing and connection tracking on any frames: a stream of
//! frames, each read as the switch reads it (`frame_class` on its first 128 bytes, tagged
//! or not) and judged at two filtered ports, one each way, as the worker judges it, against
//! a small table. Frames come from the input: a length byte and flags, then the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vringswitch_filter::conntrack::{Charge, Table};
use vringswitch_filter::firewall::{Policy, Site};
use vringswitch_filter::{Compiled, Direction, Prefix, Remote, Rule};
use vringswitch_switch::security_groups::{frame_class, from_vm, to_vm, FrameClass, PortFilter};

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

fuzz_target!(|data: &[u8]| {
    let table = Table::new(CAPACITY);
    let a = PortFilter {
        policy: Some(policy(1, data.first().is_some_and(|b| b & 1 == 0))),
        allowed_ips: None,
    };
    let b = policy(2, true);
    let mut rest = data.get(1..).unwrap_or_default();
    let mut now = 1u32;
    // Each frame: [length][flags: tagged, which way, time step][bytes].
    while let [len, flags, more @ ..] = rest {
        let n = usize::from(*len).min(more.len());
        let (frame, after) = more.split_at(n);
        rest = after;
        let class = frame_class(flags & 1 != 0, &frame[..n.min(128)]);
        if let FrameClass::Ip(f) = class {
            if !f.v6 {
                assert!(f.src[4..].iter().chain(&f.dst[4..]).all(|&x| x == 0));
            }
        }
        now += u32::from(flags >> 4);
        // One site per frame, shared by both ports as the data path shares it.
        let site = &mut Site::zone(u32::from(flags >> 2 & 3));
        if flags & 2 == 0 {
            if let Ok(tracked) = from_vm(&a, Some(&table), &class, site, now) {
                let _ = to_vm(&b, Some(&table), &class, site, now, !tracked);
            }
        } else if let Ok(tracked) = to_vm(&b, Some(&table), &class, site, now, true) {
            let _ = from_vm(&a, Some(&table), &class, site, now);
            let _ = tracked;
        }
        assert!(table.len() <= CAPACITY);
        assert!(table.port_connections(1) <= 16 && table.port_connections(2) <= 16);
    }
    // Everything expires, and every count goes back to zero.
    table.expire(u32::MAX);
    assert!(table.is_empty());
    assert_eq!(table.list(0).count(), 0);
    assert_eq!(
        (table.port_connections(1), table.port_connections(2)),
        (0, 0)
    );
    for z in 0..4 {
        assert_eq!(table.bridge_connections(z), 0);
    }
});
