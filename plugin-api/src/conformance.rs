//! The contract checks every backend must pass, for plugin authors to run with
//! `cargo test` (feature `conformance`). Our own plugins run the same checks.
//!
//! The checks drive your [`Backend`] through the same stable-ABI objects and boundary
//! guards a host uses (everything but `dlopen`):
//!
//! | check | what must hold |
//! |---|---|
//! | `provider` | `new_provider` with your config and `setup` succeed |
//! | `lifecycle` | start, upload, run (completes, exit 0, writes output), stop |
//! | `stop is idempotent` | a second `stop` succeeds too |
//! | `run without upload fails cleanly` | an error, not a panic or a hang |
//! | `second upload is the stale-VM error` | kind [`ErrorKind::STALE_VM`] |
//! | `cancellation is prompt` | dropping a running `run_script` returns at once, and `stop` then finishes within the budget |
//! | `output sink errors are handled` | a run whose every write fails ends (no hang, no panic), and `stop` succeeds |
//!
//! ```no_run
//! # mod my_backend { pub use plugin_api::sdk::*; }
//! use plugin_api::conformance::Conformance;
//! use plugin_api::ProviderConfig;
//!
//! # struct MyBackend;
//! # impl plugin_api::Backend for MyBackend {
//! #     const ALIAS: &'static str = "x";
//! #     const HUMAN_READABLE_NAME: &'static str = "X";
//! #     const HELP: &'static [(&'static str, &'static str)] = &[];
//! #     type Provider = P;
//! #     fn new_provider(_: &ProviderConfig) -> Result<P, plugin_api::BackendError> { Ok(P) }
//! # }
//! # struct P;
//! # impl plugin_api::Provider for P {
//! #     type Instance = I;
//! #     async fn start(&self, _: &plugin_api::StartAttributes) -> Result<I, plugin_api::BackendError> { Ok(I) }
//! # }
//! # struct I;
//! # impl plugin_api::Instance for I {
//! #     async fn upload_script(&self, _: &[u8]) -> Result<(), plugin_api::BackendError> { Ok(()) }
//! #     async fn run_script(&self, _: &mut plugin_api::Output) -> Result<plugin_api::RunResult, plugin_api::BackendError> { Ok(plugin_api::RunResult::completed(0)) }
//! #     async fn stop(&self) -> Result<(), plugin_api::BackendError> { Ok(()) }
//! #     fn id(&self) -> &str { "i" }
//! #     fn startup_duration(&self) -> std::time::Duration { std::time::Duration::ZERO }
//! # }
//! #[test]
//! fn my_backend_follows_the_contract() {
//!     Conformance::new(ProviderConfig::new(), "echo hello")
//!         .long_running("sleep 600")
//!         .assert_conformant::<MyBackend>();
//! }
//! ```
//!
//! Call it from a plain `#[test]` (it runs its own tokio runtime).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RVec};
use async_ffi::FutureExt as _;

use crate::ffi::{
    FfiOutputSink, FfiOutputSink_TO, FfiResultFuture, InstanceBox, ProviderBox, RStartAttributes,
};
use crate::sdk::Backend;
use crate::{BackendError, ErrorKind, ProviderConfig, StartAttributes};

/// What to run the checks with.
#[derive(Clone, Debug)]
pub struct Conformance {
    config: ProviderConfig,
    script: Vec<u8>,
    long_config: Option<ProviderConfig>,
    long_script: Vec<u8>,
    step_timeout: Duration,
    cancel_budget: Duration,
}

/// One check's result.
#[derive(Clone, Debug)]
pub struct CheckResult {
    /// The check's name (see the module docs).
    pub name: &'static str,
    /// `Err` says what went wrong.
    pub outcome: Result<(), String>,
}

impl Conformance {
    /// Checks with `config`, and `script`: a script that writes some output and exits 0
    /// on your backend.
    pub fn new(config: ProviderConfig, script: impl Into<Vec<u8>>) -> Self {
        let script = script.into();
        Self {
            config,
            long_script: script.clone(),
            script,
            long_config: None,
            step_timeout: Duration::from_secs(60),
            cancel_budget: Duration::from_secs(15),
        }
    }

