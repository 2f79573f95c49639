//! The host's side of a script's log: a [`LogSink`] the plugin writes chunks into, and the
//! [`LogReceiver`] the host reads them from.
//!
//! The channel is bounded: when the reader falls behind, the plugin's write waits
//! (backpressure), so a script that floods output holds at most `capacity` chunks in memory.
//! When the receiver is dropped or closed, every further write fails with
//! [`ErrorKind::OUTPUT_CLOSED`](plugin_api::ErrorKind::OUTPUT_CLOSED) and the plugin stops.
//! A channel of its own rather than tokio's mpsc: an idle one costs a few dozen bytes, which
//! matters with thousands of jobs in flight.

pub use crate::abi::sink::{log_channel, LogChunk, LogReceiver, LogSink, DEFAULT_CAPACITY};
