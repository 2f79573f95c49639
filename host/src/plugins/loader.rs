//! Finding plugin files and loading them.
//!
//! Where plugins are looked for, first match wins:
//! 1. the directories given with `--plugin-dir` (each must exist);
//! 2. otherwise the colon-separated directories in `HOST_PLUGIN_PATH` (each must exist);
//! 3. otherwise `plugins/` beside the host executable and the executable's own directory
//!    (either may be missing), so that the output of a plain `cargo build` works as it is.
//!
//! Every file with the platform's library extension (`.so`, `.dylib`) is tried, in sorted
//! order per directory. A file found twice (the same file through two directories) is loaded
//! once. A library cannot be unloaded (abi_stable never unloads one): a loaded file stays for
//! the life of the process.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{HostError, LoadError};
use crate::isolate::Isolation;
use crate::plugins::loaded::Backend;
use crate::plugins::trust::{self, CheckedFile, FileFacts, Lock};
use crate::progress::Progress;

/// The environment variable that lists plugin directories.
pub const PLUGIN_PATH_ENV: &str = "HOST_PLUGIN_PATH";

/// A directory to look for plugins in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginDir {
    /// The directory.
    pub path: PathBuf,
    /// Given by the user: a missing directory is an error, not silence.
    pub explicit: bool,
}

/// The directories to search, by the rules in this module's docs.
pub fn plugin_dirs(cli_dirs: &[PathBuf]) -> Vec<PluginDir> {
    plugin_dirs_from(
        cli_dirs,
        std::env::var_os(PLUGIN_PATH_ENV).as_deref(),
        std::env::current_exe().ok().as_deref(),
    )
}

/// [`plugin_dirs`] with its inputs given, for tests and embedders.
pub fn plugin_dirs_from(
    cli_dirs: &[PathBuf],
    env_path: Option<&std::ffi::OsStr>,
    exe: Option<&Path>,
) -> Vec<PluginDir> {
    if !cli_dirs.is_empty() {
        return cli_dirs
            .iter()
            .map(|p| PluginDir {
                path: p.clone(),
                explicit: true,
            })
            .collect();
    }
    if let Some(env_path) = env_path.filter(|p| !p.is_empty()) {
        return std::env::split_paths(env_path)
            .filter(|p| !p.as_os_str().is_empty())
            .map(|path| PluginDir {
                path,
                explicit: true,
            })
            .collect();
    }
    let Some(exe_dir) = exe.and_then(Path::parent) else {
        return Vec::new();
    };
    vec![
        PluginDir {
            path: exe_dir.join("plugins"),
            explicit: false,
        },
        PluginDir {
            path: exe_dir.to_path_buf(),
            explicit: false,
        },
    ]
}

/// Whether `path` has the platform's shared-library extension.
pub fn is_library_file_name(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e == std::env::consts::DLL_EXTENSION)
}

/// The candidate files of `dirs`, in order, each once, with the index of the directory each
/// was found in. Errors are directories the user named that cannot be read.
pub fn candidate_files(dirs: &[PluginDir]) -> (Vec<(PathBuf, usize)>, Vec<HostError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (index, dir) in dirs.iter().enumerate() {
        let entries = match std::fs::read_dir(&dir.path) {
            Ok(e) => e,
            Err(error) => {
                if dir.explicit {
                    errors.push(HostError::PluginDir {
                        path: dir.path.clone(),
                        error,
                    });
                }
                continue;
            }
        };
        let mut here: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_library_file_name(p))
            .collect();
        here.sort();
        for path in here {
            let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if seen.insert(key) {
                files.push((path, index));
            }
        }
    }
    (files, errors)
}

/// A plugin file that passed the trust checks and the ELF check, held open:
/// [`PluginFile::load`] loads exactly the file that was checked, even if its path now names
/// another (see [`crate::plugins::trust`]).
#[derive(Debug)]
pub struct PluginFile {
    path: PathBuf,
    checked: CheckedFile,
}

impl PluginFile {
    /// Opens `path` and checks it (trust rules, `lock` if one is in force, ELF headers)
    /// without opening it as a library.
    pub fn check(path: &Path, lock: Option<&Lock>) -> Result<Self, LoadError> {
        let checked = trust::open_checked(path, lock).map_err(LoadError::Untrusted)?;
        crate::plugins::elf::check(&checked.file).map_err(LoadError::Elf)?;
        Ok(Self {
            path: path.to_owned(),
            checked,
        })
    }

