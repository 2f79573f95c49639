//! # plugin-api: the contract between a CI worker host and its backend plugins
//!
//! A *backend* runs build jobs somewhere: in a fake that only pretends, as local processes,
//! in containers. Each backend ships as a shared library (`.so`/`.dylib`) that exports one
//! root module; the host loads every library in its plugin directories and offers the
//! backends by alias. This crate is everything a backend author needs and nothing of the
//! host:
//!
//! - [`sdk`]: the traits you implement ([`Backend`], [`Provider`], [`Instance`]) and the
//!   [`export_backend!`] macro. You never write `unsafe`, `extern "C"` or an abi_stable type.
//!   With feature `process` (Unix), `sdk::process` runs a build as a process tree of its own:
//!   process group and cgroup, one ordered output stream, two-phase termination, reaping.
//! - [`ProviderConfig`], [`StartAttributes`], [`RunResult`], [`BackendError`]: the domain
//!   types of the original travis-ci/worker `backend` package, in Rust spelling.
//! - [`ffi`]: the raw stable ABI (for the host, and for the curious), with the rules by
//!   which it evolves within 1.x.
//!
//! ## A complete backend
//!
//! ```no_run
//! use std::time::Duration;
//! use plugin_api::sdk::*;
//!
//! pub struct Hello;
//!
//! impl Backend for Hello {
//!     const ALIAS: &'static str = "hello";
//!     const HUMAN_READABLE_NAME: &'static str = "Hello";
//!     const HELP: &'static [(&'static str, &'static str)] =
//!         &[("GREETING", "what the build log says (default \"hello\")")];
//!     type Provider = HelloProvider;
//!
//!     fn new_provider(config: &ProviderConfig) -> Result<HelloProvider, BackendError> {
//!         let greeting = config.lookup("GREETING").unwrap_or("hello").to_owned();
//!         Ok(HelloProvider { greeting })
//!     }
//! }
//!
//! pub struct HelloProvider {
//!     greeting: String,
//! }
//!
//! impl Provider for HelloProvider {
//!     type Instance = HelloInstance;
//!
//!     async fn start(&self, _attrs: &StartAttributes) -> Result<HelloInstance, BackendError> {
//!         Ok(HelloInstance { greeting: self.greeting.clone() })
//!     }
//! }
//!
//! pub struct HelloInstance {
//!     greeting: String,
//! }
//!
//! impl Instance for HelloInstance {
//!     async fn upload_script(&self, _script: &[u8]) -> Result<(), BackendError> {
//!         Ok(())
//!     }
//!
//!     async fn run_script(&self, output: &mut Output) -> Result<RunResult, BackendError> {
//!         output.write(format!("{}\n", self.greeting)).await?;
//!         Ok(RunResult::completed(0))
//!     }
//!
//!     async fn stop(&self) -> Result<(), BackendError> {
//!         Ok(())
//!     }
//!
//!     fn id(&self) -> &str {
//!         "hello"
//!     }
//!
//!     fn startup_duration(&self) -> Duration {
//!         Duration::ZERO
//!     }
//! }
//!
//! plugin_api::export_backend!(Hello);
//! ```
//!
//! Build it with `crate-type = ["cdylib"]` and `panic = "unwind"` (the default), drop the
//! library into a plugin directory, and `host list-backends` shows `hello`.

#![deny(missing_docs)]

pub mod attributes;
pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod error;
pub mod ffi;
pub mod progress;
pub mod sdk;

pub use attributes::{StartAttributes, VmConfig};
pub use config::ProviderConfig;
pub use error::{BackendError, ErrorKind};
pub use ffi::{RunResult, PLUGIN_API_VERSION};
pub use progress::{ProgressEntry, ProgressState};
pub use sdk::{Backend, Instance, Output, Provider};

/// The README's example backend, compiled as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExample;

/// Tests that start processes take turns: the conformance kit's own tests watch (and end)
/// every process of the test binary, and would take another test's for a leak.
#[cfg(test)]
pub(crate) static PROCESS_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());
