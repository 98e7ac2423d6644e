//! The life of a vhost-user port's socket: listen or connect, serve one frontend, and start
//! over after every disconnect.
//!
//! Each connection gets a fresh backend, a fresh guest-memory object and a fresh handler
//! (the library cannot serve a second connection with the same one). When a connection
//! ends, the port's attachment is withdrawn first, then the handler is dropped, which joins
//! the library's threads and unmaps guest memory once no worker holds it any more.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vringswitch_config::{KindSettings, VhostUserSettings};

use super::backend::NetBackend;
use super::kicks::TxKicks;
use super::memory_fence::MemoryFence;
use super::migration::MigrationState;
use super::relay::RelayEnd;
use super::VhostUserError;
use crate::log_limit::LogLimiter;
use crate::port::{PortHandle, RunningPort, StartError};
use crate::socket_file::{self, BoundSocket};

/// How long a frontend knocking at a port in service waits to learn whether the port is
/// free after all (its own old connection ending).
const KNOCK_GRACE: Duration = Duration::from_millis(500);

/// Where a port's thread says whether the connection it was handed could be set up again.
type ReplayAnswer = std::sync::mpsc::SyncSender<Result<(), String>>;

/// Interval between connection attempts in client mode.
pub const CLIENT_RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// Who listens on the socket: vringswitch (server) or the VMM (client), as the port's
/// settings say. Defined once, with them.
pub use vringswitch_config::SocketMode;

/// How to serve a vhost-user port.
#[derive(Debug, Clone)]
pub struct VhostUserPortConfig {
    pub socket: PathBuf,
    pub mode: SocketMode,
    /// Queue pairs offered to the frontend.
    pub queue_pairs: u16,
    /// Whether checksum and segmentation offloads are offered to the frontend.
    pub offloads: bool,
}

/// Where the port's thread answers a request to hand the port over: `Ok` once it let go
/// of everything (its thread then ends, returning what it held), or why it cannot (it
/// then serves on as before).
type HandOverAnswer = std::sync::mpsc::SyncSender<Result<(), String>>;

struct ConnectionControl {
    stop: AtomicBool,
    /// Written on stop and on a request to hand over: wakes the port's thread wherever it
    /// waits.
    wake: EventFd,
    /// The frontend connection being served, to hang up on stop.
    shutdown: Mutex<Option<UnixStream>>,
    /// A request to hand the port over ([`VhostUserPort::hand_over`]).
    hand_over: Mutex<Option<HandOverAnswer>>,
    /// The setup log of the connection being served.
    setup: Mutex<Option<Arc<Mutex<super::setup_log::SetupLog>>>>,
}

impl ConnectionControl {
    fn new() -> Result<ConnectionControl, VhostUserError> {
        Ok(ConnectionControl {
            stop: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK).map_err(VhostUserError::EventFd)?,
            shutdown: Mutex::new(None),
            hand_over: Mutex::new(None),
            setup: Mutex::new(None),
        })
    }

    fn handing_over(&self) -> bool {
        lock(&self.hand_over).is_some()
    }

    /// Answers the request to hand over, if one is pending; `Err` withdraws it.
    fn answer_hand_over(&self, answer: Result<(), String>) {
        if let Some(to) = lock(&self.hand_over).take() {
            let _ = to.send(answer);
        }
    }
}

/// A frontend connection that another process (or another port object) carries on: its
/// socket, untouched, and what it said to set the connection up, which the one carrying on
/// replays into its own protocol handler.
#[derive(Debug)]
pub struct CarriedConnection {
    pub frontend: UnixStream,
    pub log: super::setup_log::SetupLog,
}

/// Everything a vhost-user port hands over in a hitless upgrade.
#[derive(Debug)]
pub struct HandedOver {
    /// In server mode: the listening socket, and the file bound to it (left in place).
    pub listener: Option<(UnixListener, BoundSocket)>,
    /// The frontend connected at the time, if one was.
    pub connection: Option<CarriedConnection>,
}

/// What a port's thread held when it ended.
struct Served {
    listener: Option<UnixListener>,
    carried: Option<CarriedConnection>,
}

/// What a port's thread waits on between connections: the stop eventfd and, in server
/// mode, the listening socket. Made before the thread starts, so that no descriptor the
/// thread needs can be missing later.
struct Waiter {
    epoll: Epoll,
    /// The stop eventfd alone, to pause without a readable listener ending the pause.
    pause: Epoll,
    /// Written by the relay when a connection ends.
    ended: Arc<EventFd>,
    /// `ended` alone.
    ended_only: Epoll,
}

const WAKE: u64 = 0;
const LISTENER: u64 = 1;
const ENDED: u64 = 2;

