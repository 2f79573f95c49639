//! A long-running CI worker: takes jobs from a queue, runs each through [`host::job`] on a
//! pool, records every state change and the log, requeues what broke for infrastructure
//! reasons and shuts down without losing a job. The original travis-ci/worker around its
//! `backend` package, on the `host` library (the core). This crate prints nothing and parses
//! no command line (the `host-cli` crate does); it never loads a plugin itself (it is given
//! a [`host::Provider`]).
//!
//! Where things go: a new queue type is a module here implementing [`queue::JobQueue`] and
//! [`queue::Delivery`] (as [`dir`] and [`amqp`] do), chosen by its URL scheme in the CLI's
//! `worker.rs`; a new endpoint goes in [`http`] (auth and the connection limits are there
//! already); a new metric in [`metrics`].
//!
//! - [`queue`]: what a queue must do ([`JobQueue`], [`Delivery`]); [`dir`]: the directory
//!   queue, the embedded default;
//! - [`payload`]: the original's job payload; [`build_api`]: scripts from a travis-build
//!   compatible service;
//! - [`Worker`] runs the pool; a [`Control`] pauses it, resizes it, drains it or shuts it
//!   down (signals, HTTP) and reports on it; [`http`] serves `/healthz`, `/ready`, `/worker`,
//!   `/pool/*` and `/metrics` ([`metrics`]).
//!
//! Outcomes become states as in the original: a completed run is passed (0), failed (1) or
//! errored (other); a limit reached is errored; a run that did not complete, a start that
//! failed, a log that could not be written or a shutdown requeues the job, at most
//! `max_requeues` times, after which it is errored; a config the backend refuses is errored
//! (retrying cannot help); a cancel request is cancelled.

pub mod amqp;
pub mod build_api;
mod control;
pub mod dir;
mod fence;
pub mod filter;
pub mod heartbeat;
pub mod http;
pub mod machine;
pub mod metrics;
pub mod notify;
pub mod payload;
pub mod queue;

pub use control::{Control, RunningStatus, WorkerStatus};
pub use fence::{fence, Fenced, FENCE_TIMEOUT};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, Notify, Semaphore};

use build_api::{BuildApi, ScriptError};
use host::backend::Provider;
use host::job::{
    run_job, CancelReason, Job, JobEvent, JobObserver, JobOptions, Limit, Outcome, TimeoutKind,
};
use host::text::fmt_duration;
use payload::{Payload, PayloadError};
pub use queue::{Delivery, JobQueue, JobState, StateUpdate, Turn};

/// How a worker runs jobs.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Jobs at once.
    pub pool_size: usize,
    /// Limits of each job; the payload's timeouts apply up to `hard_timeout` and
    /// `log_silence_timeout`, which are the maxima.
    pub limits: JobOptions,
    /// How often a job may be requeued before it is errored.
    pub max_requeues: u32,
    /// Where scripts come from when a payload has none.
    pub build_api: Option<BuildApi>,
    /// Drain as soon as no job runs and none is waiting (batch use, tests, benchmarks).
    pub exit_when_idle: bool,
    /// The start attributes' progress type of every job, as the original's worker config:
    /// "text" writes the steps of an instance's start into the job's log; empty, nowhere.
    pub progress_type: String,
    /// A program each payload goes through before its script is requested or run
    /// ([`filter`]; the original's `PAYLOAD_FILTER_EXECUTABLE`).
    pub payload_filter: Option<std::path::PathBuf>,
    /// How long the payload filter may take.
    pub payload_filter_timeout: Duration,
    /// A pause between a job's receipt and its start (the original's `INITIAL_SLEEP`).
    pub initial_sleep: Duration,
    /// What a payload that does not say gets (the original's `DEFAULT_LANGUAGE`, `_DIST`,
    /// `_ARCH`, `_GROUP`, `_OS`).
    pub defaults: AttributeDefaults,
    /// Write the original's "Worker information" fold at the head of each job's log.
    pub worker_info: Option<host::job::WorkerInfo>,
}

/// The start attributes a payload that does not give them gets.
#[derive(Clone, Debug)]
pub struct AttributeDefaults {
    /// The language (`default`).
    pub language: String,
    /// The distribution (`xenial`).
    pub dist: String,
    /// The architecture (`amd64`).
    pub arch: String,
    /// The image group (`stable`).
    pub group: String,
    /// The operating system (`linux`).
    pub os: String,
}

