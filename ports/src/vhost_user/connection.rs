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

use super::backend::NetBackend;
use super::kicks::TxKicks;
use super::relay::RelayEnd;
use super::VhostUserError;
use crate::log_limit::LogLimiter;
use crate::port::PortHandle;
use crate::socket_file::{self, BoundSocket};

/// How often a port waiting for a frontend checks whether it should stop (ms).
const STOP_CHECK_MS: i32 = 100;

/// Interval between connection attempts in client mode.
pub const CLIENT_RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// Who listens on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketMode {
    /// We listen; the VMM connects.
    Server,
    /// The VMM listens; we connect, and reconnect whenever it restarts.
    Client,
}

/// How to serve a vhost-user port.
#[derive(Debug, Clone)]
pub struct VhostUserPortConfig {
    pub socket: PathBuf,
    pub mode: SocketMode,
    /// Queue pairs offered to the frontend.
    pub queue_pairs: u16,
}

struct ConnectionControl {
    stop: AtomicBool,
    /// The frontend connection being served, to hang up on stop.
    shutdown: Mutex<Option<UnixStream>>,
}

/// A running vhost-user port: a thread that keeps its socket served.
pub struct VhostUserPort {
    handle: Arc<PortHandle>,
    config: VhostUserPortConfig,
    control: Arc<ConnectionControl>,
    thread: Option<JoinHandle<()>>,
    /// The server socket file as bound, so that only it is removed on stop.
    bound: Option<BoundSocket>,
}

impl VhostUserPort {
    /// Starts serving `config.socket` for `handle`. In server mode the socket is bound before
    /// this returns, so a bad path is reported here.
    pub fn start(
        handle: Arc<PortHandle>,
        config: VhostUserPortConfig,
    ) -> Result<VhostUserPort, VhostUserError> {
        let (listener, bound) = match config.mode {
            SocketMode::Server => {
                let (l, b) = bind(&config.socket)?;
                (Some(l), Some(b))
            }
            SocketMode::Client => (None, None),
        };
        let control = Arc::new(ConnectionControl {
            stop: AtomicBool::new(false),
            shutdown: Mutex::new(None),
        });
        let thread = {
            let handle = handle.clone();
            let config = config.clone();
            let control = control.clone();
            std::thread::Builder::new()
                .name(format!("vhost-{}", handle.name()))
                .spawn(move || serve(handle, config, listener, control))
                .map_err(VhostUserError::Spawn)?
        };
        Ok(VhostUserPort {
            handle,
            config,
            control,
            thread: Some(thread),
            bound,
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
        if let Some(s) = lock(&self.control.shutdown).as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let _ = thread.join();
        if let Some(bound) = self.bound.take() {
            socket_file::remove_if_ours(&self.config.socket, bound);
        }
    }
}

impl Drop for VhostUserPort {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Binds a server socket: parent directory created 0750, socket 0660. A socket file a
/// running process listens on is never replaced (see [`socket_file`]).
fn bind(path: &Path) -> Result<(UnixListener, BoundSocket), VhostUserError> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|source| VhostUserError::SocketDir {
                path: dir.to_path_buf(),
                source,
            })?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(
                |source| VhostUserError::Permissions {
                    path: dir.to_path_buf(),
                    source,
                },
            )?;
        }
    }
    let (listener, bound) = socket_file::bind(path, 0o660)?;
    if let Err(source) = listener.set_nonblocking(true) {
        socket_file::remove_if_ours(path, bound);
        return Err(VhostUserError::Listen {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok((listener, bound))
}

/// Waits for the next frontend: accepts one in server mode, connects (retrying every
/// [`CLIENT_RETRY_INTERVAL`]) in client mode. None once the port is stopping.
fn next_frontend(
    name: &str,
    config: &VhostUserPortConfig,
    listener: Option<&UnixListener>,
    control: &ConnectionControl,
) -> Option<UnixStream> {
    let mut last_error: Option<Instant> = None;
    // In server mode, wait for a connection on epoll with a timeout, so a stop is noticed
    // even if the socket file was removed meanwhile.
    let epoll = match listener {
        Some(l) => {
            let epoll = Epoll::new().ok()?;
            epoll
                .ctl(
                    ControlOperation::Add,
                    l.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, 0),
                )
                .ok()?;
            Some(epoll)
        }
        None => None,
    };
    while !control.stop.load(Ordering::SeqCst) {
        let attempt = match (listener, &epoll) {
            (Some(l), Some(epoll)) => {
                let mut events = [EpollEvent::default(); 1];
                match epoll.wait(STOP_CHECK_MS, &mut events) {
                    Ok(0) => continue,
                    Ok(_) => match l.accept() {
                        Ok((s, _)) => s.set_nonblocking(false).map(|()| s),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => Err(e),
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                }
            }
            _ => UnixStream::connect(&config.socket),
        };
        match attempt {
            Ok(s) => return (!control.stop.load(Ordering::SeqCst)).then_some(s),
            Err(e) => {
                // In client mode the VMM may simply not be up yet: say so once a minute.
                let now = Instant::now();
                if last_error.is_none_or(|t| now.duration_since(t) > Duration::from_secs(60)) {
                    tracing::warn!(port = %name, socket = %config.socket.display(), error = %e,
                        "no vhost-user frontend yet, retrying");
                    last_error = Some(now);
                }
                std::thread::sleep(CLIENT_RETRY_INTERVAL);
            }
        }
    }
    None
}

/// Private socket through which the library's handler receives the relayed connection.
fn relay_socket(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "vringswitch-{}-{}.relay.sock",
        std::process::id(),
        name
    ))
}

