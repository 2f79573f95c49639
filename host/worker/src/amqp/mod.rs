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
//! **A message is not a job.** Deduplication identifies a *message*: the job id and a
//! SHA-256 digest of the body (`MessageKey`). Only a delivery the broker marks
//! `redelivered` may be answered from what this worker ran (joined to a run of the same
//! message still going on here, or acked when such a run ended with a final state); any other
//! delivery runs, whatever its job id. A requeue publishes a *new* message (its body carries
//! the raised requeue count) and is never remembered as finished. travis publishes the same
//! job id again when a build is restarted: a different message, which runs (after the run of
//! the same id on this worker ends: the worker never runs one job id twice at once).
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
mod outbox;
pub use broker::{masked_url, Broker, BrokerError, TlsSettings, DEFAULT_HEARTBEAT};
use outbox::Outbox;

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
}

fn io(what: &str, e: lapin::Error) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

fn persistent(kind: &str) -> BasicProperties {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(now)
        .with_type(kind.into())
}

/// Polls `f` once: what lapin does at once (queue a frame, register a confirm) is done, and
/// the rest (waiting for its I/O thread) is left to whoever keeps `f`.
async fn poll_once<F: std::future::Future + ?Sized>(
    mut f: std::pin::Pin<&mut F>,
) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
}

/// Publishes one message and waits for the broker's confirm.
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    key: &str,
    kind: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            persistent(kind),
        )
        .await
        .map_err(|e| io("publish", e))?
        .await
        .map_err(|e| io("publish confirm", e))?;
    match confirm {
        Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
        Confirmation::Nack(_) => Err(std::io::Error::other(
            "the broker refused the message (nack)",
        )),
    }
}

/// Declares the jobs queue durable, as the original does. A queue that exists already with
/// arguments of its own (a dead-letter exchange, a length limit, the quorum type) is used as
/// it is: the broker refuses a declare that differs from it (406, which also closes the
/// channel), and the worker then only checks that it exists.
async fn declare_jobs_queue(conn: &Connection, name: &str) -> std::io::Result<()> {
    let channel = conn.create_channel().await.map_err(|e| io("channel", e))?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let what = || format!("declare the jobs queue {name}");
    match channel
        .queue_declare(name.into(), durable, FieldTable::default())
        .await
    {
        Err(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 406) => {
            let channel = conn.create_channel().await.map_err(|e| io("channel", e))?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            channel
                .queue_declare(name.into(), passive, FieldTable::default())
                .await
                .map_err(|e| io(&what(), e))?;
            let _ = channel.close(200, "declared".into()).await;
            tracing::info!("the jobs queue {name} has arguments of its own; used as it is");
        }
        Err(e) => return Err(io(&what(), e)),
        Ok(_) => {
            let _ = channel.close(200, "declared".into()).await;
        }
    }
    Ok(())
}

/// Declares what the original declares beside the jobs queue: the reporting exchange and
/// queues.
async fn declare(channel: &Channel, s: &AmqpSettings) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            LOG_EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            s.state_queue.as_str().into(),
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(s.log_queue.as_str().into(), durable, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            s.log_queue.as_str().into(),
            LOG_EXCHANGE.into(),
            s.log_queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Puts a job on the queue `queue_name` at `url`: persistent, confirmed.
pub async fn enqueue(broker: &Broker, queue_name: &str, body: &[u8]) -> std::io::Result<()> {
    let conn = broker.connect().await?;
    let channel = conn.create_channel().await.map_err(|e| io("channel", e))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| io("confirm mode", e))?;
    declare_jobs_queue(&conn, queue_name).await?;
    publish_confirmed(&channel, "", queue_name, "job", body).await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// One connection's worth of channels, shared by the jobs while it lives.
#[derive(Clone)]
struct Link {
    /// State updates (and requeued jobs) go out here.
    states: Channel,
    /// Log parts go out here: a channel of their own, as the original's log writer has (the
    /// broker works a channel's messages one after another; two share its load).
    logs: Channel,
    /// Counts connections: a message that went out on an older one may have been lost.
    generation: u64,
}

/// Which of a [`Link`]'s channels an [`Outbox`] publishes on.
#[derive(Clone, Copy, Debug)]
enum Lane {
    States,
    Logs,
}

impl Link {
    fn channel(&self, lane: Lane) -> &Channel {
        match lane {
            Lane::States => &self.states,
            Lane::Logs => &self.logs,
        }
    }
}

struct Shared {
    settings: AmqpSettings,
    /// The current link; `None` while reconnecting.
    link: watch::Receiver<Option<Link>>,
    /// The jobs consumer [`JobQueue::next`] reads (polled there: no task in between), and
    /// the one a new connection made, until `next` takes it over.
    consumer: tokio::sync::Mutex<Option<(u64, lapin::Consumer)>>,
    fresh_consumer: Mutex<Option<(u64, lapin::Consumer)>>,
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
}

/// What identifies a message: its job id and the digest of its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct MessageKey {
    job_id: u64,
    digest: [u8; 32],
}

