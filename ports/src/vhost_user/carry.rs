//! A vhost-user port as it travels to the process replacing this one (a hitless upgrade):
//! [`HandedOver`] written as bytes and descriptors ([`HandedPort`]), and read back with
//! every count and length checked, since nothing read from another process is trusted.
//!
//! The bytes, little-endian: a byte saying whether a listening socket follows, then its
//! file's four identity words; a byte saying whether a connection follows, then its setup
//! log: the number of messages, and for each its request, flags, body length, body and
//! number of descriptors. The descriptors, in order: the listening socket, the frontend's
//! socket, then each message's.

use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};

use super::connection::{CarriedConnection, HandedOver};
use super::setup_log::{Recorded, SetupLog};
use crate::port::HandedPort;
use crate::socket_file::BoundSocket;

/// Most messages a setup log holds: per ring seven kinds, for 256 rings, plus the memory
/// regions added one by one and the rest.
const MAX_MESSAGES: usize = 8 * 256 + super::message_check::MAX_MEM_SLOTS + 64;
/// The longest message body the relay lets through.
const MAX_BODY: usize = super::message_check::MAX_BODY;
/// Most descriptors one message carries (a memory table's regions).
const MAX_FDS_PER_MESSAGE: usize = 32;

/// Writes `handed` for another process.
pub fn write(handed: HandedOver) -> HandedPort {
    let mut data = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    match handed.listener {
        Some((listener, bound)) => {
            data.push(1);
            for w in bound.to_words() {
                data.extend_from_slice(&w.to_le_bytes());
            }
            fds.push(listener.into());
        }
        None => data.push(0),
    }
    match handed.connection {
        Some(c) => {
            data.push(1);
            fds.push(c.frontend.into());
            let entries = c.log.into_entries();
            data.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            for r in entries {
                for w in [r.request, r.flags, r.body.len() as u32] {
                    data.extend_from_slice(&w.to_le_bytes());
                }
                data.extend_from_slice(&r.body);
                data.extend_from_slice(&(r.fds.len() as u32).to_le_bytes());
                fds.extend(r.fds);
            }
        }
        None => data.push(0),
    }
    HandedPort { data, fds }
}

/// Reads what [`write`] wrote; an error says what does not add up.
pub fn read(handed: HandedPort) -> Result<HandedOver, String> {
    let mut bytes = Reader {
        data: &handed.data,
        at: 0,
    };
    let mut fds = handed.fds.into_iter();
    let mut next_fd = |what: &str| {
        fds.next()
            .ok_or_else(|| format!("the descriptor of {what} is missing"))
    };
    let listener = if bytes.flag("the listening socket")? {
        let mut w = [0u64; 4];
        for word in &mut w {
            *word = bytes.u64()?;
        }
        let listener = UnixListener::from(next_fd("the listening socket")?);
        listener
            .local_addr()
            .map_err(|e| format!("the listening socket is not a unix socket: {e}"))?;
        Some((listener, BoundSocket::from_words(w)))
    } else {
        None
    };
    let connection = if bytes.flag("the connection")? {
        let frontend = UnixStream::from(next_fd("the frontend's socket")?);
        frontend
            .peer_addr()
            .map_err(|e| format!("the frontend's socket is not a connected unix socket: {e}"))?;
        let count = bytes.u32()? as usize;
        if count > MAX_MESSAGES {
            return Err(format!(
                "a setup log of {count} messages, over {MAX_MESSAGES}"
            ));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let (request, flags, len) = (bytes.u32()?, bytes.u32()?, bytes.u32()? as usize);
            if len > MAX_BODY {
                return Err(format!("a message body of {len} bytes, over {MAX_BODY}"));
            }
            let body = bytes.take(len)?.to_vec();
            let n = bytes.u32()? as usize;
            if n > MAX_FDS_PER_MESSAGE {
                return Err(format!("a message with {n} descriptors"));
            }
            let fds = (0..n)
                .map(|_| next_fd("a message"))
                .collect::<Result<_, _>>()?;
            entries.push(Recorded {
                request,
                flags,
                body,
                fds,
            });
        }
        Some(CarriedConnection {
            frontend,
            log: SetupLog::from_entries(entries),
        })
    } else {
        None
    };
    if bytes.at != bytes.data.len() {
        return Err(format!(
            "{} bytes left over after the port",
            bytes.data.len() - bytes.at
        ));
    }
    if fds.next().is_some() {
        return Err("descriptors left over after the port".into());
    }
    Ok(HandedOver {
        listener,
        connection,
    })
}

