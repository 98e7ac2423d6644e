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

/// The handover format this binary writes. 2: the connections security groups track are
/// carried too ([`kind::CONNECTIONS`]); 1: they are not (an upgrade between a version-1
/// binary and this one is refused while connections are tracked).
pub const VERSION: u32 = 2;
/// The oldest format this binary still reads.
pub const OLDEST_READ: u32 = 1;
/// The first version that carries connections.
pub const CARRIES_CONNECTIONS: u32 = 2;

/// Frame kinds, in the order they come.
pub mod kind {
    /// Each side's versions.
    pub const HELLO: u16 = 1;
    /// One side gives up, saying why (the other then ends the exchange).
    pub const REFUSE: u16 = 2;
    /// New to old: its configuration is loaded, it is ready to take everything.
    pub const PREPARED: u16 = 3;
    /// Old to new: [`super::Carried`], with the lock files and the API's listening
    /// sockets as descriptors. The old one's workers have stopped by then.
    pub const STATE: u16 = 4;
    /// Old to new: one port ([`super::port_frame`]), its descriptors with it.
    pub const PORT: u16 = 5;
    /// Old to new: every port was sent.
    pub const SENT: u16 = 6;
    /// New to old: it serves every port, its workers run ([`super::Running`]).
    pub const RUNNING: u16 = 7;
    /// Old to new: systemd (if any) knows the new one as the service's main process; the
    /// old one exits.
    pub const HANDED: u16 = 8;
    /// Old to new, from version 2, after the state and before the ports: tracked
    /// connections ([`super::encode_connections`]), as many frames as they fill.
    pub const CONNECTIONS: u16 = 9;
}

/// A tracked connection as it moves to the new process: the table's key, with its bridge
/// as the state's bridge number and the port it is charged to as a number in
/// [`Carried::ports`] (`u32::MAX`: none), its tracker state and expiry on the carried
/// clock. Its rules epochs are not carried: each side is checked again at its next
/// frame, against the new process's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarriedConnection {
    pub key: vringswitch_filter::conntrack::Key,
    pub bridge: u16,
    pub vlan: u16,
    pub port: u32,
    pub state: u32,
    pub expires: u32,
}

/// Bytes of one connection in a [`kind::CONNECTIONS`] frame.
pub const CONNECTION_LEN: usize = 54;
/// Most connections in one frame (about 3.5 MB).
pub const CONNECTIONS_PER_FRAME: usize = 65_536;

/// `conns` as the body of one [`kind::CONNECTIONS`] frame.
pub fn encode_connections(conns: &[CarriedConnection]) -> Vec<u8> {
    let mut out = Vec::with_capacity(conns.len() * CONNECTION_LEN);
    for c in conns {
        let k = &c.key;
        out.push(u8::from(k.v6) | u8::from(k.fragments) << 1);
        out.push(k.proto);
        out.extend_from_slice(&c.bridge.to_le_bytes());
        out.extend_from_slice(&c.vlan.to_le_bytes());
        out.extend_from_slice(&c.port.to_le_bytes());
        out.extend_from_slice(&k.src);
        out.extend_from_slice(&k.dst);
        out.extend_from_slice(&k.sport.to_le_bytes());
        out.extend_from_slice(&k.dport.to_le_bytes());
        out.extend_from_slice(&c.state.to_le_bytes());
        out.extend_from_slice(&c.expires.to_le_bytes());
    }
    out
}

/// The connections of a [`kind::CONNECTIONS`] frame's body, or why it is not one.
pub fn decode_connections(body: &[u8]) -> Result<Vec<CarriedConnection>, String> {
    if !body.len().is_multiple_of(CONNECTION_LEN) {
        return Err(format!(
            "a connections frame of {} bytes, not a multiple of {CONNECTION_LEN}",
            body.len()
        ));
    }
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let addr = |b: &[u8], i: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[i..i + 16]);
        a
    };
    body.chunks_exact(CONNECTION_LEN)
        .map(|b| {
            if b[0] & !3 != 0 {
                return Err(format!("a connection with unknown flags {:#x}", b[0]));
            }
            let vlan = u16_at(b, 4);
            if vlan > 4095 {
                return Err(format!("a connection on VLAN {vlan}"));
            }
            Ok(CarriedConnection {
                key: vringswitch_filter::conntrack::Key {
                    v6: b[0] & 1 != 0,
                    fragments: b[0] & 2 != 0,
                    proto: b[1],
                    zone: 0,
                    src: addr(b, 10),
                    dst: addr(b, 26),
                    sport: u16_at(b, 42),
                    dport: u16_at(b, 44),
                },
                bridge: u16_at(b, 2),
                vlan,
                port: u32_at(b, 6),
                state: u32_at(b, 46),
                expires: u32_at(b, 50),
            })
        })
        .collect()
}

