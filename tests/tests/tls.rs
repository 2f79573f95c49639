//! `host worker` and `host enqueue` over `amqps://`, against a private RabbitMQ node with a
//! TLS listener and certificates made at test time (`tests/engine/rabbitmq-tls.sh`): the
//! README's example jobs, mutual TLS with SASL EXTERNAL, and each failure saying what
//! failed. (The job tests of `amqp.rs` run over TLS too: its `*_over_amqps` tests.)

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blackbox::{artifacts, host, plugin_dir, run, signal, tls_broker, Guard, TlsBroker};

/// A test that stops the TLS broker runs alone; the others share it.
static SHARED: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    SHARED.read().unwrap_or_else(|e| e.into_inner())
}

fn plugins() -> tempfile::TempDir {
    plugin_dir(&[
        ("libfake.so", &artifacts().fake),
        ("liblocal.so", &artifacts().local),
    ])
}

/// A queue name of this test's own.
fn queue(what: &str) -> String {
    format!("hosttls-{what}-{}", std::process::id())
}

/// Deletes the queue when dropped.
struct Queue(String);

impl Drop for Queue {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", TlsBroker::NODE, "delete_queue", &self.0])
            .output();
    }
}

fn enqueue(plugins: &Path, url: &str, queue: &str, extra: &[&str], job: &Path) -> blackbox::Ran {
    let mut cmd = host(plugins);
    cmd.args(["enqueue", "--queue", url, "--queue-name", queue])
        .args(extra)
        .arg(job);
    run(cmd)
}

/// `host enqueue`, which must succeed.
#[track_caller]
fn enqueued(plugins: &Path, url: &str, queue: &str, extra: &[&str], job: &Path) -> blackbox::Ran {
    let out = enqueue(plugins, url, queue, extra, job);
    assert_eq!(out.code, Some(0), "{url} {extra:?}: {}", out.stderr);
    out
}

fn ca() -> String {
    tls_broker().cert("ca.pem").display().to_string()
}

/// How many messages wait in `queue` on the TLS node.
fn waiting(queue: &str) -> Option<u64> {
    let out = tls_broker().rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages",
    ]);
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(queue)).then(|| f.next()?.parse().ok())?
    })
}

