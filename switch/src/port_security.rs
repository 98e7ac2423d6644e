//! Port security: the source MAC addresses a port may send from.
//!
//! Checked once per frame on the worker's hot path, so the set is a small inline array of
//! 48-bit keys: no allocation, no pointer to chase, at most [`MAX_ALLOWED`] compares.

use vringswitch_wire::ethernet::MacAddr;

/// Most addresses one port may be locked to (`vringswitch_config::MAX_ALLOWED_MACS`; the
/// daemon checks the two agree).
pub const MAX_ALLOWED: usize = 16;

/// Which source MACs a port may use: any (the default), or a fixed list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortSecurity {
    /// Number of entries of `allowed` in use; 0 means any source MAC is allowed.
    len: u8,
    allowed: [u64; MAX_ALLOWED],
}

/// The list given to [`PortSecurity::locked`] was empty or too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadList;

impl PortSecurity {
    /// Any source MAC.
    pub fn open() -> PortSecurity {
        PortSecurity::default()
    }

    /// Only the given source MACs: 1 to [`MAX_ALLOWED`] of them.
    pub fn locked(macs: &[MacAddr]) -> Result<PortSecurity, BadList> {
        if macs.is_empty() || macs.len() > MAX_ALLOWED {
            return Err(BadList);
        }
        let mut s = PortSecurity::default();
        for (slot, m) in s.allowed.iter_mut().zip(macs) {
            *slot = m.to_u64();
        }
        s.len = macs.len() as u8;
        Ok(s)
    }

    /// No source MAC at all: what a port gets if its list cannot be used (fail closed).
    pub fn deny_all() -> PortSecurity {
        let mut s = PortSecurity::default();
        // Not a 48-bit value: no MAC's key ever equals it.
        s.allowed[0] = u64::MAX;
        s.len = 1;
        s
    }

    /// Whether the port is locked to a list.
    pub fn is_locked(&self) -> bool {
        self.len != 0
    }

    /// Whether a frame from `src` may enter the switch through this port.
    #[inline(always)]
    pub fn permits(&self, src: MacAddr) -> bool {
        if self.len == 0 {
            return true;
        }
        let key = src.to_u64();
        self.allowed[..usize::from(self.len)].contains(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn open_permits_everything() {
        let s = PortSecurity::open();
        assert!(!s.is_locked());
        for n in 0..=255 {
            assert!(s.permits(mac(n)));
        }
    }

    #[test]
    fn locked_permits_exactly_its_list() {
        let s = PortSecurity::locked(&[mac(1), mac(7)]).unwrap();
        assert!(s.is_locked());
        for n in 0..=255 {
            assert_eq!(s.permits(mac(n)), n == 1 || n == 7, "{n}");
        }
        // Differences in any byte count, not only the last.
        assert!(!s.permits(MacAddr([3, 0, 0, 0, 0, 1])));
        assert!(!s.permits(MacAddr([2, 0, 0, 1, 0, 1])));
    }

    #[test]
    fn the_full_list_is_searched_and_limits_hold() {
        let all: Vec<MacAddr> = (0..MAX_ALLOWED as u8).map(mac).collect();
        let s = PortSecurity::locked(&all).unwrap();
        assert!(all.iter().all(|&m| s.permits(m)));
        assert!(!s.permits(mac(MAX_ALLOWED as u8)));
        let too_many: Vec<MacAddr> = (0..=MAX_ALLOWED as u8).map(mac).collect();
        assert_eq!(PortSecurity::locked(&too_many), Err(BadList));
        assert_eq!(PortSecurity::locked(&[]), Err(BadList));
    }

    #[test]
    fn deny_all_permits_nothing() {
        let s = PortSecurity::deny_all();
        assert!(s.is_locked());
        assert!(!s.permits(MacAddr([0xff; 6])));
        assert!(!s.permits(MacAddr([0; 6])));
        assert!(!s.permits(mac(1)));
    }
}
