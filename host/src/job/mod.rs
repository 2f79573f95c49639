//! One build job, end to end, the way a CI worker runs it: set up the provider, start an
//! instance, upload the script, run it with the log streamed out as it is produced, and
//! stop the instance on **every** path.
//!
//! Timeouts (defaults of the original worker): start 4m, upload 3m30s, the run's hard
//! timeout 50m, log silence 10m, and an optional cap on log bytes. Cleanup cannot be skipped
//! by one cancel: `stop` runs after every outcome, bounded by its own timeout (30s). The
//! first cancel request lets a stop in progress finish (a job cancelled before the stop has
//! used it already); the next one abandons the stop, and the observer is told.
//!
//! The runner reports what happens as typed [`JobEvent`]s and ends with a [`JobReport`]
//! holding a typed [`Outcome`]; it writes no sentences and picks no exit status: that is
//! the embedder's business (`host run` maps outcomes to exit statuses, a worker to job
//! states).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugin_api::{ProgressEntry, RunResult, StartAttributes};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

mod events;
mod outcome;

pub use events::{JobEvent, JobObserver, Silent};
pub use outcome::{CancelReason, Failure, JobReport, Limit, Outcome, StopStatus, TimeoutKind};

use crate::backend::{Instance, Provider};
use crate::error::HostError;
use crate::output::{log_channel, LogReceiver, DEFAULT_CAPACITY};

/// Limits of one job. [`Default`] gives the original worker's.
#[derive(Clone, Debug)]
pub struct JobOptions {
    /// How long setup plus start may take.
    pub startup_timeout: Duration,
    /// How long the upload may take.
    pub upload_timeout: Duration,
    /// How long the run may take.
    pub hard_timeout: Duration,
    /// How long the run may go without writing any log.
    pub log_silence_timeout: Duration,
    /// How many log bytes are passed on; reaching it ends the job.
    pub max_log_bytes: Option<u64>,
    /// How long stop may take.
    pub stop_timeout: Duration,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            startup_timeout: Duration::from_secs(4 * 60),
            upload_timeout: Duration::from_secs(3 * 60 + 30),
            hard_timeout: Duration::from_secs(50 * 60),
            log_silence_timeout: Duration::from_secs(10 * 60),
            max_log_bytes: None,
            stop_timeout: Duration::from_secs(30),
        }
    }
}

/// One job: a script and what to start it on.
#[derive(Clone, Debug, Default)]
pub struct Job {
    /// The build script.
    pub script: Vec<u8>,
    /// The start attributes (defaults already applied, if wanted).
    pub attributes: StartAttributes,
    /// Limits.
    pub options: JobOptions,
    /// Download the instance's trace after the run (into [`JobReport::trace`]).
    pub trace: bool,
    /// Write the original's "Worker information" fold at the head of the log once the
    /// instance has started.
    pub worker_info: Option<WorkerInfo>,
}

/// What the original worker writes at the head of each job's log once its instance has
/// started (travis-ci/worker's `step_write_worker_info`): a fold named `worker_info` with the
/// machine's name, the worker's version, the instance and its startup time.
#[derive(Clone, Debug, Default)]
pub struct WorkerInfo {
    /// The name the worker gives its machine (the original's `HOSTNAME`).
    pub hostname: String,
    /// What runs the job, e.g. `host 0.1.0`.
    pub version: String,
    /// Where the job came from (`amqp`, `file`), as the original's job names its queue.
    pub via: String,
}

impl WorkerInfo {
    /// The fold for an instance `id` of `image` that started in `startup`.
    pub fn fold(&self, id: &str, image: &str, startup: Duration) -> String {
        let image = if image.is_empty() { "-" } else { image };
        format!(
            "travis_fold:start:worker_info\r\x1b[0K\x1b[33;1mWorker information\x1b[0m\n\
             hostname: {}\nversion: {}\ninstance: {id} {image} (via {})\nstartup: {}\n\
             travis_fold:end:worker_info\r\x1b[0K",
            crate::text::escape_controls(&self.hostname),
            self.version,
            crate::text::escape_controls(&self.via),
            go_duration(startup),
        )
    }
}

/// A duration as Go's `time.Duration` prints it (`1.5s`, `2m3.25s`, `750ms`, `0s`).
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    let decimal = |whole: u128, frac: u128, digits: usize| {
        let frac = format!("{frac:0digits$}");
        let frac = frac.trim_end_matches('0');
        if frac.is_empty() {
            whole.to_string()
        } else {
            format!("{whole}.{frac}")
        }
    };
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}\u{b5}s", decimal(nanos / 1_000, nanos % 1_000, 3));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", decimal(nanos / 1_000_000, nanos % 1_000_000, 6));
    }
    let secs = nanos / 1_000_000_000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let s = format!("{}s", decimal(s, nanos % 1_000_000_000, 9));
    match (h, m) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

