//! Replacing the running daemon by the binary installed on disk without any VM noticing
//! (`vringctl upgrade`, `POST /v1/upgrade`; docs/architecture.md, "Hitless upgrade").
//!
//! The old process ([`Upgrader::run`]) starts the new binary as its child, with its own
//! arguments and one end of a socket pair (`--handover-fd N`). Once the child has said
//! which handover versions it speaks and that its configuration is loaded, the old one
//! stops its workers, lets go of every port and sends everything ([`crate::handover`]);
//! the child ([`take_from_parent`], then [`crate::daemon::Daemon::start_handed`]) carries
//! every port on and starts its workers, and says so. Only then does the old one tell
//! systemd the new main pid and exit, without closing anything. If the child exits, hangs
//! past the deadline or refuses, the old one kills it, takes every port back and serves
//! on; the error says why.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use vringswitch_ports::fd_channel::{self, Limits};
use vringswitch_ports::port::HandedPort;
use vringswitch_ports::socket_file::BoundSocket;

use crate::daemon::{Daemon, Handed};
use crate::handover::{self, kind, Carried, CarriedConnection, HandoverError, Running};

/// How long the new binary may take by default to start, load its configuration and take
/// everything over.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// The running daemon's means of replacing itself.
pub struct Upgrader {
    /// The daemon's binary as it was started: the path, whatever is installed there now.
    exe: PathBuf,
    /// Its arguments, without any `--handover-fd`.
    args: Vec<OsString>,
    api_tcp: Option<OwnedFd>,
    api_unix: Option<(OwnedFd, BoundSocket)>,
    /// Held during an upgrade: one at a time.
    busy: Mutex<()>,
    /// Set from the start of an upgrade; cleared if it fails.
    in_progress: AtomicBool,
    /// Set once an upgrade succeeded.
    succeeded: AtomicBool,
    /// Notified once an upgrade succeeded: the process then exits.
    done: tokio::sync::Notify,
}

/// What a successful upgrade did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Upgraded {
    /// The process that served until now, and exits.
    pub old_pid: u32,
    /// The process serving from now on.
    pub new_pid: u32,
    /// The version of the new binary.
    pub new_version: String,
    /// The handover format both spoke.
    pub handover_version: u32,
    /// How long no worker forwarded: from the old one's stop to the new one's start.
    pub paused_ms: f64,
    /// Ports carried on.
    pub ports: usize,
    /// Ports whose peer's connection could not be carried on (it reconnects), with why.
    pub not_carried: Vec<(String, String)>,
}

/// Why an upgrade did not happen; the old process serves on.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot upgrade now: {0}")]
    Refused(String),
    #[error("an upgrade is in progress already")]
    Busy,
    #[error("the new binary {exe}: {why}; the running daemon serves on")]
    NewBinary { exe: String, why: String },
}

impl Upgrader {
    /// The upgrader of a daemon started as `exe` with `args` (a `--handover-fd` among
    /// them is left out), serving its API on `api_tcp` and `api_unix`.
    pub fn new(
        exe: PathBuf,
        args: Vec<OsString>,
        api_tcp: Option<OwnedFd>,
        api_unix: Option<(OwnedFd, BoundSocket)>,
    ) -> Upgrader {
        Upgrader {
            exe,
            args: without_handover_fd(args),
            api_tcp,
            api_unix,
            busy: Mutex::new(()),
            in_progress: AtomicBool::new(false),
            succeeded: AtomicBool::new(false),
            done: tokio::sync::Notify::new(),
        }
    }

    /// Whether an upgrade is under way (or done: the process is about to exit).
    pub fn in_progress(&self) -> bool {
        self.in_progress.load(Ordering::SeqCst)
    }

    /// Returns once an upgrade succeeded.
    pub async fn finished(&self) {
        self.done.notified().await;
    }

    /// Waits for an upgrade under way to end (each of its steps is bounded by its
    /// deadline); whether it succeeded (the new process serves).
    pub fn outcome(&self) -> bool {
        while self.in_progress() && !self.succeeded.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.succeeded.load(Ordering::SeqCst)
    }

