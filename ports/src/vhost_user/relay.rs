//! A message relay between a vhost-user frontend and the protocol handler, smoothing over
//! one incompatibility between QEMU and the vhost crate.
//!
//! QEMU's virtio-net (7.2 at least) sends `SET_VRING_ENABLE` when the device is realized or
//! reset, right after `GET_FEATURES` and long before `SET_FEATURES`. The vhost crate's
//! backend protocol layer only accepts `SET_VRING_ENABLE` once `PROTOCOL_FEATURES` has been
//! acknowledged through `SET_FEATURES`, and drops the connection otherwise. DPDK's vhost
//! library accepts it at any time. This relay defers such early messages: it acknowledges
//! them itself (if a reply was asked for) and replays them to the handler just after the
//! frontend's `SET_FEATURES`.
//!
//! It also keeps the kick eventfd of every TX ring from the library (see [`super::kicks`]):
//! the real one goes to the connection's [`TxKicks`] for the workers, the library gets a
//! stand-in. A memory region QEMU 7.2 adds once per queue pair reaches the library once (see
//! [`super::mem_regions`]). It serves live migration itself (see [`super::migration`]):
//! SET_LOG_BASE maps the dirty log (the library's own mapping would need a bitmap type in
//! every guest memory access, and our data path writes through raw pointers anyway),
//! VHOST_F_LOG_ALL in SET_FEATURES and the log flag of SET_VRING_ADDR are noted on their way
//! to the library, and SEND_RARP (which the library has no handler for) is answered here.
//! Every other message passes through unchanged, file descriptors included.
//!
//! It runs on the control path only (one thread per connection); frames never pass here.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::dirty_log::{DirtyLog, LOG_PAGE};
use super::kicks::TxKicks;
use super::mem_regions::{Admission, MemRegions};
use super::memory_fence::MemoryFence;
use super::message_check::{
    check_header, check_message, Header, Refused, ADD_MEM_REG, FLAG_NEED_REPLY, FLAG_REPLY,
    FLAG_VERSION_1, GET_VRING_BASE, HDR_LEN, REM_MEM_REG, RESET_DEVICE, RESET_OWNER, SEND_RARP,
    SET_FEATURES, SET_LOG_BASE, SET_MEM_TABLE, SET_VRING_ADDR, SET_VRING_ENABLE, SET_VRING_KICK,
    VRING_ADDR_F_LOG,
};
use super::migration::MigrationState;

/// Most file descriptors one message carries (SET_MEM_TABLE: 8 regions).
const MAX_FDS: usize = 32;
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;
/// VHOST_F_LOG_ALL: log every write into guest memory.
const LOG_ALL_BIT: u64 = 1 << 26;
/// The ring index in a SET_VRING_KICK/CALL/ERR payload (bit 8 is the NOFD flag).
const VRING_INDEX_MASK: u64 = 0xff;

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// A side closed the connection, or the socket failed.
    Closed,
    /// The frontend sent a message [`super::message_check`] refused.
    Refused(Refused),
    /// Asked to let go ([`Detach::ask`]): between two messages, every reply delivered, the
    /// frontend's socket left open and untouched for another process to carry on.
    Detached,
}

/// Asks a relay to let go of its frontend without hanging up on it (a hitless upgrade),
/// and counts the replies it still owes the frontend meanwhile.
///
/// An ask ends one of three ways: the relay lets go ([`Self::done`]), declines with a
/// reason ([`Self::declined`]: a live migration is logging, or its setup log is not
/// whole), or the asker withdraws it ([`Self::withdraw`]) before the relay got to it.
/// Between two messages the relay looks, so the answer comes within one message's time.
#[derive(Debug)]
pub struct Detach {
    /// Written by [`Self::ask`]: wakes a relay waiting for its frontend's next message.
    asked: EventFd,
    /// Replies the handler owes the frontend for messages already passed on.
    owed: std::sync::atomic::AtomicUsize,
    state: std::sync::atomic::AtomicU8,
    /// Why the relay declined the last ask.
    reason: std::sync::Mutex<String>,
}

const IDLE: u8 = 0;
const ASKED: u8 = 1;
const DONE: u8 = 2;
const DECLINED: u8 = 3;

impl Detach {
    pub fn new() -> io::Result<Detach> {
        Ok(Detach {
            asked: EventFd::new(EFD_NONBLOCK)?,
            owed: Default::default(),
            state: std::sync::atomic::AtomicU8::new(IDLE),
            reason: Default::default(),
        })
    }

    /// Asks the relay to let go after the message it is on and the replies it owes.
    pub fn ask(&self) {
        if self
            .state
            .compare_exchange(IDLE, ASKED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let _ = self.asked.write(1);
        }
    }

    /// Whether the relay let go.
    pub fn done(&self) -> bool {
        self.state.load(Ordering::SeqCst) == DONE
    }

    /// Why the relay declined the ask, if it did; the relay carries on as before, and may
    /// be asked again.
    pub fn declined(&self) -> Option<String> {
        if self.state.load(Ordering::SeqCst) != DECLINED {
            return None;
        }
        let reason = std::mem::take(&mut *self.reason.lock().unwrap_or_else(|e| e.into_inner()));
        self.state.store(IDLE, Ordering::SeqCst);
        Some(reason)
    }

    /// Withdraws an ask the relay has not answered; false if it let go meanwhile. After
    /// this the relay carries on as if never asked.
    pub fn withdraw(&self) -> bool {
        match self
            .state
            .compare_exchange(ASKED, IDLE, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => true,
            Err(now) => now != DONE,
        }
    }

    /// Whether an ask waits for the relay's answer (the eventfd read).
    fn take_ask(&self) -> bool {
        let _ = self.asked.read();
        self.state.load(Ordering::SeqCst) == ASKED
    }

