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
    host::probe::set_executable(Some(artifacts().host.clone()));
    let dir = plugin_dir(&[
        ("libfake.so", &artifacts().fake),
        ("libpanicky.so", &fixture("panicky")),
    ]);
    let policy =
        host::PluginPolicy::new(host::loader::plugin_dirs(&[dir.path().to_path_buf()]), None)
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
