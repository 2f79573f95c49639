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
//! | `exit code arrives exactly` | with [`Conformance::exit_code_script`]: the script's exit code is the `RunResult`'s |
//! | `output keeps its order` | with [`Conformance::ordered_output`]: stdout and stderr lines arrive in the order written |
//!
//! After every check's `stop`, the kit looks for what the backend left behind and fails the
//! check if anything stays for longer than [`Conformance::leak_grace`]:
//! - **processes**: any process descended from the test process that appeared during the
//!   check and is still there (running, or a zombie nobody reaped); they are then killed.
//!   (Linux, from `/proc`. A process that leaves our tree, double-forked to init, escapes
//!   this; so do containers, which the engine owns. Run the kit in a test binary of its own
//!   or serially: it watches the whole process.)
//! - **files**: with [`Conformance::scratch_dir`], anything left in the directory the kit
//!   hands the backend.
//!
//! [`Conformance::assert_conformant`] prints every check and its result, as a test runner
//! does, and panics with the failures.
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
    leak_grace: Duration,
    scratch_key: Option<String>,
    exit_code: Option<(Vec<u8>, i32)>,
    ordered: Option<(Vec<u8>, Vec<u8>)>,
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
            leak_grace: Duration::from_secs(3),
            scratch_key: None,
            exit_code: None,
            ordered: None,
        }
    }

    /// How long after `stop` what the backend started or wrote may take to go (default 3s).
    pub fn leak_grace(mut self, limit: Duration) -> Self {
        self.leak_grace = limit;
        self
    }

    /// Hands the backend a fresh directory as config key `key` (e.g. the local backend's
    /// `SCRIPTS_DIR`) and fails a check that leaves anything in it after `stop`.
    pub fn scratch_dir(mut self, key: &str) -> Self {
        self.scratch_key = Some(key.to_owned());
        self
    }

    /// Adds the check that `script`'s exit code, `code`, arrives exactly in the `RunResult`
    /// (for backends that run scripts).
    pub fn exit_code_script(mut self, script: impl Into<Vec<u8>>, code: i32) -> Self {
        self.exit_code = Some((script.into(), code));
        self
    }

    /// Adds the check that `script`'s output, written alternately to stdout and stderr,
    /// arrives as `expected`: one stream, in the order written.
    pub fn ordered_output(
        mut self,
        script: impl Into<Vec<u8>>,
        expected: impl Into<Vec<u8>>,
    ) -> Self {
        self.ordered = Some((script.into(), expected.into()));
        self
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
        let mut kit = self.clone();
        let scratch = match &self.scratch_key {
            Some(key) => match Scratch::new() {
                Ok(dir) => {
                    kit.config.set(key, dir.0.display().to_string());
                    if let Some(c) = kit.long_config.as_mut() {
                        c.set(key, dir.0.display().to_string());
                    }
                    Some(dir)
                }
                Err(e) => {
                    return vec![CheckResult {
                        name: "scratch directory",
                        outcome: Err(format!("cannot make one: {e}")),
                    }]
                }
            },
            None => None,
        };
        runtime.block_on(kit.checks::<B>(scratch.as_ref()))
    }

    /// Runs every check and panics with a list of the failures, if any.
    pub fn assert_conformant<B: Backend>(&self) {
        let results = self.run::<B>();
        for r in &results {
            match &r.outcome {
                Ok(()) => println!("conformance {}: {} ... ok", B::ALIAS, r.name),
                Err(e) => println!("conformance {}: {} ... FAILED: {e}", B::ALIAS, r.name),
            }
        }
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

    async fn checks<B: Backend>(&self, scratch: Option<&Scratch>) -> Vec<CheckResult> {
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
        let before = descendants();
        let (lifecycle, idempotent) = self.lifecycle(&provider).await;
        results.push(CheckResult {
            name: "lifecycle",
            outcome: self.and_no_leaks(lifecycle, &before, scratch).await,
        });
        results.push(CheckResult {
            name: "stop is idempotent",
            outcome: idempotent,
        });
        let before = descendants();
        let outcome = self.run_without_upload(&provider).await;
        results.push(CheckResult {
            name: "run without upload fails cleanly",
            outcome: self.and_no_leaks(outcome, &before, scratch).await,
        });
        let before = descendants();
        let outcome = self.second_upload(&provider).await;
        results.push(CheckResult {
            name: "second upload is the stale-VM error",
            outcome: self.and_no_leaks(outcome, &before, scratch).await,
        });
        let before = descendants();
        let cancellation = match &self.long_config {
            Some(cfg) => match self.provider::<B>(cfg).await {
                Ok(p) => self.cancellation(&p).await,
                Err(e) => Err(e),
            },
            None => self.cancellation(&provider).await,
        };
        results.push(CheckResult {
            name: "cancellation is prompt",
            outcome: self.and_no_leaks(cancellation, &before, scratch).await,
        });
        let before = descendants();
        let outcome = self.sink_errors(&provider).await;
        results.push(CheckResult {
            name: "output sink errors are handled",
            outcome: self.and_no_leaks(outcome, &before, scratch).await,
        });
        if let Some((script, code)) = &self.exit_code {
            let before = descendants();
            let outcome = self.exit_code_arrives(&provider, script, *code).await;
            results.push(CheckResult {
                name: "exit code arrives exactly",
                outcome: self.and_no_leaks(outcome, &before, scratch).await,
            });
        }
        if let Some((script, expected)) = &self.ordered {
            let before = descendants();
            let outcome = self.output_order(&provider, script, expected).await;
            results.push(CheckResult {
                name: "output keeps its order",
                outcome: self.and_no_leaks(outcome, &before, scratch).await,
            });
        }
        results
    }

    /// `outcome`, failed too if processes that appeared since `before` or files in the
    /// scratch directory are still there after the grace (leftover processes are killed).
    async fn and_no_leaks(
        &self,
        outcome: Result<(), String>,
        before: &Procs,
        scratch: Option<&Scratch>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + self.leak_grace;
        let (procs, files) = loop {
            let procs: Vec<Proc> = descendants()
                .into_iter()
                .filter(|(pid, p)| before.get(pid).is_none_or(|b| b.start != p.start))
                .map(|(_, p)| p)
                .collect();
            let files = scratch.map(Scratch::entries).unwrap_or_default();
            if (procs.is_empty() && files.is_empty()) || Instant::now() >= deadline {
                break (procs, files);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut leaks = Vec::new();
        if !procs.is_empty() {
            let list: Vec<String> = procs.iter().map(Proc::describe).collect();
            leaks.push(format!(
                "{} process(es) left behind after stop: {}",
                procs.len(),
                list.join(", ")
            ));
            for p in &procs {
                p.kill();
            }
        }
        if !files.is_empty() {
            leaks.push(format!(
                "file(s) left in the scratch directory after stop: {}",
                files.join(", ")
            ));
            if let Some(s) = scratch {
                s.empty();
            }
        }
        match (outcome, leaks.is_empty()) {
            (outcome, true) => outcome,
            (Ok(()), false) => Err(leaks.join("; ")),
            (Err(e), false) => Err(format!("{e}; and {}", leaks.join("; "))),
        }
    }

    async fn exit_code_arrives(
        &self,
        provider: &ProviderBox,
        script: &[u8],
        code: i32,
    ) -> Result<(), String> {
        let (result, _) = self.run_once(provider, script).await?;
        if result.completed && result.exit_code == code {
            Ok(())
        } else {
            Err(format!(
                "the script exits {code}; the run ended with {result:?}"
            ))
        }
    }

    async fn output_order(
        &self,
        provider: &ProviderBox,
        script: &[u8],
        expected: &[u8],
    ) -> Result<(), String> {
        let (_, log) = self.run_once(provider, script).await?;
        if log == expected {
            Ok(())
        } else {
            Err(format!(
                "expected {:?}, got {:?}",
                String::from_utf8_lossy(expected),
                String::from_utf8_lossy(&log)
            ))
        }
    }

    /// Start, upload `script`, run, stop: the run's result and its log.
    async fn run_once(
        &self,
        provider: &ProviderBox,
        script: &[u8],
    ) -> Result<(crate::RunResult, Vec<u8>), String> {
        let instance = self.start(provider).await?;
        let run = async {
            self.step(
                "upload_script",
                instance.upload_script(RVec::from(script.to_vec())),
            )
            .await?;
            let (sink, log) = collecting_sink();
            let result = self.step("run_script", instance.run_script(sink)).await?;
            let log = log.lock().map(|l| l.clone()).unwrap_or_default();
            Ok::<_, String>((result, log))
        }
        .await;
        let stop = self.step("stop", instance.stop()).await;
        let (result, log) = run?;
        stop.map(|()| (result, log))
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

use crate::sdk::collect::collecting_sink;

struct FailingSink;

impl FfiOutputSink for FailingSink {
    fn write(&mut self, _chunk: RVec<u8>) -> FfiResultFuture<()> {
        ready(RResult::RErr(BackendError::new(
            ErrorKind::OUTPUT_CLOSED,
            "the conformance kit refuses all output",
        )))
    }
}

/// A process: what identifies it (its start time beside its pid) and what to say of it.
#[derive(Clone, Debug)]
struct Proc {
    pid: i32,
    start: u64,
    state: char,
    name: String,
}

impl Proc {
    fn describe(&self) -> String {
        if self.state == 'Z' {
            format!("{} ({}, a zombie nobody reaped)", self.pid, self.name)
        } else {
            format!("{} ({}, state {})", self.pid, self.name, self.state)
        }
    }

    fn kill(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

type Procs = std::collections::BTreeMap<i32, Proc>;

/// The processes descended from this one, from `/proc` (empty elsewhere).
fn descendants() -> Procs {
    let mut all: Vec<(i32, i32, Proc)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ... starttime (field 22); comm may hold anything.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = stat[open + 1..close].to_owned();
            let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let (Some(state), Some(ppid), Some(start)) = (
                rest.first().and_then(|s| s.chars().next()),
                rest.get(1).and_then(|p| p.parse::<i32>().ok()),
                rest.get(19).and_then(|s| s.parse::<u64>().ok()),
            ) else {
                continue;
            };
            all.push((
                pid,
                ppid,
                Proc {
                    pid,
                    start,
                    state,
                    name,
                },
            ));
        }
    }
    let mut found = Procs::new();
    let mut parents = vec![std::process::id() as i32];
    while let Some(parent) = parents.pop() {
        for (pid, ppid, p) in &all {
            if *ppid == parent && !found.contains_key(pid) {
                found.insert(*pid, p.clone());
                parents.push(*pid);
            }
        }
    }
    found
}

/// The directory [`Conformance::scratch_dir`] hands the backend, removed at the end.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> std::io::Result<Self> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "conformance-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    fn entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes what a check left, so that the next check starts clean.
    fn empty(&self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::create_dir_all(&self.0);
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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

    /// The kit watches every process of the test binary: the tests that start processes
    /// take turns.
    use crate::PROCESS_TESTS as ALONE;

    #[test]
    fn a_sloppy_backend_fails_the_checks_it_breaks() {
        let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
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

    /// A backend that does everything right but clean up: its run starts a process it never
    /// ends or reaps, and leaves a file in its directory.
    struct Leaky;
    struct LeakyProvider(std::path::PathBuf);
    struct LeakyInstance {
        dir: std::path::PathBuf,
        uploaded: std::sync::atomic::AtomicBool,
    }

    impl Backend for Leaky {
        const ALIAS: &'static str = "leaky";
        const HUMAN_READABLE_NAME: &'static str = "Leaky";
        const HELP: &'static [(&'static str, &'static str)] = &[("DIR", "where files go")];
        type Provider = LeakyProvider;
        fn new_provider(config: &ProviderConfig) -> Result<LeakyProvider, BackendError> {
            Ok(LeakyProvider(config.get("DIR").into()))
        }
    }

    impl Provider for LeakyProvider {
        type Instance = LeakyInstance;
        async fn start(&self, _: &StartAttributes) -> Result<LeakyInstance, BackendError> {
            Ok(LeakyInstance {
                dir: self.0.clone(),
                uploaded: std::sync::atomic::AtomicBool::new(false),
            })
        }
    }

    impl Instance for LeakyInstance {
        async fn upload_script(&self, _: &[u8]) -> Result<(), BackendError> {
            if self
                .uploaded
                .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                return Err(BackendError::stale_vm());
            }
            Ok(())
        }
        async fn run_script(&self, output: &mut Output) -> Result<RunResult, BackendError> {
            if !self.uploaded.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(BackendError::other("no script"));
            }
            // Started and forgotten: never killed, never waited for.
            let child = std::process::Command::new("sleep").arg("30").spawn()?;
            std::mem::forget(child);
            std::fs::write(self.dir.join("left-behind"), b"x")?;
            output.write(b"ran\n".to_vec()).await?;
            Ok(RunResult::completed(0))
        }
        async fn stop(&self) -> Result<(), BackendError> {
            Ok(())
        }
        fn id(&self) -> &str {
            "leaky-1"
        }
        fn startup_duration(&self) -> Duration {
            Duration::ZERO
        }
    }

    #[test]
    fn a_backend_that_leaves_processes_and_files_behind_fails() {
        let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
        let results = Conformance::new(ProviderConfig::new(), "true")
            .scratch_dir("DIR")
            .leak_grace(Duration::from_millis(300))
            .run::<Leaky>();
        let lifecycle = results
            .iter()
            .find(|r| r.name == "lifecycle")
            .expect("a lifecycle check");
        let why = lifecycle.outcome.as_ref().expect_err("the leaks are seen");
        assert!(
            why.contains("1 process(es) left behind after stop: "),
            "{why}"
        );
        assert!(why.contains("(sleep, state "), "{why}");
        assert!(
            why.contains("file(s) left in the scratch directory after stop: left-behind"),
            "{why}"
        );
        // The kit killed what it found: nothing of the check is left running.
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            descendants()
                .values()
                .all(|p| p.name != "sleep" || p.state == 'Z'),
            "{:?}",
            descendants()
        );
    }
}