    /// The relay's answer: `Ok` lets go, `Err` declines. False if the ask was withdrawn
    /// meanwhile (the relay then carries on).
    fn answer(&self, verdict: Result<(), String>) -> bool {
        match verdict {
            Ok(()) => self
                .state
                .compare_exchange(ASKED, DONE, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok(),
            Err(reason) => {
                *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
                let _ = self.state.compare_exchange(
                    ASKED,
                    DECLINED,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                false
            }
        }
    }
}

/// Whether `fd` has input right now (a zero-timeout poll).
#[allow(unsafe_code)]
fn readable_now(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call; timeout 0.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    // Input, or a hang-up or error that a read will report.
    n == 1 && p.revents != 0
}

/// Waits until `a` or `b` has input (or either hangs up).
#[allow(unsafe_code)]
fn wait_either(a: RawFd, b: RawFd) -> io::Result<()> {
    let mut p = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `p` is an array of two valid pollfds for the duration of the call.
        let n = unsafe { libc::poll(p.as_mut_ptr(), 2, -1) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The requests the handler answers whatever their flags.
fn always_answered(request: u32) -> bool {
    // GET_FEATURES, GET_PROTOCOL_FEATURES, GET_VRING_BASE, GET_QUEUE_NUM, GET_CONFIG,
    // GET_INFLIGHT_FD, GET_MAX_MEM_SLOTS.
    matches!(request, 1 | 15 | 11 | 17 | 24 | 31 | 36)
}

/// Starts relaying between `frontend` and `relay_side`, the relay's end of a connection to
/// the protocol handler. TX kick fds go to `kicks`. The relay threads end when either side
/// closes, or when the frontend sends a message that is refused; joining the returned
/// thread says which.
/// How long a frontend may keep the relay waiting.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// From connecting to its first whole message. QEMU and DPDK send theirs at once; a
    /// client that connects and says nothing would hold the port from the real VM.
    pub first_message: Duration,
    /// From the first byte of a message to its last.
    pub whole_message: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            first_message: Duration::from_secs(10),
            whole_message: Duration::from_secs(10),
        }
    }
}

/// What the relay hands on to the rest of the connection.
#[derive(Clone)]
pub struct Shared {
    /// Where the real kick fds of TX rings go.
    pub kicks: Arc<TxKicks>,
    /// The dirty log, logging state and announcements of a live migration.
    pub migration: Arc<MigrationState>,
    /// The connection's mappings of frontend files, guarded against the files shrinking.
    pub fence: Arc<MemoryFence>,
    /// What the frontend said to set the connection up, for a hitless upgrade.
    pub setup: Arc<std::sync::Mutex<super::setup_log::SetupLog>>,
    /// How the relay is asked to let go of the frontend for a hitless upgrade.
    pub detach: Arc<Detach>,
}

impl Shared {
    /// The state of a connection with `rings` virtqueues whose doorbells ring nothing.
    #[cfg(test)]
    pub(crate) fn quiet(rings: usize) -> Shared {
        Shared {
            kicks: Arc::new(TxKicks::new(rings, || {})),
            migration: Arc::new(MigrationState::new(rings, || {})),
            fence: MemoryFence::new().expect("a memory fence"),
            setup: Default::default(),
            detach: Arc::new(Detach::new().expect("an eventfd")),
        }
    }
}

/// `ended` is written once both relay threads are done.
pub fn start(
    frontend: UnixStream,
    relay_side: UnixStream,
    shared: Shared,
    ended: Arc<EventFd>,
) -> io::Result<JoinHandle<RelayEnd>> {
    start_with(frontend, relay_side, shared, ended, Deadlines::default())
}

/// [`start`] with other deadlines.
pub fn start_with(
    frontend: UnixStream,
    relay_side: UnixStream,
    shared: Shared,
    ended: Arc<EventFd>,
    deadlines: Deadlines,
) -> io::Result<JoinHandle<RelayEnd>> {
    start_relay(frontend, None, relay_side, shared, ended, deadlines).map(|(relay, _)| relay)
}

/// Starts relaying for a connection another process set up (a hitless upgrade): the
/// messages of `replay` (that process's [`super::setup_log::SetupLog`]) first, as if
/// `frontend` sent them again, their replies dropped; then `frontend` itself, which notices
/// nothing. The relay and the library end up as they were in the other process. The
/// second thread returned ends once the library has answered the whole replay (or the
/// replay failed: the relay then ends too).
pub fn start_replaying(
    frontend: UnixStream,
    replay: &[super::setup_log::Recorded],
    relay_side: UnixStream,
    shared: Shared,
    ended: Arc<EventFd>,
) -> io::Result<(JoinHandle<RelayEnd>, JoinHandle<io::Result<()>>)> {
    let (feed, fed) = UnixStream::pair()?;
    // As every frontend begins: the library honours NEED_REPLY only once asked for its
    // features (the vhost crate), and the replay's replies must come as the original's.
    let ask_features = (header(REPLAY_SYNC, FLAG_VERSION_1, 0).to_vec(), Vec::new());
    let messages: Vec<(Vec<u8>, Vec<OwnedFd>)> = std::iter::once(Ok(ask_features))
        .chain(replay.iter().map(|r| {
            let mut m = header(r.request, r.flags, r.body.len() as u32).to_vec();
            m.extend_from_slice(&r.body);
            let fds = r
                .fds
                .iter()
                .map(OwnedFd::try_clone)
                .collect::<io::Result<_>>()?;
            Ok((m, fds))
        }))
        .collect::<io::Result<_>>()?;
    let real = frontend;
    let whole = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (relay, target) = start_relay(
        fed,
        Some((real.try_clone()?, whole.clone())),
        relay_side,
        shared,
        ended,
        Deadlines::default(),
    )?;
    let replayed = std::thread::Builder::new()
        .name("vhost-replay".into())
        .spawn(move || {
            let fed = feed_replay(&feed, &messages);
            if fed.is_ok() {
                // Replies go to the frontend from here on; then the relay reads it.
                *target.lock().unwrap_or_else(|e| e.into_inner()) = real;
                whole.store(true, Ordering::SeqCst);
            }
            // A failed replay ends the relay with the feed, and the relay hangs up on the
            // feed only: the real frontend is left as it is, for whoever still serves it.
            let _ = feed.shutdown(std::net::Shutdown::Both);
            fed
        })?;
    Ok((relay, replayed))
}

/// The request the replay ends with, whose reply says every reply before it came: one
/// the library always answers (GET_FEATURES).
const REPLAY_SYNC: u32 = 1;

/// Writes `messages` (with their descriptors) into the relay as its frontend would, then a
/// GET_FEATURES, and reads and drops replies until that one's (the messages' own
/// GET_FEATURES are answered before it).
fn feed_replay(feed: &UnixStream, messages: &[(Vec<u8>, Vec<OwnedFd>)]) -> io::Result<()> {
    let mut syncs = 1;
    for (m, fds) in messages {
        if m.get(..HDR_LEN)
            .and_then(|h| <&[u8; HDR_LEN]>::try_from(h).ok())
            .is_some_and(|h| Header::parse(h).request == REPLAY_SYNC)
        {
            syncs += 1;
        }
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        if raw.is_empty() {
            (&*feed).write_all(m)?;
        } else {
            feed.send_with_fds(&[&m[..]], &raw)
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        }
    }
    (&*feed).write_all(&header(REPLAY_SYNC, FLAG_VERSION_1, 0))?;
    feed.set_read_timeout(Some(Duration::from_secs(10)))?;
    while syncs > 0 {
        let mut hdr = [0u8; HDR_LEN];
        (&*feed).read_exact(&mut hdr)?;
        let h = Header::parse(&hdr);
        let mut body = vec![0u8; h.size as usize];
        (&*feed).read_exact(&mut body)?;
        if h.request == REPLAY_SYNC && h.flags & FLAG_REPLY != 0 {
            syncs -= 1;
        }
    }
    Ok(())
}

/// Where the handler's replies go: the frontend the relay answers now.
type ReplyTarget = Arc<std::sync::Mutex<UnixStream>>;

/// Starts both relay threads: `frontend` is read (and answered) first; with `then`, once it
/// ends the relay carries on with `then`. Returns the relay and where replies go, which the
/// replay's feeder points at `then` when the replay is done.
fn start_relay(
    frontend: UnixStream,
    then: Option<Then>,
    relay_side: UnixStream,
    shared: Shared,
    ended: Arc<EventFd>,
    deadlines: Deadlines,
) -> io::Result<(JoinHandle<RelayEnd>, ReplyTarget)> {
    let target: ReplyTarget = Arc::new(std::sync::Mutex::new(frontend.try_clone()?));
    let replies = target.clone();
    let detach = shared.detach.clone();
    let from_handler = relay_side.try_clone()?;
    // Replies from the handler to the frontend, a message at a time (none we send carries
    // fds), to whichever frontend the relay answers now.
    let back = std::thread::Builder::new()
        .name("vhost-relay-rx".into())
        .spawn(move || {
            let mut from = from_handler;
            let _ = copy_replies(&mut from, &replies, &detach);
            let to = replies.lock().unwrap_or_else(|e| e.into_inner());
            // A relay that let go leaves the frontend's socket to whoever carries on.
            if !detach.done() {
                let _ = to.shutdown(std::net::Shutdown::Both);
            }
            let _ = from.shutdown(std::net::Shutdown::Both);
        })?;
    let forward = std::thread::Builder::new()
        .name("vhost-relay-tx".into())
        .spawn(move || {
            let mut relay = Relay {
                frontend,
                then,
                handler: relay_side,
                features_set: false,
                deferred: Vec::new(),
                regions: MemRegions::default(),
                kicks: shared.kicks,
                migration: shared.migration,
                fence: shared.fence,
                setup: shared.setup,
                detach: shared.detach,
                log_all: false,
                log_covers: 0,
                rings: Vec::new(),
                deadlines,
                features_asked: false,
                reply_ack: false,
            };
            let end = match relay.run() {
                Ok(never) => match never {},
                Err(e) if e.kind() == io::ErrorKind::Other && relay.detach.done() => {
                    RelayEnd::Detached
                }
                Err(e) => match e.downcast::<Refused>() {
                    Ok(refused) => RelayEnd::Refused(refused),
                    Err(_) => RelayEnd::Closed,
                },
            };
            // A relay that let go leaves the frontend's socket as it is.
            if !matches!(end, RelayEnd::Detached) {
                let _ = relay.frontend.shutdown(std::net::Shutdown::Both);
            }
            let _ = relay.handler.shutdown(std::net::Shutdown::Both);
            let _ = back.join();
            let _ = ended.write(1);
            end
        })?;
    Ok((forward, target))
}

/// The real frontend a replaying relay carries on with, and whether the replay went
/// through whole (set before the feed ends): a failed replay ends the relay instead.
type Then = (UnixStream, Arc<std::sync::atomic::AtomicBool>);

struct Relay {
    frontend: UnixStream,
    /// The real frontend, read once the replay (`frontend` until then) ends whole.
    then: Option<Then>,
    handler: UnixStream,
    features_set: bool,
    /// Bodies of SET_VRING_ENABLE messages held back until SET_FEATURES.
    deferred: Vec<[u8; 8]>,
    /// Memory regions mapped so far, with their copies.
    regions: MemRegions,
    /// Where the real kick fds of TX rings go.
    kicks: Arc<TxKicks>,
    migration: Arc<MigrationState>,
    fence: Arc<MemoryFence>,
    setup: Arc<std::sync::Mutex<super::setup_log::SetupLog>>,
    detach: Arc<Detach>,
    /// Whether the frontend's features have VHOST_F_LOG_ALL.
    log_all: bool,
    /// The guest memory the installed log covers (0 without one).
    log_covers: u64,
    /// What the relay knows of each ring, by index.
    rings: Vec<RingSeen>,
    deadlines: Deadlines,
    /// Whether the library has been asked GET_FEATURES and has REPLY_ACK acknowledged: as
    /// the vhost crate, which answers a NEED_REPLY only then (its `reply_ack_enabled`).
    features_asked: bool,
    reply_ack: bool,
}

/// A ring as the relay saw it set up.
#[derive(Debug, Clone, Copy, Default)]
struct RingSeen {
    /// The descriptor, used and available ring addresses the library last got.
    addrs: Option<[u64; 3]>,
    /// Started (a kick fd set) since it was last stopped (GET_VRING_BASE).
    running: bool,
}

/// Copies the handler's replies to the frontend `target` holds, one whole message at a
/// time, until either side closes.
fn copy_replies(
    from: &mut UnixStream,
    target: &std::sync::Mutex<UnixStream>,
    detach: &Detach,
) -> io::Result<()> {
    loop {
        let mut hdr = [0u8; HDR_LEN];
        from.read_exact(&mut hdr)?;
        let size = Header::parse(&hdr).size as usize;
        let mut body = vec![0u8; size];
        from.read_exact(&mut body)?;
        let mut to = target.lock().unwrap_or_else(|e| e.into_inner());
        to.write_all(&hdr)?;
        to.write_all(&body)?;
        // One reply fewer owed (never below none: a reply nothing asked for is passed on).
        let _ = detach
            .owed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

fn header(request: u32, flags: u32, size: u32) -> [u8; HDR_LEN] {
    Header {
        request,
        flags,
        size,
    }
    .encode()
}

impl Relay {
    /// Relays until an error: a refused message comes back as an `io::Error` wrapping
    /// [`Refused`].
    fn run(&mut self) -> io::Result<std::convert::Infallible> {
        let refuse = |r: Refused| io::Error::new(io::ErrorKind::InvalidData, r);
        let stalled = |what: &'static str, after: Duration| {
            move |e: io::Error| {
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    refuse(Refused::Stalled {
                        what,
                        seconds: after.as_secs(),
                    })
                } else {
                    e
                }
            }
        };
        let mut first = true;
        loop {
            // Between messages the frontend may stay quiet for as long as it likes, except
            // before its first one.
            let (quiet, what) = if first {
                (Some(self.deadlines.first_message), "no message")
            } else {
                (None, "")
            };
            // Between messages: let go if asked (once the replies owed are delivered), else
            // wait for the next message.
            if !first && self.then.is_none() {
                self.wait_or_let_go()?;
            }
            self.frontend.set_read_timeout(quiet)?;
            let mut hdr = [0u8; HDR_LEN];
            let whole = self.deadlines.whole_message;
            let fds = match recv_header(&self.frontend, &mut hdr, whole) {
                // The replay ended: the real frontend from here on, quiet as it likes.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && self.then.is_some() => {
                    match self.then.take() {
                        Some((real, whole)) if whole.load(Ordering::SeqCst) => {
                            self.frontend = real;
                        }
                        _ => return Err(e),
                    }
                    first = false;
                    continue;
                }
                r => r.map_err(|e| match quiet {
                    Some(after) if e.kind() != io::ErrorKind::UnexpectedEof => {
                        stalled(what, after)(e)
                    }
                    _ => stalled("half a message", whole)(e),
                })?,
            };
            let parsed = Header::parse(&hdr);
            check_header(&parsed).map_err(refuse)?;
            let (request, flags, size) = (parsed.request, parsed.flags, parsed.size as usize);
            let mut body = vec![0u8; size];
            self.frontend
                .read_exact(&mut body)
                .map_err(stalled("half a message", whole))?;
            first = false;
            check_message(&parsed, &body, &fds).map_err(refuse)?;
            // Kept as the frontend said it: a new process replays it through a relay of
            // its own, which then absorbs, defers and keeps exactly as this one does.
            self.setup
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(request, flags, &body, &fds);
            if self.regions.admit(&parsed, &body, &fds).map_err(refuse)? == Admission::Absorb {
                self.acknowledge(request, flags)?;
                continue;
            }
            if matches!(request, SET_MEM_TABLE | ADD_MEM_REG) {
                self.check_log_covers_memory().map_err(refuse)?;
            }
            match request {
                SET_LOG_BASE => {
                    self.set_log_base(&body, fds).map_err(refuse)?;
                    // The reply QEMU waits for, whatever the flags say: the log echoed, as
                    // the vhost crate's own handler answers.
                    let mut reply =
                        header(request, FLAG_VERSION_1 | FLAG_REPLY, size as u32).to_vec();
                    reply.extend_from_slice(&body);
                    self.frontend.write_all(&reply)?;
                    continue;
                }
                SEND_RARP => {
                    self.send_rarp(&body).map_err(refuse)?;
                    self.acknowledge(request, flags)?;
                    continue;
                }
                SET_VRING_ADDR => {
                    self.note_vring_log(&body);
                    if self.only_logging_changes(&body) {
                        self.acknowledge(request, flags)?;
                        continue;
                    }
                }
                SET_VRING_KICK | GET_VRING_BASE => self.note_ring_state(request, &body),
                SET_MEM_TABLE | ADD_MEM_REG | REM_MEM_REG => {
                    // Addresses may translate anew: the next SET_VRING_ADDR goes through.
                    self.rings.iter_mut().for_each(|r| r.addrs = None);
                }
                RESET_OWNER | RESET_DEVICE => {
                    // The frontend starts over: nothing the relay saw of its rings holds, and
                    // every SET_VRING_ADDR after this goes to the library.
                    self.rings.clear();
                }
                SET_FEATURES if size == 8 => {
                    // Before the library sees the features: it takes every vring's lock to
                    // apply them, so a burst that began before logging was on has ended
                    // by the time it answers the frontend's next message.
                    let features = u64::from_le_bytes(body[..8].try_into().unwrap_or([0; 8]));
                    self.log_all = features & LOG_ALL_BIT != 0;
                    self.check_log_covers_memory().map_err(refuse)?;
                    self.migration
                        .set_logging(self.log_all && self.migration.has_log());
                }
                _ => {}
            }

            if request == SET_VRING_ENABLE && !self.features_set && size == 8 && fds.is_empty() {
                let mut b = [0u8; 8];
                b.copy_from_slice(&body);
                self.deferred.push(b);
                self.acknowledge(request, flags)?;
                continue;
            }

            let mut fds = fds;
            // The stand-in for a TX ring's kick fd, open until the library has its own copy.
            let mut stand_in = None;
            if let Some(index) = self.kept_kick(request, &body) {
                // Kept before the library sees the message: by the time the ring is started
                // and a worker told, its kick fd is in the table.
                let real = fds.pop();
                if real.is_some() {
                    stand_in = Some(EventFd::new(EFD_NONBLOCK)?);
                }
                self.kicks.set(index, real);
            }
            let raw: Vec<RawFd> = fds
                .iter()
                .map(AsRawFd::as_raw_fd)
                .chain(stand_in.as_ref().map(AsRawFd::as_raw_fd))
                .collect();
            if self.answered(request, flags, &body) {
                self.detach.owed.fetch_add(1, Ordering::SeqCst);
            }
            self.handler.send_with_fds(&[&hdr[..], &body[..]], &raw)?;
            drop(fds);
            drop(stand_in);

            if request == SET_FEATURES && size == 8 {
                let features = u64::from_le_bytes(body[..8].try_into().unwrap_or([0; 8]));
                self.features_set = true;
                if features & PROTOCOL_FEATURES_BIT != 0 {
                    // Replay the held-back enables now that they are legal, without asking
                    // for replies (the frontend already got its acknowledgement).
                    for b in std::mem::take(&mut self.deferred) {
                        let mut msg = header(SET_VRING_ENABLE, FLAG_VERSION_1, 8).to_vec();
                        msg.extend_from_slice(&b);
                        self.handler.write_all(&msg)?;
                    }
                } else {
                    // Without PROTOCOL_FEATURES every ring is enabled at SET_FEATURES.
                    self.deferred.clear();
                }
            }
        }
    }

