//! `host worker` on a directory queue, as an operator runs it: many jobs with mixed
//! outcomes, workers sharing a queue, a worker killed mid-job, signals, the build script
//! service, and bad input that must never cost a job.

use std::io::{BufRead as _, Read as _, Write as _};
use std::process::Stdio;
use std::time::{Duration, Instant};

use blackbox::worker::{http, Queue};
use blackbox::{host, run, signal, Guard};
use serde_json::{json, Value};

fn expected_state(code: i32) -> &'static str {
    match code {
        0 => "passed",
        1 => "failed",
        _ => "errored",
    }
}

#[test]
fn fifty_jobs_with_mixed_outcomes_end_as_expected_with_exact_logs_on_fake_and_local() {
    for backend in ["fake", "local"] {
        let q = Queue::new();
        for id in 1..=50u64 {
            let code = (id % 4) as i32;
            let script = if backend == "local" {
                format!("printf 'job {id}\\n\\x01\\xff'\necho to stderr >&2\nexit {code}\n")
            } else {
                format!("job {id}\nexit {code}\n")
            };
            q.enqueue(id, &script);
        }
        let mut cmd = q.worker(
            backend,
            &[
                "--pool-size",
                "4",
                "--exit-when-idle",
                "-c",
                "ECHO_SCRIPT=true",
                "-c",
                "SCRIPT_EXIT=true",
            ],
        );
        if backend == "local" {
            cmd = q.worker(backend, &["--pool-size", "4", "--exit-when-idle"]);
        }
        let out = run(cmd);
        assert_eq!(out.code, Some(0), "{backend}: {}", out.stderr);
        for id in 1..=50u64 {
            let code = (id % 4) as i32;
            let states = q.state_names(id);
            assert_eq!(
                states,
                ["received", "started", expected_state(code)],
                "{backend} job {id}"
            );
            let last = q.states(id).pop().unwrap();
            assert_eq!(last["exit_code"], code, "{backend} job {id}: {last}");
            let expected: Vec<u8> = if backend == "local" {
                [
                    format!("job {id}\n").as_bytes(),
                    b"\x01\xff",
                    b"to stderr\n",
                ]
                .concat()
            } else {
                format!("job {id}\nexit {code}\n").into_bytes()
            };
            assert_eq!(q.log(id), expected, "{backend} job {id}");
        }
        assert_eq!(q.count("done"), 50, "{backend}");
        assert_eq!(q.count("new"), 0);
    }
}

#[test]
fn two_workers_on_one_queue_run_each_job_exactly_once() {
    let q = Queue::new();
    for id in 1..=100u64 {
        q.enqueue(id, &format!("job {id}\n"));
    }
    let args = [
        "--pool-size",
        "4",
        "--exit-when-idle",
        "-c",
        "ECHO_SCRIPT=true",
        "-c",
        "RUN_SLEEP=20ms",
    ];
    let spawn = || {
        let mut cmd = q.worker("fake", &args);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        Guard(cmd.spawn().unwrap())
    };
    let (mut a, mut b) = (spawn(), spawn());
    assert_eq!(a.wait().code(), Some(0));
    assert_eq!(b.wait().code(), Some(0));
    let (mut err_a, mut err_b) = (String::new(), String::new());
    a.0.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err_a)
        .unwrap();
    b.0.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err_b)
        .unwrap();
    let finished = |e: &str| e.lines().filter(|l| l.contains(" passed ")).count();
    assert_eq!(finished(&err_a) + finished(&err_b), 100);
    assert!(
        finished(&err_a) > 0 && finished(&err_b) > 0,
        "both workers took jobs"
    );
    for id in 1..=100u64 {
        assert_eq!(
            q.state_names(id),
            ["received", "started", "passed"],
            "job {id}"
        );
    }
    assert_eq!(q.count("done"), 100);
}

