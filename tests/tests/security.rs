//! Regression tests for the worker's security promises (README, "Security"): who may write
//! into a directory queue, and how the control API (`--http`) is guarded. Each test runs the
//! real binary the way an operator would, and holds the rule its doc comment names.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blackbox::signal;
use blackbox::worker::{
    exit_within, http, http_url, is_root, job, poll, run_within, spawn_lines, tail, worker_up,
    Queue, DIRS,
};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Support
// ---------------------------------------------------------------------------------------

/// Basic credentials `u:p` (base64), those the tests give `--http-auth`.
const RIGHT: &str = "Basic dTpw";
/// Basic credentials `u:x` (base64): the right user, a wrong password.
const WRONG: &str = "Basic dTp4";

/// What a worker's HTTP endpoint answered.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The status line and the headers.
    head: String,
    body: String,
}

impl Answer {
    /// The value of header `name`, if it is there.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One request, written raw on a connection of its own (closed after the answer), bounded to
/// 5 s; `Host` is `addr` unless `headers` give one. Status 0 when nothing answered.
fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let mut raw = Vec::new();
    let sent = (|| {
        let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(head.as_bytes())?;
        s.read_to_end(&mut raw)
    })();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status == 0 {
        eprintln!("{method} {path}: no answer ({sent:?})");
    }
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// The `ADDR` of a worker's `http://ADDR` base URL.
fn addr_of(url: &str) -> String {
    url.strip_prefix("http://").unwrap_or(url).to_owned()
}

/// The worker's pool size, from `GET /worker` (with `auth`, when given).
fn pool_size(addr: &str, auth: Option<&str>) -> u64 {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    let a = request(addr, "GET", "/worker", &headers, "");
    let status: Value = serde_json::from_str(&a.body).unwrap_or_default();
    status["pool_size"]
        .as_u64()
        .unwrap_or_else(|| panic!("GET /worker gave no pool size: {a:?}"))
}

/// Sets the mode of `path`.
fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs a worker (fake backend, `--exit-when-idle`, `extra` flags) on `q` for at most 20 s;
/// its exit code and stderr.
fn run_worker(q: &Queue, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["--exit-when-idle"];
    args.extend_from_slice(extra);
    let (code, exited, stderr) = run_within(q.worker("fake", &args), 20.0);
    assert!(
        exited,
        "the worker still ran after 20 s:\n{}",
        tail(&stderr, 10)
    );
    (code, stderr)
}

/// Asserts that a worker was refused with exit 74 and a message naming `path` and `words`.
fn assert_refused(code: Option<i32>, stderr: &str, path: &Path, words: &[&str]) {
    let path = path.display().to_string();
    let line = stderr.lines().find(|l| l.contains(&path));
    assert!(
        code == Some(74) && line.is_some_and(|l| words.iter().all(|w| l.contains(w))),
        "expected exit 74 and a line naming {path} and {words:?}; exit {code:?}, stderr:\n{}",
        tail(stderr, 10)
    );
}

/// `cmd`, started by `sh` after `ulimit -n n` (its program, arguments and environment).
fn under_ulimit(cmd: &Command, n: u32) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!("ulimit -n {n} && exec \"$@\""))
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh
}

/// Clients that open connections to `addr`, each sending part of a request's head and then
/// a header line every 3 s (never the end of the head), from a thread, until dropped.
struct SlowClients {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlowClients {
    /// Starts `n` of them; returns once every connection was tried.
    fn start(addr: &str, n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        let until = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut streams: Vec<TcpStream> = Vec::new();
            for _ in 0..n {
                let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
                    continue;
                };
                let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
                let head = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n");
                if s.write_all(head.as_bytes()).is_ok() {
                    streams.push(s);
                }
            }
            let _ = opened_tx.send(streams.len());
            let mut line = 0u64;
            while !until.load(Ordering::SeqCst) {
                for _ in 0..30 {
                    if until.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                line += 1;
                // Those the worker closed are left out from then on.
                streams.retain_mut(|s| {
                    s.write_all(format!("X-Slow-{line}: 1\r\n").as_bytes())
                        .is_ok()
                });
            }
        });
        let opened = opened_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the slow clients did not connect within 60 s");
        eprintln!("slow clients: {opened} of {n} connections sent part of a head");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SlowClients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join(); // its connections close with it
        }
    }
}

