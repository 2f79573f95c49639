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

use abi_stable::library::{abi_header_from_path, LibraryError, RootModuleError};
use plugin_api::ffi::BackendMod_Ref;

use crate::error::{HostError, LoadError};
use crate::trust::{self, FileFacts, Lock};

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

/// A successfully opened plugin: its root module and what its header says.
#[derive(Clone)]
pub struct OpenedPlugin {
    /// The root module.
    pub module: BackendMod_Ref,
    /// The plugin-api version the plugin was built against.
    pub plugin_api_version: &'static str,
    /// The abi_stable ABI version in the plugin's header (major, minor).
    pub abi: (u32, u32),
    /// What the trust checks found.
    pub facts: FileFacts,
}

/// How far [`open_plugin`] got, for `host inspect`: each step's finding, then the error
/// that stopped it (if any).
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// Trust checks passed with these facts.
    pub facts: Option<FileFacts>,
    /// The abi_stable header's (major, minor).
    pub abi: Option<(u32, u32)>,
    /// The plugin-api version in the header.
    pub plugin_api_version: Option<String>,
}

/// Opens `path` as a backend plugin: the trust checks of [`crate::trust`] (with `lock`, if
/// one is in force) first, then `dlopen`, header, version and layout checks, and root
/// module initialisation.
pub fn open_plugin(path: &Path, lock: Option<&Lock>) -> Result<OpenedPlugin, LoadError> {
    open_plugin_traced(path, lock, &mut Progress::default())
}

/// [`open_plugin`], recording what it found on the way in `progress`.
pub fn open_plugin_traced(
    path: &Path,
    lock: Option<&Lock>,
    progress: &mut Progress,
) -> Result<OpenedPlugin, LoadError> {
    let facts = trust::check_plugin(path, lock).map_err(LoadError::Untrusted)?;
    progress.facts = Some(facts.clone());
    crate::elf::check(&facts.resolved).map_err(LoadError::Open)?;
    let abi_header = abi_header_from_path(path).map_err(library_error)?;
    let abi = (abi_header.abi_major, abi_header.abi_minor);
    progress.abi = Some(abi);
    let header = abi_header.upgrade().map_err(library_error)?;
    let plugin_api_version = header.version_strings().version.as_str();
    progress.plugin_api_version = Some(plugin_api_version.to_owned());
    let module = init_root_module(header, plugin_api_version)?;
    Ok(OpenedPlugin {
        module,
        plugin_api_version,
        abi,
        facts,
    })
}

/// Checks the plugin's layout against the ABI of the plugin-api version it was built with
/// (an older 1.x has fewer appended fields, which abi_stable refuses to compare against the
/// current types) and returns its root module as the current type.
fn init_root_module(
    header: &'static abi_stable::library::LibHeader,
    plugin_api_version: &str,
) -> Result<BackendMod_Ref, LoadError> {
    let minor = plugin_api_version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u64>().ok());
    let same_major = plugin_api_version.split('.').next() == Some(&host_major().to_string());
    if same_major && minor == Some(0) {
        header
            .ensure_layout::<plugin_api::ffi::v1_0::BackendMod_Ref>()
            .map_err(library_error)?;
        // SAFETY: the layout was just checked against plugin-api 1.0's, and the current
        // types differ from it only by fields appended to prefix types (root module,
        // trait vtables), which are reached through accessors that check at run time
        // whether the plugin has them.
        unsafe { header.init_root_module_with_unchecked_layout::<BackendMod_Ref>() }
            .map_err(library_error)
    } else {
        header
            .init_root_module::<BackendMod_Ref>()
            .map_err(library_error)
    }
}

fn host_major() -> u64 {
    plugin_api::PLUGIN_API_VERSION
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(1)
}

/// Turns abi_stable's error into a one-line reason a person can act on.
fn library_error(e: LibraryError) -> LoadError {
    match e {
        LibraryError::OpenError { err, path } => {
            // dlerror() starts with the path, which the caller shows already.
            let text = err.to_string();
            let prefix = format!("{}: ", path.display());
            let text = text.split_once(&prefix).map_or(text.as_str(), |(_, t)| t);
            LoadError::Open(one_line(text))
        }
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin,
        LibraryError::InvalidAbiHeader(h) => {
            let found = if h.magic_string == abi_stable::library::AbiHeader::VALUE.magic_string {
                format!("abi_stable ABI {}.{}", h.abi_major, h.abi_minor)
            } else {
                "no abi_stable header at all".to_owned()
            };
            LoadError::AbiStableVersion {
                found,
                host_major: host_major(),
            }
        }
        LibraryError::IncompatibleVersionNumber { actual_version, .. } => {
            LoadError::PluginApiVersion {
                found: actual_version.to_string(),
                host_major: host_major(),
            }
        }
        LibraryError::AbiInstability(err) => {
            let full = err.to_string();
            tracing::debug!(target: "host::loader", "full ABI mismatch report:\n{full}");
            LoadError::Layout {
                host: plugin_api::PLUGIN_API_VERSION.to_owned(),
                summary: layout_summary(&full),
            }
        }
        LibraryError::RootModule { err, .. } => LoadError::RootModule(match err {
            RootModuleError::Unwound => "it panicked".to_owned(),
            other => one_line(&other.to_string()),
        }),
        other => LoadError::Other(one_line(&other.to_string())),
    }
}

/// abi_stable's layout report runs to thousands of lines; its `Error:` lines say what
/// differs.
pub fn layout_summary(full: &str) -> String {
    let errors: Vec<&str> = full
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Error:"))
        .collect();
    if errors.is_empty() {
        one_line(full.lines().next().unwrap_or("the layouts differ"))
    } else {
        let mut unique: Vec<&str> = Vec::new();
        for e in errors {
            if !unique.contains(&e) {
                unique.push(e);
            }
        }
        let shown: Vec<&str> = unique.iter().take(3).copied().collect();
        let more = unique.len().saturating_sub(shown.len());
        let mut s = shown.join("; ");
        if more > 0 {
            s.push_str(&format!(
                " (and {more} more; run with -vv for the full report)"
            ));
        }
        s
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
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

    #[test]
    fn the_layout_summary_keeps_the_error_lines_only() {
        let full = "header\n  Error: field a differs\nnoise\n  Error: field b differs\n Error: field a differs\n";
        assert_eq!(
            layout_summary(full),
            "Error: field a differs; Error: field b differs"
        );
    }
}