    /// Answers a message the relay handles itself with success, if the frontend asked for a
    /// reply. The frontend waits for it before its next message, so no reply of the
    /// handler's is in flight meanwhile.
    /// Waits for the frontend's next message, unless asked to let go: then, unless the
    /// connection cannot be carried on elsewhere or a reply owed does not come (the ask is
    /// declined), ends once every reply owed has reached the frontend (an error of kind
    /// `Other`, with the detach marked done).
    fn wait_or_let_go(&mut self) -> io::Result<()> {
        loop {
            if self.detach.take_ask() {
                let verdict = self.may_let_go().and_then(|()| self.replies_delivered());
                if self.detach.answer(verdict) {
                    return Err(io::Error::other("let go of the frontend"));
                }
            }
            if readable_now(self.frontend.as_raw_fd()) {
                return Ok(());
            }
            wait_either(self.frontend.as_raw_fd(), self.detach.asked.as_raw_fd())?;
        }
    }

    /// Waits until every reply the library owes the frontend has reached it (at most
    /// 2 s: the library answers at once, or never).
    fn replies_delivered(&self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.detach.owed.load(Ordering::SeqCst) > 0 {
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "its protocol handler still owes its VM {} repl(ies): the connection \
                     cannot be let go of cleanly",
                    self.detach.owed.load(Ordering::SeqCst)
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Whether the library will answer `request`: queries always, others when they ask
    /// for a reply and the library honours that (the vhost crate's rule, followed
    /// message by message so that the count of replies owed stays exact).
    fn answered(&mut self, request: u32, flags: u32, body: &[u8]) -> bool {
        const GET_FEATURES: u32 = 1;
        const SET_PROTOCOL_FEATURES: u32 = 16;
        const REPLY_ACK: u64 = 1 << 3;
        match request {
            GET_FEATURES => self.features_asked = true,
            SET_PROTOCOL_FEATURES => {
                let bits = body
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_le_bytes);
                self.reply_ack = bits & REPLY_ACK != 0;
            }
            _ => {}
        }
        always_answered(request)
            || (flags & FLAG_NEED_REPLY != 0 && self.features_asked && self.reply_ack)
    }

    /// Whether another process could carry the connection on from its setup log.
    fn may_let_go(&self) -> Result<(), String> {
        let setup = self.setup.lock().unwrap_or_else(|e| e.into_inner());
        // A log left installed after a migration ended is no reason: the next migration
        // sends its own.
        if self.log_all || setup.logging() {
            return Err(
                "its VM is being migrated (the switch logs the pages it writes); \
                        upgrade once the migration has ended"
                    .into(),
            );
        }
        if setup.incomplete() {
            return Err(
                "part of what its VM said to set the connection up could not be kept \
                        (the switch was out of file descriptors); reconnecting the VM mends it"
                    .into(),
            );
        }
        Ok(())
    }

    fn acknowledge(&mut self, request: u32, flags: u32) -> io::Result<()> {
        if flags & FLAG_NEED_REPLY != 0 {
            let mut reply = header(request, FLAG_VERSION_1 | FLAG_REPLY, 8).to_vec();
            reply.extend_from_slice(&0u64.to_le_bytes());
            self.frontend.write_all(&reply)?;
        }
        Ok(())
    }

    /// Maps the log of SET_LOG_BASE (`mmap_size`, `mmap_offset`, one fd), checked against its
    /// file and against guest memory, and installs it in place of the one before. QEMU 7.2
    /// sends one per queue pair: each replaces the last, and a worker still marking the
    /// old one keeps it mapped until its burst ends.
    fn set_log_base(&mut self, body: &[u8], mut fds: Vec<OwnedFd>) -> Result<(), Refused> {
        if body.len() != 16 {
            return Err(Refused::BadLog(format!(
                "SET_LOG_BASE with a {}-byte body, not 16",
                body.len()
            )));
        }
        let (Some(fd), true) = (fds.pop(), fds.is_empty()) else {
            return Err(Refused::BadLog(
                "SET_LOG_BASE without its shared memory file descriptor".into(),
            ));
        };
        let word = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap_or([0; 8]));
        let (size, offset) = (word(0), word(8));
        let log = DirtyLog::map(&std::fs::File::from(fd), size, offset, self.regions.end())
            .map_err(|e| Refused::BadLog(e.to_string()))?
            .guarded_by(&self.fence)
            .map_err(|e| Refused::BadLog(e.to_string()))?;
        self.log_covers = size.saturating_mul(8).saturating_mul(LOG_PAGE);
        self.migration.set_log(Some(Arc::new(log)));
        self.migration.set_logging(self.log_all);
        Ok(())
    }

