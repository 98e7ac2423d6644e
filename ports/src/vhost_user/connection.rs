//! The life of a vhost-user port's socket: listen or connect, serve one frontend, and start
//! over after every disconnect.
//!
//! Each connection gets a fresh backend, a fresh guest-memory object and a fresh handler
//! (the library cannot serve a second connection with the same one). When a connection
//! ends, the port's attachment is withdrawn first, then the handler is dropped, which joins
//! the library's threads and unmaps guest memory once no worker holds it any more.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::backend::NetBackend;
use super::VhostUserError;
use crate::port::PortHandle;

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
    shutdown: Mutex<Option<ShutdownHandle>>,
}

/// A running vhost-user port: a thread that keeps its socket served.
pub struct VhostUserPort {
    handle: Arc<PortHandle>,
    config: VhostUserPortConfig,
    control: Arc<ConnectionControl>,
    thread: Option<JoinHandle<()>>,
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
        })
    }

    pub fn handle(&self) -> &Arc<PortHandle> {
        &self.handle
    }

    pub fn config(&self) -> &VhostUserPortConfig {
        &self.config
    }

    /// Disconnects the frontend, stops serving and removes a server socket.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.control.stop.store(true, Ordering::SeqCst);
        if let Some(s) = lock(&self.control.shutdown).as_ref() {
            s.shutdown();
        }
        if self.config.mode == SocketMode::Server {
            // Wake a blocking accept(); the thread sees `stop` and hangs up at once.
            let _ = UnixStream::connect(&self.config.socket);
        }
        let _ = thread.join();
        if self.config.mode == SocketMode::Server {
            let _ = std::fs::remove_file(&self.config.socket);
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

/// Binds a server socket: parent directory created 0750, socket 0660.
fn bind(path: &Path) -> Result<Listener, VhostUserError> {
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
    let listener = Listener::new(path, true).map_err(|source| VhostUserError::Listen {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|source| {
        VhostUserError::Permissions {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

fn serve(
    port: Arc<PortHandle>,
    config: VhostUserPortConfig,
    mut listener: Option<Listener>,
    control: Arc<ConnectionControl>,
) {
    let name = port.name().to_string();
    let mut last_client_error: Option<Instant> = None;
    while !control.stop.load(Ordering::SeqCst) {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let backend = Arc::new(NetBackend::new(
            port.clone(),
            config.queue_pairs,
            mem.clone(),
        ));
        let mut daemon = match VhostUserDaemon::new(name.clone(), backend.clone(), mem) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(port = %name, error = %e, "cannot create vhost-user handler");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let started = match (&mut listener, config.mode) {
            (Some(l), _) => daemon.start(l).map_err(|e| e.to_string()),
            (None, _) => {
                let path = config.socket.to_string_lossy().to_string();
                daemon.start_client(&path).map_err(|e| e.to_string())
            }
        };
        if let Err(e) = started {
            drop(daemon);
            close_leaked(&backend);
            // In client mode the VMM may simply not be up yet: say so once a minute.
            let now = Instant::now();
            if last_client_error.is_none_or(|t| now.duration_since(t) > Duration::from_secs(60)) {
                tracing::warn!(port = %name, socket = %config.socket.display(), error = %e,
                    "vhost-user connection failed, retrying");
                last_client_error = Some(now);
            }
            std::thread::sleep(CLIENT_RETRY_INTERVAL);
            continue;
        }
        last_client_error = None;
        {
            let mut s = lock(&control.shutdown);
            *s = daemon.shutdown_handle();
            if control.stop.load(Ordering::SeqCst) {
                daemon.request_shutdown();
            }
        }
        port.set_connected(true);
        tracing::info!(port = %name, socket = %config.socket.display(), "vhost-user frontend connected");

        let result = daemon.wait();

        *lock(&control.shutdown) = None;
        port.detach();
        port.set_connected(false);
        backend.signal_exit();
        let features = backend.acked_features();
        drop(daemon);
        close_leaked(&backend);
        match result {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => tracing::info!(port = %name, features = format_args!("{features:#x}"),
                "vhost-user frontend disconnected"),
            Err(e) => tracing::warn!(port = %name, error = %e,
                "vhost-user connection closed after a protocol error"),
        }
    }
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
