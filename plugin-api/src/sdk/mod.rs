//! The SDK a plugin author writes a backend with: three ordinary traits and one macro.
//!
//! Implement [`Backend`] (what the backend is called, its config keys, how a provider is made),
//! [`Provider`] and [`Instance`] with `async fn`s, then export the backend with
//! [`export_backend!`](crate::export_backend). The SDK does the rest:
//!
//! - it owns a small tokio runtime per plugin (threads named `<alias>-rt-N`) and enters it on
//!   every poll of every future the host awaits, so `tokio::time`, `tokio::process`,
//!   `tokio::net` work in your code even though the host's tokio is another copy;
//! - it catches every panic at the boundary and turns it into a [`BackendError`] of kind
//!   [`ErrorKind::PANIC`](crate::ErrorKind::PANIC) naming your plugin, so a bug in a backend
//!   fails one call instead of ending the host process;
//! - it forwards your `tracing` events and panic messages to the host's log.
//!
//! Your futures are polled on the host's threads: do not block in them. Use
//! [`spawn_blocking`] for blocking or CPU-heavy work, [`spawn`] to run a task on the plugin's
//! runtime.
//!
//! Dropping a future is cancellation: when the host gives up on a call (timeout, user
//! cancel) it drops the future, and your `async fn` stops at its current `.await`. Release
//! what a half-done call holds in `Drop` impls or in `stop`, which the host always calls.

pub(crate) mod adapter;
#[cfg(any(test, feature = "conformance"))]
pub(crate) mod collect;
pub mod instances;
mod logging;
#[cfg(all(unix, feature = "process"))]
pub mod process;
mod runtime;

use std::future::Future;
use std::time::Duration;

use abi_stable::std_types::RVec;

pub use crate::attributes::{StartAttributes, VmConfig};
pub use crate::config::ProviderConfig;
pub use crate::error::{BackendError, ErrorKind};
pub use crate::ffi::RunResult;
pub use runtime::{runtime_handle, spawn, spawn_blocking};

/// A backend: its names, its config keys, and how to make a provider from a config.
pub trait Backend: 'static {
    /// The alias users select the backend by, e.g. `"fake"`. Lower-case, no spaces.
    const ALIAS: &'static str;
    /// A human-readable name, e.g. `"Fake"`.
    const HUMAN_READABLE_NAME: &'static str;
    /// Every config key the backend reads, with a line of help each, as `(KEY, help)`.
    const HELP: &'static [(&'static str, &'static str)];
    /// The provider this backend makes.
    type Provider: Provider;
    /// Makes a provider from a config (the original's `ProviderFunc`). Validate the config
    /// here and name the key and value at fault in the error.
    fn new_provider(config: &ProviderConfig) -> Result<Self::Provider, BackendError>;
}

/// Makes instances (the original's `Provider`).
pub trait Provider: Send + Sync + 'static {
    /// The instance type this provider starts.
    type Instance: Instance;

    /// One-time preparation before the first start. The default does nothing.
    fn setup(&self) -> impl Future<Output = Result<(), BackendError>> + Send {
        async { Ok(()) }
    }

    /// Starts an instance for a job.
    fn start(
        &self,
        attributes: &StartAttributes,
    ) -> impl Future<Output = Result<Self::Instance, BackendError>> + Send;

    // ---- appended in plugin-api 1.1 ----
    /// Removes what this backend left behind that is older than `older_than` (e.g. the
    /// instances of a host that crashed); with `dry_run`, only lists it. Returns a line per
    /// thing (to be) removed. The default says the backend does not support it.
    fn reap(
        &self,
        older_than: Duration,
        dry_run: bool,
    ) -> impl Future<Output = Result<Vec<String>, BackendError>> + Send {
        let _ = (older_than, dry_run);
        async { Err(BackendError::unsupported("reap")) }
    }
    // ---- end of 1.1 ----

    // ---- appended in plugin-api 1.2 ----
    /// Whether [`Self::start_with_progress`] reports the start's steps. The default: `false`.
    /// The host does not decide anything by it (it always starts through
    /// `start_with_progress` and shows whatever steps come); it answers the original's
    /// `SupportsProgress` for embedders that ask. [`Instance::supports_progress`] is the
    /// same question about a started instance.
    fn supports_progress(&self) -> bool {
        false
    }

    /// Starts an instance for a job, reporting its steps to `progress` as they happen (the
    /// original's `StartWithProgress`). The default calls [`Self::start`] and reports none.
    fn start_with_progress(
        &self,
        attributes: &StartAttributes,
        progress: Progress,
    ) -> impl Future<Output = Result<Self::Instance, BackendError>> + Send {
        drop(progress);
        self.start(attributes)
    }
    // ---- end of 1.2 ----
}