impl Default for AttributeDefaults {
    fn default() -> Self {
        use plugin_api::attributes as a;
        Self {
            language: a::DEFAULT_LANGUAGE.into(),
            dist: a::DEFAULT_DIST.into(),
            arch: a::DEFAULT_ARCH.into(),
            group: a::DEFAULT_GROUP.into(),
            os: a::DEFAULT_OS.into(),
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            pool_size: std::thread::available_parallelism().map_or(2, |n| n.get()),
            limits: JobOptions::default(),
            max_requeues: 3,
            build_api: None,
            exit_when_idle: false,
            progress_type: String::new(),
            payload_filter: None,
            payload_filter_timeout: filter::FILTER_TIMEOUT,
            initial_sleep: Duration::ZERO,
            defaults: AttributeDefaults::default(),
            worker_info: None,
        }
    }
}

/// What happens in a worker, for whoever shows it (the binary prints a line per job).
#[derive(Clone, Debug)]
pub enum WorkerEvent {
    /// A job's instance started.
    JobStarted {
        /// The job.
        job_id: u64,
        /// The instance.
        instance_id: String,
    },
    /// A job reached a final state (or was requeued).
    JobFinished {
        /// The job.
        job_id: u64,
        /// Its state.
        state: JobState,
        /// The script's exit code, if the run completed.
        exit_code: Option<i32>,
        /// Why, for errored, cancelled and requeued.
        reason: Option<String>,
        /// From claim to now.
        duration: Duration,
    },
    /// A queue entry that is not a job was set aside.
    Rejected {
        /// Why.
        reason: String,
    },
    /// Something the operator should know (a state that could not be recorded, say).
    Warning(String),
}

/// Whoever shows a worker's events. Called from job tasks: keep it quick.
pub trait WorkerObserver: Send + Sync + 'static {
    /// One event.
    fn event(&self, event: &WorkerEvent);
}

struct Running {
    job_id: u64,
    backend: String,
    instance_id: Option<String>,
    started: Instant,
    cancel: mpsc::Sender<CancelReason>,
}

struct Shared {
    paused: AtomicBool,
    draining: AtomicBool,
    shutting_down: AtomicBool,
    pool_size: AtomicUsize,
    changed: Notify,
    slots: Arc<Semaphore>,
    running: Mutex<BTreeMap<u64, Running>>,
    next_key: AtomicU64,
    started_at: Instant,
    worker_id: String,
    backend: String,
    metrics: metrics::Metrics,
    /// One run of a job id at a time in this worker: the runs waiting for or holding an id.
    job_locks: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    /// Why the queue cannot be used now, if it cannot ([`JobQueue::problem`]).
    queue_problem: Box<dyn Fn() -> Option<String> + Send + Sync>,
    /// One fence at a time.
    fencing: tokio::sync::Mutex<()>,
    /// Jobs put back in a row because their queue failed ([`End::PutBack`]): each waits
    /// longer before it goes back, so a queue that fails every job is not hammered.
    put_backs: std::sync::atomic::AtomicU32,
}

/// The largest pool, on every path that sets it (flags, signals, HTTP).
pub const MAX_POOL_SIZE: usize = 100_000;

/// How often a running worker looks for jobs of dead workers on its machine to put back
/// (after fencing): a worker that died while this one runs leaves no job stranded.
pub const RECOVER_EVERY: Duration = Duration::from_secs(10);

/// The longest a job put back because its queue failed waits before it goes back.
pub const PUT_BACK_WAIT_MAX: Duration = Duration::from_secs(5);

/// A worker: a queue, a provider, and a pool.
pub struct Worker<Q: JobQueue> {
    queue: Arc<Q>,
    provider: Arc<Provider>,
    settings: WorkerSettings,
    shared: Arc<Shared>,
    observer: Arc<dyn WorkerObserver>,
}

