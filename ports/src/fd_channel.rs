//! Framed messages with file descriptors over a unix stream socket: the channel on which a
//! running daemon hands its sockets, rings and memory to the binary replacing it (issue 38,
//! docs/architecture.md "Hitless upgrade").
//!
//! A frame is a 16-byte header (magic `VSHO`, kind, body length, number of descriptors),
//! then the descriptors in chunks of at most [`FDS_PER_CHUNK`] (one byte of data each, as
//! `SCM_RIGHTS` needs data to travel with), then the body. The receiver treats the other
//! side as untrusted: a bad magic, a body or descriptor count over its limits, descriptors
//! where none were announced, or a part of a frame that does not come within the timeout
//! end the exchange with an error, and every descriptor received is closed then.

// The recvmsg/getsockopt calls: each unsafe block says why it is sound.
#![allow(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// The first bytes of every frame.
pub const MAGIC: [u8; 4] = *b"VSHO";
/// Bytes of a frame's header.
pub const HEADER_LEN: usize = 16;
/// Descriptors sent with one chunk (the kernel takes at most 253 per message).
pub const FDS_PER_CHUNK: usize = 250;

/// What a receiver accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest body.
    pub max_body: usize,
    /// Most descriptors in one frame.
    pub max_fds: usize,
    /// Longest wait for any part of a frame (each read; the sender is the daemon's own
    /// other process, so a trickle is a fault, not an attack to bound in total).
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 16 << 20,
            max_fds: 16_384,
            timeout: Duration::from_secs(10),
        }
    }
}

/// One frame: what it is (`kind`, the protocol's), its body and its descriptors.
#[derive(Debug)]
pub struct Frame {
    pub kind: u16,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// Why a frame was not received.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the other side closed the channel")]
    Closed,
    #[error("the other side sent something that is not a frame of this channel (bad magic)")]
    BadMagic,
    #[error("the frame's {what} is {got}, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        got: usize,
        limit: usize,
    },
    #[error("the frame's descriptors do not come as announced: {0}")]
    Descriptors(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Sends one frame: `kind`, `body` and `fds` (which stay open here).
pub fn send(sock: &UnixStream, kind: u16, body: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let body_len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "body over 4 GiB"))?;
    let fd_count = u32::try_from(fds.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"))?;
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&MAGIC);
    header[4..6].copy_from_slice(&kind.to_le_bytes());
    header[8..12].copy_from_slice(&body_len.to_le_bytes());
    header[12..16].copy_from_slice(&fd_count.to_le_bytes());
    (&*sock).write_all(&header)?;
    for chunk in fds.chunks(FDS_PER_CHUNK) {
        let raw: Vec<RawFd> = chunk.iter().map(|fd| fd.as_raw_fd()).collect();
        let sent = sock
            .send_with_fds(&[&[1u8][..]], &raw)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        if sent != 1 {
            return Err(io::ErrorKind::WriteZero.into());
        }
    }
    (&*sock).write_all(body)
}

/// Receives one frame within `limits`.
pub fn recv(sock: &UnixStream, limits: &Limits) -> Result<Frame, ChannelError> {
    let mut header = [0u8; HEADER_LEN];
    sock.set_read_timeout(Some(limits.timeout))?;
    match (&*sock).read(&mut header[..1]) {
        Ok(0) => return Err(ChannelError::Closed),
        Ok(_) => {}
        Err(e) => return Err(e.into()),
    }
    (&*sock).read_exact(&mut header[1..])?;
    if header[..4] != MAGIC {
        return Err(ChannelError::BadMagic);
    }
    let kind = u16::from_le_bytes([header[4], header[5]]);
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]) as usize
    };
    let (body_len, fd_count) = (word(8), word(12));
    if body_len > limits.max_body {
        return Err(ChannelError::TooLarge {
            what: "body",
            got: body_len,
            limit: limits.max_body,
        });
    }
    if fd_count > limits.max_fds {
        return Err(ChannelError::TooLarge {
            what: "number of descriptors",
            got: fd_count,
            limit: limits.max_fds,
        });
    }
    let mut fds = Vec::with_capacity(fd_count);
    while fds.len() < fd_count {
        let want = (fd_count - fds.len()).min(FDS_PER_CHUNK);
        let got = recv_chunk(sock, &mut fds)?;
        if got != want {
            return Err(ChannelError::Descriptors(format!(
                "a chunk brought {got} descriptors, {want} were due"
            )));
        }
    }
    let mut body = vec![0u8; body_len];
    (&*sock).read_exact(&mut body)?;
    Ok(Frame { kind, body, fds })
}

