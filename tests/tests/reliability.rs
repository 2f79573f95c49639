//! Regression tests for the reliability and security defects an adversarial pass found
//! (D1..D18 of its report; D10 and D11, the HTTP server's, are tested elsewhere). Each test
//! runs the real binary the way an operator would, and holds the rule its doc comment names:
//! no job is lost or run twice at once, the worker always answers and always stops, and what
//! it prints tells the truth.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blackbox::worker::{
    exit_within, hostname, http, is_root, job, poll, put_in, run_within, spawn_lines, tail,
    worker_up, Lines, Mounts, Queue, FINAL,
};
use blackbox::{amqp_url, artifacts, host, plugin_dir, signal, workspace, Guard};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Support (the directory queue, a worker's stderr, bounded waits: `blackbox::worker`)
// ---------------------------------------------------------------------------------------

/// A marker no other process has, for `exec -a MARKER` in a job's script.
fn unique_marker(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "reliability-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Pids of live processes whose command line contains `marker`.
fn pids_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && runs(pid, marker))
        .collect()
}

/// Whether process `pid` lives with `marker` in its command line (a reused pid is not it).
fn runs(pid: u32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(marker))
        .unwrap_or(false)
}

/// Kills, when dropped, the processes a test's jobs started (found by their marker), so a
/// failing test leaves no `sleep` behind.
struct Sweep(String);

