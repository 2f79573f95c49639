//! `host run` on the fake backend: every outcome and exit status, every timeout, signals,
//! config precedence, and a log reader that goes away.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blackbox::{artifacts, host, plugin_dir, run, script, signal, Ran};

fn fake_dir() -> tempfile::TempDir {
    plugin_dir(&[("libfake.so", &artifacts().fake)])
}

/// `host run` on fake with the given args before the script, and a JSON summary.
fn run_fake(args: &[&str]) -> (Ran, serde_json::Value) {
    let dir = fake_dir();
    let s = script("echo from the script\n");
    let summary = dir.path().join("summary.json");
    let mut cmd = host(dir.path());
    cmd.arg("run")
        .args(args)
        .arg("--json-summary")
        .arg(&summary)
        .arg(s.path());
    let out = run(cmd);
    let text = std::fs::read_to_string(&summary)
        .unwrap_or_else(|e| panic!("no summary ({e}); stderr:\n{}", out.stderr));
    let json = serde_json::from_str(&text).expect("summary is JSON");
    (out, json)
}

#[test]
fn a_passing_job_streams_the_log_and_says_where_it_ran() {
    let (out, summary) = run_fake(&["-c", "LOG_OUTPUT=hello\n", "-c", "STARTUP_DURATION=2s"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "hello\n");
    assert!(
        out.stderr
            .contains("worker info: backend fake (Fake), instance fake, image fake, startup 2s"),
        "{}",
        out.stderr
    );
    assert_eq!(summary["outcome"], "passed");
    assert_eq!(summary["exit_code"], 0);
    assert_eq!(summary["instance_id"], "fake");
    assert_eq!(summary["startup_duration_secs"], 2.0);
    assert_eq!(summary["log_bytes"], 6);
    assert_eq!(summary["stopped"], true);
    assert!(summary["run_duration_secs"].as_f64().is_some());
    assert!(summary["timeout"].is_null());
}

#[test]
fn completed_runs_exit_with_the_scripts_own_code() {
    for (code, outcome) in [("1", "failed"), ("7", "errored"), ("255", "errored")] {
        let (out, summary) = run_fake(&["-c", &format!("EXIT_CODE={code}")]);
        assert_eq!(out.code, Some(code.parse().unwrap()), "{}", out.stderr);
        assert_eq!(summary["outcome"], outcome);
        assert_eq!(summary["script_exit_code"], code.parse::<i64>().unwrap());
        assert_eq!(summary["stopped"], true);
    }
}

#[test]
fn an_infrastructure_failure_is_not_completed_exit_75() {
    let (out, summary) = run_fake(&["-c", "ERROR=true"]);
    assert_eq!(out.code, Some(75));
    assert!(
        out.stderr
            .contains("fake provider is configured to error all jobs"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("requeue"), "{}", out.stderr);
    assert_eq!(summary["outcome"], "not_completed");
    assert_eq!(
        summary["stopped"], true,
        "stop is called after a broken run"
    );

    let (out, summary) = run_fake(&["-c", "START_ERROR=no capacity in zone"]);
    assert_eq!(out.code, Some(75));
    assert!(out.stderr.contains("no capacity in zone"), "{}", out.stderr);
    assert!(summary["instance_id"].is_null());
}

#[test]
fn each_timeout_ends_the_job_with_its_own_status_and_line() {
    let cases: &[(&[&str], i32, &str, &str)] = &[
        (
            &["-c", "START_SLEEP=10s", "--startup-timeout", "200ms"],
            75,
            "startup",
            "startup timeout (200ms) reached",
        ),
        (
            &["-c", "UPLOAD_SLEEP=10s", "--upload-timeout", "200ms"],
            75,
            "upload",
            "upload timeout (200ms) reached",
        ),
        (
            &["-c", "RUN_SLEEP=10s", "--hard-timeout", "300ms"],
            124,
            "hard",
            "hard timeout (300ms) reached",
        ),
        (
            &["-c", "RUN_SLEEP=10s", "--log-silence-timeout", "300ms"],
            124,
            "log_silence",
            "no output for 300ms",
        ),
        (
            &["-c", "LOG_BYTES=1MiB", "--max-log-bytes", "1000"],
            124,
            "log_cap",
            "log size limit (1000 bytes) reached",
        ),
    ];
    for (args, code, kind, line) in cases {
        let started = Instant::now();
        let (out, summary) = run_fake(args);
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{kind} took {:?}",
            started.elapsed()
        );
        assert_eq!(out.code, Some(*code), "{kind}: {}", out.stderr);
        assert_eq!(summary["timeout"], *kind, "{summary}");
        assert!(out.stderr.contains(line), "{kind}: {}", out.stderr);
        if *kind != "startup" {
            assert_eq!(summary["stopped"], true, "{kind}: stop must be called");
        }
    }
    let (out, summary) = run_fake(&["-c", "LOG_BYTES=1MiB", "--max-log-bytes", "1000"]);
    assert_eq!(out.stdout.len(), 1000, "the log is cut at the cap");
    assert_eq!(summary["log_bytes"], 1000);
}

#[test]
fn a_stop_that_hangs_is_bounded_by_the_stop_timeout() {
    let started = Instant::now();
    let (out, summary) = run_fake(&["-c", "STOP_SLEEP=30s", "--stop-timeout", "300ms"]);
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(out.code, Some(0), "the job itself passed");
    assert_eq!(summary["stopped"], false);
    assert!(
        out.stderr.contains("did not finish within 300ms"),
        "{}",
        out.stderr
    );
}

#[test]
fn log_bytes_are_passed_through_exactly() {
    let (out, summary) = run_fake(&["-c", "LOG_BYTES=1000000"]);
    assert_eq!(out.code, Some(0));
    assert_eq!(out.raw_stdout.len(), 1_000_000);
    assert!(out
        .stdout
        .starts_with("fake log line 000000\nfake log line 000001\n"));
    assert_eq!(summary["log_bytes"], 1_000_000);
}

#[test]
fn the_script_can_come_from_stdin() {
    let dir = fake_dir();
    let mut cmd = host(dir.path());
    cmd.args(["run", "-c", "ECHO_SCRIPT=true", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo via stdin\n")
        .unwrap();
    let out: Ran = child.wait_with_output().unwrap().into();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "echo via stdin\n");

    let mut cmd = host(dir.path());
    cmd.args(["run", "/nonexistent/script.sh"]);
    let out = run(cmd);
    assert_eq!(out.code, Some(66));
    assert!(
        out.stderr
            .contains("cannot read script /nonexistent/script.sh"),
        "{}",
        out.stderr
    );
}

#[test]
fn config_precedence_is_cli_then_env_then_file() {
    let dir = fake_dir();
    let file = dir.path().join("backends.toml");
    std::fs::write(&file, "[fake]\nLOG_OUTPUT = \"from-file\"\nEXIT_CODE = 3\n").unwrap();
    let s = script("");
    let go = |env: Option<&str>, cli: Option<&str>| {
        let mut cmd = host(dir.path());
        if let Some(v) = env {
            cmd.env("BACKEND_FAKE_LOG_OUTPUT", v);
        }
        cmd.args(["run", "--config-file"]).arg(&file);
        if let Some(v) = cli {
            cmd.arg("--config").arg(format!("LOG_OUTPUT={v}"));
        }
        cmd.arg(s.path());
        run(cmd)
    };
    let out = go(None, None);
    assert_eq!(
        (out.stdout.as_str(), out.code),
        ("from-file", Some(3)),
        "{}",
        out.stderr
    );
    let out = go(Some("from+env%21"), None);
    assert_eq!(
        out.stdout, "from env!",
        "env beats file, and is URL-unescaped"
    );
    let out = go(Some("from-env"), Some("from-cli"));
    assert_eq!(out.stdout, "from-cli", "cli beats env");
}

#[test]
fn bad_config_is_exit_78_naming_the_key_and_value() {
    let (dir, s) = (fake_dir(), script(""));
    let mut cmd = host(dir.path());
    cmd.args(["run", "-c", "RUN_SLEEP=soonish"]).arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(78));
    assert!(
        out.stderr.contains("RUN_SLEEP") && out.stderr.contains("\"soonish\""),
        "{}",
        out.stderr
    );

    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[fake\n").unwrap();
    let mut cmd = host(dir.path());
    cmd.args(["run", "--config-file"]).arg(&file).arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(78));
    assert!(out.stderr.contains("bad.toml"), "{}", out.stderr);

    let mut cmd = host(dir.path());
    cmd.args(["run", "--hard-timeout", "forever"]).arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(64), "a malformed flag is bad usage");
    assert!(out.stderr.contains("forever"), "{}", out.stderr);
}