#[test]
fn a_worker_killed_mid_job_loses_nothing_the_next_worker_requeues_and_finishes_it() {
    let q = Queue::new();
    q.enqueue(7, "job 7\n");
    let mut cmd = q.worker("fake", &["-c", "RUN_SLEEP=30s", "--pool-size", "1"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut doomed = Guard(cmd.spawn().unwrap());
    q.wait_for(20, "the job to start", |q| q.state_names(7).len() == 2);
    doomed.0.kill().unwrap(); // SIGKILL
    doomed.wait();
    assert_eq!(
        q.count("new"),
        0,
        "the job is still claimed by the dead worker"
    );

    let out = run(q.worker("fake", &["--exit-when-idle", "-c", "ECHO_SCRIPT=true"]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("requeued job 7"), "{}", out.stderr);
    assert_eq!(
        q.state_names(7),
        ["received", "started", "requeued", "received", "started", "passed"]
    );
    assert_eq!(q.log(7), b"job 7\n");
    assert_eq!(q.count("done"), 1);
    let claimed = std::fs::read_dir(q.path("claimed")).unwrap().count();
    assert_eq!(claimed, 0, "the dead worker's claim directory is gone");
}

/// Starts a fake worker with HTTP on a free port; returns it and its base URL.
fn worker_with_http(
    q: &Queue,
    extra: &[&str],
) -> (Guard, String, std::io::BufReader<std::process::ChildStderr>) {
    let mut args = vec!["--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut cmd = q.worker("fake", &args);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut g = Guard(cmd.spawn().unwrap());
    let mut err = std::io::BufReader::new(g.0.stderr.take().unwrap());
    let mut line = String::new();
    let url = loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "the worker ended early"
        );
        if let Some(rest) = line.trim().strip_prefix("host: worker HTTP endpoints on ") {
            break rest.to_owned();
        }
    };
    (g, url, err)
}

#[test]
fn sigint_drains_sigterm_requeues_and_sigusr2_pauses() {
    // SIGINT: the running job finishes, the waiting one stays waiting.
    let q = Queue::new();
    q.enqueue(1, "one\n");
    q.enqueue(2, "two\n");
    let (mut g, _, _err) = worker_with_http(&q, &["--pool-size", "1", "-c", "RUN_SLEEP=2s"]);
    q.wait_for(20, "job 1 to start", |q| q.state_names(1).len() == 2);
    signal("-INT", g.0.id());
    assert_eq!(g.wait().code(), Some(0));
    assert_eq!(q.state_names(1), ["received", "started", "passed"]);
    assert!(q.state_names(2).is_empty(), "no new job after SIGINT");
    assert_eq!(q.count("new"), 1);

    // SIGTERM: the running job is cancelled and requeued.
    let (mut g, _, _err) = worker_with_http(&q, &["--pool-size", "1", "-c", "RUN_SLEEP=30s"]);
    q.wait_for(20, "job 2 to start", |q| q.state_names(2).len() == 2);
    let began = Instant::now();
    signal("-TERM", g.0.id());
    assert_eq!(g.wait().code(), Some(0));
    assert!(began.elapsed() < Duration::from_secs(10));
    assert_eq!(q.state_names(2), ["received", "started", "requeued"]);
    let last = q.states(2).pop().unwrap();
    assert!(
        last["reason"].as_str().unwrap().contains("shut down"),
        "{last}"
    );
    assert_eq!(q.count("new"), 1, "job 2 is back on the queue");

    // SIGUSR2: /ready says 503 and nothing is taken; again: 200 and the job runs.
    let (mut g, url, _err) = worker_with_http(&q, &["-c", "ECHO_SCRIPT=true"]);
    q.wait_for(20, "job 2 to pass", |q| {
        q.state_names(2).last().map(String::as_str) == Some("passed")
    });
    assert_eq!(http("GET", &format!("{url}/ready")).0, 200);
    signal("-USR2", g.0.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while http("GET", &format!("{url}/ready")).0 != 503 {
        assert!(
            Instant::now() < deadline,
            "/ready never said 503 after SIGUSR2"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    q.enqueue(3, "three\n");
    std::thread::sleep(Duration::from_millis(500));
    assert!(q.state_names(3).is_empty(), "a paused worker takes nothing");
    signal("-USR2", g.0.id());
    q.wait_for(20, "job 3 to pass", |q| {
        q.state_names(3).last().map(String::as_str) == Some("passed")
    });
    assert_eq!(http("GET", &format!("{url}/healthz")).0, 200);
    let (code, body) = http("POST", &format!("{url}/pool/increment"));
    assert_eq!(code, 200, "{body}");
    let status: Value = serde_json::from_str(&http("GET", &format!("{url}/worker")).1).unwrap();
    assert_eq!(status["backend"], "fake", "{status}");
    let metrics = http("GET", &format!("{url}/metrics")).1;
    assert!(
        metrics.contains("host_worker_jobs_total{state=\"passed\"}"),
        "{metrics}"
    );
    signal("-TERM", g.0.id());
    assert_eq!(g.wait().code(), Some(0));
}

/// A small HTTP server answering each POST with the next of `answers` (status, body);
/// returns its URL and a handle that yields the requests it saw.
fn script_service(
    answers: Vec<(u16, &'static str)>,
) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/script", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for (status, body) in answers {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.to_ascii_lowercase().starts_with("content-length:") {
                    length = line[15..].trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut payload = vec![0; length];
            reader.read_exact(&mut payload).unwrap();
            seen.push(format!("{head}{}", String::from_utf8_lossy(&payload)));
            let reply = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(reply.as_bytes()).unwrap();
        }
        seen
    });
    (url, handle)
}

#[test]
fn scripts_come_from_the_build_api_with_retries_and_a_refusal_errors_the_job() {
    let q = Queue::new();
    let (url, service) = script_service(vec![
        (503, "busy"),
        (200, "echo from the build api\n"),
        (422, "unknown language cobol"),
    ]);
    q.enqueue_doc(&json!({"job": {"id": 41}, "config": {"language": "ruby"}}));
    let mut cmd = q.worker(
        "fake",
        &[
            "--pool-size",
            "1",
            "--exit-when-idle",
            "-c",
            "ECHO_SCRIPT=true",
            "--build-api",
            &url,
        ],
    );
    cmd.env("HOST_BUILD_API_TOKEN", "s3cret");
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(q.state_names(41), ["received", "started", "passed"]);
    assert_eq!(q.log(41), b"echo from the build api\n");

    q.enqueue_doc(&json!({"job": {"id": 42}, "config": {"language": "cobol"}}));
    let mut cmd = q.worker("fake", &["--exit-when-idle", "--build-api", &url]);
    cmd.env("HOST_BUILD_API_TOKEN", "s3cret");
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(q.state_names(42), ["received", "errored"]);
    let last = q.states(42).pop().unwrap();
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("unknown language cobol"),
        "{last}"
    );
    assert!(String::from_utf8_lossy(&q.log(42)).contains("unknown language cobol"));

    let seen = service.join().unwrap();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert!(request.starts_with("POST /script"), "{request}");
        assert!(request.contains("uthorization: token s3cret"), "{request}");
    }
    assert!(
        seen[0].contains("\"id\":41"),
        "the payload is POSTed: {}",
        seen[0]
    );
}

