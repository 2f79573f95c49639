//! What the runner tells as it goes: [`JobEvent`]s to a [`JobObserver`] (the embedder's
//! printer, a worker's state recorder), or to nobody ([`Silent`]).

use std::sync::Arc;
use std::time::Duration;

use plugin_api::ProgressEntry;

use super::{CancelReason, Limit, TimeoutKind};
use crate::error::HostError;

/// What happens during a job, as it happens.
#[derive(Clone, Debug)]
pub enum JobEvent {
    /// Setup and start are about to begin.
    Starting,
    /// The backend reported a step of the start (plugin-api 1.2).
    Progress(ProgressEntry),
    /// An instance started.
    Started {
        /// Its id.
        instance_id: String,
        /// What it reported as its startup duration.
        startup: Duration,
        /// The image it runs (empty when the backend names none).
        image_name: String,
        /// Whether it came from a pool of warmed ones.
        warmed: bool,
    },
    /// The script was uploaded and is about to run.
    Running,
    /// A limit was reached; the job or step ends.
    LimitReached {
        /// Which.
        kind: TimeoutKind,
        /// Its value.
        limit: Limit,
    },
    /// A cancel request ended the job.
    Cancelled(CancelReason),
    /// Stop is about to be called.
    Stopping {
        /// The instance.
        instance_id: String,
    },
    /// A cancel request arrived while stopping; the stop goes on (the next one abandons it).
    CancelDuringStop(CancelReason),
    /// Stop failed.
    StopFailed {
        /// The instance.
        instance_id: String,
        /// The error.
        error: Arc<HostError>,
    },
    /// Stop did not finish within its timeout.
    StopTimedOut {
        /// The instance.
        instance_id: String,
        /// The limit.
        limit: Duration,
    },
    /// A further cancel request abandoned the stop; the instance may be left running.
    StopAbandoned {
        /// The instance.
        instance_id: String,
        /// The request that abandoned it.
        reason: CancelReason,
    },
}

/// Whoever shows a job's progress. Called from the job's task: keep it quick.
pub trait JobObserver: Send + Sync {
    /// One event.
    fn event(&self, event: &JobEvent);
}

/// An observer that shows nothing.
pub struct Silent;
impl JobObserver for Silent {
    fn event(&self, _: &JobEvent) {}
}
