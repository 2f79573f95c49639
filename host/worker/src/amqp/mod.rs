//! The RabbitMQ queue (AMQP 0.9.1), wire-compatible with the original worker
//! (`amqp_job_queue.go`, `amqp_job.go`, `amqp_log_writer.go`, `amqp_canceller.go`):
//!
//! - jobs from a durable queue (`--queue-name`), prefetch = pool size, manual ack;
//! - state updates: persistent, default exchange, routing key `reporting.jobs.builds` (a
//!   durable queue), message type `job:test:receive|start|finish|reset`, body `{id, state,
//!   meta {state_update_count, instance_id, uuid}, queued_at, received_at, started_at,
//!   finished_at}` with the original's states (`canceled`, and `reset` for a requeue);
//! - log parts: topic exchange `reporting`, routing key `reporting.jobs.logs`, type
//!   `job:test:log`, body `{id, log, number, uuid, final}` (the first part also `meta
//!   {queued_at, repo, queue, infra}`), numbers from 0, flushed every
//!   500 ms or at [`LOG_PART_BYTES`], the last one `final` (it carries the rest of the
//!   text; the original sends that rest, then an empty final part: one message more per job
//!   for the broker, and travis-logs stores a final part's text as any other's);
//! - cancel commands: fanout exchange `worker.commands`, `{type: "cancel_job", job_id, ...}`.
//!
//! State updates and log parts go out on two channels of one connection (the original's log
//! writer has a channel of its own too). Publishing is confirmed (publisher confirms) but
//! pipelined: a job's messages go out without
//! waiting for one another's confirm, and its delivery is acked only after every one of them
//! (the final state, or for a requeue the reset and the job republished with its requeue
//! count) is confirmed: a worker that dies leaves its deliveries unacked and the broker hands
//! them to another. Delivery is **at least once**: after a lost connection the broker
//! redelivers what was unacked, and a job may run again (a worker that still runs it, or ran
//! it, answers the redelivery without running it twice itself). The connection is
//! re-established with backoff; a job's unconfirmed messages go out again on the new one, in
//! their order (a message whose confirm alone was lost arrives twice, the same both times),
//! and new ones wait for it (at most 64 unconfirmed per job, then the log's bounded buffer).
//!
//! **A message is not a job**: which delivery runs and which is answered from what ran here
//! is the rule stated in the doc of `amqp/dedup.rs`.
//!
//! The parts: `broker` reaches the broker (the URL, TLS, failures in words); `connection`
//! declares the topology, consumes, and makes both again after a loss; this module takes
//! deliveries and ends them ([`AmqpQueue`], [`AmqpDelivery`]); `publish` and `outbox`
//! publish with confirms; `log` cuts a job's log into parts; `dedup` decides what runs.
//!
//! Log text that is not UTF-8 becomes U+FFFD as the original's JSON encoding makes it (each
//! invalid byte one replacement character); a character split across two parts is kept whole.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::queue::{Delivery, JobQueue, JobState, StateUpdate, Turn};

mod broker;
mod connection;
mod dedup;
mod log;
mod outbox;
mod publish;
pub use broker::{masked_url, Broker, BrokerError, TlsSettings, DEFAULT_HEARTBEAT};
use connection::{
    declare_jobs_queue, logs_session, session, supervise, supervise_logs, Lane, Link,
};
use dedup::{hex, lock_prefix, Arrival, MessageKey, Seen};
use log::log_parts;
pub use log::AmqpLog;
use outbox::Outbox;
pub use publish::enqueue;
use publish::poll_once;