/// What woke a port's thread while it serves a connection.
enum Serving {
    /// Another frontend is knocking.
    Knock,
    /// The connection ended.
    Ended,
    /// The port is stopping.
    Stop,
    /// [`SOCKET_CHECK`] passed: time to look at the socket file.
    Tick,
}

/// How often a server-mode port looks whether its socket file is still there.
const SOCKET_CHECK: Duration = Duration::from_secs(1);
const SOCKET_CHECK_MS: i32 = 1000;

/// A server-mode port's listening socket and the file that leads to it. Someone may delete
/// the file (a cleanup script, `rm` of the socket directory): the listener still works, but
/// no VM can find it, and nothing would say so. Looked at every [`SOCKET_CHECK`]: a deleted
/// file is bound again, with a warning; a file someone else put in its place is left alone,
/// with one warning.
struct ServerSocket {
    path: PathBuf,
    listener: UnixListener,
    /// The file as bound; shared with [`VhostUserPort::stop`], which removes only that one.
    bound: Arc<Mutex<Option<BoundSocket>>>,
    last_check: Instant,
    /// What was last said about the file, so that each change is said once.
    said: socket_file::FileAtPath,
}

impl ServerSocket {
    fn check(&mut self, port: &str, waiter: &Waiter) {
        if self.last_check.elapsed() < SOCKET_CHECK {
            return;
        }
        self.last_check = Instant::now();
        let Some(bound) = *lock(&self.bound) else {
            return;
        };
        let now = socket_file::file_at(&self.path, bound);
        match now {
            socket_file::FileAtPath::Ours => {}
            socket_file::FileAtPath::Gone => match bind(&self.path) {
                Ok((listener, new)) => {
                    if let Err(e) = waiter.replace_listener(&self.listener, &listener) {
                        socket_file::remove_if_ours(&self.path, new);
                        if self.said != now {
                            tracing::warn!(port = %port, socket = %self.path.display(), error = %e,
                                "the socket file was deleted and cannot be made again");
                        }
                    } else {
                        self.listener = listener;
                        *lock(&self.bound) = Some(new);
                        tracing::warn!(port = %port, socket = %self.path.display(),
                            "the socket file was deleted: made it again");
                        self.said = socket_file::FileAtPath::Ours;
                        return;
                    }
                }
                Err(e) => {
                    if self.said != now {
                        tracing::warn!(port = %port, socket = %self.path.display(), error = %e,
                            "the socket file was deleted and cannot be made again; retrying");
                    }
                }
            },
            socket_file::FileAtPath::Other => {
                if self.said != now {
                    tracing::warn!(port = %port, socket = %self.path.display(),
                        "another file took the socket's place: no VM can reach the port \
                         through it; delete that file and the port makes its socket again");
                }
            }
        }
        self.said = now;
    }
}

/// An epoll set watching each `(fd, token)` for input.
fn epoll_of(fds: &[(RawFd, u64)]) -> std::io::Result<Epoll> {
    let epoll = Epoll::new()?;
    for &(fd, token) in fds {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )?;
    }
    Ok(epoll)
}

impl Waiter {
    fn new(
        control: &ConnectionControl,
        listener: Option<&UnixListener>,
    ) -> std::io::Result<Waiter> {
        let ended = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let wake = (control.wake.as_raw_fd(), WAKE);
        let mut all = vec![wake, (ended.as_raw_fd(), ENDED)];
        all.extend(listener.map(|l| (l.as_raw_fd(), LISTENER)));
        let epoll = epoll_of(&all)?;
        let pause = epoll_of(&[wake])?;
        let ended_only = epoll_of(&[(ended.as_raw_fd(), ENDED)])?;
        Ok(Waiter {
            epoll,
            pause,
            ended,
            ended_only,
        })
    }

    /// Whether the connection ends within `grace`.
    fn ends_within(&self, grace: Duration) -> bool {
        let ms = i32::try_from(grace.as_millis()).unwrap_or(i32::MAX);
        let mut events = [EpollEvent::default(); 1];
        let ended = matches!(self.ended_only.wait(ms, &mut events), Ok(1));
        if ended {
            let _ = self.ended.read();
        }
        ended
    }

    /// Waits while a connection is served, at most [`SOCKET_CHECK`].
    fn wait_serving(&self) -> Serving {
        let mut events = [EpollEvent::default(); 3];
        let n = match self.epoll.wait(SOCKET_CHECK_MS, &mut events) {
            Ok(0) => return Serving::Tick,
            Ok(n) => n,
            Err(_) => return Serving::Knock,
        };
        let got = |token| events[..n].iter().any(|e| e.data() == token);
        if got(ENDED) {
            let _ = self.ended.read();
            Serving::Ended
        } else if got(WAKE) {
            Serving::Stop
        } else {
            Serving::Knock
        }
    }

