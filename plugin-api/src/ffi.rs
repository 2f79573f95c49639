#![allow(non_local_definitions, non_camel_case_types)]
//! The raw ABI between the host and a plugin. Plugin authors do not need anything here: the
//! [`sdk`](crate::sdk) builds these types from ordinary Rust traits, and the host wraps them
//! back into safe async methods.
//!
//! # Evolution rules (plugin-api 1.x)
//! - The root module [`BackendMod`] is a prefix type: new fields may only be **appended**
//!   after the last one (and become `Option` accessors for hosts reading older plugins).
//! - [`FfiProvider`], [`FfiInstance`], [`FfiOutputSink`] and [`FfiLogger`] are `#[sabi_trait]`
//!   objects whose vtables are prefix types too: new methods may only be appended, after the
//!   method marked `last_prefix_field`, and need a default so older plugins still build.
//! - A struct passed by value ([`RStartAttributes`], [`RunResult`], [`BackendError`]) never
//!   changes layout in 1.x. New start attributes arrive through a new method.
//! - Anything else (removing or reordering a field, changing a type) is plugin-api 2.0, and a
//!   host refuses such plugins with a message naming both versions.
//! - When a minor version appends, the types it changes are first frozen, as released, in a
//!   snapshot module ([`v1_0`], [`v1_1`]): abi_stable refuses a plugin whose prefix types
//!   have fewer fields than the host's, so the host checks an older plugin against the
//!   snapshot of the version it was built with.
//!
//! | version | appended |
//! |---|---|
//! | 1.0 | (first release) |
//! | 1.1 | [`FfiProvider::reap`] (a 1.0 plugin answers "unsupported") |
//! | 1.2 | [`FfiProvider::supports_progress`], [`FfiProvider::start_with_progress`] (with [`FfiProgresser`]); [`FfiInstance::image_name`], [`FfiInstance::warmed`], [`FfiInstance::supports_progress`], [`FfiInstance::download_trace`] (an older plugin answers "", `false`, `false`, "unsupported", and starts without progress) |

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RDuration, RResult, RStr, RString, RVec, Tuple2},
    StableAbi,
};
use async_ffi::{FfiFuture, FutureExt as _};

use crate::attributes::{StartAttributes, VmConfig};
use crate::error::BackendError;

/// The outcome of running a script (the original's `RunResult`).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunResult {
    /// The script's exit code; meaningful only when `completed`. A Unix process's own
    /// exit code is 0 to 255 (the kernel keeps the low 8 bits of `exit`'s argument); by
    /// convention, and in the SDK's process helpers, 128+N says it was killed by signal N.
    /// A backend may report other values (a VM's or an API's own codes); the host passes
    /// them on as they are.
    pub exit_code: i32,
    /// `false` when the run broke for infrastructure reasons: a worker requeues such a job
    /// instead of failing it.
    pub completed: bool,
}

impl RunResult {
    /// A run that completed with `exit_code`.
    pub fn completed(exit_code: i32) -> Self {
        Self {
            exit_code,
            completed: true,
        }
    }

    /// A run that did not complete (the job should be requeued).
    pub fn not_completed() -> Self {
        Self {
            exit_code: -1,
            completed: false,
        }
    }
}

/// A future that crosses the boundary and resolves to a result.
pub type FfiResultFuture<T> = FfiFuture<RResult<T, BackendError>>;

/// A config key and its help text.
pub type HelpEntry = Tuple2<RStr<'static>, RStr<'static>>;

/// A config as it crosses the boundary: sorted `(KEY, value)` pairs.
pub type RConfig = RVec<Tuple2<RString, RString>>;

/// The host's side of a running script's log: the plugin hands it chunks of output.
#[sabi_trait]
pub trait FfiOutputSink: Send + 'static {
    /// Accepts one chunk. The future resolves when the host has room for more (backpressure);
    /// an error means the host will take no more output (for example its reader went away).
    #[sabi(last_prefix_field)]
    fn write(&mut self, chunk: RVec<u8>) -> FfiResultFuture<()>;
}

/// An [`FfiOutputSink`] trait object owned by the plugin for the duration of a run.
pub type OutputSinkBox = FfiOutputSink_TO<RBox<()>>;

/// The host's logger, handed to a plugin when it is loaded.
#[sabi_trait]
pub trait FfiLogger: Send + Sync + 'static {
    /// Records one event. `level` is 1 (error) to 5 (trace).
    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>);

    /// The most verbose level the host wants: 0 (nothing) to 5 (trace).
    #[sabi(last_prefix_field)]
    fn max_level(&self) -> u8;
}

/// An [`FfiLogger`] trait object.
pub type LoggerBox = FfiLogger_TO<RBox<()>>;

