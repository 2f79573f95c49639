//! The connection and its supervision: the topology declared, the jobs consumed on a
//! channel of their own, and, when the connection or the consumer is lost, both made again
//! with backoff while the jobs running go on.

use super::*;

/// Declares the jobs queue durable, as the original does. A queue that exists already with
/// arguments of its own (a dead-letter exchange, a length limit, the quorum type) is used as
/// it is: the broker refuses a declare that differs from it (406, which also closes the
/// channel), and the worker then only checks that it exists.
pub(super) async fn declare_jobs_queue(conn: &Connection, name: &str) -> std::io::Result<()> {
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
pub(super) async fn declare(channel: &Channel, s: &AmqpSettings) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(
            s.state_queue.as_str().into(),
            durable,
            FieldTable::default(),
        )
        .await?;
    if s.logs_broker.is_some() {
        return Ok(());
    }
    declare_logs(channel, s).await
}

/// Declares the log parts' queue, bound to the reporting exchange by its name.
async fn declare_logs(channel: &Channel, s: &AmqpSettings) -> Result<(), lapin::Error> {
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
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
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

/// The channel of a broker of the log parts' own (`--logs-amqp-uri`, the original's
/// `LOGS_AMQP_URI`): the exchange and queue declared, publisher confirms on. Both lanes of
/// the link are that one channel.
pub(super) async fn logs_session(
    conn: &Connection,
    s: &AmqpSettings,
    generation: u64,
) -> std::io::Result<Link> {
    let logs = conn.create_channel().await.map_err(|e| io("channel", e))?;
    declare_logs(&logs, s)
        .await
        .map_err(|e| io("declare the log queue", e))?;
    logs.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| io("confirm mode", e))?;
    Ok(Link {
        states: logs.clone(),
        logs,
        generation,
    })
}

/// Keeps the connection to the log parts' own broker: reconnects with backoff when it is
/// lost, for as long as the worker runs.
pub(super) async fn supervise_logs(
    mut conn: Connection,
    s: AmqpSettings,
    broker: Broker,
    link: watch::Sender<Option<Link>>,
    alive: watch::Receiver<()>,
    shared: Arc<Shared>,
) {
    let mut generation = 0;
    loop {
        while conn.status().connected() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if alive.has_changed().is_err() {
                let _ = conn.close(200, "worker stopped".into()).await;
                return;
            }
        }
        link.send_replace(None);
        let down = |why: Option<String>| shared.set_logs_down(why);
        down(Some("reconnecting".into()));
        tracing::warn!(
            "lost the connection to the logs broker {}; reconnecting",
            broker.masked()
        );
        generation += 1;
        let session = |c: Connection| {
            let s = &s;
            async move {
                let l = logs_session(&c, s, generation).await?;
                Ok((c, l))
            }
        };
        let (c, l) = reconnect(&broker, &down, session).await;
        link.send_replace(Some(l));
        down(None);
        tracing::warn!("reconnected to the logs broker {}", broker.masked());
        conn = c;
    }
}

/// Connects to `broker` again and again, with backoff, until `session` opens on a new
/// connection; each new reason it fails for is said once and given to `down`.
async fn reconnect<F, Fut>(
    broker: &Broker,
    down: &impl Fn(Option<String>),
    mut session: F,
) -> (Connection, Link)
where
    F: FnMut(Connection) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(Connection, Link)>>,
{
    let mut wait = Duration::from_millis(100);
    // A broker that is down says the same every time; a certificate that expired meanwhile
    // says something new. Numbers (a certificate's "expired 467 seconds ago", a port) do not
    // make a reason new.
    let mut said = String::new();
    let mut failed = |text: String| {
        let reason: String = text.chars().filter(|c| !c.is_ascii_digit()).collect();
        if reason != said {
            tracing::warn!("reconnecting: {text}");
            said = reason;
        }
        down(Some(text));
    };
    loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
        match broker.connect().await {
            Ok(c) => match session(c).await {
                Ok(done) => return done,
                Err(e) => failed(e.to_string()),
            },
            Err(e) => failed(e.to_string()),
        }
    }
}

/// One connection's worth of channels, shared by the jobs while it lives.
#[derive(Clone)]
pub(super) struct Link {
    /// State updates (and requeued jobs) go out here.
    pub(super) states: Channel,
    /// Log parts go out here: a channel of their own, as the original's log writer has (the
    /// broker works a channel's messages one after another; two share its load).
    pub(super) logs: Channel,
    /// Counts connections: a message that went out on an older one may have been lost.
    pub(super) generation: u64,
}

/// Which of a [`Link`]'s channels an [`Outbox`] publishes on.
#[derive(Clone, Copy, Debug)]
pub(super) enum Lane {
    States,
    Logs,
}

impl Link {
    pub(super) fn channel(&self, lane: Lane) -> &Channel {
        match lane {
            Lane::States => &self.states,
            Lane::Logs => &self.logs,
        }
    }
}

/// Declares the jobs queue and consumes it on a channel of its own (the one it replaces is
/// closed), handing the consumer to [`JobQueue::next`]; and keeps the count of waiting
/// messages fresh while that channel lives.
pub(super) async fn consume_jobs(
    conn: &Connection,
    generation: u64,
    s: &AmqpSettings,
    shared: &Arc<Shared>,
) -> std::io::Result<()> {
    declare_jobs_queue(conn, &s.queue_name).await?;
    let jobs = conn.create_channel().await.map_err(|e| io("channel", e))?;
    jobs.basic_qos(s.prefetch.max(1), BasicQosOptions::default())
        .await
        .map_err(|e| io("prefetch", e))?;
    let mut arguments = FieldTable::default();
    if let Some(p) = s.consumer_priority {
        arguments.insert("x-priority".into(), lapin::types::AMQPValue::LongInt(p));
    }
    let consumer = jobs
        .basic_consume(
            s.queue_name.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .map_err(|e| io(&format!("consume {}", s.queue_name), e))?;
    let number = shared.set_consumer(consumer, generation);
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
pub(super) async fn session(
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

    consume_jobs(conn, generation, s, shared).await?;

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
pub(super) async fn supervise(
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
                match consume_jobs(&conn, generation, &s, &shared).await {
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
        let down = |why: Option<String>| shared.set_down(why);
        down(Some("reconnecting".into()));
        tracing::warn!("lost the connection to {}; reconnecting", s.broker.masked());
        let session = |c: Connection| {
            // Each attempt is a new connection: its number tells its messages apart.
            generation += 1;
            let (s, cancels, shared, generation) = (&s, &cancels, &shared, generation);
            async move {
                let l = session(&c, s, cancels, shared, generation).await?;
                Ok((c, l))
            }
        };
        let (c, l) = reconnect(&s.broker, &down, session).await;
        link.send_replace(Some(l));
        down(None);
        tracing::warn!("reconnected to {}", s.broker.masked());
        conn = c;
    }
}
