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
//! loses no job), counting it as a requeue. It first takes the dead worker's claim directory
//! whole, by one rename (`claimed/<self>~<dead>`), so that of several workers starting at
//! once exactly one requeues each claim. File operations are small and local, so they run
//! inline on the worker's threads.
//!
//! Rules this module holds:
//! - **A claim is one rename**: no job file is taken by two workers.
//! - **One run of a job id at a time** on a queue: a run holds an exclusive `flock` on its
//!   state file (`state/<id>.jsonl`) from its turn to its end; another run of the same id
//!   (the same job queued twice) waits. Every state line names its run (`"run"`: the
//!   worker, its claim number and the file), and a run's log never overwrites another's: an
//!   earlier run's `log/<id>.log` (a requeued attempt, a duplicate) is kept as
//!   `log/<id>.<n>.log` before the new one is made.
//! - **Nothing is followed**: logs, state files and reason files are opened without
//!   following a symlink; one where such a file should be is refused with the path named,
//!   never written through.
//! - **A requeued job waits before it is claimed again** (100 ms, doubling per requeue, at
//!   most [`REQUEUE_BACKOFF_MAX`]): its file's modification time is when it is due.
//! - **A queue that cannot be used is not an empty queue**: a vanished directory is made
//!   again; a read-only one, or no descriptors left, is reported (once a minute at most),
//!   retried with backoff, and makes the worker not ready until it passes.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::queue::{Delivery, JobQueue, JobState, StateUpdate, Turn};

/// The largest job file read; a larger one is rejected.
pub const MAX_JOB_BYTES: u64 = 16 << 20;

/// How often a queue that cannot be used is reported again.
const PROBLEM_REPEAT: Duration = Duration::from_secs(60);

/// The longest wait between two tries of a queue that cannot be used.
const PROBLEM_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The longest wait before a requeued job may be claimed again.
pub const REQUEUE_BACKOFF_MAX: Duration = Duration::from_secs(10);

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
    /// Who may write where: checked at start and whenever directories are made again.
    access: DirAccess,
    /// Claims made, for each run's name.
    claims: std::sync::atomic::AtomicU64,
    /// Why the queue cannot be used now (for claims, for writes of states), and since when
    /// it has been said.
    problems: Mutex<[Option<(String, std::time::Instant)>; 2]>,
    /// The wait before the next claim while states cannot be written: kept across claims,
    /// so that a job put back again and again waits longer each time.
    writes_backoff: Mutex<Duration>,
}

/// The part of a queue a problem is about ([`Inner::note`]).
const CLAIMS: usize = 0;
const WRITES: usize = 1;

impl Inner {
    /// Records that a part of the queue cannot be used (said at once, then once a minute at
    /// most), or that it can again.
    fn note(&self, part: usize, result: &std::io::Result<()>) {
        let mut problems = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        let problem = &mut problems[part];
        match result {
            Ok(()) => {
                if problem.take().is_some() {
                    tracing::warn!("the queue {} can be used again", self.root.display());
                }
            }
            Err(e) => {
                let now = std::time::Instant::now();
                let say = problem
                    .as_ref()
                    .is_none_or(|(_, at)| now.duration_since(*at) >= PROBLEM_REPEAT);
                if say {
                    tracing::warn!(
                        "the queue {} cannot be used: {e}; trying again with backoff",
                        self.root.display()
                    );
                    *problem = Some((e.to_string(), now));
                } else if let Some((text, _)) = problem.as_mut() {
                    *text = e.to_string();
                }
            }
        }
    }