/// Start attributes as they cross the boundary (see [`StartAttributes`]).
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
#[allow(missing_docs)]
pub struct RStartAttributes {
    pub language: RString,
    pub osx_image: RString,
    pub dist: RString,
    pub arch: RString,
    pub group: RString,
    pub os: RString,
    pub image_name: RString,
    pub vm_type: RString,
    pub gpu_count: i64,
    pub gpu_type: RString,
    pub zone: RString,
    pub vm_size: RString,
    pub warmer: bool,
    pub hard_timeout: RDuration,
    pub progress_type: RString,
}

impl From<&StartAttributes> for RStartAttributes {
    fn from(a: &StartAttributes) -> Self {
        let s = |v: &str| RString::from(v);
        Self {
            language: s(&a.language),
            osx_image: s(&a.osx_image),
            dist: s(&a.dist),
            arch: s(&a.arch),
            group: s(&a.group),
            os: s(&a.os),
            image_name: s(&a.image_name),
            vm_type: s(&a.vm_type),
            gpu_count: a.vm_config.gpu_count,
            gpu_type: s(&a.vm_config.gpu_type),
            zone: s(&a.vm_config.zone),
            vm_size: s(&a.vm_size),
            warmer: a.warmer,
            hard_timeout: a.hard_timeout.into(),
            progress_type: s(&a.progress_type),
        }
    }
}

impl From<&RStartAttributes> for StartAttributes {
    fn from(a: &RStartAttributes) -> Self {
        let s = |v: &RString| v.as_str().to_owned();
        Self {
            language: s(&a.language),
            osx_image: s(&a.osx_image),
            dist: s(&a.dist),
            arch: s(&a.arch),
            group: s(&a.group),
            os: s(&a.os),
            image_name: s(&a.image_name),
            vm_type: s(&a.vm_type),
            vm_config: VmConfig {
                gpu_count: a.gpu_count,
                gpu_type: s(&a.gpu_type),
                zone: s(&a.zone),
            },
            vm_size: s(&a.vm_size),
            warmer: a.warmer,
            hard_timeout: a.hard_timeout.into(),
            progress_type: s(&a.progress_type),
        }
    }
}

/// A backend's provider, as the host sees it.
#[sabi_trait]
pub trait FfiProvider: Send + Sync + 'static {
    /// Prepares the provider (the original's `Setup`).
    fn setup(&self) -> FfiResultFuture<()>;

    /// Starts an instance for a job.
    #[sabi(last_prefix_field)]
    fn start(&self, attributes: &RStartAttributes) -> FfiResultFuture<InstanceBox>;

    // ---- appended in plugin-api 1.1 ----
    /// Removes what this backend left behind that is older than `older_than` (instances of
    /// a host that crashed, say); with `dry_run`, only lists it. Returns one line per
    /// thing removed. A plugin built against plugin-api 1.0 has no `reap`: this default
    /// answers for it with [`ErrorKind::UNSUPPORTED`](crate::ErrorKind::UNSUPPORTED).
    fn reap(&self, older_than: RDuration, dry_run: bool) -> FfiResultFuture<RVec<RString>> {
        let _ = (older_than, dry_run);
        async {
            abi_stable::std_types::RErr(BackendError::unsupported(
                "reap (the plugin was built against plugin-api 1.0, which has no reap)",
            ))
        }
        .into_ffi()
    }
    // ---- end of 1.1 ----

    // ---- appended in plugin-api 1.2 ----
    /// Whether [`Self::start_with_progress`] reports the start's steps. A plugin built before
    /// 1.2: `false`.
    fn supports_progress(&self) -> bool {
        false
    }

    /// Starts an instance, reporting its steps to `progress` as they happen. A plugin built
    /// before 1.2 has no such method: this default starts it without steps.
    fn start_with_progress(
        &self,
        attributes: &RStartAttributes,
        progress: ProgresserBox,
    ) -> FfiResultFuture<InstanceBox> {
        drop(progress);
        self.start(attributes)
    }
    // ---- end of 1.2 ----
}

/// An [`FfiProvider`] trait object.
pub type ProviderBox = FfiProvider_TO<RBox<()>>;

/// A started instance, as the host sees it.
#[sabi_trait]
pub trait FfiInstance: Send + Sync + 'static {
    /// Puts the build script on the instance.
    fn upload_script(&self, script: RVec<u8>) -> FfiResultFuture<()>;

    /// Runs the uploaded script, streaming its log into `output`.
    fn run_script(&self, output: OutputSinkBox) -> FfiResultFuture<RunResult>;

    /// Stops the instance and releases everything it holds. Must be safe to call twice.
    fn stop(&self) -> FfiResultFuture<()>;

    /// The instance's id.
    fn id(&self) -> RStr<'_>;

    /// How long the instance took to start.
    #[sabi(last_prefix_field)]
    fn startup_duration(&self) -> RDuration;

    // ---- appended in plugin-api 1.2 ----
    /// The image the instance runs, or empty when it has none (a plugin built before 1.2).
    fn image_name(&self) -> RStr<'_> {
        RStr::from_str("")
    }

    /// Whether the instance came from a pool of warmed ones. Before 1.2: `false`.
    fn warmed(&self) -> bool {
        false
    }

    /// Whether the instance reports progress. Before 1.2: `false`.
    fn supports_progress(&self) -> bool {
        false
    }

    /// The instance's trace (a record of what ran, for debugging), where the backend keeps
    /// one. Before 1.2, and by default: [`ErrorKind::UNSUPPORTED`](crate::ErrorKind::UNSUPPORTED).
    fn download_trace(&self) -> FfiResultFuture<RVec<u8>> {
        async {
            abi_stable::std_types::RErr(BackendError::unsupported(
                "download_trace (this backend keeps no trace)",
            ))
        }
        .into_ffi()
    }
    // ---- end of 1.2 ----
}