/// Cancel requests: the first one cancels the job (or, during the stop, is noted and the
/// stop goes on), the next one during stop abandons the stop.
pub type CancelReceiver = mpsc::Receiver<CancelReason>;

enum Step<T> {
    Done(T),
    TimedOut,
    Cancelled(CancelReason),
}

/// Where the steps of a start go as they come: the observer, the report, and with the
/// original's "text" progress type the job's log (a log that cannot take them loses only
/// them; the run's own log then fails on its own).
struct Steps<'a, W> {
    observer: &'a dyn JobObserver,
    seen: &'a mut Vec<(Duration, ProgressEntry)>,
    began: Instant,
    into_log: bool,
    log: &'a mut W,
}

impl<W: AsyncWrite + Unpin> Steps<'_, W> {
    async fn record(&mut self, e: ProgressEntry) {
        self.observer.event(&JobEvent::Progress(e.clone()));
        if self.into_log {
            let _ = self.log.write_all(e.text().as_bytes()).await;
        }
        self.seen.push((self.began.elapsed(), e));
    }
}

/// Runs `fut` unless `limit` passes or a cancel arrives first.
async fn bounded<T>(
    fut: impl std::future::Future<Output = T>,
    limit: Duration,
    cancel: &mut CancelReceiver,
) -> Step<T> {
    tokio::select! {
        biased;
        Some(reason) = cancel.recv() => Step::Cancelled(reason),
        r = tokio::time::timeout(limit, fut) => match r {
            Ok(v) => Step::Done(v),
            Err(_) => Step::TimedOut,
        },
    }
}

fn failed(e: HostError) -> Outcome {
    Outcome::NotCompleted(Failure::Backend(Arc::new(e)))
}

/// A step's result as the job's outcome when it did not simply succeed.
fn step_outcome<T>(
    step: Step<Result<T, HostError>>,
    kind: TimeoutKind,
    limit: Duration,
    observer: &dyn JobObserver,
) -> Result<T, Outcome> {
    match step {
        Step::Done(Ok(v)) => Ok(v),
        Step::Done(Err(e)) => Err(failed(e)),
        Step::TimedOut => {
            observer.event(&JobEvent::LimitReached {
                kind,
                limit: Limit::Time(limit),
            });
            Err(Outcome::NotCompleted(Failure::TimedOut { kind, limit }))
        }
        Step::Cancelled(r) => {
            observer.event(&JobEvent::Cancelled(r));
            Err(Outcome::Cancelled(r))
        }
    }
}

/// Runs `job` on `provider`, writing the log into `log`. Never skips stop once an instance
/// has started. See the module docs.
pub async fn run_job<W>(
    provider: &Provider,
    job: Job,
    log: W,
    cancel: &mut CancelReceiver,
    observer: &dyn JobObserver,
) -> JobReport
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let opts = job.options;
    let mut report = JobReport::new(provider.alias());
    let mut log = log;

    tracing::info!(backend = provider.alias(), "starting an instance");
    observer.event(&JobEvent::Starting);
    let began = Instant::now();
    let (progress_tx, mut progress) = mpsc::unbounded_channel();
    let start = async {
        provider.setup().await?;
        provider
            .start_with_progress(&job.attributes, move |e| {
                let _ = progress_tx.send(e);
            })
            .await
    };
    let mut steps = Steps {
        observer,
        seen: &mut report.steps,
        began,
        into_log: job.attributes.progress_type == "text",
        log: &mut log,
    };
    let start = async {
        tokio::pin!(start);
        loop {
            tokio::select! {
                biased;
                Some(e) = progress.recv() => steps.record(e).await,
                r = &mut start => {
                    while let Ok(e) = progress.try_recv() {
                        steps.record(e).await;
                    }
                    break r;
                }
            }
        }
    };
    let step = bounded(start, opts.startup_timeout, cancel).await;
    let instance = match step_outcome(step, TimeoutKind::Startup, opts.startup_timeout, observer) {
        Ok(i) => i,
        Err(outcome) => {
            report.outcome = outcome;
            return report;
        }
    };
    report.instance_id = Some(instance.id().to_owned());
    report.startup_duration = Some(instance.startup_duration());
    report.image_name = Some(instance.image_name().to_owned());
    report.warmed = Some(instance.warmed());
    observer.event(&JobEvent::Started {
        instance_id: instance.id().to_owned(),
        startup: instance.startup_duration(),
        image_name: instance.image_name().to_owned(),
        warmed: instance.warmed(),
    });
    if let Some(info) = &job.worker_info {
        let fold = info.fold(
            instance.id(),
            instance.image_name(),
            instance.startup_duration(),
        );
        // A log that cannot take it fails again in the run, which says so.
        let _ = log.write_all(fold.as_bytes()).await;
    }

    let step = bounded(
        instance.upload_script(job.script),
        opts.upload_timeout,
        cancel,
    )
    .await;
    report.outcome = match step_outcome(step, TimeoutKind::Upload, opts.upload_timeout, observer) {
        Ok(()) => {
            observer.event(&JobEvent::Running);
            run_script(&instance, log, &opts, cancel, observer, &mut report).await
        }
        Err(outcome) => outcome,
    };

    if job.trace {
        // Bounded like an upload; a cancel request waits for it (it comes to the stop).
        let trace = tokio::time::timeout(opts.upload_timeout, instance.download_trace()).await;
        report.trace = Some(match trace {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("the trace did not come within the upload timeout".into()),
        });
    }
    let already_cancelled = matches!(report.outcome, Outcome::Cancelled(_));
    stop(
        &instance,
        &opts,
        cancel,
        observer,
        &mut report,
        already_cancelled,
    )
    .await;
    report
}