    /// Replaces `daemon` by a new process of the binary at its path, waiting at most
    /// `deadline` for each of its steps.
    pub fn run(&self, daemon: &Daemon, deadline: Duration) -> Result<Upgraded, UpgradeError> {
        let Ok(_one) = self.busy.try_lock() else {
            return Err(UpgradeError::Busy);
        };
        self.in_progress.store(true, Ordering::SeqCst);
        let result = self.replace(daemon, deadline);
        match &result {
            Ok(u) => {
                tracing::info!(new_pid = u.new_pid, version = %u.new_version,
                    paused_ms = u.paused_ms, ports = u.ports, "upgraded: the new process serves");
                self.succeeded.store(true, Ordering::SeqCst);
                self.done.notify_one();
            }
            Err(e) => {
                tracing::warn!(error = %e, "upgrade failed");
                self.in_progress.store(false, Ordering::SeqCst);
            }
        }
        result
    }

    fn replace(&self, daemon: &Daemon, deadline: Duration) -> Result<Upgraded, UpgradeError> {
        if let Some(why) = daemon.handover_refusal() {
            return Err(UpgradeError::Refused(why));
        }
        let new_binary = |why: String| UpgradeError::NewBinary {
            exe: self.exe.display().to_string(),
            why,
        };
        let (ours, theirs) =
            fd_channel::pair_for_child().map_err(|e| new_binary(format!("no socket pair: {e}")))?;
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.args(&self.args)
            .arg("--handover-fd")
            .arg(theirs.as_raw_fd().to_string())
            .stdin(std::process::Stdio::null());
        let child = fd_channel::spawn_keeping(&mut cmd, &theirs)
            .map_err(|e| new_binary(format!("cannot be started: {e}")))?;
        drop(theirs);
        let mut child = ChildGuard(Some(child));
        tracing::info!(exe = %self.exe.display(), pid = child.pid(), "upgrade: new process started");
        let limits = Limits {
            timeout: deadline,
            ..Limits::default()
        };
        let failed =
            |child: &mut ChildGuard, e: HandoverError| new_binary(child.explain(e, "at start"));
        let version = handover::greet_as_old(&ours, &limits).map_err(|e| failed(&mut child, e))?;
        handover::receive(&ours, &limits, kind::PREPARED, "word that it is ready")
            .map_err(|e| failed(&mut child, e))?;
        if version < handover::CARRIES_CONNECTIONS && daemon.tracked_connections() > 0 {
            let why = format!(
                "security groups track {} connections, and the new binary speaks handover \
                 version {version}, which does not carry them: it would cut them",
                daemon.tracked_connections()
            );
            handover::refuse(&ours, &why);
            return Err(UpgradeError::Refused(why));
        }
        let mut frozen = daemon.hand_over().map_err(|why| {
            handover::refuse(&ours, &why);
            UpgradeError::Refused(why)
        })?;
        let taken = self
            .send_all(&ours, daemon, &mut frozen, version)
            .and_then(|()| handover::receive(&ours, &limits, kind::RUNNING, "word that it runs"))
            .and_then(|frame| handover::body_of::<Running>(&frame, "word that it runs"));
        let running = match taken {
            Ok(r) => r,
            Err(e) => {
                // Killed before anything is taken back: never two processes on one ring.
                let why = child.explain(e, "while taking over");
                child.kill();
                daemon.take_back(frozen);
                return Err(new_binary(why));
            }
        };
        let paused_ms = frozen.since.elapsed().as_secs_f64() * 1e3;
        let ports = frozen.ports.len();
        // The pid systemd is told is the one we started, whatever the child says of itself:
        // a wrong word there would have systemd follow (and later kill) another process.
        let new_pid = child.pid();
        if running.pid != new_pid {
            tracing::warn!(
                started = new_pid,
                reported = running.pid,
                "upgrade: the new process reports a pid other than the one started; \
                 systemd is told the one started"
            );
        }
        // systemd follows the new process from now on (NotifyAccess=main lets the main
        // process say so); without systemd this does nothing.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::MainPid(new_pid)]);
        let _ = fd_channel::send(&ours, kind::HANDED, b"{}", &[]);
        child.let_live();
        frozen.keep_until_exit();
        Ok(Upgraded {
            old_pid: std::process::id(),
            new_pid,
            new_version: running.version,
            handover_version: version,
            paused_ms,
            ports,
            not_carried: running.not_carried,
        })
    }

