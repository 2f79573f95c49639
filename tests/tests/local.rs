//! The local backend through the built host and library: exit statuses, byte-exact logs,
//! nothing left behind (processes, directories), many jobs at once.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use blackbox::{artifacts, host, plugin_dir, run, script, Ran};
use host::job::{run_job, Job, JobOptions, Outcome, Silent};
use plugin_api::{ErrorKind, ProviderConfig};

/// A plugin dir with the local backend and a SCRIPTS_DIR of the test's own, which must be
/// empty again when the test ends.
struct Env {
    plugins: tempfile::TempDir,
    scripts: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            plugins: plugin_dir(&[("liblocal.so", &artifacts().local)]),
            scripts: tempfile::tempdir().unwrap(),
        }
    }

    fn cmd(&self, extra: &[&str], script: &Path) -> Command {
        let mut cmd = host(self.plugins.path());
        cmd.args(["run", "-b", "local", "-c"])
            .arg(format!("SCRIPTS_DIR={}", self.scripts.path().display()))
            .args(extra)
            .arg(script);
        cmd
    }

    fn run(&self, extra: &[&str], body: &str) -> Ran {
        let s = script(body);
        run(self.cmd(extra, s.path()))
    }

    fn assert_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(self.scripts.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left behind in SCRIPTS_DIR: {left:?}");
    }
}

/// A marker only this test's processes carry in their command line.
fn marker() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{}.{}{:04}",
        1000 + std::process::id() % 1000,
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Pids of live processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if cmdline.contains(marker) && !zombie && pid != std::process::id() {
            found.push((pid, cmdline));
        }
    }
    found
}

#[test]
fn exit_codes_are_exact_and_a_signal_is_128_plus_n_with_a_log_line() {
    let env = Env::new();
    for code in [0, 1, 7, 255] {
        let out = env.run(&[], &format!("exit {code}"));
        assert_eq!(out.code, Some(code), "{}", out.stderr);
    }
    let out = env.run(&[], "echo before; kill -9 $$");
    assert_eq!(out.code, Some(137), "{}", out.stderr);
    assert!(out.stdout.starts_with("before\n"));
    assert!(
        out.stdout.contains("killed by signal 9 (SIGKILL)"),
        "{}",
        out.stdout
    );
    env.assert_clean();
}

#[test]
fn stdout_and_stderr_both_reach_the_log_in_order() {
    let env = Env::new();
    let out = env.run(&[], "echo one; echo two >&2; echo three; printf four >&2");
    assert_eq!(out.code, Some(0));
    assert_eq!(out.stdout, "one\ntwo\nthree\nfour");
    env.assert_clean();
}

#[test]
fn non_utf8_bytes_pass_unaltered() {
    let env = Env::new();
    let out = env.run(&[], r"printf '\377\376\000\200 \r\n\033[31m'");
    assert_eq!(out.raw_stdout, b"\xff\xfe\x00\x80 \r\n\x1b[31m");
    env.assert_clean();
}

#[test]
fn a_hundred_megabytes_of_random_bytes_arrive_byte_exact() {
    let env = Env::new();
    let data_dir = tempfile::tempdir().unwrap();
    let data = data_dir.path().join("random.bin");
    // xorshift64*: deterministic, incompressible enough, no dependency.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes: Vec<u8> = (0..100_000_000 / 8)
        .flat_map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes()
        })
        .collect();
    std::fs::write(&data, &bytes).unwrap();
    let out = env.run(&[], &format!("cat {}", data.display()));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.raw_stdout.len(), bytes.len());
    assert!(
        out.raw_stdout == bytes,
        "the log differs from the bytes written"
    );
    env.assert_clean();
}

