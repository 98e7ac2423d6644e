//! A vhost-user port's settings: the VM's socket, who listens on it, how many queue pairs
//! it may use, whether offloads are offered.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{FieldError, KindSettings, KindWords, Live};
use crate::{DEFAULT_QUEUE_PAIRS, MAX_QUEUE_PAIRS};

/// Who listens on the vhost-user socket.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SocketMode {
    /// vringswitch listens, the VMM connects.
    Server,
    /// The VMM listens (`server=on`), vringswitch connects and reconnects.
    Client,
}

impl std::fmt::Display for SocketMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SocketMode::Server => "server",
            SocketMode::Client => "client",
        })
    }
}

/// What only vhost-user ports have.
// Without `deny_unknown_fields`: only the kind's own fields reach it (PortSpec::from_fields
// refuses the others by name), and the API's schema composes it with the fields every port
// has, which a closed object would refuse.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct VhostUserSettings {
    /// Absolute path of the socket, inside the daemon's socket directory. Left out:
    /// `SOCKET_DIR/NAME.sock`, or `SOCKET_DIR/client/NAME.sock` for a client-mode port.
    #[serde(default, skip_serializing_if = "path_is_empty")]
    #[schema(value_type = String, pattern = "^/", max_length = 107)]
    pub socket: PathBuf,
    /// Who listens on the socket (`server` when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<SocketMode>,
    /// Most queue pairs accepted from the frontend (4 when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 16, default = 4)]
    pub queues: Option<u16>,
    /// Whether checksum and segmentation offloads are offered to the VM (true when left
    /// out). Off, the VM sends complete frames and gets them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offloads: Option<bool>,
}

impl VhostUserSettings {
    pub const FIELDS: &'static [&'static str] = &["socket", "mode", "queues", "offloads"];

    /// Who listens on the socket.
    pub fn mode(&self) -> SocketMode {
        self.mode.unwrap_or(SocketMode::Server)
    }

    /// Whether a socket was given (or filled in).
    pub fn has_socket(&self) -> bool {
        !path_is_empty(&self.socket)
    }
}

fn path_is_empty(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

impl KindSettings for VhostUserSettings {
    fn fields(&self) -> &'static [&'static str] {
        Self::FIELDS
    }

    fn check(&self, _port: &str) -> Result<(), FieldError> {
        if self.has_socket() {
            check_socket_path(&self.socket).map_err(|m| FieldError::invalid("socket", m))?;
        }
        if let Some(q) = self.queues {
            check_queues(q).map_err(|m| FieldError::invalid("queues", m))?;
        }
        Ok(())
    }

    fn fill_defaults(&mut self, _port: &str) {
        self.mode.get_or_insert(SocketMode::Server);
        self.queues.get_or_insert(DEFAULT_QUEUE_PAIRS);
    }

    /// The queue pairs are shown as every port's: not twice.
    fn show(&mut self) {
        self.offloads = Some(KindSettings::offloads(self));
        self.queues = None;
    }

    fn queue_pairs(&self) -> u16 {
        self.queues.unwrap_or(DEFAULT_QUEUE_PAIRS)
    }

    fn offloads(&self) -> bool {
        self.offloads.unwrap_or(true)
    }

    fn socket(&self) -> Option<&Path> {
        self.has_socket().then_some(self.socket.as_path())
    }

    fn has_a_socket(&self) -> bool {
        true
    }

    fn fill_socket(&mut self, port: &str, socket_dir: &Path) {
        if !self.has_socket() {
            self.socket = default_socket(socket_dir, port, self.mode());
        }
    }

    fn describe(&self) -> String {
        format!("socket={} mode={}", self.socket.display(), self.mode())
    }

    fn words(&self, _port: &str, _live: &Live<'_>) -> KindWords {
        let socket = self.socket.display().to_string();
        KindWords {
            mode: self.mode().to_string(),
            summary: format!("socket {socket}"),
            detail: format!("socket {socket}"),
            attached_to: socket,
            own_queues: true,
        }
    }
}

/// Where a port's socket goes when none is given: `SOCKET_DIR/NAME.sock`, or for a
/// client-mode port (the hypervisor creates the socket) `SOCKET_DIR/client/NAME.sock`.
pub fn default_socket(socket_dir: &Path, name: &str, mode: SocketMode) -> PathBuf {
    let file = format!("{name}.sock");
    match mode {
        SocketMode::Server => socket_dir.join(file),
        SocketMode::Client => socket_dir.join(CLIENT_SOCKET_SUBDIR).join(file),
    }
}

/// The subdirectory of the socket directory for sockets the hypervisor creates.
pub const CLIENT_SOCKET_SUBDIR: &str = "client";

/// Checks a vhost-user socket path: absolute, and short enough for a unix socket address.
pub fn check_socket_path(socket: &Path) -> Result<(), String> {
    if !socket.is_absolute() {
        return Err(format!("socket path {} must be absolute", socket.display()));
    }
    // sun_path holds 108 bytes including the terminating NUL.
    if socket.as_os_str().len() > 107 {
        return Err(format!(
            "socket path {} is longer than the 107 bytes a unix socket allows",
            socket.display()
        ));
    }
    Ok(())
}

/// Checks a port's number of queue pairs.
pub fn check_queues(queues: u16) -> Result<(), String> {
    if queues == 0 || queues > MAX_QUEUE_PAIRS {
        return Err(format!(
            "queues must be between 1 and {MAX_QUEUE_PAIRS}, not {queues}"
        ));
    }
    Ok(())
}
