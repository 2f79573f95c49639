//! What must hold before a plugin file is opened. Opening a shared library runs its code
//! (its initialisers run inside `dlopen`, before any ABI check), so these checks come first:
//!
//! - the path (symlinks resolved) is a regular file;
//! - neither the file nor the directory holding it (nor, for a symlink, the directory of
//!   the link) is writable by group or others;
//! - the file and those directories are owned by root or by the user running the host (the
//!   checks sudo makes before loading a plugin);
//! - when a plugin lock is in force, the file's SHA-256 is the one the lock pins for its
//!   name (as Vault pins plugins).
//!
//! A refused file is never opened as a library; the reason names the file, what was found
//! and what is required.
//!
//! # One file, checked and loaded
//! [`open_checked`] opens the file **once** and answers every question from that
//! descriptor: owner and mode by `fstat`, the hash from its contents, the ELF headers from
//! its bytes; the loader then `dlopen`s that same descriptor (`/proc/self/fd/N` on Linux).
//! A file swapped for another (a `rename` over it) between the check and the load is not
//! the one loaded: the checked one is. What remains is a change *inside* the checked file
//! while it is open, which takes write permission on it, and the checks above allow that only
//! to root and to the user running the host. On macOS, which has no `/proc`, the library is
//! opened again by its resolved path: the guarantee there is only as strong as the
//! directory checks (no one else can write to the directory, so no one else can swap it).
//!
//! # Plugin locks
//! A lock is a text file of `sha256  filename` lines, as `sha256sum` prints them (`#`
//! starts a comment). The lock in force for a plugin file is the one given with
//! `--plugin-lock FILE` (or `HOST_PLUGIN_LOCK`), else `plugins.lock` in the file's own
//! directory if there is one ([`crate::PluginPolicy`] applies this rule everywhere). Files
//! are matched by name. The lock must pass the same ownership and write checks as a plugin.
//! `host list-backends --write-lock FILE` writes one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

/// The name of a plugin directory's own lock file.
pub const DIR_LOCK_NAME: &str = "plugins.lock";

/// The environment variable naming a plugin lock.
pub const LOCK_ENV: &str = "HOST_PLUGIN_LOCK";

/// The largest lock file read (a lock lists a few dozen files).
pub const MAX_LOCK_BYTES: u64 = 1 << 20;

/// Why a file is not trusted. Each message is one line naming the file's state and the
/// requirement.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TrustError {
    /// Not a regular file.
    #[error("not a regular file (it is a {0})")]
    NotAFile(&'static str),
    /// Cannot be examined.
    #[error("cannot examine {what}: {source}")]
    Io {
        /// What could not be examined, e.g. the path.
        what: String,
        /// The OS error.
        #[source]
        source: Arc<std::io::Error>,
    },
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
    #[error("{} is owned by uid {uid}; a plugin {what} must be owned by root or by the user running the host (uid {euid})", path.display())]
    Owner {
        /// The file or directory.
        path: PathBuf,
        /// "file" or "directory".
        what: &'static str,
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
    /// SHA-256 of the descriptor's contents, when it was computed (a lock is in force).
    pub sha256: Option<String>,
}

/// A file that passed the checks, still open: what is loaded or read next is this file,
/// whatever happens to its path.
#[derive(Debug)]
pub struct CheckedFile {
    /// The open file.
    pub file: File,
    /// What the checks found.
    pub facts: FileFacts,
}

/// A parsed plugin lock.
#[derive(Debug, Clone)]
pub struct Lock {
    /// Where it was read from.
    pub path: PathBuf,
    entries: BTreeMap<String, String>,
}

impl Lock {
    /// Reads a lock after checking it as strictly as a plugin (from the checked descriptor,
    /// at most [`MAX_LOCK_BYTES`]).
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let bad = |reason: String| TrustError::BadLock {
            lock: path.to_owned(),
            reason,
        };
        let checked = open_checked(path, None).map_err(|e| bad(e.to_string()))?;
        let mut text = String::new();
        (&checked.file)
            .take(MAX_LOCK_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| bad(e.to_string()))?;
        if text.len() as u64 > MAX_LOCK_BYTES {
            return Err(bad(format!("larger than {MAX_LOCK_BYTES} bytes")));
        }
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
                    "line {}: expected `<sha256>  <file name>`, found {:?}",
                    n + 1,
                    crate::text::escape_controls(line)
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

    /// Writes a lock for `files` (name, hash) to `path`: mode 0644 whatever the umask (a
    /// lock writable by others would disable every plugin it pins), atomically (a temporary
    /// file in the same directory, then a rename), so a reader never sees half a lock.
    pub fn write(path: &Path, files: &[(String, String)]) -> std::io::Result<()> {
        use std::io::Write as _;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)?;
            // The mode given to open is reduced by the umask: set it outright.
            f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            f.write_all(Self::render(files).as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// The SHA-256 of everything `reader` yields, as lowercase hex.
pub fn sha256_of(mut reader: impl std::io::Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
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

/// The SHA-256 of the file at `path`, as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    sha256_of(File::open(path)?)
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

fn io_error(what: &Path) -> impl FnOnce(std::io::Error) -> TrustError + '_ {
    move |e| TrustError::Io {
        what: what.display().to_string(),
        source: Arc::new(e),
    }
}

/// Mode and owner rules shared by files and directories.
fn check_meta(
    path: &Path,
    meta: &std::fs::Metadata,
    what: &'static str,
) -> Result<u32, TrustError> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(TrustError::Writable {
            path: path.to_owned(),
            mode,
            what,
        });
    }
    let euid = euid();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(TrustError::Owner {
            path: path.to_owned(),
            what,
            uid: meta.uid(),
            euid,
        });
    }
    Ok(mode)
}