    /// Sends the state, the lock files and API listeners, then every port.
    fn send_all(
        &self,
        sock: &UnixStream,
        daemon: &Daemon,
        frozen: &mut crate::daemon::Frozen<'_>,
        version: u32,
    ) -> Result<(), HandoverError> {
        let mut fds: Vec<BorrowedFd<'_>> = daemon.lock_files();
        frozen.carried.api_tcp = self.api_tcp.is_some();
        fds.extend(self.api_tcp.as_ref().map(|f| f.as_fd()));
        frozen.carried.api_unix = self.api_unix.as_ref().map(|(_, b)| b.to_words());
        fds.extend(self.api_unix.as_ref().map(|(f, _)| f.as_fd()));
        handover::send_with(sock, kind::STATE, &frozen.carried, &fds)?;
        if version >= handover::CARRIES_CONNECTIONS {
            let conns = frozen.connections(daemon.switch.now_secs() as u32);
            for chunk in conns.chunks(handover::CONNECTIONS_PER_FRAME) {
                let body = handover::encode_connections(chunk);
                fd_channel::send(sock, kind::CONNECTIONS, &body, &[])
                    .map_err(fd_channel::ChannelError::Io)?;
            }
        }
        for (name, port) in &frozen.ports {
            let fds: Vec<BorrowedFd<'_>> = port.fds.iter().map(|f| f.as_fd()).collect();
            let body = handover::port_frame(name, &port.data);
            fd_channel::send(sock, kind::PORT, &body, &fds)
                .map_err(fd_channel::ChannelError::Io)?;
        }
        fd_channel::send(sock, kind::SENT, b"{}", &[]).map_err(fd_channel::ChannelError::Io)?;
        Ok(())
    }
}

/// `args` without `--handover-fd N` (or `--handover-fd=N`).
fn without_handover_fd(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        if a == "--handover-fd" {
            skip = true;
            continue;
        }
        if a.to_str().is_some_and(|s| s.starts_with("--handover-fd=")) {
            continue;
        }
        out.push(a);
    }
    out
}