    /// While logging, every page of guest memory must have its bit: a region beyond the
    /// log (added before the frontend grew it, which QEMU does first) would have its writes
    /// lost to the migration, and the guest its memory.
    fn check_log_covers_memory(&self) -> Result<(), Refused> {
        let end = self.regions.end();
        if self.log_all && self.migration.has_log() && end > self.log_covers {
            return Err(Refused::BadLog(format!(
                "guest memory reaches {end:#x} while logging, the log only {:#x}",
                self.log_covers
            )));
        }
        Ok(())
    }

    /// Notes where SET_VRING_ADDR logs its used ring, if it does. The message itself goes
    /// on to the library (which checks the ring index and addresses).
    fn note_vring_log(&self, body: &[u8]) {
        if body.len() < 40 {
            return;
        }
        let index = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
        let flags = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
        let at = u64::from_le_bytes(body[32..40].try_into().unwrap_or([0; 8]));
        self.migration
            .set_used_log(index, (flags & VRING_ADDR_F_LOG != 0).then_some(at));
    }

    /// Whether a SET_VRING_ADDR only switches used-ring logging on a running ring: the
    /// same addresses as the library has. Such a message is answered here. The library
    /// would set the addresses again and then reset the queue's used index from guest
    /// memory, a read and a write under two separate holds of the vring lock: a burst
    /// published in between would have its used entries overwritten and the used index
    /// go back (QEMU sends this message to running rings when a migration starts and
    /// ends). Any other SET_VRING_ADDR is passed on, its addresses noted.
    fn only_logging_changes(&mut self, body: &[u8]) -> bool {
        if body.len() < 40 {
            return false;
        }
        let index = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
        let word = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap_or([0; 8]));
        let addrs = [word(8), word(16), word(24)];
        let Some(ring) = self.ring(index) else {
            return false;
        };
        if ring.running && ring.addrs == Some(addrs) {
            return true;
        }
        ring.addrs = Some(addrs);
        false
    }

    /// Notes a ring started (SET_VRING_KICK) or stopped (GET_VRING_BASE).
    fn note_ring_state(&mut self, request: u32, body: &[u8]) {
        let Some(word) = body.get(..4) else {
            return;
        };
        let index = (u32::from_le_bytes([word[0], word[1], word[2], word[3]]) as u64
            & VRING_INDEX_MASK) as usize;
        if let Some(ring) = self.ring(index) {
            ring.running = request == SET_VRING_KICK;
        }
    }

    /// What the relay knows of ring `index` (at most 256 rings: the index field's width).
    fn ring(&mut self, index: usize) -> Option<&mut RingSeen> {
        if index > VRING_INDEX_MASK as usize {
            return None;
        }
        if self.rings.len() <= index {
            self.rings.resize(index + 1, RingSeen::default());
        }
        self.rings.get_mut(index)
    }

    /// SEND_RARP: the frontend asks the switch to announce the VM's MAC from this port,
    /// as the guest cannot (no VIRTIO_NET_F_GUEST_ANNOUNCE) after a migration.
    fn send_rarp(&self, body: &[u8]) -> Result<(), Refused> {
        let mut mac = [0u8; 6];
        if let Some(b) = body.get(..6) {
            mac.copy_from_slice(b);
        }
        if body.len() != 8 || mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(Refused::BadAnnounce { mac });
        }
        self.migration.announce(mac);
        Ok(())
    }

    /// The ring whose kick fd `request` sets, if that fd belongs in [`TxKicks`].
    fn kept_kick(&self, request: u32, body: &[u8]) -> Option<usize> {
        if request != SET_VRING_KICK {
            return None;
        }
        let payload = u64::from_le_bytes(body.try_into().ok()?);
        let index = (payload & VRING_INDEX_MASK) as usize;
        self.kicks.keeps(index).then_some(index)
    }
}

