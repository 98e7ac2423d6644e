//! What a frontend said to set its connection up, kept so that another process can set the
//! same connection up again without asking it: the hitless upgrade hands this log, with
//! the frontend's socket, to the new daemon, which replays it into its own protocol
//! handler (docs/architecture.md, "Hitless upgrade").
//!
//! Only the last word of each kind is kept, with its descriptors (duplicates: the library
//! keeps its own): the features, the memory table and the regions added since, and for each
//! ring its size, addresses, base, call, error and kick descriptors and whether it is
//! enabled. Queries are not kept. A reset forgets everything; a GET_VRING_BASE stops a ring
//! until its next kick, so its kick is forgotten. A dirty log (a live migration) is noted:
//! no upgrade is offered while one is set.

use std::os::fd::OwnedFd;

use super::message_check::{
    ADD_MEM_REG, GET_VRING_BASE, REM_MEM_REG, RESET_DEVICE, RESET_OWNER, SET_BACKEND_REQ_FD,
    SET_FEATURES, SET_INFLIGHT_FD, SET_LOG_BASE, SET_LOG_FD, SET_MEM_TABLE, SET_VRING_ADDR,
    SET_VRING_CALL, SET_VRING_ENABLE, SET_VRING_ERR, SET_VRING_KICK, SET_VRING_NUM,
};

const SET_OWNER: u32 = 3;
const SET_VRING_BASE: u32 = 10;
const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_CONFIG: u32 = 25;
/// VHOST_F_LOG_ALL in SET_FEATURES: the frontend is migrating.
const LOG_ALL: u64 = 1 << 26;

/// One message as the frontend sent it.
#[derive(Debug)]
pub struct Recorded {
    pub request: u32,
    pub flags: u32,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// The setup of one connection, as far as it went.
#[derive(Debug, Default)]
pub struct SetupLog {
    /// In the order they came (each replacing the one before it of its kind).
    entries: Vec<Recorded>,
    /// A dirty log is set, or the features ask for every write to be logged.
    logging: bool,
    /// A message could not be kept (out of descriptors): the log cannot set the connection
    /// up again.
    incomplete: bool,
}

/// The ring a per-ring message is about: the first word of its body (the low byte for the
/// descriptor messages, whose bit 8 says "no descriptor").
fn ring_of(request: u32, body: &[u8]) -> Option<u32> {
    let word = u32::from_le_bytes(body.get(..4)?.try_into().ok()?);
    match request {
        SET_VRING_NUM | SET_VRING_ADDR | SET_VRING_BASE | SET_VRING_ENABLE | GET_VRING_BASE => {
            Some(word)
        }
        SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => Some(word & 0xff),
        _ => None,
    }
}

/// The guest address and size a memory region message (ADD/REM_MEM_REG) is about.
fn region_of(body: &[u8]) -> Option<(u64, u64)> {
    // 8 bytes of padding, then guest_phys_addr, memory_size, ...
    let word = |at: usize| Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?));
    Some((word(8)?, word(16)?))
}

impl SetupLog {
    /// A log of `entries` another process kept, to replay.
    pub fn from_entries(entries: Vec<Recorded>) -> SetupLog {
        SetupLog {
            entries,
            logging: false,
            incomplete: false,
        }
    }

    /// Records one message the frontend sent and the relay let through (`fds` are its
    /// descriptors; duplicates are kept). Queries and what needs no replay are left out.
    pub fn record(&mut self, request: u32, flags: u32, body: &[u8], fds: &[OwnedFd]) {
        if self.apply(request, flags, body, fds).is_err() {
            self.incomplete = true;
        }
    }

