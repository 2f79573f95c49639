//! An instance's working directory: made private, named so a reaper can tell whose it is,
//! removed on `stop` (or when dropped, as a last line of defence).

use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::sdk::{instances, spawn_blocking};
use crate::BackendError;

/// A working directory `<base>/host-<id>` (mode 0700), where `<id>` is a fresh
/// [`instances::instance_name`] of the backend's alias: the instance's id.
#[derive(Debug)]
pub struct WorkDir {
    id: String,
    path: PathBuf,
    keep: bool,
    removed: std::sync::atomic::AtomicBool,
}

impl WorkDir {
    /// Makes a fresh working directory in `base` for an instance of backend `alias`.
    pub fn create(base: &Path, alias: &str) -> Result<Self, BackendError> {
        for _ in 0..100 {
            let id = instances::instance_name(alias);
            let path = base.join(format!("host-{id}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    return Ok(Self {
                        id,
                        path,
                        keep: false,
                        removed: Default::default(),
                    })
                }
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

    /// Keeps the directory on `remove` and drop (for debugging), with a warning.
    pub fn keep(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// The instance id the directory is named after.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `name` in the directory (mode 0700, synced), off the caller's thread. A second
    /// write of the same name is the original's stale-VM error ([`BackendError::stale_vm`]).
    pub async fn write_script(&self, name: &str, bytes: &[u8]) -> Result<(), BackendError> {
        let path = self.path.join(name);
        let bytes = bytes.to_vec();
        spawn_blocking(move || {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o700)
                .open(&path)?;
            f.write_all(&bytes)?;
            f.sync_all()
        })
        .await?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => BackendError::stale_vm(),
            _ => BackendError::other(format!("cannot write the build script: {e}")),
        })
    }

    /// The path of script `name`, written by [`Self::write_script`]; an error saying no
    /// script was uploaded when there is none.
    pub fn script(&self, name: &str) -> Result<PathBuf, BackendError> {
        let path = self.path.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(BackendError::other("no script was uploaded"))
        }
    }

    /// Removes the directory and everything in it, off the caller's thread (a large tree
    /// takes a while). Harmless to call twice.
    pub async fn remove(&self) -> Result<(), BackendError> {
        use std::sync::atomic::Ordering;
        if self.removed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        if self.keep {
            tracing::warn!(
                "keeping the working directory of instance {} at {}",
                self.id,
                self.path.display()
            );
            return Ok(());
        }
        let path = self.path.clone();
        match spawn_blocking(move || std::fs::remove_dir_all(&path)).await? {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::other(format!(
                "cannot remove the working directory {}: {e}",
                self.path.display()
            ))),
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep && !*self.removed.get_mut() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
