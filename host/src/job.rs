//! One build job, end to end, the way a CI worker runs it: set up the provider, start an
//! instance, upload the script, run it with the log streamed out as it is produced, and
//! stop the instance on **every** path.
//!
//! Timeouts (defaults of the original worker): start 4m, upload 3m30s, the run's hard
//! timeout 50m, log silence 10m, and an optional cap on log bytes. Cleanup cannot be skipped
//! by cancellation: `stop` runs after every outcome, bounded by its own timeout (30s). A
//! second cancel while stopping abandons the stop, and the observer is told what is being
//! abandoned.
//!
//! # Outcomes and exit statuses
//!
//! | outcome | meaning | [`Outcome::exit_code`] |
//! |---|---|---|
//! | passed | the script completed with exit 0 | 0 |
//! | failed | the script completed with exit 1 | 1 |
//! | errored | the script completed with another code | that code (mod 256) |
//! | not completed | infrastructure failure (setup, start, upload or run broke, start or upload timed out): a worker would requeue the job | 75 (EX_TEMPFAIL) |
//! | timed out | hard timeout, log silence or log cap | 124 (as `timeout(1)`) |
//! | cancelled | SIGINT / SIGTERM | 130 / 143 |
//! | output closed | the log's reader went away (e.g. `| head`) | 74 (EX_IOERR) |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugin_api::{ErrorKind, RunResult, StartAttributes};
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::backend::{Instance, Provider};
use crate::error::HostError;
use crate::output::{log_channel, LogReceiver, DEFAULT_CAPACITY};

/// Exit status for a job that did not complete (EX_TEMPFAIL): requeue it.
pub const EXIT_NOT_COMPLETED: u8 = 75;
/// Exit status for a hard timeout, log silence or log cap, as `timeout(1)`.
pub const EXIT_TIMED_OUT: u8 = 124;
/// Exit status when the log's reader went away (EX_IOERR).
pub const EXIT_OUTPUT_CLOSED: u8 = 74;

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

/// Which limit ended a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutKind {
    /// Setup plus start took longer than the startup timeout.
    Startup,
    /// The upload took longer than the upload timeout.
    Upload,
    /// The run took longer than the hard timeout.
    Hard,
    /// The run wrote no log for longer than the log silence timeout.
    LogSilence,
    /// The log reached its byte cap.
    LogCap,
}

impl TimeoutKind {
    /// Words for a person.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Startup => "startup timeout",
            Self::Upload => "upload timeout",
            Self::Hard => "hard timeout",
            Self::LogSilence => "log silence timeout",
            Self::LogCap => "log size limit",
        }
    }
}

/// Why a job was cancelled from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl CancelReason {
    /// The signal's name.
    pub fn signal_name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Completed with exit 0.
    Passed,
    /// Completed with exit 1.
    Failed,
    /// Completed with another exit code.
    Errored {
        /// The script's exit code.
        exit_code: i32,
    },
    /// Did not complete for infrastructure reasons: requeue.
    NotCompleted {
        /// What broke.
        reason: String,
    },
    /// A hard timeout, log silence or log cap ended the run.
    TimedOut(TimeoutKind),
    /// Cancelled from outside.
    Cancelled(CancelReason),
    /// The log's reader went away.
    OutputClosed,
}

impl Outcome {
    /// The outcome of a completed run with `exit_code`, mapped as the original worker does.
    pub fn from_exit_code(exit_code: i32) -> Self {
        match exit_code {
            0 => Self::Passed,
            1 => Self::Failed,
            c => Self::Errored { exit_code: c },
        }
    }

    /// The exit status `host run` ends with (see the module docs).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Passed => 0,
            Self::Failed => 1,
            Self::Errored { exit_code } => (*exit_code).rem_euclid(256) as u8,
            Self::NotCompleted { .. } => EXIT_NOT_COMPLETED,
            Self::TimedOut(_) => EXIT_TIMED_OUT,
            Self::Cancelled(CancelReason::Interrupt) => 130,
            Self::Cancelled(CancelReason::Terminate) => 143,
            Self::OutputClosed => EXIT_OUTPUT_CLOSED,
        }
    }

    /// A short name: `passed`, `failed`, `errored`, `not_completed`, `timed_out`,
    /// `cancelled`, `output_closed`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Errored { .. } => "errored",
            Self::NotCompleted { .. } => "not_completed",
            Self::TimedOut(_) => "timed_out",
            Self::Cancelled(_) => "cancelled",
            Self::OutputClosed => "output_closed",
        }
    }
}