// ---------------------------------------------------------------------------------------
// The directory queue
// ---------------------------------------------------------------------------------------

/// A queue directory others may write into (mode 0777) could be filled with jobs or links
/// by anyone. Rule: the worker refuses it, exit 74, with a message naming the path and the
/// fix (`chmod`).
#[test]
fn a_queue_directory_others_may_write_is_refused_naming_the_path_and_chmod() {
    let q = Queue::new();
    chmod(q.root(), 0o777);
    q.put("1.json", &job(1, "echo x\n"));
    let (code, stderr) = run_worker(&q, &[]);
    assert_refused(code, &stderr, q.root(), &["chmod"]);
    assert!(
        q.path("new/1.json").exists(),
        "a job of the refused queue was taken"
    );
}

/// A `new/` writable by its group lets the group queue jobs: only when the operator says so.
/// Rule: a group-writable `new/` is refused (exit 74, naming it and `--queue-shared-new`)
/// unless `--queue-shared-new`, with which the worker runs the queue's jobs.
#[test]
fn a_group_writable_new_dir_is_refused_unless_queue_shared_new() {
    let q = Queue::new();
    for d in DIRS {
        std::fs::create_dir_all(q.path(d)).unwrap();
    }
    chmod(&q.path("new"), 0o775);
    q.put("1.json", &job(1, "echo x\n"));
    let (code, stderr) = run_worker(&q, &[]);
    assert_refused(code, &stderr, &q.path("new"), &["--queue-shared-new"]);
    assert!(
        q.path("new/1.json").exists(),
        "a job of the refused queue was taken"
    );

    let (code, stderr) = run_worker(&q, &["--queue-shared-new"]);
    assert_eq!(
        code,
        Some(0),
        "--queue-shared-new: the worker did not run the queue:\n{}",
        tail(&stderr, 10)
    );
    assert_eq!(
        q.last_state(1).as_deref(),
        Some("passed"),
        "--queue-shared-new: job 1 did not pass\n{}",
        q.listing()
    );
}

/// A subdirectory that is a symlink would send the worker's logs (or states) wherever it
/// points. Rule: a queue whose `log/` is a symlink is refused (exit 74, naming it), and
/// nothing is written where it points.
#[test]
fn a_queue_whose_log_dir_is_a_symlink_is_refused() {
    let q = Queue::new();
    let elsewhere = tempfile::tempdir().unwrap();
    for d in DIRS.iter().filter(|d| **d != "log") {
        std::fs::create_dir_all(q.path(d)).unwrap();
    }
    std::os::unix::fs::symlink(elsewhere.path(), q.path("log")).unwrap();
    q.put("1.json", &job(1, "echo x\n"));
    let (code, stderr) = run_worker(&q, &[]);
    assert_refused(code, &stderr, &q.path("log"), &["symbolic link"]);
    let written = std::fs::read_dir(elsewhere.path()).unwrap().count();
    assert_eq!(written, 0, "the worker wrote where log/ points");
}

/// Whoever owns a directory above the queue may rename the queue away and put one of their
/// own (with links in it) in its place. Rule: a queue under a directory owned by another
/// user (`nobody`) is refused (exit 74, naming that directory). Needs root (chown); without
/// it, it says why and checks nothing.
#[test]
fn a_queue_under_a_directory_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: giving a directory to nobody needs root (chown)");
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let theirs = base.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    chmod(&theirs, 0o755);
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let plugins = blackbox::plugin_dir(&[("libfake.so", &blackbox::artifacts().fake)]);
    let mut cmd = blackbox::host(plugins.path());
    cmd.args(["worker", "-b", "fake", "--exit-when-idle", "--queue"])
        .arg(format!("file://{}/q", theirs.display()));
    let (code, exited, stderr) = run_within(cmd, 20.0);
    assert!(
        exited,
        "the worker still ran after 20 s:\n{}",
        tail(&stderr, 10)
    );
    assert_refused(code, &stderr, &theirs, &["65534"]);
}

// ---------------------------------------------------------------------------------------
// The control API
// ---------------------------------------------------------------------------------------