#[test]
fn an_unknown_config_key_is_warned_about_with_the_known_ones() {
    let (dir, s) = (fake_dir(), script(""));
    let mut cmd = host(dir.path());
    cmd.args(["run", "-c", "LOG_OUTPTU=typo"]).arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(0));
    assert!(
        out.stderr.contains("does not know config key LOG_OUTPTU"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("LOG_OUTPUT"), "{}", out.stderr);
}

#[test]
fn a_reader_that_goes_away_ends_the_job_cleanly() {
    let dir = fake_dir();
    let s = script("");
    let summary = dir.path().join("summary.json");
    let mut cmd = host(dir.path());
    cmd.args(["run", "-c", "LOG_BYTES=200MiB", "--json-summary"])
        .arg(&summary)
        .arg(s.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = blackbox::Guard(cmd.spawn().unwrap());
    let mut stdout = child.0.stdout.take().unwrap();
    let mut ten = [0u8; 10];
    std::io::Read::read_exact(&mut stdout, &mut ten).unwrap();
    drop(stdout); // as `| head -c 10` does
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
    let status = child.wait();
    let out = Ran {
        code: status.code(),
        stdout: String::new(),
        stderr,
        raw_stdout: Vec::new(),
    };
    assert_eq!(out.code, Some(74), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(out.stderr.contains("reader went away"), "{}", out.stderr);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(summary["outcome"], "output_closed");
    assert_eq!(summary["stopped"], true);
}

/// A `host -v run` in flight, with the rest of its stderr collected in the background.
struct Running {
    child: blackbox::Guard,
    summary: std::path::PathBuf,
    _dir: tempfile::TempDir,
    stderr: std::thread::JoinHandle<Vec<String>>,
}

impl Running {
    /// Waits for the exit; returns the status code and the rest of stderr.
    fn finish(mut self) -> (Option<i32>, String, serde_json::Value) {
        let status = self.child.wait();
        let stderr = self.stderr.join().unwrap().join("\n");
        let summary = serde_json::from_str(&std::fs::read_to_string(&self.summary).unwrap())
            .expect("summary is JSON");
        (status.code(), stderr, summary)
    }
}

/// Starts `host -v run` and waits until stderr shows `marker` (the signal handlers are
/// installed before "starting an instance" is logged).
fn spawn_and_wait_for(args: &[&str], marker: &str) -> Running {
    let dir = fake_dir();
    let s = dir.path().join("script.sh");
    std::fs::write(&s, "true").unwrap();
    let summary = dir.path().join("summary.json");
    let mut cmd: Command = host(dir.path());
    cmd.args(["-v", "run"])
        .args(args)
        .arg("--json-summary")
        .arg(&summary)
        .arg(&s)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("host ended before {marker:?}: {lines:?}");
        }
        let found = line.contains(marker);
        lines.push(line);
        if found {
            break;
        }
    }
    let stderr = std::thread::spawn(move || reader.lines().map_while(Result::ok).collect());
    Running {
        child: blackbox::Guard(child),
        summary,
        _dir: dir,
        stderr,
    }
}

