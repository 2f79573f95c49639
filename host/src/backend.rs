//! Safe async handles on a plugin's provider and instances.
//!
//! Every call names its backend in its error. Plugin futures are polled directly (the
//! plugin enters its own runtime on each poll); a panic that still escapes a poll (a plugin
//! not built with the SDK) is caught here and becomes an error.

use std::future::Future as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use abi_stable::std_types::{RResult, RVec};
use plugin_api::ffi::{FfiResultFuture, InstanceBox, OutputSinkBox, ProviderBox, RStartAttributes};
use plugin_api::{BackendError, ErrorKind, RunResult, StartAttributes};

use crate::error::HostError;

/// Awaits a plugin future, turning a panic that crossed the boundary into an error.
async fn call<T>(
    alias: &Arc<str>,
    call: &'static str,
    mut future: FfiResultFuture<T>,
) -> Result<T, HostError> {
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
    polled.into_result().map_err(|error| HostError::Backend {
        alias: alias.to_string(),
        call,
        error,
    })
}

/// A backend's provider (the original's `Provider`).
pub struct Provider {
    alias: Arc<str>,
    inner: ProviderBox,
}

impl Provider {
    pub(crate) fn new(alias: Arc<str>, inner: ProviderBox) -> Self {
        Self { alias, inner }
    }

    /// The backend's alias.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// Prepares the provider.
    pub async fn setup(&self) -> Result<(), HostError> {
        call(&self.alias, "setup", self.inner.setup()).await
    }

    /// Removes what the backend left behind that is older than `older_than` (with
    /// `dry_run`, only lists it). Plugins built against plugin-api 1.0 answer with an
    /// [`ErrorKind::UNSUPPORTED`] error.
    pub async fn reap(
        &self,
        older_than: Duration,
        dry_run: bool,
    ) -> Result<Vec<String>, HostError> {
        let lines = call(
            &self.alias,
            "reap",
            self.inner.reap(older_than.into(), dry_run),
        )
        .await?;
        Ok(lines.into_iter().map(|l| l.into_string()).collect())
    }

    /// Starts an instance with `attributes`.
    pub async fn start(&self, attributes: &StartAttributes) -> Result<Instance, HostError> {
        let raw = RStartAttributes::from(attributes);
        let inner = call(&self.alias, "start", self.inner.start(&raw)).await?;
        Ok(Instance {
            alias: Arc::clone(&self.alias),
            inner,
        })
    }
}

/// A started instance (the original's `Instance`).
pub struct Instance {
    alias: Arc<str>,
    inner: InstanceBox,
}

impl Instance {
    /// The backend's alias.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// Puts the build script on the instance.
    pub async fn upload_script(&self, script: Vec<u8>) -> Result<(), HostError> {
        call(
            &self.alias,
            "upload_script",
            self.inner.upload_script(RVec::from(script)),
        )
        .await
    }

    /// Runs the script, streaming its log into `output` (see [`crate::output`]).
    pub async fn run_script(&self, output: OutputSinkBox) -> Result<RunResult, HostError> {
        call(&self.alias, "run_script", self.inner.run_script(output)).await
    }

    /// Stops the instance.
    pub async fn stop(&self) -> Result<(), HostError> {
        call(&self.alias, "stop", self.inner.stop()).await
    }

    /// The instance's id.
    pub fn id(&self) -> &str {
        self.inner.id().as_str()
    }

    /// How long the instance took to start.
    pub fn startup_duration(&self) -> Duration {
        self.inner.startup_duration().into()
    }
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("backend", &self.alias)
            .field("id", &self.id())
            .finish()
    }
}
