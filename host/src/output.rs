//! The host's side of a script's log: a [`LogSink`] the plugin writes chunks into, and the
//! [`LogReceiver`] the host reads them from.
//!
//! The channel is bounded: when the reader falls behind, the plugin's write waits
//! (backpressure), so a script that floods output holds at most `capacity` chunks in memory.
//! When the receiver is dropped or closed, every further write fails with
//! [`ErrorKind::OUTPUT_CLOSED`](plugin_api::ErrorKind::OUTPUT_CLOSED) and the plugin stops.
//! A channel of its own rather than tokio's mpsc: an idle one costs a few dozen bytes, which
//! matters with thousands of jobs in flight.

pub(crate) use crate::abi::sink::Lent;
pub use crate::abi::sink::{log_channel, LogChunk, LogReceiver, LogSink, DEFAULT_CAPACITY};

/// A file (standard output, a job's log file) written straight from the task that polls
/// it, as an [`AsyncWrite`](tokio::io::AsyncWrite).
///
/// tokio's own file and stdout types hand every write to the blocking pool (a thread hop per
/// chunk). A local file or a pipe accepts a write at once or blocks the polling thread while
/// its reader catches up, which is the backpressure a log wants; the runtime's other threads
/// keep timers and signals going meanwhile.
pub struct BlockingFile(std::fs::File);

impl BlockingFile {
    /// Writes go to `file`.
    pub fn new(file: std::fs::File) -> Self {
        Self(file)
    }

    /// The file.
    pub fn get_ref(&self) -> &std::fs::File {
        &self.0
    }
}

impl tokio::io::AsyncWrite for BlockingFile {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::io::Write as _;
        std::task::Poll::Ready(self.0.write(buf))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
