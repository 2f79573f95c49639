//! What a worker needs of a job queue: claim the next job, record its states and its log,
//! and end it one way or another. The directory queue ([`crate::dir`]) is the
//! embedded default; a broker is another implementation of the same two traits.

use std::future::Future;
use std::time::SystemTime;

use serde::Serialize;
use tokio::io::AsyncWrite;

/// A job's state, as recorded on the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// The worker took the job.
    Received,
    /// An instance started; the script is about to run.
    Started,
    /// The script exited 0.
    Passed,
    /// The script exited 1.
    Failed,
    /// The script exited otherwise, a limit was reached, or the job cannot run as given.
    Errored,
    /// Cancelled on request.
    Cancelled,
    /// Back on the queue (infrastructure failure, shutdown): another attempt follows.
    Requeued,
}

impl JobState {
    /// Whether no further state follows for this attempt.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Received | Self::Started)
    }

    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Started => "started",
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Errored => "errored",
            Self::Cancelled => "cancelled",
            Self::Requeued => "requeued",
        }
    }
}

/// One state change of a job.
#[derive(Clone, Debug, Serialize)]
pub struct StateUpdate {
    /// The new state.
    pub state: JobState,
    /// When, in RFC 3339 (UTC).
    pub at: String,
    /// The instance, once one started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The image the instance runs, when the backend names one (plugin-api 1.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// Whether the instance came from a pool of warmed ones (plugin-api 1.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmed: Option<bool>,
    /// The script's exit code, for passed/failed/errored runs that completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why, for errored, cancelled and requeued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl StateUpdate {
    /// A state change now.
    pub fn now(state: JobState) -> Self {
        Self {
            state,
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            instance_id: None,
            image_name: None,
            warmed: None,
            exit_code: None,
            reason: None,
        }
    }

    /// With a reason.
    pub fn because(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// Whose turn it is at a job id ([`Delivery::try_exclusive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// This run's.
    Mine,
    /// Another run's, of another worker on this machine: wait and try again.
    Wait,
    /// This very message was run to a final state by another worker on this machine (a
    /// redelivery after that worker lost its connection): it is answered without running.
    Done,
}

/// A job queue a worker takes jobs from.
pub trait JobQueue: Send + Sync + 'static {
    /// A claimed job.
    type Delivery: Delivery;

    /// The next job, waiting while there is none. Cancel-safe: a job is claimed and returned
    /// without an await in between, so dropping the future never strands one.
    fn next(&self) -> impl Future<Output = Self::Delivery> + Send;

    /// Whether no job is waiting, as far as this worker can tell (for
    /// [`crate::WorkerSettings::exit_when_idle`]).
    fn is_idle(&self) -> bool;

    /// Whether jobs of workers on this machine that are gone wait to be put back (a
    /// directory queue's claims of a dead worker). Looked at every
    /// [`crate::RECOVER_EVERY`] by a running worker, which then fences and calls
    /// [`JobQueue::recover`].
    fn has_orphans(&self) -> bool {
        false
    }

    /// Puts the jobs of workers on this machine that are gone back on the queue; a line per
    /// job. Called only after fencing.
    fn recover(&self) -> Vec<String> {
        Vec::new()
    }

    /// Why the queue cannot be used now (a vanished or read-only directory, no descriptors
    /// left), if it cannot: the worker is then not ready (`/ready` answers 503).
    fn problem(&self) -> Option<String> {
        None
    }
}

/// A claimed job: its payload, and how its states, log and end are recorded. Exactly one of
/// [`Delivery::finish`], [`Delivery::requeue`] and [`Delivery::reject`] ends it.
pub trait Delivery: Send + 'static {
    /// Where the job's log goes.
    type Log: AsyncWrite + Unpin + Send + 'static;

    /// The payload as queued.
    fn payload(&self) -> &[u8];

    /// Whether the queue delivered this job before (a broker's redelivery).
    fn redelivered(&self) -> bool {
        false
    }

    /// Takes job `job_id` for this run alone among the workers sharing the queue on this
    /// machine ([`Turn`]). Held until the delivery ends. Within one worker, runs of one id
    /// are serialised anyway.
    fn try_exclusive(&mut self, _job_id: u64) -> std::io::Result<Turn> {
        Ok(Turn::Mine)
    }

    /// What to say of this entry when it is rejected because its payload does not parse
    /// (`reason`): the queue may know better (a file too large or not a regular file) and
    /// name the entry.
    fn rejection(&self, reason: &str) -> String {
        reason.to_owned()
    }

    /// Records a state change of job `job_id`.
    fn update(
        &mut self,
        job_id: u64,
        update: &StateUpdate,
    ) -> impl Future<Output = std::io::Result<()>> + Send;

    /// A fresh log for this attempt of job `job_id`.
    fn open_log(&mut self, job_id: u64) -> impl Future<Output = std::io::Result<Self::Log>> + Send;

    /// The job has its final state: it leaves the queue.
    fn finish(self) -> impl Future<Output = std::io::Result<()>> + Send;

    /// The job goes back on the queue as `document` (its payload with the requeue counted).
    fn requeue(self, document: Vec<u8>) -> impl Future<Output = std::io::Result<()>> + Send;

    /// Not a job at all (not JSON, no id): set aside with `reason`.
    fn reject(self, reason: &str) -> impl Future<Output = std::io::Result<()>> + Send;
}
