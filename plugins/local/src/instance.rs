//! One local instance: a working directory, a script, and at most one run.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plugin_api::sdk::*;
use tokio::io::AsyncReadExt as _;

use crate::containment::{Cgroup, JobProcesses, TAG_VAR};
use crate::Settings;

/// The script's file name in the working directory.
const SCRIPT_NAME: &str = "build.sh";
/// Most bytes read from the log pipe into one chunk.
const READ_CHUNK: usize = 128 * 1024;
/// The log pipe's kernel buffer (Linux's default is 64 KiB): a larger one lets the job
/// write on while the host forwards a chunk.
const PIPE_SIZE: i32 = 1 << 20;
/// After the shell exits, how long to keep reading output that processes it left behind
/// still write, once the pipe has gone quiet.
const OUTPUT_LINGER: Duration = Duration::from_millis(200);

/// A local instance.
pub struct LocalInstance {
    id: String,
    dir: PathBuf,
    settings: Arc<Settings>,
    env: Vec<(String, String)>,
    startup: Duration,
    uploaded: AtomicBool,
    running: AtomicBool,
    stopped: AtomicBool,
    job: Mutex<Option<Arc<JobProcesses>>>,
}

impl LocalInstance {
    pub(crate) fn create(
        settings: Arc<Settings>,
        attributes: &StartAttributes,
    ) -> Result<Self, BackendError> {
        let began = Instant::now();
        let (id, dir) = make_dir(&settings.scripts_dir)?;
        let a = attributes;
        let mut env: Vec<(String, String)> = [
            ("CI", "true"),
            ("BUILD_LANGUAGE", a.language.as_str()),
            ("BUILD_OS", a.os.as_str()),
            ("BUILD_DIST", a.dist.as_str()),
            ("BUILD_ARCH", a.arch.as_str()),
            ("BUILD_GROUP", a.group.as_str()),
            ("BUILD_IMAGE", a.image_name.as_str()),
            ("BUILD_OSX_IMAGE", a.osx_image.as_str()),
            ("BUILD_VM_TYPE", a.vm_type.as_str()),
            ("BUILD_VM_SIZE", a.vm_size.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        env.push(("BUILD_DIR".into(), dir.display().to_string()));
        env.extend(settings.env.iter().cloned());
        env.push((TAG_VAR.into(), id.clone()));
        Ok(Self {
            id,
            dir,
            settings,
            env,
            startup: began.elapsed(),
            uploaded: AtomicBool::new(false),
            running: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            job: Mutex::new(None),
        })
    }

    /// The instance's working directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn set_job(&self, job: Option<Arc<JobProcesses>>) -> Option<Arc<JobProcesses>> {
        match self.job.lock() {
            Ok(mut g) => std::mem::replace(&mut *g, job),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), job),
        }
    }

    async fn remove_dir(&self) -> Result<(), BackendError> {
        if self.settings.keep_files {
            tracing::warn!(
                "keeping the working directory of instance {} at {} (KEEP_FILES=true)",
                self.id,
                self.dir.display()
            );
            return Ok(());
        }
        // A large tree takes a while to remove: not on the caller's (the host's) thread.
        let dir = self.dir.clone();
        let removed = spawn_blocking(move || std::fs::remove_dir_all(&dir)).await?;
        match removed {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::other(format!(
                "cannot remove the working directory {}: {e}",
                self.dir.display()
            ))),
        }
    }
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

fn make_dir(base: &std::path::Path) -> Result<(String, PathBuf), BackendError> {
    for _ in 0..100 {
        let id = instances::instance_name("local");
        let dir = base.join(format!("host-{id}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok((id, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(BackendError::other(format!(
                    "cannot create a working directory in {}: {e}",
                    base.display()
                )))
            }
        }
    }
    Err(BackendError::other(format!(
        "cannot find a free working directory name in {}",
        base.display()
    )))
}

/// A pipe whose ends close on exec; the write end is handed to the child explicitly.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Best effort: a smaller buffer only costs speed.
    // SAFETY: fcntl on a descriptor we own; no memory involved.
    unsafe { libc::fcntl(fds[0], libc::F_SETPIPE_SZ, PIPE_SIZE) };
    // SAFETY: pipe2 succeeded, so both are fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Ends the job's processes if the run is dropped before it finished (cancellation).
struct KillOnDrop {
    job: Arc<JobProcesses>,
    grace: Duration,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.job.terminate_in_background(self.grace);
        }
    }
}

/// Clears the instance's running flag however the run ends.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn signal_name(sig: i32) -> &'static str {
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

