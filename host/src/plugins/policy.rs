//! The plugin policy: which directories are searched and which lock is in force, resolved
//! **once** and applied by every command that opens a library (`list-backends`, `run`,
//! `inspect`, `reap`, `--help`, a worker) and by the library API. Loading is executing, so
//! there is exactly one place that decides what may be opened.
//!
//! The rules: plugin directories as [`crate::plugins::loader`] says; the lock for a file is the
//! explicit one (`--plugin-lock`, else `HOST_PLUGIN_LOCK`), else `plugins.lock` in the
//! directory holding the file (where the file was found, before symlinks), else none. A lock
//! that cannot be used refuses every file it would govern.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{LoadError, Rejected};
use crate::isolate::Isolation;
use crate::plugins::inspect::Inspection;
use crate::plugins::loader::{candidate_files, plugin_dirs, PluginDir, PluginFile};
use crate::plugins::registry::Registry;
use crate::plugins::trust::{Lock, TrustError, DIR_LOCK_NAME, LOCK_ENV};
use crate::progress::Progress;

/// Where plugins come from and which lock governs them. See the module docs.
#[derive(Debug)]
pub struct PluginPolicy {
    dirs: Vec<PluginDir>,
    explicit_lock: Option<PathBuf>,
    /// Locks read so far, by path: each is read and checked once.
    locks: Mutex<HashMap<PathBuf, Result<Lock, TrustError>>>,
    /// Which plugins run out of process.
    isolation: Isolation,
}

impl PluginPolicy {
    /// The policy from the command line's values, each falling back to the environment:
    /// `--plugin-dir` else `HOST_PLUGIN_PATH` else beside the executable; `--plugin-lock`
    /// else `HOST_PLUGIN_LOCK`; isolation from `HOST_ISOLATE` (see [`Self::with_isolation`]).
    pub fn resolve(cli_dirs: &[PathBuf], cli_lock: Option<&Path>) -> Self {
        let lock = cli_lock.map(Path::to_owned).or_else(|| {
            std::env::var_os(LOCK_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        Self::new(plugin_dirs(cli_dirs), lock).with_isolation(Isolation::from_env())
    }

    /// A policy with its inputs given (no environment is read).
    pub fn new(dirs: Vec<PluginDir>, explicit_lock: Option<PathBuf>) -> Self {
        Self {
            dirs,
            explicit_lock,
            locks: Mutex::new(HashMap::new()),
            isolation: Isolation::None,
        }
    }

    /// Runs the plugins `isolation` covers out of process ([`crate::isolate`]).
    pub fn with_isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Which plugins run out of process.
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// The directories searched, in order.
    pub fn dirs(&self) -> &[PluginDir] {
        &self.dirs
    }

    /// The lock given explicitly, if any.
    pub fn explicit_lock(&self) -> Option<&Path> {
        self.explicit_lock.as_deref()
    }

    /// The lock in force for the plugin file at `path`: `None` when there is none, an error
    /// when there is one that cannot be used.
    pub fn lock_for(&self, path: &Path) -> Result<Option<Lock>, TrustError> {
        let lock_path = match &self.explicit_lock {
            Some(l) => l.clone(),
            None => {
                let dir = path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let candidate = dir.join(DIR_LOCK_NAME);
                if candidate.symlink_metadata().is_err() {
                    return Ok(None);
                }
                candidate
            }
        };
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks
            .entry(lock_path.clone())
            .or_insert_with(|| Lock::load(&lock_path))
            .clone()
            .map(Some)
    }

    /// Checks the file at `path` under this policy (trust rules and the lock in force).
    pub fn check(&self, path: &Path) -> Result<PluginFile, LoadError> {
        let lock = self.lock_for(path).map_err(LoadError::Untrusted)?;
        PluginFile::check(path, lock.as_ref())
    }

    /// Loads every plugin file of the directories. Never fails: a file that cannot be
    /// loaded is recorded in [`Registry::rejected`] and the rest still load.
    pub fn load(&self) -> Registry {
        let (files, dir_errors) = candidate_files(&self.dirs);
        let mut registry = Registry::with_dir_errors(dir_errors);
        for (path, _) in files {
            let loaded = self
                .check(&path)
                .and_then(|file| file.load_traced(&mut Progress::default(), &self.isolation));
            match loaded {
                Ok(backend) => registry.insert(backend),
                Err(reason) => {
                    tracing::debug!(path = %path.display(), %reason, "plugin rejected");
                    registry.reject(Rejected { path, reason });
                }
            }
        }
        registry
    }

    /// Everything the host can tell about one file, opening it as a library only if this
    /// policy allows it.
    pub fn inspect(&self, path: &Path) -> Inspection {
        let mut progress = Progress::default();
        let result = self
            .check(path)
            .and_then(|file| file.load_traced(&mut progress, &self.isolation));
        crate::plugins::inspect::describe(path, &progress, result)
    }
}

impl Registry {
    /// Loads every plugin file in `dirs` under the default policy for them (no explicit
    /// lock; each directory's `plugins.lock` applies). See [`PluginPolicy::load`].
    pub fn load(dirs: &[PluginDir]) -> Self {
        PluginPolicy::new(dirs.to_vec(), None).load()
    }
}
