//! A vhost-user frontend that sends whatever bytes and file descriptors a test asks for:
//! the hostile side of the protocol, for the bad-input tests.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::wait_until;

pub const GET_FEATURES: u32 = 1;
pub const SET_FEATURES: u32 = 2;
pub const SET_OWNER: u32 = 3;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_LOG_BASE: u32 = 6;
pub const SET_VRING_NUM: u32 = 8;
pub const SET_VRING_ADDR: u32 = 9;
pub const SET_VRING_BASE: u32 = 10;
pub const GET_VRING_BASE: u32 = 11;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_CALL: u32 = 13;
pub const GET_PROTOCOL_FEATURES: u32 = 15;
pub const SET_PROTOCOL_FEATURES: u32 = 16;
pub const SET_VRING_ENABLE: u32 = 18;
pub const GET_MAX_MEM_SLOTS: u32 = 36;
pub const ADD_MEM_REG: u32 = 37;
pub const REM_MEM_REG: u32 = 38;

pub const VERSION_1: u32 = 0x1;
pub const REPLY: u32 = 0x4;
pub const NEED_REPLY: u32 = 0x8;

/// VIRTIO_F_VERSION_1 | PROTOCOL_FEATURES.
pub const BASE_FEATURES: u64 = (1 << 32) | (1 << 30);
/// MQ | REPLY_ACK | CONFIGURE_MEM_SLOTS.
pub const BASE_PROTOCOL_FEATURES: u64 = (1 << 0) | (1 << 3) | (1 << 15);

/// A raw connection to a vhost-user socket.
pub struct RawFrontend {
    pub sock: UnixStream,
}

/// A memory-backing file (in /dev/shm, already unlinked) of `len` bytes.
pub fn memory_file(len: u64) -> File {
    let path = Path::new("/dev/shm").join(crate::unique_name("vringswitch-raw"));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create a memory file in /dev/shm");
    std::fs::remove_file(&path).unwrap();
    f.set_len(len).unwrap();
    f
}

/// The body of a SET_MEM_TABLE with `regions` of (gpa, size, uaddr, offset).
pub fn mem_table(regions: &[(u64, u64, u64, u64)]) -> Vec<u8> {
    let mut b = (regions.len() as u32).to_le_bytes().to_vec();
    b.extend_from_slice(&[0; 4]);
    for &(g, s, u, o) in regions {
        for w in [g, s, u, o] {
            b.extend_from_slice(&w.to_le_bytes());
        }
    }
    b
}

/// The body of a vring state message (index, num).
pub fn vring_state(index: u32, num: u32) -> Vec<u8> {
    let mut b = index.to_le_bytes().to_vec();
    b.extend_from_slice(&num.to_le_bytes());
    b
}

/// The body of SET_VRING_ADDR.
pub fn vring_addr(index: u32, flags: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
    let mut b = index.to_le_bytes().to_vec();
    b.extend_from_slice(&flags.to_le_bytes());
    for w in [desc, used, avail, 0u64] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b
}

impl RawFrontend {
    pub fn connect(socket: &Path) -> RawFrontend {
        let sock = wait_until(Duration::from_secs(10), "the vhost-user socket", || {
            UnixStream::connect(socket).ok()
        });
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        RawFrontend { sock }
    }

    /// Sends a header with the given fields, `body`, and `fds`. Errors are returned (the
    /// switch may already have hung up).
    pub fn send_raw(
        &mut self,
        request: u32,
        flags: u32,
        size: u32,
        body: &[u8],
        fds: &[RawFd],
    ) -> std::io::Result<()> {
        let mut hdr = request.to_le_bytes().to_vec();
        hdr.extend_from_slice(&flags.to_le_bytes());
        hdr.extend_from_slice(&size.to_le_bytes());
        if fds.is_empty() {
            self.sock.write_all(&hdr)?;
            self.sock.write_all(body)
        } else {
            self.sock
                .send_with_fds(&[&hdr[..], body], fds)
                .map(|_| ())
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
        }
    }

    /// Sends a well-formed request (version 1, size of `body`).
    pub fn send(&mut self, request: u32, body: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
        self.send_raw(request, VERSION_1, body.len() as u32, body, fds)
    }

    /// Reads one reply: (request, flags, body).
    pub fn reply(&mut self) -> std::io::Result<(u32, u32, Vec<u8>)> {
        let mut h = [0u8; 12];
        self.sock.read_exact(&mut h)?;
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let mut body = vec![0u8; word(8) as usize];
        self.sock.read_exact(&mut body)?;
        Ok((word(0), word(4), body))
    }

    /// Sends a request that expects a u64 reply and returns it.
    pub fn get_u64(&mut self, request: u32) -> u64 {
        self.send(request, &[], &[]).expect("send a GET request");
        let (r, flags, body) = self.reply().expect("the reply to a GET request");
        assert_eq!(r, request, "reply to another request");
        assert_eq!(flags & REPLY, REPLY, "reply without the reply bit");
        u64::from_le_bytes(body[..8].try_into().expect("an 8-byte reply"))
    }

    /// The start of every handshake: owner, features with PROTOCOL_FEATURES, and protocol
    /// features with REPLY_ACK.
    pub fn negotiate(&mut self) {
        self.send(SET_OWNER, &[], &[]).unwrap();
        let offered = self.get_u64(GET_FEATURES);
        assert_eq!(offered & BASE_FEATURES, BASE_FEATURES, "{offered:#x}");
        self.send(SET_FEATURES, &BASE_FEATURES.to_le_bytes(), &[])
            .unwrap();
        let proto = self.get_u64(GET_PROTOCOL_FEATURES);
        assert_eq!(proto & BASE_PROTOCOL_FEATURES, BASE_PROTOCOL_FEATURES);
        self.send(
            SET_PROTOCOL_FEATURES,
            &BASE_PROTOCOL_FEATURES.to_le_bytes(),
            &[],
        )
        .unwrap();
    }

    /// Sends a request asking for an acknowledgement (REPLY_ACK) and returns its status
    /// (0: success), or the error if the switch hung up instead.
    pub fn send_acked(&mut self, request: u32, body: &[u8], fds: &[RawFd]) -> std::io::Result<u64> {
        self.send_raw(
            request,
            VERSION_1 | NEED_REPLY,
            body.len() as u32,
            body,
            fds,
        )?;
        let (r, _, body) = self.reply()?;
        assert_eq!(r, request, "ack for another request");
        Ok(u64::from_le_bytes(
            body[..8].try_into().expect("an 8-byte ack"),
        ))
    }

    /// A one-region memory table over a fresh `len`-byte file, acknowledged.
    pub fn set_memory(&mut self, len: u64) -> File {
        let f = memory_file(len);
        let status = self
            .send_acked(
                SET_MEM_TABLE,
                &mem_table(&[(0, len, 0x7000_0000, 0)]),
                &[f.as_raw_fd()],
            )
            .expect("SET_MEM_TABLE acknowledged");
        assert_eq!(status, 0, "SET_MEM_TABLE refused");
        f
    }

    /// Whether the switch hung up within `timeout` (reads return end of file or a reset).
    pub fn hung_up_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.sock
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 256];
        while Instant::now() < deadline {
            match self.sock.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return true,
            }
        }
        false
    }
}
