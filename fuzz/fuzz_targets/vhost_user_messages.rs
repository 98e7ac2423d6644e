//! vhost-user message sequences, file descriptors included, against the code that serves a
//! real port's connection: relay, message checks, protocol handler and backend. The input
//! is a list of messages; each takes its request, flags, body and which fds to attach from
//! the fuzz bytes. Nothing may panic, hang or leak a file descriptor.

#![no_main]

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use vringswitch_ports::port::PortHandle;
use vringswitch_ports::vhost_user::connection::serve_stream;

/// A memory file of `len` bytes.
fn memfd(len: u64) -> std::fs::File {
    let path =
        std::env::temp_dir().join(format!("vringswitch-fuzz-mem-{}-{len}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let _ = std::fs::remove_file(&path);
    f.set_len(len).unwrap();
    f
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let fds_before = open_fds();
    let (frontend, backend_end) = UnixStream::pair().unwrap();
    frontend.set_nonblocking(true).unwrap();
    let mut keep = Vec::new();
    let mut rest = data;
    // Up to 32 messages: [request, flags, size lo, size hi, fd spec, body...].
    for _ in 0..32 {
        if rest.len() < 5 {
            break;
        }
        let (h, tail) = rest.split_at(5);
        let request = u32::from(h[0] % 48);
        let flags = match h[1] >> 6 {
            0 => 1,
            1 => 1 | 8,
            _ => u32::from(h[1]),
        };
        let size = usize::from(u16::from_le_bytes([h[2], h[3]]) % 512).min(tail.len());
        let (body, tail) = tail.split_at(size);
        rest = tail;
        let mut fds: Vec<RawFd> = Vec::new();
        for i in 0..(h[4] % 4) {
            match (h[4] >> (2 + 2 * i)) & 3 {
                0 => {
                    let e = EventFd::new(0).unwrap();
                    fds.push(e.as_raw_fd());
                    keep.push(Box::new(e) as Box<dyn Send>);
                }
                1 => {
                    let f = memfd(0x1_0000);
                    fds.push(f.as_raw_fd());
                    keep.push(Box::new(f));
                }
                2 => {
                    let f = memfd(0x1000);
                    fds.push(f.as_raw_fd());
                    keep.push(Box::new(f));
                }
                _ => {
                    let f = std::fs::File::open("/dev/null").unwrap();
                    fds.push(f.as_raw_fd());
                    keep.push(Box::new(f));
                }
            }
        }
        let mut hdr = request.to_le_bytes().to_vec();
        hdr.extend_from_slice(&flags.to_le_bytes());
        hdr.extend_from_slice(&(size as u32).to_le_bytes());
        let sent = if fds.is_empty() {
            (&frontend)
                .write_all(&hdr)
                .and_then(|()| (&frontend).write_all(body))
        } else {
            frontend
                .send_with_fds(&[&hdr[..], body], &fds)
                .map(|_| ())
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = frontend.shutdown(std::net::Shutdown::Write);
    drop(keep);
    let port = Arc::new(PortHandle::new(0, "fuzz", 1));
    // Replies pile up unread in the socket buffer; the handler ends at end of input.
    let _ = serve_stream(&port, 2, backend_end);
    drop(frontend);
    assert!(
        open_fds() <= fds_before,
        "file descriptors leaked: {} before, {} after",
        fds_before,
        open_fds()
    );
});
