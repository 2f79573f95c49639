//! Finding every process of a job, and ending them all.
//!
//! A job's processes are found by every means the platform offers, combined:
//!
//! 1. **Session and process group.** The shell starts in a new session (`setsid`), so it and
//!    everything it starts share a process group and session whose id is the shell's pid:
//!    background jobs, pipelines, subshells, double forks.
//! 2. **A cgroup** (Linux, when a cgroup v2 hierarchy is writable, e.g. as root): the shell
//!    is moved into a cgroup of its own before it runs, and the kernel keeps every
//!    descendant there whatever it does. This is the guarantee: with it, nothing started by
//!    the script survives `stop`, including processes that call `setsid`, change their
//!    process group, double-fork, or scrub their environment.
//! 3. **An environment tag** (any Linux): the job's processes inherit `HOST_LOCAL_JOB=<id>`,
//!    and `/proc/<pid>/environ` is searched for it. Without a cgroup this catches processes
//!    that left the session (`setsid`), unless they also drop the variable from their
//!    environment.
//!
//! Where no cgroup can be made (no cgroup v2 mount, or no permission), the guarantee is that
//! of 1 and 3. On other platforms only 1 applies. Ending a job is two-phase: SIGTERM (and
//! SIGCONT, so that stopped processes see it) to every process found, a grace period, then
//! SIGKILL (and `cgroup.kill`), repeated until none is left. Zombies do not count: they are
//! already dead.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The environment variable that tags a job's processes.
pub const TAG_VAR: &str = "HOST_LOCAL_JOB";

/// How often termination checks whether processes are left.
const POLL: Duration = Duration::from_millis(20);

/// How long to wait for SIGKILLed processes to disappear before reporting them.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A cgroup (v2) of one job.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    procs: OwnedFd,
    /// Made by us: removed when dropped. A cgroup found by the reaper is only removed by
    /// [`JobProcesses::terminate`], so a dry run leaves it alone.
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
        let procs = match open_write(&path.join("cgroup.procs")) {
            Some(fd) => fd,
            None => {
                let _ = std::fs::remove_dir(&path);
                return None;
            }
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

    /// How long ago the cgroup was created (zero when that cannot be told).
    pub fn age(&self) -> Duration {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
            .unwrap_or_default()
    }

    /// The raw fd of `cgroup.procs`: writing `0` to it moves the writer into the cgroup.
    pub fn procs_fd(&self) -> i32 {
        self.procs.as_raw_fd()
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

    fn remove(&self) {
        match std::fs::remove_dir(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::debug!("cannot remove cgroup {}: {e}", self.path.display())
            }
            _ => {}
        }
    }

    /// Names of the job cgroups (`host-local-*`) beside ours, for the reaper.
    pub fn job_cgroup_names() -> Vec<String> {
        let Some(base) = own_cgroup_dir() else {
            return Vec::new();
        };
        std::fs::read_dir(base)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("host-local-"))
                    .collect()
            })
            .unwrap_or_default()
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
    pid: i32,
    pgrp: i32,
    session: i32,
    zombie: bool,
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
    Some(ProcInfo {
        pid,
        pgrp,
        session,
        zombie: state == "Z" || state == "X",
    })
}

fn has_tag(pid: i32, needle: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle))
        .unwrap_or(false)
}

/// The processes of one job.
#[derive(Debug)]
pub struct JobProcesses {
    leader: i32,
    tag: String,
    cgroup: Option<Cgroup>,
}

impl JobProcesses {
    /// The processes of the job whose shell is `leader` (also its session and group id),
    /// tagged `tag`, in `cgroup` if it has one.
    pub fn new(leader: i32, tag: String, cgroup: Option<Cgroup>) -> Self {
        Self {
            leader,
            tag,
            cgroup,
        }
    }

    /// Whether the job has a cgroup (the strongest guarantee).
    pub fn has_cgroup(&self) -> bool {
        self.cgroup.is_some()
    }

