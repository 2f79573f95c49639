//! Out-of-process plugins (`--isolate`) against the same plugin in process and against the
//! physical floor measured in the same run: a socketpair round trip between two processes
//! of a 1 KiB request and a 16-byte reply.

use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Instant;

use crate::artifacts::{self, Artifacts};
use crate::measure::verdict;
use crate::measure::{median, paired, time_shell};
use crate::table::Row;

/// Round trips per timed sample.
fn calls(quick: bool) -> usize {
    if quick {
        500
    } else {
        20_000
    }
}

pub fn rows(a: &Artifacts, quick: bool) -> Vec<Row> {
    let runs = if quick { 1 } else { 5 };
    let n = calls(quick);
    let raw = median(runs, || raw_round_trip(n));
    let (isolated, in_process) = upload_calls(a, n, runs);
    let mut rows = Vec::new();

    let mut floor = Row::new("socketpair round trip, 1 KiB request, 16-byte reply (two processes)");
    floor.ours = format!("{:.1} us", raw * 1e6);
    floor.baseline = "the physical floor of any out-of-process call".into();
    floor.ratio = "-".into();
    floor.target = "report".into();
    floor.verdict = "yes";
    rows.push(floor);

    let mut call = Row::new("isolated upload_script 1 KiB on fake, sequential");
    call.ours = format!("{:.1} us", isolated * 1e6);
    call.baseline = format!(
        "{:.1} us raw round trip (in process: {:.2} us)",
        raw * 1e6,
        in_process * 1e6
    );
    call.ratio = format!("{:.2}x", isolated / raw);
    call.target = "<= 1.3x the raw round trip".into();
    call.verdict = verdict(isolated <= 1.3 * raw);
    rows.push(call);

    let start = plugin_start(a, if quick { 3 } else { 15 });
    let mut st = Row::new("isolated plugin start (server spawned, provider made, setup)");
    st.ours = format!("{:.2} ms", start * 1e3);
    st.baseline = "-".into();
    st.ratio = "-".into();
    st.target = "<= 5 ms".into();
    st.verdict = verdict(start <= 0.005);
    rows.push(st);

    rows.push(log_throughput(a, quick));
    rows.push(in_flight(a, if quick { 20 } else { 1_000 }));

    let mut gcall = Row::new("go-plugin (net/rpc) call with a 1 KiB argument, sequential");
    let mut gstart = Row::new("go-plugin plugin start (process, handshake, dispense, first call)");
    match go_plugin(n, if quick { 3 } else { 15 }) {
        Ok((go_start, go_call)) => {
            gcall.ours = format!("{:.1} us isolated", isolated * 1e6);
            gcall.baseline = format!("{:.1} us go-plugin", go_call * 1e6);
            gcall.ratio = format!("{:.2}x faster", go_call / isolated);
            gcall.target = ">= 2x ahead of go-plugin".into();
            gcall.verdict = verdict(go_call >= 2.0 * isolated);
            gstart.ours = format!("{:.2} ms isolated", start * 1e3);
            gstart.baseline = format!("{:.2} ms go-plugin", go_start * 1e3);
            gstart.ratio = format!("{:.2}x faster", go_start / start);
            gstart.target = "report".into();
            gstart.verdict = "yes";
        }
        Err(why) => {
            for row in [&mut gcall, &mut gstart] {
                row.ours = "-".into();
                row.baseline = format!("skipped: {why}");
                row.ratio = "-".into();
                row.target = "optional".into();
                row.verdict = "yes";
            }
        }
    }
    rows.push(gcall);
    rows.push(gstart);
    rows
}

/// Seconds per round trip over a socketpair to a child process that answers 16 bytes for
/// every 1 KiB.
fn raw_round_trip(n: usize) -> f64 {
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.args(["child", "echo", &n.to_string()]);
    // SAFETY: only dup2 (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("echo child");
    drop(theirs);
    let request = [7u8; 1024];
    let mut reply = [0u8; 16];
    // One untimed exchange: the child is up.
    ours.write_all(&request).expect("write");
    ours.read_exact(&mut reply).expect("read");
    let t = Instant::now();
    for _ in 1..n {
        ours.write_all(&request).expect("write");
        ours.read_exact(&mut reply).expect("read");
    }
    let took = t.elapsed().as_secs_f64() / (n - 1) as f64;
    drop(ours);
    let _ = child.wait();
    took
}