    fn apply(
        &mut self,
        request: u32,
        flags: u32,
        body: &[u8],
        fds: &[OwnedFd],
    ) -> std::io::Result<()> {
        let same = |r: &Recorded| r.request == request;
        let same_ring = |r: &Recorded| {
            r.request == request && ring_of(request, &r.body) == ring_of(request, body)
        };
        match request {
            RESET_OWNER | RESET_DEVICE => {
                self.entries.clear();
                self.logging = false;
                self.incomplete = false;
                return Ok(());
            }
            SET_LOG_BASE | SET_LOG_FD => {
                self.logging = true;
                return Ok(());
            }
            GET_VRING_BASE => {
                // The ring is stopped until its next kick.
                let ring = ring_of(request, body);
                self.entries.retain(|r| {
                    !(r.request == SET_VRING_KICK && ring_of(r.request, &r.body) == ring)
                });
                return Ok(());
            }
            SET_FEATURES => {
                let features = body
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_le_bytes);
                self.logging = features & LOG_ALL != 0;
                self.entries.retain(|r| !same(r));
            }
            SET_OWNER
            | SET_PROTOCOL_FEATURES
            | SET_BACKEND_REQ_FD
            | SET_INFLIGHT_FD
            | SET_CONFIG => self.entries.retain(|r| !same(r)),
            SET_MEM_TABLE => self
                .entries
                .retain(|r| ![SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG].contains(&r.request)),
            ADD_MEM_REG => {}
            REM_MEM_REG => {
                // Removing a region added since the table: both go.
                let region = region_of(body);
                if let Some(i) = self
                    .entries
                    .iter()
                    .position(|r| r.request == ADD_MEM_REG && region_of(&r.body) == region)
                {
                    self.entries.remove(i);
                    return Ok(());
                }
            }
            SET_VRING_NUM | SET_VRING_ADDR | SET_VRING_BASE | SET_VRING_KICK | SET_VRING_CALL
            | SET_VRING_ERR | SET_VRING_ENABLE => self.entries.retain(|r| !same_ring(r)),
            // Queries (GET_*), SEND_RARP and the like change nothing to replay.
            _ => return Ok(()),
        }
        let fds = fds
            .iter()
            .map(OwnedFd::try_clone)
            .collect::<std::io::Result<Vec<_>>>()?;
        let recorded = Recorded {
            request,
            flags,
            body: body.to_vec(),
            fds,
        };
        // What concerns the whole connection goes before every ring's messages: a ring's
        // addresses only translate through a memory table sent before them, and a table
        // the frontend sends again later must come first on replay too.
        let at = match ring_of(request, body) {
            Some(_) => self.entries.len(),
            None => self
                .entries
                .iter()
                .position(|r| ring_of(r.request, &r.body).is_some())
                .unwrap_or(self.entries.len()),
        };
        self.entries.insert(at, recorded);
        Ok(())
    }

    /// What to replay: the messages about the whole connection (owner, features, memory),
    /// then those about rings, each in the order they came.
    pub fn entries(&self) -> &[Recorded] {
        &self.entries
    }

    /// The messages to replay, taken.
    pub fn into_entries(self) -> Vec<Recorded> {
        self.entries
    }

    /// Whether a ring was started (a kick descriptor set): the connection carries frames.
    pub fn started_rings(&self) -> bool {
        self.entries.iter().any(|r| r.request == SET_VRING_KICK)
    }

    /// Whether a dirty log is in use (a live migration): no handover then.
    pub fn logging(&self) -> bool {
        self.logging
    }

    /// Whether a message could not be kept: no handover then either.
    pub fn incomplete(&self) -> bool {
        self.incomplete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(i: u32, n: u32) -> Vec<u8> {
        [i.to_le_bytes(), n.to_le_bytes()].concat()
    }

    fn fd_msg(i: u64) -> Vec<u8> {
        i.to_le_bytes().to_vec()
    }

    fn region(addr: u64, size: u64) -> Vec<u8> {
        [0u64, addr, size, 0x7f00_0000, 0]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    fn fd() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
    }

    fn kinds(log: &SetupLog) -> Vec<(u32, Option<u32>)> {
        log.entries()
            .iter()
            .map(|r| (r.request, ring_of(r.request, &r.body)))
            .collect()
    }

    #[test]
    fn the_last_word_of_each_kind_is_kept_with_its_descriptors() {
        let mut log = SetupLog::default();
        log.record(SET_OWNER, 1, &[], &[]);
        log.record(SET_FEATURES, 1, &fd_msg(1 << 32), &[]);
        log.record(SET_MEM_TABLE, 1, &[0; 40], &[fd()]);
        log.record(SET_VRING_NUM, 1, &ring(0, 256), &[]);
        log.record(SET_VRING_NUM, 1, &ring(1, 256), &[]);
        log.record(SET_VRING_KICK, 1, &fd_msg(1), &[fd()]);
        log.record(SET_VRING_NUM, 1, &ring(0, 512), &[]);
        log.record(11 + 100, 1, &[], &[]); // an unknown query: not kept
        log.record(1, 1, &[], &[]); // GET_FEATURES: not kept
        assert_eq!(
            kinds(&log),
            [
                (SET_OWNER, None),
                (SET_FEATURES, None),
                (SET_MEM_TABLE, None),
                (SET_VRING_NUM, Some(1)),
                (SET_VRING_KICK, Some(1)),
                (SET_VRING_NUM, Some(0)),
            ]
        );
        assert_eq!(log.entries()[2].fds.len(), 1);
        assert_eq!(log.entries()[5].body, ring(0, 512));
        assert!(!log.logging());
    }

    #[test]
    fn a_new_table_replaces_the_regions_and_a_removed_region_cancels_its_add() {
        let mut log = SetupLog::default();
        log.record(SET_MEM_TABLE, 1, &[0; 40], &[fd()]);
        log.record(ADD_MEM_REG, 1, &region(0x1000, 0x1000), &[fd()]);
        log.record(ADD_MEM_REG, 1, &region(0x4000, 0x1000), &[fd()]);
        log.record(REM_MEM_REG, 1, &region(0x1000, 0x1000), &[]);
        // A region of the table itself: the removal is kept.
        log.record(REM_MEM_REG, 1, &region(0x0, 0x1000), &[]);
        assert_eq!(
            log.entries().iter().map(|r| r.request).collect::<Vec<_>>(),
            [SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG]
        );
        log.record(SET_MEM_TABLE, 1, &[1; 40], &[fd()]);
        assert_eq!(
            log.entries().iter().map(|r| r.request).collect::<Vec<_>>(),
            [SET_MEM_TABLE]
        );
    }

    #[test]
    fn a_stopped_ring_loses_its_kick_a_reset_everything_and_a_dirty_log_is_noted() {
        let mut log = SetupLog::default();
        log.record(SET_VRING_KICK, 1, &fd_msg(0), &[fd()]);
        log.record(SET_VRING_KICK, 1, &fd_msg(1), &[fd()]);
        log.record(SET_VRING_CALL, 1, &fd_msg(1), &[fd()]);
        log.record(GET_VRING_BASE, 1, &ring(1, 0), &[]);
        assert_eq!(
            kinds(&log),
            [(SET_VRING_KICK, Some(0)), (SET_VRING_CALL, Some(1))]
        );
        log.record(SET_FEATURES, 1, &fd_msg(LOG_ALL), &[]);
        assert!(log.logging());
        log.record(SET_FEATURES, 1, &fd_msg(0), &[]);
        assert!(!log.logging());
        log.record(SET_LOG_BASE, 1, &[0; 16], &[fd()]);
        assert!(log.logging());
        log.record(RESET_DEVICE, 1, &[], &[]);
        assert!(log.entries().is_empty() && !log.logging());
    }

    #[test]
    fn a_table_sent_again_after_the_rings_replays_before_them() {
        let mut log = SetupLog::default();
        log.record(SET_OWNER, 1, &[], &[]);
        log.record(SET_MEM_TABLE, 1, &[0; 40], &[fd()]);
        log.record(SET_VRING_NUM, 1, &ring(0, 256), &[]);
        log.record(SET_VRING_ADDR, 1, &[0; 40], &[]);
        log.record(SET_MEM_TABLE, 1, &[1; 40], &[fd()]);
        log.record(ADD_MEM_REG, 1, &region(0x4000, 0x1000), &[fd()]);
        log.record(SET_FEATURES, 1, &fd_msg(1 << 32), &[]);
        assert_eq!(
            kinds(&log),
            [
                (SET_OWNER, None),
                (SET_MEM_TABLE, None),
                (ADD_MEM_REG, None),
                (SET_FEATURES, None),
                (SET_VRING_NUM, Some(0)),
                (SET_VRING_ADDR, Some(0)),
            ]
        );
        assert_eq!(log.entries()[1].body, [1; 40]);
    }

    #[test]
    fn short_bodies_are_no_ring() {
        assert_eq!(ring_of(SET_VRING_NUM, &[1, 0]), None);
        assert_eq!(ring_of(SET_VRING_KICK, &fd_msg(0x103)), Some(3));
        assert_eq!(region_of(&[0; 10]), None);
    }
}