/// A started instance that runs one job (the original's `Instance`).
pub trait Instance: Send + Sync + 'static {
    /// Puts the build script on the instance. A second upload should fail with
    /// [`BackendError::stale_vm`].
    fn upload_script(&self, script: &[u8])
        -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Runs the uploaded script, writing its log into `output` as it is produced.
    /// A run that broke for infrastructure reasons returns [`RunResult::not_completed`].
    fn run_script(
        &self,
        output: &mut Output,
    ) -> impl Future<Output = Result<RunResult, BackendError>> + Send;

    /// Stops the instance and releases everything it holds. Called on every path, possibly
    /// after `run_script` was cancelled; calling it twice must be harmless. The host never
    /// calls it while `run_script` is in flight: a run being cancelled is dropped first, then
    /// `stop` is called (the conformance kit does the same). Everything the instance started
    /// (processes, files) must be gone, or reaped, when it returns.
    fn stop(&self) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// The instance's id.
    fn id(&self) -> &str;

    /// How long the instance took to start.
    fn startup_duration(&self) -> Duration;

    // ---- appended in plugin-api 1.2 ----
    /// The image the instance runs; empty (the default) when it has none.
    fn image_name(&self) -> &str {
        ""
    }

    /// Whether the instance came from a pool of warmed ones. The default: `false`.
    fn warmed(&self) -> bool {
        false
    }

    /// Whether the instance reports progress. The default: `false`. Informational, as
    /// [`Provider::supports_progress`]: the host decides nothing by either.
    fn supports_progress(&self) -> bool {
        false
    }

    /// The instance's trace, where the backend keeps one (the original's `DownloadTrace`).
    /// The default says the backend keeps none ([`ErrorKind::UNSUPPORTED`]).
    fn download_trace(&self) -> impl Future<Output = Result<Vec<u8>, BackendError>> + Send {
        async { Err(BackendError::unsupported("download_trace")) }
    }
    // ---- end of 1.2 ----
}

// ---- appended in plugin-api 1.2 ----
pub use crate::progress::{ProgressEntry, ProgressState};

/// Where a starting instance reports its steps: the host shows them (a live line on a
/// terminal, plain lines, the job's log). Cheap to clone; reporting never waits.
#[derive(Clone)]
pub struct Progress(Option<std::sync::Arc<crate::ffi::ProgresserBox>>);

impl Progress {
    /// Progress that goes to the host's progresser. The SDK makes these for you.
    pub fn new(progresser: crate::ffi::ProgresserBox) -> Self {
        Self(Some(std::sync::Arc::new(progresser)))
    }

    /// Progress that goes nowhere (tests, a start without a progresser).
    pub fn none() -> Self {
        Self(None)
    }

    /// Reports `entry`.
    pub fn report(&self, entry: &ProgressEntry) {
        if let Some(p) = &self.0 {
            p.progress(crate::ffi::RProgressEntry::from(entry));
        }
    }

    /// Reports a step under way.
    pub fn neutral(&self, message: impl Into<String>) {
        self.report(&ProgressEntry::new(message, ProgressState::Neutral));
    }