/// Reads a message header and the file descriptors sent with it. Once its first bytes are
/// in, the rest of the message must follow within `whole` (the socket's read timeout is
/// set to it).
#[allow(unsafe_code)]
fn recv_header(
    sock: &UnixStream,
    hdr: &mut [u8; HDR_LEN],
    whole: Duration,
) -> io::Result<Vec<OwnedFd>> {
    let mut raw_fds = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: hdr.as_mut_ptr().cast(),
        iov_len: HDR_LEN,
    }];
    // SAFETY: the iovec points at `hdr`, a live buffer of exactly HDR_LEN bytes that nothing
    // else accesses during the call, so the kernel may write any bytes into it.
    let (n, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut raw_fds) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let fds: Vec<OwnedFd> = raw_fds[..nfds.min(MAX_FDS)]
        .iter()
        .filter(|&&fd| fd >= 0)
        // SAFETY: recvmsg just installed these descriptors in our table and nothing else
        // knows them: we are their only owner.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    sock.set_read_timeout(Some(whole))?;
    if n < HDR_LEN {
        (&*sock).read_exact(&mut hdr[n..])?;
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET_OWNER_REQ: u32 = 3;

    fn start_pair(relay_end: UnixStream) -> (UnixStream, JoinHandle<RelayEnd>) {
        let (handler, t, _) = start_with_kicks(relay_end);
        (handler, t)
    }

    /// A relay for a one-queue-pair connection, and its TX kick table.
    fn start_with_kicks(relay_end: UnixStream) -> (UnixStream, JoinHandle<RelayEnd>, Arc<TxKicks>) {
        let (handler, relay_side) = UnixStream::pair().unwrap();
        let ended = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let shared = Shared::quiet(2);
        let kicks = shared.kicks.clone();
        (
            handler,
            start(relay_end, relay_side, shared, ended).unwrap(),
            kicks,
        )
    }

    fn read_msg(s: &mut UnixStream) -> ([u8; HDR_LEN], Vec<u8>) {
        let mut h = [0u8; HDR_LEN];
        s.read_exact(&mut h).unwrap();
        let size = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let mut b = vec![0u8; size];
        s.read_exact(&mut b).unwrap();
        (h, b)
    }

    fn msg(request: u32, flags: u32, body: &[u8]) -> Vec<u8> {
        let mut m = header(request, flags, body.len() as u32).to_vec();
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn early_vring_enable_is_acked_and_replayed_after_set_features() {
        let (mut fe, relay_end) = UnixStream::pair().unwrap();
        let (mut handler, _t) = start_pair(relay_end);
        let enable = [0u8, 0, 0, 0, 1, 0, 0, 0];
        fe.write_all(&msg(
            SET_VRING_ENABLE,
            FLAG_VERSION_1 | FLAG_NEED_REPLY,
            &enable,
        ))
        .unwrap();
        // The frontend gets its ack from the relay.
        let (h, b) = read_msg(&mut fe);
        assert_eq!(
            u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
            SET_VRING_ENABLE
        );
        assert_eq!(
            u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            FLAG_VERSION_1 | FLAG_REPLY
        );
        assert_eq!(b, 0u64.to_le_bytes());
        // SET_FEATURES passes, then the enable follows it.
        let features = (PROTOCOL_FEATURES_BIT | 1 << 32).to_le_bytes();
        fe.write_all(&msg(SET_FEATURES, FLAG_VERSION_1, &features))
            .unwrap();
        let (h, b) = read_msg(&mut handler);
        assert_eq!(h[0], SET_FEATURES as u8);
        assert_eq!(b, features);
        let (h, b) = read_msg(&mut handler);
        assert_eq!(h[0], SET_VRING_ENABLE as u8);
        assert_eq!(u32::from_le_bytes([h[4], h[5], h[6], h[7]]), FLAG_VERSION_1);
        assert_eq!(b, enable);
        // Later enables pass straight through.
        fe.write_all(&msg(SET_VRING_ENABLE, FLAG_VERSION_1, &enable))
            .unwrap();
        let (h, _) = read_msg(&mut handler);
        assert_eq!(h[0], SET_VRING_ENABLE as u8);
        // Replies travel back.
        handler
            .write_all(&msg(1, FLAG_VERSION_1 | FLAG_REPLY, &[7; 8]))
            .unwrap();
        assert_eq!(read_msg(&mut fe).1, vec![7; 8]);
    }

    #[test]
    fn file_descriptors_pass_through() {
        let (fe, relay_end) = UnixStream::pair().unwrap();
        let (handler, _t) = start_pair(relay_end);
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let body = [0u8; 8];
        fe.send_with_fds(
            &[&header(12, FLAG_VERSION_1, 8)[..], &body[..]],
            &[file.as_raw_fd()],
        )
        .unwrap();
        let mut hdr = [0u8; HDR_LEN];
        let fds = recv_header(&handler, &mut hdr, Duration::from_secs(5)).unwrap();
        assert_eq!(fds.len(), 1);
        assert_eq!(hdr[0], 12);
    }

    /// Sends SET_VRING_KICK for `ring` with `kick` attached.
    fn send_kick(fe: &UnixStream, ring: u64, kick: &EventFd) {
        fe.send_with_fds(
            &[
                &header(SET_VRING_KICK, FLAG_VERSION_1, 8)[..],
                &ring.to_le_bytes(),
            ],
            &[kick.as_raw_fd()],
        )
        .unwrap();
    }

    /// Whether `fd` is readable right now.
    #[allow(unsafe_code)]
    #[test]
    fn a_tx_kick_fd_is_kept_and_the_library_gets_a_stand_in() {
        let (fe, relay_end) = UnixStream::pair().unwrap();
        let (handler, _t, kicks) = start_with_kicks(relay_end);
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        send_kick(&fe, 1, &kick);
        let mut hdr = [0u8; HDR_LEN];
        let fds = recv_header(&handler, &mut hdr, Duration::from_secs(5)).unwrap();
        assert_eq!(hdr[0], SET_VRING_KICK as u8);
        assert_eq!(fds.len(), 1, "the library still gets a kick fd");
        let mut body = [0u8; 8];
        (&handler).read_exact(&mut body).unwrap();
        assert_eq!(u64::from_le_bytes(body), 1);
        // The frontend's kicks reach the kept fd, not the library's.
        kick.write(1).unwrap();
        let mut kept = None;
        kicks.with(1, |fd| kept = Some(readable_now(fd)));
        assert_eq!(kept, Some(true), "kept fd not the frontend's");
        assert!(
            !readable_now(fds[0].as_raw_fd()),
            "the library saw the kick"
        );

        // An RX ring's kick fd passes through as it came.
        let rx_kick = EventFd::new(EFD_NONBLOCK).unwrap();
        send_kick(&fe, 0, &rx_kick);
        let fds = recv_header(&handler, &mut hdr, Duration::from_secs(5)).unwrap();
        (&handler).read_exact(&mut body).unwrap();
        rx_kick.write(1).unwrap();
        assert!(readable_now(fds[0].as_raw_fd()));
        kicks.with(0, |_| panic!("an RX kick fd was kept"));

        // NOFD (the frontend will not kick): the kept fd is dropped, nothing is sent.
        (&fe)
            .write_all(&msg(
                SET_VRING_KICK,
                FLAG_VERSION_1,
                &(1u64 | 1 << 8).to_le_bytes(),
            ))
            .unwrap();
        let fds = recv_header(&handler, &mut hdr, Duration::from_secs(5)).unwrap();
        assert!(fds.is_empty());
        kicks.with(1, |_| panic!("a cleared kick fd is still kept"));
    }

    #[test]
    fn the_setup_log_keeps_what_the_frontend_said_with_its_real_kick_fds() {
        let (fe, relay_end) = UnixStream::pair().unwrap();
        let (handler, relay_side) = UnixStream::pair().unwrap();
        let shared = Shared::quiet(2);
        let setup = shared.setup.clone();
        let ended = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let _t = start(relay_end, relay_side, shared, ended).unwrap();
        // An early enable (deferred by the relay), the features, a TX kick (kept by the
        // relay, a stand-in to the library), a query.
        let enable = [1u8, 0, 0, 0, 1, 0, 0, 0];
        (&fe)
            .write_all(&msg(SET_VRING_ENABLE, FLAG_VERSION_1, &enable))
            .unwrap();
        let features = (PROTOCOL_FEATURES_BIT | 1 << 32).to_le_bytes();
        (&fe)
            .write_all(&msg(SET_FEATURES, FLAG_VERSION_1, &features))
            .unwrap();
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        send_kick(&fe, 1, &kick);
        (&fe).write_all(&msg(1, FLAG_VERSION_1, &[])).unwrap();
        // Everything reached the library: features, enable, kick, query.
        let mut hdr = [0u8; HDR_LEN];
        for _ in 0..4 {
            let _fds = recv_header(&handler, &mut hdr, Duration::from_secs(5)).unwrap();
            let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
            let mut body = vec![0u8; size];
            (&handler).read_exact(&mut body).unwrap();
        }
        let log = setup.lock().unwrap();
        let kept: Vec<u32> = log.entries().iter().map(|r| r.request).collect();
        // The features first (what concerns the whole connection replays before the rings).
        assert_eq!(kept, [SET_FEATURES, SET_VRING_ENABLE, SET_VRING_KICK]);
        // The kick kept is the frontend's own: what it writes, the log's copy reads.
        kick.write(1).unwrap();
        assert!(readable_now(log.entries()[2].fds[0].as_raw_fd()));
        assert!(!log.logging() && !log.incomplete());
    }

    #[test]
    fn a_replayed_setup_reaches_the_handler_and_then_the_frontend_carries_on_unaware() {
        // What a first relay saw of a frontend: an early enable, the features, a TX kick.
        let (fe1, relay_end1) = UnixStream::pair().unwrap();
        let (handler1, relay_side1) = UnixStream::pair().unwrap();
        let shared1 = Shared::quiet(2);
        let setup = shared1.setup.clone();
        let ended1 = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let _t1 = start(relay_end1, relay_side1, shared1, ended1).unwrap();
        let enable = [1u8, 0, 0, 0, 1, 0, 0, 0];
        let features = (PROTOCOL_FEATURES_BIT | 1 << 32).to_le_bytes();
        (&fe1)
            .write_all(&msg(SET_VRING_ENABLE, FLAG_VERSION_1, &enable))
            .unwrap();
        (&fe1)
            .write_all(&msg(SET_FEATURES, FLAG_VERSION_1, &features))
            .unwrap();
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        send_kick(&fe1, 1, &kick);
        let mut hdr = [0u8; HDR_LEN];
        for _ in 0..3 {
            recv_header(&handler1, &mut hdr, Duration::from_secs(5)).unwrap();
            let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
            (&handler1).read_exact(&mut vec![0u8; size]).unwrap();
        }
        let log = std::mem::take(&mut *setup.lock().unwrap());

        // A second relay, as a new process makes it: the same frontend (here a fresh one,
        // which must see nothing of the replay), a new handler.
        let (fe2, relay_end2) = UnixStream::pair().unwrap();
        let (mut handler2, relay_side2) = UnixStream::pair().unwrap();
        let shared2 = Shared::quiet(2);
        let kicks2 = shared2.kicks.clone();
        let ended2 = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let (_t2, _replayed) =
            start_replaying(relay_end2, log.entries(), relay_side2, shared2, ended2).unwrap();
        // The handler gets the replay's opening query (as every frontend begins), the setup
        // as the first one did (the enable after the features), then the replay's closing
        // query; it answers both queries.
        let mut seen = Vec::new();
        for _ in 0..5 {
            let fds = recv_header(&handler2, &mut hdr, Duration::from_secs(5)).unwrap();
            let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
            (&handler2).read_exact(&mut vec![0u8; size]).unwrap();
            seen.push((
                u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]),
                fds.len(),
            ));
        }
        assert_eq!(
            seen,
            [
                (1, 0),
                (SET_FEATURES, 0),
                (SET_VRING_ENABLE, 0),
                (SET_VRING_KICK, 1),
                (1, 0)
            ]
        );
        for _ in 0..2 {
            handler2
                .write_all(&msg(1, FLAG_VERSION_1 | FLAG_REPLY, &features))
                .unwrap();
        }
        // The frontend's real kick is the new relay's too.
        kick.write(1).unwrap();
        let mut kept = None;
        kicks2.with(1, |fd| kept = Some(readable_now(fd)));
        assert_eq!(kept, Some(true));
        // Nothing of the replay reached the frontend; what it sends now passes, and replies
        // come back to it.
        std::thread::sleep(Duration::from_millis(100));
        fe2.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(
            (&fe2).read(&mut byte).map_err(|e| e.kind()).unwrap_err(),
            io::ErrorKind::WouldBlock,
            "the replay answered the frontend"
        );
        fe2.set_nonblocking(false).unwrap();
        (&fe2).write_all(&msg(1, FLAG_VERSION_1, &[])).unwrap();
        let (h, _) = read_msg(&mut handler2);
        assert_eq!(h[0], 1);
        handler2
            .write_all(&msg(1, FLAG_VERSION_1 | FLAG_REPLY, &[9; 8]))
            .unwrap();
        let mut fe2 = fe2;
        assert_eq!(read_msg(&mut fe2).1, vec![9; 8]);
    }

    #[test]
    fn a_relay_lets_go_after_the_replies_it_owes_and_leaves_the_frontend_open() {
        let (fe, relay_end) = UnixStream::pair().unwrap();
        let kept = relay_end.try_clone().unwrap();
        let (mut handler, relay_side) = UnixStream::pair().unwrap();
        let shared = Shared::quiet(2);
        let detach = shared.detach.clone();
        let ended = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let t = start(relay_end, relay_side, shared, ended).unwrap();
        // A first message, then a query whose reply is owed when the relay is asked to go.
        (&fe)
            .write_all(&msg(SET_OWNER_REQ, FLAG_VERSION_1, &[]))
            .unwrap();
        read_msg(&mut handler);
        (&fe).write_all(&msg(1, FLAG_VERSION_1, &[])).unwrap();
        read_msg(&mut handler);
        detach.ask();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "it let go with a reply owed");
        handler
            .write_all(&msg(1, FLAG_VERSION_1 | FLAG_REPLY, &[5; 8]))
            .unwrap();
        assert!(matches!(t.join().unwrap(), RelayEnd::Detached));
        let mut fe = fe;
        assert_eq!(
            read_msg(&mut fe).1,
            vec![5; 8],
            "the owed reply reached the frontend"
        );
        // The frontend's socket is open: what it sends now waits for whoever carries on.
        fe.write_all(&msg(1, FLAG_VERSION_1, &[])).unwrap();
        let mut kept = kept;
        let (h, _) = read_msg(&mut kept);
        assert_eq!(h[0], 1);
    }

    /// A relay between a frontend and a handler (both returned), and its detach handle.
    fn detachable() -> (UnixStream, UnixStream, Arc<Detach>, JoinHandle<RelayEnd>) {
        let (fe, relay_end) = UnixStream::pair().unwrap();
        let (handler, relay_side) = UnixStream::pair().unwrap();
        let shared = Shared::quiet(2);
        let detach = shared.detach.clone();
        let ended = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let t = start(relay_end, relay_side, shared, ended).unwrap();
        (fe, handler, detach, t)
    }

    /// Asks the relay to let go and waits for its answer: `Ok` once it did, the reason if
    /// it declined.
    fn ask_and_wait(detach: &Detach) -> Result<(), String> {
        detach.ask();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if detach.done() {
                return Ok(());
            }
            if let Some(r) = detach.declined() {
                return Err(r);
            }
            assert!(std::time::Instant::now() < deadline, "no answer");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_relay_declines_to_let_go_while_its_vm_migrates_and_carries_on() {
        let (fe, mut handler, detach, t) = detachable();
        let features = |bits: u64| msg(SET_FEATURES, FLAG_VERSION_1, &bits.to_le_bytes());
        (&fe).write_all(&features(LOG_ALL_BIT | 1 << 32)).unwrap();
        read_msg(&mut handler);
        let reason = ask_and_wait(&detach).unwrap_err();
        assert!(reason.contains("migrated"), "{reason}");
        assert!(!detach.done() && !t.is_finished());
        // Still relaying; once the migration is over, the next ask is taken.
        (&fe).write_all(&features(1 << 32)).unwrap();
        read_msg(&mut handler);
        assert_eq!(ask_and_wait(&detach), Ok(()));
        assert!(matches!(t.join().unwrap(), RelayEnd::Detached));
    }

    #[test]
    fn replies_are_owed_only_where_the_library_gives_them_and_one_never_given_declines() {
        const NEED: u32 = FLAG_VERSION_1 | FLAG_NEED_REPLY;
        const SET_PROTOCOL_FEATURES: u32 = 16;
        // NEED_REPLY before REPLY_ACK is in force: the library stays silent, nothing owed.
        let (fe, mut handler, detach, t) = detachable();
        (&fe).write_all(&msg(SET_OWNER_REQ, NEED, &[])).unwrap();
        read_msg(&mut handler);
        assert_eq!(ask_and_wait(&detach), Ok(()));
        assert!(matches!(t.join().unwrap(), RelayEnd::Detached));

        // Once asked for its features and given REPLY_ACK, it answers: a reply it never
        // sends makes the relay decline (after 2 s) and carry on.
        let (mut fe, mut handler, detach, t) = detachable();
        (&fe).write_all(&msg(1, FLAG_VERSION_1, &[])).unwrap();
        read_msg(&mut handler);
        handler
            .write_all(&msg(1, FLAG_VERSION_1 | FLAG_REPLY, &[0; 8]))
            .unwrap();
        read_msg(&mut fe);
        (&fe)
            .write_all(&msg(
                SET_PROTOCOL_FEATURES,
                NEED,
                &(1u64 << 3).to_le_bytes(),
            ))
            .unwrap();
        read_msg(&mut handler);
        handler
            .write_all(&msg(
                SET_PROTOCOL_FEATURES,
                FLAG_VERSION_1 | FLAG_REPLY,
                &[0; 8],
            ))
            .unwrap();
        read_msg(&mut fe);
        (&fe).write_all(&msg(SET_OWNER_REQ, NEED, &[])).unwrap();
        read_msg(&mut handler);
        let declined = ask_and_wait(&detach).unwrap_err();
        assert!(declined.contains("still owes its VM 1"), "{declined}");
        assert!(!t.is_finished());
        // Carrying on: the late reply reaches the frontend, and the next ask is taken.
        handler
            .write_all(&msg(SET_OWNER_REQ, FLAG_VERSION_1 | FLAG_REPLY, &[0; 8]))
            .unwrap();
        read_msg(&mut fe);
        assert_eq!(ask_and_wait(&detach), Ok(()));
        assert!(matches!(t.join().unwrap(), RelayEnd::Detached));
    }

    #[test]
    fn an_ask_withdrawn_before_the_relay_answers_changes_nothing() {
        let (fe, mut handler, detach, t) = detachable();
        // Before its first message the relay does not look at asks.
        detach.ask();
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            detach.withdraw(),
            "the relay let go before the first message"
        );
        (&fe)
            .write_all(&msg(SET_OWNER_REQ, FLAG_VERSION_1, &[]))
            .unwrap();
        read_msg(&mut handler);
        (&fe).write_all(&msg(1, FLAG_VERSION_1, &[])).unwrap();
        read_msg(&mut handler);
        assert!(!t.is_finished() && !detach.done());
        drop(fe);
        assert!(matches!(t.join().unwrap(), RelayEnd::Closed));
    }

    #[test]
    fn oversized_messages_end_the_relay() {
        let (mut fe, relay_end) = UnixStream::pair().unwrap();
        let (mut handler, t) = start_pair(relay_end);
        fe.write_all(&header(1, FLAG_VERSION_1, 1 << 20)).unwrap();
        assert!(matches!(
            t.join().unwrap(),
            RelayEnd::Refused(Refused::TooLong { .. })
        ));
        let mut buf = [0u8; 1];
        assert_eq!(handler.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn a_region_larger_than_its_file_never_reaches_the_handler() {
        let (fe, relay_end) = UnixStream::pair().unwrap();
        let (mut handler, t) = start_pair(relay_end);
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let len = file.metadata().unwrap().len();
        let mut body = 1u64.to_le_bytes().to_vec();
        for w in [0, len + 4096, 0x7f00_0000_0000, 0] {
            body.extend_from_slice(&u64::to_le_bytes(w));
        }
        fe.send_with_fds(
            &[&header(5, FLAG_VERSION_1, body.len() as u32)[..], &body[..]],
            &[file.as_raw_fd()],
        )
        .unwrap();
        assert!(matches!(
            t.join().unwrap(),
            RelayEnd::Refused(Refused::BadRegion { index: 0, .. })
        ));
        let mut buf = [0u8; 1];
        assert_eq!(handler.read(&mut buf).unwrap(), 0);
    }

    /// A memfd-like file of `len` bytes.
    fn ram(len: u64) -> std::fs::File {
        super::super::unlinked_file(len)
    }

    fn send_region(fe: &UnixStream, request: u32, gpa: u64, uaddr: u64, fd: Option<RawFd>) {
        let mut body = vec![0u8; 8];
        for w in [gpa, 0x1000, uaddr, 0] {
            body.extend_from_slice(&w.to_le_bytes());
        }
        let hdr = header(request, FLAG_VERSION_1 | FLAG_NEED_REPLY, body.len() as u32);
        let fds: Vec<RawFd> = fd.into_iter().collect();
        fe.send_with_fds(&[&hdr[..], &body[..]], &fds).unwrap();
    }

    #[test]
    fn a_region_added_once_per_queue_pair_reaches_the_handler_once() {
        use super::super::message_check::{ADD_MEM_REG, REM_MEM_REG};
        let (mut fe, relay_end) = UnixStream::pair().unwrap();
        let (handler, t) = start_pair(relay_end);
        let file = ram(0x1000);
        let next_from_handler = || {
            let mut hdr = [0u8; HDR_LEN];
            let fds = recv_header(&handler, &mut hdr, Duration::from_secs(5)).unwrap();
            let h = Header::parse(&hdr);
            let mut body = vec![0u8; h.size as usize];
            (&handler).read_exact(&mut body).unwrap();
            (h.request, body[8..16].to_vec(), fds.len())
        };
        let ack = |h: &mut UnixStream| read_msg(h);
        // Queue pair 0 adds the region: the handler maps it (and would answer).
        send_region(&fe, ADD_MEM_REG, 0, 0x5000, Some(file.as_raw_fd()));
        assert_eq!(
            next_from_handler(),
            (ADD_MEM_REG, 0u64.to_le_bytes().to_vec(), 1)
        );
        // Queue pair 1 adds the same region: the relay answers, the handler sees nothing.
        send_region(&fe, ADD_MEM_REG, 0, 0x5000, Some(file.as_raw_fd()));
        let (h, b) = ack(&mut fe);
        assert_eq!(Header::parse(&h).request, ADD_MEM_REG);
        assert_eq!(Header::parse(&h).flags, FLAG_VERSION_1 | FLAG_REPLY);
        assert_eq!(b, 0u64.to_le_bytes());
        // The first removal is the relay's, the second the handler's.
        send_region(&fe, REM_MEM_REG, 0, 0x5000, None);
        let (h, _) = ack(&mut fe);
        assert_eq!(Header::parse(&h).request, REM_MEM_REG);
        send_region(&fe, REM_MEM_REG, 0, 0x5000, None);
        assert_eq!(next_from_handler().0, REM_MEM_REG);
        // A different region over the same guest addresses ends the connection.
        send_region(&fe, ADD_MEM_REG, 0x2000, 0x9000, Some(file.as_raw_fd()));
        assert_eq!(next_from_handler().0, ADD_MEM_REG);
        send_region(&fe, ADD_MEM_REG, 0x2000, 0x7000, Some(file.as_raw_fd()));
        assert!(matches!(
            t.join().unwrap(),
            RelayEnd::Refused(Refused::Overlap { .. })
        ));
    }

    /// A relay whose deadlines are `ms` milliseconds.
    fn start_hurried(relay_end: UnixStream, ms: u64) -> (UnixStream, JoinHandle<RelayEnd>) {
        let (handler, relay_side) = UnixStream::pair().unwrap();
        let ended = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let d = Duration::from_millis(ms);
        let deadlines = Deadlines {
            first_message: d,
            whole_message: d,
        };
        let t = start_with(relay_end, relay_side, Shared::quiet(2), ended, deadlines).unwrap();
        (handler, t)
    }

    #[test]
    fn a_silent_frontend_or_half_a_message_ends_the_relay_but_quiet_after_hello_does_not() {
        // Connects and says nothing.
        let (_fe, relay_end) = UnixStream::pair().unwrap();
        let (_h, t) = start_hurried(relay_end, 200);
        let started = std::time::Instant::now();
        assert!(matches!(
            t.join().unwrap(),
            RelayEnd::Refused(Refused::Stalled {
                what: "no message",
                ..
            })
        ));
        assert!(started.elapsed() < Duration::from_secs(2));
        // Half a header, then nothing.
        let (mut fe, relay_end) = UnixStream::pair().unwrap();
        let (_h, t) = start_hurried(relay_end, 200);
        fe.write_all(&header(1, FLAG_VERSION_1, 0)[..5]).unwrap();
        assert!(matches!(
            t.join().unwrap(),
            RelayEnd::Refused(Refused::Stalled { .. })
        ));
        // A whole header but half its body.
        let (mut fe, relay_end) = UnixStream::pair().unwrap();
        let (_h, t) = start_hurried(relay_end, 200);
        fe.write_all(&header(2, FLAG_VERSION_1, 8)).unwrap();
        fe.write_all(&[0; 3]).unwrap();
        assert!(matches!(
            t.join().unwrap(),
            RelayEnd::Refused(Refused::Stalled {
                what: "half a message",
                ..
            })
        ));
        // One message, then quiet for longer than the deadlines: still relayed after.
        let (mut fe, relay_end) = UnixStream::pair().unwrap();
        let (mut h, t) = start_hurried(relay_end, 100);
        fe.write_all(&msg(1, FLAG_VERSION_1, &[])).unwrap();
        assert_eq!(read_msg(&mut h).0[0], 1);
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            !t.is_finished(),
            "a frontend quiet between messages was cut off"
        );
        fe.write_all(&msg(3, FLAG_VERSION_1, &[])).unwrap();
        assert_eq!(read_msg(&mut h).0[0], 3);
    }

    #[test]
    fn a_frontend_hanging_up_is_a_plain_close() {
        let (fe, relay_end) = UnixStream::pair().unwrap();
        let (_handler, t) = start_pair(relay_end);
        drop(fe);
        assert!(matches!(t.join().unwrap(), RelayEnd::Closed));
    }
}

