//! Out-of-process plugins (`--isolate`): a crash in a plugin, at any entry point and of any
//! kind, fails the calls in flight as not completed, naming the plugin, the call and what
//! happened; the host lives, runs the next job, and nothing the crashed server started is
//! left.

use std::io::BufRead as _;
use std::time::{Duration, Instant};

use blackbox::{artifacts, fixture, host, plugin_dir, run, script};
use host::job::{run_job, Job, JobOptions, Outcome, Silent};
use plugin_api::ProviderConfig;

/// The call a crash at `entry` happens during, as the host names it.
fn call_of(entry: &str) -> &'static str {
    match entry {
        "factory" => "new_provider",
        "setup" => "setup",
        "start" | "id" => "start",
        "upload" => "upload_script",
        "run" | "output" => "run_script",
        "stop" => "stop",
        other => panic!("no entry point {other}"),
    }
}

#[test]
fn a_crash_at_every_entry_point_leaves_the_host_alive_with_exit_75_and_the_plugin_named() {
    let dir = plugin_dir(&[("libpanicky.so", &fixture("panicky"))]);
    let s = script("true");
    let kinds = [
        ("segv", "SIGSEGV"),
        ("abort", "SIGABRT"),
        ("exit", "exit status 3"),
    ];
    for entry in [
        "factory", "setup", "start", "id", "upload", "run", "output", "stop",
    ] {
        for (kind, said) in kinds {
            let mut cmd = host(dir.path());
            cmd.args(["--isolate", "panicky", "run", "-b", "panicky"])
                .arg("-c")
                .arg(format!("CRASH_IN={entry}"))
                .arg("-c")
                .arg(format!("CRASH_KIND={kind}"))
                .arg(s.path());
            let out = run(cmd);
            let what = format!("CRASH_IN={entry} CRASH_KIND={kind}");
            if entry == "stop" {
                // The job had passed; the crash in stop is cleaned up after, and said.
                assert_eq!(out.code, Some(0), "{what}:\n{}", out.stderr);
                assert!(out.stderr.contains(said), "{what}:\n{}", out.stderr);
                continue;
            }
            assert_eq!(out.code, Some(75), "{what}: not completed:\n{}", out.stderr);
            let message = format!("plugin panicky crashed ({said}");
            let during = format!(") during {}", call_of(entry));
            assert!(
                out.stderr.contains(&message) && out.stderr.contains(&during),
                "{what}: wanted {message:?}...{during:?} in:\n{}",
                out.stderr
            );
        }
    }
}

#[test]
fn a_hung_plugin_server_is_killed_after_the_heartbeat_and_its_call_fails() {
    let dir = plugin_dir(&[("libpanicky.so", &fixture("panicky"))]);
    let s = script("true");
    let mut cmd = host(dir.path());
    cmd.args([
        "--isolate",
        "all",
        "run",
        "-b",
        "panicky",
        "-c",
        "CRASH_IN=run",
        "-c",
        "CRASH_KIND=hang",
    ])
    .arg(s.path());
    let began = Instant::now();
    let out = run(cmd);
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("plugin panicky crashed (hung: no answer for 5s, killed) during run_script"),
        "{}",
        out.stderr
    );
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "{:?}",
        began.elapsed()
    );
}

/// The pids of the processes whose command line holds `needle`.
fn pids_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false);
        if alive
            && String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(needle)
        {
            pids.push(pid);
        }
    }
    pids
}

