//! The worker's counters, in the Prometheus text format for `GET /metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::queue::JobState;

/// Every metric the worker keeps.
pub struct Metrics {
    registry: Registry,
    /// Jobs that reached a final state, by state.
    pub jobs: Family<Vec<(String, String)>, Counter>,
    /// Jobs running now.
    pub running: Gauge,
    /// Jobs put back on the queue.
    pub requeues: Counter,
    /// Jobs that arrived a second time (a broker's redelivery, a crashed worker's claim).
    pub redeliveries: Counter,
    /// Files that were not jobs.
    pub rejected: Counter,
    /// Seconds from claim to final state.
    pub job_duration: Histogram,
    /// Seconds an instance took to start, as the backend reports it.
    pub startup_duration: Histogram,
    /// Log bytes written.
    pub log_bytes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("host_worker");
        let jobs = Family::<Vec<(String, String)>, Counter>::default();
        let running = Gauge::default();
        let requeues = Counter::default();
        let redeliveries = Counter::default();
        let rejected = Counter::default();
        let job_duration = Histogram::new(exponential_buckets(0.001, 4.0, 12));
        let startup_duration = Histogram::new(exponential_buckets(0.001, 4.0, 10));
        let log_bytes = Counter::default();
        registry.register(
            "jobs",
            "Jobs that reached a final state, by state",
            jobs.clone(),
        );
        registry.register("running_jobs", "Jobs running now", running.clone());
        registry.register("requeues", "Jobs put back on the queue", requeues.clone());
        registry.register(
            "redeliveries",
            "Jobs that arrived again after a crash or a broker redelivery",
            redeliveries.clone(),
        );
        registry.register(
            "rejected",
            "Queue entries that were not jobs",
            rejected.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Seconds from claim to final state",
            job_duration.clone(),
        );
        registry.register(
            "startup_duration_seconds",
            "Seconds an instance took to start",
            startup_duration.clone(),
        );
        registry.register("log_bytes", "Log bytes written", log_bytes.clone());
        Self {
            registry,
            jobs,
            running,
            requeues,
            redeliveries,
            rejected,
            job_duration,
            startup_duration,
            log_bytes,
        }
    }
}

impl Metrics {
    /// Counts a job that ended in `state`.
    pub fn finished(&self, state: JobState) {
        self.jobs
            .get_or_create(&vec![("state".into(), state.name().into())])
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
