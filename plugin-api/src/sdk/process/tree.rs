//! Finding every process of a job, ending them all, and reaping the one we started.
//!
//! A job's processes are found by every means the platform offers, combined:
//!
//! 1. **Session and process group.** The job's first process starts in a new session
//!    (`setsid`), so it and everything it starts share a process group and session whose id
//!    is its pid: background jobs, pipelines, subshells, double forks.
//! 2. **A cgroup** (Linux, when a cgroup v2 hierarchy is writable, e.g. as root): the first
//!    process is moved into a cgroup of its own before it runs, and the kernel keeps every
//!    descendant there whatever it does. This is the guarantee: with it, nothing started by
//!    the job survives termination, including processes that call `setsid`, change their
//!    process group, double-fork, or scrub their environment.
//! 3. **An environment tag** (any Linux): the job's processes inherit [`TAG_VAR`]`=<tag>`,
//!    and `/proc/<pid>/environ` is searched for it. Without a cgroup this catches processes
//!    that left the session (`setsid`), unless they also drop the variable from their
//!    environment.
//!
//! Where no cgroup can be made (no cgroup v2 mount, or no permission), the guarantee is that
//! of 1 and 3. Ending a job is two-phase: SIGTERM (and SIGCONT, so that stopped processes
//! see it) to every process found, a grace period, then SIGKILL (and `cgroup.kill`),
//! repeated until none is left. Zombies do not count as alive: they are already dead.
//!
//! The first process is our child, and only this module reaps it (`waitpid` on its pid,
//! never on "any child"), exactly once, so its pid cannot be confused with a later process's.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::BackendError;

/// The environment variable that tags a job's processes.
pub const TAG_VAR: &str = "HOST_JOB";

/// How often termination checks whether processes are left.
const POLL: Duration = Duration::from_millis(20);

/// How long to wait for SIGKILLed processes to disappear before reporting them.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A cgroup (v2) of one job.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    procs: OwnedFd,
    /// Made by us: removed when dropped. A cgroup found by a reaper is only removed by
    /// [`ProcessTree::terminate`], so a dry run leaves it alone.
    created: bool,
}

impl Cgroup {
    /// Makes `<cgroup2 mount><our cgroup>/<name>` and opens its `cgroup.procs` for the
    /// child to join. `None` where that is not possible (no cgroup v2, no permission).
    pub fn create(name: &str) -> Option<Self> {
        let base = own_cgroup_dir()?;
        let path = base.join(name);
        if let Err(e) = std::fs::create_dir(&path) {
            tracing::debug!("no cgroup for the job ({}): {e}", path.display());
            return None;
        }
        let Some(procs) = open_write(&path.join("cgroup.procs")) else {
            let _ = std::fs::remove_dir(&path);
            return None;
        };
        Some(Self {
            path,
            procs,
            created: true,
        })
    }

    /// The job cgroup `name` made earlier (by a host that may be gone), if it exists.
    pub fn existing(name: &str) -> Option<Self> {
        let path = own_cgroup_dir()?.join(name);
        let procs = open_write(&path.join("cgroup.procs"))?;
        Some(Self {
            path,
            procs,
            created: false,
        })
    }

    /// Names of the cgroups beside ours that start with `prefix`, for a reaper.
    pub fn names_with_prefix(prefix: &str) -> Vec<String> {
        let Some(base) = own_cgroup_dir() else {
            return Vec::new();
        };
        std::fs::read_dir(base)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How long ago the cgroup was created (zero when that cannot be told).
    pub fn age(&self) -> Duration {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
            .unwrap_or_default()
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pids in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every process in the cgroup at once (Linux 5.14+); false where unsupported.
    pub fn kill_all(&self) -> bool {
        std::fs::write(self.path.join("cgroup.kill"), b"1").is_ok()
    }

    /// The raw fd of `cgroup.procs`: writing `0` to it moves the writer into the cgroup.
    pub(crate) fn procs_fd(&self) -> i32 {
        self.procs.as_raw_fd()
    }

    fn remove(&self) {
        match std::fs::remove_dir(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::debug!("cannot remove cgroup {}: {e}", self.path.display())
            }
            _ => {}
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.created {
            self.remove();
        }
    }
}

fn open_write(path: &Path) -> Option<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path; the returned fd is checked and then owned.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Our own cgroup's directory in the cgroup v2 hierarchy, if one is mounted.
fn own_cgroup_dir() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(own.trim_start_matches('/')))
}

/// One process as `/proc` shows it.
struct ProcInfo {
    pgrp: i32,
    session: i32,
    zombie: bool,
    /// Start time in clock ticks since boot: with the pid, names one process.
    start: u64,
}

/// Whether process `pid` is alive (exists and is not a zombie).
pub fn is_alive(pid: i32) -> bool {
    read_stat(pid).is_some_and(|i| !i.zombie)
}

fn read_stat(pid: i32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?;
    let _ppid = f.next()?;
    let pgrp = f.next()?.parse().ok()?;
    let session = f.next()?.parse().ok()?;
    // Field 22, the start time: 18 fields after the session (field 6).
    let start = f.nth(15).and_then(|s| s.parse().ok()).unwrap_or(0);
    Some(ProcInfo {
        pgrp,
        session,
        zombie: state == "Z" || state == "X",
        start,
    })
}