/// Without `--http-auth`, a web page (CSRF: an `Origin` header) or a DNS-rebound name (a
/// `Host` that is not the loopback address) could resize the pool. Rule: `POST
/// /pool/increment` with `Origin: http://evil.example` or `Host: evil.example` is 403 and
/// leaves the pool as it was; a plain one is 200 and grows it.
#[test]
fn without_auth_a_request_from_a_web_page_or_a_foreign_host_may_not_change_the_pool() {
    let q = Queue::new();
    let (mut w, err, url) = q.worker_with_http("fake", &["--pool-size", "2"]);
    let addr = addr_of(&url);
    assert_eq!(pool_size(&addr, None), 2, "precondition: the pool");

    let origin = request(
        &addr,
        "POST",
        "/pool/increment",
        &[("Origin", "http://evil.example")],
        "",
    );
    assert_eq!(origin.status, 403, "with an Origin: {origin:?}");
    assert_eq!(pool_size(&addr, None), 2, "the pool changed with an Origin");

    let host = request(
        &addr,
        "POST",
        "/pool/increment",
        &[("Host", "evil.example")],
        "",
    );
    assert_eq!(host.status, 403, "with Host: evil.example: {host:?}");
    assert_eq!(
        pool_size(&addr, None),
        2,
        "the pool changed with a foreign Host"
    );
    let read = request(&addr, "GET", "/worker", &[("Host", "evil.example")], "");
    assert_eq!(
        read.status, 403,
        "GET /worker with Host: evil.example: {read:?}"
    );

    let plain = request(&addr, "POST", "/pool/increment", &[], "");
    assert_eq!(plain.status, 200, "a plain POST /pool/increment: {plain:?}");
    assert_eq!(
        pool_size(&addr, None),
        3,
        "a plain increment did not grow the pool"
    );

    signal("-TERM", w.0.id());
    assert!(
        exit_within(&mut w, 10.0).is_some(),
        "{}",
        tail(&err.text(), 10)
    );
}

/// With `--http-auth USER:PASS` the control endpoints need basic auth; the probes and the
/// metrics stay open. Rule: `GET /worker` without credentials is 401 with a
/// `WWW-Authenticate: Basic` header, with wrong ones 403, with the right ones 200;
/// `/healthz`, `/ready` and `/metrics` answer 200 without any.
#[test]
fn with_http_auth_the_control_endpoints_need_credentials_and_the_probes_do_not() {
    let q = Queue::new();
    let (mut w, err, url) = q.worker_with_http("fake", &["--http-auth", "u:p"]);
    let addr = addr_of(&url);

    let none = request(&addr, "GET", "/worker", &[], "");
    assert_eq!(
        none.status, 401,
        "GET /worker without credentials: {none:?}"
    );
    assert!(
        none.header("WWW-Authenticate")
            .is_some_and(|v| v.starts_with("Basic")),
        "a 401 without WWW-Authenticate: Basic: {none:?}"
    );
    let wrong = request(&addr, "GET", "/worker", &[("Authorization", WRONG)], "");
    assert_eq!(
        wrong.status, 403,
        "GET /worker with a wrong password: {wrong:?}"
    );
    let right = request(&addr, "GET", "/worker", &[("Authorization", RIGHT)], "");
    assert_eq!(
        right.status, 200,
        "GET /worker with the credentials: {right:?}"
    );
    let increment = request(&addr, "POST", "/pool/increment", &[], "");
    assert_eq!(
        increment.status, 401,
        "POST /pool/increment without credentials: {increment:?}"
    );

    for open in ["/healthz", "/ready", "/metrics"] {
        let a = request(&addr, "GET", open, &[], "");
        assert_eq!(a.status, 200, "GET {open} without credentials: {a:?}");
    }

    signal("-TERM", w.0.id());
    assert!(
        exit_within(&mut w, 10.0).is_some(),
        "{}",
        tail(&err.text(), 10)
    );
}

