//! One segment's EVPN control: a thread that keeps the segment's kernel mirror, writes the
//! host's MAC addresses on it for zebra to advertise, and hands the routes zebra installs
//! to the data path as they come (netlink's neighbour notifications, a full read at start
//! and every [`RESYNC`] in case one was lost).
//!
//! While FRR is not running (zebra or bgpd stopped or crashed), or after a gap (FRR
//! restarted, the mirror made again), the routes in effect are kept ([`crate::hold`]): the
//! data path forwards on them, stale, until zebra has them all again or the hold time
//! passes. A zebra killed leaves its entries in the kernel: the control deletes them, so
//! that the next zebra starts from a clean mirror. A deletion is followed [`GRACE`] after
//! it came, and only if FRR still runs then: zebra deletes everything when bgpd dies, and
//! that is no withdrawal.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, MulticastGroup};
use tokio::sync::watch;

use crate::hold::{Follower, FrrChange, FrrProcesses, Settled};
use crate::mirror::{mac_text, Mirror, MirrorSpec};
use crate::routes::{advert_changes, read_entry, KernelEntry, Mac, RemoteRoutes};
use crate::EvpnError;

/// How the control knows FRR runs, and how long it keeps routes over a gap.
#[derive(Debug, Clone)]
pub struct FrrWatch {
    /// FRR's run directory, where `zebra.pid` and `bgpd.pid` are.
    pub run_dir: std::path::PathBuf,
    /// How long kept routes stay once FRR is back (unless all come back sooner).
    pub restart_hold: Duration,
}

/// How often the host's MAC addresses are compared with those advertised (and the data
/// path asked to follow the routes again, for what it could not take the last time).
pub const TICK: Duration = Duration::from_millis(100);
/// How often the mirror's whole table is read again.
pub const RESYNC: Duration = Duration::from_secs(10);
/// How long a deletion waits before the data path follows it: time for a dying bgpd to
/// be seen dead (zebra deletes its routes when it goes).
pub const GRACE: Duration = Duration::from_millis(25);
/// How long after a failure the control tries again.
const RETRY: Duration = Duration::from_secs(1);
/// The notification socket's receive buffer: a burst of routes must not overflow it.
const RCVBUF: usize = 4 << 20;

/// The data path's side of a segment.
pub trait Segment: Send + 'static {
    /// This host's MAC addresses on the segment now (learnt or configured on its own ports).
    fn local_macs(&mut self) -> BTreeSet<Mac>;
    /// Makes the data path follow `routes`: called at each change and every [`TICK`].
    fn follow(&mut self, routes: &RemoteRoutes);
}

/// Where a segment's control stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ControlState {
    /// Making or reading the mirror.
    #[default]
    Starting,
    /// Advertising and following the routes.
    Following,
    /// FRR (zebra or bgpd) is not running, or came back less than the hold time ago: the
    /// data path forwards on the routes it had (kept), plus those installed since.
    Stale,
    /// Failed (the reason); tried again every second.
    Failed(String),
}

impl std::fmt::Display for ControlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlState::Starting => f.write_str("starting"),
            ControlState::Following => f.write_str("following"),
            ControlState::Stale => f.write_str("stale"),
            ControlState::Failed(_) => f.write_str("failed"),
        }
    }
}

/// What a segment's control shows.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub state: ControlState,
    /// Local MAC addresses on the mirror's advertise port.
    pub advertised: usize,
    /// The routes the data path follows.
    pub routes: RemoteRoutes,
    /// Whether FRR runs (zebra and bgpd, as their pid files say).
    pub frr_running: bool,
}

/// A control's status, shared: what it shows now, however the controller is held.
#[derive(Debug, Clone)]
pub struct StatusHandle(Arc<Mutex<Status>>);

impl StatusHandle {
    pub fn get(&self) -> Status {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How a control ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The segment goes from this host: the mirror is deleted and zebra withdraws it.
    Withdraw,
    /// Another process carries the segment on: the mirror stays as it is.
    HandOver,
}

/// A running segment control.
pub struct Controller {
    stop: watch::Sender<Option<Ending>>,
    status: Arc<Mutex<Status>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Controller {
    /// Starts the control of the segment `spec` describes for `segment`, in a thread named
    /// `name`.
    pub fn start(
        name: String,
        spec: MirrorSpec,
        frr: FrrWatch,
        segment: impl Segment,
    ) -> std::io::Result<Controller> {
        let (stop, stopping) = watch::channel(None);
        let status = Arc::new(Mutex::new(Status::default()));
        let shown = status.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            runtime.block_on(control(spec, frr, segment, stopping, shown));
        })?;
        Ok(Controller {
            stop,
            status,
            thread: Some(thread),
        })
    }