    /// Watches `new` for frontends instead of `old`.
    fn replace_listener(&self, old: &UnixListener, new: &UnixListener) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            new.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER),
        )?;
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            old.as_raw_fd(),
            EpollEvent::default(),
        );
        Ok(())
    }

    /// Waits `timeout`, or less if the port is stopped meanwhile.
    fn pause(&self, timeout: Duration) {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let mut events = [EpollEvent::default(); 1];
        let _ = self.pause.wait(ms, &mut events);
    }

    /// Waits for a frontend on the listener; returns whether one may be there. A stop ends
    /// the wait at once.
    fn wait(&self) -> bool {
        let mut events = [EpollEvent::default(); 3];
        match self.epoll.wait(SOCKET_CHECK_MS, &mut events) {
            Ok(n) => events[..n].iter().any(|e| e.data() == LISTENER),
            Err(_) => false,
        }
    }
}

/// A running vhost-user port: a thread that keeps its socket served.
pub struct VhostUserPort {
    handle: Arc<PortHandle>,
    config: VhostUserPortConfig,
    control: Arc<ConnectionControl>,
    thread: Option<JoinHandle<Served>>,
    /// The server socket file as bound (again, if it was deleted), so that only it is
    /// removed on stop.
    bound: Arc<Mutex<Option<BoundSocket>>>,
}

impl VhostUserPort {
    /// Starts serving `config.socket` for `handle`. In server mode the socket is bound before
    /// this returns, so a bad path is reported here.
    pub fn start(
        handle: Arc<PortHandle>,
        config: VhostUserPortConfig,
    ) -> Result<VhostUserPort, VhostUserError> {
        let listener = match config.mode {
            SocketMode::Server => Some(bind(&config.socket)?),
            SocketMode::Client => None,
        };
        Self::launch(handle, config, listener, None)
    }

    /// Carries on serving a port that another process (or port object) handed over: its
    /// listening socket, and the connection it served, whose setup is replayed into a
    /// protocol handler of this port before the frontend's next message is read. The
    /// frontend notices nothing. Returns once the replay is done; an error says why the
    /// connection could not be carried on (the port then serves its socket as after a
    /// disconnect).
    pub fn take_over(
        handle: Arc<PortHandle>,
        config: VhostUserPortConfig,
        handed: HandedOver,
    ) -> Result<(VhostUserPort, Result<(), String>), VhostUserError> {
        let listener = match (config.mode, handed.listener) {
            (SocketMode::Server, Some(l)) => {
                l.0.set_nonblocking(true)
                    .map_err(|error| VhostUserError::Listen {
                        path: config.socket.clone(),
                        error,
                    })?;
                Some(l)
            }
            (SocketMode::Server, None) => Some(bind(&config.socket)?),
            (SocketMode::Client, _) => None,
        };
        let Some(carried) = handed.connection else {
            return Self::launch(handle, config, listener, None).map(|p| (p, Ok(())));
        };
        let (replayed, outcome) = std::sync::mpsc::sync_channel(1);
        let port = Self::launch(handle, config, listener, Some((carried, replayed)))?;
        let outcome = outcome
            .recv()
            .unwrap_or_else(|_| Err("the port's thread ended during the replay".into()));
        Ok((port, outcome))
    }

    /// Starts the port's thread: serving `first` first, if given (answering on its sender
    /// once its replay is done), then the socket.
    fn launch(
        handle: Arc<PortHandle>,
        config: VhostUserPortConfig,
        listener: Option<(UnixListener, BoundSocket)>,
        first: Option<(CarriedConnection, ReplayAnswer)>,
    ) -> Result<VhostUserPort, VhostUserError> {
        let (listener, bound) = listener.unzip();
        let bound = Arc::new(Mutex::new(bound));
        let started = ConnectionControl::new().and_then(|control| {
            let waiter =
                Waiter::new(&control, listener.as_ref()).map_err(VhostUserError::EventFd)?;
            let server = listener.map(|listener| ServerSocket {
                path: config.socket.clone(),
                listener,
                bound: bound.clone(),
                last_check: Instant::now(),
                said: socket_file::FileAtPath::Ours,
            });
            let control = Arc::new(control);
            let (handle, config, shared) = (handle.clone(), config.clone(), control.clone());
            let thread = std::thread::Builder::new()
                .name(format!("vhost-{}", handle.name()))
                .spawn(move || serve(handle, config, server, waiter, shared, first))
                .map_err(VhostUserError::Spawn)?;
            Ok((control, thread))
        });
        // A port that cannot start leaves no socket file behind.
        let (control, thread) = match started {
            Ok(s) => s,
            Err(e) => {
                if let Some(b) = lock(&bound).take() {
                    socket_file::remove_if_ours(&config.socket, b);
                }
                return Err(e);
            }
        };
        Ok(VhostUserPort {
            handle,
            config,
            control,
            thread: Some(thread),
            bound,
        })
    }