    /// A script that runs for minutes, for the cancellation check (default: the script).
    pub fn long_running(mut self, script: impl Into<Vec<u8>>) -> Self {
        self.long_script = script.into();
        self
    }

    /// A config for the cancellation check, for backends whose run time is configured
    /// rather than scripted (default: the config).
    pub fn long_running_config(mut self, config: ProviderConfig) -> Self {
        self.long_config = Some(config);
        self
    }

    /// How long any one call may take (default 60s).
    pub fn step_timeout(mut self, limit: Duration) -> Self {
        self.step_timeout = limit;
        self
    }

    /// How long `stop` may take after a cancelled run (default 15s).
    pub fn cancel_budget(mut self, limit: Duration) -> Self {
        self.cancel_budget = limit;
        self
    }

    /// Runs every check against backend `B`.
    pub fn run<B: Backend>(&self) -> Vec<CheckResult> {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                return vec![CheckResult {
                    name: "runtime",
                    outcome: Err(format!("cannot start a tokio runtime: {e}")),
                }]
            }
        };
        runtime.block_on(self.checks::<B>())
    }

    /// Runs every check and panics with a list of the failures, if any.
    pub fn assert_conformant<B: Backend>(&self) {
        let results = self.run::<B>();
        let failed: Vec<String> = results
            .iter()
            .filter_map(|r| {
                r.outcome
                    .as_ref()
                    .err()
                    .map(|e| format!("  {}: {e}", r.name))
            })
            .collect();
        assert!(
            failed.is_empty(),
            "backend {} fails {} of {} conformance checks:\n{}",
            B::ALIAS,
            failed.len(),
            results.len(),
            failed.join("\n")
        );
    }

    async fn checks<B: Backend>(&self) -> Vec<CheckResult> {
        let mut results = Vec::new();
        let provider = match self.provider::<B>(&self.config).await {
            Ok(p) => {
                results.push(pass("provider"));
                p
            }
            Err(e) => {
                results.push(fail("provider", e));
                return results;
            }
        };
        let (lifecycle, idempotent) = self.lifecycle(&provider).await;
        results.push(CheckResult {
            name: "lifecycle",
            outcome: lifecycle,
        });
        results.push(CheckResult {
            name: "stop is idempotent",
            outcome: idempotent,
        });
        results.push(CheckResult {
            name: "run without upload fails cleanly",
            outcome: self.run_without_upload(&provider).await,
        });
        results.push(CheckResult {
            name: "second upload is the stale-VM error",
            outcome: self.second_upload(&provider).await,
        });
        let cancellation = match &self.long_config {
            Some(cfg) => match self.provider::<B>(cfg).await {
                Ok(p) => self.cancellation(&p).await,
                Err(e) => Err(e),
            },
            None => self.cancellation(&provider).await,
        };
        results.push(CheckResult {
            name: "cancellation is prompt",
            outcome: cancellation,
        });
        results.push(CheckResult {
            name: "output sink errors are handled",
            outcome: self.sink_errors(&provider).await,
        });
        results
    }

    async fn provider<B: Backend>(&self, config: &ProviderConfig) -> Result<ProviderBox, String> {
        let raw = config
            .iter()
            .map(|(k, v)| abi_stable::std_types::Tuple2(k.into(), v.into()))
            .collect();
        let provider = crate::sdk::adapter::new_provider::<B>(raw)
            .into_result()
            .map_err(|e| format!("new_provider failed: {e}"))?;
        self.step("setup", provider.setup()).await?;
        Ok(provider)
    }

    async fn step<T>(&self, what: &str, fut: FfiResultFuture<T>) -> Result<T, String> {
        match tokio::time::timeout(self.step_timeout, fut).await {
            Err(_) => Err(format!(
                "{what} did not finish within {:?}",
                self.step_timeout
            )),
            Ok(RResult::ROk(v)) => Ok(v),
            Ok(RResult::RErr(e)) if e.kind() == ErrorKind::PANIC => {
                Err(format!("{what} panicked: {e}"))
            }
            Ok(RResult::RErr(e)) => Err(format!("{what} failed: {e}")),
        }
    }

    async fn start(&self, provider: &ProviderBox) -> Result<InstanceBox, String> {
        let mut attributes = StartAttributes::default();
        attributes.set_worker_defaults();
        let raw = RStartAttributes::from(&attributes);
        self.step("start", provider.start(&raw)).await
    }

    async fn lifecycle(&self, provider: &ProviderBox) -> (Result<(), String>, Result<(), String>) {
        let instance = match self.start(provider).await {
            Ok(i) => i,
            Err(e) => return (Err(e), Err("no instance to stop".into())),
        };
        let run = async {
            if instance.id().as_str().is_empty() {
                return Err("the instance id is empty".to_owned());
            }
            self.step(
                "upload_script",
                instance.upload_script(RVec::from(self.script.clone())),
            )
            .await?;
            let (sink, log) = collecting_sink();
            let result = self.step("run_script", instance.run_script(sink)).await?;
            if !result.completed || result.exit_code != 0 {
                return Err(format!(
                    "the script's run ended with {result:?}, expected exit 0"
                ));
            }
            if log.lock().map(|l| l.is_empty()).unwrap_or(true) {
                return Err("the script's output never reached the sink".to_owned());
            }
            Ok(())
        }
        .await;
        let stop = self.step("stop", instance.stop()).await;
        let again = self.step("second stop", instance.stop()).await;
        (run.and(stop), again)
    }

    async fn run_without_upload(&self, provider: &ProviderBox) -> Result<(), String> {
        let instance = self.start(provider).await?;
        let (sink, _log) = collecting_sink();
        let outcome = match tokio::time::timeout(self.step_timeout, instance.run_script(sink)).await
        {
            Err(_) => Err("run_script without a script hung".to_owned()),
            Ok(RResult::ROk(r)) => Err(format!("run_script without a script returned {r:?}")),
            Ok(RResult::RErr(e)) if e.kind() == ErrorKind::PANIC => {
                Err(format!("it panicked: {e}"))
            }
            Ok(RResult::RErr(_)) => Ok(()),
        };
        outcome.and(self.step("stop", instance.stop()).await)
    }

    async fn second_upload(&self, provider: &ProviderBox) -> Result<(), String> {
        let instance = self.start(provider).await?;
        let outcome = async {
            self.step(
                "upload_script",
                instance.upload_script(RVec::from(self.script.clone())),
            )
            .await?;
            match tokio::time::timeout(
                self.step_timeout,
                instance.upload_script(RVec::from(self.script.clone())),
            )
            .await
            {
                Err(_) => Err("the second upload hung".to_owned()),
                Ok(RResult::ROk(())) => Err("the second upload succeeded".to_owned()),
                Ok(RResult::RErr(e)) if e.kind() == ErrorKind::STALE_VM => Ok(()),
                Ok(RResult::RErr(e)) => Err(format!(
                    "the second upload failed with kind {} ({e}), expected stale_vm",
                    e.kind()
                )),
            }
        }
        .await;
        outcome.and(self.step("stop", instance.stop()).await)
    }

    async fn cancellation(&self, provider: &ProviderBox) -> Result<(), String> {
        let instance = self.start(provider).await?;
        self.step(
            "upload_script",
            instance.upload_script(RVec::from(self.long_script.clone())),
        )
        .await?;
        let (sink, _log) = collecting_sink();
        let mut run = instance.run_script(sink);
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(500), &mut run).await {
            let _ = self.step("stop", instance.stop()).await;
            return Err(format!(
                "the long-running script finished within 500ms ({r:?}): give a longer one"
            ));
        }
        let dropped = Instant::now();
        drop(run);
        let drop_took = dropped.elapsed();
        if drop_took > Duration::from_millis(500) {
            return Err(format!(
                "dropping the running run_script took {drop_took:?}"
            ));
        }
        match tokio::time::timeout(self.cancel_budget, instance.stop()).await {
            Err(_) => Err(format!(
                "stop after a cancelled run took longer than {:?}",
                self.cancel_budget
            )),
            Ok(RResult::RErr(e)) => Err(format!("stop after a cancelled run failed: {e}")),
            Ok(RResult::ROk(())) => Ok(()),
        }
    }

    async fn sink_errors(&self, provider: &ProviderBox) -> Result<(), String> {
        let instance = self.start(provider).await?;
        self.step(
            "upload_script",
            instance.upload_script(RVec::from(self.script.clone())),
        )
        .await?;
        let sink = FfiOutputSink_TO::from_value(FailingSink, TD_Opaque);
        let outcome = match tokio::time::timeout(self.step_timeout, instance.run_script(sink)).await
        {
            Err(_) => Err("a run whose output is refused hung".to_owned()),
            Ok(RResult::RErr(e)) if e.kind() == ErrorKind::PANIC => {
                Err(format!("it panicked: {e}"))
            }
            Ok(_) => Ok(()),
        };
        outcome.and(self.step("stop", instance.stop()).await)
    }
}

