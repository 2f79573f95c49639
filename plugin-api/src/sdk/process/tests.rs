//! The process helpers as a backend uses them: exit codes, one ordered stream, and nothing
//! left (no process, no zombie) whichever way a run ends.

use std::time::{Duration, Instant};

use super::*;
use crate::sdk::collect::{collecting_sink, Log};

fn output() -> (Output, Log) {
    let (sink, log) = collecting_sink();
    (Output::new(sink), log)
}

fn text(log: &Log) -> String {
    String::from_utf8_lossy(&log.lock().unwrap()).into_owned()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn sh(script: &str) -> Command {
    Command::new("sh").arg("-c").arg(script)
}

/// Whether `pid` is still in the process table at all (alive, or a zombie nobody reaped).
fn exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits up to `limit` for `f` to hold.
fn eventually(limit: Duration, f: impl Fn() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// The pids the script wrote on its first line.
fn pids_in(log: &Log) -> Vec<i32> {
    let t = text(log);
    t.lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[test]
fn exit_codes_arrive_exactly_and_a_signal_is_128_plus_n_with_a_line() {
    let _turn = crate::PROCESS_TESTS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (mut out, log) = output();
    let r = block_on(sh("exit 3").spawn().unwrap().run(&mut out)).unwrap();
    assert_eq!((r.exit_code, r.completed), (3, true));

    let r = block_on(sh("kill -9 $$").spawn().unwrap().run(&mut out)).unwrap();
    assert_eq!(r.exit_code, 137);
    assert!(
        text(&log).contains("killed by signal 9 (SIGKILL)"),
        "{}",
        text(&log)
    );
}

#[test]
fn stdout_and_stderr_share_one_stream_in_order_and_only_fds_0_to_2_are_inherited() {
    let _turn = crate::PROCESS_TESTS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (mut out, log) = output();
    let script =
        "echo 1; echo 2 >&2; echo 3; echo 4 >&2; ls /proc/self/fd | sort -n | tr '\\n' ' '";
    let r = block_on(sh(script).spawn().unwrap().run(&mut out)).unwrap();
    assert_eq!(r.exit_code, 0);
    // ls itself opens one descriptor to read the directory (3).
    assert_eq!(text(&log), "1\n2\n3\n4\n0 1 2 3 ");
}

#[test]
fn backend_config_is_not_in_the_environment_and_the_tag_is() {
    let _turn = crate::PROCESS_TESTS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    std::env::set_var("BACKEND_PROCESS_TEST_SECRET", "hunter2");
    let (mut out, log) = output();
    let cmd = sh("env").env("MINE", "yes").tag("job-42");
    block_on(cmd.spawn().unwrap().run(&mut out)).unwrap();
    let env = text(&log);
    assert!(!env.contains("hunter2"), "{env}");
    assert!(
        env.contains("MINE=yes") && env.contains("HOST_JOB=job-42"),
        "{env}"
    );
}

#[test]
fn a_dropped_run_ends_the_whole_tree_and_reaps_it_without_stop() {
    let _turn = crate::PROCESS_TESTS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (mut out, log) = output();
    // A background process that ignores SIGTERM, and a leader that waits for it.
    let job = sh("trap '' TERM; sleep 60 & echo $$ $!; wait")
        .kill_grace(Duration::from_millis(300))
        .spawn()
        .unwrap();
    let tree = job.processes();
    block_on(async {
        let run = job.run(&mut out);
        // The run is dropped (cancelled) as soon as the pids are out.
        let _ = tokio::time::timeout(Duration::from_millis(500), run).await;
    });
    let pids = pids_in(&log);
    assert_eq!(pids.len(), 2, "{}", text(&log));
    // Nobody calls stop: the background termination alone SIGKILLs after the grace and
    // reaps the leader, our child.
    assert!(
        eventually(Duration::from_secs(5), || pids.iter().all(|p| !exists(*p))),
        "left: {:?}",
        pids.iter().filter(|p| exists(**p)).collect::<Vec<_>>()
    );
    assert!(tree.live_pids().is_empty());
}

#[test]
fn stop_after_a_finished_run_ends_what_the_run_left_and_nothing_stays_a_zombie() {
    let _turn = crate::PROCESS_TESTS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (mut out, log) = output();
    let jobs = Jobs::new(Duration::from_millis(200));
    // The leader exits at once; its background child lingers, writing nothing.
    let r = block_on(jobs.run(sh("sleep 60 >/dev/null 2>&1 & echo $$ $!"), &mut out)).unwrap();
    assert_eq!(r.exit_code, 0);
    let pids = pids_in(&log);
    assert_eq!(pids.len(), 2);
    assert!(!exists(pids[0]), "the leader was reaped when it exited");
    assert!(exists(pids[1]), "the background process runs until stop");
    block_on(jobs.stop()).unwrap();
    // Not our child (it was reparented when the leader exited): gone, or a zombie of init.
    assert!(
        !tree::is_alive(pids[1]),
        "stop returns when nothing is left"
    );
    block_on(jobs.stop()).unwrap();
}

#[test]
fn a_jobs_dropped_without_stop_still_ends_its_processes() {
    let _turn = crate::PROCESS_TESTS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (mut out, log) = output();
    let jobs = Jobs::new(Duration::from_secs(10));
    block_on(jobs.run(sh("sleep 60 >/dev/null 2>&1 & echo $!"), &mut out)).unwrap();
    let pids = pids_in(&log);
    drop(jobs);
    assert!(eventually(Duration::from_secs(5), || !tree::is_alive(
        pids[0]
    )));
}

#[test]
fn a_program_that_cannot_start_is_an_error_naming_it() {
    let _turn = crate::PROCESS_TESTS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let e = Command::new("/nonexistent/shell").spawn().unwrap_err();
    assert!(e.message().contains("/nonexistent/shell"), "{e}");
}

#[test]
fn a_work_dir_is_private_holds_the_script_and_is_gone_after_remove() {
    let _turn = crate::PROCESS_TESTS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    use std::os::unix::fs::PermissionsExt as _;
    let base = std::env::temp_dir();
    let dir = WorkDir::create(&base, "unit").unwrap();
    assert!(dir.id().starts_with("unit-"));
    let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    block_on(dir.write_script("build.sh", b"echo hi")).unwrap();
    assert!(block_on(dir.write_script("build.sh", b"again")).is_err());
    let path = dir.path().to_owned();
    block_on(dir.remove()).unwrap();
    assert!(!path.exists());
    block_on(dir.remove()).unwrap();
}
