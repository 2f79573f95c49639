//! Safe async handles on a plugin's provider and instances: the original's `Provider` and
//! `Instance`. Every error names its backend and the call that failed; a panic in the plugin
//! is an error, never the end of the host.

use std::sync::Arc;
use std::time::Duration;

use plugin_api::{BackendError, ProgressEntry, RunResult, StartAttributes};

use crate::abi::calls::{InstanceObj, ProgressFn, ProviderObj};
use crate::error::HostError;
use crate::output::LogSink;

fn named<'a>(
    alias: &'a Arc<str>,
    call: &'static str,
) -> impl FnOnce(BackendError) -> HostError + 'a {
    move |error| HostError::Backend {
        alias: alias.to_string(),
        call,
        error,
    }
}

/// A backend's provider (the original's `Provider`), made by
/// [`crate::Registry::new_backend_provider`].
pub struct Provider {
    alias: Arc<str>,
    inner: ProviderObj,
}

impl Provider {
    pub(crate) fn new(alias: Arc<str>, inner: ProviderObj) -> Self {
        Self { alias, inner }
    }

    /// The backend's alias.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// Prepares the provider.
    pub async fn setup(&self) -> Result<(), HostError> {
        let alias = &self.alias;
        self.inner.setup(alias).await.map_err(named(alias, "setup"))
    }

    /// Removes what the backend left behind that is older than `older_than` (with
    /// `dry_run`, only lists it); one line per item. Plugins built against plugin-api 1.0
    /// answer with an [`ErrorKind::UNSUPPORTED`](plugin_api::ErrorKind::UNSUPPORTED) error.
    pub async fn reap(
        &self,
        older_than: Duration,
        dry_run: bool,
    ) -> Result<Vec<String>, HostError> {
        let alias = &self.alias;
        self.inner
            .reap(alias, older_than, dry_run)
            .await
            .map_err(named(alias, "reap"))
    }

    /// Starts an instance with `attributes`.
    pub async fn start(&self, attributes: &StartAttributes) -> Result<Instance, HostError> {
        self.start_inner(attributes, None).await
    }

    /// Whether the backend reports the steps of a start (plugin-api 1.2; `false` for a
    /// plugin built before it).
    pub fn supports_progress(&self) -> bool {
        self.inner.supports_progress()
    }

    /// Starts an instance with `attributes`, handing each step the backend reports to
    /// `progress` as it happens (on the thread that polls the start; keep it short). A
    /// backend without progress, or built before plugin-api 1.2, reports none.
    pub async fn start_with_progress(
        &self,
        attributes: &StartAttributes,
        progress: impl Fn(ProgressEntry) + Send + Sync + 'static,
    ) -> Result<Instance, HostError> {
        self.start_inner(attributes, Some(Box::new(progress))).await
    }

    async fn start_inner(
        &self,
        attributes: &StartAttributes,
        progress: Option<ProgressFn>,
    ) -> Result<Instance, HostError> {
        let alias = &self.alias;
        let inner = self
            .inner
            .start(alias, attributes, progress)
            .await
            .map_err(named(alias, "start"))?;
        Ok(Instance {
            alias: Arc::clone(alias),
            inner,
        })
    }
}

/// A started instance (the original's `Instance`).
pub struct Instance {
    alias: Arc<str>,
    inner: InstanceObj,
}

impl Instance {
    /// The backend's alias.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// Puts the build script on the instance.
    pub async fn upload_script(&self, script: Vec<u8>) -> Result<(), HostError> {
        let alias = &self.alias;
        self.inner
            .upload_script(alias, script)
            .await
            .map_err(named(alias, "upload_script"))
    }

    /// Runs the script, streaming its log into `output` (see [`crate::output`]).
    pub async fn run_script(&self, output: LogSink) -> Result<RunResult, HostError> {
        let alias = &self.alias;
        self.inner
            .run_script(alias, output)
            .await
            .map_err(named(alias, "run_script"))
    }

    /// Stops the instance.
    pub async fn stop(&self) -> Result<(), HostError> {
        let alias = &self.alias;
        self.inner.stop(alias).await.map_err(named(alias, "stop"))
    }

    /// The instance's id.
    pub fn id(&self) -> &str {
        self.inner.id()
    }

    /// How long the instance took to start.
    pub fn startup_duration(&self) -> Duration {
        self.inner.startup_duration()
    }

    /// The image the instance runs; empty when the backend names none (or was built before
    /// plugin-api 1.2).
    pub fn image_name(&self) -> &str {
        self.inner.image_name()
    }

    /// Whether the instance came from a pool of warmed ones.
    pub fn warmed(&self) -> bool {
        self.inner.warmed()
    }

    /// Whether the instance reports progress.
    pub fn supports_progress(&self) -> bool {
        self.inner.supports_progress()
    }

    /// The instance's trace; an [`ErrorKind::UNSUPPORTED`](plugin_api::ErrorKind::UNSUPPORTED)
    /// error from a backend that keeps none.
    pub async fn download_trace(&self) -> Result<Vec<u8>, HostError> {
        let alias = &self.alias;
        self.inner
            .download_trace(alias)
            .await
            .map_err(named(alias, "download_trace"))
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
