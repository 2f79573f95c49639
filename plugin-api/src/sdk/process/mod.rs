//! Running a build as a process tree of its own (feature `process`, Unix): what the `local`
//! backend does, for any backend whose build is a command on this machine (a shell, a
//! sandbox such as `unshare` or `bwrap`, an emulator...).
//!
//! - [`Command`] says what to run. [`Command::spawn`] starts it in a session and process
//!   group of its own, in a cgroup v2 of its own where the system lets us make one, tagged
//!   in its environment, with only fds 0, 1 and 2 inherited (stdin `/dev/null`, stdout and
//!   stderr one pipe, so the log keeps their order), and without the host's `BACKEND_*`
//!   variables (backend config and secrets).
//! - [`Job::run`] moves the output into the host's [`Output`] as it is produced and
//!   returns the exit status as a [`RunResult`]: the exit code as it is, 128+N for a process
//!   killed by signal N (with a line in the log that names the signal). Both are about the
//!   first process: behind a wrapper (`bwrap`, `unshare --fork`) the result is the wrapper's
//!   own exit code, whatever killed the build inside, and no line is written
//!   (`unshare --fork` exits 1 when its child is killed by SIGKILL).
//! - Dropping a run (the host cancels) ends the whole tree in two phases, SIGTERM, the grace,
//!   SIGKILL, in the background; [`ProcessTree::terminate`] (call it from `stop`) does the
//!   same and returns when nothing is left. The first process is always reaped, by this
//!   module, even when the plugin's runtime is shutting down. Its descendants are reaped by
//!   whoever they are re-parented to when it exits: behind a wrapper that forks (`bwrap`,
//!   `unshare --fork --pid`), that is the machine's init, or the host when it runs as PID 1
//!   of a container, which does not reap them yet.
//! - [`Jobs`] keeps the one run of an instance and ends it on `stop`; [`WorkDir`] is the
//!   instance's working directory, removed on `stop`.
//!
//! See [`tree`] for which processes count as the job's and what is guaranteed where.
//!
//! ```no_run
//! # use plugin_api::sdk::*;
//! # use plugin_api::sdk::process::{Command, Jobs, WorkDir};
//! # async fn f(output: &mut Output) -> Result<(), BackendError> {
//! let dir = WorkDir::create(&std::env::temp_dir(), "mine")?;
//! dir.write_script("build.sh", b"echo hi").await?;
//! let jobs = Jobs::new(std::time::Duration::from_secs(10));
//! let result = jobs.run(Command::new("bash").arg("build.sh").current_dir(dir.path()), output).await?;
//! jobs.stop().await?;
//! dir.remove().await?;
//! # Ok(()) }
//! ```

pub mod tree;
mod workdir;

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;

use super::{runtime, Output};
use crate::{BackendError, RunResult};
pub use tree::{Cgroup, ProcessTree, TAG_VAR};
pub use workdir::WorkDir;

/// Most bytes read from the log pipe into one chunk.
const READ_CHUNK: usize = 128 * 1024;
/// The log pipe's kernel buffer (Linux's default is 64 KiB): a larger one lets the job
/// write on while the host forwards a chunk.
const PIPE_SIZE: i32 = 1 << 20;
/// After the first process exits, how long to keep reading output that processes it left
/// behind still write, once the pipe has gone quiet.
const OUTPUT_LINGER: Duration = Duration::from_millis(200);
/// The grace between SIGTERM and SIGKILL when nobody set one.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

/// What to run, and how (the std `Command`'s shape, with a job's containment).
#[derive(Debug, Clone)]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    dir: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    tag: Option<String>,
    cgroup: Option<String>,
    grace: Duration,
}