/// Runs the uploaded script with its log pumped into `log`, until it finishes and its log
/// is drained, or a limit, a cancel or the log's destination ends it.
async fn run_script<W>(
    instance: &Instance,
    log: W,
    opts: &JobOptions,
    cancel: &mut CancelReceiver,
    observer: &dyn JobObserver,
    report: &mut JobReport,
) -> Outcome
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let began = Instant::now();
    let (sink, receiver) = log_channel(DEFAULT_CAPACITY);
    let mut pump = LogPump::spawn(receiver, log, opts.max_log_bytes, began);
    let run = instance.run_script(sink);
    tokio::pin!(run);
    let hard = tokio::time::sleep(opts.hard_timeout);
    tokio::pin!(hard);
    let silence = tokio::time::sleep(opts.log_silence_timeout);
    tokio::pin!(silence);
    let mut result: Option<Result<RunResult, HostError>> = None;
    let mut drained = false;

    let limit = |kind: TimeoutKind, limit: Limit| {
        observer.event(&JobEvent::LimitReached { kind, limit });
        Err(Outcome::TimedOut(kind))
    };
    let ended: Result<Result<RunResult, HostError>, Outcome> = loop {
        if drained {
            if let Some(r) = result.take() {
                break Ok(r);
            }
        }
        tokio::select! {
            r = &mut run, if result.is_none() => result = Some(r),
            end = &mut pump.task, if !drained => match end.unwrap_or(PumpEnd::Failed) {
                PumpEnd::Drained => drained = true,
                PumpEnd::Failed => break Err(Outcome::OutputClosed),
                PumpEnd::CapReached(cap) => break limit(TimeoutKind::LogCap, Limit::Bytes(cap)),
            },
            () = &mut hard => break limit(TimeoutKind::Hard, Limit::Time(opts.hard_timeout)),
            () = &mut silence, if result.is_none() => {
                let deadline = began + pump.last_output() + opts.log_silence_timeout;
                if deadline <= Instant::now() {
                    break limit(TimeoutKind::LogSilence, Limit::Time(opts.log_silence_timeout));
                }
                silence.as_mut().reset(deadline.into());
            }
            Some(reason) = cancel.recv() => {
                observer.event(&JobEvent::Cancelled(reason));
                break Err(Outcome::Cancelled(reason));
            }
        }
    };
    report.run_duration = Some(began.elapsed());
    report.log_bytes = pump.bytes();
    // Dropping `run` (at return) cancels the run in the plugin; the pump goes with it.
    pump.task.abort();
    match ended {
        Err(outcome) => outcome,
        Ok(Ok(r)) if r.completed => {
            report.script_exit_code = Some(r.exit_code);
            Outcome::from_exit_code(r.exit_code)
        }
        Ok(Ok(_)) => Outcome::NotCompleted(Failure::RunNotCompleted {
            alias: instance.alias().to_owned(),
        }),
        Ok(Err(e)) if e.backend_kind() == Some(plugin_api::ErrorKind::OUTPUT_CLOSED) => {
            Outcome::OutputClosed
        }
        Ok(Err(e)) => failed(e),
    }
}