/// Where state updates go (a queue on the default exchange), as the original.
pub const STATE_QUEUE: &str = "reporting.jobs.builds";
/// The topic exchange log parts go to.
pub const LOG_EXCHANGE: &str = "reporting";
/// The routing key (and the queue bound to it) of log parts.
pub const LOG_QUEUE: &str = "reporting.jobs.logs";
/// The fanout exchange of worker commands.
pub const COMMANDS_EXCHANGE: &str = "worker.commands";
/// The AMQP message type of a log part.
const LOG_TYPE: &str = "job:test:log";
/// The largest log part, in bytes of log.
pub const LOG_PART_BYTES: usize = 9 * 1024;
/// How often buffered log is flushed into a part.
pub const LOG_FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Where a worker's AMQP traffic goes.
#[derive(Clone, Debug)]
pub struct AmqpSettings {
    /// The broker (`amqp://user:pass@host:port/vhost`, or `amqps://` with TLS).
    pub broker: Broker,
    /// A broker of the log parts' own (the original's `LOGS_AMQP_URI`); `None`: `broker`.
    pub logs_broker: Option<Broker>,
    /// The jobs queue.
    pub queue_name: String,
    /// Deliveries held at once (the pool size).
    pub prefetch: u16,
    /// The state updates queue ([`STATE_QUEUE`] unless a test keeps its own).
    pub state_queue: String,
    /// The log parts routing key and queue ([`LOG_QUEUE`] unless a test keeps its own).
    pub log_queue: String,
    /// What the first log part's `meta.infra` says (the original's `infra` setting; the
    /// worker gives its backend's alias).
    pub infra: String,
    /// The job locks of this machine's workers: with them, two workers on this machine
    /// never run one job at once, and a redelivery of a message another worker here ran to
    /// its end is answered without running it. `None`: within this worker only.
    pub machine_locks: Option<super::machine::MachineLocks>,
    /// The jobs consumer's priority (`x-priority`; the original's `AMQP_CONSUMER_PRIORITY`):
    /// the broker gives jobs to the consumers of the highest priority that have room.
    pub consumer_priority: Option<i32>,
}

fn io(what: &str, e: lapin::Error) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

/// A jobs consumer: its number, the connection it consumes on, and lapin's.
struct Consumer {
    number: u64,
    connection: u64,
    consumer: lapin::Consumer,
}

struct Shared {
    settings: AmqpSettings,
    /// The current link; `None` while reconnecting.
    link: watch::Receiver<Option<Link>>,
    /// Where log parts go: `link`, or the link to the logs broker when there is one.
    log_link: watch::Receiver<Option<Link>>,
    /// Why the logs broker cannot be used now, when there is one and it is down.
    logs_down: Mutex<Option<String>>,
    /// A delivery taken while the logs broker was down, with its connection's number: the
    /// next [`JobQueue::next`] hands it out once that broker is back.
    held: Mutex<Option<(lapin::message::Delivery, u64)>>,
    /// The jobs consumer [`JobQueue::next`] reads (polled there: no task in between), and
    /// the one a new connection made, until `next` takes it over.
    consumer: tokio::sync::Mutex<Option<Consumer>>,
    fresh_consumer: Mutex<Option<Consumer>>,
    /// Bumped when `fresh_consumer` is set: each consumer's number.
    consumer_generation: watch::Sender<u64>,
    /// The number of a consumer that ended while its connection may still be up (the broker
    /// cancelled it, or closed its channel); 0 for none. The supervisor then consumes again.
    consumer_lost: std::sync::atomic::AtomicU64,
    /// The channel of the current jobs consumer, closed when it is replaced.
    jobs_channel: Mutex<Option<Channel>>,
    /// Messages this worker runs now or finished lately: a redelivery of one is answered
    /// here instead of running it twice.
    seen: Mutex<Seen>,
    /// Messages waiting in the jobs queue at the last look (for `--exit-when-idle`).
    waiting: std::sync::atomic::AtomicU64,
    /// What names this queue's jobs among the machine's locks (the broker and the queue).
    lock_prefix: String,
    /// Why the broker cannot be used now (the connection is down: the last reason a
    /// reconnect failed), for `/ready`.
    down: Mutex<Option<String>>,
}

/// A connected RabbitMQ queue.
#[derive(Clone)]
pub struct AmqpQueue {
    shared: Arc<Shared>,
    /// Dropped with the last clone of the queue: the connection is then closed.
    _alive: Arc<watch::Sender<()>>,
}