impl Command {
    /// Runs `program` (found on `PATH` when it has no `/`).
    pub fn new(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            dir: None,
            env: Vec::new(),
            tag: None,
            cgroup: None,
            grace: DEFAULT_KILL_GRACE,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Sets an environment variable for the job.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets environment variables for the job.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Tags the job's processes with [`TAG_VAR`]`=tag` (by default the tag is made from the
    /// first process's pid), so that a reaper finds them by it after this process is gone.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Puts the job in a cgroup v2 named `name` beside ours, where the system allows (as
    /// root, usually); without one the group, session and tag still find its processes.
    pub fn cgroup(mut self, name: impl Into<String>) -> Self {
        self.cgroup = Some(name.into());
        self
    }

    /// The time between SIGTERM and SIGKILL when the run is dropped (default 10 s).
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Starts the job (see the module docs for how).
    ///
    /// The fork happens on the calling thread: in a backend, a worker thread of the plugin's
    /// runtime, which lives as long as the plugin is loaded. That matters to a parent-death
    /// signal (`prctl(PR_SET_PDEATHSIG)`, `bwrap --die-with-parent`): Linux ties it to the
    /// thread that forked, not to the process, so do not spawn from a thread that may end
    /// before the job (a `spawn_blocking` thread ends after 10 s idle).
    pub fn spawn(self) -> Result<Job, BackendError> {
        let (read_end, write_end) = pipe()?;
        let stderr_end = write_end.try_clone()?;
        let cgroup = self.cgroup.as_deref().and_then(Cgroup::create);
        let cgroup_fd = cgroup.as_ref().map(Cgroup::procs_fd);
        let tag = self
            .tag
            .clone()
            .unwrap_or_else(|| format!("{}-{}", std::process::id(), next_serial()));

        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::from(stderr_end));
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with(crate::config::ENV_PREFIX) {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.env(TAG_VAR, &tag);
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (setsid, write, close_range, fcntl) without allocating.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The job gets 0, 1 and 2 only, whatever its host was handed.
                close_inherited_fds();
                if let Some(fd) = cgroup_fd {
                    // "0" moves the writing process; a failure leaves the other means.
                    let _ = libc::write(fd, b"0".as_ptr().cast(), 1);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            BackendError::other(format!(
                "cannot start {}: {e}",
                self.program.to_string_lossy()
            ))
        })?;
        // The parent's copies of the write end go with `cmd`: EOF comes when the job's
        // processes have closed theirs. The std `Child` only holds the pid; we reap it.
        drop(cmd);
        let pid = child.id() as i32;
        let tree = Arc::new(ProcessTree::spawned(pid, tag, cgroup));
        tracing::debug!(
            program = %self.program.to_string_lossy(),
            pid,
            cgroup = tree.has_cgroup(),
            "job started"
        );
        Ok(Job {
            guard: EndOnDrop {
                tree,
                grace: self.grace,
                armed: true,
            },
            log: read_end,
        })
    }
}

fn next_serial() -> u64 {
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A started job: its processes, and the read end of its output.
#[derive(Debug)]
pub struct Job {
    guard: EndOnDrop,
    log: OwnedFd,
}

impl Job {
    /// The job's processes, for `stop` to [`terminate`](ProcessTree::terminate).
    pub fn processes(&self) -> Arc<ProcessTree> {
        Arc::clone(&self.guard.tree)
    }

    /// Moves the job's output into `output` until its first process exits and the pipe is
    /// drained (or quiet for 200 ms after the exit), and returns the exit as a
    /// [`RunResult`]. Runs on the plugin's runtime; dropping the returned future ends the
    /// job's processes (SIGTERM, the grace, SIGKILL) and reaps them in the background.
    /// Processes the first one left behind are ended by [`ProcessTree::terminate`].
    pub async fn run(self, output: &mut Output) -> Result<RunResult, BackendError> {
        let Job { mut guard, log } = self;
        let mut out = output.take();
        let (status, mut out) = runtime::spawn(async move {
            let log = tokio::net::unix::pipe::Receiver::from_owned_fd(log)?;
            let status = pump(&guard.tree, log, &mut out).await;
            if status.is_ok() {
                // Finished: what is left is for stop, which the host always calls.
                guard.disarm();
            }
            status.map(|s| (s, out))
        })
        .await??;
        *output = out.take();
        match status.map(|s| (s.code(), s.signal())) {
            Some((Some(code), _)) => Ok(RunResult::completed(code)),
            Some((None, Some(sig))) => {
                let line = format!(
                    "\nhost {} backend: the build script was killed by signal {sig} ({})\n",
                    runtime::alias(),
                    signal_name(sig)
                );
                output.write(line.into_bytes()).await?;
                Ok(RunResult::completed(128 + sig))
            }
            _ => Ok(RunResult::not_completed()),
        }
    }
}

/// Ends a job's processes in the background when a run is dropped before it finished.
#[derive(Debug)]
struct EndOnDrop {
    tree: Arc<ProcessTree>,
    grace: Duration,
    armed: bool,
}

impl EndOnDrop {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.tree.terminate_in_background(self.grace);
        }
    }
}

