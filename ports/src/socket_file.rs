//! Unix socket files the daemon listens on: bound without taking a live socket from anyone,
//! and removed only while they are still the daemon's own.
//!
//! A socket file left by a daemon that died is stale and may be replaced. One that a running
//! process still listens on is not: unlinking it would leave that process's clients (VMs
//! that reconnect, `vringctl`) with nothing to connect to, and nothing would say so. Linux
//! lists every bound unix socket of the network namespace in `/proc/net/unix`, with its
//! path and state, so the check needs no connection (which the listener would see as a
//! client that hung up).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// A socket file as this daemon bound it: device, inode and change time (a file system may
/// give a freed inode number to the next file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundSocket {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl BoundSocket {
    fn of(meta: &std::fs::Metadata) -> BoundSocket {
        BoundSocket {
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// As four words, to hand to another process (a hitless upgrade).
    pub fn to_words(self) -> [u64; 4] {
        [self.dev, self.ino, self.ctime.0 as u64, self.ctime.1 as u64]
    }

    /// From [`Self::to_words`].
    pub fn from_words(w: [u64; 4]) -> BoundSocket {
        BoundSocket {
            dev: w[0],
            ino: w[1],
            ctime: (w[2] as i64, w[3] as i64),
        }
    }
}

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum SocketFileError {
    #[error(
        "{path} is the socket of a running process, which still listens on it; stop that \
         process first (is another vringswitch using this socket directory?)"
    )]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket: remove it or choose another path")]
    NotASocket { path: PathBuf },
    // The causes are part of the messages (not separate sources): each is said once.
    #[error("cannot set the permissions of {path}: {error}")]
    Permissions { path: PathBuf, error: io::Error },
    #[error("cannot listen on {path}: {error}")]
    Bind { path: PathBuf, error: io::Error },
}

/// The state `/proc/net/unix` gives a listening socket (`SS_UNCONNECTED` with
/// `__SO_ACCEPTCON` in the flags).
const ACCEPTING: u32 = 1 << 16;

/// Whether some process of this network namespace listens on the socket file `path`.
/// When `/proc/net/unix` cannot be read, a connection attempt decides (refused: stale).
pub fn is_listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return std::os::unix::net::UnixStream::connect(path).is_ok();
    };
    let wanted: Vec<PathBuf> = std::iter::once(path.to_path_buf())
        .chain(std::fs::canonicalize(path).ok())
        .chain(
            std::env::current_dir()
                .ok()
                .filter(|_| path.is_relative())
                .map(|d| d.join(path)),
        )
        .collect();
    let found = listening_paths(&table).any(|p| wanted.iter().any(|w| w.as_os_str() == p));
    found
}

/// Paths of the listening sockets in a `/proc/net/unix` table.
fn listening_paths(table: &str) -> impl Iterator<Item = &str> {
    // Num RefCount Protocol Flags Type St Inode Path: the path is the rest of the line,
    // spaces and all.
    table.lines().skip(1).filter_map(|line| {
        let mut rest = line;
        let mut fields = [""; 7];
        for f in &mut fields {
            rest = rest.trim_start();
            let end = rest.find(char::is_whitespace)?;
            *f = &rest[..end];
            rest = &rest[end..];
        }
        let flags = u32::from_str_radix(fields[3], 16).ok()?;
        let path = rest.trim_start();
        (flags & ACCEPTING != 0 && path.starts_with('/')).then_some(path)
    })
}

/// Binds a listening socket at `path` with permissions `mode`, replacing a stale socket file
/// of an earlier run but never one a process still listens on, nor a file that is not a
/// socket.
pub fn bind(path: &Path, mode: u32) -> Result<(UnixListener, BoundSocket), SocketFileError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(SocketFileError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        if is_listening(path) {
            return Err(SocketFileError::InUse {
                path: path.to_path_buf(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |error| SocketFileError::Bind {
        path: path.to_path_buf(),
        error,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    // The change time is taken after the chmod, which sets it.
    let bound = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::symlink_metadata(path));
    match bound {
        Ok(meta) => Ok((listener, BoundSocket::of(&meta))),
        Err(error) => {
            let _ = std::fs::remove_file(path);
            Err(SocketFileError::Permissions {
                path: path.to_path_buf(),
                error,
            })
        }
    }
}

/// What is at a socket's path now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAtPath {
    /// The socket file as it was bound.
    Ours,
    /// Nothing: someone deleted it.
    Gone,
    /// Another file, put there by someone else (or unreadable).
    Other,
}

/// Whether the file at `path` is still the socket `bound` describes.
pub fn file_at(path: &Path, bound: BoundSocket) -> FileAtPath {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() && BoundSocket::of(&m) == bound => FileAtPath::Ours,
        Err(e) if e.kind() == io::ErrorKind::NotFound => FileAtPath::Gone,
        _ => FileAtPath::Other,
    }
}

/// Removes the socket file at `path` if it is still the one `bound` describes: a file put
/// there since by someone else stays.
pub fn remove_if_ours(path: &Path, bound: BoundSocket) {
    if file_at(path, bound) == FileAtPath::Ours {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vs-sockfile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_file_at_a_path_is_ours_gone_or_another() {
        let d = scratch("file-at");
        let path = d.join("s.sock");
        let (_listener, bound) = bind(&path, 0o660).unwrap();
        assert_eq!(file_at(&path, bound), FileAtPath::Ours);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(file_at(&path, bound), FileAtPath::Gone);
        std::fs::write(&path, "x").unwrap();
        assert_eq!(file_at(&path, bound), FileAtPath::Other);
        remove_if_ours(&path, bound);
        assert!(path.exists(), "another's file was removed");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn proc_net_unix_lines_give_listening_paths_only() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 23456 /run/a.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 23457 /run/a.sock\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 23458 @abstract\n\
            0000000000000000: 00000002 00000000 00000000 0002 01 23459 /run/dgram\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 23460\n\
            0000000000000000: 00000002 00000000 00010000 0001 01   461 /run/with space.sock\n";
        assert_eq!(
            listening_paths(table).collect::<Vec<_>>(),
            ["/run/a.sock", "/run/with space.sock"]
        );
    }

    #[test]
    fn a_live_socket_is_kept_and_a_stale_one_replaced() {
        let d = scratch("live");
        let path = d.join("p.sock");
        let (live, _) = bind(&path, 0o600).unwrap();
        assert!(is_listening(&path));
        assert!(matches!(
            bind(&path, 0o600),
            Err(SocketFileError::InUse { .. })
        ));
        assert!(path.exists(), "a live socket was unlinked");
        drop(live);
        // Closed without unlinking, as after kill -9: stale.
        assert!(!is_listening(&path));
        let (_again, _) = bind(&path, 0o600).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_never_replaced() {
        let d = scratch("file");
        let path = d.join("p.sock");
        std::fs::write(&path, b"keep me").unwrap();
        let e = bind(&path, 0o600).unwrap_err();
        assert!(e.to_string().contains("exists and is not a socket"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn only_our_own_socket_file_is_removed() {
        let d = scratch("ours");
        let path = d.join("p.sock");
        let (l, bound) = bind(&path, 0o600).unwrap();
        drop(l);
        // Someone else's socket took the path since (later than a clock tick).
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (_other, _) = bind(&path, 0o600).unwrap();
        remove_if_ours(&path, bound);
        assert!(path.exists(), "removed a socket that was not ours");
        let theirs = BoundSocket::of(&std::fs::symlink_metadata(&path).unwrap());
        remove_if_ours(&path, theirs);
        assert!(!path.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
