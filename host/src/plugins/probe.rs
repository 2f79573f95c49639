//! Loading that no damaged file can crash: before a plugin file is opened as a library in
//! this process, a child process opens it (header, plugin-api version, layout check, root
//! module initialisation) and reports back. A file whose probe dies (a signal, an `ld.so`
//! assertion, an abort across the FFI boundary, a hang) is rejected with what happened
//! ("crashed while loading: SIGSEGV"), and the other files load.
//!
//! # The probing executable
//! The child is this program itself, run with a hidden first argument: a program that
//! embeds the library calls [`crate::serve_if_asked`] first thing in `main` (the `host` binary
//! does), which both answers probes in the child and marks this executable as able to. An
//! embedder that does not can name another executable that does with [`set_executable`]
//! (the `host` binary, say). Without either, files are opened in-process as before, and a
//! debug line says so.
//!
//! # The cache
//! A probe costs a process start (a few ms). Its result (that the file loads, or the reason
//! the loader refuses it; never a crash, which may depend on the environment or on chance
//! and is probed again at every start) is kept in a cache directory, keyed
//! by the file (resolved path, device, inode, size, mtime, ctime, and its SHA-256 when a lock
//! is in force) and by the probing executable (path, size, mtime) and this library's
//! version, so a changed file or a new host probes again. The directory is `HOST_PROBE_CACHE`
//! (empty: no cache), else `$XDG_CACHE_HOME/host/probes`, else `~/.cache/host/probes`; it
//! is held to the plugin directory's trust rules (owned by root or by the user, not writable
//! by group or others) and entries are written atomically with mode 0600. A cache that fails
//! those rules is not used (a warning says why). ctime stands in for a content hash where no
//! lock asks for one: it changes on every write and cannot be set back by a user, and
//! hashing every plugin at every start would cost milliseconds each.

use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::LoadError;
use crate::fds::{move_fds, pipe};
use crate::plugins::trust::CheckedFile;
use crate::progress::Progress;

/// The hidden first argument that makes this program a probe.
pub const PROBE_ARG: &str = "__host-probe-plugin";

/// The environment variable naming the probe cache directory (empty: no cache).
pub const CACHE_ENV: &str = "HOST_PROBE_CACHE";

/// How long a probe may take before it is killed and the file rejected as hanging.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The file's descriptor in the child.
const CHILD_FILE_FD: i32 = 3;
/// Where the child writes its report.
const CHILD_REPLY_FD: i32 = 4;
/// The most of the child's stdout/stderr kept for the message (ld.so's assertion, a panic).
const DIAG_BYTES: usize = 2048;

static CAN_SERVE: AtomicBool = AtomicBool::new(false);
static EXECUTABLE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Marks this executable as one that answers probes and serves isolated plugins
/// ([`crate::serve_if_asked`] calls it).
pub(crate) fn can_serve() {
    CAN_SERVE.store(true, Ordering::SeqCst);
}

/// Probes with `exe` (a program that calls [`crate::serve_if_asked`]), or with nothing (`None`:
/// files are opened in-process without a probe).
pub fn set_executable(exe: Option<PathBuf>) {
    *EXECUTABLE.lock().unwrap_or_else(|e| e.into_inner()) = exe;
    CAN_SERVE.store(false, Ordering::SeqCst);
}

/// The executable probes run with, if any.
pub fn executable() -> Option<PathBuf> {
    if let Some(exe) = EXECUTABLE.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        return Some(exe);
    }
    if CAN_SERVE.load(Ordering::SeqCst) {
        static SELF: OnceLock<Option<PathBuf>> = OnceLock::new();
        return SELF.get_or_init(own_executable).clone();
    }
    None
}

/// This process's own executable, as probes and plugin servers are started: on Linux
/// `/proc/self/exe`, which stays the file this process runs even when a package upgrade or
/// removal has replaced or deleted it at its path (a worker then keeps starting plugin
/// servers of its own version); elsewhere the path it was started from.
fn own_executable() -> Option<PathBuf> {
    let proc_self = std::path::Path::new("/proc/self/exe");
    if cfg!(target_os = "linux") && proc_self.exists() {
        return Some(proc_self.to_path_buf());
    }
    std::env::current_exe().ok()
}

/// What a probe found.
#[derive(Debug, Serialize, Deserialize)]
enum Finding {
    /// The file loads: its header's ABI and plugin-api version.
    Loads {
        abi: Option<(u32, u32)>,
        plugin_api_version: Option<String>,
        /// What the root module says about itself (its alias decides isolation).
        description: crate::abi::module::Description,
    },
    /// The file is refused for a reason the loader gives (not a plugin, another major...).
    Refused {
        abi: Option<(u32, u32)>,
        plugin_api_version: Option<String>,
        error: LoadError,
    },
    /// The probe died or hung: what happened.
    Crashed(String),
}