/// The one run of an instance: starts it, and ends what it left on `stop`.
#[derive(Debug)]
pub struct Jobs {
    current: Mutex<Option<Arc<ProcessTree>>>,
    grace: Duration,
}

impl Jobs {
    /// No run yet; `grace` between SIGTERM and SIGKILL.
    pub fn new(grace: Duration) -> Self {
        Self {
            current: Mutex::new(None),
            grace,
        }
    }

    fn replace(&self, tree: Option<Arc<ProcessTree>>) -> Option<Arc<ProcessTree>> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *current, tree)
    }

    /// Spawns `command` (with this grace) and runs it to its end ([`Job::run`]).
    pub async fn run(
        &self,
        command: Command,
        output: &mut Output,
    ) -> Result<RunResult, BackendError> {
        let job = command.kill_grace(self.grace).spawn()?;
        if let Some(previous) = self.replace(Some(job.processes())) {
            previous.kill_now();
        }
        job.run(output).await
    }

    /// The current run's processes, if one was started.
    pub fn processes(&self) -> Option<Arc<ProcessTree>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Ends every process of the last run (SIGTERM, the grace, SIGKILL) and reaps it.
    /// Harmless to call twice or without a run.
    pub async fn stop(&self) -> Result<(), BackendError> {
        match self.replace(None) {
            Some(tree) => tree.terminate(self.grace).await,
            None => Ok(()),
        }
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        // The host always calls stop; this is the last line of defence.
        if let Some(tree) = self.replace(None) {
            tree.terminate_in_background(Duration::ZERO);
        }
    }
}

/// Moves the job's output into `output` until the first process exits and the pipe is
/// drained (or quiet for [`OUTPUT_LINGER`] after the exit); returns its exit status.
async fn pump(
    tree: &ProcessTree,
    mut log: tokio::net::unix::pipe::Receiver,
    output: &mut Output,
) -> Result<Option<std::process::ExitStatus>, BackendError> {
    let mut eof = false;
    let status = {
        let exit = tree.wait();
        tokio::pin!(exit);
        loop {
            let mut buf = Vec::with_capacity(READ_CHUNK);
            tokio::select! {
                r = log.read_buf(&mut buf), if !eof => match r? {
                    0 => eof = true,
                    _ => {
                        eof = fill(&log, &mut buf)?;
                        output.write(shrink(buf)).await?
                    }
                },
                s = &mut exit => break s,
            }
        }
    };
    // The first process has exited; what it wrote is in the pipe. Read it all, and whatever
    // processes it left still write until the pipe goes quiet.
    while !eof {
        let mut buf = Vec::with_capacity(READ_CHUNK);
        match tokio::time::timeout(OUTPUT_LINGER, log.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => eof = true,
            Ok(Ok(_)) => {
                eof = fill(&log, &mut buf)?;
                output.write(shrink(buf)).await?
            }
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    Ok(status)
}

/// Tops `buf` up with what the pipe already holds, without waiting, so that a job writing in
/// small pieces still travels in large chunks. Returns whether the pipe reached its end.
fn fill(log: &tokio::net::unix::pipe::Receiver, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    while buf.len() < buf.capacity() {
        match log.try_read_buf(buf) {
            Ok(0) => return Ok(true),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// A read buffer sized to what was read, so a small chunk does not pin 128 KiB.
fn shrink(mut buf: Vec<u8>) -> Vec<u8> {
    if buf.len() < buf.capacity() / 4 {
        buf.shrink_to_fit();
    }
    buf
}

/// A pipe whose ends close on exec; the write end is handed to the child explicitly.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Best effort: a smaller buffer only costs speed.
    #[cfg(target_os = "linux")]
    // SAFETY: fcntl on a descriptor we own; no memory involved.
    unsafe {
        libc::fcntl(fds[0], libc::F_SETPIPE_SZ, PIPE_SIZE)
    };
    // SAFETY: pipe2 succeeded, so both are fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Marks every descriptor above 2 close-on-exec. Called between fork and exec: only
/// async-signal-safe calls, no allocation.
fn close_inherited_fds() {
    // SAFETY: close_range and fcntl only act on descriptor numbers of this process.
    unsafe {
        #[cfg(target_os = "linux")]
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
            return;
        }
        let max = match libc::sysconf(libc::_SC_OPEN_MAX) {
            n if n > 0 => n.min(65_536) as i32,
            _ => 1024,
        };
        for fd in 3..max {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// The name of signal `sig`, e.g. `"SIGKILL"`.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests;