impl Shared {
    fn set_down(&self, why: Option<String>) {
        *self.down.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    fn set_logs_down(&self, why: Option<String>) {
        *self.logs_down.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// Hands a new jobs consumer, of connection `connection`, to [`JobQueue::next`]; returns
    /// its number.
    fn set_consumer(&self, consumer: lapin::Consumer, connection: u64) -> u64 {
        let mut slot = self
            .fresh_consumer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut number = 0;
        self.consumer_generation.send_modify(|g| {
            *g += 1;
            number = *g;
        });
        *slot = Some(Consumer {
            number,
            connection,
            consumer,
        });
        number
    }

    /// The next delivery from the jobs consumer, across reconnections, with the number of
    /// the connection it came on. Cancel-safe: the consumer stays in `consumer` when the
    /// future is dropped.
    async fn next_delivery(&self) -> (lapin::message::Delivery, u64) {
        let mut current = self.consumer.lock().await;
        loop {
            // Subscribed before the look at `fresh_consumer`, so that none set after it is
            // missed.
            let mut generation = self.consumer_generation.subscribe();
            if let Some(c) = self
                .fresh_consumer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                *current = Some(c);
            }
            match current.as_mut() {
                Some(Consumer {
                    number,
                    connection,
                    consumer,
                }) => tokio::select! {
                    d = consumer.next() => {
                        match d {
                            Some(Ok(d)) => return (d, *connection),
                            // The channel or the connection is gone.
                            Some(Err(e)) => {
                                tracing::debug!("the jobs consumer ended ({e}); waiting for a new one");
                            }
                            None => tracing::warn!(
                                "the broker cancelled the jobs consumer (was the queue {} deleted?); consuming again",
                                self.settings.queue_name
                            ),
                        }
                        // The supervisor consumes again on the same connection if it is up,
                        // else on the next one.
                        self.consumer_lost
                            .store(*number, std::sync::atomic::Ordering::SeqCst);
                        *current = None;
                    },
                    _ = generation.changed() => {}
                },
                None => {
                    if generation.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

impl AmqpQueue {
    /// Connects (the first connection must succeed: a wrong URL or password is an error at
    /// once), declares the topology and starts consuming; later losses of the connection are
    /// repaired in the background. Cancel commands arrive on the returned receiver.
    pub async fn open(settings: AmqpSettings) -> std::io::Result<(Self, mpsc::Receiver<u64>)> {
        let (cancel_tx, cancel_rx) = mpsc::channel(64);
        let (link_tx, link_rx) = watch::channel(None);
        let (alive_tx, alive_rx) = watch::channel(());
        let conn = settings.broker.connect().await?;
        // The logs broker, when there is one, must answer at the start too.
        let logs = match &settings.logs_broker {
            Some(b) => {
                let c = b.connect().await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("the logs broker {}: {e}", b.masked()))
                })?;
                let l = logs_session(&c, &settings, 0).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("the logs broker {}: {e}", b.masked()))
                })?;
                Some((b.clone(), c, watch::channel(Some(l))))
            }
            None => None,
        };
        let log_link = match &logs {
            Some((_, _, (_, rx))) => rx.clone(),
            None => link_rx.clone(),
        };
        let queue = Self {
            shared: Arc::new(Shared {
                settings: settings.clone(),
                link: link_rx,
                log_link,
                logs_down: Mutex::new(None),
                held: Mutex::new(None),
                consumer: tokio::sync::Mutex::new(None),
                fresh_consumer: Mutex::new(None),
                consumer_generation: watch::Sender::new(0),
                consumer_lost: std::sync::atomic::AtomicU64::new(0),
                jobs_channel: Mutex::new(None),
                seen: Mutex::new(Seen::default()),
                waiting: std::sync::atomic::AtomicU64::new(u64::MAX),
                lock_prefix: lock_prefix(&settings),
                down: Mutex::new(None),
            }),
            _alive: Arc::new(alive_tx),
        };
        let first = session(&conn, &settings, &cancel_tx, &queue.shared, 0).await?;
        link_tx.send_replace(Some(first));
        if let Some((broker, c, (tx, _))) = logs {
            let (s, shared, alive) = (
                settings.clone(),
                Arc::clone(&queue.shared),
                alive_rx.clone(),
            );
            tokio::spawn(supervise_logs(c, s, broker, tx, alive, shared));
        }
        let shared = Arc::clone(&queue.shared);
        tokio::spawn(supervise(
            conn, settings, link_tx, alive_rx, cancel_tx, shared,
        ));
        Ok((queue, cancel_rx))
    }
}

impl JobQueue for AmqpQueue {
    type Delivery = AmqpDelivery;