    /// What the control shows now.
    pub fn status(&self) -> Status {
        self.status_handle().get()
    }

    /// Where the status is kept: readable without the controller (for /metrics).
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle(self.status.clone())
    }

    /// Ends the control as `ending` says, and waits for it.
    pub fn stop(&mut self, ending: Ending) {
        let _ = self.stop.send(Some(ending));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop(Ending::HandOver);
    }
}

/// Runs the control until told to stop: follows, and after a failure tries again.
async fn control(
    spec: MirrorSpec,
    frr: FrrWatch,
    mut segment: impl Segment,
    mut stopping: watch::Receiver<Option<Ending>>,
    status: Arc<Mutex<Status>>,
) {
    let set = |f: &dyn Fn(&mut Status)| f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
    let mut last_failure = String::new();
    let mut gap = Gap {
        follower: Follower::new(frr.restart_hold),
        frr: FrrProcesses::new(frr.run_dir.clone()),
        followed: None,
    };
    loop {
        let outcome = follow(spec, &mut gap, &mut segment, &mut stopping, &status).await;
        let failure = match outcome {
            Ok(Some(ending)) => {
                if ending == Ending::Withdraw {
                    if let Err(e) = withdraw(spec).await {
                        tracing::warn!(vni = spec.vni, error = %e,
                            "cannot delete the segment's EVPN mirror");
                    }
                }
                return;
            }
            // The mirror changed under us: made again at once, the routes kept meanwhile.
            Ok(None) => {
                if let Some(r) = gap.followed.take() {
                    gap.follower.lose(&r);
                }
                continue;
            }
            Err(e) => e.to_string(),
        };
        if failure != last_failure {
            tracing::warn!(vni = spec.vni, error = %failure,
                "EVPN control of the segment failed; trying again every second");
            last_failure.clone_from(&failure);
        }
        set(&|s| s.state = ControlState::Failed(failure.clone()));
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stopping.changed() => {}
        }
        if let Some(ending) = *stopping.borrow() {
            if ending == Ending::Withdraw {
                let _ = withdraw(spec).await;
            }
            return;
        }
    }
}

/// Deletes the mirror, on a connection of its own.
async fn withdraw(spec: MirrorSpec) -> Result<(), EvpnError> {
    let (conn, h, _) = rtnetlink::new_connection()
        .map_err(|e| EvpnError::System(format!("cannot open a netlink socket: {e}")))?;
    let conn = tokio::spawn(conn);
    let r = Mirror::remove(&h, spec.vni).await;
    conn.abort();
    r
}

/// What carries over from one following of the mirror to the next (after a failure, or
/// the mirror made again): the routes kept, FRR's watch.
struct Gap {
    follower: Follower,
    frr: FrrProcesses,
    /// The kernel's routes as last followed, if following.
    followed: Option<RemoteRoutes>,
}

/// The mirror's routes and advertised addresses as the kernel has them now.
async fn read_all(m: &Mirror, h: &Handle) -> Result<(RemoteRoutes, BTreeSet<Mac>), EvpnError> {
    let mut routes = RemoteRoutes::default();
    let mut advertised = BTreeSet::new();
    for e in m.dump(h).await? {
        match e {
            KernelEntry::Advertised { mac } => {
                advertised.insert(mac);
            }
            other => {
                routes.apply(other, true);
            }
        }
    }
    Ok((routes, advertised))
}

