//! The log channel behind [`crate::output`]: a [`LogSink`] the plugin writes into, a [`LogReceiver`]
//! the host reads from.
//!
//! The sink is a bounded channel: when the reader falls behind, the plugin's `write` waits
//! (backpressure), so a script that floods output holds at most `capacity` chunks in memory.
//! When the receiver is dropped, every further write fails with
//! [`ErrorKind::OUTPUT_CLOSED`](plugin_api::ErrorKind::OUTPUT_CLOSED) and the plugin stops.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RVec};
use async_ffi::FutureExt as _;
use plugin_api::ffi::{FfiOutputSink, FfiOutputSink_TO, FfiResultFuture, OutputSinkBox};

use plugin_api::{BackendError, ErrorKind};

/// Chunks in flight between a plugin and the host's reader by default.
pub const DEFAULT_CAPACITY: usize = 16;

/// The writing end of a log channel: hand it to [`crate::Instance::run_script`].
pub struct LogSink(ChannelSink);

impl LogSink {
    /// The sink as the plugin receives it.
    pub(crate) fn into_ffi(self) -> OutputSinkBox {
        FfiOutputSink_TO::from_value(self.0, TD_Opaque)
    }

    /// The sink as the SDK's [`plugin_api::Output`], for code that calls a backend's Rust
    /// types directly in this process (benchmarks, tests) rather than through a plugin.
    pub fn into_sdk_output(self) -> plugin_api::Output {
        plugin_api::Output::new(self.into_ffi())
    }

    /// Writes `chunk`, waiting while the channel is full; an error once the receiver is
    /// gone. For embedders that feed a channel themselves (tests, benchmarks).
    pub async fn write(&mut self, chunk: Vec<u8>) -> Result<(), BackendError> {
        self.0.write(RVec::from(chunk)).await.into_result()
    }

    /// Writes bytes the host lends (a plugin server's output, in a buffer or a slot of
    /// memory shared with the server): dropping the chunk hands them back.
    pub(crate) async fn write_lent(&mut self, bytes: Lent) -> Result<(), BackendError> {
        self.0.push(Bytes::Lent(bytes)).await.into_result()
    }
}

/// Bytes lent to a log channel; their owner learns the reader is done with them from the
/// drop.
pub(crate) type Lent = Box<dyn AsRef<[u8]> + Send + Sync>;

/// A chunk's bytes: a plugin's buffer, or bytes the host lends.
enum Bytes {
    Plugin(RVec<u8>),
    Lent(Lent),
}

/// Makes a sink to hand to [`crate::Instance::run_script`] and the receiver of its chunks.
///
/// A channel of its own rather than tokio's mpsc: an idle one costs a few dozen bytes (the
/// queue grows on first use), which matters with thousands of jobs in flight, and a plugin
/// writes sequentially, so one waiting writer is all there ever is.
pub fn log_channel(capacity: usize) -> (LogSink, LogReceiver) {
    let shared = Arc::new(Mutex::new(Shared {
        queue: VecDeque::new(),
        capacity: capacity.max(1),
        receiver_gone: false,
        sender_gone: false,
        receiver_waker: None,
        sender_waker: None,
    }));
    (
        LogSink(ChannelSink {
            shared: Arc::clone(&shared),
        }),
        LogReceiver { shared },
    )
}

struct Shared {
    queue: VecDeque<Bytes>,
    capacity: usize,
    receiver_gone: bool,
    sender_gone: bool,
    receiver_waker: Option<Waker>,
    sender_waker: Option<Waker>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic while holding this lock cannot leave the queue inconsistent: keep going.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Receives the chunks a plugin writes.
pub struct LogReceiver {
    shared: Arc<Mutex<Shared>>,
}

impl LogReceiver {
    /// The next chunk, or `None` once the plugin has dropped its sink (the run is over).
    pub async fn recv(&mut self) -> Option<LogChunk> {
        std::future::poll_fn(|cx| {
            let mut s = lock(&self.shared);
            if let Some(bytes) = s.queue.pop_front() {
                // A waiting writer is woken once half the queue is free, not for every
                // chunk: fewer cross-thread wake-ups when the reader is the slow side.
                if s.queue.len() <= s.capacity / 2 {
                    if let Some(w) = s.sender_waker.take() {
                        w.wake();
                    }
                }
                return Poll::Ready(Some(LogChunk(bytes)));
            }
            if s.sender_gone {
                return Poll::Ready(None);
            }
            s.receiver_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Refuses further output; chunks already queued are dropped.
    pub fn close(&mut self) {
        let dropped = {
            let mut s = lock(&self.shared);
            s.receiver_gone = true;
            if let Some(w) = s.sender_waker.take() {
                w.wake();
            }
            std::mem::take(&mut s.queue)
        };
        drop(dropped);
    }
}

impl Drop for LogReceiver {
    fn drop(&mut self) {
        self.close();
    }
}

/// One chunk of log, still in the buffer the plugin allocated (or, from an isolated
/// plugin, where the host read it).
pub struct LogChunk(Bytes);

impl LogChunk {
    /// A chunk of the host's own bytes.
    #[cfg(test)]
    pub(crate) fn from_vec(bytes: Vec<u8>) -> Self {
        Self(Bytes::Plugin(RVec::from(bytes)))
    }

    /// The chunk as a `Vec`: its buffer as it is when it was allocated by this program's
    /// allocator, else a copy.
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Bytes::Plugin(v) => v.into_vec(),
            Bytes::Lent(b) => (*b).as_ref().to_vec(),
        }
    }
}

impl std::ops::Deref for LogChunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Bytes::Plugin(v) => v.as_slice(),
            Bytes::Lent(b) => (**b).as_ref(),
        }
    }
}

