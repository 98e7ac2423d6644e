//! One segment's EVPN control: a thread that keeps the segment's kernel mirror, writes the
//! host's MAC addresses on it for zebra to advertise, and hands the routes zebra installs
//! to the data path as they come (netlink's neighbour notifications, a full read at start
//! and every [`RESYNC`] in case one was lost).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, MulticastGroup};
use tokio::sync::watch;

use crate::mirror::{mac_text, Mirror, MirrorSpec};
use crate::routes::{advert_changes, read_entry, KernelEntry, Mac, RemoteRoutes};
use crate::EvpnError;

/// How often the host's MAC addresses are compared with those advertised (and the data
/// path asked to follow the routes again, for what it could not take the last time).
pub const TICK: Duration = Duration::from_millis(100);
/// How often the mirror's whole table is read again.
pub const RESYNC: Duration = Duration::from_secs(10);
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
    /// Failed (the reason); tried again every second.
    Failed(String),
}

impl std::fmt::Display for ControlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlState::Starting => f.write_str("starting"),
            ControlState::Following => f.write_str("following"),
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
    /// The routes as last read.
    pub routes: RemoteRoutes,
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
        segment: impl Segment,
    ) -> std::io::Result<Controller> {
        let (stop, stopping) = watch::channel(None);
        let status = Arc::new(Mutex::new(Status::default()));
        let shown = status.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            runtime.block_on(control(spec, segment, stopping, shown));
        })?;
        Ok(Controller {
            stop,
            status,
            thread: Some(thread),
        })
    }

    /// What the control shows now.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
    mut segment: impl Segment,
    mut stopping: watch::Receiver<Option<Ending>>,
    status: Arc<Mutex<Status>>,
) {
    let set = |f: &dyn Fn(&mut Status)| f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
    let mut last_failure = String::new();
    loop {
        let outcome = follow(spec, &mut segment, &mut stopping, &status).await;
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
            // The mirror changed under us: made again at once.
            Ok(None) => continue,
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
    segment: &mut impl Segment,
    stopping: &mut watch::Receiver<Option<Ending>>,
    status: &Mutex<Status>,
) -> Result<Option<Ending>, EvpnError> {
    let set =
        |f: &mut dyn FnMut(&mut Status)| f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
    let sys = |what: &str, e: std::io::Error| EvpnError::System(format!("{what}: {e}"));
    // Notifications first, so that nothing changes unseen between the read and them.
    let (mut mconn, _, mut events) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Neigh, MulticastGroup::Link])
            .map_err(|e| sys("cannot open a netlink notification socket", e))?;
    use netlink_sys::AsyncSocket;
    mconn
        .socket_mut()
        .socket_ref()
        .set_rx_buf_sz(RCVBUF)
        .map_err(|e| sys("cannot size the netlink notification socket", e))?;
    let mconn = AbortOnDrop(tokio::spawn(mconn));
    let (conn, h, _) =
        rtnetlink::new_connection().map_err(|e| sys("cannot open a netlink socket", e))?;
    let _conn = AbortOnDrop(tokio::spawn(conn));

    let mirror = Mirror::ensure(&h, spec).await?;
    let (mut routes, mut advertised) = read_all(&mirror, &h).await?;
    segment.follow(&routes);
    set(&mut |s| {
        s.state = ControlState::Following;
        s.routes = routes.clone();
        s.advertised = advertised.len();
    });
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
    loop {
        tokio::select! {
            _ = stopping.changed() => {
                if let Some(ending) = *stopping.borrow() {
                    drop(mconn);
                    return Ok(Some(ending));
                }
            }
            event = events.next() => {
                let Some((first, _)) = event else {
                    return Err(EvpnError::System("the netlink notification socket closed".into()));
                };
                // Everything that came meanwhile, then the data path once.
                let mut changed = false;
                let mut next = Some(first);
                while let Some(msg) = next.take() {
                    match msg.payload {
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
                            if let Some(e) = read_entry(&n, mirror.devices) {
                                changed |= routes.apply(e, true);
                                if let KernelEntry::Advertised { mac } = e {
                                    advertised.insert(mac);
                                }
                            }
                        }
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(n)) => {
                            if let Some(e) = read_entry(&n, mirror.devices) {
                                changed |= routes.apply(e, false);
                                if let KernelEntry::Advertised { mac } = e {
                                    advertised.remove(&mac);
                                }
                            }
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
                            tracing::warn!(vni = spec.vni, interface = l.header.index,
                                "an interface of the segment's EVPN mirror was taken down: making it again");
                            return Ok(None);
                        }
                        _ => {}
                    }
                    if let Ok((m, _)) = events.try_recv() {
                        next = Some(m);
                    }
                }
                if changed {
                    segment.follow(&routes);
                    set(&mut |s| s.routes = routes.clone());
                }
            }
            _ = tick.tick() => {
                let want = segment.local_macs();
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
                segment.follow(&routes);
                let n = advertised.len();
                set(&mut |s| s.advertised = n);
            }
            _ = resync.tick() => {
                let (now, adv) = read_all(&mirror, &h).await?;
                if now != routes {
                    tracing::debug!(vni = spec.vni, "EVPN routes read again differ from those followed");
                    routes = now;
                    segment.follow(&routes);
                    set(&mut |s| s.routes = routes.clone());
                }
                advertised = adv;
            }
        }
    }
}

/// A task aborted when this goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