#[test]
fn bad_input_gets_an_answer_and_no_job_is_lost() {
    let q = Queue::new();
    q.put_raw("0001-notjson.json", b"{this is not json");
    q.put_raw(
        "0002-noid.json",
        br#"{"job": {"number": "1.1"}, "script": "x"}"#,
    );
    q.put_raw("0003-noscript.json", br#"{"job": {"id": 3}}"#);
    q.put_raw(
        "0004-negative.json",
        br#"{"job": {"id": 4}, "timeouts": {"hard_limit": -5}, "script": "x"}"#,
    );
    q.put_raw(
        "0005-good.json",
        br#"{"job": {"id": 5}, "script": "fine\n", "timeouts": {"log_silence": null}}"#,
    );
    let out = run(q.worker("fake", &["--exit-when-idle", "-c", "ECHO_SCRIPT=true"]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for (name, why) in [
        ("0001-notjson.json", "not a JSON job payload"),
        ("0002-noid.json", "no job id"),
    ] {
        assert!(q.path("rejected").join(name).exists(), "{name}");
        let reason =
            std::fs::read_to_string(q.path("rejected").join(format!("{name}.reason"))).unwrap();
        assert!(reason.contains(why), "{name}: {reason}");
    }
    for (id, states, why) in [
        (3, &["received", "errored"][..], "no script"),
        (4, &["received", "errored"][..], "negative"),
    ] {
        assert_eq!(q.state_names(id), states, "job {id}");
        let last = q.states(id).pop().unwrap();
        assert!(
            last["reason"].as_str().unwrap().contains(why),
            "job {id}: {last}"
        );
    }
    assert_eq!(q.state_names(5), ["received", "started", "passed"]);
    assert_eq!(q.count("done"), 3);
    assert_eq!(q.count("new"), 0);

    // `host enqueue` refuses what is not a job, naming why.
    let bad = blackbox::script("{\"job\": {}}");
    let mut cmd = host(q.plugins.path());
    cmd.args(["enqueue", "--queue", &q.url()]).arg(bad.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(65), "{}", out.stderr);
    assert!(out.stderr.contains("no job id"), "{}", out.stderr);
}

#[test]
fn an_unwritable_log_requeues_the_job_until_its_limit_and_the_worker_keeps_serving() {
    let q = Queue::new();
    let mut cmd = q.worker("fake", &["--max-requeues", "2", "-c", "ECHO_SCRIPT=true"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut g = Guard(cmd.spawn().unwrap());
    // The worker is up once its claim directory exists: it is made after the queue's
    // directories are checked (replacing log/ before that check would stop the worker).
    q.wait_for(20, "the worker's claim directory", |q| {
        std::fs::read_dir(q.path("claimed")).is_ok_and(|mut d| d.next().is_some())
    });
    // While the worker runs, the log directory becomes a file: every attempt to open a log
    // fails (as root, taking its write permission would not).
    std::fs::remove_dir_all(q.path("log")).unwrap();
    std::fs::write(q.path("log"), b"not a directory").unwrap();
    q.enqueue(9, "nine\n");
    q.wait_for(20, "job 9 to end", |q| {
        q.state_names(9).last().map(String::as_str) == Some("errored")
    });
    // The worker still serves: with the log directory back, the next job passes.
    std::fs::remove_file(q.path("log")).unwrap();
    std::fs::create_dir(q.path("log")).unwrap();
    q.enqueue(10, "ten\n");
    q.wait_for(20, "job 10 to pass", |q| {
        q.state_names(10).last().map(String::as_str) == Some("passed")
    });
    signal("-TERM", g.0.id());
    assert_eq!(g.wait().code(), Some(0));
    assert_eq!(
        q.state_names(9),
        ["received", "requeued", "received", "requeued", "received", "errored"]
    );
    let states = q.states(9);
    assert!(
        states[1]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot open the job's log"),
        "{states:?}"
    );
    assert!(
        states[5]["reason"]
            .as_str()
            .unwrap()
            .contains("requeued 2 times"),
        "{states:?}"
    );
    assert_eq!(q.count("done"), 2);
}

#[test]
fn a_stderr_nobody_reads_does_not_stop_the_jobs() {
    let q = Queue::new();
    for id in 1..=3000u64 {
        q.put_raw(
            &format!("{id:06}.json"),
            format!(r#"{{"job": {{"id": {id}}}, "script": "x"}}"#).as_bytes(),
        );
    }
    // Two lines per job fill a 64 KiB pipe, and then the printer's queue, long before the
    // last job.
    let mut cmd = q.worker("fake", &["--pool-size", "8", "--exit-when-idle"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut g = Guard(cmd.spawn().unwrap());
    q.wait_for(120, "every job to be done", |q| q.count("done") == 3000);
    let mut err = std::io::BufReader::new(g.0.stderr.take().unwrap());
    let mut text = String::new();
    err.read_to_string(&mut text).unwrap();
    assert_eq!(g.wait().code(), Some(0));
    assert!(
        text.contains("dropped while stderr was blocked"),
        "{}",
        &text[text.len().saturating_sub(500)..]
    );
}

#[test]
fn the_readme_worker_example_runs() {
    let q = Queue::new();
    let jobs = blackbox::workspace().join("examples/jobs");
    for entry in std::fs::read_dir(&jobs).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "json") {
            let mut cmd = host(q.plugins.path());
            cmd.args(["enqueue", "--queue", &q.url()]).arg(entry.path());
            assert_eq!(run(cmd).code, Some(0));
        }
    }
    let out = run(q.worker("local", &["--exit-when-idle"]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(q.state_names(1001), ["received", "started", "passed"]);
    assert_eq!(q.state_names(1002), ["received", "started", "failed"]);
    assert_eq!(q.log(1001), b"hello from job 1001\n");
}

#[test]
fn progress_type_text_puts_the_starts_steps_in_the_log_and_the_image_in_the_states() {
    let q = Queue::new();
    q.enqueue(41, "echo after the steps\n");
    q.enqueue(42, "true\n");
    // fake with progress into the log; local without --progress-type keeps its log clean.
    let out = run(q.worker(
        "fake",
        &[
            "--exit-when-idle",
            "--progress-type",
            "text",
            "-c",
            "ECHO_SCRIPT=true",
        ],
    ));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        String::from_utf8(q.log(41)).unwrap(),
        "• starting a fake instance\r\n✓ fake instance started\r\necho after the steps\n"
    );
    let started = &q.states(41)[1];
    assert_eq!(started["state"], "started", "{started}");
    assert_eq!(started["image_name"], "fake", "{started}");
    assert_eq!(started["warmed"], false, "{started}");

    q.enqueue(43, "echo plain\n");
    let out = run(q.worker("local", &["--exit-when-idle"]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(q.log(43), b"plain\n");
    let started = &q.states(43)[1];
    assert!(
        started.get("image_name").is_none(),
        "local names no image: {started}"
    );
}