/// The new process, killed (and reaped) unless let live.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// What went wrong, in words: for a channel that failed, the child's exit status if
    /// it exited; else `e` (a refusal, an incompatible version: the child may exit right
    /// after, which says nothing more).
    fn explain(&mut self, e: HandoverError, when: &str) -> String {
        let Some(child) = self.0.as_mut() else {
            return e.to_string();
        };
        if !matches!(e, HandoverError::Channel(_)) {
            return e.to_string();
        }
        // A child that exits closes its end: give it a moment to be reaped.
        let until = Instant::now() + Duration::from_millis(500);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return format!(
                        "exited {when} ({status}); its own error is in the daemon's log"
                    )
                }
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
                _ => break,
            }
        }
        match e {
            HandoverError::Channel(fd_channel::ChannelError::Io(io))
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                "did not answer in time (hung?): it was killed".into()
            }
            e => e.to_string(),
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The child lives on (the new daemon): it outlives this process, which does not
    /// wait for it.
    fn let_live(&mut self) {
        self.0 = None;
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the new process received from its parent.
pub struct FromParent {
    /// The channel, to say it runs (or why not).
    pub channel: UnixStream,
    /// What the daemon starts from (taken by [`Daemon::start_handed`]).
    pub handed: Option<Handed>,
    old_pid: u32,
    pub api_tcp: Option<std::net::TcpListener>,
    pub api_unix: Option<(std::os::unix::net::UnixListener, BoundSocket)>,
    /// The handover version both speak.
    pub version: u32,
    limits: Limits,
}

/// The new process's side, up to having everything: the greeting on the inherited
/// descriptor `fd`, then (once `prepared` has loaded the configuration: its error is sent
/// to the parent as a refusal) the state, the ports and their descriptors.
pub fn take_from_parent(
    fd: i32,
    deadline: Duration,
    prepared: impl FnOnce() -> Result<(), String>,
) -> Result<FromParent, String> {
    let channel = fd_channel::inherited(fd).map_err(|e| format!("--handover-fd {fd}: {e}"))?;
    let limits = Limits {
        timeout: deadline,
        ..Limits::default()
    };
    let version = handover::greet_as_new(&channel, &limits).map_err(|e| e.to_string())?;
    if let Err(why) = prepared() {
        handover::refuse(&channel, &why);
        return Err(why);
    }
    fd_channel::send(&channel, kind::PREPARED, b"{}", &[]).map_err(|e| e.to_string())?;
    let got = receive_all(&channel, &limits);
    let (carried, fds, ports, connections) = match got {
        Ok(g) => g,
        Err(e) => {
            handover::refuse(&channel, &e);
            return Err(e);
        }
    };
    let mut fds = fds.into_iter();
    let locks: Vec<File> = fds
        .by_ref()
        .take(carried.lock_files)
        .map(File::from)
        .collect();
    let api_tcp = carried
        .api_tcp
        .then(|| fds.next().map(std::net::TcpListener::from))
        .flatten();
    let api_unix = carried
        .api_unix
        .and_then(|w| Some((fds.next().map(std::os::unix::net::UnixListener::from)?, w)))
        .map(|(l, w)| (l, BoundSocket::from_words(w)));
    if locks.len() != carried.lock_files
        || api_tcp.is_some() != carried.api_tcp
        || api_unix.is_some() != carried.api_unix.is_some()
        || fds.next().is_some()
    {
        let why = "the state's descriptors are not as it says".to_owned();
        handover::refuse(&channel, &why);
        return Err(why);
    }
    Ok(FromParent {
        channel,
        old_pid: carried.pid,
        handed: Some(Handed {
            carried,
            locks,
            ports,
            connections,
        }),
        api_tcp,
        api_unix,
        version,
        limits,
    })
}

/// The state, its descriptors, and the ports by name.
type Received = (
    Carried,
    Vec<OwnedFd>,
    HashMap<String, HandedPort>,
    Vec<CarriedConnection>,
);

/// The state frame and every port frame, up to SENT.
fn receive_all(channel: &UnixStream, limits: &Limits) -> Result<Received, String> {
    let state =
        handover::receive(channel, limits, kind::STATE, "the state").map_err(|e| e.to_string())?;
    let carried: Carried = handover::body_of(&state, "the state").map_err(|e| e.to_string())?;
    let mut ports = HashMap::new();
    let mut connections = Vec::new();
    loop {
        let frame = fd_channel::recv(channel, limits).map_err(|e| e.to_string())?;
        match frame.kind {
            kind::SENT => break,
            kind::CONNECTIONS if ports.is_empty() && frame.fds.is_empty() => {
                connections.extend(handover::decode_connections(&frame.body)?);
            }
            kind::PORT => {
                let (name, data) =
                    handover::parse_port_frame(&frame.body).map_err(|e| e.to_string())?;
                let port = HandedPort {
                    data: data.to_vec(),
                    fds: frame.fds,
                };
                if ports.insert(name.clone(), port).is_some() {
                    return Err(format!("port {name} was sent twice"));
                }
            }
            kind::REFUSE => {
                return Err(format!(
                    "the old process gave up: {}",
                    String::from_utf8_lossy(&frame.body)
                ))
            }
            other => return Err(format!("a frame of kind {other} where a port was due")),
        }
    }
    Ok((carried, state.fds, ports, connections))
}

impl FromParent {
    /// The pid of the daemon this one replaces.
    pub fn parent_pid(&self) -> u32 {
        self.old_pid
    }

    /// Says the new daemon runs, then waits (at most the deadline) for the old one to let
    /// systemd know: only then may this process speak to systemd as the main process.
    pub fn say_running(&self, not_carried: Vec<(String, String)>) -> Result<(), String> {
        let running = Running {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            not_carried,
        };
        handover::send_with(&self.channel, kind::RUNNING, &running, &[])
            .map_err(|e| e.to_string())?;
        handover::receive(
            &self.channel,
            &self.limits,
            kind::HANDED,
            "word that it let go",
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    /// Says why this process cannot take over (the old one then serves on).
    pub fn refuse(&self, why: &str) {
        handover::refuse(&self.channel, why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inherited_handover_fd_is_not_passed_on() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            without_handover_fd(args(&[
                "--config",
                "c.toml",
                "--handover-fd",
                "5",
                "--state",
                "s"
            ])),
            args(&["--config", "c.toml", "--state", "s"])
        );
        assert_eq!(
            without_handover_fd(args(&["--handover-fd=7", "--api", "127.0.0.1:1"])),
            args(&["--api", "127.0.0.1:1"])
        );
    }
}