#[test]
fn a_worker_on_amqps_with_a_ca_file_runs_the_readme_example_jobs() {
    let _turn = shared();
    let p = plugins();
    let b = tls_broker();
    let q = Queue(queue("readme"));
    let states = Queue(format!("{}.states", q.0));
    let logs = Queue(format!("{}.logs", q.0));
    let mut jobs: Vec<_> = std::fs::read_dir(blackbox::workspace().join("examples/jobs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    jobs.sort();
    assert!(!jobs.is_empty());
    for job in &jobs {
        let out = enqueued(
            p.path(),
            &b.url(),
            &q.0,
            &["--amqp-tls-cert-path", &ca()],
            job,
        );
        assert!(
            out.stderr.contains("amqps://guest:***@localhost"),
            "{}",
            out.stderr
        );
    }
    assert_eq!(waiting(&q.0), Some(jobs.len() as u64));
    let scripts = tempfile::tempdir().unwrap();
    let mut cmd = host(p.path());
    cmd.args([
        "worker",
        "-b",
        "local",
        "--queue",
        &b.url(),
        "--queue-name",
        &q.0,
    ])
    .args(["--amqp-tls-cert-path", &ca(), "--exit-when-idle"])
    .args(["--state-queue", &states.0, "--log-queue", &logs.0])
    .arg("-c")
    .arg(format!("SCRIPTS_DIR={}", scripts.path().display()));
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // The examples end as they do on the directory queue: failing.json fails, the others
    // pass.
    let ended = out.stderr.matches(" passed (exit code 0)").count()
        + out.stderr.matches(" failed (exit code 1)").count();
    assert_eq!(ended, jobs.len(), "{}", out.stderr);
    assert_eq!(out.stderr.matches(" failed ").count(), 1, "{}", out.stderr);
    assert_eq!(waiting(&q.0), Some(0));
    // Each job's received, started and finished states went out over TLS.
    assert_eq!(waiting(&states.0), Some(3 * jobs.len() as u64));
}

#[test]
fn mutual_tls_with_sasl_external_logs_in_as_the_certificates_user() {
    let _turn = shared();
    let p = plugins();
    let b = tls_broker();
    let q = Queue(queue("external"));
    let url = format!("amqps://localhost:{}/?auth_mechanism=external", b.port);
    let cert = b.cert("client.pem").display().to_string();
    let key = b.cert("client.key").display().to_string();
    let mutual = [
        "--amqp-tls-cert-path",
        &ca(),
        "--amqp-tls-client-cert",
        &cert,
        "--amqp-tls-client-key",
        &key,
    ];
    let job = blackbox::script(r#"{"job": {"id": 41}, "script": "echo external\n"}"#);
    enqueued(p.path(), &url, &q.0, &mutual, job.path());
    let states = Queue(format!("{}.states", q.0));
    let logs = Queue(format!("{}.logs", q.0));
    let mut cmd = host(p.path());
    cmd.args([
        "worker",
        "-b",
        "fake",
        "-c",
        "ECHO_SCRIPT=true",
        "--queue",
        &url,
    ])
    .args(["--queue-name", &q.0])
    .args(mutual)
    .args(["--amqp-heartbeat", "7s"])
    .args(["--state-queue", &states.0, "--log-queue", &logs.0])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut w = Guard(cmd.spawn().unwrap());
    // The broker names the connection's user: the certificate's CN, no password given; and
    // the heartbeat asked for.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = b.rabbitmqctl(&[
            "list_connections",
            "-q",
            "--no-table-headers",
            "user",
            "auth_mechanism",
            "ssl",
            "timeout",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f == ["hostworker", "EXTERNAL", "true", "7"]
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "no EXTERNAL connection: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while waiting(&q.0) != Some(0) || waiting(&states.0) != Some(3) {
        assert!(
            Instant::now() < deadline,
            "job 41 did not run over mutual TLS"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    signal("-TERM", w.0.id());
    let status = w.wait();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut w.0.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("job 41 passed"), "{err}");
}

/// `host enqueue` with `args` fails with `code` and a message holding each of `said`.
#[track_caller]
fn refused(url: &str, args: &[&str], code: i32, said: &[&str]) -> String {
    let p = plugins();
    let job = blackbox::script(r#"{"job": {"id": 1}, "script": "true\n"}"#);
    let q = Queue(queue("refused"));
    let out = enqueue(p.path(), url, &q.0, args, job.path());
    assert_eq!(out.code, Some(code), "{url} {args:?}: {}", out.stderr);
    for s in said {
        assert!(
            out.stderr.contains(s),
            "{url} {args:?}: no {s:?} in {}",
            out.stderr
        );
    }
    assert!(!out.stderr.contains("guest:guest"), "{}", out.stderr);
    out.stderr
}

#[test]
fn each_tls_failure_says_what_failed() {
    let _turn = shared();
    let b = tls_broker();
    let ca = ca();
    let with_ca = ["--amqp-tls-cert-path", ca.as_str()];
    // A CA this worker does not trust: without --amqp-tls-cert-path, the system's roots.
    refused(
        &b.url(),
        &[],
        74,
        &["unknown issuer", "--amqp-tls-cert-path"],
    );
    // A name the certificate does not hold (it names localhost only).
    let by_ip = format!("amqps://guest:guest@127.0.0.1:{}/", b.port);
    refused(
        &by_ip,
        &with_ca,
        74,
        &["not valid for the name \"127.0.0.1\""],
    );
    // TLS spoken to a plain AMQP port, and plain AMQP to the TLS port.
    let plain_port = format!("amqps://guest:guest@localhost:{}/", TlsBroker::PLAIN_PORT);
    refused(&plain_port, &with_ca, 74, &["not TLS", "plain AMQP port"]);
    let plain_to_tls = format!("amqp://guest:guest@localhost:{}/", b.port);
    refused(&plain_to_tls, &[], 74, &["use amqps://"]);
    // A client certificate of a CA the broker does not trust.
    let rogue = b.cert("rogue.pem").display().to_string();
    let rogue_key = b.cert("rogue.key").display().to_string();
    let external = format!("amqps://localhost:{}/?auth_mechanism=external", b.port);
    refused(
        &external,
        &[
            &with_ca[..],
            &[
                "--amqp-tls-client-cert",
                &rogue,
                "--amqp-tls-client-key",
                &rogue_key,
            ],
        ]
        .concat(),
        74,
        &["refused this worker's client certificate"],
    );
    // Settings that cannot be used are refused before any connection (78).
    refused(
        &b.url(),
        &["--amqp-tls-cert-path", "/nonexistent/ca.pem"],
        78,
        &["--amqp-tls-cert-path /nonexistent/ca.pem", "cannot read"],
    );
    let not_pem = blackbox::script("not a certificate\n");
    let not_pem = not_pem.path().display().to_string();
    refused(
        &b.url(),
        &["--amqp-tls-cert-path", &not_pem],
        78,
        &[&format!("--amqp-tls-cert-path {not_pem}"), "no certificate"],
    );
    refused(&external, &with_ca, 78, &["needs a client certificate"]);
    refused(
        &b.url(),
        &["--amqp-tls-client-cert", &rogue],
        78,
        &["needs --amqp-tls-client-key"],
    );
    let plain_external = format!(
        "amqp://localhost:{}/?auth_mechanism=external",
        TlsBroker::PLAIN_PORT
    );
    refused(&plain_external, &[], 64, &["use amqps://"]);
}

#[test]
fn an_expired_broker_certificate_is_named() {
    let _turn = shared();
    let b = tls_broker();
    // A TLS server with the CA's expired certificate for localhost (a RabbitMQ node serves
    // one certificate; openssl's test server stands in for a broker whose certificate ran
    // out).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut server = Command::new("openssl");
    server
        .args(["s_server", "-quiet", "-accept", &port.to_string()])
        .arg("-cert")
        .arg(b.cert("expired.pem"))
        .arg("-key")
        .arg(b.cert("expired.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = Guard(server.spawn().expect("openssl s_server"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("amqps://guest:guest@localhost:{port}/");
    refused(
        &url,
        &["--amqp-tls-cert-path", &ca()],
        74,
        &["certificate has expired"],
    );
}

#[test]
fn insecure_is_loud_and_only_without_a_ca() {
    let _turn = shared();
    let p = plugins();
    let b = tls_broker();
    let q = Queue(queue("insecure"));
    let job = blackbox::script(r#"{"job": {"id": 2}, "script": "true\n"}"#);
    let out = enqueued(p.path(), &b.url(), &q.0, &["--amqp-insecure"], job.path());
    assert!(
        out.stderr.contains("verification of the broker is OFF"),
        "{}",
        out.stderr
    );
    // With a CA, insecure is not used (and says so): the wrong CA is refused.
    let wrong = b.cert("rogue-ca.pem").display().to_string();
    refused(
        &b.url(),
        &["--amqp-insecure", "--amqp-tls-cert-path", &wrong],
        74,
        &["--amqp-insecure is not used", "unknown issuer"],
    );
    // TLS settings beside a plain URL are said to be unused.
    let plain = format!("amqp://guest:guest@localhost:{}/", TlsBroker::PLAIN_PORT);
    let out = enqueued(
        p.path(),
        &plain,
        &q.0,
        &["--amqp-tls-cert-path", &ca()],
        job.path(),
    );
    assert!(out.stderr.contains("they are not used"), "{}", out.stderr);
    // The worker refuses at start-up (74), before taking jobs, when the broker cannot be
    // verified.
    let mut cmd = host(p.path());
    cmd.args([
        "worker",
        "-b",
        "fake",
        "--queue",
        &b.url(),
        "--queue-name",
        &q.0,
    ]);
    let out = run(cmd);
    assert_eq!(out.code, Some(74), "{}", out.stderr);
    assert!(out.stderr.contains("unknown issuer"), "{}", out.stderr);
}

/// Starts the TLS broker's application again when dropped.
struct StartApp;

impl Drop for StartApp {
    fn drop(&mut self) {
        tls_broker().rabbitmqctl(&["start_app"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", tls_broker().port)).is_err()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn http_status(url: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_owned(), body.to_owned())
}

/// The broker goes away under a worker running two jobs: `/ready` says so; a SIGTERM
/// cancels the jobs and a second one stops the worker within seconds although their
/// requeues cannot reach the broker; and the jobs are on the queue once each afterwards
/// (the broker gave back their unacknowledged messages; the worker published no copies).
#[test]
fn a_broker_outage_is_not_ready_and_a_second_sigterm_stops_without_copies() {
    let _alone = SHARED.write().unwrap_or_else(|e| e.into_inner());
    let p = plugins();
    let b = tls_broker();
    let q = Queue(queue("outage"));
    let states = Queue(format!("{}.states", q.0));
    let logs = Queue(format!("{}.logs", q.0));
    for id in [51, 52] {
        let job = blackbox::script(&format!(
            r#"{{"job": {{"id": {id}}}, "script": "sleep\n"}}"#
        ));
        enqueued(
            p.path(),
            &b.url(),
            &q.0,
            &["--amqp-tls-cert-path", &ca()],
            job.path(),
        );
    }
    let mut cmd = host(p.path());
    cmd.args([
        "worker",
        "-b",
        "fake",
        "-c",
        "RUN_SLEEP=60s",
        "--pool-size",
        "2",
    ])
    .args([
        "--queue",
        &b.url(),
        "--queue-name",
        &q.0,
        "--amqp-tls-cert-path",
        &ca(),
    ])
    .args(["--state-queue", &states.0, "--log-queue", &logs.0])
    .args(["--http", "127.0.0.1:0"])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut w = Guard(cmd.spawn().unwrap());
    let err = std::io::BufReader::new(w.0.stderr.take().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let seen = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(err).map_while(Result::ok) {
                if let Some(u) = line.strip_prefix("host: worker HTTP endpoints on ") {
                    let _ = tx.send(u.to_owned());
                }
                let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
    }
    let api = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the HTTP line");
    let text = || seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(text().contains("job 51 started") && text().contains("job 52 started")) {
        assert!(
            Instant::now() < deadline,
            "the jobs did not start: {}",
            text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_status(&format!("{api}/ready")).0, "200");
    let restart = StartApp;
    b.rabbitmqctl(&["stop_app"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http_status(&format!("{api}/ready"));
        if code == "503" {
            assert!(body.contains("is down"), "{body}");
            assert!(!body.contains("guest:guest"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/ready answered {code} with the broker down"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    signal("-TERM", w.0.id());
    std::thread::sleep(Duration::from_millis(500));
    let second = Instant::now();
    signal("-TERM", w.0.id());
    let status = w.wait();
    assert!(
        second.elapsed() < Duration::from_secs(10),
        "the second SIGTERM took {:?}",
        second.elapsed()
    );
    assert_eq!(status.code(), Some(75), "{}", text());
    assert!(text().contains("exiting anyway"), "{}", text());
    drop(restart);
    // The two jobs, once each: the broker's own copies back from the dead connection.
    let deadline = Instant::now() + Duration::from_secs(30);
    while waiting(&q.0) != Some(2) {
        assert!(Instant::now() < deadline, "jobs queue: {:?}", waiting(&q.0));
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(waiting(&q.0), Some(2), "no copies were published");
}

#[test]
fn mistyped_and_empty_queue_urls_are_refused_and_no_directory_is_made() {
    let _turn = shared();
    let p = plugins();
    let cwd = tempfile::tempdir().unwrap();
    let job = blackbox::script(r#"{"job": {"id": 3}, "script": "true\n"}"#);
    for url in [
        "amqps:/guest:s3cret@localhost:5671/",
        "amqps:guest:s3cret@h/",
        "AMQP:/h",
        "amqps//guest:s3cret@localhost:5671/",
        " amqp://guest:s3cret@h/",
        "",
    ] {
        for sub in ["enqueue", "worker"] {
            let mut cmd = host(p.path());
            cmd.current_dir(cwd.path())
                .args([sub, "--queue", url, "--queue-name", "q"]);
            if sub == "enqueue" {
                cmd.arg(job.path());
            } else {
                cmd.args(["-b", "fake"]);
            }
            let out = run(cmd);
            assert_eq!(out.code, Some(64), "{sub} {url:?}: {}", out.stderr);
            assert!(!out.stderr.contains("s3cret"), "{}", out.stderr);
        }
    }
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "nothing made here"
    );
    // The scheme is read in any case.
    let b = tls_broker();
    let q = Queue(queue("upper"));
    let upper = format!("AMQPS://guest:guest@localhost:{}/", b.port);
    enqueued(
        p.path(),
        &upper,
        &q.0,
        &["--amqp-tls-cert-path", &ca()],
        job.path(),
    );
}

#[test]
fn settings_from_an_environment_file_are_read_as_operators_write_them() {
    let _turn = shared();
    let p = plugins();
    let b = tls_broker();
    let q = Queue(queue("env"));
    let job = blackbox::script(r#"{"job": {"id": 4}, "script": "true\n"}"#);
    let pem = std::fs::read_to_string(b.cert("ca.pem")).unwrap();
    // PEM text on one line with its breaks written \n, empty settings beside it, and the
    // insecure switch written as the original's files write booleans.
    let mut cmd = host(p.path());
    cmd.args(["enqueue", "--queue", &b.url(), "--queue-name", &q.0])
        .arg(job.path())
        .env("HOST_AMQP_TLS_CERT", pem.trim_end().replace('\n', "\\n"))
        .env("HOST_AMQP_TLS_CERT_PATH", "")
        .env("HOST_AMQP_TLS_CLIENT_CERT", "")
        .env("HOST_AMQP_TLS_CLIENT_KEY", "")
        .env("HOST_AMQP_INSECURE", "");
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(!out.stderr.contains("OFF"), "{}", out.stderr);
    // PEM text given on the command line, starting with dashes as PEM does.
    enqueued(
        p.path(),
        &b.url(),
        &q.0,
        &["--amqp-tls-cert", &pem],
        job.path(),
    );
    for yes in ["1", "TRUE", "yes"] {
        let mut cmd = host(p.path());
        cmd.args(["enqueue", "--queue", &b.url(), "--queue-name", &q.0])
            .arg(job.path())
            .env("HOST_AMQP_INSECURE", yes);
        let out = run(cmd);
        assert_eq!(out.code, Some(0), "{yes}: {}", out.stderr);
        assert!(
            out.stderr.contains("verification of the broker is OFF"),
            "{}",
            out.stderr
        );
    }
    // A login or a vhost the broker refuses is named as such (not as a TLS matter).
    let wrong = format!("amqp://guest:wrong@localhost:{}/", TlsBroker::PLAIN_PORT);
    let out = enqueue(p.path(), &wrong, &q.0, &[], job.path());
    assert_eq!(out.code, Some(74), "{}", out.stderr);
    assert!(out.stderr.contains("refused the login"), "{}", out.stderr);
    assert!(!out.stderr.contains("amqps://"), "{}", out.stderr);
    let novhost = format!(
        "amqp://guest:guest@localhost:{}/novhost",
        TlsBroker::PLAIN_PORT
    );
    let out = enqueue(p.path(), &novhost, &q.0, &[], job.path());
    assert_eq!(out.code, Some(74), "{}", out.stderr);
    assert!(
        out.stderr.contains("refused the vhost \"novhost\""),
        "{}",
        out.stderr
    );
    // A heartbeat below a second cannot be asked for.
    let out = enqueue(
        p.path(),
        &b.url(),
        &q.0,
        &["--amqp-heartbeat", "500ms"],
        job.path(),
    );
    assert_eq!(out.code, Some(64), "{}", out.stderr);
    // An encrypted key is named as such.
    let enc = tempfile::NamedTempFile::new().unwrap();
    let made = Command::new("openssl")
        .args(["pkey", "-aes256", "-passout", "pass:x", "-in"])
        .arg(b.cert("client.key"))
        .arg("-out")
        .arg(enc.path())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let cert = b.cert("client.pem").display().to_string();
    let key = enc.path().display().to_string();
    let out = enqueue(
        p.path(),
        &b.url(),
        &q.0,
        &[
            "--amqp-tls-client-cert",
            &cert,
            "--amqp-tls-client-key",
            &key,
        ],
        job.path(),
    );
    assert_eq!(out.code, Some(78), "{}", out.stderr);
    assert!(out.stderr.contains("encrypted"), "{}", out.stderr);
}

/// `host worker` with `args` on queue `q` of the tests' plain broker; the queue is deleted
/// after (it is declared only once the logs broker answered, so it may not exist).
fn on_plain_broker(q: &str, args: &[&str]) -> blackbox::Ran {
    let p = plugins();
    let mut cmd = host(p.path());
    cmd.args(["worker", "--queue", blackbox::amqp_url(), "--queue-name", q])
        .args(args);
    let out = run(cmd);
    let _ = Command::new("rabbitmqctl")
        .args(["delete_queue", q])
        .output();
    out
}

/// `host worker` on the tests' plain broker with log parts to the TLS node, which must fail
/// with `code` and say each of `said`.
#[track_caller]
fn logs_refused(args: &[&str], code: i32, said: &[&str]) {
    let url = tls_broker().url();
    let args: Vec<&str> = ["--logs-amqp-uri", url.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    let out = on_plain_broker(&queue("logs-refused"), &args);
    assert_eq!(out.code, Some(code), "{args:?}: {}", out.stderr);
    for s in said {
        assert!(
            out.stderr.contains(s),
            "{args:?}: no {s:?} in {}",
            out.stderr
        );
    }
}

#[test]
fn the_logs_brokers_tls_failures_name_its_own_flags() {
    let _turn = shared();
    logs_refused(
        &[],
        74,
        &[
            "unknown issuer",
            "give the broker's CA with --logs-amqp-tls-cert-path",
        ],
    );
    logs_refused(
        &["--logs-amqp-tls-cert-path", "/nonexistent/ca.pem"],
        78,
        &["--logs-amqp-tls-cert-path /nonexistent/ca.pem"],
    );
    logs_refused(
        &["--logs-amqp-tls-cert", "not a certificate"],
        78,
        &["--logs-amqp-tls-cert"],
    );
    // The logs broker's CA without a logs broker: said, not silently dropped.
    let ca = ca();
    let out = on_plain_broker(
        &queue("logs-ca-alone"),
        &["--exit-when-idle", "--logs-amqp-tls-cert-path", &ca],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("without --logs-amqp-uri: not used"),
        "{}",
        out.stderr
    );
}