struct ChannelSink {
    shared: Arc<Mutex<Shared>>,
}

impl Drop for ChannelSink {
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        s.sender_gone = true;
        if let Some(w) = s.receiver_waker.take() {
            w.wake();
        }
    }
}

fn closed() -> BackendError {
    BackendError::new(
        ErrorKind::OUTPUT_CLOSED,
        "the host stopped reading the log (its reader went away or a limit was reached)",
    )
}

/// Queues `chunk` if there is room: `Ok` when queued, `Err(Some(chunk))` when full,
/// `Err(None)` when the receiver is gone.
fn try_push(
    shared: &Mutex<Shared>,
    chunk: Bytes,
    waker: Option<&Waker>,
) -> Result<(), Option<Bytes>> {
    let mut s = lock(shared);
    if s.receiver_gone {
        return Err(None);
    }
    if s.queue.len() < s.capacity {
        s.queue.push_back(chunk);
        if let Some(w) = s.receiver_waker.take() {
            w.wake();
        }
        return Ok(());
    }
    if let Some(w) = waker {
        s.sender_waker = Some(w.clone());
    }
    Err(Some(chunk))
}

impl FfiOutputSink for ChannelSink {
    fn write(&mut self, chunk: RVec<u8>) -> FfiResultFuture<()> {
        self.push(Bytes::Plugin(chunk))
    }
}

impl ChannelSink {
    fn push(&mut self, chunk: Bytes) -> FfiResultFuture<()> {
        // The common case, room in the queue, completes here.
        let mut pending = match try_push(&self.shared, chunk, None) {
            Ok(()) => return std::future::ready(RResult::ROk(())).into_ffi(),
            Err(None) => return std::future::ready(RResult::RErr(closed())).into_ffi(),
            Err(Some(chunk)) => Some(chunk),
        };
        let shared = Arc::clone(&self.shared);
        std::future::poll_fn(move |cx| {
            let Some(chunk) = pending.take() else {
                return Poll::Ready(RResult::ROk(()));
            };
            match try_push(&shared, chunk, Some(cx.waker())) {
                Ok(()) => Poll::Ready(RResult::ROk(())),
                Err(None) => Poll::Ready(RResult::RErr(closed())),
                Err(Some(chunk)) => {
                    pending = Some(chunk);
                    Poll::Pending
                }
            }
        })
        .into_ffi()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(b: &[u8]) -> Vec<u8> {
        b.to_vec()
    }

    #[tokio::test]
    async fn chunks_arrive_in_order_and_the_end_is_seen() {
        let (mut sink, mut rx) = log_channel(2);
        sink.write(chunk(b"a")).await.unwrap();
        sink.write(chunk(b"b")).await.unwrap();
        let writer = tokio::spawn(async move {
            // Full: waits until the reader takes one.
            sink.write(chunk(b"c")).await.unwrap();
        });
        let mut got = Vec::new();
        while let Some(c) = rx.recv().await {
            got.extend_from_slice(&c);
            if got.len() == 3 {
                break;
            }
        }
        writer.await.unwrap();
        assert_eq!(got, b"abc");
        assert!(rx.recv().await.is_none(), "the sink is gone: the end");
    }

    #[tokio::test]
    async fn a_closed_receiver_fails_writes_even_a_waiting_one() {
        let (mut sink, mut rx) = log_channel(1);
        sink.write(chunk(b"a")).await.unwrap();
        let waiting = tokio::spawn(async move { sink.write(chunk(b"b")).await });
        tokio::task::yield_now().await;
        rx.close();
        let r = waiting.await.unwrap();
        assert_eq!(r.unwrap_err().kind(), ErrorKind::OUTPUT_CLOSED);
    }
}