/// Makes (or adopts) the mirror and follows it until told to stop (`Some`), or until one
/// of its devices goes or goes down (`None`).
async fn follow(
    spec: MirrorSpec,
    gap: &mut Gap,
    segment: &mut impl Segment,
    stopping: &mut watch::Receiver<Option<Ending>>,
    status: &Mutex<Status>,
) -> Result<Option<Ending>, EvpnError> {
    let sys = |what: &str, e: std::io::Error| EvpnError::System(format!("{what}: {e}"));
    // Notifications first, so that nothing changes unseen between the read and them.
    let (mut mconn, _, mut events) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Neigh, MulticastGroup::Link])
            .map_err(|e| sys("cannot open a netlink notification socket", e))?;
    {
        use netlink_sys::AsyncSocket;
        mconn
            .socket_mut()
            .socket_ref()
            .set_rx_buf_sz(RCVBUF)
            .map_err(|e| sys("cannot size the netlink notification socket", e))?;
    }
    let _mconn = AbortOnDrop(tokio::spawn(mconn));
    let (conn, h, _) =
        rtnetlink::new_connection().map_err(|e| sys("cannot open a netlink socket", e))?;
    let _conn = AbortOnDrop(tokio::spawn(conn));

    let mirror = Mirror::ensure(&h, spec).await?;
    let (mut routes, mut advertised) = read_all(&mirror, &h).await?;
    let mut follower = Following {
        spec,
        gap,
        segment,
        status,
    };
    if !follower.gap.frr.was_running() && !follower.gap.follower.is_holding() {
        // No FRR: what the kernel has was left by one that died.
        follower.frr_gone(&mirror, &h, &mut routes).await;
    } else if follower.gap.follower.is_holding() && follower.gap.frr.was_running() {
        // A mirror made again under a running zebra: the hold starts now.
        follower.gap.follower.back(&routes, Instant::now());
    }
    follower.apply(&routes);
    follower.set(|s| s.advertised = advertised.len());
    tracing::info!(
        vni = spec.vni,
        remote_macs = routes.macs.len(),
        flood = routes.flood.len(),
        advertised = advertised.len(),
        "EVPN control of the segment following its routes"
    );

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resync = tokio::time::interval(RESYNC);
    resync.tick().await;
    // When deletions wait to be followed (see GRACE).
    let mut deferred: Option<tokio::time::Instant> = None;
    loop {
        let grace_over = async {
            match deferred {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stopping.changed() => {
                if let Some(ending) = *stopping.borrow() {
                    return Ok(Some(ending));
                }
            }
            event = events.next() => {
                let Some((first, _)) = event else {
                    return Err(EvpnError::System("the netlink notification socket closed".into()));
                };
                // Everything that came meanwhile, then the data path once.
                let mut changed = false;
                let mut deleted = false;
                let mut next = Some(first);
                while let Some(msg) = next.take() {
                    let (entry, present) = match msg.payload {
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
                            (read_entry(&n, mirror.devices), true)
                        }
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(n)) => {
                            (read_entry(&n, mirror.devices), false)
                        }
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l))
                            if mirror.owns(l.header.index) =>
                        {
                            tracing::warn!(vni = spec.vni, interface = l.header.index,
                                "an interface of the segment's EVPN mirror was deleted: making it again");
                            return Ok(None);
                        }
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l))
                            if mirror.owns(l.header.index)
                                && !l.header.flags.contains(LinkFlags::Up) =>
                        {
                            // Seen as it is now: the news may be of the mirror being made.
                            if !mirror.is_whole(&h).await? {
                                tracing::warn!(vni = spec.vni, interface = l.header.index,
                                    "an interface of the segment's EVPN mirror was taken down: making it again");
                                return Ok(None);
                            }
                            (None, false)
                        }
                        _ => (None, false),
                    };
                    match entry {
                        Some(KernelEntry::Advertised { mac }) if present => {
                            advertised.insert(mac);
                        }
                        Some(KernelEntry::Advertised { mac }) => {
                            advertised.remove(&mac);
                        }
                        Some(e) => {
                            let c = routes.apply(e, present);
                            changed |= c;
                            deleted |= c && !present;
                        }
                        None => {}
                    }
                    if let Ok((m, _)) = events.try_recv() {
                        next = Some(m);
                    }
                }
                if deleted {
                    deferred.get_or_insert_with(|| tokio::time::Instant::now() + GRACE);
                } else if changed && deferred.is_none() {
                    follower.apply(&routes);
                }
            }
            _ = grace_over => {
                deferred = None;
                // FRR dying deletes: held, not followed.
                if follower.watch_frr(&mirror, &h, &mut routes).await == FrrChange::Same {
                    follower.apply(&routes);
                }
            }
            _ = tick.tick() => {
                follower.watch_frr(&mirror, &h, &mut routes).await;
                let want = follower.segment.local_macs();
                let (add, del) = advert_changes(&want, &advertised);
                for mac in add {
                    match mirror.advertise(&h, mac).await {
                        Ok(()) => {
                            advertised.insert(mac);
                        }
                        Err(e) => tracing::debug!(vni = spec.vni, mac = %mac_text(mac), error = %e,
                            "cannot advertise a local address yet"),
                    }
                }
                for mac in del {
                    mirror.unadvertise(&h, mac).await?;
                    advertised.remove(&mac);
                }
                // Again for what the data path could not take the last time.
                if deferred.is_none() {
                    follower.apply(&routes);
                }
                let n = advertised.len();
                follower.set(|s| s.advertised = n);
            }
            _ = resync.tick() => {
                let (now, adv) = read_all(&mirror, &h).await?;
                if now != routes {
                    tracing::debug!(vni = spec.vni, "EVPN routes read again differ from those followed");
                    routes = now;
                    deferred.get_or_insert_with(|| tokio::time::Instant::now() + GRACE);
                }
                advertised = adv;
            }
        }
    }
}