/// Everything known about a finished job; `--json-summary` writes it.
#[derive(Clone, Debug, Serialize)]
pub struct JobReport {
    /// The backend's alias.
    pub backend: String,
    /// See [`Outcome::name`].
    pub outcome: &'static str,
    /// See [`Outcome::exit_code`].
    pub exit_code: u8,
    /// The script's own exit code, when the run completed.
    pub script_exit_code: Option<i32>,
    /// The instance's id, if one started.
    pub instance_id: Option<String>,
    /// What the instance reported as its startup duration.
    pub startup_duration_secs: Option<f64>,
    /// How long the run took, if it began.
    pub run_duration_secs: Option<f64>,
    /// Log bytes passed on.
    pub log_bytes: u64,
    /// Which limit fired, if one did.
    pub timeout: Option<TimeoutKind>,
    /// Which signal cancelled the job, if one did.
    pub cancelled_by: Option<CancelReason>,
    /// The error that ended the job, if any.
    pub error: Option<String>,
    /// Whether stop was called and finished without error.
    pub stopped: bool,
    /// Why stop failed or was abandoned, if it did.
    pub stop_error: Option<String>,
    #[serde(skip)]
    /// The outcome itself.
    pub detail: Option<Outcome>,
}

impl JobReport {
    fn new(backend: &str) -> Self {
        Self {
            backend: backend.to_owned(),
            outcome: "",
            exit_code: 0,
            script_exit_code: None,
            instance_id: None,
            startup_duration_secs: None,
            run_duration_secs: None,
            log_bytes: 0,
            timeout: None,
            cancelled_by: None,
            error: None,
            stopped: false,
            stop_error: None,
            detail: None,
        }
    }

    fn finish(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome.name();
        self.exit_code = outcome.exit_code();
        match &outcome {
            Outcome::TimedOut(k) => self.timeout = Some(*k),
            Outcome::Cancelled(r) => self.cancelled_by = Some(*r),
            Outcome::NotCompleted { reason } if self.error.is_none() => {
                self.error = Some(reason.clone())
            }
            _ => {}
        }
        self.detail = Some(outcome);
        self
    }

    /// The outcome.
    pub fn outcome(&self) -> Outcome {
        self.detail.clone().unwrap_or(Outcome::NotCompleted {
            reason: "the job did not finish".into(),
        })
    }
}

/// What a job tells whoever shows its progress. Every method has a default that does
/// nothing. Called from the job's task: keep them quick.
pub trait JobObserver: Send + Sync {
    /// Setup and start are about to begin.
    fn starting(&self) {}
    /// An instance started.
    fn started(&self, _instance: &Instance) {}
    /// A limit fired; `limit` says it for a person (`50m`, `1048576 bytes`).
    fn timed_out(&self, _kind: TimeoutKind, _limit: &str) {}
    /// A cancel arrived.
    fn cancelled(&self, _reason: CancelReason) {}
    /// Stop is about to be called.
    fn stopping(&self, _instance: &Instance) {}
    /// Stop failed.
    fn stop_failed(&self, _instance_id: &str, _error: &str) {}
    /// A second cancel arrived while stopping: `what` is being abandoned.
    fn abandoning(&self, _what: &str) {}
    /// Stop did not finish within its timeout.
    fn stop_timed_out(&self, _instance_id: &str, _limit: Duration) {}
}

/// An observer that shows nothing.
pub struct Silent;
impl JobObserver for Silent {}

/// One job: a script and what to start it on.
#[derive(Clone, Debug, Default)]
pub struct Job {
    /// The build script.
    pub script: Vec<u8>,
    /// The start attributes (defaults already applied, if wanted).
    pub attributes: StartAttributes,
    /// Limits.
    pub options: JobOptions,
}

/// Cancel requests: the first one cancels the job, a second one during stop abandons it.
pub type CancelReceiver = mpsc::Receiver<CancelReason>;

enum Step<T> {
    Done(T),
    TimedOut,
    Cancelled(CancelReason),
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

fn not_completed(e: &HostError) -> Outcome {
    Outcome::NotCompleted {
        reason: e.to_string(),
    }
}

/// Runs `job` on `provider`, writing the log into `log`. Never skips stop once an instance
/// has started. See the module docs for outcomes.
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
    let opts = job.options.clone();
    let mut report = JobReport::new(provider.alias());