#[cfg(test)]
mod migration_tests {
    use super::*;
    use crate::vhost_user::message_check::ADD_MEM_REG;

    /// A relay for a one-queue-pair connection, and what it shares.
    fn start_shared(relay_end: UnixStream) -> (UnixStream, JoinHandle<RelayEnd>, Shared) {
        let (handler, relay_side) = UnixStream::pair().unwrap();
        let ended = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let shared = Shared::quiet(2);
        let t = start(relay_end, relay_side, shared.clone(), ended).unwrap();
        (handler, t, shared)
    }

    fn read_msg(s: &UnixStream) -> (Header, Vec<u8>, usize) {
        let mut h = [0u8; HDR_LEN];
        let fds = recv_header(s, &mut h, Duration::from_secs(5)).unwrap();
        let h = Header::parse(&h);
        let mut b = vec![0u8; h.size as usize];
        (&*s).read_exact(&mut b).unwrap();
        (h, b, fds.len())
    }

    fn send(fe: &UnixStream, request: u32, flags: u32, body: &[u8], fds: &[RawFd]) {
        let hdr = header(request, flags, body.len() as u32);
        fe.send_with_fds(&[&hdr[..], body], fds).unwrap();
    }

    /// One region of `size` bytes at guest address `gpa`, added with ADD_MEM_REG.
    fn add_region(fe: &UnixStream, gpa: u64, size: u64) -> std::fs::File {
        let file = crate::vhost_user::unlinked_file(size);
        let mut body = vec![0u8; 8];
        for w in [gpa, size, 0x7f00_0000_0000 + gpa, 0] {
            body.extend_from_slice(&w.to_le_bytes());
        }
        send(fe, ADD_MEM_REG, FLAG_VERSION_1, &body, &[file.as_raw_fd()]);
        file
    }