/// A mirror being followed.
struct Following<'a, S: Segment> {
    spec: MirrorSpec,
    gap: &'a mut Gap,
    segment: &'a mut S,
    status: &'a Mutex<Status>,
}

impl<S: Segment> Following<'_, S> {
    fn set(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Hands the data path what it must follow, the kernel having `routes`; ends a hold
    /// that is over.
    fn apply(&mut self, routes: &RemoteRoutes) {
        let vni = self.spec.vni;
        match self.gap.follower.settle(routes, Instant::now()) {
            Some(Settled::AllBack) => tracing::info!(
                vni,
                "EVPN routes kept over the gap all came back: following zebra's again"
            ),
            Some(Settled::HoldOver(dropped)) => tracing::warn!(
                vni,
                dropped,
                "EVPN routes kept over the gap did not all come back within the hold time: \
                 following zebra's, the others dropped"
            ),
            None => {}
        }
        let effective = self.gap.follower.effective(routes);
        self.segment.follow(&effective);
        self.gap.followed = Some(routes.clone());
        let (stale, frr) = (self.gap.follower.is_holding(), self.gap.frr.was_running());
        self.set(|s| {
            s.state = if stale {
                ControlState::Stale
            } else {
                ControlState::Following
            };
            s.routes = effective;
            s.frr_running = frr;
        });
    }

    /// Looks whether FRR went or came back; what it found.
    async fn watch_frr(
        &mut self,
        mirror: &Mirror,
        h: &Handle,
        routes: &mut RemoteRoutes,
    ) -> FrrChange {
        let change = self.gap.frr.check();
        match change {
            FrrChange::Same => {}
            FrrChange::Gone => self.frr_gone(mirror, h, routes).await,
            FrrChange::Back | FrrChange::Restarted => {
                tracing::info!(
                    vni = self.spec.vni,
                    hold_s = self.gap.follower.hold().as_secs(),
                    "FRR is running: the routes kept stay until zebra has them all again, or \
                     the hold time passes"
                );
                self.gap.follower.back(routes, Instant::now());
                self.apply(routes);
            }
        }
        change
    }

    /// FRR is not running: the routes followed until now are kept (the kernel's may have
    /// lost some already: zebra's cleanup when bgpd died), and what a dead zebra left in
    /// the kernel is deleted for the next one to start from a clean mirror (a zebra that
    /// runs keeps its own entries: it deletes them itself when bgpd goes).
    async fn frr_gone(&mut self, mirror: &Mirror, h: &Handle, routes: &mut RemoteRoutes) {
        let before = self.gap.followed.clone().unwrap_or_else(|| routes.clone());
        self.gap.follower.lose(&before);
        let kept = self.gap.follower.effective(routes);
        tracing::warn!(
            vni = self.spec.vni,
            remote_macs = kept.macs.len(),
            flood = kept.flood.len(),
            "FRR (zebra or bgpd) is not running: forwarding on the EVPN routes it installed \
             (stale) until it is back"
        );
        if !self.gap.frr.zebra_running() {
            match mirror.flush_routes(h, routes).await {
                Ok(()) => *routes = RemoteRoutes::default(),
                Err(e) => tracing::warn!(vni = self.spec.vni, error = %e,
                    "cannot delete what zebra left in the segment's mirror"),
            }
        }
        self.apply(routes);
    }
}

/// A task aborted when this goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