/// The child's side: open the file on [`CHILD_FILE_FD`] and report on [`CHILD_REPLY_FD`].
pub(crate) fn serve() -> i32 {
    let mut progress = Progress::default();
    let path = PathBuf::from(format!("/proc/self/fd/{CHILD_FILE_FD}"));
    let finding = match crate::abi::load::open_root_module(&path, &mut progress) {
        Ok(module) => Finding::Loads {
            abi: progress.abi,
            plugin_api_version: progress.plugin_api_version,
            description: module.describe(),
        },
        Err(error) => Finding::Refused {
            abi: progress.abi,
            plugin_api_version: progress.plugin_api_version,
            error,
        },
    };
    let Ok(json) = serde_json::to_vec(&finding) else {
        return 70;
    };
    // SAFETY: the parent hands this process CHILD_REPLY_FD; nothing else here owns it.
    let mut reply = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(CHILD_REPLY_FD) });
    match reply.write_all(&json) {
        Ok(()) => 0,
        Err(_) => 74,
    }
}

/// Probes `checked` in a child (or finds the answer in the cache) before it is opened here.
/// `Ok` when the file may be opened: with what its root module says of itself, `None` when
/// there is no probing executable; the loader's own error when the child was refused it;
/// [`LoadError::Crashed`] when the child died.
pub(crate) fn probe(
    checked: &CheckedFile,
    progress: &mut Progress,
) -> Result<Option<crate::abi::module::Description>, LoadError> {
    let Some(exe) = executable() else {
        tracing::debug!(
            "no probing executable (serve_if_asked was not called): {} is opened in-process unprobed",
            checked.facts.resolved.display()
        );
        return Ok(None);
    };
    let began = Instant::now();
    let key = cache_key(checked, &exe);
    let cache = cache_dir();
    let cached = key
        .as_ref()
        .zip(cache)
        .and_then(|(key, dir)| read_cached(dir, key));
    let (finding, how) = match cached {
        Some(f) => (f, "cached"),
        None => match run_probe(&exe, &checked.file) {
            Ok(f) => {
                // A crash is probed again next time: it may depend on the environment or
                // on chance, and only a bad file pays for it.
                if let (Some(key), Some(dir), false) =
                    (&key, cache, matches!(f, Finding::Crashed(_)))
                {
                    write_cached(dir, key, &f);
                }
                (f, "probed")
            }
            Err(e) => {
                tracing::warn!(
                    "cannot probe {} in a child process ({e}); opening it in-process",
                    checked.facts.resolved.display()
                );
                return Ok(None);
            }
        },
    };
    tracing::debug!(
        target: "host::probe",
        file = %checked.facts.resolved.display(),
        elapsed_us = began.elapsed().as_micros() as u64,
        "{how}: {finding:?}"
    );
    progress.probe = Some(match &finding {
        Finding::Loads { .. } => format!("loads in a child process ({how})"),
        Finding::Refused { .. } => format!("refused in a child process ({how})"),
        Finding::Crashed(what) => format!("crashed in a child process: {what} ({how})"),
    });
    match finding {
        Finding::Loads { description, .. } => Ok(Some(description)),
        Finding::Refused {
            abi,
            plugin_api_version,
            error,
        } => {
            progress.abi = abi;
            progress.plugin_api_version = plugin_api_version;
            Err(error)
        }
        Finding::Crashed(what) => Err(LoadError::Crashed(what)),
    }
}

/// Runs the child on `file` and reads its finding.
fn run_probe(exe: &Path, file: &std::fs::File) -> std::io::Result<Finding> {
    let (reply_read, reply_write) = pipe()?;
    let (diag_read, diag_write) = pipe()?;
    let file_fd = file.as_raw_fd();
    let reply_fd = reply_write.as_raw_fd();
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(PROBE_ARG)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(diag_write.try_clone()?))
        .stderr(std::process::Stdio::from(diag_write));
    let moves = [(file_fd, CHILD_FILE_FD), (reply_fd, CHILD_REPLY_FD)];
    // SAFETY: between fork and exec only dup2/fcntl (async-signal-safe), no allocation.
    unsafe {
        cmd.pre_exec(move || move_fds(&moves));
    }
    let mut child = cmd.spawn()?;
    // The parent's copies of the write ends: EOF comes when the child is done.
    drop(cmd);
    drop(reply_write);
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let (reply, diag, timed_out) = read_both(reply_read, diag_read, deadline);
    if timed_out {
        let _ = child.kill();
    }
    let status = child.wait()?;
    if timed_out {
        return Ok(Finding::Crashed(format!(
            "no answer within {}s (killed)",
            PROBE_TIMEOUT.as_secs()
        )));
    }
    if status.success() {
        if let Ok(finding) = serde_json::from_slice::<Finding>(&reply) {
            return Ok(finding);
        }
    }
    let what = match (status.signal(), status.code()) {
        (Some(sig), _) => plugin_api::sdk::process::signal_name(sig).to_owned(),
        (None, Some(code)) => format!("exit status {code}"),
        (None, None) => "ended".to_owned(),
    };
    let diag = String::from_utf8_lossy(&diag);
    let last = diag
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Ok(Finding::Crashed(if last.is_empty() {
        what
    } else {
        format!("{what} ({})", crate::text::escape_controls(last.trim()))
    }))
}