/// `host --isolate local run -b local` on `script` (which prints `started` first), running
/// until `count` processes with `marker` in their command line are up.
fn isolated_local_job(
    script_text: &str,
    extra: &[&str],
    marker: &str,
    count: usize,
) -> (blackbox::Guard, tempfile::TempDir, tempfile::NamedTempFile) {
    let dir = plugin_dir(&[("liblocal.so", &artifacts().local)]);
    let s = script(script_text);
    let mut cmd = host(dir.path());
    cmd.args(["--isolate", "local", "run", "-b", "local"])
        .args(extra)
        .arg(s.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut guard = blackbox::Guard(cmd.spawn().unwrap());
    let mut stdout = std::io::BufReader::new(guard.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    let end = Instant::now() + Duration::from_secs(10);
    while pids_with(marker).len() < count && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(pids_with(marker).len(), count);
    (guard, dir, s)
}

/// Waits for the host to end: its exit code and stderr.
fn finish(mut guard: blackbox::Guard) -> (Option<i32>, String) {
    let status = guard.0.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut guard.0.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn a_server_killed_mid_job_fails_the_run_and_its_processes_are_reaped() {
    // A marker no other test (nor an earlier run of this one) uses, to find this job's
    // processes.
    let marker = format!("sleep 301.{}", std::process::id());
    let (guard, _dir, _script) = isolated_local_job(
        &format!("{marker} & echo started; {marker}\n"),
        &[],
        &marker,
        2,
    );
    let host_pid = guard.0.id();

    // The host does not have the plugin open; its server does.
    let maps = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    assert!(
        !maps(host_pid).contains("liblocal.so"),
        "local is never opened in the host"
    );
    let servers = pids_with("__host-plugin-server");
    let server = servers
        .iter()
        .copied()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| {
                    s.rsplit(')').next().unwrap_or("").split_whitespace().nth(1)
                        == Some(&host_pid.to_string())
                })
                .unwrap_or(false)
        })
        .expect("the host's plugin server");
    assert!(maps(server).contains("liblocal.so"));

    // What the OOM killer sends. (A SIGSEGV from kill(1) is not fatal to a Rust program the
    // first time: its stack-overflow handler resets the action and returns.)
    blackbox::signal("-KILL", server);
    let (code, stderr) = finish(guard);
    assert_eq!(code, Some(75), "{stderr}");
    assert!(
        stderr.contains("plugin local crashed (SIGKILL) during run_script"),
        "{stderr}"
    );
    // The backend's reap ran in a new server before stop returned: nothing is left.
    assert_eq!(pids_with(&marker), Vec::<u32>::new(), "{stderr}");
}

async fn job(provider: &host::Provider, script: &str) -> host::job::JobReport {
    let (_tx, mut cancel) = tokio::sync::mpsc::channel(1);
    let job = Job {
        script: script.as_bytes().to_vec(),
        options: JobOptions::default(),
        ..Job::default()
    };
    run_job(provider, job, tokio::io::sink(), &mut cancel, &Silent).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_jobs_on_fake_pass_beside_one_that_crashes_its_isolated_plugin_and_the_next_runs() {
    // This test binary serves nothing itself: the host binary runs the plugin servers.
    host::plugins::probe::set_executable(Some(artifacts().host.clone()));
    let dir = plugin_dir(&[
        ("libfake.so", &artifacts().fake),
        ("libpanicky.so", &fixture("panicky")),
    ]);
    let policy = host::PluginPolicy::new(
        host::plugins::loader::plugin_dirs(&[dir.path().to_path_buf()]),
        None,
    )
    .with_isolation(host::isolate::Isolation::parse(["panicky"]));
    let registry = policy.load();
    assert!(registry.rejected().is_empty(), "{:?}", registry.rejected());
    assert!(registry.backend("panicky").unwrap().isolated);
    assert!(!registry.backend("fake").unwrap().isolated);

    let fake = registry
        .new_backend_provider("fake", &ProviderConfig::from_map([("RUN_SLEEP", "300ms")]))
        .unwrap();
    let crashing = registry
        .new_backend_provider("panicky", &ProviderConfig::from_map([("CRASH_IN", "run")]))
        .unwrap();
    let (a, b, c, d, crashed) = tokio::join!(
        job(&fake, "echo 1"),
        job(&fake, "echo 2"),
        job(&fake, "echo 3"),
        job(&fake, "echo 4"),
        job(&crashing, "true"),
    );
    for r in [a, b, c, d] {
        assert_eq!(*r.outcome(), Outcome::Passed, "{r:?}");
    }
    match crashed.outcome() {
        Outcome::NotCompleted(f) => assert!(
            f.to_string()
                .contains("plugin panicky crashed (SIGSEGV) during run_script"),
            "{f}"
        ),
        other => panic!("{other:?}"),
    }

    // The next use starts a new server (after the backoff) and runs a good job.
    let good = registry
        .new_backend_provider("panicky", &ProviderConfig::new())
        .unwrap();
    let r = job(&good, "true").await;
    assert_eq!(*r.outcome(), Outcome::Passed, "{r:?}");
    assert_eq!(r.log_bytes, "before\nafter\n".len() as u64);
}

#[test]
fn sigint_during_an_isolated_run_cancels_it_in_the_server_and_stop_leaves_nothing() {
    let marker = format!("sleep 302.{}", std::process::id());
    let (guard, _dir, _script) = isolated_local_job(
        &format!("echo started; {marker}\n"),
        &["-c", "KILL_GRACE=1s"],
        &marker,
        1,
    );
    blackbox::signal("-INT", guard.0.id());
    let (code, stderr) = finish(guard);
    assert_eq!(code, Some(130), "{stderr}");
    assert_eq!(pids_with(&marker), Vec::<u32>::new(), "{stderr}");
}

/// `host --isolate ALIAS run` into a pipe nobody reads for a second (the server's slots and
/// credits run out, the rest waits), then read to the end: the stdout and exit code.
fn isolated_into_a_stalled_pipe(dir: &std::path::Path, alias: &str, args: &[&str]) -> Vec<u8> {
    let s = script("seq 1 2000000");
    let (mut reader, writer) = std::io::pipe().unwrap();
    let mut cmd = host(dir);
    cmd.args(["--isolate", alias, "run", "-b", alias])
        .args(args)
        .arg(s.path())
        .stdout(writer)
        .stderr(std::process::Stdio::null());
    let mut guard = blackbox::Guard(cmd.spawn().unwrap());
    drop(cmd);
    std::thread::sleep(Duration::from_secs(1));
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut all).unwrap();
    assert_eq!(guard.0.wait().unwrap().code(), Some(0), "{alias}");
    all
}

