//! What must hold before a plugin file is opened. Opening a shared library runs its code
//! (its initialisers run inside `dlopen`, before any ABI check), so these checks come first:
//!
//! - the path (symlinks resolved) is a regular file;
//! - neither the file nor the directory holding it (nor, for a symlink, the directory of
//!   the link) is writable by group or others;
//! - the file is owned by root or by the user running the host (the checks sudo makes
//!   before loading a plugin);
//! - when a plugin lock is in force, the file's SHA-256 is the one the lock pins for its
//!   name (as Vault pins plugins).
//!
//! A refused file is never opened; the reason names the file, what was found and what is
//! required.
//!
//! # Plugin locks
//! A lock is a text file of `sha256  filename` lines, as `sha256sum` prints them (`#`
//! starts a comment). The lock in force for a plugin directory is the one given with
//! `--plugin-lock FILE` (or `HOST_PLUGIN_LOCK`), else `plugins.lock` inside that directory if
//! there is one. Files are matched by name. The lock must pass the same ownership and
//! write checks as a plugin. `host list-backends --write-lock FILE` writes one.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// The name of a plugin directory's own lock file.
pub const DIR_LOCK_NAME: &str = "plugins.lock";

/// The environment variable naming a plugin lock.
pub const LOCK_ENV: &str = "HOST_PLUGIN_LOCK";

/// Why a file is not trusted. Each message is one line naming the file's state and the
/// requirement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// Not a regular file.
    #[error("not a regular file (it is a {0})")]
    NotAFile(&'static str),
    /// Cannot be examined.
    #[error("cannot examine it: {0}")]
    Io(String),
    /// Writable by group or others.
    #[error("{} is writable by group or others (mode {mode:04o}); a plugin {what} must not be: chmod go-w {}", path.display(), path.display())]
    Writable {
        /// The file or directory at fault.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// "file" or "directory".
        what: &'static str,
    },
    /// Owned by someone else.
    #[error("{} is owned by uid {uid}; a plugin must be owned by root or by the user running the host (uid {euid})", path.display())]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// The host's effective uid.
        euid: u32,
    },
    /// A lock is in force and does not list the file.
    #[error("not listed in the plugin lock {}", lock.display())]
    NotInLock {
        /// The lock file.
        lock: PathBuf,
    },
    /// A lock is in force and pins another hash.
    #[error("sha256 {found} does not match {expected} pinned by the plugin lock {}", lock.display())]
    HashMismatch {
        /// The lock file.
        lock: PathBuf,
        /// What the lock pins.
        expected: String,
        /// What the file hashes to.
        found: String,
    },
    /// The lock itself cannot be trusted or read.
    #[error("the plugin lock {} cannot be used: {reason}", lock.display())]
    BadLock {
        /// The lock file.
        lock: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What the checks found out about a file.
#[derive(Debug, Clone)]
pub struct FileFacts {
    /// The file, symlinks resolved.
    pub resolved: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Owner uid.
    pub uid: u32,
    /// Permission bits.
    pub mode: u32,
    /// SHA-256, when it was computed (a lock is in force, or it was asked for).
    pub sha256: Option<String>,
}

/// A parsed plugin lock.
#[derive(Debug, Clone)]
pub struct Lock {
    /// Where it was read from.
    pub path: PathBuf,
    entries: BTreeMap<String, String>,
}

impl Lock {
    /// Reads a lock after checking it as strictly as a plugin.
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let bad = |reason: String| TrustError::BadLock {
            lock: path.to_owned(),
            reason,
        };
        check_file(path).map_err(|e| bad(e.to_string()))?;
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let mut entries = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(2, char::is_whitespace);
            let hash = parts.next().unwrap_or_default().to_ascii_lowercase();
            let name = parts
                .next()
                .unwrap_or_default()
                .trim()
                .trim_start_matches('*');
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || name.is_empty() {
                return Err(bad(format!(
                    "line {}: expected `<sha256>  <file name>`, found {line:?}",
                    n + 1
                )));
            }
            entries.insert(name.to_owned(), hash);
        }
        Ok(Self {
            path: path.to_owned(),
            entries,
        })
    }

    /// The hash pinned for `file_name`.
    pub fn pinned(&self, file_name: &str) -> Option<&str> {
        self.entries.get(file_name).map(String::as_str)
    }

    /// Renders `sha256  name` lines for `files` (name, hash), sorted by name.
    pub fn render(files: &[(String, String)]) -> String {
        let mut sorted = files.to_vec();
        sorted.sort();
        let mut out = String::from("# plugin lock written by `host list-backends --write-lock`\n");
        for (name, hash) in sorted {
            out.push_str(&format!("{hash}  {name}\n"));
        }
        out
    }
}

