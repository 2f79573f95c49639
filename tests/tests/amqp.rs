//! `host worker` on RabbitMQ, as operators scale out: many workers on one broker, the
//! original's messages on the wire, a worker killed, the connection cut, cancel commands,
//! poison messages, a large log. Each test has queues of its own and deletes them.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use blackbox::{
    amqp_url, artifacts, host, plugin_dir, rabbitmqctl, run, signal, tls_broker, Guard,
};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{json, Value};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A message seen on a reporting queue: its AMQP type and JSON body.
#[derive(Clone, Debug)]
struct Seen {
    kind: String,
    body: Value,
}

/// Cutting every connection to the broker cuts the other tests' too: that test runs alone.
static BROKER_SHARED: std::sync::RwLock<()> = std::sync::RwLock::new(());
/// The same for the TLS broker.
static TLS_SHARED: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// How the tests reach the broker: plain AMQP to the tests' broker, or `amqps://` to the
/// private TLS node with its CA given (`--amqp-tls-cert-path`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    Plain,
    Tls,
}

impl Link {
    fn url(self) -> String {
        match self {
            Link::Plain => amqp_url().to_owned(),
            Link::Tls => tls_broker().url(),
        }
    }

    /// The arguments `host worker` and `host enqueue` take for it.
    fn args(self) -> Vec<String> {
        match self {
            Link::Plain => Vec::new(),
            Link::Tls => vec![
                "--amqp-tls-cert-path".into(),
                tls_broker().cert("ca.pem").display().to_string(),
            ],
        }
    }

    /// A connection of the test's own.
    fn connect(self, rt: &tokio::runtime::Runtime) -> Connection {
        match self {
            Link::Plain => rt
                .block_on(Connection::connect(
                    amqp_url(),
                    ConnectionProperties::default(),
                ))
                .expect("connect to the test broker"),
            Link::Tls => connect_tls(rt, &self.url()),
        }
    }

    fn shared(self) -> &'static std::sync::RwLock<()> {
        match self {
            Link::Plain => &BROKER_SHARED,
            Link::Tls => &TLS_SHARED,
        }
    }

    fn rabbitmqctl(self, args: &[&str]) {
        match self {
            Link::Plain => {
                rabbitmqctl(args);
            }
            Link::Tls => {
                tls_broker().rabbitmqctl(args);
            }
        }
    }
}

/// A connection of the test's own to `url` on the TLS node, verified with its CA.
fn connect_tls(rt: &tokio::runtime::Runtime, url: &str) -> Connection {
    let tls = host_worker::amqp::TlsSettings {
        ca_path: Some(tls_broker().cert("ca.pem")),
        ..Default::default()
    };
    let broker = host_worker::amqp::Broker::new(url, &tls, host_worker::amqp::DEFAULT_HEARTBEAT)
        .expect("the TLS broker's settings");
    rt.block_on(broker.connect())
        .expect("connect to the TLS broker")
}

/// Queues of one test on the broker, and a connection to read and write them.
struct Broker {
    _turn: BrokerTurn,
    link: Link,
    rt: tokio::runtime::Runtime,
    conn: Connection,
    jobs: String,
    states: String,
    logs: String,
    plugins: tempfile::TempDir,
    scripts: tempfile::TempDir,
}

impl Broker {
    fn new() -> Self {
        Self::over(Link::Plain)
    }

    fn over(link: Link) -> Self {
        Self::new_with(
            BrokerTurn::Shared(link.shared().read().unwrap_or_else(|e| e.into_inner())),
            link,
        )
    }

    fn new_with(turn: BrokerTurn, link: Link) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = format!(
            "hosttest-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let rt = runtime();
        let conn = link.connect(&rt);
        Self {
            _turn: turn,
            link,
            rt,
            conn,
            jobs: base.clone(),
            states: format!("{base}.states"),
            logs: format!("{base}.logs"),
            plugins: plugin_dir(&[
                ("libfake.so", &artifacts().fake),
                ("liblocal.so", &artifacts().local),
            ]),
            scripts: tempfile::tempdir().unwrap(),
        }
    }

    fn reconnect(&mut self) {
        self.conn = self.link.connect(&self.rt);
    }

