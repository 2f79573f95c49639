//! Safe async handles on a plugin's provider and instances: the original's `Provider` and
//! `Instance`. Every error names its backend and the call that failed; a panic in the plugin
//! is an error, never the end of the host.

use std::sync::Arc;
use std::time::Duration;

use plugin_api::{BackendError, ProgressEntry, RunResult, StartAttributes};

use crate::abi::calls::{InstanceObj, ProgressFn, ProviderObj};
use crate::error::HostError;
use crate::isolate::{RemoteInstance, RemoteProvider};
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
/// [`crate::Registry::new_backend_provider`]. The same for a plugin loaded in this process
/// and for one isolated in a plugin server ([`crate::isolate`]).
pub struct Provider {
    alias: Arc<str>,
    inner: ProviderInner,
}

enum ProviderInner {
    InProcess(ProviderObj),
    Isolated(RemoteProvider),
}

impl Provider {
    pub(crate) fn new(alias: Arc<str>, inner: ProviderObj) -> Self {
        Self {
            alias,
            inner: ProviderInner::InProcess(inner),
        }
    }

    pub(crate) fn remote(alias: Arc<str>, inner: RemoteProvider) -> Self {
        Self {
            alias,
            inner: ProviderInner::Isolated(inner),
        }
    }

    /// The backend's alias.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// An isolated plugin's provider is made in its server on first use: a config mistake
    /// is named as the `new_provider` it is.
    async fn bound(&self) -> Result<(), HostError> {
        match &self.inner {
            ProviderInner::InProcess(_) => Ok(()),
            ProviderInner::Isolated(r) => {
                r.bind().await.map_err(named(&self.alias, "new_provider"))
            }
        }
    }

    /// Prepares the provider.
    pub async fn setup(&self) -> Result<(), HostError> {
        self.bound().await?;
        let alias = &self.alias;
        match &self.inner {
            ProviderInner::InProcess(p) => p.setup(alias).await,
            ProviderInner::Isolated(r) => r.setup().await,
        }
        .map_err(named(alias, "setup"))
    }

    /// Removes what the backend left behind that is older than `older_than` (with
    /// `dry_run`, only lists it); one line per item. Plugins built against plugin-api 1.0
    /// answer with an [`ErrorKind::UNSUPPORTED`](plugin_api::ErrorKind::UNSUPPORTED) error.
    pub async fn reap(
        &self,
        older_than: Duration,
        dry_run: bool,
    ) -> Result<Vec<String>, HostError> {
        self.bound().await?;
        let alias = &self.alias;
        match &self.inner {
            ProviderInner::InProcess(p) => p.reap(alias, older_than, dry_run).await,
            ProviderInner::Isolated(r) => r.reap(older_than, dry_run).await,
        }
        .map_err(named(alias, "reap"))
    }

    /// Starts an instance with `attributes`.
    pub async fn start(&self, attributes: &StartAttributes) -> Result<Instance, HostError> {
        self.start_inner(attributes, None).await
    }

    /// Whether the backend reports the steps of a start (plugin-api 1.2; `false` for a
    /// plugin built before it, and for an isolated plugin until its first call).
    pub fn supports_progress(&self) -> bool {
        match &self.inner {
            ProviderInner::InProcess(p) => p.supports_progress(),
            ProviderInner::Isolated(r) => r.supports_progress(),
        }
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
        self.bound().await?;
        let alias = &self.alias;
        let inner = match &self.inner {
            ProviderInner::InProcess(p) => p
                .start(alias, attributes, progress)
                .await
                .map(InstanceInner::InProcess),
            ProviderInner::Isolated(r) => r
                .start(attributes, progress)
                .await
                .map(InstanceInner::Isolated),
        }
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
    inner: InstanceInner,
}

enum InstanceInner {
    InProcess(InstanceObj),
    Isolated(RemoteInstance),
}

/// Calls `$method` on whichever kind of instance `$self` holds.
macro_rules! on_instance {
    ($self:expr, $i:ident => $in_process:expr, $r:ident => $isolated:expr) => {
        match &$self.inner {
            InstanceInner::InProcess($i) => $in_process,
            InstanceInner::Isolated($r) => $isolated,
        }
    };
}

impl Instance {
    /// The backend's alias.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// Puts the build script on the instance.
    pub async fn upload_script(&self, script: Vec<u8>) -> Result<(), HostError> {
        let alias = &self.alias;
        on_instance!(self, i => i.upload_script(alias, script).await, r => r.upload_script(script).await)
            .map_err(named(alias, "upload_script"))
    }

    /// Runs the script, streaming its log into `output` (see [`crate::output`]).
    pub async fn run_script(&self, output: LogSink) -> Result<RunResult, HostError> {
        let alias = &self.alias;
        on_instance!(self, i => i.run_script(alias, output).await, r => r.run_script(output).await)
            .map_err(named(alias, "run_script"))
    }

    /// Stops the instance.
    pub async fn stop(&self) -> Result<(), HostError> {
        let alias = &self.alias;
        on_instance!(self, i => i.stop(alias).await, r => r.stop().await)
            .map_err(named(alias, "stop"))
    }

    /// The instance's id.
    pub fn id(&self) -> &str {
        on_instance!(self, i => i.id(), r => r.id())
    }

    /// How long the instance took to start.
    pub fn startup_duration(&self) -> Duration {
        on_instance!(self, i => i.startup_duration(), r => r.startup_duration())
    }

    /// The image the instance runs; empty when the backend names none (or was built before
    /// plugin-api 1.2).
    pub fn image_name(&self) -> &str {
        on_instance!(self, i => i.image_name(), r => r.image_name())
    }

    /// Whether the instance came from a pool of warmed ones.
    pub fn warmed(&self) -> bool {
        on_instance!(self, i => i.warmed(), r => r.warmed())
    }

    /// Whether the instance reports progress.
    pub fn supports_progress(&self) -> bool {
        on_instance!(self, i => i.supports_progress(), r => r.supports_progress())
    }

    /// The instance's trace; an [`ErrorKind::UNSUPPORTED`](plugin_api::ErrorKind::UNSUPPORTED)
    /// error from a backend that keeps none.
    pub async fn download_trace(&self) -> Result<Vec<u8>, HostError> {
        let alias = &self.alias;
        on_instance!(self, i => i.download_trace(alias).await, r => r.download_trace().await)
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
