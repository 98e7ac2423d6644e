//! The hitless upgrade's protocol between the running daemon (the old process) and the
//! binary replacing it (the new process, its child), over one end each of a socket pair
//! ([`vringswitch_ports::fd_channel`]); docs/architecture.md, "Hitless upgrade".
//!
//! It starts with both sides saying which handover versions they speak; the highest both
//! speak is used, and with none in common the old one refuses, saying which versions each
//! side has, and keeps serving. Each side also checks who is at the other end: the new
//! process takes its state only from its parent, the old one hands it only to its child,
//! both of the same user.

use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};
use vringswitch_ports::fd_channel::{self, ChannelError, Frame, Limits};

/// The handover format this binary writes.
pub const VERSION: u32 = 1;
/// The oldest format this binary still reads.
pub const OLDEST_READ: u32 = 1;

/// Frame kinds.
pub mod kind {
    /// Each side's versions.
    pub const HELLO: u16 = 1;
    /// One side gives up, saying why (the other then ends the exchange).
    pub const REFUSE: u16 = 2;
}

/// What each side says first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The oldest and newest handover versions it speaks.
    pub versions: (u32, u32),
    /// The binary's own version, for messages.
    pub binary: String,
}

impl Hello {
    /// This binary's.
    pub fn ours() -> Hello {
        Hello {
            versions: (OLDEST_READ, VERSION),
            binary: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// Why a handover did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("the handover channel: {0}")]
    Channel(#[from] ChannelError),
    #[error("the other side is process {pid} of user {uid}, not {expected}")]
    Stranger {
        pid: u32,
        uid: u32,
        expected: &'static str,
    },
    #[error(
        "no handover version in common: vringswitch {old} hands over versions {} to {}, \
         vringswitch {new} takes {} to {}",
        old_versions.0, old_versions.1, new_versions.0, new_versions.1
    )]
    Incompatible {
        old: String,
        old_versions: (u32, u32),
        new: String,
        new_versions: (u32, u32),
    },
    #[error("the other side refused: {0}")]
    Refused(String),
    #[error("the other side sent {what} where {expected} was due")]
    Unexpected {
        what: String,
        expected: &'static str,
    },
}

fn send_json<T: Serialize>(sock: &UnixStream, kind: u16, value: &T) -> Result<(), HandoverError> {
    let body = serde_json::to_vec(value).map_err(|e| ChannelError::Io(e.into()))?;
    fd_channel::send(sock, kind, &body, &[]).map_err(ChannelError::Io)?;
    Ok(())
}

/// The body of `frame` as a `T`, if it is of kind `want`; a refusal or another kind is an
/// error saying so.
fn expect<T: for<'de> Deserialize<'de>>(
    frame: Frame,
    want: u16,
    expected: &'static str,
) -> Result<T, HandoverError> {
    if frame.kind == kind::REFUSE {
        return Err(HandoverError::Refused(
            String::from_utf8_lossy(&frame.body).into_owned(),
        ));
    }
    if frame.kind != want {
        return Err(HandoverError::Unexpected {
            what: format!("a frame of kind {}", frame.kind),
            expected,
        });
    }
    serde_json::from_slice(&frame.body).map_err(|e| HandoverError::Unexpected {
        what: format!("a body that does not read ({e})"),
        expected,
    })
}

/// The version both `a` and `b` speak, the highest.
fn common(a: (u32, u32), b: (u32, u32)) -> Option<u32> {
    let (low, high) = (a.0.max(b.0), a.1.min(b.1));
    (low <= high).then_some(high)
}

/// Checks that the other end of `sock` is `pid` (when given) and of this process's user.
fn check_peer(
    sock: &UnixStream,
    pid: Option<u32>,
    expected: &'static str,
) -> Result<(), HandoverError> {
    let (their_pid, their_uid) = fd_channel::peer(sock).map_err(ChannelError::Io)?;
    if their_uid != crate::socket_dir::own_uid() || pid.is_some_and(|p| p != their_pid) {
        return Err(HandoverError::Stranger {
            pid: their_pid,
            uid: their_uid,
            expected,
        });
    }
    Ok(())
}

/// The old process's side of the greeting, with its child `child` at the other end:
/// returns the version to hand over in, or refuses (telling the child why).
pub fn greet_as_old(sock: &UnixStream, child: u32, limits: &Limits) -> Result<u32, HandoverError> {
    check_peer(sock, Some(child), "the new vringswitch this one started")?;
    let ours = Hello::ours();
    send_json(sock, kind::HELLO, &ours)?;
    let theirs: Hello = expect(fd_channel::recv(sock, limits)?, kind::HELLO, "its versions")?;
    match common(ours.versions, theirs.versions) {
        Some(v) => Ok(v),
        None => {
            let e = HandoverError::Incompatible {
                old: ours.binary,
                old_versions: ours.versions,
                new: theirs.binary,
                new_versions: theirs.versions,
            };
            let _ = fd_channel::send(sock, kind::REFUSE, e.to_string().as_bytes(), &[]);
            Err(e)
        }
    }
}

/// The new process's side: its parent at the other end says its versions, this one
/// answers with its own. Returns the version both will speak (the old process decides and
/// may still refuse, which the next frame says).
pub fn greet_as_new(sock: &UnixStream, limits: &Limits) -> Result<u32, HandoverError> {
    check_peer(
        sock,
        Some(std::os::unix::process::parent_id()),
        "the vringswitch that started this one",
    )?;
    let theirs: Hello = expect(fd_channel::recv(sock, limits)?, kind::HELLO, "its versions")?;
    let ours = Hello::ours();
    send_json(sock, kind::HELLO, &ours)?;
    common(theirs.versions, ours.versions).ok_or(HandoverError::Incompatible {
        old: theirs.binary,
        old_versions: theirs.versions,
        new: ours.binary,
        new_versions: ours.versions,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;

    fn limits() -> Limits {
        Limits {
            timeout: Duration::from_secs(2),
            ..Limits::default()
        }
    }

    #[test]
    fn versions_in_common_give_the_highest() {
        assert_eq!(common((1, 3), (2, 5)), Some(3));
        assert_eq!(common((1, 1), (1, 1)), Some(1));
        assert_eq!(common((1, 2), (3, 4)), None);
    }

    #[test]
    fn a_stranger_at_the_other_end_is_refused() {
        // In one process the pair's other end is this process, not a child: the old side
        // refuses to hand over to it, the new side to take from it.
        let (a, b) = UnixStream::pair().unwrap();
        let e = greet_as_old(&a, std::process::id() + 1, &limits()).unwrap_err();
        assert!(matches!(e, HandoverError::Stranger { .. }), "{e}");
        let e = greet_as_new(&b, &limits()).unwrap_err();
        assert!(
            e.to_string()
                .contains("not the vringswitch that started this one"),
            "{e}"
        );
    }

    #[test]
    fn a_new_binary_that_speaks_an_old_version_too_is_greeted_in_it() {
        let (old, new) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let theirs: Hello = expect(
                fd_channel::recv(&new, &limits()).unwrap(),
                kind::HELLO,
                "hello",
            )
            .unwrap();
            assert_eq!(theirs, Hello::ours());
            let mine = Hello {
                versions: (1, 4),
                binary: "2.0.0".into(),
            };
            send_json(&new, kind::HELLO, &mine).unwrap();
        });
        assert_eq!(
            greet_as_old(&old, std::process::id(), &limits()).unwrap(),
            1
        );
        t.join().unwrap();
    }

    #[test]
    fn an_incompatible_new_binary_is_refused_and_told_why() {
        let (old, new) = UnixStream::pair().unwrap();
        // The "new" side, by hand: versions 7 to 9 only.
        let t = std::thread::spawn(move || {
            let hello = fd_channel::recv(&new, &limits()).unwrap();
            assert_eq!(hello.kind, kind::HELLO);
            let mine = Hello {
                versions: (7, 9),
                binary: "9.0.0".into(),
            };
            fd_channel::send(&new, kind::HELLO, &serde_json::to_vec(&mine).unwrap(), &[]).unwrap();
            fd_channel::recv(&new, &limits()).unwrap()
        });
        let e = greet_as_old(&old, std::process::id(), &limits()).unwrap_err();
        assert!(
            e.to_string()
                .contains("hands over versions 1 to 1, vringswitch 9.0.0 takes 7 to 9"),
            "{e}"
        );
        let refusal = t.join().unwrap();
        assert_eq!(refusal.kind, kind::REFUSE);
        assert!(String::from_utf8_lossy(&refusal.body).contains("no handover version in common"));
    }

    #[test]
    fn garbage_where_a_greeting_is_due_is_refused() {
        let (old, new) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let _ = fd_channel::recv(&new, &limits());
            (&new).write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
            new
        });
        let e = greet_as_old(&old, std::process::id(), &limits()).unwrap_err();
        assert!(
            matches!(e, HandoverError::Channel(ChannelError::BadMagic)),
            "{e}"
        );
        let _ = t.join();
        // A frame of the wrong kind, or a body that does not read.
        let (old, new) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let _ = fd_channel::recv(&new, &limits());
            fd_channel::send(&new, 9, b"{}", &[]).unwrap();
            new
        });
        let e = greet_as_old(&old, std::process::id(), &limits()).unwrap_err();
        assert!(
            e.to_string()
                .contains("a frame of kind 9 where its versions was due"),
            "{e}"
        );
        let _ = t.join();
        let (old, new) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let _ = fd_channel::recv(&new, &limits());
            fd_channel::send(&new, kind::HELLO, b"[1, 2", &[]).unwrap();
            new
        });
        let e = greet_as_old(&old, std::process::id(), &limits()).unwrap_err();
        assert!(e.to_string().contains("a body that does not read"), "{e}");
        let _ = t.join();
    }
}
