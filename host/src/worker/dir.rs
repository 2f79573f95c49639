//! The directory queue, the worker's embedded default: no server, any number of workers on
//! one directory (on one machine).
//!
//! ```text
//! DIR/new/*.json                 waiting jobs (`host enqueue` writes them atomically)
//! DIR/claimed/<worker-id>/       jobs a worker took, by rename: no job is taken twice
//! DIR/log/<job-id>.log           the job's log, raw bytes, as it is produced
//! DIR/state/<job-id>.jsonl       one JSON line per state change
//! DIR/done/                      jobs with a final state
//! DIR/rejected/                  files that are not jobs, each with a `.reason` beside it
//! ```
//!
//! A worker id names the worker's process (`w<pid>.<start time>@<host>`): at start-up a worker
//! puts back in `new/` the claims of workers on this host whose process is gone (a `kill -9`
//! loses no job), counting it as a requeue. File operations are small and local, so they run
//! inline on the worker's threads.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::queue::{Delivery, JobQueue, JobState, StateUpdate};

/// The largest job file read; a larger one is rejected.
pub const MAX_JOB_BYTES: u64 = 16 << 20;

const DIRS: [&str; 6] = ["new", "claimed", "log", "state", "done", "rejected"];

/// A directory queue, opened by one worker.
#[derive(Clone)]
pub struct DirQueue {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    worker_id: String,
    claimed: PathBuf,
    /// Names seen in `new/` and not yet tried: one directory listing serves many claims.
    waiting: Mutex<VecDeque<OsString>>,
}

/// This process's start time in clock ticks since boot (`/proc/self/stat`, field 22).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// This process's worker id.
pub fn worker_id() -> String {
    let pid = std::process::id();
    format!("w{pid}.{}@{}", start_time(pid).unwrap_or(0), hostname())
}

/// Whether the worker `id` (of this host) still runs: its pid is alive with the start time
/// the id records (a reused pid is another process).
fn worker_alive(id: &str) -> Option<bool> {
    let (proc_part, host) = id.strip_prefix('w')?.split_once('@')?;
    if host != hostname() {
        return None; // another machine's: not ours to judge
    }
    let (pid, start) = proc_part.split_once('.')?;
    let pid: u32 = pid.parse().ok()?;
    let start: u64 = start.parse().ok()?;
    Some(start_time(pid) == Some(start))
}

fn is_job_file(name: &std::ffi::OsStr) -> bool {
    let n = name.to_string_lossy();
    n.ends_with(".json") && !n.starts_with('.')
}

/// Writes `bytes` as `dir/name` atomically: a hidden temporary file, then a rename.
fn write_atomic(dir: &Path, name: &std::ffi::OsStr, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()
    })();
    match written.and_then(|()| std::fs::rename(&tmp, dir.join(name))) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn append_state(root: &Path, job_id: u64, update: &StateUpdate) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(update).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("state").join(format!("{job_id}.jsonl")))?;
    // One write: lines of concurrent writers never interleave (O_APPEND).
    f.write_all(&line)
}

impl DirQueue {
    /// Opens (creating what is missing) the queue at `root` for this process.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        for d in DIRS {
            std::fs::create_dir_all(root.join(d)).map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: {e}", root.join(d).display()))
            })?;
        }
        let worker_id = worker_id();
        let claimed = root.join("claimed").join(&worker_id);
        std::fs::create_dir_all(&claimed)?;
        Ok(Self {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                worker_id,
                claimed,
                waiting: Mutex::new(VecDeque::new()),
            }),
        })
    }

    /// This worker's id.
    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    /// The queue's directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Puts the jobs claimed by workers of this host that are gone back in `new/`, each with
    /// a `requeued` state line and its requeue count raised. Returns what it did, a line per
    /// job.
    pub fn recover(&self) -> Vec<String> {
        let mut done = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.inner.root.join("claimed")) else {
            return done;
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if id == self.inner.worker_id || worker_alive(&id) != Some(false) {
                continue;
            }
            let Ok(files) = std::fs::read_dir(entry.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name();
                if !is_job_file(&name) {
                    continue;
                }
                match self.put_back(&file.path(), &name, &id) {
                    Ok(line) => done.push(line),
                    Err(e) => done.push(format!("cannot requeue {}: {e}", file.path().display())),
                }
            }
            let _ = std::fs::remove_dir(entry.path());
        }
        done
    }

    fn put_back(&self, path: &Path, name: &std::ffi::OsStr, gone: &str) -> std::io::Result<String> {
        let bytes = read_bounded(path)?;
        let new = self.inner.root.join("new");
        match super::payload::bump_requeue_count(&bytes) {
            Some((doc, count, id)) => {
                let update = StateUpdate::now(JobState::Requeued)
                    .because(format!("worker {gone} went away while running it"));
                let _ = append_state(&self.inner.root, id, &update);
                write_atomic(&new, name, &doc)?;
                std::fs::remove_file(path)?;
                Ok(format!(
                    "job {id} (requeue {count}) from worker {gone}, which is gone"
                ))
            }
            None => {
                // Not a job anyway: the next claim rejects it with the reason.
                std::fs::rename(path, new.join(name))?;
                Ok(format!(
                    "{} from worker {gone}, which is gone",
                    name.to_string_lossy()
                ))
            }
        }
    }

    /// Claims the next waiting job, if there is one.
    fn try_claim(&self) -> Option<DirDelivery> {
        let mut waiting = self.inner.waiting.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if waiting.is_empty() {
                let mut names: Vec<OsString> = std::fs::read_dir(self.inner.root.join("new"))
                    .ok()?
                    .flatten()
                    .map(|e| e.file_name())
                    .filter(|n| is_job_file(n))
                    .collect();
                if names.is_empty() {
                    return None;
                }
                names.sort();
                waiting.extend(names);
            }
            let name = waiting.pop_front()?;
            let from = self.inner.root.join("new").join(&name);
            let to = self.inner.claimed.join(&name);
            match std::fs::rename(&from, &to) {
                Ok(()) => {
                    drop(waiting);
                    let (payload, unreadable) = match read_bounded(&to) {
                        Ok(p) => (p, None),
                        Err(e) => (Vec::new(), Some(e.to_string())),
                    };
                    return Some(DirDelivery {
                        queue: Arc::clone(&self.inner),
                        name,
                        path: to,
                        payload,
                        unreadable,
                        state: None,
                    });
                }
                // Another worker took it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!("cannot claim {}: {e}", from.display());
                    continue;
                }
            }
        }
    }

    /// Puts `bytes` on the queue at `root` as a new job file; returns its path. The name sorts
    /// by enqueue time, so jobs are taken first in, first out.
    pub fn enqueue(root: &Path, bytes: &[u8], job_id: u64) -> std::io::Result<PathBuf> {
        let new = root.join("new");
        std::fs::create_dir_all(&new)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = OsString::from(format!("{nanos:024}-{job_id}.json"));
        write_atomic(&new, &name, bytes)?;
        Ok(new.join(name))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A worker that stops leaves no empty claim directory behind (one with jobs in it
        // stays, for the next worker to requeue).
        let _ = std::fs::remove_dir(&self.claimed);
    }
}