/// What the old process hands over besides its ports: the desired state, and what moves
/// (the FDB with each entry's age, every counter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    /// The old process's pid, for messages.
    pub pid: u32,
    pub saved: crate::schema::SavedState,
    /// The old switch's clock ([`vringswitch_switch::Switch::now_secs`]): entries'
    /// `last_seen` are on it.
    pub clock_secs: u64,
    pub bridges: Vec<CarriedBridge>,
    pub ports: Vec<CarriedPort>,
    pub workers: Vec<CarriedWorker>,
    /// The frame's descriptors: this many lock files first, then the API's TCP listener if
    /// `api_tcp`, then its unix socket's if `api_unix` (with the socket file's identity).
    pub lock_files: usize,
    pub api_tcp: bool,
    pub api_unix: Option<[u64; 4]>,
}

/// A bridge's learnt addresses and counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedBridge {
    pub name: String,
    /// (FDB key, port name, last seen).
    pub learnt: Vec<(u64, String, u64)>,
    /// Learnt, moved, aged, refused by a port's limit, refused by the bridge's.
    pub counts: [u64; 5],
}

/// A port's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedPort {
    pub name: String,
    pub connections: u64,
    pub protocol_errors: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// By reason, as /metrics names them (a reason this binary does not know is left out).
    pub drops: std::collections::BTreeMap<String, u64>,
    pub offloads: std::collections::BTreeMap<String, u64>,
    /// By queue pair.
    pub queue_rx_packets: Vec<u64>,
    pub queue_tx_packets: Vec<u64>,
    pub queue_busy_cycles: Vec<u64>,
}

/// A worker's counters, by the core it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedWorker {
    pub core: usize,
    pub busy_cycles: u64,
    pub idle_cycles: u64,
    pub packets: u64,
    pub wakeups: u64,
    pub bursts: Vec<u64>,
}

/// What the new process says once it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub pid: u32,
    /// The new binary's version.
    pub version: String,
    /// Ports whose peer's connection could not be carried on (name, why): they serve on
    /// as after a disconnect.
    pub not_carried: Vec<(String, String)>,
}

/// Longest port name in a [`kind::PORT`] frame.
const MAX_PORT_NAME: usize = 1024;

/// A [`kind::PORT`] frame's body: the port's name (length, then UTF-8), then what its
/// kind wrote.
pub fn port_frame(name: &str, data: &[u8]) -> Vec<u8> {
    let mut body = (name.len() as u16).to_le_bytes().to_vec();
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(data);
    body
}