#[test]
fn an_isolated_log_arrives_whole_and_in_order_through_a_stalled_reader() {
    let dir = plugin_dir(&[
        ("liblocal.so", &artifacts().local),
        ("libfake.so", &artifacts().fake),
    ]);
    // local: every line different (a chunk in the wrong slot or order would show), in
    // chunks of the sizes the script's pipe gives.
    let got = isolated_into_a_stalled_pipe(dir.path(), "local", &[]);
    let want: String = (1..=2_000_000).map(|n| format!("{n}\n")).collect();
    assert!(
        got.len() == want.len(),
        "{} bytes of {}",
        got.len(),
        want.len()
    );
    assert!(got == want.as_bytes(), "local's log differs");
    // fake: 256 KiB chunks, byte for byte what the same plugin writes in process.
    let got = isolated_into_a_stalled_pipe(dir.path(), "fake", &["-c", "LOG_BYTES=48MiB"]);
    let s = script("");
    let mut cmd = host(dir.path());
    cmd.args(["run", "-b", "fake", "-c", "LOG_BYTES=48MiB"])
        .arg(s.path());
    let in_process = cmd.output().unwrap();
    assert_eq!(in_process.stdout.len(), 48 << 20);
    assert!(got == in_process.stdout, "fake's log differs isolated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_isolated_runs_on_one_server_keep_their_logs_apart() {
    host::plugins::probe::set_executable(Some(artifacts().host.clone()));
    let dir = plugin_dir(&[("liblocal.so", &artifacts().local)]);
    let registry = host::PluginPolicy::new(
        host::plugins::loader::plugin_dirs(&[dir.path().to_path_buf()]),
        None,
    )
    .with_isolation(host::isolate::Isolation::All)
    .load();
    let local = registry
        .new_backend_provider("local", &ProviderConfig::new())
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    // Four runs at once on the one server share its slots; each log holds only its own
    // lines, all of them, in order.
    let runs = (0..4).map(|n| {
        let path = out.path().join(format!("{n}.log"));
        let local = &local;
        async move {
            let job = Job {
                script: format!("seq {} 4 1200000", n + 1).into_bytes(),
                options: JobOptions::default(),
                ..Job::default()
            };
            let file = host::output::BlockingFile::new(std::fs::File::create(&path).unwrap());
            let (_tx, mut cancel) = tokio::sync::mpsc::channel(1);
            let r = run_job(local, job, file, &mut cancel, &Silent).await;
            (r, path, n)
        }
    });
    for (r, path, n) in futures_util::future::join_all(runs).await {
        assert_eq!(*r.outcome(), Outcome::Passed, "{r:?}");
        let want: String = (n + 1..=1_200_000)
            .step_by(4)
            .map(|i| format!("{i}\n"))
            .collect();
        let got = std::fs::read(&path).unwrap();
        assert!(
            got == want.as_bytes(),
            "run {n}: {} bytes of {}",
            got.len(),
            want.len()
        );
    }
}
