//! Jobs in flight at once: a child process runs them and prints its wall time, peak RSS and
//! most threads, so that each figure is of a process of its own.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use host::output::{log_channel, DEFAULT_CAPACITY};
use host::Registry;
use plugin_api::ProviderConfig;

use crate::measure::{attrs, proc_status, runtime, sample_threads};

pub fn inflight_child(backend: &str, n: usize, dir: &Path) {
    let registry = Registry::load(&host::plugins::loader::plugin_dirs(&[dir.to_path_buf()]));
    inflight_on(&registry, backend, n);
}

/// Runs an in-flight child and reads what it printed: wall seconds, peak RSS in kB, the
/// most threads seen.
pub fn inflight_figures(child: &mut Command) -> (f64, f64, u64) {
    let out = child.output().expect("run child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "in-flight child failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut it = text.split_whitespace();
    let wall: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    let rss_kb: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    let threads: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    (wall, rss_kb, threads)
}

/// Runs `n` jobs of `backend` at once, each sleeping 1 s, and prints the wall time, the
/// peak RSS (kB) and the most threads seen.
pub fn inflight_on(registry: &Registry, backend: &str, n: usize) {
    let rt = runtime();
    let scripts = std::env::temp_dir().join(format!("bench-inflight-{}", std::process::id()));
    std::fs::create_dir_all(&scripts).expect("scripts dir");
    let config = if backend == "fake" {
        ProviderConfig::from_map([
            ("RUN_SLEEP", "1s".to_owned()),
            ("LOG_OUTPUT", "done\n".to_owned()),
        ])
    } else {
        ProviderConfig::from_map([("SCRIPTS_DIR", scripts.display().to_string())])
    };
    let provider = Arc::new(
        registry
            .new_backend_provider(backend, &config)
            .expect("provider"),
    );
    let done = Arc::new(AtomicBool::new(false));
    let sampler = sample_threads(Arc::clone(&done));
    let t = Instant::now();
    let outputs = rt.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let provider = Arc::clone(&provider);
                tokio::spawn(async move {
                    let inst = provider.start(&attrs()).await.expect("start");
                    inst.upload_script(b"sleep 1; echo done\n".to_vec())
                        .await
                        .expect("upload");
                    // The one line of log fits in the channel: read it after the run.
                    let (sink, mut log) = log_channel(DEFAULT_CAPACITY);
                    let r = inst.run_script(sink).await.expect("run");
                    let mut all = Vec::new();
                    while let Some(chunk) = log.recv().await {
                        all.extend_from_slice(&chunk);
                    }
                    inst.stop().await.expect("stop");
                    assert_eq!(r.exit_code, 0);
                    all
                })
            })
            .collect();
        let mut outputs = Vec::new();
        for t in tasks {
            outputs.push(t.await.expect("job"));
        }
        outputs
    });
    let wall = t.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let threads = sampler.join().unwrap_or(0);
    let exact = outputs.iter().all(|o| o == b"done\n");
    assert!(exact, "every job's output is exactly \"done\\n\"");
    let _ = std::fs::remove_dir_all(&scripts);
    println!("{wall} {} {threads}", proc_status("VmHWM:"));
}
