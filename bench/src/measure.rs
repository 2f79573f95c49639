//! Timing and process figures, and what every figure module shares (a runtime, start
//! attributes, the verdict words). Figure modules use this one; none uses another.

use std::time::{Duration, Instant};

use plugin_api::StartAttributes;

/// The median of `runs` runs of `f`, each returning its own figure.
pub fn median(runs: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..runs.max(1)).map(|_| f()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `ours` and `base` alternately `runs` times (so that a noisy neighbour hits both
/// alike) and returns the medians of each and of their ratios.
pub fn paired(
    runs: usize,
    mut ours: impl FnMut() -> f64,
    mut base: impl FnMut() -> f64,
) -> (f64, f64, f64) {
    let mut o = Vec::new();
    let mut b = Vec::new();
    let mut r = Vec::new();
    for _ in 0..runs.max(1) {
        let x = ours();
        let y = base();
        o.push(x);
        b.push(y);
        r.push(x / y);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    (med(&mut o), med(&mut b), med(&mut r))
}

/// Wall time of a shell command, in seconds.
pub fn time_shell(cmd: &str) -> f64 {
    let t = Instant::now();
    let status = std::process::Command::new("sh")
        .args(["-c", cmd])
        .status()
        .expect("run sh");
    let took = t.elapsed();
    assert!(status.success(), "command failed: {cmd}");
    took.as_secs_f64()
}

/// A field of /proc/self/status in kB (VmRSS, VmHWM) or a count (Threads).
pub fn proc_status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples the thread count every 10 ms until `done`; returns the maximum seen.
pub fn sample_threads(
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut max = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            max = max.max(proc_status("Threads:"));
            std::thread::sleep(Duration::from_millis(10));
        }
        max
    })
}

/// A runtime for a figure.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Start attributes as a worker gives them.
pub fn attrs() -> StartAttributes {
    let mut a = StartAttributes::default();
    a.set_worker_defaults();
    a
}

/// What a table says of a target.
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "MISSED"
    }
}