fn kill(child: &blackbox::Guard, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.0.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn signals_cancel_the_job_stop_the_instance_and_set_the_exit_status() {
    let cases = [
        ("INT", "START_SLEEP=30s", "starting an instance", 130),
        ("TERM", "START_SLEEP=30s", "starting an instance", 143),
        ("INT", "RUN_SLEEP=30s", "worker info", 130),
        ("TERM", "RUN_SLEEP=30s", "worker info", 143),
    ];
    // In process, and with the plugin in a server of its own (the cancel crosses to it).
    let modes: [&[&str]; 2] = [&[], &["--isolate", "fake"]];
    for ((sig, config, marker, code), mode) in cases.into_iter().flat_map(|c| modes.map(|m| (c, m)))
    {
        let job = spawn_and_wait_for(&[mode, &["-c", config]].concat(), marker);
        let started = Instant::now();
        kill(&job.child, sig);
        let (status, stderr, summary) = job.finish();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{sig} during {config} {mode:?}"
        );
        assert_eq!(
            status,
            Some(code),
            "{sig} during {config} {mode:?}: {stderr}"
        );
        assert!(stderr.contains(&format!("SIG{sig} received")), "{stderr}");
        assert_eq!(summary["outcome"], "cancelled");
        if config.starts_with("RUN") {
            assert_eq!(summary["stopped"], true, "stop is called after a cancel");
        } else {
            assert!(
                summary["instance_id"].is_null(),
                "no instance started, none to stop"
            );
        }
    }
}

