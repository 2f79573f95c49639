//! Every signal, limit and exit status of `host run` and the commands around it, tried as a
//! hostile or careless user would: each test is a defect that was reproduced once.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blackbox::{artifacts, host, plugin_dir, run, script, Guard};

fn fake_dir() -> tempfile::TempDir {
    plugin_dir(&[("libfake.so", &artifacts().fake)])
}

use blackbox::{read_json as summary, signal as kill};

/// `host run -b fake ARGS SCRIPT`, run to the end.
fn run_fake(dir: &Path, args: &[&str], script: &Path) -> blackbox::Ran {
    let mut cmd = host(dir);
    cmd.args(["run", "-b", "fake"]).args(args).arg(script);
    run(cmd)
}

/// `host --plugin-dir DIR ARGS...` started by `sh -c SHELL_CODE`, where the shell code ends
/// with `exec "$@"` (after a redirection or a umask, say).
fn via_sh(shell_code: &str, dir: &Path, args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(shell_code)
        .arg("sh")
        .arg(&artifacts().host)
        .arg("--plugin-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

/// `host run -b fake` with `extra` flags, a summary file, and piped outputs.
fn spawn_fake(dir: &Path, extra: &[&str], json: &Path) -> Guard {
    let s = script("echo hi\n");
    let mut cmd = host(dir);
    cmd.args(["run", "-b", "fake"])
        .args(extra)
        .arg("--json-summary")
        .arg(json)
        .arg(s.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // The script file must outlive the start of the run.
    std::thread::sleep(Duration::from_millis(50));
    drop(s);
    Guard(child)
}

fn stderr_of(g: &mut Guard) -> String {
    let mut err = String::new();
    if let Some(mut e) = g.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err
}

#[test]
fn a_first_signal_during_stop_lets_it_finish_and_a_second_abandons_it() {
    let dir = fake_dir();
    let json = tempfile::NamedTempFile::new().unwrap();
    // The run ends at once; the stop takes 3 s.
    let mut g = spawn_fake(dir.path(), &["-c", "STOP_SLEEP=3s"], json.path());
    std::thread::sleep(Duration::from_millis(1000));
    let began = Instant::now();
    kill("-TERM", g.0.id());
    let code = g.wait().code();
    let err = stderr_of(&mut g);
    assert_eq!(code, Some(0), "the completed run keeps its outcome: {err}");
    assert!(
        began.elapsed() >= Duration::from_millis(1500),
        "the stop was waited for"
    );
    let j = summary(json.path());
    assert_eq!(
        (j["stopped"].clone(), j["exit_code"].clone()),
        (true.into(), 0.into()),
        "{j}"
    );
    assert_eq!(j["signals_during_stop"], serde_json::json!(["terminate"]));

    // Two signals during the stop: the second abandons it and says so.
    let mut g = spawn_fake(dir.path(), &["-c", "STOP_SLEEP=30s"], json.path());
    std::thread::sleep(Duration::from_millis(1000));
    kill("-INT", g.0.id());
    std::thread::sleep(Duration::from_millis(300));
    kill("-INT", g.0.id());
    let code = g.wait().code();
    let err = stderr_of(&mut g);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("abandoning the stop"), "{err}");
    let j = summary(json.path());
    assert_eq!(j["stopped"], false, "{j}");
    assert!(
        j["stop_error"].as_str().unwrap_or("").contains("abandoned"),
        "{j}"
    );
}

#[test]
fn a_signal_while_stopping_after_a_hard_timeout_lets_the_stop_finish() {
    let dir = fake_dir();
    let json = tempfile::NamedTempFile::new().unwrap();
    let mut g = spawn_fake(
        dir.path(),
        &[
            "-c",
            "RUN_SLEEP=30s",
            "-c",
            "STOP_SLEEP=3s",
            "--hard-timeout",
            "500ms",
        ],
        json.path(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    kill("-TERM", g.0.id());
    assert_eq!(g.wait().code(), Some(124));
    let j = summary(json.path());
    assert_eq!(j["stopped"], true, "{j}");
    assert_eq!(j["timeout"], "hard", "{j}");
}

#[test]
fn sighup_and_sigquit_cancel_with_cleanup_and_other_signals_are_ignored() {
    let dir = fake_dir();
    let json = tempfile::NamedTempFile::new().unwrap();
    for (signal, code, reason) in [("-HUP", 129, "hangup"), ("-QUIT", 131, "quit")] {
        let mut g = spawn_fake(dir.path(), &["-c", "RUN_SLEEP=30s"], json.path());
        std::thread::sleep(Duration::from_millis(700));
        kill(signal, g.0.id());
        assert_eq!(
            g.wait().code(),
            Some(code),
            "{signal}: {}",
            stderr_of(&mut g)
        );
        let j = summary(json.path());
        assert_eq!(j["cancelled_by"], reason, "{j}");
        assert_eq!(j["stopped"], true, "{j}");
    }
    let mut g = spawn_fake(dir.path(), &["-c", "RUN_SLEEP=1500ms"], json.path());
    std::thread::sleep(Duration::from_millis(500));
    for signal in ["-USR1", "-USR2", "-ALRM"] {
        kill(signal, g.0.id());
    }
    assert_eq!(g.wait().code(), Some(0), "{}", stderr_of(&mut g));
    assert_eq!(summary(json.path())["outcome"], "passed");
}

#[test]
fn a_json_summary_that_cannot_be_created_stops_before_the_job_and_a_failed_write_is_an_error() {
    let dir = fake_dir();
    let s = script("echo ran\n");
    let fifo = tempfile::tempdir().unwrap();
    let fifo_path = fifo.path().join("summary.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo_path)
        .status()
        .unwrap()
        .success());
    for target in [
        fifo_path.clone(),
        fifo.path().join("missing/dir/summary.json"),
    ] {
        let began = Instant::now();
        let target_arg = target.display().to_string();
        let args = ["-c", "ECHO_SCRIPT=true", "--json-summary", &target_arg];
        let out = run_fake(dir.path(), &args, s.path());
        assert_eq!(out.code, Some(73), "{}: {}", target.display(), out.stderr);
        assert_eq!(out.stdout, "", "nothing was run");
        assert!(
            out.stderr.contains(&target.display().to_string()),
            "{}",
            out.stderr
        );
        assert!(began.elapsed() < Duration::from_secs(10));
    }
    let args = ["-c", "ECHO_SCRIPT=true", "--json-summary", "/dev/full"];
    let out = run_fake(dir.path(), &args, s.path());
    assert_eq!(out.stdout, "echo ran\n");
    assert_eq!(out.code, Some(74), "{}", out.stderr);
    assert!(out.stderr.contains("/dev/full"), "{}", out.stderr);
}

#[test]
fn an_endless_script_or_config_file_is_refused_at_its_limit() {
    let dir = fake_dir();
    let out = run_fake(dir.path(), &[], Path::new("/dev/zero"));
    assert_eq!(out.code, Some(66), "{}", out.stderr);
    assert!(
        out.stderr.contains("/dev/zero") && out.stderr.contains("--max-script-bytes"),
        "{}",
        out.stderr
    );

    let big = script(&"x".repeat(2048));
    let out = run_fake(dir.path(), &["--max-script-bytes", "1KiB"], big.path());
    assert_eq!(out.code, Some(66), "{}", out.stderr);
    assert!(out.stderr.contains("1024 bytes"), "{}", out.stderr);

    let s = script("true\n");
    let out = run_fake(dir.path(), &["--config-file", "/dev/zero"], s.path());
    assert_eq!(out.code, Some(78), "{}", out.stderr);
    assert!(
        out.stderr.contains("/dev/zero") && out.stderr.contains("1048576"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_closed_stdout_is_a_lost_log_not_a_pass() {
    let dir = fake_dir();
    let s = script("true\n");
    let args: Vec<&std::ffi::OsStr> = ["run", "-b", "fake", "-c", "LOG_BYTES=5MiB"]
        .iter()
        .map(|a| a.as_ref())
        .chain([s.path().as_os_str()])
        .collect();
    let out = via_sh(r#"exec "$@" >&-"#, dir.path(), &args);
    assert_eq!(
        out.status.code(),
        Some(74),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_exit_code_outside_a_byte_is_errored_with_status_255_never_0() {
    let dir = fake_dir();
    let json = tempfile::NamedTempFile::new().unwrap();
    for (code, shown) in [("256", "256"), ("-1", "-1"), ("512", "512")] {
        let mut g = spawn_fake(
            dir.path(),
            &["-c", &format!("EXIT_CODE={code}")],
            json.path(),
        );
        let status = g.wait().code();
        let err = stderr_of(&mut g);
        assert_eq!(status, Some(255), "EXIT_CODE={code}: {err}");
        assert!(err.contains(shown), "{err}");
        let j = summary(json.path());
        assert_eq!(j["outcome"], "errored", "{j}");
        assert_eq!(j["script_exit_code"].to_string(), shown, "{j}");
        assert_eq!(j["exit_code"], 255, "{j}");
    }
}

#[test]
fn write_lock_under_umask_000_writes_a_lock_only_its_owner_can_change() {
    let dir = fake_dir();
    let lock = dir.path().join("plugins.lock");
    let args = [
        "list-backends".as_ref(),
        "--write-lock".as_ref(),
        lock.as_os_str(),
    ];
    let out = via_sh(r#"umask 000; exec "$@""#, dir.path(), &args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&lock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    // And the lock it wrote is in force and lets fake load.
    let mut cmd = host(dir.path());
    cmd.args(["list-backends", "--json"]);
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
}

#[test]
fn a_plugin_directory_owned_by_another_user_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(&artifacts().fake, plugins.join("libfake.so")).unwrap();
    let chown = Command::new("chown")
        .arg("65534")
        .arg(&plugins)
        .status()
        .unwrap();
    assert!(chown.success(), "the test runs as root (as CI does)");
    let mut cmd = host(&plugins);
    cmd.args(["list-backends", "--json"]);
    let out = run(cmd);
    assert_eq!(out.code, Some(3), "{}", out.stdout);
    assert!(out.stdout.contains("owned by uid 65534"), "{}", out.stdout);
    assert!(out.stdout.contains("directory"), "{}", out.stdout);
    // A symlink planted in such a directory, pointing at a root-owned library elsewhere.
    let target = tempfile::tempdir().unwrap();
    std::fs::copy(&artifacts().fake, target.path().join("libfake.so")).unwrap();
    std::fs::remove_file(plugins.join("libfake.so")).unwrap();
    std::os::unix::fs::symlink(target.path().join("libfake.so"), plugins.join("libfake.so"))
        .unwrap();
    let mut cmd = host(&plugins);
    cmd.args(["list-backends", "--json"]);
    let out = run(cmd);
    assert_eq!(out.code, Some(3), "{}", out.stdout);
    assert!(out.stdout.contains("owned by uid 65534"), "{}", out.stdout);
}

#[test]
fn secrets_in_list_values_are_masked_in_logs() {
    let dir = plugin_dir(&[("liblocal.so", &artifacts().local)]);
    let scripts = tempfile::tempdir().unwrap();
    let s = script("true\n");
    let mut cmd = host(dir.path());
    cmd.args(["run", "-b", "local", "-v", "-c"])
        .arg(format!("SCRIPTS_DIR={}", scripts.path().display()))
        .args(["-c", "ENV=GITHUB_TOKEN=abc123secret,A=1"])
        .arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("GITHUB_TOKEN=***"), "{}", out.stderr);
    assert!(!out.stderr.contains("abc123secret"), "{}", out.stderr);
}

#[test]
fn plugin_text_cannot_drive_the_terminal() {
    let dir = fake_dir();
    let s = script("true\n");
    let forged = ["-c", "START_ERROR=boom\x1b[2J\nhost: forged line"];
    let out = run_fake(dir.path(), &forged, s.path());
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    assert!(!out.stderr.contains('\x1b'), "{:?}", out.stderr);
    assert!(
        out.stderr.contains("boom\\x1b[2J\\nhost: forged line"),
        "{:?}",
        out.stderr
    );
    assert!(
        !out.stderr.lines().any(|l| l.starts_with("host: forged")),
        "{}",
        out.stderr
    );
}

#[test]
fn a_malformed_docker_endpoint_is_a_config_error_not_a_requeue() {
    let dir = plugin_dir(&[("libdocker.so", &artifacts().docker)]);
    let s = script("true\n");
    let mut cmd = host(dir.path());
    cmd.args(["run", "-b", "docker", "-c", "ENDPOINT=http://[::1"])
        .arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(78), "{}", out.stderr);
    assert!(out.stderr.contains("ENDPOINT"), "{}", out.stderr);
}

#[test]
fn config_that_would_be_ignored_is_named_in_a_warning() {
    let dir = fake_dir();
    let s = script("true\n");
    let file = script("[nosuch]\nA = 1\n[FAKE]\nLOG_OUTPUT = \"x\"\n");
    let mut cmd = host(dir.path());
    cmd.args(["run", "-b", "fake", "--config-file"])
        .arg(file.path())
        .arg(s.path())
        .env("BACKEND_FAKE_LOG_OUTPUT", "100%")
        .env(
            "BACKEND_FAKE_RUN_SLEEP",
            std::os::unix::ffi::OsStrExt::from_bytes(&b"\xff1s"[..]) as &std::ffi::OsStr,
        );
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for needed in [
        "[nosuch]",
        "[FAKE]",
        "did you mean [fake]",
        "BACKEND_FAKE_LOG_OUTPUT",
        "BACKEND_FAKE_RUN_SLEEP",
    ] {
        assert!(out.stderr.contains(needed), "{needed}: {}", out.stderr);
    }
    // A -c argument that is not UTF-8 is named.
    let mut cmd = host(dir.path());
    cmd.args(["run", "-b", "fake", "-c"])
        .arg(
            std::os::unix::ffi::OsStrExt::from_bytes(&b"LOG_OUTPUT=\xffbad"[..])
                as &std::ffi::OsStr,
        )
        .arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("LOG_OUTPUT="), "{}", out.stderr);
}

#[test]
fn help_and_listings_into_a_closed_pipe_end_quietly() {
    let dir = fake_dir();
    for args in ["run --help", "--help", "list-backends"] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                r#""$0" --plugin-dir "$1" {args} | head -c 10 >/dev/null"#
            ))
            .arg(&artifacts().host)
            .arg(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args}: {err}"
        );
    }
}