/// Reads a job file, at most [`MAX_JOB_BYTES`] + 1. Only a regular file is read: it is
/// opened without following a symlink (which could point anywhere) or waiting for a writer
/// (a FIFO would block the worker's thread for ever).
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_JOB_BYTES + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

impl JobQueue for DirQueue {
    type Delivery = DirDelivery;

    async fn next(&self) -> DirDelivery {
        let mut idle = Duration::from_millis(2);
        loop {
            if let Some(d) = self.try_claim() {
                return d;
            }
            tokio::time::sleep(idle).await;
            idle = (idle * 2).min(Duration::from_millis(100));
        }
    }

    fn is_idle(&self) -> bool {
        let waiting = self.inner.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.is_empty()
            && std::fs::read_dir(self.inner.root.join("new"))
                .map(|d| !d.flatten().any(|e| is_job_file(&e.file_name())))
                .unwrap_or(true)
    }
}

/// A job claimed from a directory queue.
pub struct DirDelivery {
    queue: Arc<Inner>,
    name: OsString,
    path: PathBuf,
    payload: Vec<u8>,
    /// Why the file could not be read (it is then rejected with this reason).
    unreadable: Option<String>,
    state: Option<File>,
}

impl Delivery for DirDelivery {
    type Log = crate::output::BlockingFile;

    fn payload(&self) -> &[u8] {
        if self.payload.len() as u64 > MAX_JOB_BYTES {
            b"" // read no further: rejected as not a job, with the size named
        } else {
            &self.payload
        }
    }

    async fn update(&mut self, job_id: u64, update: &StateUpdate) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(update).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let file = match &mut self.state {
            Some(f) => f,
            None => {
                let path = self
                    .queue
                    .root
                    .join("state")
                    .join(format!("{job_id}.jsonl"));
                self.state
                    .insert(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        // One write: lines of concurrent writers never interleave (O_APPEND).
        file.write_all(&line)
    }

    async fn open_log(&mut self, job_id: u64) -> std::io::Result<crate::output::BlockingFile> {
        let path = self.queue.root.join("log").join(format!("{job_id}.log"));
        File::create(path).map(crate::output::BlockingFile::new)
    }

    async fn finish(self) -> std::io::Result<()> {
        std::fs::rename(&self.path, self.queue.root.join("done").join(&self.name))
    }

    async fn requeue(self, document: Vec<u8>) -> std::io::Result<()> {
        let new = self.queue.root.join("new");
        match write_atomic(&new, &self.name, &document) {
            Ok(()) => std::fs::remove_file(&self.path),
            // No room for the new document (a full disk): the file goes back as it was.
            Err(_) => std::fs::rename(&self.path, new.join(&self.name)),
        }
    }

    async fn reject(self, reason: &str) -> std::io::Result<()> {
        let rejected = self.queue.root.join("rejected");
        let reason = if let Some(why) = &self.unreadable {
            format!("cannot be read as a job: {why}")
        } else if self.payload.len() as u64 > MAX_JOB_BYTES {
            format!("larger than {MAX_JOB_BYTES} bytes")
        } else {
            reason.to_owned()
        };
        let mut reason_name = self.name.clone();
        reason_name.push(".reason");
        std::fs::rename(&self.path, rejected.join(&self.name))?;
        std::fs::write(rejected.join(reason_name), reason + "\n")
    }
}