/// The lock that applies to plugins in `dir`: the explicit one, else `dir/plugins.lock`.
pub fn lock_for_dir(explicit: Option<&Lock>, dir: &Path) -> Option<Result<Lock, TrustError>> {
    if let Some(l) = explicit {
        return Some(Ok(l.clone()));
    }
    let candidate = dir.join(DIR_LOCK_NAME);
    candidate
        .symlink_metadata()
        .is_ok()
        .then(|| Lock::load(&candidate))
}

/// The SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

fn check_not_writable(path: &Path, what: &'static str) -> Result<std::fs::Metadata, TrustError> {
    let meta =
        std::fs::metadata(path).map_err(|e| TrustError::Io(format!("{}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(TrustError::Writable {
            path: path.to_owned(),
            mode,
            what,
        });
    }
    Ok(meta)
}

/// Checks the file at `path` (and its directory) as the module docs say, without opening
/// it as a library.
pub fn check_file(path: &Path) -> Result<FileFacts, TrustError> {
    let link_meta = std::fs::symlink_metadata(path).map_err(|e| TrustError::Io(e.to_string()))?;
    let resolved = if link_meta.file_type().is_symlink() {
        // The link's own directory decides where it points: it must not be writable either.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            check_not_writable(dir, "directory")?;
        }
        std::fs::canonicalize(path)
            .map_err(|e| TrustError::Io(format!("the symlink does not resolve: {e}")))?
    } else {
        std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
    };
    let meta = std::fs::metadata(&resolved).map_err(|e| TrustError::Io(e.to_string()))?;
    if !meta.is_file() {
        return Err(TrustError::NotAFile(if meta.is_dir() {
            "directory"
        } else {
            "special file"
        }));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(TrustError::Writable {
            path: resolved,
            mode,
            what: "file",
        });
    }
    if let Some(dir) = resolved.parent() {
        check_not_writable(dir, "directory")?;
    }
    let euid = euid();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(TrustError::Owner {
            path: resolved,
            uid: meta.uid(),
            euid,
        });
    }
    Ok(FileFacts {
        resolved,
        size: meta.len(),
        uid: meta.uid(),
        mode,
        sha256: None,
    })
}

/// [`check_file`], then the lock if one is in force (which computes the hash).
pub fn check_plugin(path: &Path, lock: Option<&Lock>) -> Result<FileFacts, TrustError> {
    let mut facts = check_file(path)?;
    if let Some(lock) = lock {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let found = sha256_file(&facts.resolved).map_err(|e| TrustError::Io(e.to_string()))?;
        match lock.pinned(&name) {
            None => {
                return Err(TrustError::NotInLock {
                    lock: lock.path.clone(),
                })
            }
            Some(expected) if expected != found => {
                return Err(TrustError::HashMismatch {
                    lock: lock.path.clone(),
                    expected: expected.to_owned(),
                    found,
                })
            }
            Some(_) => facts.sha256 = Some(found),
        }
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_parses_sha256sum_output_and_refuses_garbage() {
        let dir = std::env::temp_dir().join(format!("host-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let lock = dir.join("plugins.lock");
        let h = "a".repeat(64);
        std::fs::write(&lock, format!("# comment\n{h}  libfake.so\n{h} *libx.so\n")).unwrap();
        std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).unwrap();
        let l = Lock::load(&lock).unwrap();
        assert_eq!(l.pinned("libfake.so"), Some(h.as_str()));
        assert_eq!(l.pinned("libx.so"), Some(h.as_str()));
        std::fs::write(&lock, "nothex  libfake.so\n").unwrap();
        let e = Lock::load(&lock).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = Lock::load(&lock).unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rendering_a_lock_sorts_by_name() {
        let text = Lock::render(&[
            ("b.so".into(), "2".repeat(64)),
            ("a.so".into(), "1".repeat(64)),
        ]);
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert!(lines[0].ends_with("  a.so") && lines[1].ends_with("  b.so"));
    }
}