    /// Lets go of the port for another process to carry on (a hitless upgrade): the
    /// connected frontend's relay lets go between two of its messages, once every reply it
    /// owes has been sent; this process's workers stop using its rings; and the port's
    /// thread ends, closing nothing the frontend or a VM looking for the socket would
    /// notice. Declined, with the reason, while the VM is being migrated, or when its
    /// connection cannot be carried on; the port then serves on as before.
    pub fn hand_over(&mut self) -> Result<HandedOver, String> {
        if self.thread.is_none() {
            return Err("the port is stopped".into());
        }
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        *lock(&self.control.hand_over) = Some(answer);
        let _ = self.control.wake.write(1);
        match answered.recv() {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(reason),
            Err(_) => return Err("the port's thread ended".into()),
        }
        let served = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(served)) => served,
            _ => return Err("the port's thread ended".into()),
        };
        let bound = lock(&self.bound).take();
        Ok(HandedOver {
            listener: served.listener.zip(bound),
            connection: served.carried,
        })
    }

    pub fn handle(&self) -> &Arc<PortHandle> {
        &self.handle
    }

    pub fn config(&self) -> &VhostUserPortConfig {
        &self.config
    }

    /// Disconnects the frontend, stops serving and removes a server socket (if the file at
    /// its path is still the one bound).
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.control.stop.store(true, Ordering::SeqCst);
        let _ = self.control.wake.write(1);
        if let Some(s) = lock(&self.control.shutdown).as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let _ = thread.join();
        if let Some(bound) = lock(&self.bound).take() {
            socket_file::remove_if_ours(&self.config.socket, bound);
        }
    }
}

impl Drop for VhostUserPort {
    fn drop(&mut self) {
        self.stop();
    }
}

impl RunningPort for VhostUserPort {
    fn handle(&self) -> &Arc<PortHandle> {
        &self.handle
    }

    fn stop(&mut self) {
        VhostUserPort::stop(self)
    }

    fn handover_refusal(&self) -> Option<String> {
        let setup = lock(&self.control.setup).clone()?;
        let log = lock(&setup);
        if log.logging() {
            Some(
                "its VM is being migrated (the switch logs the pages it writes); upgrade once \
                 the migration has ended"
                    .into(),
            )
        } else if log.incomplete() {
            Some(
                "part of what its VM said to set the connection up could not be kept (the \
                 switch was out of file descriptors); reconnecting the VM mends it"
                    .into(),
            )
        } else {
            None
        }
    }

    fn hand_over(&mut self) -> Result<crate::port::HandedPort, String> {
        VhostUserPort::hand_over(self).map(super::carry::write)
    }
}

/// Carries on a vhost-user port handed over by the process before this one.
pub fn take_over_port(
    handle: Arc<PortHandle>,
    settings: &VhostUserSettings,
    handed: crate::port::HandedPort,
) -> Result<crate::port::TakenOver, StartError> {
    let handed = super::carry::read(handed).map_err(|e| {
        StartError::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("what the previous process handed over does not read: {e}"),
        ))
    })?;
    VhostUserPort::take_over(handle, config_of(settings), handed)
        .map(|(p, carried)| (Box::new(p) as Box<dyn RunningPort>, carried))
        .map_err(StartError::new)
}

fn config_of(settings: &VhostUserSettings) -> VhostUserPortConfig {
    VhostUserPortConfig {
        socket: settings.socket.clone(),
        mode: settings.mode(),
        queue_pairs: settings.queue_pairs(),
        offloads: settings.offloads(),
    }
}

/// Starts a vhost-user port as its settings say (their socket given or filled in).
pub fn start_port(
    handle: Arc<PortHandle>,
    settings: &VhostUserSettings,
) -> Result<Box<dyn RunningPort>, StartError> {
    VhostUserPort::start(handle, config_of(settings))
        .map(|p| Box::new(p) as Box<dyn RunningPort>)
        .map_err(StartError::new)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Binds a server socket: parent directory created 0750, socket 0660. A socket file a
/// running process listens on is never replaced (see [`socket_file`]).
fn bind(path: &Path) -> Result<(UnixListener, BoundSocket), VhostUserError> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|error| VhostUserError::SocketDir {
                path: dir.to_path_buf(),
                error,
            })?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(
                |error| VhostUserError::Permissions {
                    path: dir.to_path_buf(),
                    error,
                },
            )?;
        }
    }
    let (listener, bound) = socket_file::bind(path, 0o660)?;
    if let Err(source) = listener.set_nonblocking(true) {
        socket_file::remove_if_ours(path, bound);
        return Err(VhostUserError::Listen {
            path: path.to_path_buf(),
            error: source,
        });
    }
    Ok((listener, bound))
}

