//! How a job ended and what happened on the way: the typed [`Outcome`] (with the
//! [`Failure`] of a run that did not complete, the [`Limit`] reached, the [`CancelReason`]),
//! and the [`JobReport`] the runner returns, serializable for `--report`.

use std::sync::Arc;
use std::time::Duration;

use plugin_api::ProgressEntry;
use serde::ser::SerializeStruct as _;
use serde::Serialize;

use crate::error::HostError;

/// Which limit ended a job or a step.
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

/// The value of a limit that was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// A time limit.
    Time(Duration),
    /// A size limit, in bytes.
    Bytes(u64),
}

/// Why a job was cancelled from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
    /// SIGHUP (the terminal or session went away).
    Hangup,
    /// SIGQUIT.
    Quit,
    /// The embedder is shutting down and will requeue the job (a worker's SIGTERM).
    Shutdown,
    /// Someone asked for this job to be cancelled (a worker's cancel command).
    Requested,
}

impl CancelReason {
    /// The signal that carried it, if one did: its number and name.
    pub fn signal(self) -> Option<(i32, &'static str)> {
        match self {
            Self::Interrupt => Some((libc::SIGINT, "SIGINT")),
            Self::Terminate => Some((libc::SIGTERM, "SIGTERM")),
            Self::Hangup => Some((libc::SIGHUP, "SIGHUP")),
            Self::Quit => Some((libc::SIGQUIT, "SIGQUIT")),
            Self::Shutdown | Self::Requested => None,
        }
    }
}

/// Why a job did not complete: infrastructure, not the build. A worker requeues such a job,
/// unless [`Failure::is_config_error`] says retrying cannot help.
#[derive(Clone, Debug)]
pub enum Failure {
    /// A backend call (setup, start, upload, run) failed; the error names the backend, the
    /// call and the plugin's [`plugin_api::ErrorKind`].
    Backend(Arc<HostError>),
    /// Start or upload took longer than its limit.
    TimedOut {
        /// [`TimeoutKind::Startup`] or [`TimeoutKind::Upload`].
        kind: TimeoutKind,
        /// The limit.
        limit: Duration,
    },
    /// The backend said the run did not complete (`RunResult.completed == false`).
    RunNotCompleted {
        /// The backend.
        alias: String,
    },
}

impl Failure {
    /// The backend error behind the failure, if there is one.
    pub fn error(&self) -> Option<&HostError> {
        match self {
            Self::Backend(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the user's configuration is at fault (invalid or missing key): retrying the
    /// job as it is cannot succeed.
    pub fn is_config_error(&self) -> bool {
        self.error().is_some_and(HostError::is_config_error)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Backend(e) => write!(f, "{e}"),
            Self::TimedOut { kind, limit } => {
                let what = match kind {
                    TimeoutKind::Startup => "the instance did not start",
                    TimeoutKind::Upload => "the script was not uploaded",
                    _ => "the step did not finish",
                };
                write!(f, "{what} within {}", crate::text::fmt_duration(*limit))
            }
            Self::RunNotCompleted { alias } => {
                write!(
                    f,
                    "backend {alias}: the run did not complete (infrastructure failure)"
                )
            }
        }
    }
}

impl PartialEq for Failure {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Backend(a), Self::Backend(b)) => a.to_string() == b.to_string(),
            (Self::TimedOut { kind: a, limit: x }, Self::TimedOut { kind: b, limit: y }) => {
                a == b && x == y
            }
            (Self::RunNotCompleted { alias: a }, Self::RunNotCompleted { alias: b }) => a == b,
            _ => false,
        }
    }
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Completed with exit 0.
    Passed,
    /// Completed with exit 1.
    Failed,
    /// Completed with another exit code (which may lie outside 0..=255).
    Errored {
        /// The script's exit code.
        exit_code: i32,
    },
    /// Did not complete for infrastructure reasons.
    NotCompleted(Failure),
    /// A hard timeout, log silence or log cap ended the run.
    TimedOut(TimeoutKind),
    /// Cancelled from outside.
    Cancelled(CancelReason),
    /// The log's destination failed (its reader went away, a write error).
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

    /// A short name: `passed`, `failed`, `errored`, `not_completed`, `timed_out`,
    /// `cancelled`, `output_closed`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Errored { .. } => "errored",
            Self::NotCompleted(_) => "not_completed",
            Self::TimedOut(_) => "timed_out",
            Self::Cancelled(_) => "cancelled",
            Self::OutputClosed => "output_closed",
        }
    }
}

/// What became of the instance's stop.
#[derive(Clone, Debug)]
pub enum StopStatus {
    /// No instance started, so there was nothing to stop.
    NoInstance,
    /// Stop finished without error.
    Stopped,
    /// Stop returned an error.
    Failed(Arc<HostError>),
    /// Stop did not finish within its timeout.
    TimedOut(Duration),
    /// A further cancel request abandoned it; the instance may be left running.
    Abandoned(CancelReason),
}