/// The name and kind's data of a [`kind::PORT`] frame's body.
pub fn parse_port_frame(body: &[u8]) -> Result<(String, &[u8]), HandoverError> {
    let bad = |what: &str| HandoverError::Unexpected {
        what: format!("a port frame {what}"),
        expected: "a port",
    };
    let len = body
        .get(..2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
        .ok_or_else(|| bad("without a name"))?;
    if len > MAX_PORT_NAME {
        return Err(bad("with a name too long"));
    }
    let name = body.get(2..2 + len).ok_or_else(|| bad("cut short"))?;
    let name = std::str::from_utf8(name).map_err(|_| bad("whose name is not UTF-8"))?;
    Ok((name.to_owned(), &body[2 + len..]))
}

/// Sends `value` as a frame of `kind`, with `fds`.
pub fn send_with<T: Serialize>(
    sock: &UnixStream,
    kind: u16,
    value: &T,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<(), HandoverError> {
    let body = serde_json::to_vec(value).map_err(|e| ChannelError::Io(e.into()))?;
    fd_channel::send(sock, kind, &body, fds).map_err(ChannelError::Io)?;
    Ok(())
}

/// Sends a refusal saying `why` (the channel may be gone already: nothing to do then).
pub fn refuse(sock: &UnixStream, why: &str) {
    let _ = fd_channel::send(sock, kind::REFUSE, why.as_bytes(), &[]);
}

/// Receives the next frame, which must be of kind `want` (`expected` names it in errors);
/// a refusal is an error saying why.
pub fn receive(
    sock: &UnixStream,
    limits: &Limits,
    want: u16,
    expected: &'static str,
) -> Result<Frame, HandoverError> {
    of_kind(fd_channel::recv(sock, limits)?, want, expected)
}

/// The body of `frame` as a `T`.
pub fn body_of<T: for<'de> Deserialize<'de>>(
    frame: &Frame,
    expected: &'static str,
) -> Result<T, HandoverError> {
    serde_json::from_slice(&frame.body).map_err(|e| HandoverError::Unexpected {
        what: format!("a body that does not read ({e})"),
        expected,
    })
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
    body_of(&of_kind(frame, want, expected)?, expected)
}

/// `frame`, if it is of kind `want`; a refusal or another kind is an error saying so.
fn of_kind(frame: Frame, want: u16, expected: &'static str) -> Result<Frame, HandoverError> {
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
    Ok(frame)
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

/// The old process's side of the greeting, over its end of the socket pair it made for
/// its child: returns the version to hand over in, or refuses (telling the child why).
/// (A socket pair's credentials are its maker's: this process's own on both ends, which
/// only such a pair has.)
pub fn greet_as_old(sock: &UnixStream, limits: &Limits) -> Result<u32, HandoverError> {
    check_peer(
        sock,
        Some(std::process::id()),
        "the new vringswitch this one started",
    )?;
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
        // The old side hands over only on a pair it made: not to a process that connected.
        let path = std::env::temp_dir().join(format!("vs-handover-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let script = format!(
            "import socket,time; s=socket.socket(socket.AF_UNIX); s.connect({:?}); time.sleep(3)",
            path.display().to_string()
        );
        let mut stranger = std::process::Command::new("python3")
            .args(["-c", &script])
            .spawn()
            .expect("python3 (apt-get install python3)");
        let (a, _) = listener.accept().unwrap();
        let e = greet_as_old(&a, &limits()).unwrap_err();
        assert!(
            matches!(e, HandoverError::Stranger { pid, .. } if pid == stranger.id()),
            "{e}"
        );
        let _ = stranger.kill();
        let _ = stranger.wait();
        let _ = std::fs::remove_file(&path);
        // The new side takes its state only from its parent: in one process the pair's
        // other end is this process.
        let (_a, b) = UnixStream::pair().unwrap();
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
        assert_eq!(greet_as_old(&old, &limits()).unwrap(), VERSION);
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
        let e = greet_as_old(&old, &limits()).unwrap_err();
        assert!(
            e.to_string()
                .contains("hands over versions 1 to 2, vringswitch 9.0.0 takes 7 to 9"),
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
        let e = greet_as_old(&old, &limits()).unwrap_err();
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
        let e = greet_as_old(&old, &limits()).unwrap_err();
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
        let e = greet_as_old(&old, &limits()).unwrap_err();
        assert!(e.to_string().contains("a body that does not read"), "{e}");
        let _ = t.join();
    }

    #[test]
    fn connections_go_through_their_frames_as_they_were_and_a_bad_frame_is_refused() {
        let c = CarriedConnection {
            key: vringswitch_filter::conntrack::Key {
                v6: true,
                fragments: false,
                proto: 6,
                zone: 0,
                src: [1; 16],
                dst: [2; 16],
                sport: 40000,
                dport: 22,
            },
            bridge: 3,
            vlan: 4095,
            port: 7,
            state: 0x103,
            expires: 123_456,
        };
        let other = CarriedConnection {
            port: u32::MAX,
            key: vringswitch_filter::conntrack::Key {
                fragments: true,
                ..c.key
            },
            ..c
        };
        let body = encode_connections(&[c, other]);
        assert_eq!(body.len(), 2 * CONNECTION_LEN);
        assert_eq!(decode_connections(&body).unwrap(), vec![c, other]);
        assert!(decode_connections(&body[1..]).is_err());
        let mut bad = body.clone();
        bad[0] = 0x80;
        assert!(decode_connections(&bad).unwrap_err().contains("flags"));
        let mut bad = body;
        bad[4..6].copy_from_slice(&5000u16.to_le_bytes());
        assert!(decode_connections(&bad).unwrap_err().contains("VLAN"));
    }
}
