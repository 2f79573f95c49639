//! Jobs per second through RabbitMQ, end to end (publish -> finish state received), with
//! fake (no sleep, 1 KiB log) through 1 and through 3 `host worker` processes, beside a
//! baseline on the same broker in the same run: a consumer that receives each job, publishes
//! the same state updates and one log part (confirmed), and acks, running nothing. Three
//! such consumers beside one give the machine's own ceiling for the 3-worker figure.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::artifacts::{self, Artifacts};
use crate::table::Row;

/// The broker: `AMQP_URL`, else the local one.
fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

struct Names {
    jobs: String,
    states: String,
    logs: String,
}

fn names(tag: &str) -> Names {
    let base = format!("bench-{}-{tag}", std::process::id());
    Names {
        states: format!("{base}.states"),
        logs: format!("{base}.logs"),
        jobs: base,
    }
}

async fn declare(ch: &Channel, n: &Names) {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for q in [&n.jobs, &n.states, &n.logs] {
        ch.queue_declare(q.as_str().into(), durable, FieldTable::default())
            .await
            .expect("declare");
    }
}

async fn delete(ch: &Channel, n: &Names) {
    for q in [&n.jobs, &n.states, &n.logs] {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

/// Publishes `jobs` jobs, then waits for every finish state; returns (seconds from the first
/// publish to the last finish, per-job latencies in ms).
async fn drive(conn: &Connection, n: &Names, jobs: usize) -> (f64, Vec<f64>) {
    let ch = conn.create_channel().await.expect("channel");
    let opts = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut states = ch
        .basic_consume(
            n.states.as_str().into(),
            "".into(),
            opts,
            FieldTable::default(),
        )
        .await
        .expect("consume states");
    let publisher = conn.create_channel().await.expect("channel");
    let t = Instant::now();
    let mut sent = HashMap::with_capacity(jobs);
    for id in 1..=jobs as u64 {
        let body = format!(r#"{{"job": {{"id": {id}}}, "script": "true\n"}}"#);
        sent.insert(id, t.elapsed());
        publisher
            .basic_publish(
                "".into(),
                n.jobs.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
    }
    let mut latencies = Vec::with_capacity(jobs);
    let deadline = Instant::now() + Duration::from_secs(600);
    while latencies.len() < jobs && Instant::now() < deadline {
        let Some(Ok(d)) = states.next().await else {
            break;
        };
        if d.properties.kind().as_ref().map(|k| k.as_str()) != Some("job:test:finish") {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&d.data).expect("state JSON");
        if let Some(at) = v["id"].as_u64().and_then(|id| sent.get(&id)) {
            latencies.push((t.elapsed() - *at).as_secs_f64() * 1e3);
        }
    }
    assert_eq!(latencies.len(), jobs, "every job finished");
    (t.elapsed().as_secs_f64(), latencies)
}

/// The baseline consumer: what a worker must do on the wire for a job, and nothing else.
async fn baseline_consumer(conn: Connection, n: Names, stop: tokio::sync::watch::Receiver<bool>) {
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(64, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut jobs = ch
        .basic_consume(
            n.jobs.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume jobs");
    let pubc = conn.create_channel().await.expect("channel");
    pubc.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let states = n.states.clone();
    let logs = n.logs.clone();
    loop {
        let d = tokio::select! {
            d = jobs.next() => match d { Some(Ok(d)) => d, _ => break },
            _ = async { let mut s = stop.clone(); let _ = s.changed().await; } => break,
        };
        let pubc = pubc.clone();
        let (states, logs) = (states.clone(), logs.clone());
        tokio::spawn(async move {
            let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
            let id = v["job"]["id"].as_u64().unwrap_or(0);
            let send = |key: String, kind: &'static str, body: String| {
                let pubc = pubc.clone();
                async move {
                    pubc.basic_publish(
                        "".into(),
                        key.as_str().into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_type(kind.into()),
                    )
                    .await
                    .expect("publish")
                    .await
                    .expect("confirm");
                }
            };
            send(
                states.clone(),
                "job:test:receive",
                format!(r#"{{"id":{id},"state":"received"}}"#),
            )
            .await;
            send(
                states.clone(),
                "job:test:start",
                format!(r#"{{"id":{id},"state":"started"}}"#),
            )
            .await;
            send(
                logs,
                "job:test:log",
                format!(
                    r#"{{"id":{id},"log":"{}","number":0,"final":true}}"#,
                    "x".repeat(1024)
                ),
            )
            .await;
            send(
                states,
                "job:test:finish",
                format!(r#"{{"id":{id},"state":"passed"}}"#),
            )
            .await;
            let _ = d.acker.ack(BasicAckOptions::default()).await;
        });
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Run {
    jobs_per_s: f64,
    p50: f64,
    p99: f64,
    /// CPU time of the worker processes per job (user + system), in microseconds.
    worker_cpu_us: Option<f64>,
}

/// User + system CPU time of process `pid` so far, in seconds (`/proc/PID/stat`).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let (utime, stime): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (hz > 0.0).then(|| (utime + stime) / hz)
}

fn measure(
    rt: &tokio::runtime::Runtime,
    jobs: usize,
    start: impl FnOnce(&Names) -> Vec<std::process::Child>,
    consumers: usize,
    tag: &str,
) -> Run {
    let n = names(tag);
    let conn = rt
        .block_on(Connection::connect(&url(), ConnectionProperties::default()))
        .expect("the broker (AMQP_URL or 127.0.0.1:5672)");
    let ch = rt.block_on(conn.create_channel()).expect("channel");
    rt.block_on(declare(&ch, &n));
    let mut children = start(&n);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Each baseline consumer on a connection of its own, as each worker has.
    for _ in 0..consumers {
        let c2 = rt
            .block_on(Connection::connect(&url(), ConnectionProperties::default()))
            .expect("connect");
        rt.spawn(baseline_consumer(c2, names(tag), stop_rx.clone()));
    }
    // Let the workers connect and start consuming.
    std::thread::sleep(Duration::from_millis(if consumers > 0 {
        200
    } else {
        1500
    }));
    let cpu_at = || -> Option<f64> { children.iter().map(|c| cpu_secs(c.id())).sum() };
    let cpu_before = cpu_at();
    let (secs, mut lat) = rt.block_on(drive(&conn, &n, jobs));
    let _ = stop_tx.send(true);
    let cpu = cpu_at()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    for c in &mut children {
        // SIGINT drains: an idle worker exits at once.
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(c.id().to_string())
            .status();
        let _ = c.wait();
    }
    rt.block_on(delete(&ch, &n));
    lat.sort_by(|a, b| a.total_cmp(b));
    Run {
        jobs_per_s: jobs as f64 / secs,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        worker_cpu_us: cpu
            .filter(|_| !children.is_empty())
            .map(|s| s * 1e6 / jobs as f64),
    }
}

fn workers<'a>(
    a: &'a Artifacts,
    plugins: &'a Path,
    count: usize,
) -> impl FnOnce(&Names) -> Vec<std::process::Child> + 'a {
    move |n: &Names| {
        (0..count)
            .map(|_| {
                Command::new(&a.host)
                    .arg("--plugin-dir")
                    .arg(plugins)
                    .args([
                        "worker",
                        "-b",
                        "fake",
                        "-c",
                        "LOG_BYTES=1KiB",
                        "--pool-size",
                        "64",
                        "--queue",
                        &url(),
                        "--queue-name",
                        &n.jobs,
                        "--state-queue",
                        &n.states,
                        "--log-queue",
                        &n.logs,
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("host worker")
            })
            .collect()
    }
}

/// The run with the median throughput.
fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.jobs_per_s.total_cmp(&b.jobs_per_s));
    runs.swap_remove(runs.len() / 2)
}

/// `rounds` rounds of (baseline, 1 worker, 3 workers, 3 baseline consumers), interleaved so
/// that a slow spell of the shared machine hits all alike; each figure is its median round.
/// Three baseline consumers against one is the machine's own scaling on this broker: what
/// three workers could reach at best if the workers cost nothing.
pub fn rows(a: &Artifacts, jobs: usize, rounds: usize) -> Vec<Row> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if rt
        .block_on(Connection::connect(&url(), ConnectionProperties::default()))
        .is_err()
    {
        let mut row = Row::new("worker on RabbitMQ: skipped");
        row.ours = "no broker (AMQP_URL or 127.0.0.1:5672)".into();
        return vec![row];
    }
    let plugins = artifacts::plugin_dir(&[("libfake.so".into(), &a.fake)]);
    let (mut base, mut one, mut three, mut base3) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        base.push(measure(&rt, jobs, |_| Vec::new(), 1, "base"));
        one.push(measure(&rt, jobs, workers(a, &plugins, 1), 0, "one"));
        three.push(measure(&rt, jobs, workers(a, &plugins, 3), 0, "three"));
        base3.push(measure(&rt, jobs, |_| Vec::new(), 3, "base3"));
    }
    let _ = std::fs::remove_dir_all(&plugins);
    let (base, one, three, base3) = (median(base), median(one), median(three), median(base3));
    let fmt = |r: &Run| {
        let cpu = r
            .worker_cpu_us
            .map(|us| format!(", worker CPU {us:.0} us/job"))
            .unwrap_or_default();
        format!(
            "{:.0} jobs/s, p50 {:.1} ms, p99 {:.1} ms{cpu}",
            r.jobs_per_s, r.p50, r.p99
        )
    };
    let mut r1 = Row::new(format!(
        "worker on RabbitMQ, 1 worker: {jobs} jobs end to end (fake, 1 KiB log, pool 64; median of {rounds})"
    ));
    r1.ours = fmt(&one);
    r1.baseline = format!("{} (consumer: same messages, no backend)", fmt(&base));
    r1.ratio = format!("{:.2}x", one.jobs_per_s / base.jobs_per_s);
    r1.target = ">= 0.8x".into();
    r1.verdict = crate::measure::verdict(one.jobs_per_s / base.jobs_per_s >= 0.8);
    let mut r3 = Row::new(format!(
        "worker on RabbitMQ, 3 workers: {jobs} jobs end to end"
    ));
    r3.ours = fmt(&three);
    r3.baseline = format!(
        "1 worker: {:.0} jobs/s (this machine's ceiling: 3 baseline consumers {:.0} jobs/s, {:.2}x one)",
        one.jobs_per_s,
        base3.jobs_per_s,
        base3.jobs_per_s / base.jobs_per_s
    );
    r3.ratio = format!("{:.2}x", three.jobs_per_s / one.jobs_per_s);
    r3.target = ">= 2.4x one worker".into();
    r3.verdict = crate::measure::verdict(three.jobs_per_s / one.jobs_per_s >= 2.4);
    vec![r1, r3]
}