/// The echo side of [`raw_round_trip`], on descriptor 3.
pub fn echo_child(n: usize) -> ExitCode {
    use std::os::fd::FromRawFd as _;
    // SAFETY: the parent handed us descriptor 3; nothing else owns it.
    let mut s = unsafe { std::os::unix::net::UnixStream::from_raw_fd(3) };
    let mut request = [0u8; 1024];
    for _ in 0..n {
        if s.read_exact(&mut request).is_err() || s.write_all(&[1u8; 16]).is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn isolated_registry(a: &Artifacts, dir: &Path, isolate: bool) -> host::Registry {
    host::plugins::probe::set_executable(Some(a.host.clone()));
    let isolation = if isolate {
        host::isolate::Isolation::All
    } else {
        host::isolate::Isolation::None
    };
    let registry = host::PluginPolicy::new(
        host::plugins::loader::plugin_dirs(&[dir.to_path_buf()]),
        None,
    )
    .with_isolation(isolation)
    .load();
    assert!(registry.rejected().is_empty(), "{:?}", registry.rejected());
    registry
}

/// Seconds per sequential `upload_script` of 1 KiB on fake: isolated, and in process.
fn upload_calls(a: &Artifacts, n: usize, runs: usize) -> (f64, f64) {
    let dir = artifacts::plugin_dir(&[("libfake.so".into(), &a.fake)]);
    let rt = crate::measure::runtime();
    let config = plugin_api::ProviderConfig::from_map([("REUPLOAD", "true")]);
    let script = vec![b'#'; 1024];
    let measure = |registry: &host::Registry| {
        let provider = registry
            .new_backend_provider("fake", &config)
            .expect("provider");
        median(runs, || {
            rt.block_on(async {
                let inst = provider
                    .start(&crate::measure::attrs())
                    .await
                    .expect("start");
                // On a task of the runtime, as a job runs in a host or a worker.
                let script = script.clone();
                let (took, inst) = tokio::spawn(async move {
                    inst.upload_script(script.clone()).await.expect("warm");
                    let t = Instant::now();
                    for _ in 0..n {
                        inst.upload_script(script.clone()).await.expect("upload");
                    }
                    (t.elapsed().as_secs_f64() / n as f64, inst)
                })
                .await
                .expect("task");
                inst.stop().await.expect("stop");
                took
            })
        })
    };
    let isolated = measure(&isolated_registry(a, &dir, true));
    let in_process = measure(&isolated_registry(a, &dir, false));
    let _ = std::fs::remove_dir_all(&dir);
    (isolated, in_process)
}

/// Seconds from a fresh isolated backend's first call to its provider being set up: the
/// server process started, the plugin opened in it, a provider made, `setup` answered.
fn plugin_start(a: &Artifacts, runs: usize) -> f64 {
    let dir = artifacts::plugin_dir(&[("libfake.so".into(), &a.fake)]);
    let rt = crate::measure::runtime();
    let took = median(runs, || {
        let registry = isolated_registry(a, &dir, true);
        let provider = registry
            .new_backend_provider("fake", &plugin_api::ProviderConfig::new())
            .expect("provider");
        rt.block_on(async {
            let t = Instant::now();
            provider.setup().await.expect("setup");
            t.elapsed().as_secs_f64()
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
    took
}

fn log_throughput(a: &Artifacts, quick: bool) -> Row {
    let (bytes, shell_bytes, runs) = if quick {
        ("4MiB", "4M", 1)
    } else {
        ("1GiB", "1G", 5)
    };
    let dir = artifacts::plugin_dir(&[("libfake.so".into(), &a.fake)]);
    let script = dir.join("job.sh");
    std::fs::write(&script, "true\n").expect("script");
    let (ours, base, ratio) = paired(
        runs,
        || {
            time_shell(&format!(
                "{} -q --isolate fake --plugin-dir {} run -b fake -c LOG_BYTES={bytes} {} | cat > /dev/null",
                a.host.display(),
                dir.display(),
                script.display()
            ))
        },
        || {
            time_shell(&format!(
                "head -c {shell_bytes} /dev/zero | cat > /dev/null"
            ))
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
    let mut row = Row::new(format!(
        "isolated log throughput: host run --isolate fake, LOG_BYTES={bytes} | cat"
    ));
    row.ours = format!("{ours:.2} s");
    row.baseline = format!("{base:.2} s (head -c | cat)");
    // Throughput ratio: the baseline's time over ours.
    row.ratio = format!("{:.2}x", 1.0 / ratio);
    row.target = ">= 0.8x a raw pipe".into();
    row.verdict = verdict(1.0 / ratio >= 0.8);
    row
}

fn in_flight(a: &Artifacts, n: usize) -> Row {
    let dir = artifacts::plugin_dir(&[("libfake.so".into(), &a.fake)]);
    let (wall, rss_kb, threads) = crate::inflight::inflight_figures(
        Command::new(std::env::current_exe().expect("own path"))
            .args(["child", "inflight-isolated", &n.to_string()])
            .arg(&dir)
            .arg(&a.host),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let mut row = Row::new(format!(
        "in flight at once: {n} isolated fake instances, each sleeping 1 s"
    ));
    row.ours = format!(
        "{wall:.3} s, host {:.1} MB peak RSS, {threads} threads",
        rss_kb / 1024.0
    );
    row.baseline = "ideal: 1 s".into();
    row.ratio = format!("{:.3}x", wall);
    row.target = "no thread per job".into();
    row.verdict = verdict(threads < 64 && wall < 5.0);
    row
}

/// The in-flight child: `n` isolated fake jobs at once in this process.
pub fn inflight_isolated_child(n: usize, dir: &Path, host_exe: &Path) -> ExitCode {
    host::plugins::probe::set_executable(Some(host_exe.to_path_buf()));
    let registry = host::PluginPolicy::new(
        host::plugins::loader::plugin_dirs(&[dir.to_path_buf()]),
        None,
    )
    .with_isolation(host::isolate::Isolation::All)
    .load();
    crate::inflight::inflight_on(&registry, "fake", n);
    ExitCode::SUCCESS
}

/// hashicorp go-plugin (net/rpc), built from Debian's packages when Go is there: its
/// start and its per-call time for a 1 KiB argument, as `(start, per_call)` seconds; `Err`
/// says why the peer was not measured.
fn go_plugin(n: usize, runs: usize) -> Result<(f64, f64), String> {
    let gocode = Path::new("/usr/share/gocode/src/github.com/hashicorp/go-plugin");
    if Command::new("go").arg("version").output().is_err() || !gocode.is_dir() {
        return Err("Go or go-plugin absent: apt-get install golang-go \
            golang-github-hashicorp-go-plugin-dev golang-google-grpc-dev \
            golang-golang-x-net-dev golang-goprotobuf-dev"
            .into());
    }
    let gopath = std::env::temp_dir().join(format!("bench-goplugin-{}", std::process::id()));
    let src = gopath.join("src/goplugin-bench");
    std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
    let main = Path::new(env!("CARGO_MANIFEST_DIR")).join("goplugin/main.go");
    std::fs::copy(&main, src.join("main.go")).map_err(|e| e.to_string())?;
    let bin = gopath.join("goplugin-bench");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .env("GOPATH", format!("{}:/usr/share/gocode", gopath.display()))
        .env("GO111MODULE", "off")
        .output()
        .map_err(|e| e.to_string())?;
    if !built.status.success() {
        let _ = std::fs::remove_dir_all(&gopath);
        return Err(format!(
            "the go-plugin peer did not build: {}",
            String::from_utf8_lossy(&built.stderr)
                .lines()
                .next()
                .unwrap_or("")
        ));
    }
    let out = Command::new(&bin)
        .args([n.to_string(), runs.to_string()])
        .output()
        .map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&gopath);
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text
        .split_whitespace()
        .filter_map(|v| v.parse::<f64>().ok());
    match (it.next(), it.next()) {
        (Some(start), Some(call)) => Ok((start, call)),
        _ => Err(format!("the go-plugin peer printed {text:?}")),
    }
}