/// Waits for the next frontend: accepts one in server mode, connects (retrying every
/// [`CLIENT_RETRY_INTERVAL`]) in client mode. None once the port is stopping.
fn next_frontend(
    name: &str,
    config: &VhostUserPortConfig,
    mut server: Option<&mut ServerSocket>,
    waiter: &Waiter,
    control: &ConnectionControl,
) -> Option<UnixStream> {
    let mut last_error: Option<Instant> = None;
    let listening = server.is_some();
    while !control.stop.load(Ordering::SeqCst) && !control.handing_over() {
        let attempt = match server.as_deref_mut() {
            Some(server) => {
                server.check(name, waiter);
                if !waiter.wait() {
                    continue;
                }
                match server.listener.accept() {
                    Ok((s, _)) => s.set_nonblocking(false).map(|()| s),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => Err(e),
                }
            }
            None => UnixStream::connect(&config.socket),
        };
        match attempt {
            Ok(s) => return (!control.stop.load(Ordering::SeqCst)).then_some(s),
            Err(e) => {
                // In client mode the VMM may simply not be up yet (no socket, or nobody
                // listening on it): normal, said at info. Anything else (no permission, out
                // of file descriptors in either mode) is a warning. Once a minute.
                let now = Instant::now();
                if last_error.is_none_or(|t| now.duration_since(t) > Duration::from_secs(60)) {
                    let not_up_yet = matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    );
                    if listening {
                        tracing::warn!(port = %name, socket = %config.socket.display(),
                            error = %explain(&e), "cannot accept a vhost-user connection, retrying");
                    } else if not_up_yet {
                        tracing::info!(port = %name, socket = %config.socket.display(),
                            retry_ms = CLIENT_RETRY_INTERVAL.as_millis(),
                            "waiting for the VM to listen on its socket");
                    } else {
                        tracing::warn!(port = %name, socket = %config.socket.display(),
                            error = %explain(&e), "cannot connect to the VM's socket, retrying");
                    }
                    last_error = Some(now);
                }
                waiter.pause(CLIENT_RETRY_INTERVAL);
            }
        }
    }
    None
}

/// An I/O error in words for the log: running out of descriptors says so plainly.
/// (An error the libraries wrapped keeps only its text.)
fn explain(e: &std::io::Error) -> String {
    let text = e.to_string();
    let is = |errno: i32| {
        e.raw_os_error() == Some(errno) || text.contains(&format!("(os error {errno})"))
    };
    if is(libc::EMFILE) {
        format!("the daemon is out of file descriptors ({text})")
    } else if is(libc::ENFILE) {
        format!("the system is out of file descriptors ({text})")
    } else {
        text
    }
}

/// A directory of mode 0700 under the temporary directory, with a random name, removed
/// (with what is in it) on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> std::io::Result<PrivateDir> {
        use std::io::Read;
        use std::os::unix::fs::DirBuilderExt;
        let mut random = [0u8; 16];
        let mut urandom = std::fs::File::open("/dev/urandom")?;
        for _ in 0..8 {
            urandom.read_exact(&mut random)?;
            let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
            let path = std::env::temp_dir().join(format!("vringswitch-relay-{name}"));
            // mkdir fails on anything already at the path: a directory somebody else made
            // in advance is never used.
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateDir(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "no free name for a private directory",
        ))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn serve(
    port: Arc<PortHandle>,
    config: VhostUserPortConfig,
    mut server: Option<ServerSocket>,
    waiter: Waiter,
    control: Arc<ConnectionControl>,
    mut first: Option<(CarriedConnection, ReplayAnswer)>,
) -> Served {
    let name = port.name().to_string();
    // A frontend failing in a loop gets one line per 10 s, with the count of the others.
    let mut failures = LogLimiter::new(Duration::from_secs(10));
    let mut carried = None;
    loop {
        let (frontend, replay) = match first.take() {
            Some((c, answer)) => (c.frontend, Some((c.log, answer))),
            None => match next_frontend(&name, &config, server.as_mut(), &waiter, &control) {
                Some(f) => (f, None),
                None => break,
            },
        };
        if replay.is_none() && control.handing_over() {
            // Connected just now: whatever it sent waits in its socket for whoever
            // carries on, with nothing to replay.
            carried = Some(CarriedConnection {
                frontend,
                log: Default::default(),
            });
            break;
        }
        let served = serve_connection(
            &port,
            &config,
            frontend,
            replay,
            server.as_mut(),
            &waiter,
            &control,
        );
        match served {
            Ok(Ended::HandedOver(c)) => {
                carried = Some(c);
                break;
            }
            Ok(Ended::Disconnected) => {}
            Ok(Ended::ProtocolError(error)) => {
                port.note_protocol_error();
                if let Some(suppressed) = failures.check() {
                    tracing::warn!(port = %name, %error, suppressed,
                        "vhost-user connection closed after a protocol error");
                }
            }
            Err(e) => {
                // The frontend was hung up on (it may try again): out of file descriptors,
                // say, which the daemon recovers from once some are free.
                if let Some(suppressed) = failures.check() {
                    tracing::warn!(port = %name, error = %explain(&e), suppressed,
                        "cannot serve the vhost-user connection; the frontend was hung up on");
                }
                waiter.pause(CLIENT_RETRY_INTERVAL);
            }
        }
    }
    control.answer_hand_over(Ok(()));
    Served {
        listener: server.map(|s| s.listener),
        carried,
    }
}