#[test]
fn the_job_runs_in_its_own_directory_which_is_gone_after_stop() {
    let env = Env::new();
    let out = env.run(
        &[],
        "pwd; ls -la build.sh | cut -c1-10; test -t 0 || echo stdin-not-a-tty; cat",
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let mut lines = out.stdout.lines();
    let dir = PathBuf::from(lines.next().unwrap());
    assert!(dir.starts_with(env.scripts.path()), "{dir:?}");
    assert_eq!(lines.next(), Some("-rwx------"), "the script is mode 0700");
    assert_eq!(lines.next(), Some("stdin-not-a-tty"));
    assert!(!dir.exists(), "the working directory is removed at stop");
    env.assert_clean();
}

#[test]
fn keep_files_keeps_the_directory_and_says_where() {
    let env = Env::new();
    let out = env.run(&["-c", "KEEP_FILES=true"], "pwd");
    assert_eq!(out.code, Some(0));
    let dir = PathBuf::from(out.stdout.trim());
    assert!(dir.join("build.sh").is_file());
    assert!(
        out.stderr.contains("keeping the working directory"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&dir.display().to_string()),
        "{}",
        out.stderr
    );
    std::fs::remove_dir_all(&dir).unwrap();
    env.assert_clean();
}

#[test]
fn the_environment_has_ci_the_start_attributes_and_env_pairs_but_no_backend_config() {
    let env = Env::new();
    let s = script("echo CI=$CI L=$BUILD_LANGUAGE OS=$BUILD_OS D=$BUILD_DIST A=$BUILD_ARCH X=$EXTRA Y=$Y S=${BACKEND_LOCAL_SECRET:-none}");
    let mut cmd = env.cmd(
        &[
            "-c",
            "ENV=EXTRA=1,Y=two words",
            "--language",
            "rust",
            "--os",
            "linux",
        ],
        s.path(),
    );
    cmd.env("BACKEND_LOCAL_SECRET", "hunter2");
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "CI=true L=rust OS=linux D=xenial A=amd64 X=1 Y=two words S=none\n"
    );
    env.assert_clean();
}

fn nothing_outlives_the_job(cgroup: bool) {
    let env = Env::new();
    let m = marker();
    let mut body = format!(
        "sleep {m}1 & setsid sleep {m}2 & (setsid sh -c 'sleep {m}3 &' &); (bash -c 'exec -a x{m}4 sleep 1000 &' &);"
    );
    if cgroup {
        // Leaves the session and drops the tag from its environment: only a cgroup holds it.
        body.push_str(&format!(" (setsid env -i sleep {m}5 &);"));
    }
    body.push_str(" sleep 0.2; echo started");
    let out = env.run(&["-c", &format!("CGROUP={cgroup}")], &body);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "started\n");
    let left = processes_with(&m);
    assert!(left.is_empty(), "processes outlived the job: {left:?}");
    env.assert_clean();
}

#[test]
fn background_and_setsid_processes_are_gone_after_the_job_with_a_cgroup() {
    nothing_outlives_the_job(true);
}

#[test]
fn background_and_setsid_processes_are_gone_after_the_job_without_a_cgroup() {
    nothing_outlives_the_job(false);
}

#[test]
fn a_hard_timeout_kills_a_job_that_ignores_sigterm_within_the_grace_period() {
    let env = Env::new();
    let m = marker();
    let started = Instant::now();
    let out = env.run(
        &["-c", "KILL_GRACE=500ms", "--hard-timeout", "300ms"],
        &format!("trap '' TERM; echo up; sleep {m}"),
    );
    let took = started.elapsed();
    assert_eq!(out.code, Some(124), "{}", out.stderr);
    assert_eq!(out.stdout, "up\n");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(processes_with(&m).is_empty());
    env.assert_clean();
}

