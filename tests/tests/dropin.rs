//! `host worker` as a drop-in for travis-ci/worker: its settings read by their names
//! (`TRAVIS_WORKER_*` and unprefixed), in the documented order, with a warning for what is
//! not implemented, `--echo-config` and `--list-backend-providers`.

use std::path::Path;
use std::process::Command;

use blackbox::{amqp_url, artifacts, host, plugin_dir, rabbitmqctl, run, signal, Guard};

fn plugins() -> tempfile::TempDir {
    plugin_dir(&[
        ("libfake.so", &artifacts().fake),
        ("liblocal.so", &artifacts().local),
    ])
}

/// `host ARGS` with only `env` (and PATH) in its environment.
fn with_env(plugins: &Path, env: &[(&str, &str)], args: &[&str]) -> blackbox::Ran {
    let mut cmd = host(plugins);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .args(args);
    run(cmd)
}

/// `host worker --echo-config` on a directory queue with only `env`; it must succeed.
fn echo_config(plugins: &Path, env: &[(&str, &str)]) -> blackbox::Ran {
    let out = with_env(
        plugins,
        env,
        &["worker", "--echo-config", "--queue", "file:///tmp/unused-q"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    out
}

/// The value an `--echo-config` output gives `name`.
fn echoed(out: &str, name: &str) -> Option<String> {
    let prefix = format!("export TRAVIS_WORKER_{name}=");
    out.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim_matches('\'').to_owned())
}

#[test]
fn an_environment_written_for_the_original_runs_jobs_with_its_settings() {
    let p = plugins();
    let base = tempfile::tempdir().unwrap();
    let scripts = tempfile::tempdir().unwrap();
    let base_dir = base.path().display().to_string();
    let scripts_dir = scripts.path().display().to_string();
    // As /etc/default/travis-worker writes it (the repository's .example.env's shape).
    let env = [
        ("TRAVIS_WORKER_PROVIDER_NAME", "local"),
        ("TRAVIS_WORKER_QUEUE_TYPE", "file"),
        ("TRAVIS_WORKER_BASE_DIR", base_dir.as_str()),
        ("TRAVIS_WORKER_QUEUE_NAME", "builds.linux"),
        ("TRAVIS_WORKER_POOL_SIZE", "3"),
        ("TRAVIS_WORKER_LOCAL_SCRIPTS_DIR", scripts_dir.as_str()),
        ("TRAVIS_WORKER_HARD_TIMEOUT", "0h0m2s"),
        ("TRAVIS_WORKER_INFRA", "ci-host-7"),
    ];
    for (id, script) in [(1, "echo one\n"), (2, "sleep 30\n")] {
        let job = blackbox::script(&format!(
            r#"{{"job": {{"id": {id}}}, "script": {}}}"#,
            serde_json::Value::String(script.into())
        ));
        let path = job.path().display().to_string();
        let out = with_env(p.path(), &env, &["enqueue", &path]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
    }
    let out = with_env(p.path(), &env, &["worker", "--exit-when-idle"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let queue = base.path().join("builds.linux");
    assert!(
        out.stderr.contains(&format!(
            "on {} with backend local, 3 job(s) at once",
            queue.display()
        )),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("job 1 passed"), "{}", out.stderr);
    // The hard timeout in Go's syntax ended the other.
    assert!(
        out.stderr.contains("job 2 errored") && out.stderr.contains("time limit of 2s"),
        "{}",
        out.stderr
    );
    let log = std::fs::read_to_string(queue.join("log/1.log")).unwrap();
    assert_eq!(log, "one\n");
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
}

#[test]
fn settings_are_taken_flag_then_host_then_prefixed_then_unprefixed() {
    let p = plugins();
    let pool = |env: &[(&str, &str)], flag: Option<&str>| {
        let mut args = vec!["worker", "--echo-config", "--queue", "file:///tmp/unused-q"];
        if let Some(f) = flag {
            args.extend(["--pool-size", f]);
        }
        let out = with_env(p.path(), env, &args);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        echoed(&out.stdout, "POOL_SIZE")
    };
    let all = [
        ("HOST_POOL_SIZE", "4"),
        ("TRAVIS_WORKER_POOL_SIZE", "6"),
        ("POOL_SIZE", "2"),
    ];
    assert_eq!(pool(&all, Some("5")).as_deref(), Some("5"));
    assert_eq!(pool(&all, None).as_deref(), Some("4"));
    assert_eq!(pool(&all[1..], None).as_deref(), Some("6"));
    assert_eq!(pool(&all[2..], None).as_deref(), Some("2"));
    // A backend's config: TRAVIS_WORKER_<ALIAS>_<KEY> under BACKEND_<ALIAS>_<KEY>.
    let env = [
        ("TRAVIS_WORKER_PROVIDER_NAME", "fake"),
        ("TRAVIS_WORKER_FAKE_LOG_OUTPUT", "from+the+original"),
        ("TRAVIS_WORKER_FAKE_RUN_SLEEP", "1s"),
        ("BACKEND_FAKE_RUN_SLEEP", "2s"),
    ];
    let out = echo_config(p.path(), &env);
    assert_eq!(
        echoed(&out.stdout, "FAKE_LOG_OUTPUT").as_deref(),
        Some("from the original")
    );
    assert_eq!(echoed(&out.stdout, "FAKE_RUN_SLEEP").as_deref(), Some("2s"));
    // The unprefixed <ALIAS>_<KEY>, for the keys the backend documents only.
    let env = [
        ("PROVIDER_NAME", "fake"),
        ("FAKE_LOG_OUTPUT", "unprefixed"),
        ("FAKE_NOT_A_KEY", "x"),
    ];
    let out = echo_config(p.path(), &env);
    assert_eq!(
        echoed(&out.stdout, "FAKE_LOG_OUTPUT").as_deref(),
        Some("unprefixed")
    );
    assert_eq!(echoed(&out.stdout, "FAKE_NOT_A_KEY"), None);
    assert!(!out.stderr.contains("NOT_A_KEY"), "{}", out.stderr);
    // As the original's ProviderConfigFromEnviron: the unprefixed name wins over the
    // prefixed one, the key's case does not matter, an empty value is no value (it hides
    // nothing), and a prefixed key the backend does not know is named (a typo).
    let env = [
        ("PROVIDER_NAME", "fake"),
        ("TRAVIS_WORKER_FAKE_LOG_OUTPUT", "prefixed"),
        ("FAKE_log_output", "unprefixed"),
        ("TRAVIS_WORKER_FAKE_RUN_SLEEP", ""),
        ("FAKE_RUN_SLEEP", "3s"),
        ("TRAVIS_WORKER_FAKE_RUN_SLEPE", "1s"),
    ];
    let out = echo_config(p.path(), &env);
    assert_eq!(
        echoed(&out.stdout, "FAKE_LOG_OUTPUT").as_deref(),
        Some("unprefixed")
    );
    assert_eq!(echoed(&out.stdout, "FAKE_RUN_SLEEP").as_deref(), Some("3s"));
    assert!(
        out.stderr
            .contains("does not know config key TRAVIS_WORKER_FAKE_RUN_SLEPE"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_setting_that_is_not_utf8_is_refused_by_name() {
    use std::os::unix::ffi::OsStrExt as _;
    let p = plugins();
    let mut cmd = host(p.path());
    cmd.args(["worker", "--echo-config", "--queue", "file:///tmp/unused-q"])
        .env(
            "TRAVIS_WORKER_LOGS_AMQP_URI",
            std::ffi::OsStr::from_bytes(b"amqp://guest:s3cret@h/\xff"),
        );
    let out = run(cmd);
    assert_eq!(out.code, Some(78), "{}", out.stderr);
    assert!(
        out.stderr.contains("not UTF-8") && out.stderr.contains("TRAVIS_WORKER_LOGS_AMQP_URI"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("s3cret"), "{}", out.stderr);
}

#[test]
fn unimplemented_settings_are_named_and_a_job_board_queue_is_refused() {
    let p = plugins();
    let env = [
        ("TRAVIS_WORKER_SENTRY_DSN", "https://x@sentry.example/1"),
        ("LIBRATO_TOKEN", "t"),
        ("HOSTNAME", "container-1"),
    ];
    let out = with_env(
        p.path(),
        &env,
        &["worker", "--echo-config", "--queue", "file:///tmp/unused-q"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("warning"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning for all: {}", out.stderr);
    assert!(
        warnings[0].contains("TRAVIS_WORKER_SENTRY_DSN"),
        "{}",
        out.stderr
    );
    assert!(
        warnings[0].contains("LIBRATO_TOKEN (/metrics"),
        "{}",
        out.stderr
    );
    assert!(
        !warnings[0].contains("HOSTNAME"),
        "a container's HOSTNAME is not the original's: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("sentry.example"),
        "values are not printed: {}",
        out.stderr
    );
    let out = with_env(
        p.path(),
        &[("TRAVIS_WORKER_QUEUE_TYPE", "http")],
        &["worker"],
    );
    assert_eq!(out.code, Some(78), "{}", out.stderr);
    assert!(
        out.stderr.contains("not supported by this worker"),
        "{}",
        out.stderr
    );
}

#[test]
fn echo_config_round_trips_through_a_shell_and_masks_secrets() {
    let p = plugins();
    let base = tempfile::tempdir().unwrap();
    let exe = artifacts().host.display().to_string();
    let dir = p.path().display().to_string();
    let q = base.path().join("q").display().to_string();
    let first = with_env(
        p.path(),
        &[("TRAVIS_WORKER_REMOTE_CONTROLLER_AUTH", "admin:s3cret")],
        &[
            "worker",
            "--echo-config",
            "--queue",
            &q,
            "-b",
            "fake",
            "-c",
            "LOG_OUTPUT=it's here",
            "--pool-size",
            "7",
            "--max-hard-timeout",
            "1h30m",
            "--infra",
            "lab",
            "--initial-sleep",
            "1s",
            "--start-hook",
            "/bin/true --quiet",
        ],
    );
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert_eq!(
        echoed(&first.stdout, "INITIAL_SLEEP").as_deref(),
        Some("1s")
    );
    assert_eq!(
        echoed(&first.stdout, "START_HOOK").as_deref(),
        Some("/bin/true --quiet")
    );
    assert_eq!(
        echoed(&first.stdout, "REMOTE_CONTROLLER_AUTH").as_deref(),
        Some("***")
    );
    assert!(!first.stdout.contains("s3cret"), "{}", first.stdout);
    assert_eq!(
        echoed(&first.stdout, "HARD_TIMEOUT").as_deref(),
        Some("1h30m0s")
    );
    // What it printed, read back by the shell, gives the same settings (but the masked
    // secret, which is left out here).
    let script = format!(
        "eval \"$(\"$0\" --plugin-dir \"$1\" worker --echo-config --queue '{q}' -b fake -c \"LOG_OUTPUT=it's here\" --pool-size 7 --max-hard-timeout 1h30m --infra lab --initial-sleep 1s --start-hook '/bin/true --quiet')\" && \"$0\" --plugin-dir \"$1\" worker --echo-config"
    );
    let out = Command::new("sh")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["-c", &script, &exe, &dir])
        .output()
        .unwrap();
    let again = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let without_auth: String = first
        .stdout
        .lines()
        .filter(|l| !l.contains("REMOTE_CONTROLLER_AUTH"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(again, without_auth);
}

#[test]
fn list_backend_providers_lists_the_aliases() {
    let p = plugins();
    let out = with_env(p.path(), &[], &["worker", "--list-backend-providers"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "fake\nlocal\n");
}

#[test]
fn the_consumer_priority_and_the_broker_come_from_the_originals_names() {
    let p = plugins();
    let q = format!("hostdropin-prio-{}", std::process::id());
    let (states, logs) = (format!("{q}.states"), format!("{q}.logs"));
    let mut cmd = host(p.path());
    cmd.env("TRAVIS_WORKER_AMQP_URI", amqp_url())
        .env("TRAVIS_WORKER_QUEUE_NAME", &q)
        .env("AMQP_CONSUMER_PRIORITY", "5")
        .args([
            "worker",
            "-b",
            "fake",
            "--state-queue",
            &states,
            "--log-queue",
            &logs,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut w = Guard(cmd.spawn().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let found = loop {
        let out = rabbitmqctl(&[
            "list_consumers",
            "-q",
            "--no-table-headers",
            "queue_name",
            "arguments",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(line) = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(q.as_str()))
        {
            break line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no consumer on {q}: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    signal("-TERM", w.0.id());
    let status = w.wait();
    for name in [&q, &states, &logs] {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_queue", name])
            .output();
    }
    assert!(
        found.contains("x-priority") && found.contains('5'),
        "{found}"
    );
    assert_eq!(status.code(), Some(0));
}

/// An executable shell script in `dir`.
fn script_file(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn start_and_stop_hooks_run_around_the_worker_and_a_failing_start_hook_stops_it() {
    let p = plugins();
    let base = tempfile::tempdir().unwrap();
    let hooks = tempfile::tempdir().unwrap();
    let marks = hooks.path().join("marks");
    let q = base.path().join("q").display().to_string();
    let job = blackbox::script(r#"{"job": {"id": 8}, "script": "true\n"}"#);
    let out = with_env(
        p.path(),
        &[],
        &["enqueue", "--queue", &q, &job.path().display().to_string()],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let marks_s = marks.display().to_string();
    let start = script_file(
        hooks.path(),
        "start",
        &format!("echo \"start $1\" >> '{marks_s}'\n"),
    );
    let stop = script_file(hooks.path(), "stop", &format!("echo stop >> '{marks_s}'\n"));
    let start_cmd = format!("{start} arg1");
    let env = [
        ("TRAVIS_WORKER_START_HOOK", start_cmd.as_str()),
        ("STOP_HOOK", stop.as_str()),
    ];
    let out = with_env(
        p.path(),
        &env,
        &["worker", "-b", "fake", "--queue", &q, "--exit-when-idle"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("job 8 passed"), "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(&marks).unwrap(),
        "start arg1\nstop\n"
    );
    // A start hook that fails: the worker does not start, and says what the hook said.
    let job = blackbox::script(r#"{"job": {"id": 9}, "script": "true\n"}"#);
    let out = with_env(
        p.path(),
        &[],
        &["enqueue", "--queue", &q, &job.path().display().to_string()],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let failing = script_file(
        hooks.path(),
        "failing",
        "echo the disk is not mounted >&2\nexit 3\n",
    );
    let out = with_env(
        p.path(),
        &[("START_HOOK", failing.as_str())],
        &["worker", "-b", "fake", "--queue", &q, "--exit-when-idle"],
    );
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    assert!(
        out.stderr.contains("the disk is not mounted"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("job 9"),
        "no job was taken: {}",
        out.stderr
    );
    let waiting = std::fs::read_dir(base.path().join("q/new"))
        .unwrap()
        .count();
    assert_eq!(waiting, 1);
}

/// A heartbeat service: answers `up` to the first `ups` checks, then `down`; keeps each
/// request's Authorization header.
fn heartbeat_service(ups: usize) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/heartbeat", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(&stream);
            let mut auth = String::new();
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("authorization:") {
                    auth = v.trim().to_owned();
                }
                line.clear();
            }
            let n = {
                let mut s = kept.lock().unwrap_or_else(|e| e.into_inner());
                s.push(auth);
                s.len()
            };
            let body = if n > ups {
                r#"{"state": "down"}"#
            } else {
                r#"{"state": "up"}"#
            };
            let _ = write!(
                &stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

#[test]
fn the_heartbeat_url_answering_down_drains_the_worker() {
    let p = plugins();
    let base = tempfile::tempdir().unwrap();
    let q = base.path().join("q").display().to_string();
    let token = base.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let token_url = format!("file://{}", token.display());
    let job = blackbox::script(r#"{"job": {"id": 12}, "script": "true\n"}"#);
    let out = with_env(
        p.path(),
        &[],
        &["enqueue", "--queue", &q, &job.path().display().to_string()],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let (url, seen) = heartbeat_service(1);
    let env = [
        ("TRAVIS_WORKER_HEARTBEAT_URL", url.as_str()),
        ("HEARTBEAT_URL_AUTH_TOKEN", token_url.as_str()),
    ];
    // No --exit-when-idle: only the heartbeat's `down` ends this worker, after its job.
    let started = std::time::Instant::now();
    let out = with_env(
        p.path(),
        &env,
        &[
            "worker",
            "-b",
            "fake",
            "-c",
            "RUN_SLEEP=2s",
            "--queue",
            &q,
            "--heartbeat-every",
            "1s",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(
        out.stderr.contains("job 12 passed"),
        "the running job finished: {}",
        out.stderr
    );
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen.iter().all(|a| a == "token s3cret"), "{seen:?}");
}

#[test]
fn the_payload_filter_rewrites_jobs_and_its_failures_error_them() {
    let p = plugins();
    let base = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let scripts = tempfile::tempdir().unwrap();
    let q = base.path().join("q").display().to_string();
    // Rewrites job 21's script; fails on job 22; hangs on 23; answers no JSON on 24.
    let filter = script_file(
        bin.path(),
        "filter",
        "doc=$(cat)\n\
         case \"$doc\" in\n\
         *'\"id\":22'*) echo 'no such image' >&2; exit 2 ;;\n\
         *'\"id\":23'*) exec sleep 30 ;;\n\
         *'\"id\":24'*) echo not json ;;\n\
         *) printf '%s' \"$doc\" | sed 's/echo original/echo filtered/' ;;\n\
         esac\n",
    );
    for id in 21..=24 {
        let job = blackbox::script(&format!(
            r#"{{"job": {{"id": {id}}}, "script": "echo original\n"}}"#
        ));
        let out = with_env(
            p.path(),
            &[],
            &["enqueue", "--queue", &q, &job.path().display().to_string()],
        );
        assert_eq!(out.code, Some(0), "{}", out.stderr);
    }
    let scripts_dir = format!("SCRIPTS_DIR={}", scripts.path().display());
    let out = with_env(
        p.path(),
        &[("TRAVIS_WORKER_PAYLOAD_FILTER_EXECUTABLE", filter.as_str())],
        &[
            "worker",
            "-b",
            "local",
            "-c",
            &scripts_dir,
            "--queue",
            &q,
            "--exit-when-idle",
            "--payload-filter-timeout",
            "2s",
            "--pool-size",
            "4",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let log = std::fs::read_to_string(base.path().join("q/log/21.log")).unwrap();
    assert_eq!(log, "filtered\n");
    let reason = |id: u64| {
        let states =
            std::fs::read_to_string(base.path().join(format!("q/state/{id}.jsonl"))).unwrap();
        let last: serde_json::Value = serde_json::from_str(states.lines().last().unwrap()).unwrap();
        assert_eq!(last["state"], "errored", "job {id}: {states}");
        last["reason"].as_str().unwrap_or_default().to_owned()
    };
    assert!(reason(22).contains("no such image"), "{}", reason(22));
    assert!(
        reason(23).contains("did not end within 2s"),
        "{}",
        reason(23)
    );
    assert!(reason(24).contains("not a job"), "{}", reason(24));
}

#[test]
fn the_defaults_of_a_payload_that_names_none_and_sigusr1_saying_what_runs() {
    let p = plugins();
    let base = tempfile::tempdir().unwrap();
    let scripts = tempfile::tempdir().unwrap();
    let q = base.path().join("q").display().to_string();
    // Job 31 names no dist or language; job 32 names its own, and an image.
    let own = r#"{"dist": "focal", "language": "go", "image_name": "travis:go-1"}"#;
    for (id, config) in [(31, "{}"), (32, own)] {
        let job = blackbox::script(&format!(
            r#"{{"job": {{"id": {id}}}, "config": {config}, "script": "echo $BUILD_DIST $BUILD_LANGUAGE $BUILD_IMAGE; sleep 1\n"}}"#
        ));
        let out = with_env(
            p.path(),
            &[],
            &["enqueue", "--queue", &q, &job.path().display().to_string()],
        );
        assert_eq!(out.code, Some(0), "{}", out.stderr);
    }
    let mut cmd = host(p.path());
    cmd.env("TRAVIS_WORKER_DEFAULT_DIST", "jammy")
        .env("DEFAULT_LANGUAGE", "ruby")
        .args([
            "worker",
            "-b",
            "local",
            "--queue",
            &q,
            "--exit-when-idle",
            "--pool-size",
            "2",
        ])
        .arg("-c")
        .arg(format!("SCRIPTS_DIR={}", scripts.path().display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut w = Guard(cmd.spawn().unwrap());
    // While both run, SIGUSR1 says so.
    let log = base.path().join("q/log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !(log.join("31.log").exists() && log.join("32.log").exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the jobs did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    signal("-USR1", w.0.id());
    let status = w.wait();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut w.0.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    let said = err
        .lines()
        .find(|l| l.contains("SIGUSR1"))
        .unwrap_or_default();
    assert!(said.contains("pool size 2"), "{err}");
    assert!(
        said.contains("job 31 on ") && said.contains("job 32 on "),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(log.join("31.log")).unwrap(),
        "jammy ruby\n"
    );
    assert_eq!(
        std::fs::read_to_string(log.join("32.log")).unwrap(),
        "focal go travis:go-1\n"
    );
}

#[test]
fn a_backends_key_family_is_read_by_the_originals_names() {
    // The docker backend's env image selector, as /etc/default/travis-worker writes it.
    let p = plugin_dir(&[("libdocker.so", &artifacts().docker)]);
    let env = [
        ("TRAVIS_WORKER_PROVIDER_NAME", "docker"),
        (
            "TRAVIS_WORKER_DOCKER_ENDPOINT",
            "unix:///run/no-such-docker.sock",
        ),
        ("TRAVIS_WORKER_DOCKER_IMAGE_SELECTOR_TYPE", "env"),
        ("TRAVIS_WORKER_DOCKER_IMAGE_DEFAULT", "travis:default"),
        ("DOCKER_IMAGE_DIST_JAMMY_GO", "travis:go"),
        // Below BACKEND_<ALIAS>_<KEY>.
        ("TRAVIS_WORKER_DOCKER_IMAGE_RUBY", "not-this"),
        ("BACKEND_DOCKER_IMAGE_RUBY", "ruby:latest"),
    ];
    let out = echo_config(p.path(), &env);
    for (name, want) in [
        ("DOCKER_IMAGE_SELECTOR_TYPE", "env"),
        ("DOCKER_IMAGE_DEFAULT", "travis:default"),
        ("DOCKER_IMAGE_DIST_JAMMY_GO", "travis:go"),
        ("DOCKER_IMAGE_RUBY", "ruby:latest"),
    ] {
        assert_eq!(
            echoed(&out.stdout, name).as_deref(),
            Some(want),
            "{}",
            out.stdout
        );
    }
    // Keys of the family are known keys: no "unknown key" warning.
    assert!(!out.stderr.contains("does not know"), "{}", out.stderr);
}

/// A self-signed certificate for localhost and its key (PEM), made by openssl.
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (the test makes a certificate with it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// An https:// build script service with a self-signed certificate: answers every POST
/// with `script`. Returns its port.
fn https_build_api(dir: &Path, script: &'static str) -> u16 {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::{BufRead as _, Read as _, Write as _};
    let (cert, key) = self_signed(dir);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let Ok(conn) = rustls::ServerConnection::new(std::sync::Arc::clone(&config)) else {
                continue;
            };
            let mut tls = std::io::BufReader::new(rustls::StreamOwned::new(conn, stream));
            // A client that refuses the certificate ends here, in the handshake.
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if tls.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    let mut body = vec![0; length];
                    let _ = tls.read_exact(&mut body);
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{script}",
                        script.len()
                    );
                    let _ = tls.get_mut().write_all(answer.as_bytes());
                    let _ = tls.get_mut().flush();
                    break;
                }
            }
        }
    });
    port
}

/// `host worker` on `q` until it is idle, its scripts from `api`, no job requeued.
fn with_build_api(q: &blackbox::worker::Queue, backend: &str, api: &str) -> Command {
    q.worker(
        backend,
        &[
            "--exit-when-idle",
            "--max-requeues",
            "0",
            "--build-api",
            api,
        ],
    )
}

#[test]
fn an_unverified_build_api_is_used_only_when_asked_and_said() {
    let certs = tempfile::tempdir().unwrap();
    let port = https_build_api(certs.path(), "echo from the build api\n");
    let api = format!("https://localhost:{port}/script");
    let q = blackbox::worker::Queue::new();
    // Refused without the setting: the certificate is not trusted.
    q.enqueue_doc(&serde_json::json!({"job": {"id": 1}}));
    let out = run(with_build_api(&q, "fake", &api));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("job 1 errored"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("does not trust: install its CA, or --build-api-insecure"),
        "{}",
        out.stderr
    );
    // The original's name turns verification off, and the worker says so.
    q.enqueue_doc(&serde_json::json!({"job": {"id": 2}}));
    let mut cmd = with_build_api(&q, "local", &api);
    cmd.env("TRAVIS_WORKER_BUILD_API_INSECURE_SKIP_VERIFY", "true");
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("job 2 passed"), "{}", out.stderr);
    assert!(
        out.stderr.contains("certificate is not verified"),
        "{}",
        out.stderr
    );
    assert_eq!(q.log(2), b"from the build api\n");
}

#[test]
fn a_token_as_the_build_apis_user_is_sent_as_a_token_and_never_printed() {
    // The original writes BUILD_API_URI=https://TOKEN@host/script; so may --build-api.
    let (url, seen) = heartbeat_service(100);
    let api = url.replace("http://", "http://SECRETTOKEN@");
    let q = blackbox::worker::Queue::new();
    q.enqueue_doc(&serde_json::json!({"job": {"id": 3}}));
    let out = run(with_build_api(&q, "fake", &api));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let seen = seen.lock().unwrap().clone();
    // (The test service lowercases what it records.)
    assert_eq!(seen.first().map(String::as_str), Some("token secrettoken"));
    assert!(!out.stderr.contains("SECRETTOKEN"), "{}", out.stderr);
    let mut cmd = q.worker("fake", &["--echo-config", "--build-api", &api]);
    cmd.env_remove("HOST_BUILD_API_TOKEN");
    let out = run(cmd);
    assert!(!out.stdout.contains("SECRETTOKEN"), "{}", out.stdout);
    assert!(
        out.stdout.contains("BUILD_API_URI='http://***@127.0.0.1"),
        "{}",
        out.stdout
    );
}

#[test]
fn no_job_inherits_the_workers_settings_or_secrets() {
    // In process and in an isolated plugin server: the job's environment has none of the
    // worker's settings, whichever name they were given by.
    for isolate in [None, Some("all")] {
        let q = blackbox::worker::Queue::new();
        q.enqueue(41, "env | sort\n");
        let mut cmd = q.worker("local", &["--exit-when-idle"]);
        cmd.env("TRAVIS_WORKER_REMOTE_CONTROLLER_AUTH", "admin:s3cret-1")
            .env("HOST_BUILD_API_TOKEN", "s3cret-2")
            .env("AMQP_URI", "amqp://guest:s3cret-3@localhost/")
            .env("BACKEND_LOCAL_ENV", "FROM_CONFIG=yes")
            .env("LOCAL_KEEP_FILES", "false")
            .env("KEEP_THIS", "kept");
        if let Some(i) = isolate {
            cmd.args(["--isolate", i]);
        }
        let out = run(cmd);
        assert_eq!(out.code, Some(0), "{isolate:?}: {}", out.stderr);
        assert!(out.stderr.contains("job 41 passed"), "{}", out.stderr);
        let log = String::from_utf8_lossy(&q.log(41)).into_owned();
        for secret in [
            "s3cret",
            "TRAVIS_WORKER_",
            "HOST_BUILD_API",
            "BACKEND_",
            "AMQP_URI",
            "LOCAL_KEEP_FILES",
        ] {
            assert!(
                !log.contains(secret),
                "{isolate:?}: {secret} in the job's environment:\n{log}"
            );
        }
        assert!(log.contains("KEEP_THIS=kept"), "{log}");
        // The backend's config was still read (from the worker's copy of its environment).
        assert!(log.contains("FROM_CONFIG=yes"), "{log}");
    }
}
