//! A plugin that panics anywhere fails that call with an error naming the plugin; the host
//! process lives on and runs the next job on the same backend.

use std::time::Duration;

use blackbox::{fixture, host, plugin_dir, run, script};
use host::job::{run_job, Job, JobOptions, Outcome, Silent};
use plugin_api::{ErrorKind, ProviderConfig};

const CASES: &[(&str, &str)] = &[
    ("factory", "Backend::new_provider"),
    ("setup", "Provider::setup"),
    ("start", "Provider::start"),
    ("upload", "Instance::upload_script"),
    ("run", "Instance::run_script"),
    ("output", "Instance::run_script"),
    ("stop", "Instance::stop"),
];

#[test]
fn the_host_binary_survives_a_panic_in_every_entry_point() {
    let dir = plugin_dir(&[("libpanicky.so", &fixture("panicky"))]);
    let s = script("true");
    for (at, call) in CASES {
        let mut cmd = host(dir.path());
        cmd.args(["run", "-b", "panicky", "-c"])
            .arg(format!("PANIC_IN={at}"))
            .arg(s.path());
        let out = run(cmd);
        // abi_stable's own handling would exit(1) and a panic abort is a signal: neither.
        let want = if *at == "stop" { 0 } else { 75 };
        assert_eq!(out.code, Some(want), "PANIC_IN={at}:\n{}", out.stderr);
        let named = format!("panicky plugin panicked in {call}: boom");
        let named_output = format!("panicky plugin panicked in {call}: index out of bounds");
        assert!(
            out.stderr.contains(&named) || out.stderr.contains(&named_output),
            "PANIC_IN={at}: stderr does not name the plugin and call:\n{}",
            out.stderr
        );
        assert!(!out
            .stderr
            .contains("Attempted to panic across the ffi boundary"));
    }
}

async fn job_on(registry: &host::Registry, panic_in: &str) -> host::job::JobReport {
    let config = ProviderConfig::from_map([("PANIC_IN", panic_in)]);
    let provider = registry
        .new_backend_provider("panicky", &config)
        .expect("provider");
    let (_tx, mut cancel) = tokio::sync::mpsc::channel(1);
    let job = Job {
        script: b"true".to_vec(),
        options: JobOptions {
            hard_timeout: Duration::from_millis(300),
            ..JobOptions::default()
        },
        ..Job::default()
    };
    run_job(&provider, job, tokio::io::sink(), &mut cancel, &Silent).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_survives_every_panic_and_then_runs_a_good_job() {
    let dir = plugin_dir(&[("libpanicky.so", &fixture("panicky"))]);
    let registry = host::Registry::load(&host::plugins::loader::plugin_dirs(&[dir
        .path()
        .to_path_buf()]));

    let err = registry
        .new_backend_provider(
            "panicky",
            &ProviderConfig::from_map([("PANIC_IN", "factory")]),
        )
        .err()
        .expect("factory panic is an error");
    assert_eq!(err.backend_kind(), Some(ErrorKind::PANIC));
    assert!(err.to_string().contains("panicky"), "{err}");

    for (at, call) in &CASES[1..] {
        let report = job_on(&registry, at).await;
        let error = match (&report.outcome, &report.stop) {
            (Outcome::NotCompleted(f), _) => f.to_string(),
            (_, host::job::StopStatus::Failed(e)) => e.to_string(),
            _ => String::new(),
        };
        assert!(
            error.contains(&format!("panicky plugin panicked in {call}")),
            "PANIC_IN={at}: {report:?}"
        );
    }

    // A panic while a cancelled future is dropped must not abort the process.
    let report = job_on(&registry, "drop").await;
    assert_eq!(
        *report.outcome(),
        Outcome::TimedOut(host::job::TimeoutKind::Hard)
    );

    // A panic inside a task on the plugin's own runtime is reported, not fatal.
    let report = job_on(&registry, "spawned").await;
    assert_eq!(*report.outcome(), Outcome::Passed, "{report:?}");

    // A panic in a sync call: the id reads as empty, nothing else breaks.
    let report = job_on(&registry, "id").await;
    assert_eq!(report.instance_id.as_deref(), Some(""));
    assert_eq!(*report.outcome(), Outcome::Passed);

    // And the same backend still runs a normal job.
    let report = job_on(&registry, "").await;
    assert_eq!(*report.outcome(), Outcome::Passed, "{report:?}");
    assert_eq!(report.log_bytes, "before\nafter\n".len() as u64);
    assert!(report.stopped());
}
