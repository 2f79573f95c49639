//! Fencing: what workers of this machine that are gone left running is stopped before any of
//! their jobs can run again here.

use std::time::Duration;

use host::text::fmt_duration;
use host::Provider;

/// What [`fence`] found.
#[derive(Debug, Default)]
pub struct Fenced {
    /// A line per thing removed.
    pub removed: Vec<String>,
    /// Why nothing could be removed, if so (the backend has no reap, or it failed).
    pub problem: Option<String>,
}

/// How long [`fence`] waits for the backend's reap.
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(120);

/// Fencing: stops and removes what workers (and other hosts) on this machine that are gone
/// left running, before any of their jobs can run again here. Instances carry the pid of the
/// process that started them (the worker, or its plugin server), so the backend's `reap`
/// finds those whose process is gone; instances of live workers are not touched. A worker
/// calls this at start-up, before it requeues a dead worker's claims (directory queue) or
/// consumes (RabbitMQ, which redelivers a dead worker's jobs). It cannot reach another
/// machine: a job redelivered elsewhere runs there while what its dead worker started here
/// lives, until a worker starts here again or `host reap` runs.
pub async fn fence(provider: &Provider) -> Fenced {
    match tokio::time::timeout(FENCE_TIMEOUT, provider.reap(Duration::ZERO, false)).await {
        Ok(Ok(removed)) => Fenced {
            removed,
            problem: None,
        },
        Ok(Err(e)) => {
            Fenced {
                removed: Vec::new(),
                problem: Some(
                    if e.backend_kind() == Some(plugin_api::ErrorKind::UNSUPPORTED) {
                        format!("backend {} cannot reap: what a dead worker started is not stopped ({e})", provider.alias())
                    } else {
                        e.to_string()
                    },
                ),
            }
        }
        Err(_) => Fenced {
            removed: Vec::new(),
            problem: Some(format!(
                "backend {}'s reap did not end within {}",
                provider.alias(),
                fmt_duration(FENCE_TIMEOUT)
            )),
        },
    }
}