fn pass(name: &'static str) -> CheckResult {
    CheckResult {
        name,
        outcome: Ok(()),
    }
}

fn fail(name: &'static str, why: String) -> CheckResult {
    CheckResult {
        name,
        outcome: Err(why),
    }
}

type Log = Arc<Mutex<Vec<u8>>>;

struct CollectingSink(Log);

impl FfiOutputSink for CollectingSink {
    fn write(&mut self, chunk: RVec<u8>) -> FfiResultFuture<()> {
        if let Ok(mut log) = self.0.lock() {
            log.extend_from_slice(&chunk);
        }
        ready(RResult::ROk(()))
    }
}

fn collecting_sink() -> (crate::ffi::OutputSinkBox, Log) {
    let log = Log::default();
    (
        FfiOutputSink_TO::from_value(CollectingSink(Arc::clone(&log)), TD_Opaque),
        log,
    )
}

struct FailingSink;

impl FfiOutputSink for FailingSink {
    fn write(&mut self, _chunk: RVec<u8>) -> FfiResultFuture<()> {
        ready(RResult::RErr(BackendError::new(
            ErrorKind::OUTPUT_CLOSED,
            "the conformance kit refuses all output",
        )))
    }
}

fn ready<T: Send + 'static>(v: T) -> async_ffi::FfiFuture<T> {
    std::future::ready(v).into_ffi()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdk::{Instance, Output, Provider};
    use crate::RunResult;

    /// A backend that breaks every rule it can without failing to build.
    struct Sloppy;
    struct SloppyProvider;
    struct SloppyInstance;

    impl Backend for Sloppy {
        const ALIAS: &'static str = "sloppy";
        const HUMAN_READABLE_NAME: &'static str = "Sloppy";
        const HELP: &'static [(&'static str, &'static str)] = &[];
        type Provider = SloppyProvider;
        fn new_provider(_: &ProviderConfig) -> Result<SloppyProvider, BackendError> {
            Ok(SloppyProvider)
        }
    }

    impl Provider for SloppyProvider {
        type Instance = SloppyInstance;
        async fn start(&self, _: &StartAttributes) -> Result<SloppyInstance, BackendError> {
            Ok(SloppyInstance)
        }
    }

    impl Instance for SloppyInstance {
        async fn upload_script(&self, _: &[u8]) -> Result<(), BackendError> {
            Ok(()) // accepts a second upload
        }
        async fn run_script(&self, output: &mut Output) -> Result<RunResult, BackendError> {
            // Ignores a refused write, then never ends.
            let _ = output.write(b"x".to_vec()).await;
            std::future::pending::<()>().await;
            Ok(RunResult::completed(0))
        }
        async fn stop(&self) -> Result<(), BackendError> {
            Ok(())
        }
        fn id(&self) -> &str {
            "sloppy-1"
        }
        fn startup_duration(&self) -> Duration {
            Duration::ZERO
        }
    }

    #[test]
    fn a_sloppy_backend_fails_the_checks_it_breaks() {
        let results = Conformance::new(ProviderConfig::new(), "true")
            .step_timeout(Duration::from_millis(300))
            .run::<Sloppy>();
        let failed: Vec<&str> = results
            .iter()
            .filter(|r| r.outcome.is_err())
            .map(|r| r.name)
            .collect();
        assert_eq!(
            failed,
            [
                "lifecycle",
                "run without upload fails cleanly",
                "second upload is the stale-VM error",
                "output sink errors are handled"
            ],
            "{results:#?}"
        );
    }
}