    async fn next(&self) -> AmqpDelivery {
        loop {
            let held = self
                .shared
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let (d, connection) = match held {
                Some(h) => h,
                None => self.shared.next_delivery().await,
            };
            // While the logs' own broker is down, no job is taken: its log could not go
            // anywhere. The delivery waits unacked, not started (the broker has it back if
            // the worker goes), kept where a later call finds it if this one is dropped.
            if self.shared.settings.logs_broker.is_some() && self.shared.log_link.borrow().is_none()
            {
                *self.shared.held.lock().unwrap_or_else(|e| e.into_inner()) = Some((d, connection));
                let mut logs = self.shared.log_link.clone();
                if logs.wait_for(Option::is_some).await.is_err() {
                    std::future::pending::<()>().await;
                }
                continue;
            }
            let peek = Peek::of(&d.data);
            let id = peek.job.as_ref().and_then(super::payload::job_id_of_job);
            let queued_at = peek.job.as_ref().and_then(|j| j.get("queued_at")).cloned();
            // As the original's first log part after the start carries them.
            let started_meta = Arc::new(StartedMeta {
                infra: self.shared.settings.infra.clone(),
                queue: peek.queue.unwrap_or(Value::Null),
                queued_at: queued_at.clone().unwrap_or(Value::Null),
                repo: peek
                    .repository
                    .as_ref()
                    .and_then(|r| r.get("slug"))
                    .cloned()
                    .unwrap_or(Value::Null),
            });
            let uuid = peek.uuid;
            // A redelivery of a message this worker runs or ran: answered here, not run
            // twice (the rule in the module doc).
            let key = id.map(|id| MessageKey::of(id, &d.data));
            if let Some(key) = key {
                let arrival = self
                    .shared
                    .seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .arrived(key, d.redelivered, &d.acker);
                match arrival {
                    Arrival::Run => {}
                    Arrival::Joined => continue,
                    Arrival::AlreadyFinished => {
                        let acker = d.acker.clone();
                        tokio::spawn(async move {
                            let _ = acker.ack(BasicAckOptions::default()).await;
                        });
                        continue;
                    }
                }
            }
            return AmqpDelivery {
                machine_lock: None,
                key,
                queue: self.clone(),
                connection,
                redelivered: d.redelivered,
                data: d.data,
                acker: d.acker,
                job_id: id,
                uuid,
                queued_at,
                started_meta,
                count: 0,
                times: Times::default(),
                instance_id: None,
                log: None,
                outbox: Outbox::new(self.shared.link.clone(), Lane::States),
            };
        }
    }

    fn problem(&self) -> Option<String> {
        let shared = &self.shared;
        let down = |why: &Mutex<Option<String>>, broker: Option<&Broker>| {
            let why = why.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
            let broker = broker?;
            Some(format!(
                "the connection to {} is down: {why}",
                broker.masked()
            ))
        };
        down(&shared.down, Some(&shared.settings.broker))
            .or_else(|| down(&shared.logs_down, shared.settings.logs_broker.as_ref()))
    }

    fn is_idle(&self) -> bool {
        self.shared
            .waiting
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0
    }
}

/// What [`JobQueue::next`] reads of a payload before the job runs: what every state update
/// and the first log part echo. The rest (a real payload's `config` may be large) is
/// skipped, not built.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Peek {
    job: Option<Value>,
    uuid: Option<Value>,
    repository: Option<Value>,
    queue: Option<Value>,
}

impl Peek {
    fn of(data: &[u8]) -> Self {
        serde_json::from_slice(data).unwrap_or_else(|_| {
            // Not JSON (then nothing), or JSON this shape refuses (a duplicated key): the
            // fields as a whole document has them.
            let doc = serde_json::from_slice::<Value>(data).unwrap_or_default();
            let field = |k: &str| doc.get(k).cloned();
            Self {
                job: field("job"),
                uuid: field("uuid"),
                repository: field("repository"),
                queue: field("queue"),
            }
        })
    }
}

/// The first log part's `meta`, as the original's (keys in the order `json!` gives them, so
/// the bytes are as before these were structs).
#[derive(Serialize)]
struct StartedMeta {
    infra: String,
    queue: Value,
    queued_at: Value,
    repo: Value,
}

/// A state update's body (keys in alphabetical order, as a `serde_json::Value` writes them).
#[derive(Serialize)]
struct StateBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<&'a str>,
    id: u64,
    meta: StateMeta<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queued_at: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    received_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<&'a str>,
    state: &'a str,
}

#[derive(Serialize)]
struct StateMeta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    image_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    state_update_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    uuid: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warmed: Option<bool>,
}

#[derive(Default)]
struct Times {
    received: Option<String>,
    started: Option<String>,
    finished: Option<String>,
}

