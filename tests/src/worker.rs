//! Support for the tests of `host worker`: a directory queue with its plugins, a worker's
//! stderr read by a thread of its own, its HTTP endpoints, and bounded waits.

use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{artifacts, host, plugin_dir, Guard};

/// The states that end a job.
pub const FINAL: [&str; 4] = ["passed", "failed", "errored", "cancelled"];

/// The subdirectories of a directory queue.
pub const DIRS: [&str; 6] = ["new", "claimed", "log", "state", "done", "rejected"];

/// Polls `f` every 25 ms for at most `secs`; whether it held.
pub fn poll(secs: f64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The exit status of `child` if it exits within `secs`.
pub fn exit_within(child: &mut Guard, secs: f64) -> Option<ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of `text`, for assertion messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The lines a child writes to a pipe, read by a thread of their own (a test must never be
/// what blocks the child's stderr). Keeps the first 20,000 lines and counts them all.
#[derive(Clone)]
pub struct Lines {
    kept: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicUsize>,
    eof: Arc<AtomicBool>,
}

impl Lines {
    /// Starts reading `pipe`.
    pub fn new(pipe: impl Read + Send + 'static) -> Self {
        let lines = Self {
            kept: Arc::default(),
            count: Arc::default(),
            eof: Arc::default(),
        };
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).split(b'\n') {
                let Ok(line) = line else { break };
                l.count.fetch_add(1, Ordering::SeqCst);
                let mut kept = l.kept.lock().unwrap();
                if kept.len() < 20_000 {
                    kept.push(String::from_utf8_lossy(&line).into_owned());
                }
            }
            l.eof.store(true, Ordering::SeqCst);
        });
        lines
    }

    /// Lines read so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// The lines kept so far.
    pub fn lines(&self) -> Vec<String> {
        self.kept.lock().unwrap().clone()
    }

    /// The lines kept so far, as one text.
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// The first line for which `f` holds, waiting up to `secs` for it.
    pub fn wait_for(&self, secs: f64, f: impl Fn(&str) -> bool) -> Option<String> {
        let mut found = None;
        poll(secs, || {
            found = self.lines().into_iter().find(|l| f(l));
            found.is_some()
        });
        found
    }

    /// Everything, once the pipe is closed (waiting up to `secs` for that).
    pub fn finish(&self, secs: f64) -> String {
        poll(secs, || self.eof.load(Ordering::SeqCst));
        self.text()
    }
}

/// Spawns `cmd` with stdout to /dev/null and stderr collected.
pub fn spawn_lines(mut cmd: Command) -> (Guard, Lines) {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut g = Guard(cmd.spawn().expect("spawn host"));
    let lines = Lines::new(g.0.stderr.take().expect("piped stderr"));
    (g, lines)
}

/// Runs `cmd` for at most `secs` (killed then): its exit code (`None` when it did not exit
/// in time or was killed by a signal), whether it exited in time, and its stderr.
pub fn run_within(cmd: Command, secs: f64) -> (Option<i32>, bool, String) {
    let (mut g, lines) = spawn_lines(cmd);
    let status = exit_within(&mut g, secs);
    drop(g);
    let text = lines.finish(2.0);
    (status.and_then(|s| s.code()), status.is_some(), text)
}

/// Waits (up to 30 s) for the line that says where a worker serves HTTP; returns the URL.
pub fn http_url(lines: &Lines) -> String {
    let prefix = "host: worker HTTP endpoints on ";
    let line = lines
        .wait_for(30.0, |l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("the worker never served HTTP:\n{}", lines.text()));
    line[prefix.len()..].trim().to_owned()
}

/// Waits (up to 30 s) for the line a worker prints once its signal handlers are in place.
pub fn worker_up(lines: &Lines) {
    lines
        .wait_for(30.0, |l| l.contains("job(s) at once"))
        .unwrap_or_else(|| panic!("the worker never started:\n{}", lines.text()));
}