    fn log_base(fe: &UnixStream, size: u64, offset: u64, fd: Option<RawFd>) {
        let mut body = size.to_le_bytes().to_vec();
        body.extend_from_slice(&offset.to_le_bytes());
        let fds: Vec<RawFd> = fd.into_iter().collect();
        send(fe, SET_LOG_BASE, FLAG_VERSION_1, &body, &fds);
    }

    fn set_features(fe: &UnixStream, features: u64) {
        send(
            fe,
            SET_FEATURES,
            FLAG_VERSION_1,
            &features.to_le_bytes(),
            &[],
        );
    }

    #[test]
    fn a_log_is_mapped_by_the_relay_answered_and_switched_on_by_log_all() {
        let (fe, relay_end) = UnixStream::pair().unwrap();
        let (handler, t, shared) = start_shared(relay_end);
        let m = &shared.migration;
        // 16 MiB of guest memory needs 512 bytes of log.
        let _ram = add_region(&fe, 0, 16 << 20);
        assert_eq!(read_msg(&handler).0.request, ADD_MEM_REG);
        let log_file = crate::vhost_user::unlinked_file(8192);
        log_base(&fe, 4096, 4096, Some(log_file.as_raw_fd()));
        // Answered by the relay with the log echoed; the handler never sees it.
        let (h, body, _) = read_msg(&fe);
        assert_eq!(
            (h.request, h.flags),
            (SET_LOG_BASE, FLAG_VERSION_1 | FLAG_REPLY)
        );
        assert_eq!(body[..8], 4096u64.to_le_bytes());
        assert!(
            m.has_log() && !m.logging(),
            "mapped, but LOG_ALL not acked yet"
        );

        // LOG_ALL on: logging; the features go on to the handler as they came.
        set_features(&fe, LOG_ALL_BIT | PROTOCOL_FEATURES_BIT);
        let (h, body, _) = read_msg(&handler);
        assert_eq!(h.request, SET_FEATURES);
        assert_eq!(body, (LOG_ALL_BIT | PROTOCOL_FEATURES_BIT).to_le_bytes());
        assert!(m.logging());
        assert!(m.active_log().is_some());

        // The used ring's log address, noted and passed on.
        let mut addr = Vec::new();
        addr.extend_from_slice(&1u32.to_le_bytes());
        addr.extend_from_slice(&VRING_ADDR_F_LOG.to_le_bytes());
        for w in [0x1000u64, 0x3000, 0x2000, 0x3000] {
            addr.extend_from_slice(&w.to_le_bytes());
        }
        send(&fe, SET_VRING_ADDR, FLAG_VERSION_1, &addr, &[]);
        assert_eq!(read_msg(&handler).0.request, SET_VRING_ADDR);
        let active = m.active_log().unwrap();
        assert_eq!(active.for_ring(1).used_at, Some(0x3000));
        assert_eq!(active.for_ring(0).used_at, None);
        drop(active);

        // A second SET_LOG_BASE (QEMU 7.2 sends one per queue pair) replaces the first.
        log_base(&fe, 4096, 0, Some(log_file.as_raw_fd()));
        assert_eq!(read_msg(&fe).0.request, SET_LOG_BASE);
        assert!(m.logging());

        // LOG_ALL off: no more logging, the log stays mapped until replaced.
        set_features(&fe, PROTOCOL_FEATURES_BIT);
        assert_eq!(read_msg(&handler).0.request, SET_FEATURES);
        assert!(!m.logging() && m.has_log());
        drop(fe);
        assert!(matches!(t.join().unwrap(), RelayEnd::Closed));
    }

