//! `vringctl capture`: a port's capture stream copied to a file or a pipe, block by block, so
//! that what was written is a valid pcapng file however the capture ends (its count, the
//! reader of the pipe leaving, Ctrl-C).

use std::io::Write;

use crate::client::{ApiClient, ClientError};
use crate::pcapng::{BadBlock, StreamSummary};

/// Why a capture ended badly.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Api(#[from] ClientError),
    #[error("cannot write the capture: {0}")]
    Write(std::io::Error),
    #[error("the daemon sent something that is not pcapng: {0}")]
    Malformed(BadBlock),
    #[error(
        "the capture ended in the middle of a block: the daemon stopped or the connection broke"
    )]
    Cut,
}

/// How a capture ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureEnd {
    pub summary: StreamSummary,
    /// The reader of the output went away (a closed pipe): a normal end.
    pub reader_left: bool,
    /// Ctrl-C (or `stop` resolving) ended it before the daemon did.
    pub interrupted: bool,
}

/// GETs the capture at `path` and writes its whole blocks to `out` as they come, until the
/// daemon ends it or `stop` resolves.
pub async fn capture_to(
    api: &ApiClient,
    path: &str,
    out: &mut dyn Write,
    stop: impl std::future::Future<Output = ()>,
) -> Result<CaptureEnd, CaptureError> {
    let mut answer = api.stream(path).await?;
    let mut summary = StreamSummary::default();
    let mut pending: Vec<u8> = Vec::new();
    let end = |summary, reader_left, interrupted| CaptureEnd {
        summary,
        reader_left,
        interrupted,
    };
    tokio::pin!(stop);
    loop {
        let piece = tokio::select! {
            piece = answer.next() => piece?,
            _ = &mut stop => return Ok(end(summary, false, true)),
        };
        let Some(piece) = piece else {
            if !pending.is_empty() {
                return Err(CaptureError::Cut);
            }
            return Ok(end(summary, false, false));
        };
        pending.extend_from_slice(&piece);
        let whole = summary
            .whole_blocks(&pending)
            .map_err(CaptureError::Malformed)?;
        match out.write_all(&pending[..whole]).and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                return Ok(end(summary, true, false))
            }
            Err(e) => return Err(CaptureError::Write(e)),
        }
        pending.drain(..whole);
    }
}

/// What `vringctl capture` says on stderr at the end.
pub fn end_message(port: &str, end: &CaptureEnd) -> String {
    let s = &end.summary;
    let mut msg = format!(
        "{} frame{} captured on port {port}",
        s.packets,
        if s.packets == 1 { "" } else { "s" }
    );
    if let Some(dropped) = s.dropped.filter(|&d| d > 0) {
        msg += &format!(
            "; {dropped} more could not be kept (the capture buffer was full: try a smaller \
             --snaplen, or write to a file)"
        );
    }
    if end.interrupted {
        msg += " (interrupted)";
    } else if end.reader_left {
        msg += " (the reader of the output went away)";
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_messages_say_what_was_kept_and_why_it_ended() {
        let mut e = CaptureEnd {
            summary: StreamSummary {
                packets: 1,
                received: Some(1),
                dropped: Some(0),
            },
            reader_left: false,
            interrupted: false,
        };
        assert_eq!(end_message("vm1", &e), "1 frame captured on port vm1");
        e.summary.packets = 10;
        e.summary.dropped = Some(4);
        e.interrupted = true;
        assert_eq!(
            end_message("vm1", &e),
            "10 frames captured on port vm1; 4 more could not be kept (the capture buffer \
             was full: try a smaller --snaplen, or write to a file) (interrupted)"
        );
    }
}
