//! Why the daemon could not start, and why a change was refused: the errors the API, the
//! state file and the command line report.

use std::path::PathBuf;

use vringswitch_ports::port::StartError;
use vringswitch_switch::SwitchError;

/// Errors from starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start the forwarding engine: {0}")]
    Switch(SwitchError),
    #[error(transparent)]
    Change(#[from] ChangeError),
    #[error("state file {path}: {message}; fix or remove it to start from the configuration file")]
    State { path: PathBuf, message: String },
    #[error(transparent)]
    Lock(#[from] crate::instance_lock::LockError),
    #[error("cannot create the socket directory {path}: {error}")]
    SocketDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "the {what} {path} is not safe to use: {why}; another user could replace the \
         daemon's sockets or files and receive a VM's memory. To fix: {fix}"
    )]
    UnsafeDir {
        what: String,
        path: PathBuf,
        why: String,
        fix: String,
    },
}

/// The cause is part of the message, not a separate source: said once.
impl From<SwitchError> for DaemonError {
    fn from(e: SwitchError) -> DaemonError {
        DaemonError::Switch(e)
    }
}

/// Why a topology change was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The request itself is wrong (a bad name, a value out of range).
    #[error("{0}")]
    Invalid(String),
    /// A bridge or port of that name already exists, or the socket is taken.
    #[error("{0}")]
    Conflict(String),
    /// The named bridge or port does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The port could not be started (its socket cannot be bound, its interface opened).
    #[error("port {port}: {error}")]
    Start { port: String, error: StartError },
    /// The change was made but could not be written to the state file.
    #[error("the change is in effect but was not saved: {0}")]
    NotSaved(String),
}

/// A port the schema's checks refuse.
pub(crate) fn invalid(e: vringswitch_config::FieldError) -> ChangeError {
    ChangeError::Invalid(e.message)
}

pub(crate) fn no_bridge(name: &str) -> ChangeError {
    ChangeError::NotFound(format!("no bridge named {name:?}"))
}

pub(crate) fn no_port(name: &str) -> ChangeError {
    ChangeError::NotFound(format!("no port named {name:?}"))
}

pub(crate) fn no_group(name: &str) -> ChangeError {
    ChangeError::NotFound(format!("no security group named {name:?}"))
}

/// A missing bridge or port named in a request's body or query, rather than in its URL:
/// the request is wrong (400), the resource addressed was found.
pub(crate) fn referenced(e: ChangeError) -> ChangeError {
    match e {
        ChangeError::NotFound(m) => ChangeError::Invalid(m),
        other => other,
    }
}