/// Bytes read in order, each read checked against the end.
struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| format!("the port's data ends at byte {}", self.data.len()))?;
        let part = &self.data[self.at..end];
        self.at = end;
        Ok(part)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut w = [0u8; 8];
        w.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(w))
    }

    fn flag(&mut self, what: &str) -> Result<bool, String> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("{b} where a yes or no for {what} was due")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn sample() -> (HandedOver, UnixStream, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("vs-carry-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{:?}.sock", std::thread::current().id()));
        let _ = std::fs::remove_file(&path);
        let (listener, bound) = crate::socket_file::bind(&path, 0o600).unwrap();
        let (frontend, vm) = UnixStream::pair().unwrap();
        let fd = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let log = SetupLog::from_entries(vec![
            Recorded {
                request: 3,
                flags: 1,
                body: vec![],
                fds: vec![],
            },
            Recorded {
                request: 5,
                flags: 9,
                body: vec![7; 40],
                fds: vec![fd(), fd()],
            },
        ]);
        let handed = HandedOver {
            listener: Some((listener, bound)),
            connection: Some(CarriedConnection { frontend, log }),
        };
        (handed, vm, path)
    }

    #[test]
    fn a_port_read_back_is_the_port_written() {
        let (handed, mut vm, path) = sample();
        let bound = handed.listener.as_ref().unwrap().1;
        let back = read(write(handed)).unwrap();
        let (listener, bound_back) = back.listener.unwrap();
        assert_eq!(bound_back, bound);
        assert_eq!(
            listener.local_addr().unwrap().as_pathname(),
            Some(path.as_path())
        );
        let c = back.connection.unwrap();
        let kept: Vec<_> = c
            .log
            .entries()
            .iter()
            .map(|r| (r.request, r.flags, r.body.clone(), r.fds.len()))
            .collect();
        assert_eq!(kept, [(3, 1, vec![], 0), (5, 9, vec![7; 40], 2)]);
        // The frontend's socket is the same connection.
        (&c.frontend).write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        vm.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn bytes_or_descriptors_that_do_not_add_up_are_refused() {
        let (handed, _vm, path) = sample();
        let good = write(handed);
        let dup = |h: &HandedPort, data: Vec<u8>, fds: usize| HandedPort {
            data,
            fds: h.fds[..fds]
                .iter()
                .map(|f| f.try_clone().unwrap())
                .collect(),
        };
        let n = good.fds.len();
        // Every truncation of the bytes.
        for cut in 0..good.data.len() {
            let e = read(dup(&good, good.data[..cut].to_vec(), n)).err();
            assert!(e.is_some(), "cut at {cut} read");
        }
        // A descriptor missing, or one too many.
        assert!(read(dup(&good, good.data.clone(), n - 1)).is_err());
        let mut more = dup(&good, good.data.clone(), n);
        more.fds
            .push(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        assert!(read(more).is_err());
        // A flag that is neither, a huge count, a huge body.
        let mut bad = good.data.clone();
        bad[0] = 7;
        assert!(read(dup(&good, bad, n)).unwrap_err().contains("yes or no"));
        let count_at = 1 + 32 + 1;
        let mut bad = good.data.clone();
        bad[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read(dup(&good, bad, n)).unwrap_err().contains("messages"));
        let mut bad = good.data.clone();
        let len_at = count_at + 4 + 8;
        bad[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read(dup(&good, bad, n)).unwrap_err().contains("body"));
        // A descriptor of the wrong kind where the listener is due.
        let mut wrong = dup(&good, good.data.clone(), n);
        wrong.fds[0] = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        assert!(read(wrong).unwrap_err().contains("not a unix socket"));
        let _ = std::fs::remove_file(&path);
    }
}