    /// Live (non-zombie) processes of the job, by every means in the module docs.
    ///
    /// With a cgroup this reads the cgroup's member list only (the kernel keeps every
    /// descendant in it); without one it scans all of `/proc`, which is why the async
    /// callers run it on the blocking pool.
    pub fn live_pids(&self) -> BTreeSet<i32> {
        if let Some(cg) = &self.cgroup {
            return cg.pids().into_iter().filter(|p| is_alive(*p)).collect();
        }
        let needle = format!("{TAG_VAR}={}", self.tag).into_bytes();
        let mut pids = BTreeSet::new();
        let own = std::process::id() as i32;
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<i32>().ok())
                else {
                    continue;
                };
                if pid == own {
                    continue;
                }
                let Some(info) = read_stat(pid) else { continue };
                if info.zombie {
                    pids.remove(&pid);
                    continue;
                }
                let in_group =
                    self.leader > 1 && (info.pgrp == self.leader || info.session == self.leader);
                if in_group || has_tag(pid, &needle) {
                    pids.insert(info.pid);
                }
            }
        }
        pids.retain(|p| read_stat(*p).is_some_and(|i| !i.zombie));
        pids
    }

    /// Sends `signal` to every live process of the job. Returns how many were signalled.
    pub fn signal_all(&self, signal: i32) -> usize {
        // The group first: one call reaches everything that stayed in it. A leader of 1
        // or less is no job's (and -1 would mean every process we may signal).
        if self.leader > 1 {
            // SAFETY: kill(2) with a negative pid signals a process group; no memory involved.
            unsafe { libc::kill(-self.leader, signal) };
        }
        let pids = self.live_pids();
        for pid in pids.iter().filter(|p| **p > 1) {
            // SAFETY: as above, for one pid.
            unsafe { libc::kill(*pid, signal) };
        }
        pids.len()
    }

    /// Starts ending the job without waiting: SIGTERM now, SIGKILL after `grace` on a
    /// task of the plugin's runtime (for cancellation from a `Drop`).
    pub fn terminate_in_background(self: &std::sync::Arc<Self>, grace: Duration) {
        // The cheap part now (the group, and the cgroup's members if there is one); the
        // rest, which may scan /proc, on the runtime.
        if self.leader > 1 {
            // SAFETY: kill(2) on a process group; no memory involved.
            unsafe { libc::kill(-self.leader, libc::SIGTERM) };
        }
        if let Some(cg) = &self.cgroup {
            for pid in cg.pids().into_iter().filter(|p| *p > 1) {
                // SAFETY: as above, for one pid.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let me = std::sync::Arc::clone(self);
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    let _ = me.terminate(grace).await;
                });
            }
            Err(_) => {
                me.kill_now();
            }
        }
    }

    /// SIGKILLs everything of the job immediately.
    pub fn kill_now(&self) {
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
        self.signal_all(libc::SIGKILL);
    }

    /// Ends the job: SIGTERM, up to `grace` for it to exit, then SIGKILL until nothing is
    /// left, then removes its cgroup. Fails naming the pids still alive after all that.
    /// The `/proc` scans run on the plugin runtime's blocking pool, off the host's threads.
    pub async fn terminate(self: &std::sync::Arc<Self>, grace: Duration) -> Result<(), String> {
        let result = self.end_processes(grace).await;
        if result.is_ok() {
            if let Some(cg) = &self.cgroup {
                cg.remove();
            }
        }
        result
    }

    /// Runs `f` on the blocking pool (a `/proc` scan is file IO), or inline without one.
    async fn off_thread<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&Self) -> T + Send + 'static,
    ) -> T {
        let me = std::sync::Arc::clone(self);
        match tokio::runtime::Handle::try_current() {
            Ok(h) => match h.spawn_blocking(move || f(&me)).await {
                Ok(v) => v,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            },
            Err(_) => f(self),
        }
    }

    async fn end_processes(self: &std::sync::Arc<Self>, grace: Duration) -> Result<(), String> {
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
                return Err(format!(
                    "processes of the job survived SIGKILL for {}s: {left:?}",
                    KILL_WAIT.as_secs()
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