    #[test]
    fn logs_that_do_not_fit_their_file_or_guest_memory_end_the_connection() {
        let cases: [(u64, u64, bool, &str); 4] = [
            // (size, offset, with an fd, what the refusal says)
            (4096, 8192, true, "past the end"),
            (256, 0, true, "needs 512"),
            (4096, 0, false, "without its shared memory"),
            (u64::MAX, 1, true, "past the end"),
        ];
        for (size, offset, with_fd, says) in cases {
            let (fe, relay_end) = UnixStream::pair().unwrap();
            let (handler, t, shared) = start_shared(relay_end);
            let _ram = add_region(&fe, 0, 16 << 20);
            assert_eq!(read_msg(&handler).0.request, ADD_MEM_REG);
            let log_file = crate::vhost_user::unlinked_file(8192);
            log_base(&fe, size, offset, with_fd.then_some(log_file.as_raw_fd()));
            match t.join().unwrap() {
                RelayEnd::Refused(r @ Refused::BadLog(_)) => {
                    assert!(r.to_string().contains(says), "{r} for {size}/{offset}")
                }
                other => panic!("{other:?} for {size}/{offset}"),
            }
            assert!(!shared.migration.has_log());
        }
    }

    #[test]
    fn memory_added_beyond_the_log_while_logging_ends_the_connection() {
        let (fe, relay_end) = UnixStream::pair().unwrap();
        let (handler, t, _shared) = start_shared(relay_end);
        let _ram = add_region(&fe, 0, 16 << 20);
        assert_eq!(read_msg(&handler).0.request, ADD_MEM_REG);
        // 512 bytes of log cover exactly 16 MiB.
        let log_file = crate::vhost_user::unlinked_file(512);
        log_base(&fe, 512, 0, Some(log_file.as_raw_fd()));
        assert_eq!(read_msg(&fe).0.request, SET_LOG_BASE);
        set_features(&fe, LOG_ALL_BIT | PROTOCOL_FEATURES_BIT);
        assert_eq!(read_msg(&handler).0.request, SET_FEATURES);
        let _more = add_region(&fe, 16 << 20, 1 << 20);
        match t.join().unwrap() {
            RelayEnd::Refused(r @ Refused::BadLog(_)) => {
                assert!(r.to_string().contains("while logging"), "{r}")
            }
            other => panic!("{other:?}"),
        }
    }

    fn vring_addr(index: u32, flags: u32, desc: u64, log: u64) -> Vec<u8> {
        let mut b = index.to_le_bytes().to_vec();
        b.extend_from_slice(&flags.to_le_bytes());
        for w in [desc, desc + 0x2000, desc + 0x1000, log] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b
    }

    #[test]
    fn switching_logging_on_a_running_ring_never_reaches_the_library() {
        use crate::vhost_user::message_check::GET_VRING_BASE;
        let (fe, relay_end) = UnixStream::pair().unwrap();
        let (handler, _t, shared) = start_shared(relay_end);
        let acked = FLAG_VERSION_1 | FLAG_NEED_REPLY;
        // Set up and started: the addresses reach the library.
        send(
            &fe,
            SET_VRING_ADDR,
            acked,
            &vring_addr(0, 0, 0x10000, 0),
            &[],
        );
        assert_eq!(read_msg(&handler).0.request, SET_VRING_ADDR);
        let nofd = (1u64 << 8).to_le_bytes();
        send(&fe, SET_VRING_KICK, FLAG_VERSION_1, &nofd, &[]);
        assert_eq!(read_msg(&handler).0.request, SET_VRING_KICK);
        // The same addresses with the log flag: answered here, noted.
        let log_on = vring_addr(0, VRING_ADDR_F_LOG, 0x10000, 0x12000);
        send(&fe, SET_VRING_ADDR, acked, &log_on, &[]);
        let (h, ack, _) = read_msg(&fe);
        assert_eq!(
            (h.request, ack),
            (SET_VRING_ADDR, 0u64.to_le_bytes().to_vec())
        );
        let m = &shared.migration;
        m.set_logging(true);
        let f = crate::vhost_user::unlinked_file(4096);
        m.set_log(Some(Arc::new(DirtyLog::map(&f, 4096, 0, 1 << 20).unwrap())));
        assert_eq!(m.active_log().unwrap().for_ring(0).used_at, Some(0x12000));
        // New addresses go through.
        send(
            &fe,
            SET_VRING_ADDR,
            acked,
            &vring_addr(0, 0, 0x20000, 0),
            &[],
        );
        let (h, body, _) = read_msg(&handler);
        assert_eq!(
            (h.request, body[8..16].to_vec()),
            (SET_VRING_ADDR, 0x20000u64.to_le_bytes().to_vec())
        );
        assert_eq!(m.active_log().unwrap().for_ring(0).used_at, None);
        // Stopped, then set up again at the same addresses: the library must see them (it
        // reads the used index anew).
        send(
            &fe,
            GET_VRING_BASE,
            FLAG_VERSION_1,
            &vring_addr(0, 0, 0, 0)[..8],
            &[],
        );
        assert_eq!(read_msg(&handler).0.request, GET_VRING_BASE);
        send(
            &fe,
            SET_VRING_ADDR,
            acked,
            &vring_addr(0, 0, 0x20000, 0),
            &[],
        );
        assert_eq!(read_msg(&handler).0.request, SET_VRING_ADDR);
    }

    #[test]
    fn after_a_reset_the_same_ring_addresses_reach_the_library_again() {
        let (fe, relay_end) = UnixStream::pair().unwrap();
        let (handler, _t, _shared) = start_shared(relay_end);
        let acked = FLAG_VERSION_1 | FLAG_NEED_REPLY;
        let addrs = vring_addr(0, 0, 0x10000, 0);
        send(&fe, SET_VRING_ADDR, acked, &addrs, &[]);
        assert_eq!(read_msg(&handler).0.request, SET_VRING_ADDR);
        let nofd = (1u64 << 8).to_le_bytes();
        send(&fe, SET_VRING_KICK, FLAG_VERSION_1, &nofd, &[]);
        assert_eq!(read_msg(&handler).0.request, SET_VRING_KICK);
        // The frontend starts over without stopping the ring first.
        send(&fe, RESET_OWNER, FLAG_VERSION_1, &[], &[]);
        assert_eq!(read_msg(&handler).0.request, RESET_OWNER);
        // Even with the log flag alone changed, the addresses go to the library: the relay
        // no longer knows the ring as running with them.
        let logged = vring_addr(0, VRING_ADDR_F_LOG, 0x10000, 0x12000);
        send(&fe, SET_VRING_ADDR, acked, &logged, &[]);
        let (h, body, _) = read_msg(&handler);
        assert_eq!((h.request, body), (SET_VRING_ADDR, logged));
    }

    #[test]
    fn send_rarp_is_answered_by_the_relay_and_bad_addresses_refused() {
        let (fe, relay_end) = UnixStream::pair().unwrap();
        let (handler, t, shared) = start_shared(relay_end);
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let mut body = mac.to_vec();
        body.extend_from_slice(&[0, 0]);
        send(&fe, SEND_RARP, FLAG_VERSION_1 | FLAG_NEED_REPLY, &body, &[]);
        let (h, ack, _) = read_msg(&fe);
        assert_eq!((h.request, ack), (SEND_RARP, 0u64.to_le_bytes().to_vec()));
        assert_eq!(shared.migration.take_announce(), Some(mac));
        // The handler saw nothing of it: the next thing it gets is the next message.
        set_features(&fe, PROTOCOL_FEATURES_BIT);
        assert_eq!(read_msg(&handler).0.request, SET_FEATURES);
        let mut bad = [0x01, 0, 0x5e, 0, 0, 1].to_vec();
        bad.extend_from_slice(&[0, 0]);
        send(&fe, SEND_RARP, FLAG_VERSION_1, &bad, &[]);
        match t.join().unwrap() {
            RelayEnd::Refused(r @ Refused::BadAnnounce { .. }) => {
                assert!(r.to_string().contains("01:00:5e:00:00:01"), "{r}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(shared.migration.take_announce(), None);
    }
}