impl<Q: JobQueue> Worker<Q> {
    /// A worker taking jobs from `queue` and running them on `provider`.
    pub fn new(
        queue: Q,
        provider: Provider,
        settings: WorkerSettings,
        worker_id: String,
        observer: Arc<dyn WorkerObserver>,
    ) -> Self {
        let size = settings.pool_size.clamp(1, MAX_POOL_SIZE);
        let queue = Arc::new(queue);
        let for_problem = Arc::clone(&queue);
        let shared = Arc::new(Shared {
            paused: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            pool_size: AtomicUsize::new(size),
            changed: Notify::new(),
            slots: Arc::new(Semaphore::new(size)),
            running: Mutex::new(BTreeMap::new()),
            next_key: AtomicU64::new(0),
            started_at: Instant::now(),
            worker_id,
            backend: provider.alias().to_owned(),
            metrics: metrics::Metrics::default(),
            job_locks: Mutex::new(HashMap::new()),
            queue_problem: Box::new(move || for_problem.problem()),
            fencing: tokio::sync::Mutex::new(()),
            put_backs: std::sync::atomic::AtomicU32::new(0),
        });
        Self {
            queue,
            provider: Arc::new(provider),
            settings,
            shared,
            observer,
        }
    }

    /// The handle for signals and HTTP.
    pub fn control(&self) -> Control {
        Control(Arc::clone(&self.shared))
    }

    /// Runs until drained or shut down, then waits for every running job to end.
    pub async fn run(self) {
        let ctx = Arc::new(Ctx {
            provider: Arc::clone(&self.provider),
            settings: self.settings.clone(),
            shared: Arc::clone(&self.shared),
            observer: Arc::clone(&self.observer),
        });
        let mut jobs = tokio::task::JoinSet::new();
        let recovering = {
            let queue = Arc::clone(&self.queue);
            let ctx = Arc::clone(&ctx);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RECOVER_EVERY).await;
                    if queue.has_orphans() {
                        ctx.fence("a worker on this machine is gone").await;
                        for line in queue.recover() {
                            ctx.warn(format!("requeued {line}"));
                        }
                    }
                }
            })
        };
        loop {
            // Registered before the checks, so that no change between them is missed.
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.shared.draining.load(Ordering::SeqCst) {
                break;
            }
            while jobs.try_join_next().is_some() {}
            if self.shared.paused.load(Ordering::SeqCst) {
                changed.await;
                continue;
            }
            let permit = tokio::select! {
                p = Arc::clone(&self.shared.slots).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = &mut changed => continue,
            };
            // One `next` across the idle checks: dropping it at each check would start its
            // waits (a queue's backoff) anew each time, and it might never claim.
            let next = self.queue.next();
            tokio::pin!(next);
            let delivery = loop {
                let idle_check = async {
                    if self.settings.exit_when_idle {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    } else {
                        std::future::pending().await
                    }
                };
                tokio::select! {
                    d = &mut next => break Some(d),
                    () = &mut changed => break None,
                    () = idle_check => {
                        while jobs.try_join_next().is_some() {}
                        if jobs.is_empty() && self.queue.is_idle() {
                            self.control().drain();
                            break None;
                        }
                    }
                }
            };
            let Some(delivery) = delivery else { continue };
            let ctx = Arc::clone(&ctx);
            // Boxed: the task then holds a pointer, not the job's whole state, which tokio
            // would copy as the task's stage changes.
            let job = Box::pin(async move { ctx.process(delivery).await });
            jobs.spawn(async move {
                job.await;
                drop(permit);
            });
        }
        while jobs.join_next().await.is_some() {}
        recovering.abort();
    }
}

struct Ctx {
    provider: Arc<Provider>,
    settings: WorkerSettings,
    shared: Arc<Shared>,
    observer: Arc<dyn WorkerObserver>,
}

/// A job listed as running (from its claim on): unlisted when dropped, on every path.
struct Registered {
    shared: Arc<Shared>,
    key: u64,
}

