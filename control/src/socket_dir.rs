//! The daemon's directories made safe: the socket directory (and its `client/` subdirectory)
//! made with the modes it needs and refused when another user could replace what is in
//! it, and the socket paths the API accepts, which must lie in it.

use std::path::Path;

use crate::errors::{ChangeError, DaemonError};

/// A socket's file name created over the API (see [`socket_pattern`]): a valid name, not
/// starting with a dot.
fn socket_name_ok(name: &str) -> bool {
    vringswitch_config::check_name_str("socket", name).is_ok() && !name.starts_with('.')
}

/// The socket directory as written in socket paths: without trailing slashes.
fn dir_text(dir: &Path) -> String {
    let d = dir.to_string_lossy();
    let t = d.trim_end_matches('/');
    if t.is_empty() {
        "/".to_owned()
    } else {
        t.to_owned()
    }
}

/// The subdirectory of the socket directory where hypervisors create the sockets of
/// client-mode ports: mode 2770, so that a hypervisor in the daemon's group may create
/// sockets there and they belong to that group (the daemon's own directory is 0750).
pub use vringswitch_config::CLIENT_SOCKET_SUBDIR;

/// Refuses a socket path that is not `DIR/NAME` or `DIR/client/NAME`, NAME being 1 to 64
/// characters of A-Z a-z 0-9 - _ . not starting with a dot. Exactly what
/// [`socket_pattern`] says.
pub(crate) fn check_inside(socket: &Path, dir: &Path) -> Result<(), ChangeError> {
    let dir = dir_text(dir);
    let s = socket.to_string_lossy();
    let name = s.strip_prefix(dir.as_str()).and_then(|rest| {
        if dir == "/" {
            Some(rest)
        } else {
            rest.strip_prefix('/')
        }
    });
    // DIR/client itself is the subdirectory, never a socket.
    let name = name.and_then(|n| {
        match n
            .strip_prefix(CLIENT_SOCKET_SUBDIR)
            .and_then(|r| r.strip_prefix('/'))
        {
            Some(in_subdir) => Some(in_subdir),
            None => (n != CLIENT_SOCKET_SUBDIR).then_some(n),
        }
    });
    match name {
        Some(n) if socket_name_ok(n) => Ok(()),
        _ => Err(ChangeError::Invalid(format!(
            "socket {} is outside the socket directory {dir}: use {dir}/NAME, or \
             {dir}/{CLIENT_SOCKET_SUBDIR}/NAME for a socket the hypervisor creates, NAME being \
             1 to 64 characters of A-Z a-z 0-9 - _ . not starting with a dot",
            socket.display(),
        ))),
    }
}

/// The regular expression of socket paths accepted over the API, for the OpenAPI document.
pub fn socket_pattern(dir: &Path) -> String {
    let dir = dir_text(dir);
    let mut escaped = String::new();
    for c in dir.chars() {
        if !c.is_ascii_alphanumeric() && c != '/' && c != '_' && c != '-' {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    let sep = if dir == "/" { "" } else { "/" };
    format!("^{escaped}{sep}({CLIENT_SOCKET_SUBDIR}/)?[A-Za-z0-9_-][A-Za-z0-9._-]{{0,63}}$")
}

/// Creates the socket directory (mode 0750) if it does not exist, and its subdirectory for
/// the sockets hypervisors create ([`CLIENT_SOCKET_SUBDIR`], mode 2770). Either must be
/// this daemon's own, not writable by other users (see [`check_own_dir`]).
pub(crate) fn create_socket_dir(dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |error| DaemonError::SocketDir { path, error }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(err(dir))?;
    check_own_dir(dir, "socket directory", 0o022)?;
    let client = dir.join(CLIENT_SOCKET_SUBDIR);
    match std::fs::DirBuilder::new().mode(0o770).create(&client) {
        Ok(()) => {}
        // Group members may write in it (hypervisors create their sockets there); nobody
        // else may.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return check_own_dir(&client, "client socket directory", 0o002)
        }
        Err(e) => return Err(err(&client)(e)),
    }
    // The setgid bit is set afterwards: mkdir's mode is masked by the umask and may drop it.
    std::fs::set_permissions(&client, std::fs::Permissions::from_mode(0o2770)).map_err(err(&client))
}

/// The effective user id of this process (the owner of `/proc/self`).
pub fn own_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// Refuses a directory where another user could replace the daemon's files: one that is a
/// symbolic link, is owned by another user, or has any of the `forbidden` write bits
/// (group 0o020, others 0o002). Whoever controls a socket directory receives the memory
/// of every VM that connects through it.
pub fn check_own_dir(dir: &Path, what: &str, forbidden: u32) -> Result<(), DaemonError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).map_err(|error| DaemonError::SocketDir {
        path: dir.to_path_buf(),
        error,
    })?;
    let me = own_uid();
    let unsafe_dir = |why: String| DaemonError::UnsafeDir {
        what: what.to_owned(),
        path: dir.to_path_buf(),
        why,
        fix: format!(
            "remove it, or make it this user's alone: chown {me} {d} && chmod go-w {d}",
            d = dir.display()
        ),
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    if meta.uid() != me {
        return Err(unsafe_dir(format!(
            "it belongs to user {}, not to this daemon's user {me}",
            meta.uid()
        )));
    }
    let writable = meta.mode() & forbidden;
    if writable != 0 {
        let by = match (writable & 0o020 != 0, writable & 0o002 != 0) {
            (true, true) => "its group and by other users",
            (true, false) => "its group",
            _ => "other users",
        };
        return Err(unsafe_dir(format!(
            "it is writable by {by} (mode {:04o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_must_lie_in_the_socket_directory() {
        for dir in ["/run/vringswitch", "/run/vringswitch/"] {
            let dir = Path::new(dir);
            for good in [
                "/run/vringswitch/a.sock",
                "/run/vringswitch/vm-1_x",
                "/run/vringswitch/client/a.sock",
                "/run/vringswitch/client/client",
            ] {
                assert!(check_inside(Path::new(good), dir).is_ok(), "{good}");
            }
            for bad in [
                "/run/vringswitch",
                "/run/vringswitch/",
                "/run/vringswitch//a.sock",
                "/run/vringswitch/vms/a.sock",
                "/run/vringswitch/client/",
                "/run/vringswitch/client",
                "/run/vringswitch/client/x/a.sock",
                "/run/vringswitch/client/.a",
                "/run/vringswitch/./a.sock",
                "/run/vringswitch/../a.sock",
                "/run/vringswitch/.hidden",
                "/run/vringswitch/a b",
                "/run/vringswitch2/a.sock",
                "/tmp/a.sock",
            ] {
                let e = check_inside(Path::new(bad), dir).unwrap_err();
                assert!(
                    e.to_string().contains("outside the socket directory"),
                    "{bad}"
                );
            }
        }
        assert!(check_inside(Path::new("/a.sock"), Path::new("/")).is_ok());
        assert_eq!(
            socket_pattern(Path::new("/tmp/vs.1+x/")),
            r"^/tmp/vs\.1\+x/(client/)?[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"
        );
        assert_eq!(
            socket_pattern(Path::new("/")),
            "^/(client/)?[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"
        );
    }
}
