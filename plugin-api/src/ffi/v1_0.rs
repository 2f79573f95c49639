//! The ABI of plugin-api 1.0, frozen.
//!
//! abi_stable lets a host load a plugin whose prefix types (root module, trait vtables) have
//! *more* fields than the host knows, but refuses one with *fewer*. So that a newer 1.x host
//! still loads plugins built against an older 1.x, every released minor's types that later
//! minors appended to are kept here, exactly as released: the host checks such a plugin's
//! layout against the snapshot of the version it was built with, then uses it through the
//! current types, whose appended fields and methods it reaches only through runtime-checked
//! accessors (an older plugin lacks them, and the host answers for them).
//!
//! Only types that changed since 1.0 are copied; the rest are the current ones (they never
//! change in 1.x) or a later snapshot's where 1.0's equals it (the instance: [`super::v1_1`]).

#![allow(missing_docs, non_local_definitions, non_camel_case_types)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RStr, RVec},
    StableAbi,
};

use super::v1_1::InstanceBox;
use super::{FfiResultFuture, HelpEntry, LoggerBox, RConfig, RStartAttributes};
use crate::error::BackendError;

/// `FfiProvider` as in 1.0: no `reap`.
#[sabi_trait]
pub trait FfiProvider: Send + Sync + 'static {
    fn setup(&self) -> FfiResultFuture<()>;

    #[sabi(last_prefix_field)]
    fn start(&self, attributes: &RStartAttributes) -> FfiResultFuture<InstanceBox>;
}

pub type ProviderBox = FfiProvider_TO<RBox<()>>;

/// `BackendMod` as in 1.0 (its fields are unchanged; its provider type is 1.0's).
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
        version: RStr::from_str("1.0.0"),
    };
}
