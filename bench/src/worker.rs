//! Jobs per second through a directory queue: `host worker` with fake (no sleep, 1 KiB of
//! log, pool 64) beside a loop that moves the same files through the same states with no
//! backend at all (claim rename, state lines, log file, done rename), in the same run.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::artifacts::{self, Artifacts};
use crate::measure::median;
use crate::table::Row;

/// A fresh queue directory under `base` holding `n` jobs.
fn queue_with_jobs(base: &Path, n: usize) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = base.join(format!(
        "bench-queue-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("new")).expect("new/");
    // Plain writes, as the calibration loop makes its files (`host enqueue` also syncs each
    // one, which is not what is measured here); then everything reaches the disk before the
    // clock starts, so neither side pays for the other's writeback.
    for id in 1..=n as u64 {
        let doc = format!(r#"{{"job": {{"id": {id}, "number": "{id}.1"}}, "script": "true\n"}}"#);
        std::fs::write(dir.join("new").join(format!("{id:012}.json")), doc).expect("job file");
    }
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    dir
}

/// Seconds for `host worker` to run every job of a fresh queue of `n` and exit.
fn ours(a: &Artifacts, plugins: &Path, base: &Path, n: usize) -> f64 {
    let dir = queue_with_jobs(base, n);
    let t = Instant::now();
    let status = Command::new(&a.host)
        .arg("--plugin-dir")
        .arg(plugins)
        .args([
            "worker",
            "-b",
            "fake",
            "-c",
            "LOG_BYTES=1KiB",
            "--pool-size",
            "64",
            "--exit-when-idle",
            "--queue",
        ])
        .arg(format!("file://{}", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run host worker");
    let secs = t.elapsed().as_secs_f64();
    assert!(status.success(), "host worker failed");
    // SAFETY: as above.
    unsafe { libc::sync() };
    let done = std::fs::read_dir(dir.join("done"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(done, n, "every job reached done/");
    let _ = std::fs::remove_dir_all(&dir);
    secs
}

/// Seconds for one thread to move `n` jobs through the same file operations as the worker,
/// running nothing.
fn baseline(base: &Path, n: usize) -> f64 {
    let dir = queue_with_jobs(base, n);
    for d in ["claimed/b", "state", "log", "done"] {
        std::fs::create_dir_all(dir.join(d)).expect("dirs");
    }
    let log = vec![b'x'; 1024];
    let t = Instant::now();
    let mut names: Vec<_> = std::fs::read_dir(dir.join("new"))
        .expect("new/")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for (i, name) in names.iter().enumerate() {
        let claimed = dir.join("claimed/b").join(name);
        std::fs::rename(dir.join("new").join(name), &claimed).expect("claim");
        let payload = std::fs::read(&claimed).expect("read");
        std::hint::black_box(&payload);
        let mut state = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("state").join(format!("{i}.jsonl")))
            .expect("state");
        for s in ["received", "started", "passed"] {
            state
                .write_all(
                    format!("{{\"state\":\"{s}\",\"at\":\"2026-01-01T00:00:00.000Z\"}}\n")
                        .as_bytes(),
                )
                .expect("state line");
        }
        std::fs::File::create(dir.join("log").join(format!("{i}.log")))
            .and_then(|mut f| f.write_all(&log))
            .expect("log");
        std::fs::rename(&claimed, dir.join("done").join(name)).expect("done");
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    // SAFETY: as above.
    unsafe { libc::sync() };
    secs
}

/// The figure on the filesystem at `base` (`what` names it in the table).
pub fn throughput(a: &Artifacts, n: usize, runs: usize, base: &Path, what: &str) -> Row {
    let plugins = artifacts::plugin_dir(&[("libfake.so".into(), &a.fake)]);
    let ours = n as f64 / median(runs, || ours(a, &plugins, base, n));
    let base = n as f64 / median(runs, || baseline(base, n));
    let mut row = Row::new(format!(
        "worker: jobs/s through a directory queue on {what} ({n} jobs, fake, 1 KiB log, pool 64)"
    ));
    row.ours = format!("{ours:.0} jobs/s");
    row.baseline = format!("{base:.0} jobs/s (file operations only, 1 thread)");
    row.ratio = format!("{:.2}x", ours / base);
    row.target = ">= 5000 jobs/s and >= 0.5x".into();
    row.verdict = crate::measure::verdict(ours >= 5000.0 && ours / base >= 0.5);
    let _ = std::fs::remove_dir_all(&plugins);
    row
}

/// The worker rows: on the temp directory's filesystem (a disk, here) and on tmpfs
/// (`/dev/shm`), where file operations cost least and the worker's own overhead shows most.
pub fn rows(a: &Artifacts, n: usize, runs: usize) -> Vec<Row> {
    let mut rows = vec![throughput(
        a,
        n,
        runs,
        &std::env::temp_dir(),
        "disk (temp dir)",
    )];
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        rows.push(throughput(a, n, runs, shm, "tmpfs (/dev/shm)"));
    }
    rows
}
