//! Provider and instance objects across the boundary, with every call's future polled so
//! that a panic which still crosses it (a plugin not built with the SDK) becomes an error.

use std::future::Future as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use abi_stable::std_types::{RResult, RVec};
use plugin_api::ffi::{FfiResultFuture, InstanceBox, ProviderBox, RStartAttributes};
use plugin_api::{BackendError, ErrorKind, RunResult, StartAttributes};

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

    pub(crate) async fn start(
        &self,
        alias: &str,
        attributes: &StartAttributes,
    ) -> Result<InstanceObj, BackendError> {
        let raw = RStartAttributes::from(attributes);
        let inner = call(alias, "start", self.0.start(&raw)).await?;
        let id = escape_controls(inner.id().as_str()).into_owned();
        Ok(InstanceObj { inner, id })
    }
}

pub(crate) struct InstanceObj {
    inner: InstanceBox,
    /// Read once: the id is shown often and must not change.
    id: String,
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
}