#[test]
fn a_second_sigint_while_stopping_says_what_it_abandons() {
    let job = spawn_and_wait_for(
        &["-c", "RUN_SLEEP=30s", "-c", "STOP_SLEEP=30s"],
        "worker info",
    );
    kill(&job.child, "INT");
    std::thread::sleep(Duration::from_millis(300));
    kill(&job.child, "INT");
    let (status, stderr, summary) = job.finish();
    assert_eq!(status, Some(130), "{stderr}");
    assert!(
        stderr.contains("abandoning the stop of instance fake on backend fake"),
        "{stderr}"
    );
    assert_eq!(summary["stopped"], false);
    assert!(summary["stop_error"]
        .as_str()
        .unwrap()
        .contains("abandoned"));
}

#[test]
fn a_spinner_shows_while_starting_on_a_terminal_and_never_elsewhere() {
    let dir = fake_dir();
    let s = script("");
    // Not a terminal: no spinner text at all.
    let mut cmd = host(dir.path());
    cmd.args(["run", "-c", "START_SLEEP=600ms"]).arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(0));
    assert!(
        !out.stderr.contains("starting an instance on backend"),
        "{}",
        out.stderr
    );

    // A terminal (util-linux `script` gives the command a pty).
    let line = format!(
        "{} --plugin-dir {} run -c START_SLEEP=600ms {}",
        artifacts().host.display(),
        dir.path().display(),
        s.path().display()
    );
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("util-linux script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("starting an instance on backend fake..."),
        "{text}"
    );
}

/// The status flags of our descriptor `fd` (from /proc/self/fdinfo).
fn fd_flags(fd: i32) -> u32 {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .expect("a flags line");
    u32::from_str_radix(flags.trim(), 8).unwrap()
}

