//! The host's side of the stable ABI: the **only** host code that touches abi_stable,
//! async-ffi or `plugin_api::ffi` (as `plugin_api::sdk::adapter` is on the plugin's side).
//!
//! Everything here is crate-private or exposes only the library's own types: the rest of the
//! host, and every embedder, sees [`crate::Backend`], [`crate::Provider`],
//! [`crate::Instance`] and [`crate::output`], never an `RVec`, an `FfiFuture` or a root
//! module reference.
//!
//! - [`load`]: from an opened file to a checked root module (header, version, layout, the
//!   per-minor ABI snapshots), with abi_stable's errors turned into [`crate::LoadError`]s;
//! - [`module`]: a loaded root module: its description and its provider factory;
//! - [`calls`]: provider and instance objects, whose futures are polled with panics caught;
//! - [`sink`]: the log channel a running script writes into;
//! - [`logger`]: plugin log events into the host's `tracing`.
//!
//! Text a plugin hands over for people to read (error messages, names, help, log lines) is
//! escaped here ([`crate::text::escape_controls`]) so that no plugin can drive the terminal.

pub(crate) mod calls;
pub(crate) mod load;
pub(crate) mod logger;
pub(crate) mod module;
pub(crate) mod sink;
