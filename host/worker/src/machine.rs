//! Job locks shared by every worker on this machine: what keeps two live workers on one
//! machine from running one RabbitMQ job at once (the broker hands a job whose worker lost
//! its connection to another worker while the first still runs it).
//!
//! A lock is a file `<dir>/<key>.lock` held with `flock`, so it goes with its holder's
//! process (a `kill -9` frees it). The holder removes the file while it still holds the
//! lock; a waiter that got the lock on a file that was removed meanwhile sees that the path
//! names another file (or none) and tries again, so no two holders ever hold "the" lock of
//! one key, and no lock file stays behind. A run that ends with a final state leaves
//! `<key>.done` with the digest of the message it ran, before it lets the lock go: a worker
//! that then gets the same message again (redelivered) answers it without running it. A run
//! that begins removes the done file of its key (the same body published again is a new
//! message). Done files older than [`DONE_KEPT`] are removed at start and every
//! `SWEEP_EVERY` recorded.
//!
//! The directory is the worker's alone (mode 0700, its owner, its parents writable by no one
//! else), made if missing (at start, or when it went away) and checked each time: a lock
//! directory others can write into would let them hold every job.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a done file is kept: long enough for the redeliveries of a lost connection
/// (seconds to minutes), short enough that a busy worker's done files stay few.
pub const DONE_KEPT: Duration = Duration::from_secs(3600);

/// Done files are swept (those older than [`DONE_KEPT`] removed) every this many recorded.
const SWEEP_EVERY: u64 = 256;

/// The default lock directory: `/run/host-worker` for root, else one in the runtime or
/// temporary directory named after the user.
pub fn default_dir() -> PathBuf {
    // SAFETY: geteuid cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 && Path::new("/run").is_dir() {
        return PathBuf::from("/run/host-worker");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("host-worker"),
        _ => std::env::temp_dir().join(format!("host-worker-{euid}")),
    }
}

/// The lock directory of this machine's workers.
#[derive(Clone, Debug)]
pub struct MachineLocks {
    dir: PathBuf,
    recorded: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// What [`MachineLocks::try_lock`] found.
#[derive(Debug)]
pub enum Lock {
    /// Held now, until dropped.
    Held(MachineLock),
    /// Another worker on this machine holds it.
    Busy,
}

/// A held lock; dropping it lets it go.
#[derive(Debug)]
pub struct MachineLock {
    file: File,
    path: PathBuf,
    done: PathBuf,
    locks: MachineLocks,
}

impl MachineLocks {
    /// Opens (making it, mode 0700) the lock directory `dir`, checks it, and removes done
    /// files older than [`DONE_KEPT`].
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        Self::check(dir)?;
        let locks = Self {
            dir: dir.to_owned(),
            recorded: Default::default(),
        };
        locks.forget_old_done();
        Ok(locks)
    }

    /// Makes `dir` if missing and checks it and its parents.
    fn check(dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        let meta = std::fs::symlink_metadata(dir)?;
        // SAFETY: geteuid cannot fail and touches no memory.
        let euid = unsafe { libc::geteuid() };
        let mode = meta.permissions().mode() & 0o7777;
        if !meta.is_dir() || meta.uid() != euid || mode & 0o077 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "the lock directory {} must be a directory of uid {euid} alone (it is {}, uid {}, mode {mode:04o}): chmod 700 it, or give --lock-dir another",
                    dir.display(),
                    if meta.is_dir() { "a directory" } else { "not a directory" },
                    meta.uid()
                ),
            ));
        }
        super::dir::check_parents(dir, "the lock directory")
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn forget_old_done(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = std::time::SystemTime::now();
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > DONE_KEPT);
            if old && entry.file_name().to_string_lossy().ends_with(".done") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Tries to take the lock of `key` (a file name's worth of `[A-Za-z0-9._-]`), without
    /// waiting.
    pub fn try_lock(&self, key: &str) -> std::io::Result<Lock> {
        use std::os::fd::AsRawFd as _;
        use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
        let path = self.dir.join(format!("{key}.lock"));
        let mut remade = false;
        loop {
            let opened = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
                .open(&path);
            let file = match opened {
                // The directory went away (a service manager's runtime directory removed
                // when another unit stopped): made again, and checked again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !remade => {
                    remade = true;
                    Self::check(&self.dir)?;
                    continue;
                }
                other => other.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                })?,
            };
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = std::io::Error::last_os_error();
                return if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    Ok(Lock::Busy)
                } else {
                    Err(e)
                };
            }
            // The holder before may have removed the file after we opened it: then this is a
            // lock on nothing, and the path (if any) names the next one.
            let ours = file.metadata()?;
            match std::fs::symlink_metadata(&path) {
                Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {
                    return Ok(Lock::Held(MachineLock {
                        file,
                        path,
                        done: self.dir.join(format!("{key}.done")),
                        locks: self.clone(),
                    }))
                }
                _ => continue,
            }
        }
    }
}

impl MachineLock {
    /// Whether a run on this machine finished the message with `digest` (hex).
    pub fn finished(&self, digest: &str) -> bool {
        std::fs::read_to_string(&self.done).is_ok_and(|d| d.trim() == digest)
    }

    /// A new run of the key begins: what an earlier run finished no longer answers a
    /// redelivery (the same body published again, as for a restarted build, is another
    /// message that this run now owns).
    pub fn begin(&self) {
        let _ = std::fs::remove_file(&self.done);
    }

    /// Records that the message with `digest` (hex) finished here, before the lock goes.
    pub fn record_finished(&self, digest: &str) -> std::io::Result<()> {
        let tmp = self.done.with_extension("done.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(digest.as_bytes())?;
        std::fs::rename(&tmp, &self.done)?;
        let n = self
            .locks
            .recorded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.locks.forget_old_done();
        }
        Ok(())
    }
}

impl Drop for MachineLock {
    fn drop(&mut self) {
        // Removed while held: see the module doc.
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_no_file_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let locks = MachineLocks::open(&dir.path().join("locks")).unwrap();
        let Lock::Held(first) = locks.try_lock("q-1").unwrap() else {
            panic!("the first try takes it");
        };
        assert!(matches!(locks.try_lock("q-1").unwrap(), Lock::Busy));
        assert!(matches!(locks.try_lock("q-2").unwrap(), Lock::Held(_)));
        first.record_finished("abc").unwrap();
        drop(first);
        let Lock::Held(again) = locks.try_lock("q-1").unwrap() else {
            panic!("free once dropped");
        };
        assert!(again.finished("abc"));
        assert!(!again.finished("abd"));
        drop(again);
        let left: Vec<_> = std::fs::read_dir(locks.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_lock_directory_others_may_write_into_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        std::fs::create_dir(&locks).unwrap();
        std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = MachineLocks::open(&locks).unwrap_err();
        assert!(e.to_string().contains("chmod 700"), "{e}");
    }
}