/// Reads one descriptor chunk (its one byte of data) into `fds`; returns how many came.
fn recv_chunk(sock: &UnixStream, fds: &mut Vec<OwnedFd>) -> Result<usize, ChannelError> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
    let mut byte = [0u8; 1];
    // Room for more descriptors than a sender may attach: more would be cut (CTRUNC).
    let mut space =
        [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_CHUNK + 3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    // Close-on-exec as they arrive: no child this process starts (an upgrade's next
    // binary, a helper) inherits them unasked.
    let got = rustix::net::recvmsg(
        sock,
        &mut [io::IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut received = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            received.extend(rights);
        }
    }
    if got.bytes == 0 {
        return Err(ChannelError::Closed);
    }
    if got.flags.contains(ReturnFlags::CTRUNC) {
        return Err(ChannelError::Descriptors(
            "a chunk brought more descriptors than a chunk may".into(),
        ));
    }
    if byte[0] != 1 {
        return Err(ChannelError::Descriptors(
            "a chunk's byte is not the chunk marker".into(),
        ));
    }
    let n = received.len();
    fds.extend(received);
    Ok(n)
}

/// The process id and user id of the process at the other end of `sock` (as it was when it
/// connected, or made the socket pair).
pub fn peer(sock: &UnixStream) -> io::Result<(u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes into `cred`, a live ucred of exactly
    // that size, and sets `len` to what it wrote.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid as u32, cred.uid))
}

/// Makes the channel to a child process: this process's end, and the child's, which
/// [`spawn_keeping`] passes on under its number (both are close-on-exec here, so no other
/// child of this process inherits either).
pub fn pair_for_child() -> io::Result<(UnixStream, OwnedFd)> {
    let (ours, theirs) = UnixStream::pair()?;
    Ok((ours, theirs.into()))
}

