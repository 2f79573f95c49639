//! The host's side of a script's log: where it goes ([`LogOutput`]), and the channel a
//! plugin's writes take when they do not go straight into a file: a [`LogSink`] the plugin
//! writes chunks into, and the [`LogReceiver`] the host reads them from.
//!
//! The channel is bounded: when the reader falls behind, the plugin's write waits
//! (backpressure), so a script that floods output holds at most `capacity` chunks in memory.
//! When the receiver is dropped or closed, every further write fails with
//! [`ErrorKind::OUTPUT_CLOSED`](plugin_api::ErrorKind::OUTPUT_CLOSED) and the plugin stops.
//! A channel of its own rather than tokio's mpsc: an idle one costs a few dozen bytes, which
//! matters with thousands of jobs in flight.

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

/// Where a job's log goes, handed to [`crate::job::run_job`].
///
/// - [`LogOutput::file`] on a regular file (a worker's log file, `host run > file`): the
///   plugin's writes go into it directly, on the task that makes them: no queue, no task of
///   the host's in between, no copy but the kernel's.
/// - Everything else (a pipe, a terminal, a socket, any [`LogOutput::stream`]): the plugin's
///   writes go through the bounded [`log_channel`] to a task that writes them out. For a
///   pipe this is also the faster way on this project's 2-core machines: the plugin makes
///   its next chunk while the task's write waits for the reader (see docs/BENCHMARKS.md),
///   and a stalled reader stops that task, never the job's timers or signals.
///
/// Both count bytes for the log cap and the silence timeout the same way.
pub struct LogOutput(pub(crate) Target);

pub(crate) enum Target {
    /// A regular file, written from the plugin's task.
    Direct(std::fs::File),
    /// Through the channel and a task of the host's.
    Stream(Box<dyn tokio::io::AsyncWrite + Unpin + Send>),
}

impl LogOutput {
    /// The log goes to `file`: directly when it is a regular file, else through the channel
    /// as a [`BlockingFile`] (see the type's doc).
    pub fn file(file: std::fs::File) -> Self {
        match file.metadata() {
            Ok(m) if m.file_type().is_file() => Self(Target::Direct(file)),
            _ => Self::stream(BlockingFile::new(file)),
        }
    }

    /// The log goes to `writer`, through the log channel and a task of its own.
    pub fn stream(writer: impl tokio::io::AsyncWrite + Unpin + Send + 'static) -> Self {
        Self(Target::Stream(Box::new(writer)))
    }
}

impl From<BlockingFile> for LogOutput {
    fn from(f: BlockingFile) -> Self {
        Self::file(f.0)
    }
}