    tracing::info!(backend = provider.alias(), "starting an instance");
    observer.starting();
    let start = async {
        provider.setup().await?;
        provider.start(&job.attributes).await
    };
    let instance = match bounded(start, opts.startup_timeout, cancel).await {
        Step::Done(Ok(i)) => i,
        Step::Done(Err(e)) => {
            report.error = Some(e.to_string());
            return report.finish(not_completed(&e));
        }
        Step::TimedOut => {
            observer.timed_out(TimeoutKind::Startup, &fmt_duration(opts.startup_timeout));
            report.timeout = Some(TimeoutKind::Startup);
            return report.finish(Outcome::NotCompleted {
                reason: format!(
                    "startup timeout: the instance did not start within {}",
                    fmt_duration(opts.startup_timeout)
                ),
            });
        }
        Step::Cancelled(r) => {
            observer.cancelled(r);
            return report.finish(Outcome::Cancelled(r));
        }
    };
    report.instance_id = Some(instance.id().to_owned());
    report.startup_duration_secs = Some(instance.startup_duration().as_secs_f64());
    observer.started(&instance);

    let outcome = upload_and_run(&instance, job, log, cancel, observer, &mut report).await;

    observer.stopping(&instance);
    match bounded(instance.stop(), opts.stop_timeout, cancel).await {
        Step::Done(Ok(())) => report.stopped = true,
        Step::Done(Err(e)) => {
            observer.stop_failed(instance.id(), &e.to_string());
            report.stop_error = Some(e.to_string());
        }
        Step::TimedOut => {
            observer.stop_timed_out(instance.id(), opts.stop_timeout);
            report.stop_error = Some(format!(
                "stop did not finish within {}",
                fmt_duration(opts.stop_timeout)
            ));
        }
        Step::Cancelled(_) => {
            let what = format!(
                "stop of instance {} on backend {}: it may be left running",
                instance.id(),
                instance.alias()
            );
            observer.abandoning(&what);
            report.stop_error = Some(format!("abandoned {what}"));
        }
    }
    report.finish(outcome)
}

async fn upload_and_run<W>(
    instance: &Instance,
    job: Job,
    log: W,
    cancel: &mut CancelReceiver,
    observer: &dyn JobObserver,
    report: &mut JobReport,
) -> Outcome
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let opts = job.options;
    match bounded(
        instance.upload_script(job.script),
        opts.upload_timeout,
        cancel,
    )
    .await
    {
        Step::Done(Ok(())) => {}
        Step::Done(Err(e)) => {
            report.error = Some(e.to_string());
            return not_completed(&e);
        }
        Step::TimedOut => {
            observer.timed_out(TimeoutKind::Upload, &fmt_duration(opts.upload_timeout));
            report.timeout = Some(TimeoutKind::Upload);
            return Outcome::NotCompleted {
                reason: format!(
                    "upload timeout: the script was not uploaded within {}",
                    fmt_duration(opts.upload_timeout)
                ),
            };
        }
        Step::Cancelled(r) => {
            observer.cancelled(r);
            return Outcome::Cancelled(r);
        }
    }

    let began = Instant::now();
    let (sink, receiver) = log_channel(DEFAULT_CAPACITY);
    let stats = Arc::new(PumpStats::default());
    let pump = tokio::spawn(pump(
        receiver,
        log,
        opts.max_log_bytes,
        began,
        Arc::clone(&stats),
    ));
    let pump_abort = pump.abort_handle();
    let mut pump = Some(pump);
    let mut pump_end: Option<PumpEnd> = None;

    let run = instance.run_script(sink);
    tokio::pin!(run);
    let mut run_result: Option<Result<RunResult, HostError>> = None;
    let hard = tokio::time::sleep(opts.hard_timeout);
    tokio::pin!(hard);
    let silence = tokio::time::sleep(opts.log_silence_timeout);
    tokio::pin!(silence);

    // Runs until the run has finished and its log is drained, or something ends the job.
    let ended: Option<Outcome> = loop {
        if run_result.is_some() && pump_end.is_some() {
            break None;
        }
        tokio::select! {
            r = &mut run, if run_result.is_none() => run_result = Some(r),
            end = join_pump(&mut pump), if pump.is_some() => {
                pump = None;
                let end = end.unwrap_or(PumpEnd { stop: Some(PumpStop::Closed) });
                match end.stop {
                    Some(PumpStop::Closed) => break Some(Outcome::OutputClosed),
                    Some(PumpStop::Cap) => {
                        let cap = opts.max_log_bytes.unwrap_or(0);
                        observer.timed_out(TimeoutKind::LogCap, &format!("{cap} bytes"));
                        break Some(Outcome::TimedOut(TimeoutKind::LogCap));
                    }
                    None => pump_end = Some(end),
                }
            }
            () = &mut hard => {
                observer.timed_out(TimeoutKind::Hard, &fmt_duration(opts.hard_timeout));
                break Some(Outcome::TimedOut(TimeoutKind::Hard));
            }
            () = &mut silence, if run_result.is_none() => {
                let last = Duration::from_millis(stats.last_output_ms.load(Ordering::Relaxed));
                let deadline = began + last + opts.log_silence_timeout;
                if deadline <= Instant::now() {
                    observer.timed_out(TimeoutKind::LogSilence, &fmt_duration(opts.log_silence_timeout));
                    break Some(Outcome::TimedOut(TimeoutKind::LogSilence));
                }
                silence.as_mut().reset(deadline.into());
            }
            Some(reason) = cancel.recv() => {
                observer.cancelled(reason);
                break Some(Outcome::Cancelled(reason));
            }
        }
    };
    report.run_duration_secs = Some(began.elapsed().as_secs_f64());
    if ended.is_some() {
        // The run is abandoned: dropping its future cancels it in the plugin.
        pump_abort.abort();
    }
    report.log_bytes = stats.bytes.load(Ordering::Relaxed);
    if let Some(outcome) = ended {
        return outcome;
    }
    match run_result {
        Some(Ok(r)) if r.completed => {
            report.script_exit_code = Some(r.exit_code);
            Outcome::from_exit_code(r.exit_code)
        }
        Some(Ok(_)) => Outcome::NotCompleted {
            reason: format!(
                "backend {}: the run did not complete (infrastructure failure)",
                instance.alias()
            ),
        },
        Some(Err(e)) if e.backend_kind() == Some(ErrorKind::OUTPUT_CLOSED) => Outcome::OutputClosed,
        Some(Err(e)) => {
            report.error = Some(e.to_string());
            not_completed(&e)
        }
        None => Outcome::NotCompleted {
            reason: "the run ended without a result".into(),
        },
    }
}