/// Spawns `cmd` with `keep` open in the child under its number, and no other descriptor
/// of this process beyond standard input, output and error (some libraries make theirs
/// without close-on-exec: eventfds, for one).
pub fn spawn_keeping(
    cmd: &mut std::process::Command,
    keep: &OwnedFd,
) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let fd = keep.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes close_range and fcntl system calls on
    // numbers it copied in, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let all_cloexec = libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
            );
            if all_cloexec < 0 {
                // A kernel before 5.11: one descriptor at a time.
                let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(3, 1 << 20) as libc::c_int;
                for other in 3..max {
                    libc::fcntl(other, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Takes the unix stream socket this process inherited under number `fd` (a parent's
/// [`spawn_keeping`]), after checking that it is one; close-on-exec from here on. To be
/// called once per number, at start, before anything else could own that descriptor.
pub fn inherited(fd: RawFd) -> io::Result<UnixStream> {
    let not = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is {what}, not a unix stream socket"),
        )
    };
    if fd < 3 {
        return Err(not("standard input, output or error"));
    }
    // SAFETY: F_GETFD reads the descriptor's flags; it touches no memory of ours.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(not("not open"));
    }
    let option = |name: libc::c_int| -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`, an int of that size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            Ok(value)
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let is_unix_stream = option(libc::SO_DOMAIN).ok() == Some(libc::AF_UNIX)
        && option(libc::SO_TYPE).ok() == Some(libc::SOCK_STREAM);
    if !is_unix_stream {
        return Err(not("another kind of file"));
    }
    // SAFETY: F_SETFD sets the descriptor's flags; it touches no memory of ours.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open and a unix stream socket (checked above); it was inherited
    // from the parent, and this process takes it once, at start, so nothing else here
    // owns or closes it.
    Ok(unsafe { UnixStream::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;

    use vmm_sys_util::eventfd::EventFd;

    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    fn borrow(fds: &[EventFd]) -> Vec<BorrowedFd<'_>> {
        fds.iter()
            // SAFETY: each descriptor belongs to an EventFd of `fds`, which outlives the
            // borrows (they share its lifetime).
            .map(|f| unsafe { BorrowedFd::borrow_raw(f.as_raw_fd()) })
            .collect()
    }

    #[test]
    fn only_an_open_unix_stream_socket_is_taken_as_inherited() {
        assert!(inherited(1).is_err());
        let file = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        assert!(inherited(file)
            .unwrap_err()
            .to_string()
            .contains("another kind"));
        // SAFETY: `file` was made just above and is owned by nobody else.
        drop(unsafe { OwnedFd::from_raw_fd(file) });
        let dgram = std::os::unix::net::UnixDatagram::unbound()
            .unwrap()
            .into_raw_fd();
        assert!(inherited(dgram).is_err());
        // SAFETY: as above.
        drop(unsafe { OwnedFd::from_raw_fd(dgram) });
        let (a, b) = pair();
        let raw = b.into_raw_fd();
        let b = inherited(raw).unwrap();
        send(&a, 3, b"x", &[]).unwrap();
        assert_eq!(recv(&b, &Limits::default()).unwrap().body, b"x");
        // SAFETY: F_GETFD on a descriptor we own; no memory touched.
        assert_eq!(unsafe { libc::fcntl(raw, libc::F_GETFD) }, libc::FD_CLOEXEC);
    }

    #[test]
    fn a_child_keeps_the_descriptor_it_is_given_and_no_other() {
        let (ours, theirs) = pair_for_child().unwrap();
        let (_other, other_theirs) = pair_for_child().unwrap();
        // An eventfd made without close-on-exec, as some libraries make them.
        let leaky = EventFd::new(0).unwrap();
        let script = format!(
            "ls /proc/self/fd/{} && ! ls /proc/self/fd/{} 2>/dev/null && ! ls /proc/self/fd/{} 2>/dev/null",
            theirs.as_raw_fd(),
            other_theirs.as_raw_fd(),
            leaky.as_raw_fd()
        );
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", &script])
            .stdout(std::process::Stdio::null());
        let status = spawn_keeping(&mut cmd, &theirs).unwrap().wait().unwrap();
        assert!(status.success(), "the child did not have just its own end");
        drop(ours);
    }

    #[test]
    fn a_frame_with_more_descriptors_than_one_message_carries_arrives_whole() {
        let (a, b) = pair();
        let fds: Vec<EventFd> = (0..600).map(|_| EventFd::new(0).unwrap()).collect();
        for (i, fd) in fds.iter().enumerate() {
            fd.write(i as u64 + 1).unwrap();
        }
        let borrowed = borrow(&fds);
        let sender = std::thread::scope(|s| {
            let t = s.spawn(|| send(&a, 7, b"{\"state\": 1}", &borrowed));
            let got = recv(&b, &Limits::default()).unwrap();
            t.join().unwrap().unwrap();
            got
        });
        assert_eq!(
            (sender.kind, sender.body.as_slice()),
            (7, &b"{\"state\": 1}"[..])
        );
        assert_eq!(sender.fds.len(), 600);
        // Close-on-exec, every one: no child of the receiver inherits them.
        for fd in &sender.fds {
            // SAFETY: F_GETFD on a descriptor we own; no memory touched.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
        // The same objects, in order: each eventfd still holds its count.
        for (i, fd) in sender.fds.into_iter().enumerate() {
            // SAFETY: the descriptor is ours (received) and is an eventfd.
            let e = unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) };
            assert_eq!(e.read().unwrap(), i as u64 + 1);
        }
    }

    #[test]
    fn what_is_not_a_frame_or_over_the_limits_is_refused() {
        let limits = Limits {
            max_body: 100,
            max_fds: 2,
            timeout: Duration::from_millis(200),
        };
        let (a, b) = pair();
        (&a).write_all(b"GET / HTTP/1.1\r\n").unwrap();
        assert!(matches!(recv(&b, &limits), Err(ChannelError::BadMagic)));

        let (a, b) = pair();
        send(&a, 1, &[0u8; 101], &[]).unwrap();
        let e = recv(&b, &limits).unwrap_err();
        assert!(
            matches!(e, ChannelError::TooLarge { what: "body", .. }),
            "{e}"
        );

        let (a, b) = pair();
        let fds: Vec<EventFd> = (0..3).map(|_| EventFd::new(0).unwrap()).collect();
        let borrowed = borrow(&fds);
        send(&a, 1, b"", &borrowed).unwrap();
        let e = recv(&b, &limits).unwrap_err();
        assert!(e.to_string().contains("number of descriptors is 3"), "{e}");

        // Announced two descriptors, sent one: the chunk says so.
        let (a, b) = pair();
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&MAGIC);
        header[12..16].copy_from_slice(&2u32.to_le_bytes());
        (&a).write_all(&header).unwrap();
        a.send_with_fds(&[&[1u8][..]], &[fds[0].as_raw_fd()])
            .unwrap();
        let e = recv(&b, &limits).unwrap_err();
        assert!(matches!(e, ChannelError::Descriptors(_)), "{e}");

        // A frame cut short: the timeout ends the wait.
        let (a, b) = pair();
        (&a).write_all(&MAGIC).unwrap();
        let e = recv(&b, &limits).unwrap_err();
        assert!(matches!(e, ChannelError::Io(_)), "{e}");

        // The other side gone.
        let (a, b) = pair();
        drop(a);
        assert!(matches!(recv(&b, &limits), Err(ChannelError::Closed)));
    }

    #[test]
    fn the_peer_is_who_made_the_pair() {
        let (a, _b) = pair();
        let (pid, uid) = peer(&a).unwrap();
        assert_eq!(pid, std::process::id());
        // SAFETY: getuid has no preconditions.
        assert_eq!(uid, unsafe { libc::getuid() });
    }
}