/// A job delivered by the broker.
pub struct AmqpDelivery {
    queue: AmqpQueue,
    /// This job's lock among the machine's workers, once taken.
    machine_lock: Option<super::machine::MachineLock>,
    /// The message, when it is a job (see [`Seen`]).
    key: Option<MessageKey>,
    /// The number of the connection it came on: when that connection is gone, the broker
    /// has the message back (unacked), and acking it is no longer possible.
    connection: u64,
    redelivered: bool,
    data: Vec<u8>,
    acker: lapin::Acker,
    job_id: Option<u64>,
    /// The payload's `uuid` and `job.queued_at`, echoed in every state update.
    uuid: Option<Value>,
    queued_at: Option<Value>,
    /// The first log part's `meta`: `{queued_at, repo, queue, infra}`.
    started_meta: Arc<StartedMeta>,
    count: u64,
    times: Times,
    instance_id: Option<String>,
    /// The task cutting the log into parts; it hands back its unconfirmed parts.
    log: Option<tokio::task::JoinHandle<Outbox>>,
    /// State updates (and, once the log is done, its parts) not yet confirmed.
    outbox: Outbox,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl AmqpDelivery {
    /// This message's run here ended ([`Seen::ended`]); the redeliveries that joined it.
    fn ended(&self, finished: bool) -> Vec<lapin::Acker> {
        match self.key {
            Some(key) => self
                .queue
                .shared
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ended(key, finished),
            None => Vec::new(),
        }
    }

    /// Whether the connection this delivery came on is the one up now.
    fn connection_alive(&self) -> bool {
        self.queue
            .shared
            .link
            .borrow()
            .as_ref()
            .is_some_and(|l| l.generation == self.connection)
    }

    /// Acks this delivery and any redelivery of the same message that arrived meanwhile;
    /// with `finished`, remembers the message as finished (a requeue is not: the job goes
    /// on in a new message). An ack on a channel that died is lost; the broker then
    /// delivers the message again, and this worker answers that redelivery.
    async fn ack_all(&mut self, finished: bool) {
        let extra = self.ended(finished);
        // Queued, not waited for (lapin writes it): an ack lost with the connection brings
        // the job back, and this worker answers the redelivery.
        let ack = self.acker.ack(BasicAckOptions::default());
        if let Poll::Ready(Err(e)) = poll_once(std::pin::pin!(ack)).await {
            tracing::warn!(
                "ack of job {:?} lost ({e}); the broker will deliver it again",
                self.job_id
            );
        }
        for a in extra {
            let _ = poll_once(std::pin::pin!(a.ack(BasicAckOptions::default()))).await;
        }
    }

    /// Waits for the log's last part to go out; its parts are then confirmed with the
    /// job's state updates.
    async fn log_done(&mut self) {
        if let Some(task) = self.log.take() {
            match task.await {
                // On a broker of their own, the parts are confirmed there before the job's
                // final state goes out on the jobs' broker.
                Ok(mut parts) if self.queue.shared.settings.logs_broker.is_some() => {
                    parts.flush().await
                }
                Ok(parts) => self.outbox.absorb(parts),
                Err(e) => tracing::error!("job {:?}: the log task failed: {e}", self.job_id),
            }
        }
    }
}

impl Delivery for AmqpDelivery {
    type Log = AmqpLog;

    fn payload(&self) -> &[u8] {
        &self.data
    }

    fn redelivered(&self) -> bool {
        self.redelivered
    }

    fn try_exclusive(&mut self, job_id: u64) -> std::io::Result<Turn> {
        use super::machine::Lock;
        let Some(locks) = &self.queue.shared.settings.machine_locks else {
            return Ok(Turn::Mine);
        };
        if self.machine_lock.is_some() {
            return Ok(Turn::Mine);
        }
        let key = format!("{}-{job_id}", self.queue.shared.lock_prefix);
        match locks.try_lock(&key)? {
            Lock::Busy => Ok(Turn::Wait),
            Lock::Held(lock) => {
                let done =
                    self.redelivered && self.key.is_some_and(|k| lock.finished(&hex(&k.digest)));
                if !done {
                    lock.begin();
                }
                self.machine_lock = Some(lock);
                Ok(if done { Turn::Done } else { Turn::Mine })
            }
        }
    }