impl Registered {
    fn new(
        shared: &Arc<Shared>,
        job_id: u64,
        backend: &str,
        cancel: mpsc::Sender<CancelReason>,
    ) -> Self {
        // A key of its own: the same job id may be claimed twice (runs wait their turn).
        let key = shared.next_key.fetch_add(1, Ordering::Relaxed);
        // A shutdown that began while this job was being claimed reaches it too.
        if shared.shutting_down.load(Ordering::SeqCst) {
            let _ = cancel.try_send(CancelReason::Shutdown);
        }
        shared
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                key,
                Running {
                    job_id,
                    backend: backend.to_owned(),
                    instance_id: None,
                    started: Instant::now(),
                    cancel,
                },
            );
        shared.metrics.running.inc();
        Self {
            shared: Arc::clone(shared),
            key,
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.metrics.running.dec();
        self.shared
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// A run's turn at its job id in this worker; the next run of the id gets it when this one
/// is dropped (after the job's end is recorded).
struct JobTurn {
    shared: Arc<Shared>,
    id: u64,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for JobTurn {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self
            .shared
            .job_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Held by the map and by this turn only: no run waits for the id.
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(&self.id);
        }
    }
}

/// How a job ends whose queue failed it (its state or its lock could not be written):
/// a failure of the whole queue (read-only, full, no permission) puts it back as it was,
/// not counted, until the queue can be used again; one of this job's alone (a link or a
/// FIFO where its state file should be) is a requeue like any other, so it ends.
fn queue_failed(reason: String, e: &std::io::Error) -> End {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ReadOnlyFilesystem
        | K::StorageFull
        | K::QuotaExceeded
        | K::PermissionDenied
        | K::NotFound => End::PutBack(reason),
        _ => End::Requeue(reason),
    }
}

/// How a job cancelled before its run began ends.
fn cancelled_before_start(reason: CancelReason) -> End {
    match reason {
        CancelReason::Requested => {
            End::Final(StateUpdate::now(JobState::Cancelled).because("cancelled on request"))
        }
        _ => End::Requeue("the worker shut down".into()),
    }
}

/// How a job ends.
enum End {
    Final(StateUpdate),
    /// Back on the queue, the requeue counted (the run broke).
    Requeue(String),
    /// Back on the queue as it was, not counted: the queue failed, not the job (its state
    /// could not be recorded).
    PutBack(String),
    /// Already run to its end by another worker on this machine ([`Turn::Done`]): taken
    /// off the queue with no state of its own.
    Answered,
}

/// Forwards job events to the task that records them.
struct Forward(mpsc::UnboundedSender<JobEvent>);

impl JobObserver for Forward {
    fn event(&self, event: &JobEvent) {
        let _ = self.0.send(event.clone());
    }
}

fn limit_text(kind: TimeoutKind, limit: Limit) -> String {
    let limit = match limit {
        Limit::Time(d) => fmt_duration(d),
        Limit::Bytes(b) => format!("{b} bytes"),
    };
    match kind {
        TimeoutKind::Startup => format!("the instance did not start within {limit}"),
        TimeoutKind::Upload => format!("the script was not uploaded within {limit}"),
        TimeoutKind::Hard => format!("the job exceeded its time limit of {limit}"),
        TimeoutKind::LogSilence => format!("no log output for {limit}"),
        TimeoutKind::LogCap => format!("the log exceeded its limit of {limit}"),
    }
}

impl Ctx {
    fn warn(&self, text: String) {
        self.observer.event(&WorkerEvent::Warning(text));
    }

    /// Fences (see [`fence`]) because `why`, one fence at a time, saying what it removed.
    async fn fence(&self, why: &str) {
        let _one = self.shared.fencing.lock().await;
        let fenced = fence(&self.provider).await;
        for line in fenced.removed {
            self.warn(format!("{why}: reaped what it left: {line}"));
        }
        if let Some(problem) = fenced.problem {
            self.warn(format!("{why}, and fencing failed: {problem}"));
        }
    }

    async fn process<D: Delivery>(&self, mut d: D) {
        let claimed = Instant::now();
        let payload = match Payload::parse(d.payload()) {
            Ok(p) => p,
            Err(PayloadError::Unreadable(reason)) => {
                let reason = d.rejection(&reason);
                self.shared.metrics.rejected.inc();
                self.observer.event(&WorkerEvent::Rejected {
                    reason: reason.clone(),
                });
                if let Err(e) = d.reject(&reason).await {
                    self.warn(format!(
                        "cannot set aside a queue entry that is not a job: {e}"
                    ));
                }
                return;
            }
            Err(PayloadError::Invalid { id, reason }) => {
                // Received, then errored: every job's states begin with its receipt.
                if let Err(e) = d.update(id, &StateUpdate::now(JobState::Received)).await {
                    self.warn(format!("job {id}: cannot record the received state: {e}"));
                }
                let end = End::Final(StateUpdate::now(JobState::Errored).because(reason));
                self.end(d, id, None, end, claimed).await;
                return;
            }
        };
        let id = payload.id;
        if payload.requeue_count > 0 || d.redelivered() {
            self.shared.metrics.redeliveries.inc();
        }
        if payload.requeue_count > self.settings.max_requeues {
            let reason = format!(
                "requeued {} times (the limit is {}); giving up",
                payload.requeue_count, self.settings.max_requeues
            );
            let end = End::Final(StateUpdate::now(JobState::Errored).because(reason));
            self.end(d, id, Some(&payload), end, claimed).await;
            return;
        }
        // The job id's turn outlives the run: the next run of the id waits until this one's
        // end is recorded.
        let mut turn = None;
        let end = self.run(&mut d, &payload, &mut turn).await;
        self.end(d, id, Some(&payload), end, claimed).await;
        drop(turn);
    }