    /// Makes the queue's directories again (one went away), and checks them again: the
    /// queue there now may not be the one checked at start.
    fn remake_dirs(&self) -> std::io::Result<()> {
        make_dirs(&self.root)?;
        check_access(&self.root, self.access)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))
    }

    fn problem(&self, part: usize) -> Option<String> {
        self.problems.lock().unwrap_or_else(|e| e.into_inner())[part]
            .as_ref()
            .map(|(text, _)| text.clone())
    }
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat`, field 22; the
/// command name before it is in parentheses and may hold anything).
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
    // A zombie (killed, not yet waited for by its parent) or a process being torn down
    // runs no more.
    Some(start_time(pid) == Some(start) && plugin_api::sdk::instances::process_alive(pid))
}

fn is_job_file(name: &std::ffi::OsStr) -> bool {
    let n = name.to_string_lossy();
    n.ends_with(".json") && !n.starts_with('.')
}

/// Opens the regular file `path` for writing without following a symlink there and
/// without waiting: a symlink, a FIFO (whose open would block the worker's thread until a
/// reader came), a directory or a device is refused with an error that names the path
/// (`O_NOFOLLOW` alone says "Too many levels of symbolic links").
fn open_nofollow(path: &Path, options: &mut OpenOptions) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{} is a symbolic link: not written through (remove it)",
                        path.display()
                    ),
                )
            } else if e.raw_os_error() == Some(libc::ENXIO) {
                not_regular(path)
            } else {
                std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
            }
        })?;
    if !file.metadata()?.is_file() {
        return Err(not_regular(path));
    }
    Ok(file)
}

/// An error's kind and words (`std::io::Error` is not `Clone`).
fn copy_error(e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), e.to_string())
}

fn not_regular(path: &Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "{} is not a regular file (a FIFO, a directory, a device?): not written to (remove it)",
            path.display()
        ),
    )
}

/// The wait before a job requeued for the `count`th time may be claimed again: 100 ms,
/// doubling, at most [`REQUEUE_BACKOFF_MAX`]. A job that fails at once (a full disk, a
/// start that cannot succeed) then does not use up its requeues in milliseconds.
fn requeue_backoff(count: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(1 << count.saturating_sub(1).min(16))
        .min(REQUEUE_BACKOFF_MAX)
}

/// Whether a file in `new/` may be claimed now: a requeued job's file carries the time it
/// may be claimed from as its modification time.
fn due(path: &Path) -> bool {
    let now = std::time::SystemTime::now();
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        // A time later than any backoff of ours did not come from us (a copy that kept its
        // times, a clock set back, another machine's clock): due now, never stranded.
        .map_or(true, |at| {
            at <= now || at > now + REQUEUE_BACKOFF_MAX + Duration::from_secs(1)
        })
}

/// Writes `bytes` as `dir/name` atomically: a hidden temporary file, then a rename.
fn write_atomic(dir: &Path, name: &std::ffi::OsStr, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_at(dir, name, bytes, None)
}

/// [`write_atomic`], the file's modification time set to `due` when given.
fn write_atomic_at(
    dir: &Path,
    name: &std::ffi::OsStr,
    bytes: &[u8],
    due: Option<std::time::SystemTime>,
) -> std::io::Result<()> {
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        // A new file: never one that is there already (a link planted in new/).
        let create = || open_nofollow(&tmp, OpenOptions::new().write(true).create_new(true));
        let mut f = match create() {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Left by a process of the same pid that died mid-write.
                std::fs::remove_file(&tmp)?;
                create()?
            }
            other => other?,
        };
        f.write_all(bytes)?;
        if let Some(at) = due {
            f.set_modified(at)?;
        }
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

/// A state line: the update and the run it belongs to.
#[derive(serde::Serialize)]
struct StateLine<'a> {
    #[serde(flatten)]
    update: &'a StateUpdate,
    run: &'a str,
}

fn state_line(update: &StateUpdate, run: &str) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(&StateLine { update, run }).map_err(std::io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

fn open_state(root: &Path, job_id: u64) -> std::io::Result<File> {
    open_nofollow(
        &root.join("state").join(format!("{job_id}.jsonl")),
        OpenOptions::new().create(true).append(true),
    )
}

fn append_state(root: &Path, job_id: u64, update: &StateUpdate, run: &str) -> std::io::Result<()> {
    let line = state_line(update, run)?;
    // One write: lines of concurrent writers never interleave (O_APPEND).
    open_state(root, job_id)?.write_all(&line)
}

/// Makes the queue's directories that are missing (mode 0755 less the umask).
fn make_dirs(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    for d in DIRS {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(root.join(d))
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: {e}", root.join(d).display()))
            })?;
    }
    Ok(())
}

/// Who may write where in a queue directory.
#[derive(Clone, Copy, Debug, Default)]
pub struct DirAccess {
    /// `new/` may be writable by its group: the users of that group submit jobs (a shared
    /// queue). Everything else stays the worker's alone.
    pub shared_new: bool,
}

/// Checks the directories above `dir` (`what`, for the message): whoever may replace one
/// of them may replace `dir` (a rename, then a directory of their own with links in it), so
/// each must be owned by root or this user and writable by no one else, or sticky (/tmp).
pub(crate) fn check_parents(dir: &Path, what: &str) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    // SAFETY: geteuid cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    let real =
        std::fs::canonicalize(dir).map_err(|e| format!("cannot examine {}: {e}", dir.display()))?;
    for above in real.ancestors().skip(1) {
        let meta = std::fs::metadata(above)
            .map_err(|e| format!("cannot examine {}: {e}", above.display()))?;
        let mode = meta.permissions().mode();
        let sticky = mode & 0o1000 != 0;
        if (meta.uid() != 0 && meta.uid() != euid) || (mode & 0o022 != 0 && !sticky) {
            return Err(format!(
                "{} (above {what} {}) may be changed by others (owner uid {}, mode {:04o}): they could replace it; keep it under directories owned by root or uid {euid} and not writable by others",
                above.display(),
                dir.display(),
                meta.uid(),
                mode & 0o7777
            ));
        }
    }
    Ok(())
}

/// Checks the queue's directories as the host checks plugin directories: each a real
/// directory (a subdirectory is not a symlink, which would send logs or states elsewhere),
/// owned by root or this user, writable by no one else (`new/` by its group too with
/// [`DirAccess::shared_new`]). Anyone who can write into `log/` or `state/` could plant
/// links or read what jobs write; into `claimed/`, make the worker run what they like.
pub fn check_access(root: &Path, access: DirAccess) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    // SAFETY: geteuid cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    check_parents(root, "the queue")?;
    let mut dirs = vec![(root.to_owned(), false)];
    dirs.extend(DIRS.iter().map(|d| (root.join(d), true)));
    for (dir, sub) in dirs {
        let meta = if sub {
            std::fs::symlink_metadata(&dir)
        } else {
            std::fs::metadata(&dir)
        }
        .map_err(|e| format!("cannot examine {}: {e}", dir.display()))?;
        if meta.file_type().is_symlink() {
            return Err(format!(
                "{} is a symbolic link; the queue's subdirectories must be directories of its own (replace it with a directory)",
                dir.display()
            ));
        }
        if !meta.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
        if meta.uid() != 0 && meta.uid() != euid {
            return Err(format!(
                "{} is owned by uid {}; a queue directory must be owned by root or by the user running the worker (uid {euid}): chown {euid} {}",
                dir.display(),
                meta.uid(),
                dir.display()
            ));
        }
        let mode = meta.permissions().mode() & 0o7777;
        let group_may = access.shared_new && dir == root.join("new");
        let forbidden = if group_may { 0o002 } else { 0o022 };
        if mode & forbidden != 0 {
            let fix = if group_may { "o-w" } else { "go-w" };
            let hint = if dir == root.join("new") && !access.shared_new {
                " (or, if a group of users submits jobs there, pass --queue-shared-new)"
            } else {
                ""
            };
            return Err(format!(
                "{} is writable by {} (mode {mode:04o}); anyone who can write there can make the worker run or write what they like: chmod {fix} {}{hint}",
                dir.display(),
                if mode & 0o002 != 0 { "others" } else { "its group" },
                dir.display()
            ));
        }
    }
    Ok(())
}

impl DirQueue {
    /// Opens (creating what is missing) the queue at `root` for this process.
    /// The directories are checked ([`check_access`]) after the missing ones are made.
    pub fn open(root: &Path, access: DirAccess) -> std::io::Result<Self> {
        make_dirs(root)?;
        check_access(root, access)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
        let worker_id = worker_id();
        let claimed = root.join("claimed").join(&worker_id);
        std::fs::create_dir_all(&claimed)?;
        Ok(Self {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                worker_id,
                claimed,
                waiting: Mutex::new(VecDeque::new()),
                access,
                claims: std::sync::atomic::AtomicU64::new(0),
                problems: Mutex::new([None, None]),
                writes_backoff: Mutex::new(Duration::ZERO),
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
    /// job. Of several workers doing this at once, each dead worker's claims go to exactly
    /// one: the one whose rename of its claim directory succeeds.
    pub fn recover(&self) -> Vec<String> {
        let mut done = Vec::new();
        let claimed = self.inner.root.join("claimed");
        let Ok(entries) = std::fs::read_dir(&claimed) else {
            return done;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // `<owner>~<dead>`: a recovery that `owner` began and did not finish.
            let owner = name.split('~').next().unwrap_or(&name);
            let dead = name.rsplit('~').next().unwrap_or(&name);
            if owner == self.inner.worker_id || worker_alive(owner) != Some(false) {
                continue;
            }
            let taken = claimed.join(format!("{}~{dead}", self.inner.worker_id));
            match std::fs::rename(entry.path(), &taken) {
                Ok(()) => {}
                // Another worker took it first: its claims are that worker's to requeue.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    done.push(format!("cannot take the claims of {name}: {e}"));
                    continue;
                }
            }
            let Ok(files) = std::fs::read_dir(&taken) else {
                continue;
            };
            for file in files.flatten() {
                let file_name = file.file_name();
                if !is_job_file(&file_name) {
                    continue;
                }
                match self.put_back(&file.path(), &file_name, dead) {
                    Ok(line) => done.push(line),
                    Err(e) => done.push(format!("cannot requeue {}: {e}", file.path().display())),
                }
            }
            let _ = std::fs::remove_dir(&taken);
        }
        done
    }

    /// Whether a worker of this host that is gone left claims.
    pub fn has_orphans(&self) -> bool {
        let Ok(entries) = std::fs::read_dir(self.inner.root.join("claimed")) else {
            return false;
        };
        entries.flatten().any(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner = name.split('~').next().unwrap_or(&name).to_owned();
            owner != self.inner.worker_id && worker_alive(&owner) == Some(false)
        })
    }

    fn put_back(&self, path: &Path, name: &std::ffi::OsStr, gone: &str) -> std::io::Result<String> {
        let bytes = read_bounded(path)?;
        let new = self.inner.root.join("new");
        match super::payload::bump_requeue_count(&bytes) {
            Some((doc, count, id)) => {
                let update = StateUpdate::now(JobState::Requeued)
                    .because(format!("worker {gone} went away while running it"));
                let run = format!("{gone}:{}", name.to_string_lossy());
                let _ = append_state(&self.inner.root, id, &update, &run);
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

    /// Claims the next waiting job, if there is one. An error is the queue's, not a job's:
    /// `new/` cannot be listed, or a claim cannot be renamed for another reason than
    /// another worker's taking the file first.
    fn try_claim(&self) -> std::io::Result<Option<DirDelivery>> {
        let mut waiting = self.inner.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let new = self.inner.root.join("new");
        let mut listed = false;
        loop {
            if waiting.is_empty() {
                if listed {
                    return Ok(None); // every file listed is due later
                }
                listed = true;
                let listing = match std::fs::read_dir(&new) {
                    Ok(l) => l,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        // The queue directory went away (an operator's `rm -rf`): made again,
                        // so that jobs can be queued again.
                        self.remake()?;
                        return Ok(None);
                    }
                    Err(e) => {
                        return Err(std::io::Error::new(
                            e.kind(),
                            format!("cannot list {}: {e}", new.display()),
                        ))
                    }
                };
                let mut names: Vec<OsString> = listing
                    .flatten()
                    .map(|e| e.file_name())
                    .filter(|n| is_job_file(n))
                    .collect();
                if names.is_empty() {
                    return Ok(None);
                }
                names.sort();
                waiting.extend(names);
            }
            let Some(name) = waiting.pop_front() else {
                return Ok(None);
            };
            let from = new.join(&name);
            if !due(&from) {
                continue; // a requeued job whose backoff runs: listed again later
            }
            let to = self.inner.claimed.join(&name);
            match std::fs::rename(&from, &to) {
                Ok(()) => {
                    drop(waiting);
                    let (payload, unreadable) = match read_bounded(&to) {
                        Ok(p) => (p, None),
                        Err(e) => (Vec::new(), Some(unreadable_reason(&e))),
                    };
                    let n = self
                        .inner
                        .claims
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let run = format!(
                        "{}/{}:{}",
                        self.inner.worker_id,
                        n + 1,
                        name.to_string_lossy()
                    );
                    return Ok(Some(DirDelivery {
                        queue: Arc::clone(&self.inner),
                        name,
                        path: to,
                        payload,
                        unreadable,
                        state: None,
                        run,
                    }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if self.inner.claimed.is_dir() {
                        continue; // another worker took it first
                    }
                    // Our claim directory went away: made again, and the claim tried again.
                    waiting.push_front(name);
                    drop(waiting);
                    self.remake()?;
                    return Ok(None);
                }
                Err(e) => {
                    waiting.push_front(name);
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("cannot claim {}: {e}", from.display()),
                    ));
                }
            }
        }
    }

    /// Makes the queue's directories and this worker's claim directory again.
    fn remake(&self) -> std::io::Result<()> {
        self.inner.remake_dirs()?;
        std::fs::create_dir_all(&self.inner.claimed).map_err(|e| {
            std::io::Error::new(e.kind(), format!("{}: {e}", self.inner.claimed.display()))
        })?;
        tracing::warn!(
            "the queue directory {} had gone; made it again",
            self.inner.root.display()
        );
        Ok(())
    }

    /// Puts `bytes` on the queue at `root` as a new job file; returns its path. The name sorts
    /// by enqueue time, so jobs are taken first in, first out.
    pub fn enqueue(root: &Path, bytes: &[u8], job_id: u64) -> std::io::Result<PathBuf> {
        let new = root.join("new");
        {
            use std::os::unix::fs::DirBuilderExt as _;
            // 0755 at most: a worker refuses a queue others may write into.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&new)?;
        }
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
        let mut failing = Duration::from_millis(100);
        loop {
            // States cannot be written (a read-only or full state/): a job claimed now would
            // only go back. Wait, longer each time, until a state write passes again.
            let wait = {
                let mut backoff = self
                    .inner
                    .writes_backoff
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                *backoff = if self.inner.problem(WRITES).is_some() {
                    (*backoff * 2).clamp(Duration::from_millis(100), PROBLEM_BACKOFF_MAX)
                } else {
                    Duration::ZERO
                };
                *backoff
            };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            match self.try_claim() {
                Ok(claimed) => {
                    self.inner.note(CLAIMS, &Ok(()));
                    failing = Duration::from_millis(100);
                    if let Some(d) = claimed {
                        return d;
                    }
                    tokio::time::sleep(idle).await;
                    idle = (idle * 2).min(Duration::from_millis(100));
                }
                Err(e) => {
                    self.inner.note(CLAIMS, &Err(e));
                    tokio::time::sleep(failing).await;
                    failing = (failing * 2).min(PROBLEM_BACKOFF_MAX);
                }
            }
        }
    }

    fn has_orphans(&self) -> bool {
        DirQueue::has_orphans(self)
    }

    fn recover(&self) -> Vec<String> {
        DirQueue::recover(self)
    }

    fn problem(&self) -> Option<String> {
        self.inner
            .problem(CLAIMS)
            .or_else(|| self.inner.problem(WRITES))
    }

    fn is_idle(&self) -> bool {
        let waiting = self.inner.waiting.lock().unwrap_or_else(|e| e.into_inner());
        // A queue that cannot be listed is not idle: what waits there is not known.
        waiting.is_empty()
            && std::fs::read_dir(self.inner.root.join("new"))
                .map(|d| !d.flatten().any(|e| is_job_file(&e.file_name())))
                .unwrap_or(false)
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
    /// The job's state file, locked for this run once it has its turn.
    state: Option<File>,
    /// This run's name in state lines: `<worker>/<claim number>:<file>`.
    run: String,
}

/// Why a job file could not be read, in words (`O_NOFOLLOW` says "Too many levels of
/// symbolic links" of any symlink).
fn unreadable_reason(e: &std::io::Error) -> String {
    if e.raw_os_error() == Some(libc::ELOOP) {
        "a symbolic link (not followed)".into()
    } else {
        e.to_string()
    }
}

impl DirDelivery {
    /// The job's state file, opened (not following a link) once; `state/` is made again if
    /// it went away. A failure is the queue's problem, not the job's ([`Inner::note`]).
    fn state_file(&mut self, job_id: u64) -> std::io::Result<&mut File> {
        if self.state.is_none() {
            let root = &self.queue.root;
            let opened = match open_state(root, job_id) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => self
                    .queue
                    .remake_dirs()
                    .and_then(|()| open_state(root, job_id)),
                other => other,
            };
            self.queue
                .note(WRITES, &opened.as_ref().map(drop).map_err(copy_error));
            self.state = Some(opened?);
        }
        self.state
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the state file is not open"))
    }

    /// Why this entry is rejected, naming it.
    fn reject_reason(&self, reason: &str) -> String {
        let why = if let Some(why) = &self.unreadable {
            format!("cannot be read as a job: {why}")
        } else if self.payload.len() as u64 > MAX_JOB_BYTES {
            format!("larger than {MAX_JOB_BYTES} bytes")
        } else {
            reason.to_owned()
        };
        format!("new/{}: {why}", self.name.to_string_lossy())
    }
}

impl Delivery for DirDelivery {
    type Log = host::output::BlockingFile;

    fn payload(&self) -> &[u8] {
        if self.payload.len() as u64 > MAX_JOB_BYTES {
            b"" // read no further: rejected as not a job, with the size named
        } else {
            &self.payload
        }
    }

    fn try_exclusive(&mut self, job_id: u64) -> std::io::Result<Turn> {
        use std::os::fd::AsRawFd as _;
        let fd = self.state_file(job_id)?.as_raw_fd();
        // SAFETY: flock on a descriptor this delivery owns; the lock goes with it.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Turn::Mine);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(Turn::Wait)
        } else {
            Err(e)
        }
    }

    fn rejection(&self, reason: &str) -> String {
        self.reject_reason(reason)
    }

    async fn update(&mut self, job_id: u64, update: &StateUpdate) -> std::io::Result<()> {
        let line = state_line(update, &self.run)?;
        // One write: lines of concurrent writers never interleave (O_APPEND).
        let written = self.state_file(job_id)?.write_all(&line);
        // A state that cannot be written (a full disk) is the queue's problem too.
        self.queue
            .note(WRITES, &written.as_ref().map(drop).map_err(copy_error));
        written
    }

    async fn open_log(&mut self, job_id: u64) -> std::io::Result<host::output::BlockingFile> {
        let dir = self.queue.root.join("log");
        let path = dir.join(format!("{job_id}.log"));
        // An earlier run's log (this job requeued, or the same id queued twice) is kept.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{} is a symbolic link: not written through (remove it)",
                        path.display()
                    ),
                ))
            }
            Ok(m) if m.len() > 0 => {
                let kept = (1..)
                    .map(|n| dir.join(format!("{job_id}.{n}.log")))
                    .find(|p| std::fs::symlink_metadata(p).is_err())
                    .unwrap_or_else(|| dir.join(format!("{job_id}.old.log")));
                std::fs::rename(&path, &kept).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot keep the earlier log {}: {e}", path.display()),
                    )
                })?;
            }
            _ => {}
        }
        let open = || {
            open_nofollow(
                &path,
                OpenOptions::new().write(true).create(true).truncate(true),
            )
        };
        let opened = match open() {
            // log/ went away: made again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.queue.remake_dirs().and_then(|()| open())
            }
            other => other,
        };
        if let Err(e) = &opened {
            use std::io::ErrorKind as K;
            // A read-only or full log/ is the queue's problem (a link there is this job's).
            if matches!(
                e.kind(),
                K::ReadOnlyFilesystem | K::StorageFull | K::QuotaExceeded | K::PermissionDenied
            ) {
                self.queue.note(WRITES, &Err(copy_error(e)));
            }
        }
        opened.map(host::output::BlockingFile::new)
    }

    async fn finish(self) -> std::io::Result<()> {
        std::fs::rename(&self.path, self.queue.root.join("done").join(&self.name))
    }

    async fn requeue(self, document: Vec<u8>) -> std::io::Result<()> {
        let new = self.queue.root.join("new");
        let count = super::payload::Payload::parse(&document).map_or(1, |p| p.requeue_count);
        let due = std::time::SystemTime::now() + requeue_backoff(count);
        match write_atomic_at(&new, &self.name, &document, Some(due)) {
            Ok(()) => std::fs::remove_file(&self.path),
            // No room for the new document (a full disk): the file goes back as it was, due
            // after the backoff all the same (a time is set without room for data).
            Err(_) => {
                if let Ok(f) = open_nofollow(&self.path, OpenOptions::new().write(true)) {
                    let _ = f.set_modified(due);
                }
                std::fs::rename(&self.path, new.join(&self.name))
            }
        }
    }

    async fn reject(self, reason: &str) -> std::io::Result<()> {
        let rejected = self.queue.root.join("rejected");
        // Said as the worker said it: the entry named, then why.
        let prefix = format!("new/{}: ", self.name.to_string_lossy());
        let reason = reason.strip_prefix(&prefix).unwrap_or(reason);
        let mut reason_name = self.name.clone();
        reason_name.push(".reason");
        std::fs::rename(&self.path, rejected.join(&self.name))?;
        open_nofollow(
            &rejected.join(reason_name),
            OpenOptions::new().write(true).create(true).truncate(true),
        )?
        .write_all(format!("{reason}\n").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requeued_job_waits_longer_each_time_within_a_bound() {
        assert_eq!(requeue_backoff(0), Duration::from_millis(100));
        assert_eq!(requeue_backoff(1), Duration::from_millis(100));
        assert_eq!(requeue_backoff(2), Duration::from_millis(200));
        assert_eq!(requeue_backoff(4), Duration::from_millis(800));
        assert_eq!(requeue_backoff(50), REQUEUE_BACKOFF_MAX);
        assert_eq!(requeue_backoff(u32::MAX), REQUEUE_BACKOFF_MAX);
    }
}