fn serve(
    port: Arc<PortHandle>,
    config: VhostUserPortConfig,
    listener: Option<UnixListener>,
    control: Arc<ConnectionControl>,
) {
    let name = port.name().to_string();
    // A frontend failing in a loop gets one line per 10 s, with the count of the others.
    let mut failures = LogLimiter::new(Duration::from_secs(10));
    while let Some(frontend) = next_frontend(&name, &config, listener.as_ref(), &control) {
        match serve_connection(&port, &config, frontend, &control) {
            Ok(Ended::Disconnected) => {}
            Ok(Ended::ProtocolError(error)) => {
                port.note_protocol_error();
                if let Some(suppressed) = failures.check() {
                    tracing::warn!(port = %name, %error, suppressed,
                        "vhost-user connection closed after a protocol error");
                }
            }
            Err(e) => {
                if let Some(suppressed) = failures.check() {
                    tracing::warn!(port = %name, error = %e, suppressed,
                        "cannot serve the vhost-user connection");
                }
                std::thread::sleep(CLIENT_RETRY_INTERVAL);
            }
        }
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
    };
    let control = ConnectionControl {
        stop: AtomicBool::new(false),
        shutdown: Mutex::new(None),
    };
    Ok(match serve_connection(port, &config, frontend, &control)? {
        Ended::Disconnected => None,
        Ended::ProtocolError(e) => Some(e),
    })
}

/// How a served connection ended.
enum Ended {
    /// The frontend hung up (or the port was stopped).
    Disconnected,
    /// The frontend broke the protocol: a message refused by the relay, or an error of the
    /// protocol handler.
    ProtocolError(String),
}

fn serve_connection(
    port: &Arc<PortHandle>,
    config: &VhostUserPortConfig,
    frontend: UnixStream,
    control: &ConnectionControl,
) -> std::io::Result<Ended> {
    let name = port.name();
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    // Weak: the table lives in the attachment the port holds.
    let doorbell = Arc::downgrade(port);
    let tx_kicks = Arc::new(TxKicks::new(
        2 * usize::from(config.queue_pairs),
        move || {
            if let Some(port) = doorbell.upgrade() {
                port.ring_doorbell();
            }
        },
    ));
    let backend = Arc::new(NetBackend::new(
        port.clone(),
        config.queue_pairs,
        mem.clone(),
        tx_kicks.clone(),
    ));
    let mut daemon = VhostUserDaemon::new(name.to_string(), backend.clone(), mem)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let private = relay_socket(name);
    let result = (|| {
        let mut inner = Listener::new(&private, true).map_err(std::io::Error::other)?;
        let relay_side = UnixStream::connect(&private)?;
        let _ = std::fs::remove_file(&private);
        let relay = super::relay::start(frontend.try_clone()?, relay_side, tx_kicks)?;
        daemon
            .start(&mut inner)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok::<_, std::io::Error>(relay)
    })();
    let _ = std::fs::remove_file(&private);
    let relay = match result {
        Ok(r) => r,
        Err(e) => {
            drop(daemon);
            close_leaked(&backend);
            return Err(e);
        }
    };
    {
        let mut s = lock(&control.shutdown);
        *s = frontend.try_clone().ok();
        if control.stop.load(Ordering::SeqCst) {
            let _ = frontend.shutdown(std::net::Shutdown::Both);
        }
    }
    port.set_connected(true);
    tracing::info!(port = %name, socket = %config.socket.display(), "vhost-user frontend connected");

    let result = daemon.wait();

    *lock(&control.shutdown) = None;
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
        (Some(r), _) => Ended::ProtocolError(format!("refused: {r}")),
        (
            None,
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )),
        ) => {
            tracing::info!(port = %name, features = format_args!("{features:#x}"),
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