/// Reads the reply to its end and keeps the last [`DIAG_BYTES`] of the diagnostics, until
/// both pipes close or `deadline` passes (the third value).
fn read_both(reply: OwnedFd, diag: OwnedFd, deadline: Instant) -> (Vec<u8>, Vec<u8>, bool) {
    let mut reply_file = std::fs::File::from(reply);
    let mut diag_file = std::fs::File::from(diag);
    let mut out = (Vec::new(), Vec::new());
    let mut open = [true, true];
    let mut buf = [0u8; 8192];
    while open.iter().any(|o| *o) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out.0, out.1, true);
        }
        let mut fds = [
            libc::pollfd {
                fd: if open[0] { reply_file.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if open[1] { diag_file.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of two pollfd for the call's duration.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms.max(1)) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return (out.0, out.1, false);
        }
        for (i, pfd) in fds.iter().enumerate() {
            if !open[i] || pfd.revents == 0 {
                continue;
            }
            let read = if i == 0 {
                reply_file.read(&mut buf)
            } else {
                diag_file.read(&mut buf)
            };
            match read {
                Ok(0) | Err(_) => open[i] = false,
                Ok(n) if i == 0 => out.0.extend_from_slice(&buf[..n]),
                Ok(n) => {
                    out.1.extend_from_slice(&buf[..n]);
                    if out.1.len() > DIAG_BYTES {
                        out.1.drain(..out.1.len() - DIAG_BYTES);
                    }
                }
            }
        }
    }
    (out.0, out.1, false)
}

/// The cache key of a checked file probed by `exe`, as text (also the entry's first line).
fn cache_key(checked: &CheckedFile, exe: &Path) -> Option<String> {
    let m = checked.file.metadata().ok()?;
    Some(format!(
        "file={} dev={} ino={} size={} mtime={}.{} ctime={}.{} sha256={} {}",
        checked.facts.resolved.display(),
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        checked.facts.sha256.as_deref().unwrap_or("-"),
        exe_key(exe)?,
    ))
}

/// The probing executable's part of every cache key, read once per process and executable.
fn exe_key(exe: &Path) -> Option<String> {
    static KEYS: Mutex<Vec<(PathBuf, Option<String>)>> = Mutex::new(Vec::new());
    let mut keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, key)) = keys.iter().find(|(p, _)| p == exe) {
        return key.clone();
    }
    let key = std::fs::metadata(exe).ok().map(|e| {
        format!(
            "exe={} exe_size={} exe_mtime={}.{} host={}",
            exe.display(),
            e.size(),
            e.mtime(),
            e.mtime_nsec(),
            env!("CARGO_PKG_VERSION"),
        )
    });
    keys.push((exe.to_owned(), key.clone()));
    key
}

/// The cache directory, made if missing and checked once per process; `None` when there
/// is none or it cannot be trusted (said once, as a warning).
fn cache_dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = match std::env::var_os(CACHE_ENV) {
            Some(d) if d.is_empty() => return None,
            Some(d) => PathBuf::from(d),
            None => {
                let base = std::env::var_os("XDG_CACHE_HOME")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME")
                            .filter(|v| !v.is_empty())
                            .map(|h| PathBuf::from(h).join(".cache"))
                    })?;
                base.join("host").join("probes")
            }
        };
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
        {
            tracing::warn!("no probe cache: cannot create {}: {e}", dir.display());
            return None;
        }
        match crate::plugins::trust::check_dir(&dir) {
            Ok(()) => Some(dir),
            Err(e) => {
                tracing::warn!("the probe cache is not used: {e}");
                None
            }
        }
    })
    .as_deref()
}

fn entry_path(dir: &Path, key: &str) -> PathBuf {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{name}.json"))
}

/// The cached finding for `key`: only from an entry owned by us or root, not writable by
/// others, whose key line is exactly `key`.
fn read_cached(dir: &Path, key: &str) -> Option<Finding> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(entry_path(dir, key))
        .ok()?;
    let meta = file.metadata().ok()?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let trusted = meta.is_file()
        && (meta.uid() == euid || meta.uid() == 0)
        && meta.permissions().mode() & 0o022 == 0
        && meta.len() < 1 << 20;
    if !trusted {
        return None;
    }
    let mut text = String::new();
    (&file).read_to_string(&mut text).ok()?;
    let (first, rest) = text.split_once('\n')?;
    if first != key {
        return None;
    }
    serde_json::from_str(rest).ok()
}

/// Writes the entry for `key` atomically (a temp file renamed over it), mode 0600. A failed
/// write only costs the next start a probe.
fn write_cached(dir: &Path, key: &str, finding: &Finding) {
    let Ok(json) = serde_json::to_string(finding) else {
        return;
    };
    let path = entry_path(dir, key);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(format!("{key}\n{json}").as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!("probe cache entry {} not written: {e}", path.display());
    }
}