/// Stops the instance, bounded by the stop timeout. A cancel request that arrives while
/// stopping is noted and the stop goes on, unless the job was cancelled already (that
/// request was the first): then it abandons the stop.
async fn stop(
    instance: &Instance,
    opts: &JobOptions,
    cancel: &mut CancelReceiver,
    observer: &dyn JobObserver,
    report: &mut JobReport,
    already_cancelled: bool,
) {
    let instance_id = instance.id().to_owned();
    observer.event(&JobEvent::Stopping {
        instance_id: instance_id.clone(),
    });
    let stopping = instance.stop();
    tokio::pin!(stopping);
    let deadline = tokio::time::sleep(opts.stop_timeout);
    tokio::pin!(deadline);
    let mut cancels = usize::from(already_cancelled);
    report.stop = loop {
        tokio::select! {
            biased;
            r = &mut stopping => break match r {
                Ok(()) => StopStatus::Stopped,
                Err(e) => {
                    let error = Arc::new(e);
                    observer.event(&JobEvent::StopFailed {
                        instance_id: instance_id.clone(),
                        error: Arc::clone(&error),
                    });
                    StopStatus::Failed(error)
                }
            },
            () = &mut deadline => {
                observer.event(&JobEvent::StopTimedOut {
                    instance_id: instance_id.clone(),
                    limit: opts.stop_timeout,
                });
                break StopStatus::TimedOut(opts.stop_timeout);
            }
            Some(reason) = cancel.recv() => {
                report.signals_during_stop.push(reason);
                cancels += 1;
                if cancels >= 2 {
                    observer.event(&JobEvent::StopAbandoned {
                        instance_id: instance_id.clone(),
                        reason,
                    });
                    break StopStatus::Abandoned(reason);
                }
                observer.event(&JobEvent::CancelDuringStop(reason));
            }
        }
    };
}

/// How the log pump ended.
enum PumpEnd {
    /// The plugin dropped its sink and every chunk was written.
    Drained,
    /// Writing to the destination failed (its reader went away, a write error).
    Failed,
    /// The byte cap (given) was reached; the rest was refused.
    CapReached(u64),
}

/// Moves log chunks from the plugin's sink to the destination on a task of its own,
/// counting bytes and the time of the last output.
struct LogPump {
    task: JoinHandle<PumpEnd>,
    stats: Arc<PumpStats>,
}

#[derive(Default)]
struct PumpStats {
    bytes: AtomicU64,
    /// Milliseconds since the run began.
    last_output_ms: AtomicU64,
}

impl LogPump {
    fn spawn<W>(rx: LogReceiver, out: W, cap: Option<u64>, began: Instant) -> Self
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let stats = Arc::new(PumpStats::default());
        let task = tokio::spawn(pump(rx, out, cap, began, Arc::clone(&stats)));
        Self { task, stats }
    }

    fn bytes(&self) -> u64 {
        self.stats.bytes.load(Ordering::Relaxed)
    }

    /// When the last output arrived, as time since the run began.
    fn last_output(&self) -> Duration {
        Duration::from_millis(self.stats.last_output_ms.load(Ordering::Relaxed))
    }
}

async fn pump<W: AsyncWrite + Unpin>(
    mut rx: LogReceiver,
    mut out: W,
    cap: Option<u64>,
    began: Instant,
    stats: Arc<PumpStats>,
) -> PumpEnd {
    let mut bytes = 0u64;
    while let Some(chunk) = rx.recv().await {
        stats
            .last_output_ms
            .store(began.elapsed().as_millis() as u64, Ordering::Relaxed);
        let mut data: &[u8] = &chunk;
        let mut capped = None;
        if let Some(cap) = cap {
            let room = cap.saturating_sub(bytes);
            if (data.len() as u64) > room {
                data = &data[..room as usize];
                capped = Some(cap);
            }
        }
        if out.write_all(data).await.is_err() {
            rx.close();
            return PumpEnd::Failed;
        }
        bytes += data.len() as u64;
        stats.bytes.store(bytes, Ordering::Relaxed);
        if let Some(cap) = capped {
            rx.close();
            return match out.flush().await {
                Ok(()) => PumpEnd::CapReached(cap),
                Err(_) => PumpEnd::Failed,
            };
        }
    }
    match out.flush().await {
        Ok(()) => PumpEnd::Drained,
        Err(_) => PumpEnd::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_prints_them() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(12), "12ns"),
            (Duration::from_nanos(1_500), "1.5\u{b5}s"),
            (Duration::from_micros(750_250), "750.25ms"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_millis(123_250), "2m3.25s"),
            (Duration::from_secs(3600 + 5), "1h0m5s"),
        ];
        for (d, want) in cases {
            assert_eq!(go_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn the_worker_information_fold_names_machine_instance_and_startup() {
        let info = WorkerInfo {
            hostname: "builder-7\x1b]0;x".into(),
            version: "host 0.1.0".into(),
            via: "amqp".into(),
        };
        let fold = info.fold("i-1", "", Duration::from_millis(2_500));
        assert!(fold.starts_with("travis_fold:start:worker_info\r\x1b[0K"));
        assert!(fold.ends_with("\ntravis_fold:end:worker_info\r\x1b[0K"));
        assert!(fold.contains("\nversion: host 0.1.0\ninstance: i-1 - (via amqp)\nstartup: 2.5s\n"));
        // A name cannot write terminal controls into every job's log.
        assert!(!fold.contains("\x1b]0;"), "{fold:?}");
    }
}