/// Everything known about a finished job.
#[derive(Clone, Debug)]
pub struct JobReport {
    /// The backend's alias.
    pub backend: String,
    /// How the job ended.
    pub outcome: Outcome,
    /// The script's own exit code, when the run completed.
    pub script_exit_code: Option<i32>,
    /// The instance's id, if one started.
    pub instance_id: Option<String>,
    /// What the instance reported as its startup duration.
    pub startup_duration: Option<Duration>,
    /// How long the run took, if it began.
    pub run_duration: Option<Duration>,
    /// Log bytes passed on.
    pub log_bytes: u64,
    /// What became of the stop.
    pub stop: StopStatus,
    /// Cancel requests that arrived while the instance was being stopped.
    pub signals_during_stop: Vec<CancelReason>,
    /// The image the instance ran (plugin-api 1.2; empty when the backend names none).
    pub image_name: Option<String>,
    /// Whether the instance came from a pool of warmed ones.
    pub warmed: Option<bool>,
    /// The steps the backend reported while the instance started, with when (since the
    /// job began).
    pub steps: Vec<(Duration, ProgressEntry)>,
    /// The instance's trace, when [`super::Job::trace`] asked for it: the bytes, or why there are
    /// none (the backend keeps none, the call failed).
    pub trace: Option<Result<Vec<u8>, String>>,
}

impl JobReport {
    pub(super) fn new(backend: &str) -> Self {
        Self {
            backend: backend.to_owned(),
            outcome: Outcome::Passed,
            script_exit_code: None,
            instance_id: None,
            startup_duration: None,
            run_duration: None,
            log_bytes: 0,
            stop: StopStatus::NoInstance,
            signals_during_stop: Vec::new(),
            image_name: None,
            warmed: None,
            steps: Vec::new(),
            trace: None,
        }
    }

    /// The outcome.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// Whether stop was called and finished without error.
    pub fn stopped(&self) -> bool {
        matches!(self.stop, StopStatus::Stopped)
    }
}

/// The JSON form (`--json-summary`, a worker's records): flat fields with durations in
/// seconds and errors as text beside their kind.
impl Serialize for JobReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (timeout, cancelled_by, error, error_kind) = match &self.outcome {
            Outcome::TimedOut(k) => (Some(*k), None, None, None),
            Outcome::Cancelled(r) => (None, Some(*r), None, None),
            Outcome::NotCompleted(f) => (
                match f {
                    Failure::TimedOut { kind, .. } => Some(*kind),
                    _ => None,
                },
                None,
                Some(f.to_string()),
                f.error()
                    .and_then(HostError::backend_kind)
                    .map(|k| k.name()),
            ),
            _ => (None, None, None, None),
        };
        let stop_error = match &self.stop {
            StopStatus::NoInstance | StopStatus::Stopped => None,
            StopStatus::Failed(e) => Some(e.to_string()),
            StopStatus::TimedOut(d) => Some(format!(
                "stop did not finish within {}",
                crate::text::fmt_duration(*d)
            )),
            StopStatus::Abandoned(_) => Some(format!(
                "abandoned the stop of instance {} on backend {}: it may be left running",
                self.instance_id.as_deref().unwrap_or("?"),
                self.backend
            )),
        };
        let mut st = s.serialize_struct("JobReport", 17)?;
        st.serialize_field("backend", &self.backend)?;
        st.serialize_field("outcome", self.outcome.name())?;
        st.serialize_field("script_exit_code", &self.script_exit_code)?;
        st.serialize_field("instance_id", &self.instance_id)?;
        st.serialize_field(
            "startup_duration_secs",
            &self.startup_duration.map(|d| d.as_secs_f64()),
        )?;
        st.serialize_field(
            "run_duration_secs",
            &self.run_duration.map(|d| d.as_secs_f64()),
        )?;
        st.serialize_field("log_bytes", &self.log_bytes)?;
        st.serialize_field("timeout", &timeout)?;
        st.serialize_field("cancelled_by", &cancelled_by)?;
        st.serialize_field("error", &error)?;
        st.serialize_field("error_kind", &error_kind)?;
        st.serialize_field("stopped", &self.stopped())?;
        st.serialize_field("stop_error", &stop_error)?;
        st.serialize_field("signals_during_stop", &self.signals_during_stop)?;
        st.serialize_field("image_name", &self.image_name)?;
        st.serialize_field("warmed", &self.warmed)?;
        let steps: Vec<serde_json::Value> = self
            .steps
            .iter()
            .map(|(at, e)| {
                serde_json::json!({
                    "message": e.message,
                    "state": e.state.name(),
                    "at_secs": at.as_secs_f64(),
                })
            })
            .collect();
        st.serialize_field("steps", &steps)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_map_to_outcomes_as_the_original() {
        assert_eq!(Outcome::from_exit_code(0), Outcome::Passed);
        assert_eq!(Outcome::from_exit_code(1), Outcome::Failed);
        assert_eq!(
            Outcome::from_exit_code(256),
            Outcome::Errored { exit_code: 256 }
        );
        assert_eq!(
            Outcome::from_exit_code(-1),
            Outcome::Errored { exit_code: -1 }
        );
    }
}
