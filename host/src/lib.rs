//! # host: loads CI build backend plugins and runs jobs on them
//!
//! The library behind the `host` binary, usable by a worker that embeds it:
//!
//! - [`loader`]: where plugin files are looked for and how one is opened;
//! - [`Registry`]: the loaded backends, [`Registry::each_backend`] in sorted alias order and
//!   [`Registry::new_backend_provider`], as in the original travis-ci/worker `backend`
//!   package;
//! - [`Provider`] and [`Instance`]: safe async handles on a plugin's objects, whose errors
//!   name the backend and the call;
//! - [`output`]: the bounded log channel a running script writes into.
//!
//! ```no_run
//! use host::{loader, Registry};
//! use plugin_api::{ProviderConfig, StartAttributes};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::load(&loader::plugin_dirs(&[]));
//! registry.each_backend(|b| println!("{} ({})", b.alias, b.human_readable_name));
//!
//! let provider = registry.new_backend_provider("fake", &ProviderConfig::from_env("fake"))?;
//! provider.setup().await?;
//! let mut attrs = StartAttributes::default();
//! attrs.set_worker_defaults();
//! let instance = provider.start(&attrs).await?;
//! instance.upload_script(b"echo hi".to_vec()).await?;
//! let (sink, mut log) = host::output::log_channel(host::output::DEFAULT_CAPACITY);
//! let reader = tokio::spawn(async move {
//!     while let Some(chunk) = log.recv().await {
//!         print!("{}", String::from_utf8_lossy(&chunk));
//!     }
//! });
//! let result = instance.run_script(sink).await;
//! instance.stop().await?;
//! reader.await?;
//! println!("{:?}", result?);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod backend;
pub mod config;
mod elf;
pub mod error;
pub mod inspect;
pub mod job;
pub mod loader;
mod logger;
pub mod output;
pub mod registry;
pub mod trust;

pub use backend::{Instance, Provider};
pub use error::{HostError, LoadError, Rejected};
pub use registry::{Backend, Registry};