    /// Runs a parsed job and says how it ends. The job is registered (listed in
    /// `/worker`, cancellable, reached by a shutdown) from here on, before anything that
    /// may wait: the turn of its job id, the build script service, the run.
    async fn run<D: Delivery>(
        &self,
        d: &mut D,
        payload: &Payload,
        turn: &mut Option<JobTurn>,
    ) -> End {
        let id = payload.id;
        let (cancel_tx, mut cancel) = mpsc::channel(4);
        let registered = Registered::new(&self.shared, id, self.provider.alias(), cancel_tx);
        let key = registered.key;

        // One run of a job id at a time: in this worker, then among the workers sharing
        // the queue.
        *turn = tokio::select! {
            t = self.turn(d, id) => match t {
                Ok(Some(t)) => Some(t),
                Ok(None) => return End::Answered,
                Err(e) => return queue_failed(format!("cannot take the job for this run: {e}"), &e),
            },
            Some(reason) = cancel.recv() => return cancelled_before_start(reason),
        };

        // A redelivery may be of a job whose worker on this machine died while running it:
        // what that run started goes before this one begins.
        if d.redelivered() {
            self.fence(&format!("job {id} was delivered again")).await;
        }
        if let Err(e) = d.update(id, &StateUpdate::now(JobState::Received)).await {
            return queue_failed(format!("cannot record the job's state: {e}"), &e);
        }
        let filtered;
        let payload = match &self.settings.payload_filter {
            Some(program) => {
                let document = serde_json::to_vec(&payload.document).unwrap_or_default();
                let out = tokio::select! {
                    out = filter::filter(program, &document, dir::MAX_JOB_BYTES, self.settings.payload_filter_timeout) => out,
                    Some(reason) = cancel.recv() => return cancelled_before_start(reason),
                };
                let parsed = out.and_then(|bytes| {
                    Payload::parse(&bytes).map_err(|e| match e {
                        PayloadError::Unreadable(r) => format!("its output is not a job: {r}"),
                        PayloadError::Invalid { reason, .. } => {
                            format!("its output is not a valid job: {reason}")
                        }
                    })
                });
                match parsed {
                    Ok(p) if p.id == id => {
                        filtered = p;
                        &filtered
                    }
                    Ok(p) => {
                        return End::Final(StateUpdate::now(JobState::Errored).because(format!(
                            "the payload filter {} changed the job's id to {}",
                            program.display(),
                            p.id
                        )))
                    }
                    Err(reason) => {
                        return End::Final(
                            StateUpdate::now(JobState::Errored).because(format!(
                                "the payload filter {} {reason}",
                                program.display()
                            )),
                        )
                    }
                }
            }
            None => payload,
        };
        if !self.settings.initial_sleep.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(self.settings.initial_sleep) => {}
                Some(reason) = cancel.recv() => return cancelled_before_start(reason),
            }
        }
        let script = match (&payload.script, &self.settings.build_api) {
            (Some(s), _) => s.clone().into_bytes(),
            (None, Some(api)) => {
                let document = serde_json::to_vec(&payload.document).unwrap_or_default();
                let fetched = tokio::select! {
                    f = api.script(document) => f,
                    Some(reason) = cancel.recv() => return cancelled_before_start(reason),
                };
                match fetched {
                    Ok(s) => s.into_bytes(),
                    Err(ScriptError::Refused(reason)) => {
                        if let Ok(mut log) = d.open_log(id).await {
                            use tokio::io::AsyncWriteExt as _;
                            let _ = log.write_all(format!("{reason}\n").as_bytes()).await;
                        }
                        return End::Final(StateUpdate::now(JobState::Errored).because(reason));
                    }
                    Err(e @ ScriptError::Unavailable(_)) => return End::Requeue(e.to_string()),
                }
            }
            (None, None) => {
                return End::Final(StateUpdate::now(JobState::Errored).because(
                    "the payload has no script, and no build script service is configured (--build-api)",
                ))
            }
        };
        let log = match d.open_log(id).await {
            Ok(l) => l,
            Err(e) => return queue_failed(format!("cannot open the job's log: {e}"), &e),
        };
        // The queue works again: the next put-back waits from the start.
        self.shared.put_backs.store(0, Ordering::Relaxed);

        let limits = &self.settings.limits;
        let cap = |given: Option<Duration>, max: Duration| given.map_or(max, |g| g.min(max));
        let mut attributes = payload.attributes.clone();
        let hard = cap(payload.hard_limit, limits.hard_timeout);
        attributes.hard_timeout = hard;
        attributes.progress_type = self.settings.progress_type.clone();
        let given = &self.settings.defaults;
        attributes.set_defaults(
            &given.language,
            &given.dist,
            &given.arch,
            &given.group,
            &given.os,
            plugin_api::attributes::DEFAULT_VM_TYPE,
            &plugin_api::VmConfig::default(),
        );
        let job = Job {
            script,
            attributes,
            trace: false,
            worker_info: self.settings.worker_info.clone(),
            options: JobOptions {
                hard_timeout: hard,
                log_silence_timeout: cap(payload.log_silence, limits.log_silence_timeout),
                ..limits.clone()
            },
        };

        let (events_tx, mut events) = mpsc::unbounded_channel();
        let observer = Forward(events_tx);
        // Boxed: the job's future is large, and this one's would hold it twice (as built and
        // as pinned).
        let mut run = Box::pin(run_job(&self.provider, job, log, &mut cancel, &observer));
        let mut instance_id = None;
        let report = loop {
            tokio::select! {
                report = &mut run => break report,
                Some(event) = events.recv() => self.on_event(d, id, key, event, &mut instance_id).await,
            }
        };
        while let Ok(event) = events.try_recv() {
            self.on_event(d, id, key, event, &mut instance_id).await;
        }
        drop(registered);
        self.shared.metrics.log_bytes.inc_by(report.log_bytes);
        if let Some(s) = report.startup_duration {
            self.shared
                .metrics
                .startup_duration
                .observe(s.as_secs_f64());
        }

        let with = |mut u: StateUpdate| {
            u.instance_id = report.instance_id.clone();
            u
        };
        match &report.outcome {
            Outcome::Passed | Outcome::Failed | Outcome::Errored { .. } => {
                let state = match report.outcome {
                    Outcome::Passed => JobState::Passed,
                    Outcome::Failed => JobState::Failed,
                    _ => JobState::Errored,
                };
                let mut u = with(StateUpdate::now(state));
                u.exit_code = report.script_exit_code;
                End::Final(u)
            }
            Outcome::NotCompleted(f) if f.is_config_error() => End::Final(with(
                StateUpdate::now(JobState::Errored).because(f.to_string()),
            )),
            Outcome::NotCompleted(f) => End::Requeue(f.to_string()),
            Outcome::TimedOut(kind) => {
                let limit = match kind {
                    TimeoutKind::LogCap => Limit::Bytes(limits.max_log_bytes.unwrap_or(0)),
                    TimeoutKind::LogSilence => {
                        Limit::Time(cap(payload.log_silence, limits.log_silence_timeout))
                    }
                    _ => Limit::Time(hard),
                };
                End::Final(with(
                    StateUpdate::now(JobState::Errored).because(limit_text(*kind, limit)),
                ))
            }
            Outcome::Cancelled(CancelReason::Requested) => End::Final(with(
                StateUpdate::now(JobState::Cancelled).because("cancelled on request"),
            )),
            Outcome::Cancelled(_) => End::Requeue("the worker shut down".into()),
            Outcome::OutputClosed => End::Requeue("the job's log could not be written".into()),
        }
    }

    /// Waits for job `id`'s turn: no other run of it in this worker, and the queue's
    /// exclusive hold on it (another worker's run of the same id ends first). The guard
    /// keeps the in-worker turn; the queue's hold lives with the delivery.
    async fn turn<D: Delivery>(&self, d: &mut D, id: u64) -> std::io::Result<Option<JobTurn>> {
        let lock = Arc::clone(
            self.shared
                .job_locks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(id)
                .or_default(),
        );
        let guard = Arc::clone(&lock).lock_owned().await;
        let turn = JobTurn {
            shared: Arc::clone(&self.shared),
            id,
            lock,
            guard: Some(guard),
        };
        let mut said = false;
        loop {
            match d.try_exclusive(id) {
                Ok(Turn::Mine) => return Ok(Some(turn)),
                Ok(Turn::Done) => return Ok(None),
                Ok(Turn::Wait) => {
                    if !said {
                        said = true;
                        self.warn(format!(
                            "job {id}: another run of it is going on; this one waits for its turn"
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn on_event<D: Delivery>(
        &self,
        d: &mut D,
        id: u64,
        key: u64,
        event: JobEvent,
        instance_id: &mut Option<String>,
    ) {
        if let JobEvent::Started {
            instance_id: i,
            image_name,
            warmed,
            ..
        } = event
        {
            *instance_id = Some(i.clone());
            if let Some(r) = self
                .shared
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&key)
            {
                r.instance_id = Some(i.clone());
            }
            let mut u = StateUpdate::now(JobState::Started);
            u.instance_id = Some(i.clone());
            u.image_name = (!image_name.is_empty()).then_some(image_name);
            u.warmed = Some(warmed);
            if let Err(e) = d.update(id, &u).await {
                self.warn(format!("job {id}: cannot record the started state: {e}"));
            }
            self.observer.event(&WorkerEvent::JobStarted {
                job_id: id,
                instance_id: i,
            });
        }
    }

    /// Records how the job ends and takes it off (or puts it back on) the queue.
    async fn end<D: Delivery>(
        &self,
        mut d: D,
        id: u64,
        payload: Option<&Payload>,
        end: End,
        claimed: Instant,
    ) {
        let end = match (end, payload) {
            (End::Requeue(reason), Some(p)) if p.requeue_count >= self.settings.max_requeues => {
                End::Final(StateUpdate::now(JobState::Errored).because(format!(
                    "{reason}; requeued {} times already (the limit is {})",
                    p.requeue_count, self.settings.max_requeues
                )))
            }
            (End::Requeue(reason), None) => {
                End::Final(StateUpdate::now(JobState::Errored).because(reason))
            }
            (end, _) => end,
        };
        let (update, requeue) = match end {
            End::Answered => {
                self.warn(format!(
                    "job {id}: delivered again after another worker on this machine ran it to its end; taken off the queue, not run again"
                ));
                if let Err(e) = d.finish().await {
                    self.warn(format!("job {id}: cannot move it on the queue: {e}"));
                }
                return;
            }
            End::Final(u) => (u, None),
            End::Requeue(reason) => (
                StateUpdate::now(JobState::Requeued).because(reason),
                payload.map(Payload::requeued_document),
            ),
            End::PutBack(reason) => {
                let n = self.shared.put_backs.fetch_add(1, Ordering::Relaxed);
                let wait = Duration::from_millis(100)
                    .saturating_mul(1 << n.min(16))
                    .min(PUT_BACK_WAIT_MAX);
                tokio::time::sleep(wait).await;
                (
                    StateUpdate::now(JobState::Requeued).because(reason),
                    Some(d.payload().to_vec()),
                )
            }
        };
        if let Err(e) = d.update(id, &update).await {
            self.warn(format!(
                "job {id}: cannot record its {} state: {e}",
                update.state.name()
            ));
        }
        let result = match requeue {
            Some(doc) => {
                self.shared.metrics.requeues.inc();
                d.requeue(doc).await
            }
            None => {
                self.shared.metrics.finished(update.state);
                d.finish().await
            }
        };
        if let Err(e) = result {
            self.warn(format!("job {id}: cannot move it on the queue: {e}"));
        }
        let duration = claimed.elapsed();
        self.shared
            .metrics
            .job_duration
            .observe(duration.as_secs_f64());
        self.observer.event(&WorkerEvent::JobFinished {
            job_id: id,
            state: update.state,
            exit_code: update.exit_code,
            reason: update.reason,
            duration,
        });
    }
}