/// A request with curl, bounded to 2 s: (status, body); status 0 when nothing answered.
pub fn http(method: &str, url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "2",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
            url,
        ])
        .output()
        .expect("curl (these tests use it for the worker's HTTP endpoints)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// This machine's host name, as the worker puts it in worker ids.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether the tests run as root (mounts, chown).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A directory queue, a plugin directory with fake and local, and a SCRIPTS_DIR for local.
pub struct Queue {
    pub dir: tempfile::TempDir,
    pub plugins: tempfile::TempDir,
    pub scripts: tempfile::TempDir,
}

impl Default for Queue {
    fn default() -> Self {
        Self::new()
    }
}

impl Queue {
    /// An empty queue directory (made by the worker), and the plugins.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            plugins: plugin_dir(&[
                ("libfake.so", &artifacts().fake),
                ("liblocal.so", &artifacts().local),
            ]),
            scripts: tempfile::tempdir().unwrap(),
        }
    }

    /// The queue's directory, DIR.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `file://DIR`.
    pub fn url(&self) -> String {
        format!("file://{}", self.root().display())
    }

    /// `DIR/sub`.
    pub fn path(&self, sub: &str) -> PathBuf {
        self.root().join(sub)
    }

    /// Writes a job file into `new/` atomically (as `host enqueue` does).
    pub fn put(&self, name: &str, doc: &Value) {
        put_in(&self.path("new"), name, doc.to_string().as_bytes());
    }

    /// `host worker` on this queue with `backend` (local: its SCRIPTS_DIR) and `extra` flags.
    pub fn worker(&self, backend: &str, extra: &[&str]) -> Command {
        let mut cmd = host(self.plugins.path());
        cmd.args(["worker", "-b", backend, "--queue", &self.url()]);
        if backend == "local" {
            cmd.arg("-c")
                .arg(format!("SCRIPTS_DIR={}", self.scripts.path().display()));
        }
        cmd.args(extra);
        cmd
    }

    /// Puts a job with `id` and `script` on the queue with `host enqueue`.
    pub fn enqueue(&self, id: u64, script: &str) {
        self.enqueue_doc(&job(id, script));
    }

    /// Puts `doc` on the queue with `host enqueue` (from its stdin); it must succeed.
    pub fn enqueue_doc(&self, doc: &Value) {
        use std::io::Write as _;
        let mut cmd = host(self.plugins.path());
        cmd.args(["enqueue", "--queue", &self.url(), "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(doc.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes a raw file into new/ (bad input that `host enqueue` would refuse).
    pub fn put_raw(&self, name: &str, bytes: &[u8]) {
        put_in(&self.path("new"), name, bytes);
    }

    /// Job `id`'s log (empty if there is none).
    pub fn log(&self, id: u64) -> Vec<u8> {
        std::fs::read(self.path("log").join(format!("{id}.log"))).unwrap_or_default()
    }

    /// How many job files (`*.json`) subdirectory `sub` holds.
    pub fn count(&self, sub: &str) -> usize {
        self.names(sub)
            .iter()
            .filter(|n| n.ends_with(".json"))
            .count()
    }

    /// Waits until `f` holds, for at most `secs`; panics naming `what` if it does not.
    pub fn wait_for(&self, secs: u64, what: &str, f: impl Fn(&Self) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while !f(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
    }

    /// A worker with HTTP on a free port: the process, its stderr, its base URL.
    pub fn worker_with_http(&self, backend: &str, extra: &[&str]) -> (Guard, Lines, String) {
        let mut args = vec!["--http", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let (g, lines) = spawn_lines(self.worker(backend, &args));
        let url = http_url(&lines);
        worker_up(&lines);
        (g, lines, url)
    }

    /// The state lines of job `id` that parse (a file that is not a state file gives none).
    pub fn states(&self, id: u64) -> Vec<Value> {
        let path = self.path("state").join(format!("{id}.jsonl"));
        let regular = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
        if !regular {
            return Vec::new();
        }
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The names of job `id`'s states, in order.
    pub fn state_names(&self, id: u64) -> Vec<String> {
        self.states(id)
            .iter()
            .map(|s| s["state"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    /// Job `id`'s latest state.
    pub fn last_state(&self, id: u64) -> Option<String> {
        self.state_names(id).pop()
    }

    /// The names in subdirectory `sub`.
    pub fn names(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(sub))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The queue's files, for assertion messages.
    pub fn listing(&self) -> String {
        let mut out = String::new();
        for sub in DIRS {
            out.push_str(&format!("{sub}/: {:?}\n", self.names(sub)));
        }
        if let Ok(claims) = std::fs::read_dir(self.path("claimed")) {
            for c in claims.flatten() {
                let sub = format!("claimed/{}", c.file_name().to_string_lossy());
                out.push_str(&format!("{sub}/: {:?}\n", self.names(&sub)));
            }
        }
        out
    }

    /// Makes the queue's directories again (what an operator does after deleting them).
    pub fn restore(&self) {
        for d in DIRS {
            std::fs::create_dir_all(self.path(d)).unwrap();
        }
    }
}

/// Writes `dir/name` atomically (a hidden temporary file, then a rename).
pub fn put_in(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A job payload with `id` and `script`.
pub fn job(id: u64, script: &str) -> Value {
    json!({"job": {"id": id, "number": format!("{id}.1")}, "script": script})
}

/// Mounts (binds, a tmpfs), unmounted (lazily, in reverse order) when dropped.
#[derive(Default)]
pub struct Mounts(Vec<PathBuf>);

impl Mounts {
    /// `mount ARGS`, which mounts on `target`; unmounted when dropped.
    pub fn mount(&mut self, args: &[&str], target: &Path) -> Result<(), String> {
        let out = Command::new("mount")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        if !self.0.iter().any(|p| p == target) {
            self.0.push(target.to_owned());
        }
        Ok(())
    }

    /// Unmounts everything mounted, the latest first.
    pub fn umount_all(&mut self) {
        while let Some(p) = self.0.pop() {
            let _ = Command::new("umount").arg("-l").arg(&p).status();
        }
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        self.umount_all();
    }
}
