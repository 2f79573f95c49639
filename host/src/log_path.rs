//! The way a running script's log takes to its [`LogOutput`], with the bytes counted for the
//! cap and the time of the last output for the silence timeout.
//!
//! Two ways, one interface for the job runner ([`LogPath`]):
//! - direct: the plugin's write goes into a regular file on the task that makes it
//!   ([`Direct`]);
//! - channel: the plugin's write is queued in the bounded log channel and a task of the
//!   host's writes it to the destination ([`pump`]).

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::Notify;

use crate::output::{log_channel, LogOutput, LogReceiver, LogSink, Target, DEFAULT_CAPACITY};

/// How the log ended before the script did, or that it was all written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogEnd {
    /// The plugin dropped its sink and every chunk was written (the channel's way only: the
    /// direct way is drained whenever the plugin is not inside a write).
    Drained,
    /// Writing to the destination failed (its reader went away, a write error).
    Failed,
    /// The byte cap (given) was reached; the rest was refused.
    CapReached(u64),
}

/// What both ways share with the job runner.
struct Shared {
    began: Instant,
    cap: Option<u64>,
    bytes: AtomicU64,
    /// Milliseconds since the run began.
    last_output_ms: AtomicU64,
    end: Mutex<Option<LogEnd>>,
    changed: Notify,
}

impl Shared {
    fn new(cap: Option<u64>, began: Instant) -> Arc<Self> {
        Arc::new(Self {
            began,
            cap,
            bytes: AtomicU64::new(0),
            last_output_ms: AtomicU64::new(0),
            end: Mutex::new(None),
            changed: Notify::new(),
        })
    }

    fn output_now(&self) {
        self.last_output_ms
            .store(self.began.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How much of a `len`-byte chunk fits under the cap, given `bytes` already written.
    fn room(&self, bytes: u64, len: usize) -> (usize, bool) {
        match self.cap {
            Some(cap) if len as u64 > cap.saturating_sub(bytes) => {
                (cap.saturating_sub(bytes) as usize, true)
            }
            _ => (len, false),
        }
    }

    fn set_end(&self, end: LogEnd) {
        let mut e = self.end.lock().unwrap_or_else(|e| e.into_inner());
        if e.is_none() {
            *e = Some(end);
        }
        drop(e);
        self.changed.notify_one();
    }

    fn end(&self) -> Option<LogEnd> {
        *self.end.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The log's way for one run; the sink for the plugin comes with it.
pub(crate) struct LogPath {
    shared: Arc<Shared>,
    /// The channel's writing task, aborted when the run is over.
    task: Option<tokio::task::JoinHandle<()>>,
    /// The direct way's writer, refused from the end of the run on.
    direct: Option<Arc<Direct>>,
}

impl LogPath {
    /// Starts the way to `output` and returns it with the sink the plugin writes into.
    pub(crate) fn start(output: LogOutput, cap: Option<u64>, began: Instant) -> (Self, LogSink) {
        let shared = Shared::new(cap, began);
        match output.0 {
            Target::Direct(file) => {
                let direct = Arc::new(Direct {
                    file,
                    shared: Arc::clone(&shared),
                    closed: AtomicBool::new(false),
                });
                let sink = LogSink::direct(Arc::clone(&direct));
                let path = Self {
                    shared,
                    task: None,
                    direct: Some(direct),
                };
                (path, sink)
            }
            Target::Stream(w) => {
                let (sink, rx) = log_channel(DEFAULT_CAPACITY);
                let task = tokio::spawn(pump(rx, w, Arc::clone(&shared)));
                let path = Self {
                    shared,
                    task: Some(task),
                    direct: None,
                };
                (path, sink)
            }
        }
    }

    /// Bytes written to the destination.
    pub(crate) fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// When the last output arrived, as time since the run began.
    pub(crate) fn last_output(&self) -> Duration {
        Duration::from_millis(self.shared.last_output_ms.load(Ordering::Relaxed))
    }

    /// How the log ended, if it has: for the direct way, [`LogEnd::Drained`] unless it failed
    /// or reached the cap.
    pub(crate) fn end(&self) -> Option<LogEnd> {
        match (self.shared.end(), &self.direct) {
            (None, Some(_)) => Some(LogEnd::Drained),
            (end, _) => end,
        }
    }

    /// Resolves when the log's end may have changed (a failure, the cap, the channel
    /// drained); look again with [`Self::end`].
    pub(crate) async fn changed(&self) {
        self.shared.changed.notified().await
    }
}

impl Drop for LogPath {
    /// The run is over: the channel's task stops, the direct writer refuses what comes.
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
        if let Some(d) = &self.direct {
            d.closed.store(true, Ordering::SeqCst);
        }
    }
}

/// Moves log chunks from the channel to `out`, counting bytes and the time of the last
/// output.
async fn pump(mut rx: LogReceiver, mut out: Box<dyn AsyncWrite + Unpin + Send>, s: Arc<Shared>) {
    let mut bytes = 0u64;
    let end = loop {
        let Some(chunk) = rx.recv().await else {
            break match out.flush().await {
                Ok(()) => LogEnd::Drained,
                Err(_) => LogEnd::Failed,
            };
        };
        s.output_now();
        let (room, capped) = s.room(bytes, chunk.len());
        if out.write_all(&chunk[..room]).await.is_err() {
            break LogEnd::Failed;
        }
        bytes += room as u64;
        s.bytes.store(bytes, Ordering::Relaxed);
        if capped {
            break match (out.flush().await, s.cap) {
                (Ok(()), Some(cap)) => LogEnd::CapReached(cap),
                _ => LogEnd::Failed,
            };
        }
    };
    rx.close();
    s.set_end(end);
}

/// The direct way's writer, behind the plugin's sink.
pub(crate) struct Direct {
    file: std::fs::File,
    shared: Arc<Shared>,
    closed: AtomicBool,
}

impl Direct {
    /// Writes `chunk`, or what of it fits under the cap: `true` once written, `false` when
    /// the log takes no more (a write failed, the cap, the run is over). A regular file
    /// takes each write at once.
    pub(crate) fn write(&self, chunk: &[u8]) -> bool {
        if self.closed.load(Ordering::SeqCst) || self.shared.end().is_some() {
            return false;
        }
        self.shared.output_now();
        let (room, capped) = self
            .shared
            .room(self.shared.bytes.load(Ordering::Relaxed), chunk.len());
        let mut rest = &chunk[..room];
        while !rest.is_empty() {
            match (&self.file).write(rest) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => {
                    self.shared.set_end(LogEnd::Failed);
                    return false;
                }
                Ok(n) => {
                    rest = &rest[n..];
                    self.shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
        if capped {
            if let Some(cap) = self.shared.cap {
                self.shared.set_end(LogEnd::CapReached(cap));
            }
            return false;
        }
        true
    }
}