impl Drop for Sweep {
    fn drop(&mut self) {
        for pid in pids_with(&self.0) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

// ---------------------------------------------------------------------------------------
// RabbitMQ support
// ---------------------------------------------------------------------------------------

/// A state message: its AMQP type and JSON body.
#[derive(Debug)]
struct Seen {
    kind: String,
    body: Value,
}

#[derive(Default, Debug)]
struct Reports {
    states: BTreeMap<u64, Vec<Seen>>,
}

impl Reports {
    /// The message types of job `id`, in order.
    fn kinds(&self, id: u64) -> Vec<String> {
        self.states
            .get(&id)
            .into_iter()
            .flatten()
            .map(|s| s.kind.clone())
            .collect()
    }

    fn count(&self, id: u64, kind: &str) -> usize {
        self.kinds(id).iter().filter(|k| *k == kind).count()
    }

    /// The states of job `id`'s finish messages.
    fn finished(&self, id: u64) -> Vec<String> {
        self.states
            .get(&id)
            .into_iter()
            .flatten()
            .filter(|s| s.kind == "job:test:finish")
            .map(|s| s.body["state"].as_str().unwrap_or("?").to_owned())
            .collect()
    }
}

/// Queues of one test on the broker (deleted when dropped), and a connection to them.
struct Broker {
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
        static N: AtomicU32 = AtomicU32::new(0);
        let base = format!(
            "reliability-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        // The plugins first: building them may take minutes, longer than a connection
        // opened before would be kept.
        let plugins = plugin_dir(&[
            ("libfake.so", &artifacts().fake),
            ("liblocal.so", &artifacts().local),
        ]);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let conn = rt
            .block_on(Connection::connect(
                amqp_url(),
                ConnectionProperties::default(),
            ))
            .expect("connect to the test broker");
        let b = Self {
            rt,
            conn,
            jobs: base.clone(),
            states: format!("{base}.states"),
            logs: format!("{base}.logs"),
            plugins,
            scripts: tempfile::tempdir().unwrap(),
        };
        // Declared up front (as the worker declares them), so no state is dropped for want
        // of a queue before the test reads them.
        b.rt.block_on(async {
            let ch = b.conn.create_channel().await.unwrap();
            let durable = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            for q in [&b.jobs, &b.states, &b.logs] {
                ch.queue_declare(q.as_str().into(), durable, FieldTable::default())
                    .await
                    .unwrap();
            }
        });
        b
    }

    fn worker(&self, backend: &str, extra: &[&str]) -> Command {
        let mut cmd = host(self.plugins.path());
        cmd.args(["worker", "-b", backend, "--queue", amqp_url()])
            .args(["--queue-name", &self.jobs])
            .args(["--state-queue", &self.states, "--log-queue", &self.logs]);
        if backend == "local" {
            cmd.arg("-c")
                .arg(format!("SCRIPTS_DIR={}", self.scripts.path().display()));
        }
        cmd.args(extra);
        cmd
    }

    /// Publishes job payloads to the jobs queue, persistent, each confirmed.
    fn publish_jobs(&self, docs: &[Value]) {
        self.rt.block_on(async {
            let ch = self.conn.create_channel().await.unwrap();
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            for doc in docs {
                ch.basic_publish(
                    "".into(),
                    self.jobs.as_str().into(),
                    BasicPublishOptions::default(),
                    doc.to_string().as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            }
        })
    }

    /// Reads the state queue until `done` holds for what was read, for at most `secs`.
    fn collect(&self, secs: u64, done: impl Fn(&Reports) -> bool) -> Reports {
        self.rt.block_on(async {
            let ch = self.conn.create_channel().await.unwrap();
            let opts = BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            };
            let mut states = ch
                .basic_consume(
                    self.states.as_str().into(),
                    "".into(),
                    opts,
                    FieldTable::default(),
                )
                .await
                .unwrap();
            let mut r = Reports::default();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
            while !done(&r) {
                let d = tokio::select! {
                    Some(Ok(d)) = states.next() => d,
                    _ = tokio::time::sleep_until(deadline) => break,
                };
                let seen = Seen {
                    kind: d
                        .properties
                        .kind()
                        .as_ref()
                        .map(|k| k.to_string())
                        .unwrap_or_default(),
                    body: serde_json::from_slice(&d.data).unwrap_or_default(),
                };
                let id = seen.body["id"].as_u64().unwrap_or(0);
                r.states.entry(id).or_default().push(seen);
            }
            r
        })
    }

    /// Messages waiting in the jobs queue.
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
        let names = [self.jobs.clone(), self.states.clone(), self.logs.clone()];
        let conn = &self.conn;
        self.rt.block_on(async {
            // The test's connection may have been closed meanwhile (a missed heartbeat on a
            // loaded machine): then a new one, so that no queue is left behind.
            let fresh;
            let ch = match conn.create_channel().await {
                Ok(ch) => Ok(ch),
                Err(_) => {
                    fresh = Connection::connect(amqp_url(), ConnectionProperties::default()).await;
                    match &fresh {
                        Ok(c) => c.create_channel().await,
                        Err(e) => Err(e.clone()),
                    }
                }
            };
            if let Ok(ch) = ch {
                for q in names {
                    let _ = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------
// D1, D2: RabbitMQ requeues
// ---------------------------------------------------------------------------------------

/// Runs `jobs` jobs whose start always fails on one worker with `--max-requeues 3` and
/// `--exit-when-idle` at `pool`, and checks that each was tried 4 times and then errored.
fn start_errors_end_every_job(pool: &str, jobs: u64) {
    let b = Broker::new();
    let docs: Vec<Value> = (1..=jobs).map(|id| job(id, "echo hi\n")).collect();
    b.publish_jobs(&docs);
    let (mut w, err) = spawn_lines(b.worker(
        "fake",
        &[
            "-c",
            "START_ERROR=boom",
            "--pool-size",
            pool,
            "--max-requeues",
            "3",
            "--exit-when-idle",
        ],
    ));
    let exited = exit_within(&mut w, 60.0);
    drop(w);
    let r = b.collect(5, |r| (1..=jobs).all(|id| !r.finished(id).is_empty()));
    let stderr = tail(&err.finish(2.0), 15);
    let mut problems = Vec::new();
    for id in 1..=jobs {
        let kinds = r.kinds(id);
        if r.finished(id) != ["errored"] {
            problems.push(format!("job {id} never ended errored: states {kinds:?}"));
        } else if r.count(id, "job:test:receive") != 4 || r.count(id, "job:test:reset") != 3 {
            problems.push(format!(
                "job {id} was not tried max_requeues + 1 = 4 times: states {kinds:?}"
            ));
        }
    }
    let waiting = b.waiting();
    if waiting != 0 {
        problems.push(format!("{waiting} message(s) left in the jobs queue"));
    }
    if exited.is_none() {
        problems.push("the worker did not exit when idle within 60 s".into());
    }
    assert!(
        problems.is_empty(),
        "{}\nworker stderr (tail):\n{stderr}",
        problems.join("\n")
    );
}

/// D1 (RabbitMQ: a requeued job is lost when the worker has a free slot). Rule: a job whose
/// start fails is requeued, tried `--max-requeues` + 1 times in all and then errored; a
/// requeue never acks the republished message, so the job is never lost in silence.
#[test]
fn a_requeued_job_is_not_lost_when_the_worker_has_a_free_slot() {
    start_errors_end_every_job("2", 1);
}

/// D1, with many free slots: 5 jobs whose start fails on a worker with `--pool-size 8` each
/// end errored after 4 tries; none is lost.
#[test]
fn five_requeued_jobs_on_a_pool_of_eight_each_end_errored() {
    start_errors_end_every_job("8", 5);
}

/// D2 (RabbitMQ: a job requeued by worker A and then redelivered to A is dropped). Rule: a
/// redelivery of a job this worker requeued earlier is run, not acked as already finished:
/// after worker B dies mid-job, the job reaches a final state (errored on A, whose starts
/// fail), within a bounded time.
#[test]
fn a_job_requeued_by_a_worker_and_redelivered_to_it_after_another_died_still_ends() {
    let b = Broker::new();
    let marker = unique_marker("d2");
    let _sweep = Sweep(marker.clone());
    let (_a, a_err) = spawn_lines(b.worker(
        "fake",
        &[
            "-c",
            "START_ERROR=boom",
            "-c",
            "START_SLEEP=2s",
            "--max-requeues",
            "2",
            "--pool-size",
            "1",
        ],
    ));
    worker_up(&a_err);
    b.publish_jobs(&[job(1001, &format!("exec -a {marker} sleep 20\n"))]);
    std::thread::sleep(Duration::from_millis(500));
    // B comes up while A's first start is failing: A's republished job goes to B.
    let (mut bw, b_err) = spawn_lines(b.worker("local", &["--pool-size", "1"]));
    let started = b_err.wait_for(30.0, |l| l.contains("job 1001 started"));
    assert!(
        started.is_some(),
        "precondition: worker B never started job 1001\nA:\n{}\nB:\n{}",
        a_err.text(),
        b_err.text()
    );
    bw.0.kill().unwrap(); // SIGKILL, mid-job: the broker redelivers to A
    bw.wait();
    let r = b.collect(20, |r| !r.finished(1001).is_empty());
    assert!(
        !r.finished(1001).is_empty(),
        "job 1001 was acked without a final state: states {:?}, {} message(s) waiting\nA:\n{}",
        r.kinds(1001),
        b.waiting(),
        tail(&a_err.text(), 15)
    );
}

// ---------------------------------------------------------------------------------------
// D3, D4: a directory queue that cannot be used
// ---------------------------------------------------------------------------------------

/// Deletes DIR/claimed (or DIR whole) under a running worker and drops a job into new/:
/// the worker's claims now fail with ENOENT.
fn break_queue(q: &Queue, whole: bool) {
    let gone = if whole {
        q.root().to_owned()
    } else {
        q.path("claimed")
    };
    remove_tree(&gone);
    q.put("b.json", &job(61, "echo x\n"));
}

/// `rm -rf path`, retried while a worker makes directories in it again meanwhile.
fn remove_tree(path: &Path) {
    for _ in 0..100 {
        match std::fs::remove_dir_all(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    panic!("cannot remove {}", path.display());
}

/// D3 (deleting DIR or DIR/claimed makes the worker spin for ever). Rule: a claim that fails
/// because the queue's directories are gone does not spin: /healthz keeps answering within
/// 2 s, and once the directories are back (made again by the operator; the worker makes its
/// own claim directory again) the job waiting in new/, and one dropped in after, run.
#[test]
fn a_worker_whose_queue_directories_are_deleted_keeps_answering_and_runs_jobs_once_they_are_back() {
    for whole in [false, true] {
        let what = if whole { "DIR" } else { "DIR/claimed" };
        let q = Queue::new();
        let (mut w, err, url) = q.worker_with_http("local", &[]);
        break_queue(&q, whole);
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            let asked = Instant::now();
            let (code, _) = http("GET", &format!("{url}/healthz"));
            assert_eq!(
                code,
                200,
                "{what} deleted: /healthz did not answer within 2 s (gave up after {:?})\n{}",
                asked.elapsed(),
                tail(&err.text(), 10)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        q.restore();
        q.put("c.json", &job(62, "echo y\n"));
        let ran = poll(15.0, || {
            q.last_state(61).as_deref() == Some("passed")
                && q.last_state(62).as_deref() == Some("passed")
        });
        assert!(
            ran,
            "{what} deleted then made again: the jobs did not run (states 61 {:?}, 62 {:?})\n{}{}",
            q.state_names(61),
            q.state_names(62),
            q.listing(),
            tail(&err.text(), 10)
        );
        signal("-INT", w.0.id());
        let status = exit_within(&mut w, 10.0);
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "{what}: SIGINT did not end the worker with 0 within 10 s"
        );
    }
}

/// D3 (the worker ignores signals while its queue's directories are gone). Rule: SIGINT
/// ends a worker whose DIR/claimed (or DIR) was deleted under it within 10 s, exit 0.
#[test]
fn sigint_stops_a_worker_whose_queue_directories_are_deleted() {
    for whole in [false, true] {
        let what = if whole { "DIR" } else { "DIR/claimed" };
        let q = Queue::new();
        let (mut w, err, _url) = q.worker_with_http("local", &[]);
        break_queue(&q, whole);
        std::thread::sleep(Duration::from_millis(500));
        signal("-INT", w.0.id());
        let status = exit_within(&mut w, 10.0);
        assert!(
            status.is_some(),
            "{what} deleted: the worker still runs 10 s after SIGINT\n{}",
            tail(&err.text(), 10)
        );
        assert_eq!(status.unwrap().code(), Some(0), "{}", tail(&err.text(), 10));
    }
}

/// D4 (a read-only queue makes the worker spin and flood stderr). Rule: claims that fail
/// with EROFS back off: stderr stays small (< 50 lines over 3 s), /ready says 503 while the
/// queue cannot be used, and once it is writable again the job runs. Needs root and
/// `mount`; without them it says why and checks nothing.
#[test]
fn a_read_only_queue_does_not_flood_stderr_and_the_worker_says_it_is_not_ready() {
    if !is_root() {
        eprintln!("skipped: making the queue read-only needs root (a bind mount)");
        return;
    }
    let q = Queue::new();
    let alt = tempfile::tempdir().unwrap();
    let (mut w, err, url) = q.worker_with_http("local", &[]);
    let root = q.root().to_str().unwrap().to_owned();
    let alt_path = alt.path().to_str().unwrap().to_owned();
    let mut mounts = Mounts::default();
    // A writable view of the queue (to put the job in), then the queue itself read-only.
    let mounted = mounts
        .mount(&["--bind", &root, &alt_path], alt.path())
        .and_then(|()| mounts.mount(&["--bind", &root, &root], q.root()))
        .and_then(|()| mounts.mount(&["-o", "remount,ro,bind", &root], q.root()));
    if let Err(why) = mounted {
        eprintln!("skipped: cannot make the queue read-only: {why}");
        return;
    }
    put_in(
        &alt.path().join("new"),
        "c.json",
        job(72, "echo x\n").to_string().as_bytes(),
    );
    let before = err.count();
    let began = Instant::now();
    let mut ready = Vec::new();
    while began.elapsed() < Duration::from_secs(3) {
        ready.push(http("GET", &format!("{url}/ready")).0);
        std::thread::sleep(Duration::from_millis(100));
    }
    let flood = err.count() - before;
    let lines = err.lines();
    mounts.umount_all();
    assert!(
        flood < 50,
        "{flood} stderr lines in 3 s on a read-only queue; the first:\n{}",
        lines[before.min(lines.len())..]
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        ready.last(),
        Some(&503),
        "/ready while the queue is read-only: {ready:?}"
    );
    let ran = poll(15.0, || q.last_state(72).as_deref() == Some("passed"));
    assert!(
        ran,
        "the queue is writable again but job 72 did not run: {:?}\n{}{}",
        q.state_names(72),
        q.listing(),
        tail(&err.text(), 10)
    );
    signal("-TERM", w.0.id());
    assert!(exit_within(&mut w, 10.0).is_some());
}

// ---------------------------------------------------------------------------------------
// D5, D6, D8: standard streams
// ---------------------------------------------------------------------------------------

/// Reads `stderr` (in a thread, for at most 30 s) until a line for which `f` holds; returns
/// the lines read and the reader, for the caller to close.
fn read_until(
    stderr: std::process::ChildStderr,
    f: impl Fn(&str) -> bool + Send + 'static,
) -> (Vec<String>, BufReader<std::process::ChildStderr>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut seen = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(n) if n > 0 => {
                    let hit = f(&line);
                    seen.push(line);
                    if hit {
                        break;
                    }
                }
                _ => break,
            }
        }
        let _ = tx.send((seen, reader));
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("no line on stderr within 30 s")
}

/// D5 (when the stderr reader goes away, the worker cannot be stopped). Rule: a write to a
/// stderr whose reader is gone never kills the signal handling: SIGTERM ends the worker
/// within 10 s, exit 0.
#[test]
fn a_worker_whose_stderr_reader_went_away_still_stops_on_sigterm() {
    let q = Queue::new();
    let mut cmd = q.worker("fake", &[]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut w = Guard(cmd.spawn().unwrap());
    let (seen, reader) = read_until(w.0.stderr.take().unwrap(), |l| l.contains("job(s) at once"));
    assert!(
        seen.last().is_some_and(|l| l.contains("job(s) at once")),
        "the worker never started: {seen:?}"
    );
    drop(reader); // like `| head -1` ending
    signal("-TERM", w.0.id());
    let status = exit_within(&mut w, 10.0);
    assert!(
        status.is_some(),
        "the worker still runs 10 s after SIGTERM (its stderr reader went away)"
    );
    assert_eq!(status.unwrap().code(), Some(0));
}

/// D5 (a SIGUSR2 pause taken while stderr has no reader can never be undone). Rule: with
/// the stderr reader gone, SIGUSR2 pauses, a second SIGUSR2 resumes (jobs run again), and
/// SIGTERM then ends the worker within 10 s.
#[test]
fn sigusr2_twice_then_sigterm_work_after_the_stderr_reader_went_away() {
    let q = Queue::new();
    let mut cmd = q.worker("fake", &["--http", "127.0.0.1:0"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut w = Guard(cmd.spawn().unwrap());
    let (seen, reader) = read_until(w.0.stderr.take().unwrap(), |l| l.contains("job(s) at once"));
    drop(reader);
    let prefix = "host: worker HTTP endpoints on ";
    let url = seen
        .iter()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no HTTP line: {seen:?}"))
        .to_owned();
    let ready = || http("GET", &format!("{url}/ready")).0;
    assert_eq!(ready(), 200);
    signal("-USR2", w.0.id());
    assert!(
        poll(5.0, || ready() == 503),
        "the first SIGUSR2 did not pause"
    );
    signal("-USR2", w.0.id());
    assert!(
        poll(5.0, || ready() == 200),
        "the second SIGUSR2 did not resume intake (stderr's reader is gone)"
    );
    q.put("1.json", &job(1, "one\n"));
    assert!(
        poll(10.0, || q.last_state(1).as_deref() == Some("passed")),
        "a job after the resume did not run: {:?}",
        q.state_names(1)
    );
    signal("-TERM", w.0.id());
    let status = exit_within(&mut w, 10.0);
    assert!(status.is_some(), "the worker still runs 10 s after SIGTERM");
    assert_eq!(status.unwrap().code(), Some(0));
}

/// D6 (`host run`: when the stderr reader goes away mid-job, exit is 101 and the summary is
/// empty). Rule: SIGPIPE/EPIPE on stderr never ends `host run`: it exits with the script's
/// code (0) and the `--json-summary` file holds the summary.
#[test]
fn host_run_whose_stderr_reader_goes_away_mid_job_exits_with_the_scripts_code_and_writes_its_summary(
) {
    let plugins = plugin_dir(&[("liblocal.so", &artifacts().local)]);
    let scripts = tempfile::tempdir().unwrap();
    let script = blackbox::script("sleep 1; echo done\n");
    let summary = plugins.path().join("summary.json");
    let mut cmd = host(plugins.path());
    cmd.args(["run", "--backend", "local", "-c"])
        .arg(format!("SCRIPTS_DIR={}", scripts.path().display()))
        .arg("--json-summary")
        .arg(&summary)
        .arg(script.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = Guard(cmd.spawn().unwrap());
    let (seen, reader) = read_until(child.0.stderr.take().unwrap(), |_| true);
    drop(reader); // like `| head -1`, mid-job
    let status = exit_within(&mut child, 30.0).expect("host run did not end within 30 s");
    let text = std::fs::read_to_string(&summary).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status (first stderr line {seen:?}); summary {text:?}"
    );
    assert!(!text.is_empty(), "the summary file is empty");
    let json: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the summary is not JSON ({e}): {text}"));
    assert_eq!(json["outcome"], "passed", "{json}");
}

/// D8 (a read-write /dev/null on stdout counts as "standard output is closed"). Rule: a
/// /dev/null opened read-write (Python's DEVNULL, daemon(3), `1<>/dev/null`) is a working
/// stdout: the job runs and `host run` exits 0.
#[test]
fn host_run_with_a_read_write_dev_null_on_stdout_runs_the_job() {
    let plugins = plugin_dir(&[("libfake.so", &artifacts().fake)]);
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap();
    let mut cmd = host(plugins.path());
    cmd.current_dir(workspace())
        .args(["run", "--backend", "fake", "./examples/jobs/hello.sh"])
        .stdout(Stdio::from(null))
        .stderr(Stdio::piped());
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// D7, D16: names of queues
// ---------------------------------------------------------------------------------------

/// D7 (a queue name longer than 255 bytes panics). Rule: `--queue-name`, `--state-queue`
/// and `--log-queue` of the worker and `--queue-name` of `host enqueue` longer than AMQP's
/// 255 bytes are usage errors: exit 64, naming the limit.
#[test]
fn a_queue_name_longer_than_255_bytes_is_a_usage_error_naming_the_limit() {
    let b = Broker::new();
    let long = "x".repeat(300);
    let hello = workspace().join("examples/jobs/hello.json");
    let worker = |name: &str, state: &str, log: &str| {
        let mut cmd = host(b.plugins.path());
        cmd.args(["worker", "-b", "fake", "--queue", amqp_url()])
            .args(["--queue-name", name, "--state-queue", state])
            .args(["--log-queue", log, "--exit-when-idle"]);
        cmd
    };
    let mut enqueue = host(b.plugins.path());
    enqueue
        .args(["enqueue", "--queue", amqp_url(), "--queue-name", &long])
        .arg(&hello);
    let cases = [
        ("worker --queue-name", worker(&long, &b.states, &b.logs)),
        ("worker --state-queue", worker(&b.jobs, &long, &b.logs)),
        ("worker --log-queue", worker(&b.jobs, &b.states, &long)),
        ("enqueue --queue-name", enqueue),
    ];
    let mut problems = Vec::new();
    for (what, cmd) in cases {
        let (code, exited, stderr) = run_within(cmd, 20.0);
        if !exited {
            problems.push(format!("{what}: still running after 20 s"));
        } else if code != Some(64) || !stderr.contains("255") {
            let head: Vec<&str> = stderr.lines().take(2).collect();
            problems.push(format!("{what}: exit {code:?}, stderr {head:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// D16 (`file:/dir` and `file://localhost/dir` silently become relative directories). Rule:
/// both name the absolute directory (RFC 8089): the job lands in /abs/dir/new and nothing is
/// made relative to the working directory; `file://otherhost/x` is refused with exit 64.
#[test]
fn file_urls_with_one_slash_or_localhost_name_the_absolute_directory() {
    let plugins = plugin_dir(&[("libfake.so", &artifacts().fake)]);
    let hello = workspace().join("examples/jobs/hello.json");
    let target = tempfile::tempdir().unwrap();
    let abs = target.path().join("q1");
    let mut problems = Vec::new();
    for url in [
        format!("file:{}", abs.display()),
        format!("file://localhost{}", abs.display()),
    ] {
        let cwd = tempfile::tempdir().unwrap();
        let before = std::fs::read_dir(abs.join("new")).map_or(0, |d| d.count());
        let mut cmd = host(plugins.path());
        cmd.current_dir(cwd.path())
            .args(["enqueue", "--queue", &url])
            .arg(&hello);
        let (code, _, stderr) = run_within(cmd, 20.0);
        let after = std::fs::read_dir(abs.join("new")).map_or(0, |d| d.count());
        let stray: Vec<_> = std::fs::read_dir(cwd.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        if code != Some(0) || after != before + 1 || !stray.is_empty() {
            problems.push(format!(
                "{url}: exit {code:?}, {} job(s) added to {}/new, made in the working directory: {stray:?}; {}",
                after as i64 - before as i64,
                abs.display(),
                tail(&stderr, 2)
            ));
        }
    }
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = host(plugins.path());
    cmd.current_dir(cwd.path())
        .args(["enqueue", "--queue", "file://otherhost/x"])
        .arg(&hello);
    let (code, _, stderr) = run_within(cmd, 20.0);
    let stray = std::fs::read_dir(cwd.path()).unwrap().count();
    if code != Some(64) || stray != 0 {
        problems.push(format!(
            "file://otherhost/x: exit {code:?}, {stray} entries made in the working directory; {}",
            tail(&stderr, 2)
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------
// D9: symlinks in log/ and state/
// ---------------------------------------------------------------------------------------

/// Whether the job file `name` of job `id` is still accounted for: back in new/, or in
/// done/ with a final state, recorded in a regular state file or (when the state file is
/// what cannot be used) reported on stderr: never gone in silence.
fn assert_job_kept(q: &Queue, name: &str, id: u64, stderr: &str) {
    if q.path("new").join(name).exists() {
        return;
    }
    assert!(
        q.path("done").join(name).exists(),
        "job file {name} is neither back in new/ nor in done/:\n{}{}",
        q.listing(),
        tail(stderr, 10)
    );
    // The final state, in the state file (or, should it be set aside, a file named after
    // the job beside it).
    let mut finals = Vec::new();
    for file in q.names("state") {
        let path = q.path("state").join(&file);
        let regular = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
        if !regular || !file.starts_with(&id.to_string()) || !file.ends_with(".jsonl") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap_or_default().lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                if FINAL.contains(&v["state"].as_str().unwrap_or("")) {
                    finals.push(v["state"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    let reported = stderr.lines().any(|l| {
        FINAL
            .iter()
            .any(|f| l.starts_with(&format!("host: job {id} {f}")))
    });
    assert!(
        !finals.is_empty() || reported,
        "job {id} is in done/ with no final state, recorded or reported:\n{}{}",
        q.listing(),
        tail(stderr, 10)
    );
}

/// Puts a symlink at `sub/file` to a victim file, runs job 5 (which prints OVERWRITTEN) on
/// a local worker until idle, and checks the victim, stderr and the job.
fn symlink_in_queue_is_not_followed(sub: &str, file: &str) {
    let q = Queue::new();
    let victims = tempfile::tempdir().unwrap();
    let victim = victims.path().join("victim.txt");
    std::fs::write(&victim, b"precious\n").unwrap();
    std::fs::create_dir_all(q.path(sub)).unwrap();
    std::os::unix::fs::symlink(&victim, q.path(sub).join(file)).unwrap();
    q.put(
        "a.json",
        &json!({"job": {"id": 5}, "script": "echo OVERWRITTEN"}),
    );
    let (mut w, err) = spawn_lines(q.worker("local", &["--exit-when-idle"]));
    let exited = exit_within(&mut w, 60.0);
    drop(w);
    let stderr = err.finish(2.0);
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(&victim).unwrap()),
        "precious\n",
        "the file behind the symlink {sub}/{file} was written\n{}",
        tail(&stderr, 10)
    );
    assert!(exited.is_some(), "the worker did not exit when idle");
    let named = format!("{sub}/{file}");
    assert!(
        stderr.contains(&named),
        "stderr does not name {named}:\n{}",
        tail(&stderr, 10)
    );
    assert_job_kept(&q, "a.json", 5, &stderr);
}

/// D9 (symlinks in log/ are followed: file overwrite as the worker's user). Rule: the
/// worker never writes through a symlink at DIR/log/<id>.log: the file it points at is
/// untouched, stderr names the path, and the job is not lost.
#[test]
fn a_symlink_at_the_jobs_log_path_is_not_followed() {
    symlink_in_queue_is_not_followed("log", "5.log");
}

/// D9 (symlinks in state/ are followed). Rule: the worker never appends through a symlink
/// at DIR/state/<id>.jsonl: the file it points at is untouched, stderr names the path, and
/// the job is not lost.
#[test]
fn a_symlink_at_the_jobs_state_path_is_not_followed() {
    symlink_in_queue_is_not_followed("state", "5.jsonl");
}

// ---------------------------------------------------------------------------------------
// D12, D13, D14: processes left behind, shutdown
// ---------------------------------------------------------------------------------------

/// The `host-local-*` working directories in `dir`.
fn work_dirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("host-local-"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// D12 (kill -9 of a worker leaves its jobs' processes running, and the requeued job runs
/// twice at once). Rule (fencing): the worker that takes over a dead worker's claims first
/// ends what that worker's jobs left running and removes its working directory; the job's
/// processes never run twice at once, and the rerun passes.
#[test]
fn a_killed_workers_job_leaves_no_orphan_and_its_rerun_never_runs_beside_it() {
    let q = Queue::new();
    let marker = unique_marker("d12");
    let _sweep = Sweep(marker.clone());
    let flags = tempfile::tempdir().unwrap();
    let flag = flags.path().join("first-run");
    // The first run sleeps 30 s; the rerun, 1 s; both under the marker.
    let script = format!(
        "if [ -e {f} ]; then exec -a {marker} sleep 1; fi\ntouch {f}\nexec -a {marker} sleep 30\n",
        f = flag.display()
    );
    q.put("1.json", &job(1, &script));
    let (mut first, first_err) = spawn_lines(q.worker("local", &[]));
    assert!(
        poll(30.0, || pids_with(&marker).len() == 1),
        "the first run never showed its marker: {:?}\n{}",
        pids_with(&marker),
        first_err.text()
    );
    let orphan = pids_with(&marker)[0];
    let old_dirs = work_dirs(q.scripts.path());
    assert!(
        !old_dirs.is_empty(),
        "precondition: a host-local-* directory"
    );
    first.0.kill().unwrap(); // SIGKILL
    first.wait();

    let (mut second, err) = spawn_lines(q.worker("local", &["--exit-when-idle"]));
    let began = Instant::now();
    let mut most = 0;
    while began.elapsed() < Duration::from_secs(10) {
        let n = pids_with(&marker).len();
        most = most.max(n);
        assert!(
            n <= 1,
            "{n} processes of job 1 at once, {:?} after the new worker started: the killed worker's (pid {orphan}) beside the rerun\n{}",
            began.elapsed(),
            tail(&err.text(), 10)
        );
        let settled = !runs(orphan, &marker)
            && old_dirs.iter().all(|d| !d.exists())
            && q.last_state(1).as_deref() == Some("passed");
        if settled {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !runs(orphan, &marker),
        "the killed worker's job process {orphan} still runs 10 s after a new worker started\n{}",
        tail(&err.text(), 10)
    );
    let left: Vec<_> = old_dirs.iter().filter(|d| d.exists()).collect();
    assert!(
        left.is_empty(),
        "the killed worker's working directory is still there: {left:?}"
    );
    assert!(
        poll(20.0, || q.last_state(1).as_deref() == Some("passed")),
        "the rerun did not pass: {:?}\n{}",
        q.state_names(1),
        tail(&err.text(), 10)
    );
    assert!(exit_within(&mut second, 20.0).is_some());
}

/// A worker whose job ignores SIGTERM (with KILL_GRACE=20s), stopped with two SIGTERMs:
/// the second abandons the stop.
struct Abandoned {
    q: Queue,
    marker: String,
    _sweep: Sweep,
    _flags: tempfile::TempDir,
    /// The job's process that the abandoned stop may leave running.
    leftover: u32,
    /// The instance the job ran on.
    instance: String,
    /// What the worker printed after the second SIGTERM.
    after: String,
}

fn abandon_a_stop() -> Abandoned {
    let q = Queue::new();
    let marker = unique_marker("d13");
    let sweep = Sweep(marker.clone());
    let flags = tempfile::tempdir().unwrap();
    let flag = flags.path().join("first-run");
    let script = format!(
        "trap \"\" TERM\nif [ -e {f} ]; then echo second run; exit 0; fi\ntouch {f}\nexec -a {marker} sleep 30\n",
        f = flag.display()
    );
    q.put("1.json", &job(1, &script));
    let (mut w, err) = spawn_lines(q.worker("local", &["-c", "KILL_GRACE=20s"]));
    let started = err
        .wait_for(30.0, |l| l.contains("job 1 started on instance "))
        .unwrap_or_else(|| panic!("job 1 never started:\n{}", err.text()));
    let instance = started
        .split("on instance ")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        poll(10.0, || pids_with(&marker).len() == 1),
        "the job's sleep never showed its marker"
    );
    let leftover = pids_with(&marker)[0];
    signal("-TERM", w.0.id());
    err.wait_for(10.0, |l| l.contains("SIGTERM"))
        .expect("the worker said nothing about the first SIGTERM");
    std::thread::sleep(Duration::from_secs(1));
    let before = err.count();
    signal("-TERM", w.0.id());
    let status = exit_within(&mut w, 15.0);
    let text = err.finish(2.0);
    assert!(
        status.is_some(),
        "the worker still runs 15 s after a second SIGTERM:\n{text}"
    );
    let after = err.lines()[before.min(err.lines().len())..].join("\n");
    Abandoned {
        q,
        marker,
        _sweep: sweep,
        _flags: flags,
        leftover,
        instance,
        after,
    }
}

/// D13 (the worker's second SIGTERM abandons stops without saying what may be left
/// running). Rule: when a second SIGTERM abandons a stop, stderr names what may be left
/// running (the job or its instance) and `host reap`, which removes it.
#[test]
fn a_second_sigterm_that_abandons_a_stop_says_what_may_be_left_running_and_names_host_reap() {
    let a = abandon_a_stop();
    let names_it = a.after.lines().any(|l| {
        (l.contains("left") || l.contains("reap"))
            && (l.contains(&a.instance) || l.contains("job 1"))
    });
    assert!(
        a.after.contains("host reap") && names_it,
        "after the second SIGTERM (instance {}), stderr said:\n{}",
        a.instance,
        a.after
    );
}

/// D13 (the job is requeued, so it will run again next to what the abandoned stop left).
/// Rule: the next worker on the queue ends the leftover process of the abandoned stop
/// before (or while) it runs the requeued job, and the job passes.
#[test]
fn the_next_worker_removes_what_an_abandoned_stop_left_running() {
    let a = abandon_a_stop();
    let q = &a.q;
    assert!(
        q.path("new").join("1.json").exists(),
        "precondition: job 1 requeued into new/ after the abandoned stop\n{}{}",
        q.listing(),
        a.after
    );
    let (mut w, err) = spawn_lines(q.worker("local", &["-c", "KILL_GRACE=1s", "--exit-when-idle"]));
    let passed = poll(30.0, || q.last_state(1).as_deref() == Some("passed"));
    assert!(
        passed,
        "the requeued job did not pass: {:?}\n{}",
        q.state_names(1),
        tail(&err.text(), 10)
    );
    assert!(
        poll(3.0, || !runs(a.leftover, &a.marker)),
        "the abandoned stop's process {} still runs after the next worker ran the job\n{}",
        a.leftover,
        tail(&err.text(), 10)
    );
    assert!(exit_within(&mut w, 20.0).is_some());
}

/// A build script service that accepts connections and never answers.
struct Silent {
    url: String,
    stop: Arc<AtomicBool>,
}

impl Silent {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/script", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let until = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !until.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self { url, stop }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// D14 (a --build-api that never answers blocks shutdown and hides the job). Rule: a job is
/// registered as running before its script is fetched: within 2 s it shows in `GET
/// /worker`; SIGTERM ends the worker within 10 s and the job is back in new/.
#[test]
fn a_build_api_that_never_answers_neither_hides_the_job_nor_blocks_shutdown() {
    let api = Silent::start();
    let q = Queue::new();
    let (mut w, err, url) = q.worker_with_http("fake", &["--build-api", &api.url]);
    q.put("1.json", &json!({"job": {"id": 1}}));
    let mut status = Value::Null;
    let shown = poll(2.0, || {
        status = serde_json::from_str(&http("GET", &format!("{url}/worker")).1).unwrap_or_default();
        status["running"]
            .as_array()
            .is_some_and(|r| r.iter().any(|j| j["job_id"] == 1))
    });
    assert!(
        shown,
        "job 1 is not in /worker's running list 2 s after it was queued: {status}\n{}",
        q.listing()
    );
    signal("-TERM", w.0.id());
    let exited = exit_within(&mut w, 10.0);
    assert!(
        exited.is_some(),
        "the worker still runs 10 s after SIGTERM (waiting for the build API)\n{}",
        tail(&err.text(), 10)
    );
    assert!(
        q.path("new").join("1.json").exists(),
        "job 1 is not back in new/:\n{}{}",
        q.listing(),
        tail(&err.text(), 10)
    );
}

// ---------------------------------------------------------------------------------------
// D15, D17, D18: the directory queue's bookkeeping
// ---------------------------------------------------------------------------------------

/// D15 (duplicate job ids on the directory queue: one log is lost and the states are
/// mixed). Rule: two jobs with one id never run at once; each run's log survives in a file
/// under log/ named after the id; each state line names its run, and the runs differ.
#[test]
fn two_jobs_with_one_id_keep_both_logs_never_overlap_and_their_states_name_their_runs() {
    let q = Queue::new();
    let times = tempfile::tempdir().unwrap();
    for (name, tag) in [("a.json", "A"), ("b.json", "B")] {
        let t = times.path().display();
        let script = format!(
            "date +%s%N > {t}/{tag}.start\nfor i in 1 2 3; do echo {tag}$i; sleep 0.3; done\ndate +%s%N > {t}/{tag}.end\n"
        );
        q.put(name, &json!({"job": {"id": 21}, "script": script}));
    }
    let (code, exited, stderr) = run_within(
        q.worker("local", &["--pool-size", "2", "--exit-when-idle"]),
        60.0,
    );
    assert!(exited, "the worker did not exit when idle:\n{stderr}");
    assert_eq!(code, Some(0), "{stderr}");

    let logs: Vec<(String, String)> = q
        .names("log")
        .into_iter()
        .filter(|n| n.starts_with("21"))
        .map(|n| {
            let text = std::fs::read_to_string(q.path("log").join(&n)).unwrap_or_default();
            (n, text)
        })
        .collect();
    let mut problems = Vec::new();
    for (tag, other) in [("A", "B"), ("B", "A")] {
        let own = format!("{tag}1\n{tag}2\n{tag}3\n");
        let whole = logs
            .iter()
            .any(|(_, t)| t.contains(&own) && !t.contains(&format!("{other}1")));
        if !whole {
            problems.push(format!("no log under log/ holds run {tag}'s output whole"));
        }
    }

    let time = |f: &str| -> u128 {
        std::fs::read_to_string(times.path().join(f))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let (a, b) = (
        (time("A.start"), time("A.end")),
        (time("B.start"), time("B.end")),
    );
    if !(a.1 <= b.0 || b.1 <= a.0) {
        problems.push(format!(
            "the two runs overlapped: A {a:?}, B {b:?} (ns since the epoch)"
        ));
    }

    let states = q.states(21);
    let runs: BTreeSet<String> = states
        .iter()
        .filter_map(|s| s["run"].as_str().filter(|r| !r.is_empty()))
        .map(str::to_owned)
        .collect();
    let unnamed = states
        .iter()
        .filter(|s| s["run"].as_str().is_none_or(str::is_empty))
        .count();
    if states.is_empty() || unnamed > 0 || runs.len() != 2 {
        problems.push(format!(
            "{unnamed} of {} state lines name no run; runs named: {runs:?}",
            states.len()
        ));
    }
    assert!(
        problems.is_empty(),
        "{}\nlogs: {logs:?}\nstates: {states:?}",
        problems.join("\n")
    );
}

/// D17 (the console line for rejected files gives the wrong reason and names no file).
/// Rule: a file too large, a FIFO, a symlink and a directory in new/ each go to rejected/
/// with a `.reason`; the stderr line for each names the file and gives the same reason, and
/// no reason is a parser's or O_NOFOLLOW's artefact.
#[test]
fn rejected_entries_are_named_on_stderr_with_the_reason_their_reason_file_gives() {
    let q = Queue::new();
    std::fs::create_dir_all(q.path("new")).unwrap();
    std::fs::write(q.path("new/big.json"), vec![0u8; 20_000_000]).unwrap();
    let fifo = Command::new("mkfifo")
        .arg(q.path("new/f.json"))
        .status()
        .unwrap();
    assert!(fifo.success());
    std::os::unix::fs::symlink("/etc/passwd", q.path("new/l.json")).unwrap();
    std::fs::create_dir(q.path("new/d.json")).unwrap();
    let (code, exited, stderr) = run_within(q.worker("fake", &["--exit-when-idle"]), 60.0);
    assert!(exited, "the worker did not exit when idle:\n{stderr}");
    assert_eq!(code, Some(0), "{stderr}");
    let mut problems = Vec::new();
    for name in ["big.json", "f.json", "l.json", "d.json"] {
        let rejected = std::fs::symlink_metadata(q.path("rejected").join(name)).is_ok();
        let reason = std::fs::read_to_string(q.path("rejected").join(format!("{name}.reason")))
            .unwrap_or_default();
        let reason = reason.trim();
        if !rejected || reason.is_empty() {
            problems.push(format!("{name}: not in rejected/ with a .reason"));
            continue;
        }
        let line = stderr.lines().find(|l| l.contains(name));
        match line {
            None => problems.push(format!("{name}: no stderr line names it")),
            Some(l) if !l.contains(reason) => problems.push(format!(
                "{name}: stderr says {l:?} but its .reason says {reason:?}"
            )),
            Some(_) => {}
        }
        if reason.contains("Too many levels of symbolic links") {
            problems.push(format!(
                "{name}: the reason is O_NOFOLLOW's ELOOP: {reason:?}"
            ));
        }
    }
    for artefact in ["EOF while parsing", "Too many levels of symbolic links"] {
        if let Some(l) = stderr.lines().find(|l| l.contains(artefact)) {
            problems.push(format!("stderr gives an artefact as a reason: {l:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\nstderr:\n{}",
        problems.join("\n"),
        tail(&stderr, 20)
    );
}

/// D18 (workers recovering the same dead worker's claims at once write duplicate `requeued`
/// lines and error noise). Rule: each claim of a dead worker is requeued once, whoever of
/// the workers starting together does it: one `requeued` line per job, and no "cannot
/// requeue" for a claim another worker took first.
#[test]
fn workers_starting_together_requeue_each_claim_of_a_dead_worker_once() {
    let q = Queue::new();
    let dead = q.path("claimed").join(format!("w999999.1@{}", hostname()));
    std::fs::create_dir_all(&dead).unwrap();
    for id in 1..=300u64 {
        std::fs::write(
            dead.join(format!("{id:05}.json")),
            job(id, "echo\n").to_string(),
        )
        .unwrap();
    }
    let workers: Vec<(Guard, Lines)> = (0..3)
        .map(|_| spawn_lines(q.worker("fake", &["--exit-when-idle"])))
        .collect();
    let mut stderr = String::new();
    for (mut g, lines) in workers {
        let exited = exit_within(&mut g, 90.0);
        drop(g);
        let text = lines.finish(2.0);
        assert!(exited.is_some(), "a worker did not exit when idle:\n{text}");
        stderr.push_str(&text);
        stderr.push('\n');
    }
    let mut wrong = Vec::new();
    for id in 1..=300u64 {
        let names = q.state_names(id);
        let requeued = names.iter().filter(|s| *s == "requeued").count();
        if requeued != 1 {
            wrong.push(format!("job {id}: {names:?}"));
        }
    }
    let noise: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("cannot requeue"))
        .collect();
    assert!(
        wrong.is_empty() && noise.is_empty(),
        "{} of 300 jobs without exactly one requeued line (e.g. {:?}); {} \"cannot requeue\" line(s) (e.g. {:?})",
        wrong.len(),
        wrong.iter().take(3).collect::<Vec<_>>(),
        noise.len(),
        noise.iter().take(2).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------
// F1, F4-F6, F8, F9: what a second adversarial pass found
// ---------------------------------------------------------------------------------------

/// F1 (a job the broker redelivers to a live worker on the machine where its worker died
/// ran beside the orphaned first run). Rule (fencing before a redelivered job runs): of two
/// RabbitMQ workers on one machine, when A is killed mid-job and the broker redelivers the
/// job to B, which was already running, at no moment do two processes of the job live; the
/// orphan is gone, the job passes, and B says what it reaped.
#[test]
fn a_job_redelivered_to_a_running_worker_never_runs_beside_its_dead_workers_orphan() {
    let b = Broker::new();
    let marker = unique_marker("f1");
    let _sweep = Sweep(marker.clone());
    let flags = tempfile::tempdir().unwrap();
    let flag = flags.path().join("first-run");
    // The first run sleeps 30 s; the rerun, 1 s; both under the marker.
    let script = format!(
        "if [ -e {f} ]; then exec -a {marker} sleep 1; fi\ntouch {f}\nexec -a {marker} sleep 30\n",
        f = flag.display()
    );
    let (mut a, a_err) = spawn_lines(b.worker("local", &["--pool-size", "1"]));
    worker_up(&a_err);
    b.publish_jobs(&[job(1101, &script)]);
    assert!(
        poll(30.0, || pids_with(&marker).len() == 1),
        "precondition: the first run never showed its marker on worker A\nA:\n{}",
        tail(&a_err.text(), 10)
    );
    let orphan = pids_with(&marker)[0];
    // B runs (idle) before A dies: the redelivery goes to a worker that is already up, so
    // no start-up fencing can stand in for the fencing of a redelivery.
    let (mut bw, b_err) = spawn_lines(b.worker("local", &["--pool-size", "1"]));
    worker_up(&b_err);
    a.0.kill().unwrap(); // SIGKILL, mid-job: the broker redelivers to B
    a.wait();

    let ended = |l: &str| {
        FINAL
            .iter()
            .any(|f| l.starts_with(&format!("host: job 1101 {f}")))
    };
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(60) {
        let live = pids_with(&marker);
        assert!(
            live.len() <= 1,
            "{} processes of job 1101 at once ({live:?}), {:?} after worker A was killed: its orphan (pid {orphan}) beside B's rerun\nB:\n{}",
            live.len(),
            began.elapsed(),
            tail(&b_err.text(), 10)
        );
        if b_err.lines().iter().any(|l| ended(l)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !runs(orphan, &marker),
        "worker A's job process {orphan} still runs after B ran the redelivered job\nB:\n{}",
        tail(&b_err.text(), 10)
    );
    let r = b.collect(20, |r| !r.finished(1101).is_empty());
    assert_eq!(
        r.finished(1101),
        ["passed"],
        "job 1101's final states (states {:?})\nB:\n{}",
        r.kinds(1101),
        tail(&b_err.text(), 10)
    );
    assert!(
        b_err.lines().iter().any(|l| l.contains("reaped")),
        "worker B never said what it reaped:\n{}",
        tail(&b_err.text(), 10)
    );
    signal("-TERM", bw.0.id());
    assert!(exit_within(&mut bw, 10.0).is_some());
}

/// F4 (a vanished state/ burnt a job's requeues in milliseconds). Rule: `state/` removed
/// under a running worker is made again: the next job passes, is moved to done/, and its
/// state file holds its states.
#[test]
fn a_job_queued_after_state_dir_was_removed_passes_with_its_state_file() {
    let q = Queue::new();
    let (mut w, err) = spawn_lines(q.worker("fake", &[]));
    worker_up(&err);
    remove_tree(&q.path("state"));
    q.put("1.json", &job(81, "echo x\n"));
    let passed = poll(15.0, || {
        q.last_state(81).as_deref() == Some("passed") && q.path("done/1.json").exists()
    });
    assert!(
        passed,
        "state/ removed: job 81 did not pass with a state file (states {:?})\n{}{}",
        q.state_names(81),
        q.listing(),
        tail(&err.text(), 10)
    );
    signal("-TERM", w.0.id());
    assert!(exit_within(&mut w, 10.0).is_some());
}

/// F4 (a read-only state/ burnt a job's requeues in milliseconds: errored, its state
/// nowhere). Rule: a job whose state cannot be written goes back as it was, not counted;
/// the worker is not ready (`/ready` 503 naming the problem) while state/ is read-only, and
/// once it is writable again the job passes (in done/, as it was queued), within bounded
/// time. Needs root and `mount`; without them it says why and checks nothing.
#[test]
fn a_read_only_state_dir_keeps_the_job_waiting_and_it_passes_once_writable() {
    if !is_root() {
        eprintln!("skipped: making state/ read-only needs root (a bind mount)");
        return;
    }
    let q = Queue::new();
    let (mut w, err, url) = q.worker_with_http("fake", &[]);
    let state = q.path("state");
    let s = state.to_str().unwrap().to_owned();
    let mut mounts = Mounts::default();
    let mounted = mounts
        .mount(&["--bind", &s, &s], &state)
        .and_then(|()| mounts.mount(&["-o", "remount,ro,bind", &s], &state));
    if let Err(why) = mounted {
        eprintln!("skipped: cannot make state/ read-only: {why}");
        return;
    }
    q.put("1.json", &job(82, "echo x\n"));
    // 4 s: long enough for three counted requeues (100, 200, 400 ms of backoff) to error it.
    let began = Instant::now();
    let mut ready = (0, String::new());
    while began.elapsed() < Duration::from_secs(4) {
        ready = http("GET", &format!("{url}/ready"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = q.listing();
    mounts.umount_all();
    assert_eq!(
        ready.0,
        503,
        "/ready while state/ is read-only: {ready:?}\n{during}{}",
        tail(&err.text(), 10)
    );
    assert!(
        ready.1.contains("Read-only file system"),
        "/ready does not name the problem: {:?}",
        ready.1
    );
    let passed = poll(20.0, || {
        q.last_state(82).as_deref() == Some("passed") && q.path("done/1.json").exists()
    });
    let names = q.state_names(82);
    assert!(
        passed,
        "state/ writable again: job 82 did not pass within 20 s (states {names:?})\n{}{}",
        q.listing(),
        tail(&err.text(), 10)
    );
    assert!(
        !names.iter().any(|n| n == "errored"),
        "job 82 was errored while state/ was read-only: {names:?}"
    );
    let done: Value =
        serde_json::from_slice(&std::fs::read(q.path("done/1.json")).unwrap()).unwrap_or_default();
    assert_eq!(
        done["meta"]["requeue_count"].as_u64().unwrap_or(0),
        0,
        "the job went back counted as a requeue: {done}"
    );
    signal("-TERM", w.0.id());
    assert!(exit_within(&mut w, 10.0).is_some());
}

/// Puts a FIFO at `sub/file` (job 5's state or log file), queues job 5, and checks that
/// the worker keeps answering, runs job 6, names the FIFO it refused, and stops on SIGTERM.
fn a_fifo_in_the_queue_does_not_freeze_the_worker(sub: &str, file: &str) {
    let q = Queue::new();
    std::fs::create_dir_all(q.path(sub)).unwrap();
    let fifo = q.path(sub).join(file);
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    q.put("a.json", &job(5, "echo x\n"));
    let (mut w, err, url) = q.worker_with_http("fake", &[]);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let asked = Instant::now();
        let (code, _) = http("GET", &format!("{url}/healthz"));
        assert_eq!(
            code,
            200,
            "a FIFO at {sub}/{file}: /healthz did not answer within 2 s (gave up after {:?})\n{}",
            asked.elapsed(),
            tail(&err.text(), 10)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let named = format!("{sub}/{file}");
    q.put("b.json", &job(6, "echo y\n"));
    assert!(
        poll(15.0, || q.last_state(6).as_deref() == Some("passed")),
        "a FIFO at {named}: job 6 did not pass (states {:?})\n{}{}",
        q.state_names(6),
        q.listing(),
        tail(&err.text(), 10)
    );
    assert!(
        err.lines().iter().any(|l| l.contains(&named)),
        "stderr never named the FIFO {named}: job 5 was not refused (is its open blocked?)\n{}{}",
        q.listing(),
        tail(&err.text(), 10)
    );
    signal("-TERM", w.0.id());
    assert!(
        exit_within(&mut w, 10.0).is_some(),
        "a FIFO at {named}: the worker still runs 10 s after SIGTERM\n{}",
        tail(&err.text(), 10)
    );
}

/// F5 (a FIFO as a job's state file froze the worker: its open waited for a reader). Rule:
/// with a FIFO at DIR/state/<id>.jsonl, /healthz keeps answering within 2 s, a job of
/// another id passes, the FIFO is refused with its path on stderr, and SIGTERM ends the
/// worker within 10 s.
#[test]
fn a_fifo_at_a_jobs_state_path_does_not_freeze_the_worker() {
    a_fifo_in_the_queue_does_not_freeze_the_worker("state", "5.jsonl");
}

/// F5 (a FIFO as a job's log file froze the worker). Rule: with a FIFO at
/// DIR/log/<id>.log, /healthz keeps answering within 2 s, a job of another id passes, the
/// FIFO is refused with its path on stderr, and SIGTERM ends the worker within 10 s.
#[test]
fn a_fifo_at_a_jobs_log_path_does_not_freeze_the_worker() {
    a_fifo_in_the_queue_does_not_freeze_the_worker("log", "5.log");
}

/// `O_NONBLOCK` on Linux (the tests have no `libc`).
const O_NONBLOCK: i32 = 0o4000;

/// F6 (a stderr pipe that stayed full blocked the worker: its signal task waited on it for
/// ever). Rule: a worker whose stderr is a pipe that is held open but never read (full from
/// the start) runs all of 1500 jobs to done/, and SIGTERM then ends it within 10 s.
#[test]
fn a_worker_whose_stderr_pipe_is_full_and_never_read_runs_every_job_and_stops_on_sigterm() {
    const JOBS: u64 = 1500;
    let q = Queue::new();
    for id in 1..=JOBS {
        q.put(&format!("{id:05}.json"), &job(id, "echo\n"));
    }
    let pipes = tempfile::tempdir().unwrap();
    let fifo = pipes.path().join("stderr");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // Read-write: the pipe has a reader (this test), which never reads. The worker's end is
    // a blocking descriptor of its own.
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    // Filled before the worker starts, through a non-blocking descriptor of its own.
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut filler = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let chunk = [b'.'; 4096];
        let mut written = 0usize;
        loop {
            match filler.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the pipe: {e}"),
            }
        }
        assert!(written > 0, "precondition: the pipe took nothing");
    }
    let mut cmd = q.worker("fake", &["--pool-size", "8"]);
    cmd.stdout(Stdio::null())
        .stderr(Stdio::from(held.try_clone().unwrap()));
    let mut w = Guard(cmd.spawn().unwrap());
    let began = Instant::now();
    let mut done = 0;
    while began.elapsed() < Duration::from_secs(120) {
        done = q.names("done").len();
        if done as u64 >= JOBS || w.0.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        done as u64,
        JOBS,
        "{done} of {JOBS} jobs in done/ after {:?} (the worker {})\n{}",
        began.elapsed(),
        if w.0.try_wait().unwrap().is_some() {
            "exited"
        } else {
            "still runs"
        },
        q.listing().lines().take(2).collect::<Vec<_>>().join("\n")
    );
    let not_passed: Vec<u64> = (1..=JOBS)
        .filter(|&id| q.last_state(id).as_deref() != Some("passed"))
        .collect();
    assert!(
        not_passed.is_empty(),
        "{} job(s) in done/ without a passed state, e.g. {:?}",
        not_passed.len(),
        &not_passed[..not_passed.len().min(5)]
    );
    signal("-TERM", w.0.id());
    let status = exit_within(&mut w, 10.0);
    assert!(
        status.is_some(),
        "the worker still runs 10 s after SIGTERM (its stderr is full)"
    );
    drop(held);
}

/// F8 (a full disk under the queue looped 15,000 times in 4 s and burnt the job's
/// requeues). Rule: on a queue whose file system fills up while a job waits, the worker backs
/// off: stderr stays small (< 100 lines over 5 s), /ready answers 503; once there is room
/// again the job passes. Needs root and `mount` (a 64 KiB tmpfs); without them it says why
/// and checks nothing.
#[test]
fn a_full_queue_file_system_neither_floods_stderr_nor_loses_the_job() {
    if !is_root() {
        eprintln!("skipped: a small file system for the queue needs root (a tmpfs mount)");
        return;
    }
    let q = Queue::new();
    let root = q.root().to_str().unwrap().to_owned();
    let mut mounts = Mounts::default();
    let mounted = mounts.mount(
        &["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", &root],
        q.root(),
    );
    if let Err(why) = mounted {
        eprintln!("skipped: cannot mount a tmpfs for the queue: {why}");
        return;
    }
    let (mut w, err, url) = q.worker_with_http("fake", &[]);
    // Paused while the job is queued and the disk filled, so that it waits there.
    signal("-USR2", w.0.id());
    assert!(
        poll(5.0, || http("GET", &format!("{url}/ready")).0 == 503),
        "precondition: SIGUSR2 did not pause the worker"
    );
    q.put("1.json", &job(91, "echo x\n"));
    let filler = q.root().join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = [0u8; 4096];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(
                    e.raw_os_error(),
                    Some(28),
                    "filling the queue's file system: {e}"
                );
                break;
            }
        }
    }
    let before = err.count();
    signal("-USR2", w.0.id()); // resumed: the job is claimed on a full disk
    let began = Instant::now();
    let mut ready = (0, String::new());
    while began.elapsed() < Duration::from_secs(5) {
        ready = http("GET", &format!("{url}/ready"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let flood = err.count() - before;
    let lines = err.lines();
    let during = q.listing();
    std::fs::remove_file(&filler).unwrap();
    assert!(
        flood < 100,
        "{flood} stderr lines in 5 s on a full queue; the first:\n{}",
        lines[before.min(lines.len())..]
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        ready.0,
        503,
        "/ready on a full queue: {ready:?}\n{during}{}",
        tail(&err.text(), 10)
    );
    let passed = poll(20.0, || {
        q.last_state(91).as_deref() == Some("passed") && q.path("done/1.json").exists()
    });
    let names = q.state_names(91);
    assert!(
        passed,
        "room again: job 91 did not pass within 20 s (states {names:?})\n{}{}",
        q.listing(),
        tail(&err.text(), 10)
    );
    assert!(
        !names.iter().any(|n| n == "errored"),
        "job 91 was errored on the full disk: {names:?}"
    );
    signal("-TERM", w.0.id());
    assert!(exit_within(&mut w, 10.0).is_some());
}

/// A process's state letter and start time (`/proc/PID/stat`, fields 3 and 22).
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// F9 (a dead worker that is still a zombie, not yet waited for by its parent, kept its
/// claims for ever: its pid and start time still matched). Rule: a zombie is not alive: a
/// worker started with `--exit-when-idle` requeues the claims of a worker whose process is
/// a zombie, the job passes, and the worker exits.
#[test]
fn the_claims_of_a_dead_worker_that_is_still_a_zombie_are_requeued_and_run() {
    let q = Queue::new();
    // A child of this test that exits at once and is not waited for (until the guard goes):
    // a zombie, with the pid and start time a worker id records.
    let zombie = Guard(Command::new("true").spawn().unwrap());
    let pid = zombie.0.id();
    let mut stat = None;
    assert!(
        poll(10.0, || {
            stat = proc_stat(pid);
            stat.is_some_and(|(s, _)| s == 'Z')
        }),
        "precondition: process {pid} did not become a zombie: {stat:?}"
    );
    let start = stat.unwrap().1;
    let dead = q
        .path("claimed")
        .join(format!("w{pid}.{start}@{}", hostname()));
    put_in(&dead, "1.json", job(93, "echo x\n").to_string().as_bytes());
    let (mut w, err) = spawn_lines(q.worker("fake", &["--exit-when-idle"]));
    let exited = exit_within(&mut w, 30.0);
    drop(w);
    let stderr = err.finish(2.0);
    let names = q.state_names(93);
    assert!(
        names.iter().any(|n| n == "requeued") && names.last().map(String::as_str) == Some("passed"),
        "the zombie worker's claim was not requeued and run: states {names:?}\n{}{}",
        q.listing(),
        tail(&stderr, 10)
    );
    assert!(
        exited.is_some(),
        "the worker did not exit when idle within 30 s\n{}",
        tail(&stderr, 10)
    );
    assert!(
        proc_stat(pid).is_some_and(|(s, _)| s == 'Z'),
        "precondition: process {pid} was a zombie throughout"
    );
    drop(zombie);
}

// ---------------------------------------------------------------------------------------
// Second attack round: the machine's job locks, a due time from elsewhere, a read-only log/
// ---------------------------------------------------------------------------------------

/// Second round F2 (a done marker left by an earlier run answered the redelivery of the
/// same body published again, as for a restarted build, and the job was gone). Rule: a run
/// that begins clears its job's done marker; the job published again, whose worker is
/// killed mid-run, runs again on the next worker and ends passed.
#[test]
fn a_restarted_builds_message_redelivered_after_its_worker_died_runs_again() {
    let b = Broker::new();
    let marker = unique_marker("r2f2");
    let _sweep = Sweep(marker.clone());
    let flags = tempfile::tempdir().unwrap();
    let locks = tempfile::tempdir().unwrap();
    let lock_dir = locks.path().join("locks");
    let lock_arg = lock_dir.display().to_string();
    // One body for all three runs: the first passes at once, the second (the build
    // published again) sleeps until its worker is killed, the third passes.
    let script = format!(
        "if [ -e {f}/second ]; then echo third; exit 0; fi\n\
         if [ -e {f}/first ]; then touch {f}/second; exec -a {marker} sleep 30; fi\n\
         touch {f}/first; echo first\n",
        f = flags.path().display()
    );
    let doc = job(1201, &script);
    let (mut a, a_err) =
        spawn_lines(b.worker("local", &["--pool-size", "1", "--lock-dir", &lock_arg]));
    worker_up(&a_err);
    b.publish_jobs(std::slice::from_ref(&doc));
    let r = b.collect(30, |r| r.finished(1201).len() == 1);
    assert_eq!(
        r.finished(1201),
        ["passed"],
        "the first run\nA:\n{}",
        tail(&a_err.text(), 10)
    );
    b.publish_jobs(std::slice::from_ref(&doc));
    assert!(
        poll(30.0, || pids_with(&marker).len() == 1),
        "precondition: the second run never showed its marker\nA:\n{}",
        tail(&a_err.text(), 10)
    );
    a.0.kill().unwrap();
    a.wait();
    let (mut bw, b_err) =
        spawn_lines(b.worker("local", &["--pool-size", "1", "--lock-dir", &lock_arg]));
    // What is read now follows the first run's states (read above).
    let r = b.collect(60, |r| !r.finished(1201).is_empty());
    assert_eq!(
        r.finished(1201),
        ["passed"],
        "the build published again was not run to its end after its worker died (states {:?})\nB:\n{}",
        r.kinds(1201),
        tail(&b_err.text(), 10)
    );
    signal("-TERM", bw.0.id());
    assert!(exit_within(&mut bw, 10.0).is_some());
}

/// Second round F3 (the lock directory removed under running workers: every job was put
/// back at once, thousands of times a second, and never ran). Rule: the lock directory is
/// made again and the next job passes, with few lines on stderr.
#[test]
fn a_lock_directory_removed_under_a_running_worker_is_made_again() {
    let b = Broker::new();
    let locks = tempfile::tempdir().unwrap();
    let lock_dir = locks.path().join("locks");
    let lock_arg = lock_dir.display().to_string();
    let (mut w, err) =
        spawn_lines(b.worker("fake", &["--pool-size", "1", "--lock-dir", &lock_arg]));
    worker_up(&err);
    std::fs::remove_dir_all(&lock_dir).unwrap();
    b.publish_jobs(&[job(1301, "echo hi\n")]);
    let r = b.collect(30, |r| !r.finished(1301).is_empty());
    assert_eq!(r.finished(1301), ["passed"], "{}", tail(&err.text(), 10));
    assert!(lock_dir.is_dir(), "the lock directory was not made again");
    assert!(
        err.lines().len() < 20,
        "{} lines on stderr:\n{}",
        err.lines().len(),
        tail(&err.text(), 10)
    );
    signal("-TERM", w.0.id());
    assert!(exit_within(&mut w, 10.0).is_some());
}

/// Second round F5 (a job file whose modification time is far in the future, as a copy
/// that kept its times or a clock set back leave it, was never claimed and nothing said
/// so). Rule: a due time later than any backoff of the worker's own is taken as due now.
#[test]
fn a_job_file_dated_in_the_future_is_run() {
    let q = Queue::new();
    q.put("1.json", &job(1401, "echo x\n"));
    let year = std::time::SystemTime::now() + Duration::from_secs(365 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(q.path("new/1.json"))
        .unwrap()
        .set_modified(year)
        .unwrap();
    let (code, _, stderr) = run_within(q.worker("fake", &["--exit-when-idle"]), 30.0);
    assert_eq!(code, Some(0), "{}", tail(&stderr, 10));
    assert_eq!(
        q.last_state(1401).as_deref(),
        Some("passed"),
        "{}",
        tail(&stderr, 10)
    );
}

/// Second round F6 (a read-only log/ used up the job's requeues in under a second: the
/// queue's fault counted against the job). Rule: the job is put back uncounted and waits;
/// once log/ is writable it passes, its requeue count still 0. Needs root (a bind mount).
#[test]
fn a_read_only_log_dir_keeps_the_job_waiting_and_it_passes_once_writable() {
    if !is_root() {
        eprintln!("skipped: a read-only bind mount needs root");
        return;
    }
    let q = Queue::new();
    let mut mounts = Mounts::default();
    let (mut w, err) = spawn_lines(q.worker("fake", &[]));
    worker_up(&err);
    let log = q.path("log");
    let l = log.display().to_string();
    let mounted = mounts
        .mount(&["--bind", &l, &l], &log)
        .and_then(|()| mounts.mount(&["-o", "remount,ro,bind", &l], &log));
    if let Err(why) = mounted {
        eprintln!("skipped: cannot make log/ read-only: {why}");
        return;
    }
    q.put("1.json", &job(1501, "echo x\n"));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !q.state_names(1501).iter().any(|n| n == "errored"),
        "job 1501 errored while log/ was read-only: {:?}\n{}",
        q.state_names(1501),
        tail(&err.text(), 10)
    );
    mounts.umount_all();
    let passed = poll(20.0, || q.last_state(1501).as_deref() == Some("passed"));
    assert!(
        passed,
        "job 1501 did not pass once log/ was writable: {:?}\n{}",
        q.state_names(1501),
        tail(&err.text(), 10)
    );
    let done: Value =
        serde_json::from_slice(&std::fs::read(q.path("done/1.json")).unwrap()).unwrap_or_default();
    assert_eq!(
        done["meta"]["requeue_count"].as_u64().unwrap_or(0),
        0,
        "{done}"
    );
    signal("-TERM", w.0.id());
    assert!(exit_within(&mut w, 10.0).is_some());
}