/// The original's `PATCH /worker` and `DELETE /worker`, behind auth. Rule: `PATCH /worker
/// {"poolSize": 7}` is 204 and `GET /worker` then shows 7; `{"poolSize": 700000}` (above the
/// limit of 100,000) is 400 and changes nothing; `DELETE /worker {"graceful": true}` is 204
/// and the worker drains and exits 0 within 10 s.
#[test]
fn patch_and_delete_worker_resize_the_pool_within_its_limit_and_drain() {
    let q = Queue::new();
    let (mut w, err, url) = q.worker_with_http("fake", &["--http-auth", "u:p"]);
    let addr = addr_of(&url);
    let auth = [
        ("Authorization", RIGHT),
        ("Content-Type", "application/json"),
    ];

    let patch = request(&addr, "PATCH", "/worker", &auth, r#"{"poolSize": 7}"#);
    assert_eq!(patch.status, 204, "PATCH /worker poolSize 7: {patch:?}");
    assert_eq!(pool_size(&addr, Some(RIGHT)), 7, "the pool after PATCH");

    let huge = request(&addr, "PATCH", "/worker", &auth, r#"{"poolSize": 700000}"#);
    assert_eq!(huge.status, 400, "PATCH /worker poolSize 700000: {huge:?}");
    assert_eq!(
        pool_size(&addr, Some(RIGHT)),
        7,
        "the pool after a refused PATCH"
    );

    let delete = request(&addr, "DELETE", "/worker", &auth, r#"{"graceful": true}"#);
    assert_eq!(delete.status, 204, "DELETE /worker graceful: {delete:?}");
    let status = exit_within(&mut w, 10.0);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "DELETE /worker {{\"graceful\": true}}: the worker did not exit 0 within 10 s ({status:?})\n{}",
        tail(&err.text(), 10)
    );
}

/// Anyone who reaches a non-loopback address could resize or stop an unguarded worker.
/// Rule: `--http 0.0.0.0:0` without `--http-auth` is a usage error (exit 64) naming
/// `--http-auth`; with `--http-allow-unauthenticated` (a proxy guards it) the worker starts.
#[test]
fn a_non_loopback_http_address_without_auth_is_refused_unless_allowed() {
    let q = Queue::new();
    let (code, exited, stderr) = run_within(q.worker("fake", &["--http", "0.0.0.0:0"]), 20.0);
    assert!(
        exited,
        "the worker still ran after 20 s:\n{}",
        tail(&stderr, 10)
    );
    assert!(
        code == Some(64) && stderr.contains("--http-auth"),
        "--http 0.0.0.0:0 without auth: exit {code:?}, stderr:\n{}",
        tail(&stderr, 10)
    );

    let (mut w, err) = spawn_lines(q.worker(
        "fake",
        &["--http", "0.0.0.0:0", "--http-allow-unauthenticated"],
    ));
    let url = http_url(&err);
    worker_up(&err);
    let port = url.rsplit(':').next().unwrap();
    let a = request(&format!("127.0.0.1:{port}"), "GET", "/healthz", &[], "");
    assert_eq!(a.status, 200, "/healthz of the allowed worker: {a:?}");
    signal("-TERM", w.0.id());
    assert!(
        exit_within(&mut w, 10.0).is_some(),
        "{}",
        tail(&err.text(), 10)
    );
}

/// Slow clients (a head sent a line at a time, never finished) could take every descriptor
/// of the worker, which then could not run jobs. Rule: with the worker under `ulimit -n
/// 256` and 300 such clients connected, a queued job passes within 10 s, and `/healthz`
/// answers again within 20 s once the clients stop.
#[test]
fn slow_clients_neither_keep_jobs_from_running_nor_healthz_down_for_long() {
    let q = Queue::new();
    let cmd = under_ulimit(&q.worker("fake", &["--http", "127.0.0.1:0"]), 256);
    let (mut w, err) = spawn_lines(cmd);
    let url = http_url(&err);
    worker_up(&err);
    let addr = addr_of(&url);

    let slow = SlowClients::start(&addr, 300);
    q.put("1.json", &job(1, "echo x\n"));
    let passed = poll(10.0, || q.last_state(1).as_deref() == Some("passed"));
    assert!(
        passed,
        "job 1 did not pass within 10 s while slow clients held connections (states {:?})\n{}{}",
        q.state_names(1),
        q.listing(),
        tail(&err.text(), 10)
    );
    drop(slow);
    let stopped = Instant::now();
    let answered = poll(20.0, || http("GET", &format!("{url}/healthz")).0 == 200);
    assert!(
        answered,
        "/healthz did not answer within 20 s after the slow clients stopped ({:?})\n{}",
        stopped.elapsed(),
        tail(&err.text(), 10)
    );
    assert!(
        w.0.try_wait().unwrap().is_none(),
        "the worker exited:\n{}",
        tail(&err.text(), 10)
    );
    signal("-TERM", w.0.id());
    assert!(
        exit_within(&mut w, 10.0).is_some(),
        "{}",
        tail(&err.text(), 10)
    );
}