impl MessageKey {
    fn of(job_id: u64, body: &[u8]) -> Self {
        use sha2::Digest as _;
        Self {
            job_id,
            digest: sha2::Sha256::digest(body).into(),
        }
    }
}

/// The machine lock key's prefix of a queue: a digest of its vhost and name, as a file
/// name. Not of the broker's address: one broker has many names (`localhost`,
/// `127.0.0.1`, a DNS alias), and two workers of a machine naming it differently must still
/// share their locks. (Two brokers whose vhost and queue names agree share them too: runs
/// of equal job ids then wait for each other, which is safe.)
fn lock_prefix(s: &AmqpSettings) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{}\n{}", s.broker.vhost(), s.queue_name));
    hex(&digest[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How many finished messages are remembered for answering their redeliveries.
const FINISHED_REMEMBERED: usize = 10_000;

/// The messages this worker runs or ran (see the module doc for the rule). `A` is what
/// answers a delivery (lapin's acker; a stand-in in the unit tests).
struct Seen<A = lapin::Acker> {
    /// Messages being run here, each with the redeliveries of it that arrived meanwhile
    /// (acked with it).
    running: HashMap<MessageKey, Vec<A>>,
    /// Messages whose run here ended with a final state, oldest first.
    finished: VecDeque<MessageKey>,
    finished_set: std::collections::HashSet<MessageKey>,
}

/// What [`Seen::arrived`] says of a delivery.
#[derive(Debug, PartialEq, Eq)]
enum Arrival {
    /// Run it.
    Run,
    /// A redelivery of a message running here: acked when that run ends.
    Joined,
    /// A redelivery of a message that finished here: ack it, do not run it.
    AlreadyFinished,
}

impl<A> Default for Seen<A> {
    fn default() -> Self {
        Self {
            running: HashMap::new(),
            finished: VecDeque::new(),
            finished_set: std::collections::HashSet::new(),
        }
    }
}

impl<A: Clone> Seen<A> {
    /// Applies the rule to a delivery of `key`; `acker` is kept when it joins a run.
    fn arrived(&mut self, key: MessageKey, redelivered: bool, acker: &A) -> Arrival {
        if redelivered {
            if let Some(ackers) = self.running.get_mut(&key) {
                ackers.push(acker.clone());
                return Arrival::Joined;
            }
            if self.finished_set.contains(&key) {
                return Arrival::AlreadyFinished;
            }
        }
        // A fresh message (even one whose twin runs here: published twice) runs; the
        // worker serialises runs of one job id.
        self.running.entry(key).or_default();
        Arrival::Run
    }

    /// The run of `key` ended, with a final state or not (a requeue, a reject); returns the
    /// redeliveries to ack with it.
    fn ended(&mut self, key: MessageKey, finished: bool) -> Vec<A> {
        let extra = self.running.remove(&key).unwrap_or_default();
        if finished && self.finished_set.insert(key) {
            self.finished.push_back(key);
            if self.finished.len() > FINISHED_REMEMBERED {
                if let Some(old) = self.finished.pop_front() {
                    self.finished_set.remove(&old);
                }
            }
        }
        extra
    }
}

/// A connected RabbitMQ queue.
#[derive(Clone)]
pub struct AmqpQueue {
    shared: Arc<Shared>,
    /// Dropped with the last clone of the queue: the connection is then closed.
    _alive: Arc<watch::Sender<()>>,
}

impl Shared {
    /// Hands a new jobs consumer to [`JobQueue::next`]; returns its number.
    fn set_consumer(&self, consumer: lapin::Consumer) -> u64 {
        let mut slot = self
            .fresh_consumer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut number = 0;
        self.consumer_generation.send_modify(|g| {
            *g += 1;
            number = *g;
        });
        *slot = Some((number, consumer));
        number
    }

    /// The next delivery from the jobs consumer, across reconnections. Cancel-safe: the
    /// consumer stays in `consumer` when the future is dropped.
    async fn next_delivery(&self) -> lapin::message::Delivery {
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
                Some((number, consumer)) => tokio::select! {
                    d = consumer.next() => {
                        match d {
                            Some(Ok(d)) => return d,
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
        let queue = Self {
            shared: Arc::new(Shared {
                settings: settings.clone(),
                link: link_rx,
                consumer: tokio::sync::Mutex::new(None),
                fresh_consumer: Mutex::new(None),
                consumer_generation: watch::Sender::new(0),
                consumer_lost: std::sync::atomic::AtomicU64::new(0),
                jobs_channel: Mutex::new(None),
                seen: Mutex::new(Seen::default()),
                waiting: std::sync::atomic::AtomicU64::new(u64::MAX),
                lock_prefix: lock_prefix(&settings),
            }),
            _alive: Arc::new(alive_tx),
        };
        let first = session(&conn, &settings, &cancel_tx, &queue.shared, 0).await?;
        link_tx.send_replace(Some(first));
        let shared = Arc::clone(&queue.shared);
        tokio::spawn(supervise(
            conn, settings, link_tx, alive_rx, cancel_tx, shared,
        ));
        Ok((queue, cancel_rx))
    }
}

/// Declares the jobs queue and consumes it on a channel of its own (the one it replaces is
/// closed), handing the consumer to [`JobQueue::next`]; and keeps the count of waiting
/// messages fresh while that channel lives.
async fn consume_jobs(
    conn: &Connection,
    s: &AmqpSettings,
    shared: &Arc<Shared>,
) -> std::io::Result<()> {
    declare_jobs_queue(conn, &s.queue_name).await?;
    let jobs = conn.create_channel().await.map_err(|e| io("channel", e))?;
    jobs.basic_qos(s.prefetch.max(1), BasicQosOptions::default())
        .await
        .map_err(|e| io("prefetch", e))?;
    let consumer = jobs
        .basic_consume(
            s.queue_name.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| io(&format!("consume {}", s.queue_name), e))?;
    let number = shared.set_consumer(consumer);
    let old = shared
        .jobs_channel
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(jobs);
    if let Some(old) = old {
        if old.status().connected() {
            let _ = old.close(200, "replaced".into()).await;
        }
    }

    // How much is waiting, refreshed while this consumer lives.
    let peek = conn.create_channel().await.map_err(|e| io("channel", e))?;
    let shared = Arc::clone(shared);
    let name = s.queue_name.clone();
    tokio::spawn(async move {
        loop {
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            match peek
                .queue_declare(name.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(q) => shared.waiting.store(
                    u64::from(q.message_count()),
                    std::sync::atomic::Ordering::SeqCst,
                ),
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if *shared.consumer_generation.borrow() != number {
                let _ = peek.close(200, "replaced".into()).await;
                break;
            }
        }
    });
    Ok(())
}

/// Opens the channels of one connection: declares, starts the jobs consumer (handed to
/// [`JobQueue::next`]) and the command consumer, whose messages go to `cancels`.
async fn session(
    conn: &Connection,
    s: &AmqpSettings,
    cancels: &mpsc::Sender<u64>,
    shared: &Arc<Shared>,
    generation: u64,
) -> std::io::Result<Link> {
    let states = conn.create_channel().await.map_err(|e| io("channel", e))?;
    declare(&states, s)
        .await
        .map_err(|e| io("declare the queues", e))?;
    let logs = conn.create_channel().await.map_err(|e| io("channel", e))?;
    for channel in [&states, &logs] {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| io("confirm mode", e))?;
    }

    consume_jobs(conn, s, shared).await?;

    let commands = conn.create_channel().await.map_err(|e| io("channel", e))?;
    commands
        .exchange_declare(
            COMMANDS_EXCHANGE.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| io("declare worker.commands", e))?;
    let own = commands
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| io("declare a command queue", e))?;
    commands
        .queue_bind(
            own.name().clone(),
            COMMANDS_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| io("bind the command queue", e))?;
    let mut command_consumer = commands
        .basic_consume(
            own.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| io("consume commands", e))?;
    let cancels = cancels.clone();
    tokio::spawn(async move {
        while let Some(Ok(d)) = command_consumer.next().await {
            let Ok(command) = serde_json::from_slice::<Value>(&d.data) else {
                tracing::warn!("a worker command that is not JSON: ignored");
                continue;
            };
            match (command["type"].as_str(), command["job_id"].as_u64()) {
                (Some("cancel_job"), Some(id)) => {
                    let _ = cancels.send(id).await;
                }
                _ => tracing::warn!("an unknown worker command: {command}"),
            }
        }
    });

    Ok(Link {
        states,
        logs,
        generation,
    })
}

/// Waits for the connection to fail, then reconnects with backoff, for as long as the worker
/// runs (until `alive`'s sender, held by the queue, is dropped).
async fn supervise(
    mut conn: Connection,
    s: AmqpSettings,
    link: watch::Sender<Option<Link>>,
    alive: watch::Receiver<()>,
    cancels: mpsc::Sender<u64>,
    shared: Arc<Shared>,
) {
    let mut generation = 0;
    let mut consume_wait = Duration::from_millis(100);
    loop {
        while conn.status().connected() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if alive.has_changed().is_err() {
                let _ = conn.close(200, "worker stopped".into()).await;
                return;
            }
            // The jobs consumer ended on a connection that is still up: consume again (with
            // backoff while that fails), unless a newer consumer replaced it meanwhile.
            let lost = shared
                .consumer_lost
                .swap(0, std::sync::atomic::Ordering::SeqCst);
            if lost != 0 && lost == *shared.consumer_generation.borrow() {
                match consume_jobs(&conn, &s, &shared).await {
                    Ok(()) => {
                        tracing::warn!("consuming {} again", s.queue_name);
                        consume_wait = Duration::from_millis(100);
                    }
                    Err(e) => {
                        tracing::warn!("consuming {} again: {e}", s.queue_name);
                        shared
                            .consumer_lost
                            .store(lost, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(consume_wait).await;
                        consume_wait = (consume_wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
        link.send_replace(None);
        tracing::warn!("lost the connection to {}; reconnecting", s.broker.masked());
        let mut wait = Duration::from_millis(100);
        // Each new reason a reconnect fails is said once (a broker that is down says the
        // same every time; a certificate that expired meanwhile says something new).
        let mut said = String::new();
        conn = loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
            let c = match s.broker.connect().await {
                Ok(c) => c,
                Err(e) => {
                    let text = e.to_string();
                    if text != said {
                        tracing::warn!("reconnecting: {text}");
                        said = text;
                    }
                    continue;
                }
            };
            generation += 1;
            match session(&c, &s, &cancels, &shared, generation).await {
                Ok(l) => {
                    link.send_replace(Some(l));
                    tracing::warn!("reconnected to {}", s.broker.masked());
                    break c;
                }
                Err(e) => tracing::warn!("reconnecting: {e}"),
            }
        };
    }
}

impl JobQueue for AmqpQueue {
    type Delivery = AmqpDelivery;

    async fn next(&self) -> AmqpDelivery {
        loop {
            let d = self.shared.next_delivery().await;
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

/// A log part's body.
#[derive(Serialize)]
struct LogPartBody<'a> {
    r#final: bool,
    id: u64,
    log: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a StartedMeta>,
    number: u64,
    uuid: &'a Value,
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
        let outbox = Outbox::new(self.queue.shared.link.clone(), Lane::Logs);
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

/// The writing end of a job's log: bytes go to the task that cuts them into parts.
pub struct AmqpLog {
    tx: tokio_util::sync::PollSender<Vec<u8>>,
}

impl tokio::io::AsyncWrite for AmqpLog {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        match self.tx.poll_reserve(cx) {
            Poll::Ready(Ok(())) => match self.tx.send_item(buf.to_vec()) {
                Ok(()) => Poll::Ready(Ok(buf.len())),
                Err(_) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            },
            Poll::Ready(Err(_)) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.tx.close();
        std::task::Poll::Ready(Ok(()))
    }
}

/// The text of the first `n` bytes of `buf` as the original's JSON encoding makes it, where
/// `n` stops before a character cut short at the end (it waits for the next part).
pub(crate) fn take_text(buf: &mut Vec<u8>, flush_all: bool) -> String {
    let mut end = buf.len();
    if !flush_all {
        // Up to 3 trailing bytes may be the start of a character still being written.
        let tail = buf.len().saturating_sub(3);
        if let Some(start) = (tail..buf.len()).rev().find(|&i| buf[i] & 0xC0 != 0x80) {
            let need = match buf[start] {
                b if b >= 0xF0 => 4,
                b if b >= 0xE0 => 3,
                b if b >= 0xC0 => 2,
                _ => 1,
            };
            if buf.len() - start < need {
                end = start;
            }
        }
    }
    let rest = buf.split_off(end);
    let text = std::mem::replace(buf, rest);
    let mut out = String::with_capacity(text.len());
    let mut bytes = &text[..];
    while !bytes.is_empty() {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                break;
            }
            Err(e) => {
                let good = e.valid_up_to();
                out.push_str(std::str::from_utf8(&bytes[..good]).unwrap_or_default());
                // As Go's encoding/json: each invalid byte is one U+FFFD.
                let bad = e.error_len().unwrap_or(bytes.len() - good);
                for _ in 0..bad {
                    out.push('\u{FFFD}');
                }
                bytes = &bytes[good + bad..];
            }
        }
    }
    out
}

/// Cuts a job's log into parts: every [`LOG_FLUSH_EVERY`] or [`LOG_PART_BYTES`], numbered
/// from 0. When the writer is gone, the part carrying the rest of the text is the final one;
/// if nothing was left, an empty final part follows. Returns the parts not yet confirmed.
async fn log_parts(
    mut outbox: Outbox,
    key: String,
    job_id: u64,
    uuid: Value,
    meta: Arc<StartedMeta>,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> Outbox {
    let body_of = |number: u64, text: String, last: bool| {
        serde_json::to_vec(&LogPartBody {
            r#final: last,
            id: job_id,
            log: &text,
            // The first part after the start carries the job's meta, as the original's does.
            meta: (number == 0).then_some(&*meta),
            number,
            uuid: &uuid,
        })
        .unwrap_or_default()
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut parts: Vec<(String, bool)> = Vec::new();
    let mut number = 0u64;
    let mut tick = tokio::time::interval(LOG_FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    loop {
        tokio::select! {
            chunk = rx.recv() => match chunk {
                Some(c) => {
                    buf.extend_from_slice(&c);
                    if buf.len() < LOG_PART_BYTES {
                        continue;
                    }
                }
                None => open = false,
            },
            _ = tick.tick() => {}
        }
        cut_parts(&mut buf, open, &mut parts);
        for (text, last) in parts.drain(..) {
            outbox
                .send(LOG_EXCHANGE, &key, LOG_TYPE, body_of(number, text, last))
                .await;
            number += 1;
        }
        if !open {
            break;
        }
    }
    outbox
}

/// Appends to `parts`, as `(text, final)`, what goes out now of a job's buffered log `buf`:
/// whole parts while more than a part is buffered, then the rest, but for a character cut
/// short while the writer is `open` (it waits for its next bytes). Once the writer is gone,
/// everything goes and the last part is final: the one with the rest of the text, or an
/// empty one if nothing was left.
fn cut_parts(buf: &mut Vec<u8>, open: bool, parts: &mut Vec<(String, bool)>) {
    let before = parts.len();
    while !buf.is_empty() {
        let take = buf.len().min(LOG_PART_BYTES);
        let mut part: Vec<u8> = buf.drain(..take).collect();
        let text = take_text(&mut part, !open && buf.is_empty());
        if !part.is_empty() {
            part.append(buf);
            *buf = part;
        }
        if text.is_empty() {
            break;
        }
        parts.push((text, !open && buf.is_empty()));
        if open && buf.len() < LOG_PART_BYTES {
            break;
        }
    }
    if !open && !parts[before..].last().is_some_and(|p| p.1) {
        parts.push((String::new(), true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_broker_named_two_ways_gives_one_lock_prefix() {
        let settings = |url: &str| AmqpSettings {
            broker: Broker::new(url, &TlsSettings::default(), DEFAULT_HEARTBEAT)
                .unwrap_or_else(|e| panic!("{e}")),
            queue_name: "builds.linux".into(),
            prefetch: 1,
            state_queue: String::new(),
            log_queue: String::new(),
            infra: String::new(),
            machine_locks: None,
        };
        let a = lock_prefix(&settings("amqp://guest:guest@127.0.0.1:5672/%2f"));
        assert_eq!(a, lock_prefix(&settings("amqp://u:p@localhost:5672/")));
        assert_eq!(a, lock_prefix(&settings("amqp://localhost")));
        assert_ne!(a, lock_prefix(&settings("amqp://localhost/other")));
    }

    fn key(id: u64, body: &str) -> MessageKey {
        MessageKey::of(id, body.as_bytes())
    }

    /// D1: a requeue republishes the job; the broker may hand the new message back before
    /// the old one is acked. A message is not a job: the new one runs.
    #[test]
    fn a_requeued_jobs_new_message_runs_while_the_old_one_is_still_unacked() {
        let mut seen = Seen::<u32>::default();
        let first = key(7, r#"{"job":{"id":7}}"#);
        assert_eq!(seen.arrived(first, false, &1), Arrival::Run);
        let requeued = key(7, r#"{"job":{"id":7},"meta":{"requeue_count":1}}"#);
        assert_eq!(seen.arrived(requeued, false, &2), Arrival::Run);
        assert!(seen.ended(first, false).is_empty());
        assert!(seen.ended(requeued, true).is_empty());
    }

    /// D2: a requeue is never finished: the requeued message, or the old one redelivered,
    /// runs again here.
    #[test]
    fn a_requeue_is_never_remembered_as_finished() {
        let mut seen = Seen::<u32>::default();
        let m = key(7, "a");
        assert_eq!(seen.arrived(m, false, &1), Arrival::Run);
        seen.ended(m, false);
        assert_eq!(seen.arrived(m, true, &2), Arrival::Run);
    }

    /// Only a redelivery may be answered from what this worker ran.
    #[test]
    fn only_a_redelivery_of_the_same_message_is_answered_from_what_ran_here() {
        let mut seen = Seen::<u32>::default();
        let m = key(7, "a");
        assert_eq!(seen.arrived(m, false, &1), Arrival::Run);
        assert_eq!(seen.arrived(m, true, &2), Arrival::Joined);
        // The same job id in another body (a restarted build) is another message.
        assert_eq!(seen.arrived(key(7, "b"), true, &3), Arrival::Run);
        assert_eq!(seen.ended(m, true), vec![2]);
        assert_eq!(seen.arrived(m, true, &4), Arrival::AlreadyFinished);
        // Published again, not redelivered: it runs.
        assert_eq!(seen.arrived(m, false, &5), Arrival::Run);
    }

    #[test]
    fn finished_messages_are_remembered_within_a_bound() {
        let mut seen = Seen::<u32>::default();
        for i in 0..(FINISHED_REMEMBERED as u64 + 10) {
            let m = key(i, "x");
            seen.arrived(m, false, &0);
            seen.ended(m, true);
        }
        assert_eq!(seen.finished.len(), FINISHED_REMEMBERED);
        assert_eq!(seen.finished_set.len(), FINISHED_REMEMBERED);
        assert_eq!(seen.arrived(key(0, "x"), true, &0), Arrival::Run);
    }

    #[test]
    fn a_password_is_masked() {
        assert_eq!(
            masked_url("amqp://guest:secret@h:5672/v"),
            "amqp://guest:***@h:5672/v"
        );
        assert_eq!(masked_url("amqp://h:5672/"), "amqp://h:5672/");
    }

    #[test]
    fn log_text_keeps_characters_whole_and_replaces_invalid_bytes() {
        let mut buf = "aé".as_bytes().to_vec();
        buf.push(0xE2); // the start of a 3-byte character
        assert_eq!(take_text(&mut buf, false), "aé");
        assert_eq!(buf, [0xE2]);
        buf.extend_from_slice(&[0x82, 0xAC]); // €
        assert_eq!(take_text(&mut buf, false), "€");
        let mut bad = vec![b'x', 0xFF, 0xFE, b'y'];
        assert_eq!(take_text(&mut bad, true), "x\u{FFFD}\u{FFFD}y");
    }

    fn cut(buf: &mut Vec<u8>, open: bool) -> Vec<(String, bool)> {
        let mut parts = Vec::new();
        cut_parts(buf, open, &mut parts);
        parts
    }

    #[test]
    fn the_rest_of_a_log_is_its_final_part() {
        // A short log written and closed: one part, final (the original would send two).
        assert_eq!(
            cut(&mut b"hello\n".to_vec(), false),
            [("hello\n".to_owned(), true)]
        );
        // Nothing left when the writer goes: an empty final part.
        assert_eq!(cut(&mut Vec::new(), false), [(String::new(), true)]);
        // While the writer is there, nothing is final and a cut character waits.
        let mut buf = "ab\u{e9}".as_bytes().to_vec();
        buf.pop();
        assert_eq!(cut(&mut buf, true), [("ab".to_owned(), false)]);
        assert_eq!(buf, [0xC3]);
    }

    #[test]
    fn a_long_log_goes_in_whole_parts_and_only_the_last_is_final() {
        let text: String = (0..LOG_PART_BYTES * 5 / 2)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        // Buffered while the writer is there: whole parts only; the half part waits.
        let mut buf = text.clone().into_bytes();
        let open = cut(&mut buf, true);
        assert_eq!(open.len(), 2, "whole parts until less than a part is left");
        assert_eq!(buf.len(), LOG_PART_BYTES / 2);
        // The writer gone: the rest, the last part final.
        let closed = cut(&mut buf, false);
        assert!(buf.is_empty());
        let all: Vec<_> = open.iter().chain(&closed).collect();
        let lens: Vec<usize> = all.iter().map(|p| p.0.len()).collect();
        assert_eq!(lens, [LOG_PART_BYTES, LOG_PART_BYTES, LOG_PART_BYTES / 2]);
        let finals: Vec<bool> = all.iter().map(|p| p.1).collect();
        assert_eq!(finals, [false, false, true]);
        assert_eq!(all.iter().map(|p| p.0.as_str()).collect::<String>(), text);
    }
}