pub(crate) fn check_dir(dir: &Path) -> Result<(), TrustError> {
    let meta = std::fs::metadata(dir).map_err(io_error(dir))?;
    check_meta(dir, &meta, "directory").map(drop)
}

/// Opens the file at `path` once and checks it, as the module docs say, through that
/// descriptor; with a `lock`, hashes the descriptor's contents against it. The file is not
/// opened as a library here.
pub fn open_checked(path: &Path, lock: Option<&Lock>) -> Result<CheckedFile, TrustError> {
    let link_meta = std::fs::symlink_metadata(path).map_err(io_error(path))?;
    let link_dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let resolved = if link_meta.file_type().is_symlink() {
        // The link's own directory decides where it points: it is held to the same rules.
        check_dir(link_dir)?;
        std::fs::canonicalize(path).map_err(|e| TrustError::Io {
            what: format!("{} (the symlink does not resolve)", path.display()),
            source: Arc::new(e),
        })?
    } else {
        std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
    };
    if let Some(dir) = resolved.parent() {
        check_dir(dir)?;
    }
    // O_NOFOLLOW: the resolved path must not have become a link since; O_NONBLOCK: opening
    // a FIFO must not wait for a writer (it is refused below, as any non-regular file).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&resolved)
        .map_err(io_error(&resolved))?;
    let meta = file.metadata().map_err(io_error(&resolved))?;
    if !meta.is_file() {
        return Err(TrustError::NotAFile(if meta.is_dir() {
            "directory"
        } else {
            "special file"
        }));
    }
    let mode = check_meta(&resolved, &meta, "file")?;
    let mut facts = FileFacts {
        size: meta.len(),
        uid: meta.uid(),
        mode,
        sha256: None,
        resolved,
    };
    if let Some(lock) = lock {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let found = {
            // From offset 0 of this descriptor, whatever its position.
            let reader = PositionalReader { file: &file, at: 0 };
            sha256_of(reader).map_err(io_error(&facts.resolved))?
        };
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
    Ok(CheckedFile { file, facts })
}

/// Reads a file from a given offset on, without moving its descriptor's position.
pub(crate) struct PositionalReader<'a> {
    pub(crate) file: &'a File,
    pub(crate) at: u64,
}

impl std::io::Read for PositionalReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt as _;
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// [`open_checked`] for callers that only want the verdict and the facts.
pub fn check_plugin(path: &Path, lock: Option<&Lock>) -> Result<FileFacts, TrustError> {
    open_checked(path, lock).map(|c| c.facts)
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