    /// Reports a step done.
    pub fn success(&self, message: impl Into<String>) {
        self.report(&ProgressEntry::new(message, ProgressState::Success));
    }

    /// Reports a step that failed.
    pub fn failure(&self, message: impl Into<String>) {
        self.report(&ProgressEntry::new(message, ProgressState::Failure));
    }
}
// ---- end of 1.2 ----

/// Where a running script's log goes: the host's output sink.
///
/// [`write`](Output::write) waits while the host has no room (backpressure), so a flood of
/// output never grows memory without bound. It fails when the host will take no more (its
/// reader went away or a log cap was reached): stop the script and return that error.
pub struct Output {
    sink: Option<crate::ffi::OutputSinkBox>,
    bytes: u64,
}

impl Output {
    /// An output over a sink. The SDK makes these for you; this is for driving a backend
    /// in-process without the host (benchmarks, tests).
    pub fn new(sink: crate::ffi::OutputSinkBox) -> Self {
        Self {
            sink: Some(sink),
            bytes: 0,
        }
    }

    /// Moves the sink into a new `Output`, so that a task of the plugin's own runtime
    /// ([`spawn`]) can write the log; writes to `self` fail afterwards. For IO-heavy runs:
    /// reading a process's output and writing the log on the plugin's runtime keeps each
    /// chunk on one thread until it reaches the host.
    pub fn take(&mut self) -> Output {
        Output {
            sink: self.sink.take(),
            bytes: 0,
        }
    }

    /// Hands a chunk of log to the host. The chunk's buffer is passed on, not copied.
    pub async fn write(&mut self, chunk: impl Into<Vec<u8>>) -> Result<(), BackendError> {
        let chunk: Vec<u8> = chunk.into();
        if chunk.is_empty() {
            return Ok(());
        }
        let len = chunk.len() as u64;
        let Some(sink) = self.sink.as_mut() else {
            return Err(BackendError::other(
                "this output's sink was moved elsewhere (Output::take)",
            ));
        };
        sink.write(RVec::from(chunk)).await.into_result()?;
        self.bytes += len;
        Ok(())
    }

    /// How many bytes the host has accepted so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }
}

impl From<std::io::Error> for BackendError {
    fn from(e: std::io::Error) -> Self {
        BackendError::other(e.to_string())
    }
}

#[doc(hidden)]
pub mod __private {
    pub use super::adapter::root_module;
    pub use abi_stable::library::{
        __call_root_module_loader, CheckTypeLayout, LibHeader, RootModuleResult,
    };
    pub use abi_stable::std_types::RStr;
}

/// Exports a [`Backend`] as this library's root module, the one symbol the host looks up.
///
/// Write `plugin_api::export_backend!(MyBackend);` once, at the top level of a crate built
/// with `crate-type = ["cdylib"]`; the [crate-level example](crate) shows it in context.
#[macro_export]
macro_rules! export_backend {
    ($backend:ty) => {
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #[no_mangle]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::sdk::__private::LibHeader = {
            extern "C" fn __plugin_version() -> $crate::sdk::__private::RStr<'static> {
                $crate::sdk::__private::RStr::from_str(env!("CARGO_PKG_VERSION"))
            }
            fn __root_module() -> $crate::ffi::BackendMod_Ref {
                $crate::sdk::__private::root_module::<$backend>(__plugin_version)
            }
            extern "C" fn __loader() -> $crate::sdk::__private::RootModuleResult {
                $crate::sdk::__private::__call_root_module_loader(__root_module)
            }
            // SAFETY: `__loader` returns the root module of type `BackendMod_Ref`, the type
            // the header is declared with, and the layout is checked by the host on load.
            unsafe {
                $crate::sdk::__private::LibHeader::from_constructor::<$crate::ffi::BackendMod_Ref>(
                    __loader,
                    $crate::sdk::__private::CheckTypeLayout::Yes,
                )
            }
        };
    };
}