#[derive(Debug)]
enum PumpStop {
    Closed,
    Cap,
}

#[derive(Debug)]
struct PumpEnd {
    stop: Option<PumpStop>,
}

#[derive(Default)]
struct PumpStats {
    bytes: AtomicU64,
    last_output_ms: AtomicU64,
}

async fn join_pump(
    pump: &mut Option<tokio::task::JoinHandle<PumpEnd>>,
) -> Result<PumpEnd, tokio::task::JoinError> {
    match pump {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// Moves log chunks from the plugin to `out`, counting bytes and stamping the time of the
/// last output (milliseconds since `began`).
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
        let mut capped = false;
        if let Some(cap) = cap {
            let room = cap.saturating_sub(bytes);
            if (data.len() as u64) > room {
                data = &data[..room as usize];
                capped = true;
            }
        }
        if out.write_all(data).await.is_err() {
            rx.close();
            return PumpEnd {
                stop: Some(PumpStop::Closed),
            };
        }
        bytes += data.len() as u64;
        stats.bytes.store(bytes, Ordering::Relaxed);
        if capped {
            rx.close();
            let _ = out.flush().await;
            return PumpEnd {
                stop: Some(PumpStop::Cap),
            };
        }
    }
    let stop = match out.flush().await {
        Ok(()) => None,
        Err(_) => Some(PumpStop::Closed),
    };
    PumpEnd { stop }
}

/// `1m30s`, `250ms`, `0s`: how durations are shown to people.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let frac = ms % 1000;
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || frac > 0 {
        if frac > 0 && h == 0 && m == 0 {
            out.push_str(&format!("{s}.{frac:03}s"));
        } else {
            out.push_str(&format!("{s}s"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_documented_table() {
        assert_eq!(Outcome::from_exit_code(0).exit_code(), 0);
        assert_eq!(Outcome::from_exit_code(1).exit_code(), 1);
        assert_eq!(
            Outcome::from_exit_code(7),
            Outcome::Errored { exit_code: 7 }
        );
        assert_eq!(Outcome::from_exit_code(7).exit_code(), 7);
        assert_eq!(Outcome::from_exit_code(256).exit_code(), 0);
        assert_eq!(Outcome::from_exit_code(-1).exit_code(), 255);
        assert_eq!(Outcome::TimedOut(TimeoutKind::Hard).exit_code(), 124);
        assert_eq!(Outcome::Cancelled(CancelReason::Interrupt).exit_code(), 130);
        assert_eq!(Outcome::Cancelled(CancelReason::Terminate).exit_code(), 143);
        let nc = Outcome::NotCompleted {
            reason: String::new(),
        };
        assert_eq!(nc.exit_code(), 75);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::ZERO), "0s");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.500s");
        assert_eq!(fmt_duration(Duration::from_secs(210)), "3m30s");
        assert_eq!(fmt_duration(Duration::from_secs(3000)), "50m");
        assert_eq!(fmt_duration(Duration::from_secs(3600)), "1h");
    }
}