    fn worker(&self, backend: &str, extra: &[&str]) -> Command {
        let mut cmd = host(self.plugins.path());
        cmd.args(["worker", "-b", backend, "--queue", &self.link.url()])
            .args(["--queue-name", &self.jobs])
            .args(self.link.args())
            .args(["--state-queue", &self.states, "--log-queue", &self.logs]);
        if backend == "local" {
            cmd.arg("-c")
                .arg(format!("SCRIPTS_DIR={}", self.scripts.path().display()));
        }
        cmd.args(extra);
        cmd
    }

    fn spawn_worker(&self, backend: &str, extra: &[&str]) -> Guard {
        let mut cmd = self.worker(backend, extra);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        Guard(cmd.spawn().unwrap())
    }

    /// Publishes job payloads straight to the jobs queue (faster than `host enqueue` each).
    fn publish_jobs(&self, docs: &[Value]) {
        let bodies: Vec<Vec<u8>> = docs.iter().map(|d| d.to_string().into_bytes()).collect();
        self.publish(&bodies);
    }

    /// Publishes raw bodies to the jobs queue, persistent, each confirmed.
    fn publish(&self, bodies: &[Vec<u8>]) {
        self.rt.block_on(async {
            // As the worker declares it; a queue a test declared with arguments of its own
            // refuses this (and closes that channel) and stays as it is.
            let declare = self.conn.create_channel().await.unwrap();
            let durable = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            let _ = declare
                .queue_declare(self.jobs.as_str().into(), durable, FieldTable::default())
                .await;
            let ch = self.conn.create_channel().await.unwrap();
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            for body in bodies {
                ch.basic_publish(
                    "".into(),
                    self.jobs.as_str().into(),
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            }
        })
    }

    /// Reads the state and log queues until `done` holds for what was read, for at most
    /// `secs`.
    fn collect(&self, secs: u64, done: impl Fn(&Reports) -> bool) -> Reports {
        self.collect_logs_on(&self.conn, secs, done)
    }

    /// [`Self::collect`] with the log queue read on `logs` (a broker of the logs' own).
    fn collect_logs_on(
        &self,
        logs: &Connection,
        secs: u64,
        done: impl Fn(&Reports) -> bool,
    ) -> Reports {
        self.rt.block_on(async {
            let ch = self.conn.create_channel().await.unwrap();
            let log_ch = logs.create_channel().await.unwrap();
            let durable = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            let opts = BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            };
            let mut consumers = Vec::new();
            for (ch, q) in [(&ch, &self.states), (&log_ch, &self.logs)] {
                ch.queue_declare(q.as_str().into(), durable, FieldTable::default())
                    .await
                    .unwrap();
                consumers.push(
                    ch.basic_consume(q.as_str().into(), "".into(), opts, FieldTable::default())
                        .await
                        .unwrap(),
                );
            }
            let mut logs = consumers.pop().unwrap();
            let mut states = consumers.pop().unwrap();
            let mut r = Reports::default();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
            while !done(&r) {
                let d = tokio::select! {
                    Some(Ok(d)) = states.next() => d,
                    Some(Ok(d)) = logs.next() => d,
                    _ = tokio::time::sleep_until(deadline) => break,
                };
                let seen = Seen {
                    kind: d
                        .properties
                        .kind()
                        .as_ref()
                        .map(|k| k.to_string())
                        .unwrap_or_default(),
                    body: serde_json::from_slice(&d.data).unwrap(),
                };
                let id = seen.body["id"].as_u64().unwrap();
                if seen.kind == "job:test:log" {
                    r.logs.entry(id).or_default().push(seen);
                } else {
                    r.states.entry(id).or_default().push(seen);
                }
            }
            r
        })
    }

    fn cancel(&self, job_id: u64) {
        self.rt.block_on(async {
            let ch = self.conn.create_channel().await.unwrap();
            ch.exchange_declare("worker.commands".into(), ExchangeKind::Fanout, ExchangeDeclareOptions::default(), FieldTable::default())
                .await
                .unwrap();
            let body = json!({"type": "cancel_job", "job_id": job_id, "source": "test", "reason": "a test asked"});
            ch.basic_publish("worker.commands".into(), "".into(), BasicPublishOptions::default(), body.to_string().as_bytes(), BasicProperties::default())
                .await
                .unwrap();
        })
    }