/// Serves one frontend connection that is already open, to its end, as a port serves each
/// of its connections: relay, checks and protocol handler. Returns the protocol error that
/// ended it, if any. For the fuzz targets; ports use [`VhostUserPort::start`].
pub fn serve_stream(
    port: &Arc<PortHandle>,
    queue_pairs: u16,
    frontend: UnixStream,
) -> std::io::Result<Option<String>> {
    let config = VhostUserPortConfig {
        socket: PathBuf::from("/nonexistent"),
        mode: SocketMode::Server,
        queue_pairs,
        offloads: true,
    };
    let control = ConnectionControl::new().map_err(std::io::Error::other)?;
    let waiter = Waiter::new(&control, None)?;
    Ok(
        match serve_connection(port, &config, frontend, None, None, &waiter, &control)? {
            Ended::Disconnected | Ended::HandedOver(_) => None,
            Ended::ProtocolError(e) => Some(e),
        },
    )
}

/// How a served connection ended.
enum Ended {
    /// The frontend hung up (or the port was stopped).
    Disconnected,
    /// The frontend broke the protocol: a message refused by the relay, or an error of the
    /// protocol handler.
    ProtocolError(String),
    /// The connection was let go of, for another process to carry on.
    HandedOver(CarriedConnection),
}

/// How long a connection carried on may take to hand its rings to the workers after its
/// replay.
const RINGS_READY_WAIT: Duration = Duration::from_secs(1);

/// How long a relay asked to let go may take to answer: it answers between two of the
/// frontend's messages, and a frontend that connected just now may not have sent its
/// first.
const LET_GO_WAIT: Duration = Duration::from_secs(6);