#[test]
fn sigterm_to_host_run_ends_the_job_and_cleans_up() {
    let env = Env::new();
    let m = marker();
    let s = script(&format!("echo up; sleep {m}; echo never"));
    let mut cmd = env.cmd(&[], s.path());
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = blackbox::Guard(cmd.spawn().unwrap());
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "up\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_with(&m).is_empty() {
        assert!(Instant::now() < deadline, "the job's sleep never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status()
        .unwrap();
    let status = child.wait();
    assert_eq!(status.code(), Some(143));
    assert!(
        processes_with(&m).is_empty(),
        "the job's processes are gone"
    );
    env.assert_clean();
}

/// An AsyncWrite that collects into a shared buffer.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<u8>>>);

impl tokio::io::AsyncWrite for Collect {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn local_registry(plugins: &Path) -> host::Registry {
    let registry =
        host::Registry::load(&host::plugins::loader::plugin_dirs(
            &[plugins.to_path_buf()],
        ));
    assert!(registry.rejected().is_empty(), "{:?}", registry.rejected());
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_upload_is_the_stale_vm_error() {
    let env = Env::new();
    let registry = local_registry(env.plugins.path());
    let config =
        ProviderConfig::from_map([("SCRIPTS_DIR", env.scripts.path().display().to_string())]);
    let provider = registry.new_backend_provider("local", &config).unwrap();
    let instance = provider.start(&Default::default()).await.unwrap();
    instance.upload_script(b"true".to_vec()).await.unwrap();
    let err = instance.upload_script(b"true".to_vec()).await.unwrap_err();
    assert_eq!(err.backend_kind(), Some(ErrorKind::STALE_VM));
    assert!(
        err.to_string()
            .contains("previous build artifacts found on stale vm"),
        "{err}"
    );
    instance.stop().await.unwrap();
    instance.stop().await.expect("stop twice is harmless");
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_jobs_at_once_all_finish_correctly() {
    let env = Env::new();
    let registry = Arc::new(local_registry(env.plugins.path()));
    let config =
        ProviderConfig::from_map([("SCRIPTS_DIR", env.scripts.path().display().to_string())]);
    let provider = Arc::new(registry.new_backend_provider("local", &config).unwrap());
    let mut tasks = Vec::new();
    for n in 0..200 {
        let provider = Arc::clone(&provider);
        tasks.push(tokio::spawn(async move {
            let log = Collect::default();
            let (_tx, mut cancel) = tokio::sync::mpsc::channel(1);
            let job = Job {
                script: format!(
                    "echo job {n} start; sleep 0.5; echo job {n} done >&2; exit $(({n} % 3))"
                )
                .into_bytes(),
                options: JobOptions::default(),
                ..Job::default()
            };
            let report = run_job(&provider, job, log.clone(), &mut cancel, &Silent).await;
            let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
            (n, report, text)
        }));
    }
    for t in tasks {
        let (n, report, text) = t.await.unwrap();
        assert_eq!(
            text,
            format!("job {n} start\njob {n} done\n"),
            "job {n}: {report:?}"
        );
        assert_eq!(
            *report.outcome(),
            Outcome::from_exit_code(n % 3),
            "job {n}: {report:?}"
        );
        assert!(report.stopped(), "job {n}: {report:?}");
    }
    env.assert_clean();
}

/// Reaping ends the cgroups of every gone host on the machine, whatever its SCRIPTS_DIR: the
/// tests that leave a killed host's job behind take turns.
static REAPING: Mutex<()> = Mutex::new(());

#[test]
fn reap_removes_what_a_killed_host_left_and_nothing_of_live_hosts() {
    let _turn = REAPING.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let m = marker();
    // A live host's job, which the reaper must not touch.
    let live_script = script(&format!("echo up; sleep {m}1"));
    let mut live_cmd = env.cmd(&[], live_script.path());
    live_cmd.stderr(Stdio::null());
    let (mut live, _) = blackbox::spawn_until_first_line(live_cmd);

    // A host killed with SIGKILL mid-job: its job and directory stay behind.
    let s = script(&format!("echo up; sleep {m}2 & sleep {m}3"));
    let mut cmd = env.cmd(&[], s.path());
    cmd.stderr(Stdio::null());
    let (mut doomed, _) = blackbox::spawn_until_first_line(cmd);
    doomed.0.kill().unwrap();
    doomed.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_with(&format!("{m}3")).is_empty() {
        assert!(Instant::now() < deadline, "the orphaned job is running");
        std::thread::sleep(Duration::from_millis(20));
    }
    let leftover = processes_with(&format!("{m}2")).len() + processes_with(&format!("{m}3")).len();
    assert_eq!(leftover, 2, "the killed host left its job running");

    let reap = |extra: &[&str]| {
        let mut cmd = host(env.plugins.path());
        cmd.args(["reap", "-b", "local", "-c"])
            .arg(format!("SCRIPTS_DIR={}", env.scripts.path().display()))
            .args(["--older-than", "0s"])
            .args(extra);
        run(cmd)
    };
    let dry = reap(&["--dry-run"]);
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    assert_eq!(
        dry.stdout
            .lines()
            .filter(|l| l.starts_with("would remove: instance"))
            .count(),
        1,
        "{}",
        dry.stdout
    );
    assert_eq!(
        processes_with(&format!("{m}3")).len(),
        1,
        "a dry run removes nothing"
    );

    let done = reap(&[]);
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(done.stdout.contains("removed: instance"), "{}", done.stdout);
    assert!(
        processes_with(&format!("{m}2")).is_empty() && processes_with(&format!("{m}3")).is_empty()
    );
    assert_eq!(
        processes_with(&format!("{m}1")).len(),
        1,
        "the live host's job is untouched"
    );
    let dirs = std::fs::read_dir(env.scripts.path()).unwrap().count();
    assert_eq!(dirs, 1, "only the live host's directory is left");

    Command::new("kill")
        .arg("-TERM")
        .arg(live.0.id().to_string())
        .status()
        .unwrap();
    assert_eq!(live.wait().code(), Some(143));
    env.assert_clean();
}

#[test]
fn a_first_sigterm_while_the_instance_is_stopped_lets_the_stop_finish() {
    let env = Env::new();
    let m = marker();
    let s = script(&format!(
        "( trap \"\" TERM; exec -a sleep{m} sleep 3131 ) &\necho done\n"
    ));
    let json = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = env.cmd(
        &[
            "-c",
            "KILL_GRACE=2s",
            "--json-summary",
            &json.path().display().to_string(),
        ],
        s.path(),
    );
    cmd.stderr(Stdio::piped());
    let (mut child, line) = blackbox::spawn_until_first_line(cmd);
    assert_eq!(line, "done\n");
    // The script is done; the stop now waits out KILL_GRACE for the process ignoring TERM.
    std::thread::sleep(Duration::from_millis(500));
    blackbox::signal("-TERM", child.0.id());
    let status = child.wait();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "the run completed: it keeps its outcome\n{err}"
    );
    assert!(err.contains("letting the stop finish"), "{err}");
    assert!(
        !err.contains("abandon the stop of") && !err.contains("abandoning"),
        "{err}"
    );
    let j = blackbox::read_json(json.path());
    assert_eq!(j["stopped"], true, "{j}");
    assert_eq!(j["outcome"], "passed", "{j}");
    assert_eq!(
        j["signals_during_stop"],
        serde_json::json!(["terminate"]),
        "{j}"
    );
    assert!(
        processes_with(&format!("sleep{m}")).is_empty(),
        "the process ignoring TERM is gone"
    );
    env.assert_clean();
}

#[test]
fn jobs_do_not_inherit_the_callers_open_descriptors() {
    let env = Env::new();
    let leak = tempfile::NamedTempFile::new().unwrap();
    let s = script("if echo leaked >&7; then echo 'fd 7 open'; else echo 'fd 7 closed'; fi\n");
    // The caller (a shell) hands the host an fd 7 without close-on-exec.
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"exec 7>"$1"; shift; exec "$@""#)
        .arg("sh")
        .arg(leak.path())
        .arg(&artifacts().host)
        .arg("--plugin-dir")
        .arg(env.plugins.path())
        .args(["run", "-b", "local", "-c"])
        .arg(format!("SCRIPTS_DIR={}", env.scripts.path().display()))
        .arg(s.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.ends_with("fd 7 closed\n") && !stdout.contains("fd 7 open"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(leak.path()).unwrap(), b"");
    env.assert_clean();
}

#[test]
fn a_shell_that_does_not_exist_is_a_config_error_not_a_requeue() {
    let env = Env::new();
    for shell in ["/nonexistent", "no-such-shell-anywhere"] {
        let out = env.run(&["-c", &format!("SHELL={shell}")], "echo hi");
        assert_eq!(out.code, Some(78), "{shell}: {}", out.stderr);
        assert!(
            out.stderr.contains("SHELL") && out.stderr.contains(shell),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains("requeue"), "{}", out.stderr);
    }
    env.assert_clean();
}

#[test]
fn reap_honours_older_than_for_the_cgroups_and_processes_of_a_killed_host() {
    let _turn = REAPING.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let m = marker();
    let s = script(&format!("echo up; exec -a sleep{m} sleep 300"));
    let mut cmd = env.cmd(&[], s.path());
    cmd.stderr(Stdio::null());
    let (mut doomed, _) = blackbox::spawn_until_first_line(cmd);
    doomed.0.kill().unwrap();
    doomed.wait();
    let cgroups_before = job_cgroups();

    let reap = |older_than: &str| {
        let mut cmd = host(env.plugins.path());
        cmd.args(["reap", "-b", "local", "-c"])
            .arg(format!("SCRIPTS_DIR={}", env.scripts.path().display()))
            .args(["--older-than", older_than]);
        run(cmd)
    };
    // Seconds old: the default hour keeps all of it, processes, directory and cgroup.
    let kept = reap("1h");
    assert_eq!(kept.code, Some(0), "{}", kept.stderr);
    assert!(!kept.stdout.contains("removed"), "{}", kept.stdout);
    assert_eq!(
        processes_with(&format!("sleep{m}")).len(),
        1,
        "the young job is untouched"
    );
    assert_eq!(std::fs::read_dir(env.scripts.path()).unwrap().count(), 1);
    assert_eq!(job_cgroups(), cgroups_before, "its cgroup is untouched");

    let done = reap("0s");
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(processes_with(&format!("sleep{m}")).is_empty());
    env.assert_clean();
}

/// The local backend's job cgroups on this machine (empty where it has none).
fn job_cgroups() -> Vec<String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/");
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("host-local-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