impl Instance for LocalInstance {
    async fn upload_script(&self, script: &[u8]) -> Result<(), BackendError> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(BackendError::other("the instance was stopped"));
        }
        if self.uploaded.swap(true, Ordering::SeqCst) {
            return Err(BackendError::stale_vm());
        }
        let path = self.dir.join(SCRIPT_NAME);
        let script = script.to_vec();
        spawn_blocking(move || {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o700)
                .open(&path)?;
            f.write_all(&script)?;
            f.sync_all()
        })
        .await?
        .map_err(|e| BackendError::other(format!("cannot write the build script: {e}")))
    }

    async fn run_script(&self, output: &mut Output) -> Result<RunResult, BackendError> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(BackendError::other("the instance was stopped"));
        }
        if !self.uploaded.load(Ordering::SeqCst) {
            return Err(BackendError::other("no script was uploaded"));
        }
        if self.running.swap(true, Ordering::SeqCst) {
            return Err(BackendError::other("the script is already running"));
        }
        let _running = Running(&self.running);

        let (read_end, write_end) = pipe()?;
        let stderr_end = write_end.try_clone()?;
        let cgroup = if self.settings.use_cgroup {
            Cgroup::create(&format!("host-{}", self.id))
        } else {
            None
        };
        let cgroup_fd = cgroup.as_ref().map(Cgroup::procs_fd);

        let mut cmd = tokio::process::Command::new(&self.settings.shell);
        cmd.arg(SCRIPT_NAME)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::from(stderr_end));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("BACKEND_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
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
            BackendError::other(format!("cannot start {}: {e}", self.settings.shell))
        })?;
        // The parent's copies of the write end are gone with `cmd`; EOF comes when the job's
        // processes have closed theirs.
        drop(cmd);
        let leader = child.id().map(|p| p as i32).unwrap_or(-1);
        let job = Arc::new(JobProcesses::new(leader, self.id.clone(), cgroup));
        tracing::debug!(instance = %self.id, pid = leader, cgroup = job.has_cgroup(), "build script started");
        if let Some(previous) = self.set_job(Some(Arc::clone(&job))) {
            previous.kill_now();
        }
        let guard = KillOnDrop {
            job,
            grace: self.settings.kill_grace,
            armed: true,
        };

        let log = tokio::net::unix::pipe::Receiver::from_owned_fd(read_end)?;
        // The read loop runs as a task of the plugin's runtime, whose threads also watch the
        // pipe: a burst of output is read where it is noticed, and only whole chunks cross
        // to the host. Dropping this future (cancellation) aborts the task, and the guard in
        // it ends the job's processes.
        let mut out = output.take();
        let (status, mut out) = spawn(async move {
            // The whole guard moves into the task (not just the field assigned below).
            let mut guard = guard;
            let status = pump(child, log, &mut out).await;
            if status.is_ok() {
                // Processes left behind are ended by stop, which the host always calls.
                guard.armed = false;
            }
            status.map(|s| (s, out))
        })
        .await??;
        *output = out.take();

        match (status.code(), status.signal()) {
            (Some(code), _) => Ok(RunResult::completed(code)),
            (None, Some(sig)) => {
                let line = format!(
                    "\nhost local backend: the build script was killed by signal {sig} ({})\n",
                    signal_name(sig)
                );
                output.write(line.into_bytes()).await?;
                Ok(RunResult::completed(128 + sig))
            }
            (None, None) => Ok(RunResult::not_completed()),
        }
    }

    async fn stop(&self) -> Result<(), BackendError> {
        self.stopped.store(true, Ordering::SeqCst);
        let result = match self.set_job(None) {
            Some(job) => job
                .terminate(self.settings.kill_grace)
                .await
                .map_err(BackendError::other),
            None => Ok(()),
        };
        let removed = self.remove_dir().await;
        result.and(removed)
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn startup_duration(&self) -> Duration {
        self.startup
    }
}

/// Moves the job's output into `output` until the shell exits and the pipe is drained (or
/// quiet for [`OUTPUT_LINGER`] after the exit); returns the shell's exit status.
async fn pump(
    mut child: tokio::process::Child,
    mut log: tokio::net::unix::pipe::Receiver,
    output: &mut Output,
) -> Result<ExitStatus, BackendError> {
    let mut status: Option<ExitStatus> = None;
    let mut eof = false;
    while status.is_none() {
        let mut buf = Vec::with_capacity(READ_CHUNK);
        tokio::select! {
            r = log.read_buf(&mut buf), if !eof => match r? {
                0 => eof = true,
                _ => {
                    eof = fill(&log, &mut buf)?;
                    output.write(shrink(buf)).await?
                }
            },
            s = child.wait() => status = Some(s?),
        }
    }
    // The shell has exited; what it wrote is in the pipe. Read it all, and whatever
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
    status.ok_or_else(|| BackendError::other("the build script's status was lost"))
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

/// A read buffer sized to what was read, so a small chunk does not pin 64 KiB.
fn shrink(mut buf: Vec<u8>) -> Vec<u8> {
    if buf.len() < buf.capacity() / 4 {
        buf.shrink_to_fit();
    }
    buf
}

impl Drop for LocalInstance {
    fn drop(&mut self) {
        // The host always stops an instance; this is the last line of defence.
        if !self.stopped.load(Ordering::SeqCst) {
            if let Some(job) = self.set_job(None) {
                job.kill_now();
            }
            if !self.settings.keep_files {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }
}

/// A working directory left by a host process that is gone.
pub(crate) struct Stale {
    pub(crate) id: String,
    pub(crate) host_pid: u32,
    pub(crate) dir: PathBuf,
}

/// The instance id's host pid (ids are made by [`instances::instance_name`]).
pub(crate) fn host_pid_of(id: &str) -> Option<u32> {
    instances::host_pid_of(id, "local")
}

/// The working directories in `base` whose host process no longer runs and that were last
/// changed more than `older_than` ago.
pub(crate) fn stale_instances(
    base: &std::path::Path,
    older_than: Duration,
) -> Result<Vec<Stale>, BackendError> {
    let entries = std::fs::read_dir(base)
        .map_err(|e| BackendError::other(format!("cannot read {}: {e}", base.display())))?;
    let now = std::time::SystemTime::now();
    let mut stale = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("host-") else {
            continue;
        };
        let Some(host_pid) = host_pid_of(id) else {
            continue;
        };
        if instances::process_alive(host_pid) {
            continue; // its host still runs: not ours to touch
        }
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if age >= older_than {
            stale.push(Stale {
                id: id.to_owned(),
                host_pid,
                dir: entry.path(),
            });
        }
    }
    stale.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(stale)
}