    async fn update(&mut self, job_id: u64, update: &StateUpdate) -> std::io::Result<()> {
        if update.state.is_final() {
            // Every log part goes before the final state.
            self.log_done().await;
        }
        let (kind, state) = match update.state {
            JobState::Received => ("job:test:receive", "received"),
            JobState::Started => ("job:test:start", "started"),
            JobState::Passed => ("job:test:finish", "passed"),
            JobState::Failed => ("job:test:finish", "failed"),
            JobState::Errored => ("job:test:finish", "errored"),
            JobState::Cancelled => ("job:test:finish", "canceled"),
            JobState::Requeued => ("job:test:reset", "reset"),
        };
        match update.state {
            JobState::Received => self.times.received = Some(now()),
            JobState::Started => self.times.started = Some(now()),
            _ => self.times.finished = Some(now()),
        }
        if let Some(i) = &update.instance_id {
            self.instance_id = Some(i.clone());
        }
        self.count += 1;
        let body = StateBody {
            finished_at: self.times.finished.as_deref(),
            id: job_id,
            meta: StateMeta {
                image_name: update.image_name.as_deref(),
                instance_id: self.instance_id.as_deref(),
                reason: update.reason.as_deref(),
                state_update_count: self.count,
                uuid: self.uuid.as_ref(),
                warmed: update.warmed,
            },
            queued_at: self.queued_at.as_ref(),
            received_at: self.times.received.as_deref(),
            started_at: self.times.started.as_deref(),
            state,
        };
        let bytes = serde_json::to_vec(&body).map_err(std::io::Error::other)?;
        let key = &self.queue.shared.settings.state_queue;
        self.outbox.send("", key, kind, bytes).await;
        Ok(())
    }

    async fn open_log(&mut self, job_id: u64) -> std::io::Result<AmqpLog> {
        // A second attempt's log (after a refused script) follows the first's parts.
        self.log_done().await;
        let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
        let uuid = self.uuid.clone().unwrap_or(Value::Null);
        let key = self.queue.shared.settings.log_queue.clone();
        let outbox = Outbox::new(self.queue.shared.log_link.clone(), Lane::Logs);
        let meta = Arc::clone(&self.started_meta);
        self.log = Some(tokio::spawn(log_parts(outbox, key, job_id, uuid, meta, rx)));
        Ok(AmqpLog {
            tx: tokio_util::sync::PollSender::new(tx),
        })
    }

    async fn finish(mut self) -> std::io::Result<()> {
        self.log_done().await;
        self.outbox.flush().await;
        // Before the ack and before the lock goes: a redelivery of this message to another
        // worker here is then answered without running it.
        if let (Some(lock), Some(key)) = (&self.machine_lock, self.key) {
            if let Err(e) = lock.record_finished(&hex(&key.digest)) {
                let id = self.job_id.unwrap_or_default();
                tracing::warn!("job {id}: cannot record that it finished on this machine: {e}");
            }
        }
        self.ack_all(true).await;
        Ok(())
    }

    async fn requeue(mut self, document: Vec<u8>) -> std::io::Result<()> {
        self.log_done().await;
        // The connection this job came on is gone: the broker has its message back (it
        // was not acked) and gives it to a worker again. A copy published now would run the
        // job twice; only when a redelivery of it is in hand here (joined to this run) is
        // the requeue published in its place and that redelivery acked.
        let joined = self.key.is_some_and(|k| {
            self.queue
                .shared
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .has_joined(&k)
        });
        if !self.connection_alive() && !joined {
            tracing::warn!(
                "job {}: its delivery went with the lost connection; the broker gives it back, so it is not published again",
                self.job_id.unwrap_or_default()
            );
            self.outbox.flush().await;
            let _ = self.ended(false);
            return Ok(());
        }
        let name = &self.queue.shared.settings.queue_name;
        self.outbox.send("", name, "job", document).await;
        self.outbox.flush().await;
        self.ack_all(false).await;
        Ok(())
    }

    async fn reject(self, reason: &str) -> std::io::Result<()> {
        tracing::warn!("rejecting a message that is not a job ({reason}); dead-lettered if the queue has a DLX");
        let extra = self.ended(false);
        // Redeliveries of this same message are as bad: rejected with it.
        for a in extra {
            let _ = poll_once(std::pin::pin!(
                a.reject(BasicRejectOptions { requeue: false })
            ))
            .await;
        }
        self.acker
            .reject(BasicRejectOptions { requeue: false })
            .await
            .map(drop)
            .map_err(|e| io("reject", e))
    }
}
