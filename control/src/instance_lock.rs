//! One daemon per socket directory and per state file.
//!
//! Two daemons sharing a socket directory would take each other's sockets, and two sharing
//! a state file would overwrite each other's topology. Each daemon therefore holds an
//! exclusive `flock` on a lock file in its socket directory (`.vringswitch.lock`; socket
//! names never start with a dot) and beside its state file (`STATE.lock`) for as long as
//! it runs. The kernel drops the locks when the process ends, however it ends, so a daemon
//! killed with SIGKILL never blocks the next one. The files hold the owner's pid, for the
//! error message; they are left in place (removing a lock file races with the next owner).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Name of the lock file in the socket directory.
pub const SOCKET_DIR_LOCK: &str = ".vringswitch.lock";

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another vringswitch{} already uses {what} {path}; stop it first, or give this one \
         another {option}",
        pid_text(*.pid)
    )]
    Held {
        what: &'static str,
        path: PathBuf,
        option: &'static str,
        pid: Option<u32>,
    },
    /// The cause is part of the message (not a separate source), so that it is said once.
    #[error("cannot lock {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

/// The locks a running daemon holds; released when dropped.
#[derive(Debug, Default)]
pub struct InstanceLock {
    files: Vec<File>,
}

impl InstanceLock {
    /// Locks `socket_dir` (which must exist) and, if given, `state_file` (its directory is
    /// created if missing).
    pub fn acquire(
        socket_dir: Option<&Path>,
        state_file: Option<&Path>,
    ) -> Result<InstanceLock, LockError> {
        let mut files = Vec::new();
        if let Some(dir) = socket_dir {
            files.push(lock(
                &dir.join(SOCKET_DIR_LOCK),
                "the socket directory",
                dir,
                "--socket-dir",
            )?);
        }
        if let Some(state) = state_file {
            if let Some(dir) = state.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|error| LockError::Io {
                    path: dir.to_path_buf(),
                    error,
                })?;
            }
            let mut name = state.as_os_str().to_owned();
            name.push(".lock");
            files.push(lock(Path::new(&name), "the state file", state, "--state")?);
        }
        Ok(InstanceLock { files })
    }

    /// The lock files, to hand to the process replacing this one (the lock is the open
    /// file's: it stays held as long as either process has it open).
    pub fn files(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.files.iter().map(|f| f.as_fd()).collect()
    }

    /// The lock files the process before this one held, now this one's: each says this
    /// process's pid from now on.
    pub fn adopt(files: Vec<File>) -> Result<InstanceLock, LockError> {
        for f in &files {
            let io = |error| LockError::Io {
                path: PathBuf::from(format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(f)
                )),
                error,
            };
            // The same open file as the lock's holder: locking it again is taking what the
            // handover gave; refused only if another process's lock is on the file.
            match f.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(io(std::io::Error::other(
                        "a lock file handed over is locked by another process",
                    )))
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
            let mut f = f;
            f.set_len(0).map_err(io)?;
            f.rewind().map_err(io)?;
            writeln!(f, "{}", std::process::id()).map_err(io)?;
        }
        Ok(InstanceLock { files })
    }
}

/// Takes an exclusive lock on `lock_path` without waiting and writes our pid into it.
fn lock(
    lock_path: &Path,
    what: &'static str,
    shown: &Path,
    option: &'static str,
) -> Result<File, LockError> {
    let io = |error| LockError::Io {
        path: lock_path.to_path_buf(),
        error,
    };
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        // A symlink planted at the lock's path must not make us write through it.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(lock_path)
        .map_err(io)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = f.read_to_string(&mut text);
            return Err(LockError::Held {
                what,
                path: shown.to_path_buf(),
                option,
                pid: text.trim().parse().ok(),
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    f.set_len(0).map_err(io)?;
    f.rewind().map_err(io)?;
    writeln!(f, "{}", std::process::id()).map_err(io)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vs-lock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_second_owner_is_refused_until_the_first_lets_go() {
        let d = scratch("second");
        let state = d.join("state.json");
        let first = InstanceLock::acquire(Some(&d), Some(&state)).unwrap();
        let e = InstanceLock::acquire(Some(&d), None).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())) && msg.contains("--socket-dir"),
            "{msg}"
        );
        let other = scratch("second-other");
        let e = InstanceLock::acquire(Some(&other), Some(&state)).unwrap_err();
        assert!(e.to_string().contains("--state"), "{e}");
        drop(first);
        let _again = InstanceLock::acquire(Some(&d), Some(&state)).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&other).unwrap();
    }

    #[test]
    fn a_symlink_at_the_lock_path_is_not_followed() {
        let d = scratch("symlink");
        let target = d.join("precious");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, d.join(SOCKET_DIR_LOCK)).unwrap();
        assert!(matches!(
            InstanceLock::acquire(Some(&d), None),
            Err(LockError::Io { .. })
        ));
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
