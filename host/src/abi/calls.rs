//! Provider and instance objects across the boundary, with every call's future polled so
//! that a panic which still crosses it (a plugin not built with the SDK) becomes an error.

use std::future::Future as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RVec};
use plugin_api::ffi::{
    FfiProgresser, FfiProgresser_TO, FfiResultFuture, InstanceBox, ProviderBox, RProgressEntry,
    RStartAttributes,
};
use plugin_api::{BackendError, ErrorKind, ProgressEntry, RunResult, StartAttributes};

use super::sink::LogSink;
use crate::text::escape_controls;

/// Awaits a plugin future; a panic that crossed the boundary becomes a [`ErrorKind::PANIC`]
/// error, and the plugin's message is made safe to print.
async fn call<T>(
    alias: &str,
    call: &'static str,
    mut future: FfiResultFuture<T>,
) -> Result<T, BackendError> {
    let polled = std::future::poll_fn(|cx| {
        match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut future).poll(cx))) {
            Ok(Poll::Ready(r)) => Poll::Ready(r),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(RResult::RErr(BackendError::new(
                ErrorKind::PANIC,
                format!("{alias} plugin panicked in {call} (the panic crossed the boundary)"),
            ))),
        }
    })
    .await;
    polled.into_result().map_err(sanitize)
}

/// The error with its message escaped for a terminal (the kind is kept).
pub(crate) fn sanitize(e: BackendError) -> BackendError {
    match escape_controls(e.message()) {
        std::borrow::Cow::Borrowed(_) => e,
        std::borrow::Cow::Owned(m) => BackendError::new(e.kind(), m),
    }
}

pub(crate) struct ProviderObj(pub(crate) ProviderBox);

impl ProviderObj {
    pub(crate) async fn setup(&self, alias: &str) -> Result<(), BackendError> {
        call(alias, "setup", self.0.setup()).await
    }

    pub(crate) async fn reap(
        &self,
        alias: &str,
        older_than: Duration,
        dry_run: bool,
    ) -> Result<Vec<String>, BackendError> {
        let lines = call(alias, "reap", self.0.reap(older_than.into(), dry_run)).await?;
        Ok(lines
            .into_iter()
            .map(|l| escape_controls(l.as_str()).into_owned())
            .collect())
    }

    /// Starts an instance; with `progress`, through `start_with_progress` (which a plugin
    /// built before plugin-api 1.2 answers with a plain start).
    pub(crate) async fn start(
        &self,
        alias: &str,
        attributes: &StartAttributes,
        progress: Option<ProgressFn>,
    ) -> Result<InstanceObj, BackendError> {
        let raw = RStartAttributes::from(attributes);
        let inner = match progress {
            Some(f) => {
                let progresser = FfiProgresser_TO::from_value(HostProgresser(f), TD_Opaque);
                call(alias, "start", self.0.start_with_progress(&raw, progresser)).await?
            }
            None => call(alias, "start", self.0.start(&raw)).await?,
        };
        let id = escape_controls(inner.id().as_str()).into_owned();
        let image_name = escape_controls(inner.image_name().as_str()).into_owned();
        let warmed = inner.warmed();
        Ok(InstanceObj {
            inner,
            id,
            image_name,
            warmed,
        })
    }

    pub(crate) fn supports_progress(&self) -> bool {
        self.0.supports_progress()
    }
}

/// What the host does with a progress entry.
pub(crate) type ProgressFn = Box<dyn Fn(ProgressEntry) + Send + Sync>;

/// The host's progresser as the plugin sees it.
struct HostProgresser(ProgressFn);

impl FfiProgresser for HostProgresser {
    fn progress(&self, entry: RProgressEntry) {
        // The host's own closure; a panic in it must not unwind into the plugin.
        let _ = catch_unwind(AssertUnwindSafe(|| (self.0)(ProgressEntry::from(&entry))));
    }
}

pub(crate) struct InstanceObj {
    inner: InstanceBox,
    /// Read once: the id is shown often and must not change.
    id: String,
    /// Read once, as the id (plugin-api 1.2; "" and `false` from older plugins).
    image_name: String,
    warmed: bool,
}

impl InstanceObj {
    pub(crate) async fn upload_script(
        &self,
        alias: &str,
        script: Vec<u8>,
    ) -> Result<(), BackendError> {
        call(
            alias,
            "upload_script",
            self.inner.upload_script(RVec::from(script)),
        )
        .await
    }

    pub(crate) async fn run_script(
        &self,
        alias: &str,
        sink: LogSink,
    ) -> Result<RunResult, BackendError> {
        call(alias, "run_script", self.inner.run_script(sink.into_ffi())).await
    }

    pub(crate) async fn stop(&self, alias: &str) -> Result<(), BackendError> {
        call(alias, "stop", self.inner.stop()).await
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn startup_duration(&self) -> Duration {
        self.inner.startup_duration().into()
    }

    pub(crate) fn image_name(&self) -> &str {
        &self.image_name
    }

    pub(crate) fn warmed(&self) -> bool {
        self.warmed
    }

    pub(crate) fn supports_progress(&self) -> bool {
        self.inner.supports_progress()
    }

    pub(crate) async fn download_trace(&self, alias: &str) -> Result<Vec<u8>, BackendError> {
        let trace = call(alias, "download_trace", self.inner.download_trace()).await?;
        Ok(trace.into_vec())
    }
}
