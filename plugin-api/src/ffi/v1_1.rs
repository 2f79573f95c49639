//! The ABI of plugin-api 1.1, frozen (see [`super::v1_0`] for why snapshots exist).
//!
//! 1.2 appended to `FfiProvider` (progress) and `FfiInstance` (image name, warmed, progress,
//! trace), so both are kept here as 1.1 released them, with the root module whose provider
//! type is 1.1's. 1.0's instance is the same as 1.1's: [`super::v1_0`] uses this one.

#![allow(missing_docs, non_local_definitions, non_camel_case_types)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RDuration, RResult, RStr, RString, RVec},
    StableAbi,
};
use async_ffi::FutureExt as _;

use super::{
    FfiResultFuture, HelpEntry, LoggerBox, OutputSinkBox, RConfig, RStartAttributes, RunResult,
};
use crate::error::BackendError;

/// `FfiInstance` as in 1.0 and 1.1.
#[sabi_trait]
pub trait FfiInstance: Send + Sync + 'static {
    fn upload_script(&self, script: RVec<u8>) -> FfiResultFuture<()>;

    fn run_script(&self, output: OutputSinkBox) -> FfiResultFuture<RunResult>;

    fn stop(&self) -> FfiResultFuture<()>;

    fn id(&self) -> RStr<'_>;

    #[sabi(last_prefix_field)]
    fn startup_duration(&self) -> RDuration;
}

pub type InstanceBox = FfiInstance_TO<RBox<()>>;

/// `FfiProvider` as in 1.1: `reap`, no progress.
#[sabi_trait]
pub trait FfiProvider: Send + Sync + 'static {
    fn setup(&self) -> FfiResultFuture<()>;

    #[sabi(last_prefix_field)]
    fn start(&self, attributes: &RStartAttributes) -> FfiResultFuture<InstanceBox>;

    fn reap(&self, older_than: RDuration, dry_run: bool) -> FfiResultFuture<RVec<RString>> {
        let _ = (older_than, dry_run);
        async {
            abi_stable::std_types::RErr(BackendError::unsupported(
                "reap (the plugin was built against plugin-api 1.0, which has no reap)",
            ))
        }
        .into_ffi()
    }
}

pub type ProviderBox = FfiProvider_TO<RBox<()>>;

/// `BackendMod` as in 1.1 (its fields are unchanged; its provider type is 1.1's).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = BackendMod_Ref)))]
#[sabi(missing_field(panic))]
pub struct BackendMod {
    pub alias: extern "C" fn() -> RStr<'static>,
    pub human_readable_name: extern "C" fn() -> RStr<'static>,
    pub plugin_version: extern "C" fn() -> RStr<'static>,
    pub help: extern "C" fn() -> RVec<HelpEntry>,
    pub set_logger: extern "C" fn(LoggerBox),
    #[sabi(last_prefix_field)]
    pub new_provider: extern "C" fn(RConfig) -> RResult<ProviderBox, BackendError>,
}

impl RootModule for BackendMod_Ref {
    declare_root_module_statics! {BackendMod_Ref}
    const BASE_NAME: &'static str = "backend";
    const NAME: &'static str = "backend";
    const VERSION_STRINGS: VersionStrings = VersionStrings {
        version: RStr::from_str("1.1.0"),
    };
}
