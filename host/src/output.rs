//! The host's side of a script's log: an output sink the plugin writes chunks into, and the
//! receiver the host reads them from.
//!
//! The sink is a bounded channel: when the reader falls behind, the plugin's `write` waits
//! (backpressure), so a script that floods output holds at most `capacity` chunks in memory.
//! When the receiver is dropped, every further write fails with
//! [`ErrorKind::OUTPUT_CLOSED`](plugin_api::ErrorKind::OUTPUT_CLOSED) and the plugin stops.

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RVec};
use async_ffi::FutureExt as _;
use plugin_api::ffi::{FfiOutputSink, FfiOutputSink_TO, FfiResultFuture, OutputSinkBox};
use plugin_api::{BackendError, ErrorKind};
use tokio::sync::mpsc;

/// Chunks in flight between a plugin and the host's reader by default.
pub const DEFAULT_CAPACITY: usize = 16;

/// Makes a sink to hand to [`crate::Instance::run_script`] and the receiver of its chunks.
pub fn log_channel(capacity: usize) -> (OutputSinkBox, LogReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        FfiOutputSink_TO::from_value(ChannelSink { tx }, TD_Opaque),
        LogReceiver { rx },
    )
}

/// Receives the chunks a plugin writes.
pub struct LogReceiver {
    rx: mpsc::Receiver<RVec<u8>>,
}

impl LogReceiver {
    /// The next chunk, or `None` once the plugin has dropped its sink (the run is over).
    pub async fn recv(&mut self) -> Option<LogChunk> {
        self.rx.recv().await.map(LogChunk)
    }

    /// Refuses further output; chunks already queued are dropped.
    pub fn close(&mut self) {
        self.rx.close();
    }
}

/// One chunk of log, still in the buffer the plugin allocated.
pub struct LogChunk(RVec<u8>);

impl std::ops::Deref for LogChunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

struct ChannelSink {
    tx: mpsc::Sender<RVec<u8>>,
}

fn closed() -> BackendError {
    BackendError::new(
        ErrorKind::OUTPUT_CLOSED,
        "the host stopped reading the log (its reader went away or a limit was reached)",
    )
}

impl FfiOutputSink for ChannelSink {
    fn write(&mut self, chunk: RVec<u8>) -> FfiResultFuture<()> {
        // The common case, room in the channel, needs no clone of the sender.
        let chunk = match self.tx.try_send(chunk) {
            Ok(()) => return async { RResult::ROk(()) }.into_ffi(),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return async { RResult::RErr(closed()) }.into_ffi()
            }
            Err(mpsc::error::TrySendError::Full(chunk)) => chunk,
        };
        let tx = self.tx.clone();
        async move {
            match tx.send(chunk).await {
                Ok(()) => RResult::ROk(()),
                Err(_) => RResult::RErr(closed()),
            }
        }
        .into_ffi()
    }
}