    /// What the checks found.
    pub fn facts(&self) -> &FileFacts {
        &self.checked.facts
    }

    /// Opens the checked file as a library: header, plugin-api version and layout checks,
    /// root module initialisation; then hands the plugin the host's logger.
    pub fn load(self) -> Result<Backend, LoadError> {
        let backend = self.load_traced(&mut Progress::default(), &Isolation::None)?;
        backend.connect_logger();
        Ok(backend)
    }

    /// Probes the file in a child ([`crate::plugins::probe`]), then loads it here, or, when
    /// `isolation` covers its alias, makes it a backend served out of process
    /// ([`crate::isolate`]) without ever opening it here.
    pub(crate) fn load_traced(
        self,
        progress: &mut Progress,
        isolation: &Isolation,
    ) -> Result<Backend, LoadError> {
        progress.facts = Some(self.checked.facts.clone());
        let description = match crate::plugins::probe::probe(&self.checked, progress) {
            Ok(d) => d,
            Err(e) => {
                keep_open(self.checked.file);
                return Err(e);
            }
        };
        if isolation.any() {
            match (description, crate::plugins::probe::executable()) {
                (Some(d), Some(exe)) if isolation.covers(&d.alias) => {
                    progress.plugin_api_version = Some(d.plugin_api_version.clone());
                    let server =
                        crate::isolate::Server::new(d.alias.clone(), exe, self.checked.file);
                    return Ok(Backend::isolated(self.path, d, server, self.checked.facts));
                }
                (Some(_), Some(_)) => {}
                _ => {
                    keep_open(self.checked.file);
                    return Err(LoadError::Other(
                        "plugins are to be isolated, but there is no plugin server executable \
                         (a program embedding the host library calls host::probe::serve_if_asked)"
                            .into(),
                    ));
                }
            }
        }
        let library = descriptor_path(&self.checked.file, &self.checked.facts.resolved);
        let opened = crate::abi::load::open_root_module(&library, progress);
        keep_open(self.checked.file);
        let module = opened?;
        Ok(Backend::new(self.path, module, self.checked.facts))
    }
}

/// The path `dlopen` is given for a checked file: its descriptor's, where the OS has one.
fn descriptor_path(file: &std::fs::File, _resolved: &Path) -> PathBuf {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        _resolved.to_owned()
    }
}

/// Keeps a descriptor that was handed to `dlopen` open for the life of the process. The
/// dynamic loader knows a library by the name it was opened with and hands back the loaded
/// one for a name it has seen, and libraries are never unloaded: were the descriptor closed,
/// its number (and so its `/proc/self/fd/N` name) could come back for another file, which
/// would then never be loaded. One descriptor per plugin file.
fn keep_open(file: std::fs::File) {
    static KEPT: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    KEPT.lock().unwrap_or_else(|e| e.into_inner()).push(file);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_dirs_win_over_the_environment_and_the_defaults() {
        let cli = [PathBuf::from("/a"), PathBuf::from("/b")];
        let dirs = plugin_dirs_from(&cli, Some("/c:/d".as_ref()), Some(Path::new("/x/host")));
        assert_eq!(dirs.iter().map(|d| d.path.clone()).collect::<Vec<_>>(), cli);
        assert!(dirs.iter().all(|d| d.explicit));
    }

    #[test]
    fn the_environment_wins_over_the_defaults() {
        let dirs = plugin_dirs_from(&[], Some("/c::/d".as_ref()), Some(Path::new("/x/host")));
        let paths: Vec<_> = dirs.iter().map(|d| d.path.clone()).collect();
        assert_eq!(paths, [PathBuf::from("/c"), PathBuf::from("/d")]);
    }

    #[test]
    fn the_defaults_are_beside_the_executable() {
        let dirs = plugin_dirs_from(&[], Some("".as_ref()), Some(Path::new("/x/bin/host")));
        assert_eq!(
            dirs,
            [
                PluginDir {
                    path: "/x/bin/plugins".into(),
                    explicit: false
                },
                PluginDir {
                    path: "/x/bin".into(),
                    explicit: false
                },
            ]
        );
    }
}