fn has_tag(pid: i32, needle: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle))
        .unwrap_or(false)
}

/// The first process of a job, which we started and alone reap.
#[derive(Debug)]
enum Leader {
    /// Not ours (a reaper's view of a gone host's job).
    None,
    /// Running, or dead and not reaped yet.
    Child(i32),
    /// Reaped; the status, when `waitpid` could tell it.
    Reaped(Option<ExitStatus>),
}

/// The processes of one job: found, signalled, ended, and the first one reaped.
#[derive(Debug)]
pub struct ProcessTree {
    group: i32,
    tag: String,
    cgroup: Option<Cgroup>,
    leader: Mutex<Leader>,
    /// Processes once seen with the tag (pid, start time). A process being torn down after
    /// SIGKILL loses its environment (so its tag) before its files (so its locks): it stays
    /// live here until it is a zombie or gone, so that "no process left" means none holds
    /// anything of the job any more.
    tagged: Mutex<BTreeMap<i32, u64>>,
}

impl ProcessTree {
    /// The tree whose first process is our child `pid` (its own session and group), tagged
    /// `tag`, in `cgroup` if it has one.
    pub(crate) fn spawned(pid: i32, tag: String, cgroup: Option<Cgroup>) -> Self {
        Self {
            group: pid,
            tag,
            cgroup,
            leader: Mutex::new(Leader::Child(pid)),
            tagged: Mutex::new(BTreeMap::new()),
        }
    }

    /// The processes of a job that some earlier process started (e.g. a host that is gone):
    /// found by `tag` and in `cgroup`, for a backend's `reap`.
    pub fn found(tag: &str, cgroup: Option<Cgroup>) -> Self {
        Self {
            group: -1,
            tag: tag.to_owned(),
            cgroup,
            leader: Mutex::new(Leader::None),
            tagged: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether the job has a cgroup (the strongest guarantee).
    pub fn has_cgroup(&self) -> bool {
        self.cgroup.is_some()
    }

    /// The first process's pid (also the session and group id); -1 for a found tree.
    pub fn pid(&self) -> i32 {
        self.group
    }

    fn leader(&self) -> std::sync::MutexGuard<'_, Leader> {
        self.leader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reaps the first process if it has exited, without waiting; its status once reaped.
    /// `None` while it runs (and for a found tree).
    pub(crate) fn try_reap(&self) -> Option<Option<ExitStatus>> {
        let mut leader = self.leader();
        match *leader {
            Leader::None => None,
            Leader::Reaped(status) => Some(status),
            Leader::Child(pid) => {
                let mut raw = 0;
                // SAFETY: waitpid on our own child's pid with a valid int to fill; the
                // mutex makes this the only reaper, so the pid is still ours.
                let r = unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) };
                let status = match r {
                    0 => return None,
                    r if r == pid => Some(ExitStatus::from_raw(raw)),
                    _ => None, // ECHILD: not ours any more; nothing to wait for
                };
                *leader = Leader::Reaped(status);
                Some(status)
            }
        }
    }

