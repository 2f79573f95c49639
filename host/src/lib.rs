//! # host: loads CI build backend plugins and runs jobs on them
//!
//! The core library: what an embedder takes to load plugins and run a job, alone. The CI
//! worker (queues, the control API, metrics, the build script service) is the `host-worker`
//! crate on top of it, and the command line the `host-cli` crate (binary `host`) on top of
//! both. This crate must not grow a dependency on a queue, a network server or client, a
//! command-line or a terminal crate: `cargo tree -p host -e normal` lists none of lapin,
//! axum, hyper, ureq, clap or indicatif, and that is the point of the split. A new rule for
//! what may load goes in [`plugins`] (see its doc); a new way to run a job's
//! backend calls in [`job`] or [`isolate`].
//!
//! Its public API
//! holds only its own types and plugin-api's domain types (`ProviderConfig`,
//! `StartAttributes`, `RunResult`, `BackendError`): no abi_stable or async-ffi type, which
//! stay inside one private module (`abi`). The surface, in the order a job uses it:
//!
//! - [`PluginPolicy`]: where plugins are found and which lock governs them, resolved once and
//!   applied to everything that opens a library ([`PluginPolicy::load`],
//!   [`PluginPolicy::inspect`]); [`plugins`] holds its rules;
//! - [`Registry`]: the loaded [`Backend`]s, [`Registry::each_backend`] in sorted alias order
//!   and [`Registry::new_backend_provider`], as in the original travis-ci/worker `backend`
//!   package;
//! - [`config`]: a backend's config from the command line, the environment and a file, with
//!   a warning for everything not used;
//! - [`Provider`] and [`Instance`]: async handles on a plugin's objects, whose errors name
//!   the backend and the call ([`HostError`]);
//! - [`job`]: one job end to end, with typed [`job::JobEvent`]s and a typed
//!   [`job::Outcome`]; [`output`]: the bounded log channel a running script writes into;
//! - [`plugins::inspect`]: everything known about one plugin file; [`text`]: text from outside made
//!   safe to print.
//!
//! A whole job through the library alone:
//!
//! ```no_run
//! use host::config::ConfigSources;
//! use host::job::{run_job, Job, JobOptions, Outcome, Silent};
//! use host::PluginPolicy;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // The same rules as `host run`: --plugin-dir / HOST_PLUGIN_PATH / beside the executable.
//! let registry = PluginPolicy::resolve(&[], None).load();
//! registry.each_backend(|b| println!("{} ({})", b.alias, b.human_readable_name));
//!
//! let backend = registry.backend("fake")?;
//! let sources = ConfigSources { pairs: vec!["LOG_OUTPUT=hello".into()], ..Default::default() };
//! let assembled = sources.assemble(backend, &registry)?;
//! for warning in &assembled.warnings {
//!     eprintln!("warning: {warning}");
//! }
//! let provider = backend.new_provider(&assembled.config)?;
//!
//! let mut job = Job { script: b"echo hi\n".to_vec(), options: JobOptions::default(), ..Job::default() };
//! job.attributes.set_worker_defaults();
//! let (_cancel_tx, mut cancel) = tokio::sync::mpsc::channel(4);
//! let report = run_job(&provider, job, tokio::io::stdout(), &mut cancel, &Silent).await;
//! match report.outcome() {
//!     Outcome::Passed => println!("passed on instance {:?}", report.instance_id),
//!     Outcome::NotCompleted(failure) => println!("requeue: {failure}"),
//!     other => println!("{}", other.name()),
//! }
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod abi;
pub mod backend;
pub mod config;
pub mod error;
mod fds;
pub mod isolate;
pub mod job;
pub mod output;
pub mod plugins;
pub mod progress;
pub mod text;

pub use backend::{Instance, Provider};
pub use error::{HostError, LoadError, Rejected};
pub use plugins::policy::PluginPolicy;
pub use plugins::registry::{Backend, Registry};

/// Answers a probe ([`plugins::probe`]), or serves an isolated plugin ([`isolate`]), and exits
/// when this process was started as either; otherwise marks this executable as able to do
/// both and returns. Call it first thing in `main`.
pub fn serve_if_asked() {
    plugins::probe::can_serve();
    match std::env::args_os()
        .nth(1)
        .as_deref()
        .and_then(|a| a.to_str())
    {
        Some(plugins::probe::PROBE_ARG) => std::process::exit(plugins::probe::serve()),
        Some(isolate::SERVER_ARG) => std::process::exit(isolate::serve()),
        _ => {}
    }
}
