//! A port's packet capture as an HTTP response body: pcapng, streamed while it runs.
//!
//! The body starts with the section header and the port's interface description, then
//! carries the frames the workers put in the capture's tap, drained every few milliseconds
//! in chunks. The capture ends when the client goes away, after `count` frames, after
//! `seconds`, or when the port is removed; the switch then stops filling the tap, what it
//! still holds is written, and an interface statistics block closes the stream with the
//! frames seen and the frames the capture could not keep.
//!
//! A reader that stops reading holds no capture slot: `seconds` ends the capture even while
//! a piece waits for the reader, and so does a reader that took nothing for
//! [`STALL_LIMIT`]. What could not be sent then is dropped, and the statistics are sent
//! only if the reader takes them within [`TAIL_WAIT`].

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use vringswitch_switch::capture::{wall_clock_ns, PortCapture};

use crate::daemon::Daemon;
use crate::pcapng::{self, Direction};

/// When a capture ends, besides the client going away.
#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureLimits {
    /// Frames written.
    pub count: Option<u64>,
    /// Time since the start.
    pub seconds: Option<u64>,
}

/// How often an idle capture looks for frames.
const DRAIN_EVERY: Duration = Duration::from_millis(2);
/// How long a capture waits for its reader to take a piece before it ends.
pub const STALL_LIMIT: Duration = Duration::from_secs(30);
/// How long the end of the stream waits for its reader.
const TAIL_WAIT: Duration = Duration::from_secs(1);

/// Why a capture's draining stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// `count`, `seconds`, or the port removed.
    Limit,
    /// The client went away.
    ClientLeft,
    /// The reader took nothing for [`STALL_LIMIT`].
    ReaderStalled,
}
/// Bytes of frames sent as one piece of the body at most.
const CHUNK: usize = 256 << 10;

/// The response body: pieces sent by the draining task.
pub struct CaptureBody(mpsc::Receiver<Bytes>);

impl http_body::Body for CaptureBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|piece| piece.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Starts draining `tap`, the running capture of port `port`, into the body returned.
pub fn stream(
    daemon: Arc<Daemon>,
    port: &str,
    tap: Arc<PortCapture>,
    limits: CaptureLimits,
) -> CaptureBody {
    let (tx, rx) = mpsc::channel(8);
    let settings = tap.settings();
    let mut head = Vec::with_capacity(256);
    pcapng::section_header(
        &mut head,
        &format!(
            "vringswitch {}: port {port}, direction {}",
            env!("CARGO_PKG_VERSION"),
            crate::daemon::capture_direction(settings)
        ),
    );
    pcapng::interface(&mut head, port, settings.snaplen);
    // Cannot fail: the channel is new and has room.
    let _ = tx.try_send(Bytes::from(head));
    let port = port.to_owned();
    tokio::spawn(async move {
        let mut written = 0;
        let ended = drain(&tap, &tx, limits, &mut written).await;
        let (d, t) = (daemon.clone(), tap.clone());
        // Ending it waits for the workers to let go of the tap.
        let _ = tokio::task::spawn_blocking(move || d.end_capture(&t)).await;
        match ended {
            Ended::ClientLeft => return,
            Ended::ReaderStalled => {
                tracing::warn!(port = %port, stalled_s = STALL_LIMIT.as_secs(),
                    "packet capture ended because its reader stopped reading");
                return;
            }
            Ended::Limit => {}
        }
        let mut tail = Vec::new();
        take_frames(&tap, limits, &mut written, &mut tail);
        pcapng::statistics(
            &mut tail,
            0,
            wall_clock_ns(),
            written + tap.dropped(),
            tap.dropped(),
        );
        // A reader that stopped reading gets no more than a moment.
        let _ = tokio::time::timeout(TAIL_WAIT, tx.send(Bytes::from(tail))).await;
    });
    CaptureBody(rx)
}

/// Sends frames until a limit is reached, the port is removed, the client leaves or the
/// reader stops reading for [`STALL_LIMIT`].
async fn drain(
    tap: &PortCapture,
    tx: &mpsc::Sender<Bytes>,
    limits: CaptureLimits,
    written: &mut u64,
) -> Ended {
    let deadline = limits
        .seconds
        .map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        let mut chunk = Vec::new();
        take_frames(tap, limits, written, &mut chunk);
        if !chunk.is_empty() {
            // Waits for the reader, but never past the deadline or the stall limit.
            let stall = Instant::now() + STALL_LIMIT;
            let until = deadline.map_or(stall, |d| d.min(stall));
            match tokio::time::timeout_at(until, tx.send(Bytes::from(chunk))).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Ended::ClientLeft,
                Err(_) if deadline.is_some_and(|d| d <= until) => return Ended::Limit,
                Err(_) => return Ended::ReaderStalled,
            }
        }
        let counted_out = limits.count.is_some_and(|c| *written >= c);
        let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
        if counted_out || timed_out || tap.is_closed() {
            return Ended::Limit;
        }
        tokio::select! {
            _ = tx.closed() => return Ended::ClientLeft,
            _ = tokio::time::sleep(DRAIN_EVERY) => {}
        }
    }
}

/// Appends frames from `tap` to `out` as packet blocks, up to a chunk's worth and the
/// count limit.
fn take_frames(tap: &PortCapture, limits: CaptureLimits, written: &mut u64, out: &mut Vec<u8>) {
    while out.len() < CHUNK && limits.count.is_none_or(|c| *written < c) {
        let Some(f) = tap.take() else {
            break;
        };
        let direction = if f.to_vm {
            Direction::ToVm
        } else {
            Direction::FromVm
        };
        pcapng::packet(out, 0, f.ns, direction, f.data(), f.original_len);
        tap.give_back(f);
        *written += 1;
    }
}