    /// The dead-letter exchange of [`Self::with_dead_letters`] and its queue.
    fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.jobs)
    }

    fn dead_letters(&self) -> String {
        format!("{}.dead", self.jobs)
    }

    /// Declares the jobs queue with a dead-letter exchange (as an operator does for
    /// rejected messages), and a queue that collects what it receives.
    fn with_dead_letters(&self) {
        let (dlx, dead) = (self.dead_letter_exchange(), self.dead_letters());
        self.rt.block_on(async {
            let ch = self.conn.create_channel().await.unwrap();
            ch.exchange_declare(
                dlx.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
            let durable = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            ch.queue_declare(dead.as_str().into(), durable, FieldTable::default())
                .await
                .unwrap();
            ch.queue_bind(
                dead.as_str().into(),
                dlx.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
            let mut args = FieldTable::default();
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dlx.as_str().into()),
            );
            ch.queue_declare(self.jobs.as_str().into(), durable, args)
                .await
                .unwrap();
        })
    }

    /// The bodies that reached the dead-letter queue, waiting up to 10 s for `n` of them.
    fn dead_lettered(&self, n: usize) -> Vec<Vec<u8>> {
        self.rt.block_on(async {
            let ch = self.conn.create_channel().await.unwrap();
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            while got.len() < n && Instant::now() < deadline {
                match ch
                    .basic_get(
                        self.dead_letters().as_str().into(),
                        BasicGetOptions { no_ack: true },
                    )
                    .await
                    .unwrap()
                {
                    Some(m) => got.push(m.delivery.data),
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            got
        })
    }

    fn waiting(&self) -> u32 {
        self.rt.block_on(async {
            let ch = self.conn.create_channel().await.unwrap();
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            ch.queue_declare(self.jobs.as_str().into(), passive, FieldTable::default())
                .await
                .unwrap()
                .message_count()
        })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let names = [
            self.jobs.clone(),
            self.states.clone(),
            self.logs.clone(),
            self.dead_letters(),
        ];
        let dlx = self.dead_letter_exchange();
        let conn = &self.conn;
        self.rt.block_on(async {
            if let Ok(ch) = conn.create_channel().await {
                for q in names {
                    let _ = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                let _ = ch
                    .exchange_delete(dlx.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
        });
    }
}

enum BrokerTurn {
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
}

#[derive(Default, Debug)]
struct Reports {
    states: BTreeMap<u64, Vec<Seen>>,
    logs: BTreeMap<u64, Vec<Seen>>,
}

impl Reports {
    fn finished(&self, id: u64) -> Vec<&str> {
        self.states
            .get(&id)
            .into_iter()
            .flatten()
            .filter(|s| s.kind == "job:test:finish")
            .filter_map(|s| s.body["state"].as_str())
            .collect()
    }

    fn all_finished(&self, ids: impl Iterator<Item = u64>) -> bool {
        ids.into_iter()
            .all(|id| !self.finished(id).is_empty() && self.final_part(id))
    }

    fn final_part(&self, id: u64) -> bool {
        self.logs
            .get(&id)
            .is_some_and(|p| p.iter().any(|s| s.body["final"] == true))
    }

    /// The log parts of job `id` in number order: each number once, from 0 with no gap, one
    /// final part and it the last (a number seen twice must be the same part twice); returns
    /// the log's text.
    fn log_text(&self, id: u64) -> String {
        let mut by_number: BTreeMap<u64, &Value> = BTreeMap::new();
        for p in self.logs.get(&id).into_iter().flatten() {
            let n = p.body["number"].as_u64().unwrap();
            if let Some(before) = by_number.insert(n, &p.body) {
                assert_eq!(
                    before, &p.body,
                    "job {id}: part {n} came twice with different contents"
                );
            }
        }
        let numbers: Vec<u64> = by_number.keys().copied().collect();
        assert_eq!(
            numbers,
            (0..numbers.len() as u64).collect::<Vec<_>>(),
            "job {id}: part numbers have a gap"
        );
        let finals: Vec<u64> = by_number
            .iter()
            .filter(|(_, b)| b["final"] == true)
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(
            finals,
            [numbers.len() as u64 - 1],
            "job {id}: one final part, the last"
        );
        by_number
            .values()
            .map(|b| b["log"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn job(id: u64, script: &str) -> Value {
    json!({"job": {"id": id, "number": format!("{id}.1"), "queued_at": "2026-11-26T00:00:00Z"},
           "uuid": format!("uuid-{id}"), "repository": {"slug": "test/repo"}, "script": script})
}

#[test]
fn three_workers_run_300_jobs_with_the_originals_messages() {
    three_workers_run_jobs(Link::Plain, 300);
}

#[test]
fn three_workers_run_150_jobs_over_amqps() {
    three_workers_run_jobs(Link::Tls, 150);
}

fn three_workers_run_jobs(link: Link, n: u64) {
    let b = Broker::over(link);
    let docs: Vec<Value> = (1..=n)
        .map(|id| job(id, &format!("job {id}\nexit {}\n", id % 3)))
        .collect();
    b.publish_jobs(&docs);
    let workers: Vec<Guard> = (0..3)
        .map(|_| {
            b.spawn_worker(
                "fake",
                &[
                    "--pool-size",
                    "8",
                    "-c",
                    "ECHO_SCRIPT=true",
                    "-c",
                    "SCRIPT_EXIT=true",
                ],
            )
        })
        .collect();
    let r = b.collect(120, |r| r.all_finished(1..=n));
    drop(workers);
    for id in 1..=n {
        let expected = ["passed", "failed", "errored"][(id % 3) as usize];
        assert_eq!(
            r.finished(id),
            [expected],
            "job {id}: exactly one finish state"
        );
        let states = &r.states[&id];
        let kinds: Vec<&str> = states.iter().map(|s| s.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["job:test:receive", "job:test:start", "job:test:finish"],
            "job {id}"
        );
        // The first log part carries the job's meta, as the original's does; no other part.
        for part in &r.logs[&id] {
            let meta = &part.body["meta"];
            if part.body["number"] == 0 {
                assert_eq!(meta["queued_at"], "2026-11-26T00:00:00Z", "{}", part.body);
                assert_eq!(meta["repo"], "test/repo", "{}", part.body);
                assert_eq!(meta["infra"], "fake", "{}", part.body);
            } else {
                assert!(meta.is_null(), "{}", part.body);
            }
        }
        let started = &states[1].body;
        assert_eq!(started["meta"]["image_name"], "fake", "{started}");
        assert_eq!(started["meta"]["warmed"], false, "{started}");
        let last = &states[2].body;
        assert_eq!(last["meta"]["state_update_count"], 3, "{last}");
        assert_eq!(last["meta"]["uuid"], format!("uuid-{id}"), "{last}");
        assert_eq!(last["meta"]["instance_id"], "fake", "{last}");
        for field in ["queued_at", "received_at", "started_at", "finished_at"] {
            assert!(last[field].is_string(), "job {id}: {field} in {last}");
        }
        assert_eq!(
            r.log_text(id),
            format!("job {id}\nexit {}\n", id % 3),
            "job {id}"
        );
    }
    assert_eq!(b.waiting(), 0);
}

#[test]
fn a_worker_killed_mid_run_loses_no_job_and_redeliveries_are_counted() {
    let b = Broker::new();
    let docs: Vec<Value> = (1..=300u64).map(|id| job(id, "x\n")).collect();
    b.publish_jobs(&docs);
    let args = [
        "--pool-size",
        "16",
        "-c",
        "RUN_SLEEP=1s",
        "-c",
        "ECHO_SCRIPT=true",
    ];
    let mut doomed = b.spawn_worker("fake", &args);
    let survivors: Vec<(Guard, String)> = (0..2)
        .map(|_| {
            let mut cmd = b.worker("fake", &args);
            cmd.args(["--http", "127.0.0.1:0"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut g = Guard(cmd.spawn().unwrap());
            let mut err = std::io::BufReader::new(g.0.stderr.take().unwrap());
            let url = loop {
                let mut line = String::new();
                assert!(std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0);
                if let Some(u) = line.trim().strip_prefix("host: worker HTTP endpoints on ") {
                    break u.to_owned();
                }
            };
            // Keep reading: a test must not be what blocks the worker's stderr.
            std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
            (g, url)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(2500));
    doomed.0.kill().unwrap(); // SIGKILL, mid-run: its deliveries are unacked
    doomed.wait();
    let r = b.collect(120, |r| r.all_finished(1..=300));
    for id in 1..=300u64 {
        assert!(!r.finished(id).is_empty(), "job {id} never finished");
        assert!(
            r.finished(id).iter().all(|s| *s == "passed"),
            "job {id}: {:?}",
            r.finished(id)
        );
    }
    let redeliveries: u64 = survivors
        .iter()
        .map(|(_, url)| {
            let out = Command::new("curl")
                .args(["-s", &format!("{url}/metrics")])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find(|l| l.starts_with("host_worker_redeliveries_total"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert!(
        redeliveries > 0,
        "the killed worker's jobs came back as redeliveries"
    );
    drop(survivors);
    assert_eq!(b.waiting(), 0);
}

/// Runs 40 local jobs of a second each on one worker, disrupts the broker 1.5 s in, and
/// checks that every job finishes with each run's log whole and its part numbers without gap.
fn jobs_survive(link: Link, disrupt: impl FnOnce()) {
    let alone = link.shared().write().unwrap_or_else(|e| e.into_inner());
    let mut b = Broker::new_with(BrokerTurn::Alone(alone), link);
    let docs: Vec<Value> = (1..=40u64)
        .map(|id| {
            job(
                id,
                &format!("echo job {id} begins\nsleep 1\necho job {id} ends\n"),
            )
        })
        .collect();
    b.publish_jobs(&docs);
    let w = b.spawn_worker("local", &["--pool-size", "8"]);
    std::thread::sleep(Duration::from_millis(1500));
    disrupt();
    // The test's own connection went too: it connects again to read the reports.
    b.reconnect();
    let r = b.collect(120, |r| r.all_finished(1..=40));
    for id in 1..=40u64 {
        assert!(
            !r.finished(id).is_empty(),
            "job {id} never finished: {:?}",
            r.states.get(&id)
        );
        // A job whose run straddled the disruption may have run twice (at least once, as
        // documented); each run's log is whole.
        let text = r.log_text(id);
        assert!(
            text.starts_with(&format!("job {id} begins\n")),
            "job {id}: {text:?}"
        );
        assert!(
            text.ends_with(&format!("job {id} ends\n")),
            "job {id}: {text:?}"
        );
    }
    // Deliveries the disruption left unacked come back; the worker answers them.
    let deadline = Instant::now() + Duration::from_secs(15);
    while b.waiting() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(b.waiting(), 0, "every redelivery answered");
    drop(w);
}

#[test]
fn cutting_the_broker_connection_mid_run_loses_no_job_and_no_log_part() {
    jobs_survive(Link::Plain, || {
        Link::Plain.rabbitmqctl(&["close_all_connections", "a test cuts the connection"]);
    });
}

#[test]
fn cutting_the_amqps_connection_mid_run_loses_no_job_and_no_log_part() {
    jobs_survive(Link::Tls, || {
        Link::Tls.rabbitmqctl(&["close_all_connections", "a test cuts the connection"]);
    });
}

/// Starts the broker's application again when dropped: a failing test must not leave the
/// machine's broker stopped.
struct StartApp;

impl Drop for StartApp {
    fn drop(&mut self) {
        rabbitmqctl(&["start_app"]);
        // Until it takes connections again.
        for _ in 0..120 {
            if std::net::TcpStream::connect(broker_addr()).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// host:port of the tests' broker.
fn broker_addr() -> String {
    let rest = amqp_url().split_once('@').map_or(amqp_url(), |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

#[test]
fn a_broker_restart_mid_run_loses_no_job_and_no_log_part() {
    jobs_survive(Link::Plain, || {
        let restart = StartApp;
        rabbitmqctl(&["stop_app"]);
        // Down long enough for the worker to try, and fail, to reconnect.
        std::thread::sleep(Duration::from_secs(3));
        drop(restart);
    });
}

/// Pids of live processes whose command line contains `marker`.
fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(marker)
                })
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn cancel_job_cancels_a_running_local_job_within_two_seconds() {
    let b = Broker::new();
    let marker = format!("sleep{}", std::process::id());
    b.publish_jobs(&[job(77, &format!("echo up\nexec -a {marker} sleep 300\n"))]);
    let w = b.spawn_worker("local", &["--pool-size", "1"]);
    let started = b.collect(30, |r| r.states.get(&77).is_some_and(|s| s.len() >= 2));
    assert_eq!(started.states[&77].len(), 2, "the job started");
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    b.cancel(77);
    let r = b.collect(10, |r| !r.finished(77).is_empty());
    assert_eq!(r.finished(77), ["canceled"]);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "cancelled in {:?}",
        t.elapsed()
    );
    assert_eq!(processes_with(&marker), 0, "no process of the job is left");
    drop(w);
}

#[test]
fn poison_messages_are_rejected_without_a_crash_loop_and_a_large_log_arrives_whole() {
    let b = Broker::new();
    b.publish(&[
        b"{this is not json".to_vec(),
        br#"{"job": {"number": "1"}}"#.to_vec(),
    ]);
    let big = "yes abcdefghijklmnopqrstuvwxyz | head -c 4194304\n";
    b.publish_jobs(&[job(5, big)]);
    let mut cmd = b.worker("local", &["--pool-size", "2"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut w = Guard(cmd.spawn().unwrap());
    let r = b.collect(60, |r| r.all_finished(5..=5));
    assert_eq!(r.finished(5), ["passed"]);
    let text = r.log_text(5);
    assert_eq!(text.len(), 4 << 20);
    assert!(text.starts_with("abcdefghijklmnopqrstuvwxyz\nabc"));
    assert!(r.logs[&5].len() > 100, "many parts: {}", r.logs[&5].len());
    assert_eq!(b.waiting(), 0, "the poison messages are not requeued");
    signal("-TERM", w.0.id());
    assert_eq!(w.wait().code(), Some(0));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut w.0.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(err.matches("rejected a queue entry").count(), 2, "{err}");
}

#[test]
fn host_enqueue_round_trips_through_the_broker() {
    enqueue_round_trip(Link::Plain);
}

#[test]
fn host_enqueue_round_trips_over_amqps() {
    enqueue_round_trip(Link::Tls);
}

fn enqueue_round_trip(link: Link) {
    let b = Broker::over(link);
    let f = blackbox::script(&job(9, "echo round trip\n").to_string());
    let mut cmd = host(b.plugins.path());
    cmd.args(["enqueue", "--queue", &link.url(), "--queue-name", &b.jobs])
        .args(link.args())
        .arg(f.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        !out.stderr.contains(":guest@"),
        "the password is masked: {}",
        out.stderr
    );
    let out = run(b.worker("fake", &["--exit-when-idle", "-c", "ECHO_SCRIPT=true"]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let r = b.collect(30, |r| r.all_finished(9..=9));
    assert_eq!(r.finished(9), ["passed"]);
    assert_eq!(r.log_text(9), "echo round trip\n");
}

#[test]
fn poison_messages_are_dead_lettered_when_the_jobs_queue_has_a_dlx() {
    let b = Broker::new();
    b.with_dead_letters();
    let poison = [b"not json at all".to_vec(), br#"{"job": {}}"#.to_vec()];
    b.publish(&poison);
    // host enqueue, like the worker, uses the queue as the operator declared it.
    let f = blackbox::script(&job(9, "echo fine\n").to_string());
    let mut cmd = host(b.plugins.path());
    cmd.args(["enqueue", "--queue", amqp_url(), "--queue-name", &b.jobs])
        .arg(f.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let w = b.spawn_worker("local", &["--pool-size", "2"]);
    let r = b.collect(60, |r| r.all_finished(9..=9));
    assert_eq!(r.finished(9), ["passed"]);
    assert_eq!(r.log_text(9), "fine\n");
    let mut dead = b.dead_lettered(2);
    dead.sort();
    let mut expected = poison.to_vec();
    expected.sort();
    assert_eq!(
        dead, expected,
        "the rejected messages, dead-lettered as they were"
    );
    assert_eq!(b.waiting(), 0);
    drop(w);
}

#[test]
fn a_worker_whose_consumer_the_broker_cancels_consumes_again() {
    let b = Broker::new();
    let w = b.spawn_worker("fake", &["--pool-size", "2", "-c", "ECHO_SCRIPT=true"]);
    b.publish_jobs(&[job(1, "echo one\n")]);
    let r = b.collect(30, |r| r.all_finished(1..=1));
    assert_eq!(r.finished(1), ["passed"]);
    // Deleting the queue cancels the worker's consumer; its connection stays up.
    b.rt.block_on(async {
        let ch = b.conn.create_channel().await.unwrap();
        ch.queue_delete(b.jobs.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    });
    std::thread::sleep(Duration::from_millis(500));
    // Published to the queue as declared again (by the test or by the worker).
    b.publish_jobs(&[job(2, "echo two\n")]);
    let r = b.collect(30, |r| r.all_finished(2..=2));
    assert_eq!(r.finished(2), ["passed"], "the worker consumes again");
    assert_eq!(r.log_text(2), "echo two\n");
    drop(w);
}

/// A vhost of the TLS node's own, where guest may do anything; deleted when dropped.
struct Vhost(String);

impl Vhost {
    fn new(name: String) -> Self {
        let v = Self(name);
        v.make();
        v
    }

    /// `amqps://` to it as guest, on the TLS node.
    fn url(&self) -> String {
        format!(
            "amqps://guest:guest@localhost:{}/{}",
            tls_broker().port,
            self.0
        )
    }

    /// Makes it (again).
    fn make(&self) {
        let tls = tls_broker();
        tls.rabbitmqctl(&["add_vhost", &self.0]);
        tls.rabbitmqctl(&["set_permissions", "-p", &self.0, "guest", ".*", ".*", ".*"]);
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", blackbox::TlsBroker::NODE, "delete_vhost", &self.0])
            .output();
    }
}

#[test]
fn log_parts_go_to_a_broker_of_their_own_across_a_cut_connection() {
    // Jobs and states on the tests' broker; log parts over amqps:// on a second vhost of the
    // private TLS node, named as an operator of the original names them.
    let b = Broker::new();
    let _tls_turn = TLS_SHARED.read().unwrap_or_else(|e| e.into_inner());
    let tls = tls_broker();
    let vhost = Vhost::new(format!("hostlogs-{}", std::process::id()));
    let logs_url = vhost.url();
    let ca = tls.cert("ca.pem");
    let ids: Vec<u64> = (1..=4).collect();
    let docs: Vec<Value> = ids
        .iter()
        .map(|&id| {
            job(
                id,
                &format!("for i in $(seq 1 20); do echo job {id} line $i; sleep 0.1; done"),
            )
        })
        .collect();
    b.publish_jobs(&docs);
    let mut cmd = b.worker("local", &["--exit-when-idle", "--pool-size", "4"]);
    cmd.env("TRAVIS_WORKER_LOGS_AMQP_URI", &logs_url)
        .env("TRAVIS_WORKER_LOGS_AMQP_TLS_CERT_PATH", &ca)
        .env("TRAVIS_WORKER_HOSTNAME", "builder-7")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut worker = Guard(cmd.spawn().unwrap());
    // Mid-run, the logs broker drops the worker's connection: the parts go again after the
    // reconnect, none lost.
    std::thread::sleep(Duration::from_millis(1200));
    tls.rabbitmqctl(&[
        "close_all_connections",
        "-p",
        &vhost.0,
        "a test cuts the logs connection",
    ]);
    // The test's own connection is made after the cut (the cut closes every connection of
    // the vhost).
    let logs = connect_tls(&b.rt, &logs_url);

    let got = b.collect_logs_on(&logs, 60, |r| r.all_finished(ids.iter().copied()));
    let (status, stderr) = worker.wait_with_stderr();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("lost the connection to the logs broker"),
        "the cut was not seen: {stderr}"
    );
    for id in ids {
        assert_eq!(got.finished(id), ["passed"], "job {id}: {stderr}");
        let text = got.log_text(id);
        let lines: String = (1..=20).map(|i| format!("job {id} line {i}\n")).collect();
        let (head, rest) = text
            .split_once("travis_fold:end:worker_info\r\x1b[0K")
            .unwrap_or_else(|| panic!("job {id}: no worker information fold: {text:?}"));
        assert!(head.contains("hostname: builder-7\n"), "{head:?}");
        assert!(head.contains("(via amqp)"), "{head:?}");
        assert_eq!(rest, lines, "job {id}");
    }
    // Nothing went to the jobs' broker's log queue (the worker does not even declare it).
    let on_jobs_broker = b.rt.block_on(async {
        let ch = b.conn.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        ch.queue_declare(b.logs.as_str().into(), passive, FieldTable::default())
            .await
            .map_or(0, |q| q.message_count())
    });
    assert_eq!(on_jobs_broker, 0);
    drop(logs);
}

/// Removes a policy of the tests' broker when dropped.
struct Policy(String);

impl Drop for Policy {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["clear_policy", &self.0]);
    }
}

#[test]
fn refused_log_parts_go_out_again_after_pauses_said_once() {
    // The log queue holds 2 messages and refuses more (reject-publish): the broker nacks
    // the job's next parts until the test reads the queue.
    let b = Broker::new();
    let policy = Policy(format!("{}-full", b.logs));
    let out = rabbitmqctl(&[
        "set_policy",
        &policy.0,
        &format!("^{}$", b.logs.replace('.', "\\.")),
        r#"{"max-length": 2, "overflow": "reject-publish"}"#,
        "--apply-to",
        "queues",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.publish_jobs(&[job(
        5,
        "for i in $(seq 1 6); do echo line $i; sleep 0.6; done",
    )]);
    let mut cmd = b.worker("local", &["--exit-when-idle"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut worker = Guard(cmd.spawn().unwrap());
    // Parts are refused for a while (the job writes for 3.6 s, a part every 500 ms).
    std::thread::sleep(Duration::from_secs(6));
    let got = b.collect(60, |r| r.all_finished([5].into_iter()));
    let (status, stderr) = worker.wait_with_stderr();
    assert!(status.success(), "{stderr}");
    assert_eq!(got.finished(5), ["passed"]);
    let lines: String = (1..=6).map(|i| format!("line {i}\n")).collect();
    assert_eq!(got.log_text(5), lines);
    // Said once, not once per refusal: a loop as fast as the broker answers printed
    // thousands of lines a second.
    assert_eq!(
        stderr.matches("the broker refused a message").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn no_job_is_taken_while_the_logs_broker_is_down() {
    let b = Broker::new();
    let _tls_turn = TLS_SHARED.read().unwrap_or_else(|e| e.into_inner());
    let tls = tls_broker();
    let vhost = Vhost::new(format!("hostlogsdown-{}", std::process::id()));
    let logs_url = vhost.url();
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = http.local_addr().unwrap().to_string();
    drop(http);
    let mut cmd = b.worker("local", &["--http", &addr]);
    cmd.args(["--logs-amqp-uri", &logs_url])
        .arg("--logs-amqp-tls-cert-path")
        .arg(tls.cert("ca.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut worker = Guard(cmd.spawn().unwrap());
    let ready = || {
        std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{addr}/ready"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready() != "200" {
        assert!(Instant::now() < deadline, "the worker did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The logs broker goes away (its vhost with it): not ready, and a job waits.
    tls.rabbitmqctl(&["delete_vhost", &vhost.0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready() != "503" {
        assert!(
            Instant::now() < deadline,
            "still ready without the logs broker"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    b.publish_jobs(&[job(9, "echo after the outage")]);
    let early = b.collect(3, |r| !r.states.is_empty());
    assert!(
        early.states.is_empty(),
        "a job was taken: {:?}",
        early.states
    );
    // Back: the job runs, its log on the logs broker.
    vhost.make();
    let logs = connect_tls(&b.rt, &logs_url);
    let got = b.collect_logs_on(&logs, 60, |r| r.all_finished([9].into_iter()));
    assert_eq!(got.finished(9), ["passed"], "{:?}", got.states);
    assert_eq!(got.log_text(9), "after the outage\n");
    // A stop while the logs broker is down says what it waits for.
    drop(logs);
    tls.rabbitmqctl(&["delete_vhost", &vhost.0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready() != "503" {
        assert!(
            Instant::now() < deadline,
            "still ready without the logs broker"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    blackbox::signal("-TERM", worker.0.id());
    let (status, stderr) = worker.wait_with_stderr();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("SIGTERM: the connection to amqps://guest:***@localhost")
            && stderr.contains("the stop waits for it"),
        "{stderr}"
    );
}