/// Asks the connection's relay to let go of its frontend; `Ok` once it did (its end
/// follows), else why not (it relays on as before).
fn let_go(detach: &super::relay::Detach, relay: &JoinHandle<RelayEnd>) -> Result<(), String> {
    detach.ask();
    let deadline = Instant::now() + LET_GO_WAIT;
    loop {
        if detach.done() {
            return Ok(());
        }
        if let Some(reason) = detach.declined() {
            return Err(reason);
        }
        let gone = relay.is_finished();
        if gone || Instant::now() > deadline {
            if !detach.withdraw() {
                return Ok(());
            }
            return Err(if gone {
                "its VM disconnected meanwhile".into()
            } else {
                format!(
                    "its VM connected and has not said a whole message within {} s",
                    LET_GO_WAIT.as_secs()
                )
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What rings `port`'s doorbell from the connection's shared tables. Weak: the tables live
/// in the attachment the port holds.
fn doorbell_of(port: &Arc<PortHandle>) -> impl Fn() + Send + Sync + 'static {
    let port = Arc::downgrade(port);
    move || {
        if let Some(port) = port.upgrade() {
            port.ring_doorbell();
        }
    }
}

fn serve_connection(
    port: &Arc<PortHandle>,
    config: &VhostUserPortConfig,
    frontend: UnixStream,
    replay: Option<(super::setup_log::SetupLog, ReplayAnswer)>,
    mut server: Option<&mut ServerSocket>,
    waiter: &Waiter,
    control: &ConnectionControl,
) -> std::io::Result<Ended> {
    let name = port.name();
    // The library maps the frontend's memory into `mapped`; the workers read `fenced`, to
    // which the backend passes each table on once the memory fence guards it.
    let mapped = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let fenced = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let rings = 2 * usize::from(config.queue_pairs);
    let tx_kicks = Arc::new(TxKicks::new(rings, doorbell_of(port)));
    let migration = Arc::new(MigrationState::new(rings, doorbell_of(port)));
    let fence = MemoryFence::new().map_err(std::io::Error::other)?;
    let shared = super::relay::Shared {
        kicks: tx_kicks,
        migration,
        fence: fence.clone(),
        setup: Default::default(),
        detach: Arc::new(super::relay::Detach::new()?),
    };
    let (replay, replay_answer) = replay.unzip();
    // A connection carried over that cannot be set up again says why, once.
    let say_replay = |outcome: Result<(), String>| {
        if let Some(answer) = &replay_answer {
            let _ = answer.send(outcome);
        }
    };
    let backend = match NetBackend::new(
        port.clone(),
        (config.queue_pairs, config.offloads),
        fenced,
        shared.clone(),
    ) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            say_replay(Err(e.to_string()));
            return Err(e);
        }
    };
    let mut daemon = match VhostUserDaemon::new(name.to_string(), backend.clone(), mapped) {
        Ok(d) => d,
        Err(e) => {
            close_leaked(&backend);
            say_replay(Err(e.to_string()));
            return Err(std::io::Error::other(e.to_string()));
        }
    };
    let result = (|| {
        // The library only serves a listening socket: one in a directory nobody else may
        // enter, gone again before the library accepts, so the connection it accepts is
        // the relay's and no one else's.
        let private = PrivateDir::new()?;
        let path = private.path().join("relay.sock");
        let mut inner = Listener::new(&path, true).map_err(std::io::Error::other)?;
        let relay_side = UnixStream::connect(&path)?;
        drop(private);
        let ended = waiter.ended.clone();
        let (relay, replayed) = match &replay {
            None => (
                super::relay::start(frontend.try_clone()?, relay_side, shared.clone(), ended)?,
                None,
            ),
            Some(log) => {
                let (relay, replayed) = super::relay::start_replaying(
                    frontend.try_clone()?,
                    log.entries(),
                    relay_side,
                    shared.clone(),
                    ended,
                )?;
                (relay, Some(replayed))
            }
        };
        daemon
            .start(&mut inner)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok::<_, std::io::Error>((relay, replayed))
    })();
    let (relay, replayed) = match result {
        Ok(r) => r,
        Err(e) => {
            drop(daemon);
            close_leaked(&backend);
            say_replay(Err(e.to_string()));
            return Err(e);
        }
    };
    // A connection carried over is set up again before anything else: the library has
    // answered every message of the replay.
    let replayed = replayed.map(|replayed| {
        let outcome = match replayed.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("setting the connection up again failed: {e}")),
            Err(_) => Err("setting the connection up again failed".into()),
        };
        if let Err(e) = &outcome {
            tracing::warn!(port = %name, error = %e,
                "cannot carry on the VM's connection; it is hung up on and may reconnect");
        } else if replay.as_ref().is_some_and(|log| log.started_rings()) {
            // The library raises an event for every ring the replay started and enabled
            // (as for any ring it starts), on which the backend hands the rings to the
            // workers, on the library's thread. Waited for, so that the caller starts its
            // workers with every port it took over ready to take frames.
            let deadline = Instant::now() + RINGS_READY_WAIT;
            while !backend.published() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        outcome
    });
    {
        let mut s = lock(&control.shutdown);
        *s = frontend.try_clone().ok();
        if control.stop.load(Ordering::SeqCst) {
            let _ = frontend.shutdown(std::net::Shutdown::Both);
        }
    }
    // A file of the frontend's memory shrank under the switch: hang up on it.
    if let Ok(hang_up) = frontend.try_clone() {
        fence.on_fault(move || {
            let _ = hang_up.shutdown(std::net::Shutdown::Both);
        });
    }
    *lock(&control.setup) = Some(shared.setup.clone());
    port.set_connected(true);
    if replay.is_some() {
        tracing::info!(port = %name, socket = %config.socket.display(),
            "vhost-user connection carried on from the previous process");
    } else {
        tracing::info!(port = %name, socket = %config.socket.display(),
            "vhost-user frontend connected");
    }
    // Said only now: whoever waits for it (a daemon taking ports over) then finds the
    // port connected and counted, and may set its counts.
    if let Some(outcome) = replayed {
        say_replay(outcome);
    }
    drop(replay);

    // Until the connection ends, a second frontend is told that the port is taken (it is
    // hung up on), instead of waiting in the backlog for an answer that never comes. Unless
    // the connection ends within a moment: a frontend that reconnects (QEMU, DPDK) may come
    // back before the end of its old connection is noticed, and is served.
    let mut knocks = LogLimiter::new(Duration::from_secs(10));
    let mut handed = false;
    loop {
        match waiter.wait_serving() {
            Serving::Ended => break,
            Serving::Knock if waiter.ends_within(KNOCK_GRACE) => break,
            // Let go, for another process to carry on: the relay's end follows. A stop
            // meanwhile must not hang up on the frontend that process now serves.
            Serving::Stop if handed || control.handing_over() => {
                let _ = control.wake.read();
                if !handed {
                    match let_go(&shared.detach, &relay) {
                        Ok(()) => handed = true,
                        Err(reason) => control.answer_hand_over(Err(reason)),
                    }
                }
            }
            // `stop` hangs up on the frontend: the end follows.
            Serving::Stop => {
                let _ = frontend.shutdown(std::net::Shutdown::Both);
                std::thread::sleep(Duration::from_millis(1));
            }
            Serving::Tick => {
                if let Some(server) = server.as_deref_mut() {
                    server.check(name, waiter);
                }
            }
            Serving::Knock => {
                if let Some(Ok((second, _))) = server.as_deref().map(|s| s.listener.accept()) {
                    let _ = second.shutdown(std::net::Shutdown::Both);
                    if let Some(suppressed) = knocks.check() {
                        tracing::warn!(port = %name, suppressed,
                            "a second vhost-user frontend was turned away: the port already \
                             serves one");
                    }
                }
            }
        }
    }
    let result = daemon.wait();

    *lock(&control.shutdown) = None;
    *lock(&control.setup) = None;
    if handed {
        // The relay has ended (it says so only then); it let go unless it failed first.
        let relay_end = relay.join();
        if matches!(relay_end, Ok(RelayEnd::Detached)) {
            backend.close_for_handover();
            port.set_connected(false);
            backend.signal_exit();
            drop(daemon);
            close_leaked(&backend);
            let log = std::mem::take(&mut *lock(&shared.setup));
            tracing::info!(port = %name, "vhost-user connection handed over");
            return Ok(Ended::HandedOver(CarriedConnection { frontend, log }));
        }
        control.answer_hand_over(Err(
            "its connection failed while being handed over; the VM reconnects".into(),
        ));
        let _ = frontend.shutdown(std::net::Shutdown::Both);
        backend.close();
        port.set_connected(false);
        backend.signal_exit();
        drop(daemon);
        close_leaked(&backend);
        return Ok(Ended::Disconnected);
    }
    let _ = frontend.shutdown(std::net::Shutdown::Both);
    backend.close();
    port.set_connected(false);
    backend.signal_exit();
    let features = backend.acked_features();
    drop(daemon);
    close_leaked(&backend);
    // The relay's verdict comes first: a refused message also makes the handler see a
    // disconnect.
    let refused = match relay.join() {
        Ok(RelayEnd::Refused(r)) => Some(r),
        _ => None,
    };
    Ok(match (refused, result) {
        _ if fence.faulted() => Ended::ProtocolError(
            "the frontend shrank or emptied a file of its guest memory or dirty log after the \
             switch mapped it; the switch stopped using that memory"
                .into(),
        ),
        (Some(r), _) => Ended::ProtocolError(format!("refused: {r}")),
        (
            None,
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )),
        ) => {
            tracing::info!(port = %name, features = %super::backend::feature_names(features, ","),
                "vhost-user frontend disconnected");
            Ended::Disconnected
        }
        (None, Err(e)) => Ended::ProtocolError(e.to_string()),
    })
}

/// Closes the exit-event fds the library leaked, once its handler (and with it the event
/// thread that polled them) is gone.
#[allow(unsafe_code)]
fn close_leaked(backend: &NetBackend) {
    for fd in backend.take_leaked_exit_fds() {
        close_fd(fd);
    }
}

#[allow(unsafe_code)]
fn close_fd(fd: RawFd) {
    // SAFETY: `fd` is an eventfd the library took ownership of with `into_raw_fd()` and never
    // closes. Its only users were the library's epoll (closed with the handler) and its event
    // thread (joined when the handler was dropped, which the caller did just before), so no
    // one else uses or will close this fd number: we are its sole owner now.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn a_private_dir_is_ours_alone_and_goes_with_what_is_in_it() {
        let a = PrivateDir::new().unwrap();
        let b = PrivateDir::new().unwrap();
        assert_ne!(a.path(), b.path());
        let meta = std::fs::symlink_metadata(a.path()).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!(meta.uid(), std::fs::metadata("/proc/self").unwrap().uid());
        let path = a.path().to_path_buf();
        let _l = UnixListener::bind(path.join("relay.sock")).unwrap();
        drop(a);
        assert!(!path.exists(), "{} left behind", path.display());
    }
}
