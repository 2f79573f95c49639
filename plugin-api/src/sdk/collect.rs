//! An output sink that keeps everything written to it: for the conformance kit and tests.

use std::sync::{Arc, Mutex};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RVec};
use async_ffi::FutureExt as _;

use crate::ffi::{FfiOutputSink, FfiOutputSink_TO, FfiResultFuture};

/// The bytes a [`collecting_sink`] received.
pub(crate) type Log = Arc<Mutex<Vec<u8>>>;

struct CollectingSink(Log);

impl FfiOutputSink for CollectingSink {
    fn write(&mut self, chunk: RVec<u8>) -> FfiResultFuture<()> {
        if let Ok(mut log) = self.0.lock() {
            log.extend_from_slice(&chunk);
        }
        std::future::ready(RResult::ROk(())).into_ffi()
    }
}

/// A sink that keeps every chunk, and the log it keeps them in.
pub(crate) fn collecting_sink() -> (crate::ffi::OutputSinkBox, Log) {
    let log = Log::default();
    (
        FfiOutputSink_TO::from_value(CollectingSink(Arc::clone(&log)), TD_Opaque),
        log,
    )
}