    /// Waits until the first process has exited and reaps it. The wait is a pidfd watched by
    /// the runtime's reactor where the kernel has them (Linux 5.3+), else a poll.
    pub(crate) async fn wait(&self) -> Option<ExitStatus> {
        let pid = match *self.leader() {
            Leader::Child(pid) => pid,
            Leader::Reaped(status) => return status,
            Leader::None => return None,
        };
        let pidfd = pidfd_open(pid).and_then(|fd| {
            // Registered with the plugin's runtime, whose reactor has IO enabled, whichever
            // runtime polls this future.
            let rt = crate::sdk::runtime_handle().ok()?;
            let _entered = rt.enter();
            // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same
            // for the AsyncFd's whole life.
            unsafe { tokio::io::unix::AsyncFd::register(fd) }.ok()
        });
        loop {
            if let Some(status) = self.try_reap() {
                return status;
            }
            match &pidfd {
                Some(fd) => match fd.readable().await {
                    Ok(mut ready) => ready.clear_ready(),
                    Err(_) => tokio::time::sleep(POLL).await,
                },
                None => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Live (non-zombie) processes of the job, by every means in the module docs.
    ///
    /// With a cgroup this reads the cgroup's member list only (the kernel keeps every
    /// descendant in it); without one it scans all of `/proc`: call it off async threads.
    pub fn live_pids(&self) -> BTreeSet<i32> {
        if let Some(cg) = &self.cgroup {
            return cg.pids().into_iter().filter(|p| is_alive(*p)).collect();
        }
        let needle = format!("{TAG_VAR}={}", self.tag).into_bytes();
        let own = std::process::id() as i32;
        let mut pids = BTreeSet::new();
        let mut tagged = self.tagged.lock().unwrap_or_else(|e| e.into_inner());
        // Those seen with the tag before that are still the same process and not a zombie.
        tagged.retain(|pid, start| {
            read_stat(*pid).is_some_and(|info| !info.zombie && info.start == *start)
        });
        pids.extend(tagged.keys().copied());
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if pid == own {
                continue;
            }
            let Some(info) = read_stat(pid) else { continue };
            if info.zombie {
                continue;
            }
            let in_group =
                self.group > 1 && (info.pgrp == self.group || info.session == self.group);
            let has = !self.tag.is_empty() && has_tag(pid, &needle);
            if has {
                tagged.insert(pid, info.start);
            }
            if in_group || has {
                pids.insert(pid);
            }
        }
        pids
    }

    /// Sends `signal` to every live process of the job. Returns how many were signalled.
    pub fn signal_all(&self, signal: i32) -> usize {
        // The group first: one call reaches everything that stayed in it. A group of 1
        // or less is no job's (and -1 would mean every process we may signal).
        if self.group > 1 {
            // SAFETY: kill(2) with a negative pid signals a process group; no memory involved.
            unsafe { libc::kill(-self.group, signal) };
        }
        let pids = self.live_pids();
        for pid in pids.iter().filter(|p| **p > 1) {
            // SAFETY: as above, for one pid.
            unsafe { libc::kill(*pid, signal) };
        }
        pids.len()
    }

    /// SIGKILLs everything of the job immediately.
    pub fn kill_now(&self) {
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
        self.signal_all(libc::SIGKILL);
    }

    /// Ends the job: SIGTERM, up to `grace` for it to exit, then SIGKILL until nothing is
    /// left; reaps the first process and removes the cgroup. Fails naming the pids still
    /// alive after all that. The `/proc` scans run on the plugin runtime's blocking pool.
    pub async fn terminate(self: &Arc<Self>, grace: Duration) -> Result<(), BackendError> {
        self.end_processes(grace).await?;
        // Everything is dead: the first process's reaping does not wait long.
        let _ = tokio::time::timeout(KILL_WAIT, self.wait()).await;
        if let Some(cg) = &self.cgroup {
            cg.remove();
        }
        Ok(())
    }

    /// Starts ending the job without waiting (for cancellation from a `Drop`): SIGTERM now;
    /// SIGKILL after `grace` and the reaping on a task of the plugin's runtime. If that
    /// runtime is gone or shuts down first, everything is SIGKILLed at once and a thread
    /// reaps the first process: nothing is left running and no zombie stays.
    pub fn terminate_in_background(self: &Arc<Self>, grace: Duration) {
        if self.group > 1 {
            // SAFETY: kill(2) on a process group; no memory involved.
            unsafe { libc::kill(-self.group, libc::SIGTERM) };
        }
        if let Some(cg) = &self.cgroup {
            for pid in cg.pids().into_iter().filter(|p| *p > 1) {
                // SAFETY: as above, for one pid.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let last_resort = KillAndReapOnDrop(Some(Arc::clone(self)));
        match super::super::runtime_handle() {
            Ok(h) => {
                h.spawn(async move {
                    let mut last_resort = last_resort;
                    if let Some(tree) = last_resort.0.as_ref() {
                        if let Err(e) = tree.terminate(grace).await {
                            tracing::warn!("{e}");
                        }
                    }
                    last_resort.0 = None;
                });
            }
            Err(_) => drop(last_resort),
        }
    }
}

/// SIGKILLs a tree and reaps its first process on a thread of its own, unless disarmed.
struct KillAndReapOnDrop(Option<Arc<ProcessTree>>);

impl Drop for KillAndReapOnDrop {
    fn drop(&mut self) {
        let Some(tree) = self.0.take() else { return };
        tree.kill_now();
        if tree.try_reap().is_none() && matches!(*tree.leader(), Leader::Child(_)) {
            let _ = std::thread::Builder::new()
                .name("reaper".into())
                .spawn(move || {
                    let deadline = Instant::now() + KILL_WAIT;
                    while tree.try_reap().is_none() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                });
        }
    }
}

impl ProcessTree {
    /// Runs `f` on the blocking pool (a `/proc` scan is file IO), or inline without one.
    async fn off_thread<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Self) -> T + Send + 'static,
    ) -> T {
        let me = Arc::clone(self);
        match tokio::runtime::Handle::try_current() {
            Ok(h) => match h.spawn_blocking(move || f(&me)).await {
                Ok(v) => v,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            },
            Err(_) => f(self),
        }
    }

    async fn end_processes(self: &Arc<Self>, grace: Duration) -> Result<(), BackendError> {
        if self.off_thread(|j| j.signal_all(libc::SIGTERM)).await > 0 {
            self.off_thread(|j| j.signal_all(libc::SIGCONT)).await;
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
                if self.off_thread(|j| j.live_pids().is_empty()).await {
                    return Ok(());
                }
            }
        }
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            let left = self
                .off_thread(|j| {
                    j.kill_now();
                    j.live_pids()
                })
                .await;
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BackendError::other(format!(
                    "processes of the job survived SIGKILL for {}s: {left:?}",
                    KILL_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A pidfd for `pid` (Linux 5.3+), `None` where the kernel has none.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd >= 0 {
            // SAFETY: a fresh descriptor that nothing else owns.
            return Some(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
    }
    let _ = pid;
    None
}