/// An [`FfiInstance`] trait object.
pub type InstanceBox = FfiInstance_TO<RBox<()>>;

// ---- appended in plugin-api 1.2 ----
/// A progress entry as it crosses the boundary (see [`crate::progress::ProgressEntry`]).
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct RProgressEntry {
    /// What happens.
    pub message: RString,
    /// 0 neutral, 1 success, 2 failure.
    pub state: u8,
    /// Begins on a new line.
    pub interrupts: bool,
    /// The next entry continues this line.
    pub continues: bool,
    /// Written as it is.
    pub raw: bool,
}

impl From<&crate::progress::ProgressEntry> for RProgressEntry {
    fn from(e: &crate::progress::ProgressEntry) -> Self {
        Self {
            message: RString::from(e.message.as_str()),
            state: e.state.to_u8(),
            interrupts: e.interrupts,
            continues: e.continues,
            raw: e.raw,
        }
    }
}

impl From<&RProgressEntry> for crate::progress::ProgressEntry {
    fn from(e: &RProgressEntry) -> Self {
        Self {
            message: e.message.as_str().to_owned(),
            state: crate::progress::ProgressState::from_u8(e.state),
            interrupts: e.interrupts,
            continues: e.continues,
            raw: e.raw,
        }
    }
}

/// The host's side of a start's progress: the plugin hands it entries as steps happen.
#[sabi_trait]
pub trait FfiProgresser: Send + Sync + 'static {
    /// Records one entry. Returns at once: the host does not wait on its display.
    #[sabi(last_prefix_field)]
    fn progress(&self, entry: RProgressEntry);
}

/// An [`FfiProgresser`] trait object.
pub type ProgresserBox = FfiProgresser_TO<RBox<()>>;
// ---- end of 1.2 ----

/// The root module every backend plugin exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = BackendMod_Ref)))]
#[sabi(missing_field(panic))]
pub struct BackendMod {
    /// The backend's alias, e.g. `fake`: what users pass as `--backend`.
    pub alias: extern "C" fn() -> RStr<'static>,
    /// A human-readable name, e.g. `Fake`.
    pub human_readable_name: extern "C" fn() -> RStr<'static>,
    /// The plugin's own version (its crate version).
    pub plugin_version: extern "C" fn() -> RStr<'static>,
    /// Config keys the backend understands, with help text (the host lists them sorted by
    /// key, whatever their order here). A key ending in `_*` (`IMAGE_*`) stands for a
    /// family: every longer key with that prefix.
    pub help: extern "C" fn() -> RVec<HelpEntry>,
    /// Hands the host's logger to the plugin; called once, right after loading.
    pub set_logger: extern "C" fn(LoggerBox),
    /// Creates a provider from a config (the original's `ProviderFunc`).
    #[sabi(last_prefix_field)]
    pub new_provider: extern "C" fn(RConfig) -> RResult<ProviderBox, BackendError>,
}

impl RootModule for BackendMod_Ref {
    declare_root_module_statics! {BackendMod_Ref}
    const BASE_NAME: &'static str = "backend";
    const NAME: &'static str = "backend";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

pub mod v1_0;
pub mod v1_1;

/// The version of plugin-api this crate is (what a plugin built against it was built with).
pub const PLUGIN_API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The name of the symbol a plugin exports, as `#[export_root_module]` would name it.
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_symbol_is_the_one_abi_stable_looks_up() {
        assert_eq!(
            ROOT_MODULE_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }

    #[test]
    fn start_attributes_survive_the_round_trip() {
        let a = StartAttributes {
            language: "go".into(),
            osx_image: "x".into(),
            dist: "focal".into(),
            arch: "arm64".into(),
            group: "edge".into(),
            os: "linux".into(),
            image_name: "img".into(),
            vm_type: "premium".into(),
            vm_config: VmConfig {
                gpu_count: 2,
                gpu_type: "t4".into(),
                zone: "z".into(),
            },
            vm_size: "large".into(),
            warmer: true,
            hard_timeout: std::time::Duration::from_millis(1500),
            progress_type: "text".into(),
        };
        assert_eq!(StartAttributes::from(&RStartAttributes::from(&a)), a);
    }
}