/// Waits up to `secs` for `child` to exit.
fn exit_within(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after {secs} s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `host run` on fake writing `log_bytes` into a pipe nobody reads for a second (the pipe
/// fills and the plugin's write waits): the process, the pipe's reading end, and a copy of
/// its writing end (the description the host shares with us).
fn run_into_a_stalled_pipe(
    log_bytes: &str,
) -> (blackbox::Guard, std::io::PipeReader, std::io::PipeWriter) {
    let dir = fake_dir();
    let s = script("");
    let (reader, writer) = std::io::pipe().unwrap();
    let ours = writer.try_clone().unwrap();
    let mut cmd = host(dir.path());
    cmd.args(["run", "-c", &format!("LOG_BYTES={log_bytes}")])
        .arg(s.path())
        .stdout(writer)
        .stderr(Stdio::null());
    let child = blackbox::Guard(cmd.spawn().unwrap());
    // The parent's copy of the writing end goes with `cmd`: EOF comes when the host exits.
    drop(cmd);
    std::thread::sleep(Duration::from_millis(1000));
    (child, reader, ours)
}

#[test]
fn a_reader_that_stalls_then_resumes_gets_every_byte_and_the_pipe_keeps_its_flags() {
    use std::os::fd::AsRawFd as _;
    const O_NONBLOCK: u32 = 0o4000;
    let (mut child, mut reader, ours) = run_into_a_stalled_pipe("64MiB");
    assert_eq!(
        fd_flags(ours.as_raw_fd()) & O_NONBLOCK,
        0,
        "the host set O_NONBLOCK on the pipe it shares with its parent"
    );
    let reading = std::thread::spawn(move || {
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut all).unwrap();
        all
    });
    let status = exit_within(&mut child.0, 60);
    assert_eq!(status.code(), Some(0));
    assert_eq!(fd_flags(ours.as_raw_fd()) & O_NONBLOCK, 0, "and after it");
    drop(ours);
    let all = reading.join().unwrap();
    assert_eq!(all.len(), 64 << 20);
    assert!(all.starts_with(b"fake log line 000000\nfake log line 000001\n"));
}

#[test]
fn a_signal_ends_a_run_whose_reader_stalls() {
    let (mut child, reader, _ours) = run_into_a_stalled_pipe("1GiB");
    let t = Instant::now();
    signal("-INT", child.0.id());
    let status = exit_within(&mut child.0, 10);
    assert_eq!(status.code(), Some(130));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    drop(reader);
}

/// `host run` with standard output on a regular file (the plugin writes into it directly).
fn run_fake_into_file(args: &[&str]) -> (Ran, Vec<u8>, serde_json::Value) {
    let dir = fake_dir();
    let s = script("");
    let out_path = dir.path().join("log.out");
    let summary = dir.path().join("summary.json");
    let mut cmd = host(dir.path());
    cmd.arg("run")
        .args(args)
        .arg("--json-summary")
        .arg(&summary)
        .arg(s.path())
        .stdout(std::fs::File::create(&out_path).unwrap());
    let out = run(cmd);
    let log = std::fs::read(&out_path).unwrap();
    (out, log, blackbox::read_json(&summary))
}

#[test]
fn a_log_written_straight_into_a_file_is_exact_and_capped_to_the_byte() {
    let (out, log, summary) = run_fake_into_file(&["-c", "LOG_BYTES=3000001"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(log.len(), 3_000_001);
    assert!(log.starts_with(b"fake log line 000000\nfake log line 000001\n"));
    assert_eq!(summary["log_bytes"], 3_000_001);

    let (out, log, summary) =
        run_fake_into_file(&["-c", "LOG_BYTES=1MiB", "--max-log-bytes", "300000"]);
    assert_eq!(out.code, Some(124), "{}", out.stderr);
    assert_eq!(log.len(), 300_000, "cut at the cap, inside a chunk");
    assert_eq!(summary["timeout"], "log_cap");
    assert_eq!(summary["log_bytes"], 300_000);
    assert_eq!(summary["stopped"], true);
}

#[test]
fn progress_text_prints_the_starts_steps_and_the_summary_times_them() {
    let (out, summary) = run_fake(&["-c", "START_SLEEP=300ms", "--progress", "text"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("host: • ") || l.starts_with("host: ✓ "))
        .collect();
    assert_eq!(
        lines,
        [
            "host: • starting a fake instance",
            "host: ✓ fake instance started"
        ],
        "{}",
        out.stderr
    );
    let steps = summary["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{summary}");
    assert_eq!(steps[0]["state"], "neutral");
    assert_eq!(steps[1]["state"], "success");
    let (first, second) = (
        steps[0]["at_secs"].as_f64().unwrap(),
        steps[1]["at_secs"].as_f64().unwrap(),
    );
    assert!(
        second - first >= 0.3,
        "the second step follows START_SLEEP: {summary}"
    );
    assert_eq!(summary["image_name"], "fake");
    assert_eq!(summary["warmed"], false);

    // Without --progress (and no terminal), the steps are only in the summary.
    let (out, summary) = run_fake(&[]);
    assert!(
        !out.stderr.contains("starting a fake instance"),
        "{}",
        out.stderr
    );
    assert_eq!(summary["steps"].as_array().unwrap().len(), 2);
}

#[test]
fn a_trace_file_holds_the_backends_trace() {
    let dir = fake_dir();
    let s = script("echo hi\n");
    let trace = dir.path().join("trace.txt");
    let mut cmd = host(dir.path());
    cmd.args(["run", "-c", "ECHO_SCRIPT=true", "--trace-file"])
        .arg(&trace)
        .arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(&trace).unwrap(),
        "fake trace\nuploaded: true\nscript bytes kept: 8\nstopped: false\n"
    );
}
