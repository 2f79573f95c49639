//! The host's errors, one variant per failure mode, each written for the person who has to
//! act on it. Errors keep their cause as [`std::error::Error::source`].

use std::path::PathBuf;

use plugin_api::{BackendError, ErrorKind};

/// Why a plugin file was not loaded. Each message is one line.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum LoadError {
    /// The file could not be opened as a shared library (dlopen's reason).
    #[error("not a loadable shared library: {0}")]
    Open(String),
    /// The file's ELF headers are damaged or for another machine.
    #[error("not a loadable shared library: {0}")]
    Elf(String),
    /// A shared library without the plugin root module.
    #[error("not a backend plugin: it does not export a plugin-api root module")]
    NotAPlugin,
    /// Refused by the checks made before opening a file.
    #[error("refused: {0}")]
    #[serde(skip)]
    Untrusted(#[source] crate::plugins::trust::TrustError),
    /// Built with an abi_stable whose header this host cannot read.
    #[error("built with an incompatible abi_stable ({found}; this host uses abi_stable ABI 0.11): rebuild the plugin against plugin-api {host_major}.x")]
    AbiStableVersion {
        /// The header found in the file.
        found: String,
        /// The host's plugin-api major version.
        host_major: u64,
    },
    /// Built against another major version of plugin-api.
    #[error("built against plugin-api {found}, this host supports {host_major}.x: rebuild the plugin against plugin-api {host_major}.x")]
    PluginApiVersion {
        /// The plugin-api version the plugin was built against.
        found: String,
        /// The host's plugin-api major version.
        host_major: u64,
    },
    /// The root module's layout differs from what this host expects.
    #[error("ABI layout mismatch with this host's plugin-api {host}: {summary}")]
    Layout {
        /// The host's plugin-api version.
        host: String,
        /// abi_stable's `Error:` lines, joined.
        summary: String,
    },
    /// The plugin's own initialiser failed or panicked.
    #[error("the plugin's root module failed to initialise: {0}")]
    RootModule(String),
    /// Another file already provides this alias.
    #[error("backend alias {alias:?} is already provided by {}", first.display())]
    DuplicateAlias {
        /// The alias both files claim.
        alias: String,
        /// The file that was loaded first.
        first: PathBuf,
    },
    /// Opening it killed the process that tried (a child probing it, see [`crate::plugins::probe`]):
    /// a damaged or hostile file, kept out of the host.
    #[error("crashed while loading: {0}")]
    Crashed(String),
    /// Something else abi_stable reported.
    #[error("{0}")]
    Other(String),
}

/// A plugin file that was found but not loaded, and why.
#[derive(Debug)]
pub struct Rejected {
    /// The file.
    pub path: PathBuf,
    /// The reason.
    pub reason: LoadError,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// An error from using a loaded backend.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No loaded backend has this alias (the original's message).
    #[error("unknown backend provider: {0}")]
    UnknownBackend(String),
    /// A backend call failed; the error names the backend and the call.
    #[error("backend {alias}: {call} failed: {error}")]
    Backend {
        /// The backend's alias.
        alias: String,
        /// Which call, e.g. `start`.
        call: &'static str,
        /// What the plugin reported (its message escaped for a terminal).
        #[source]
        error: BackendError,
    },
    /// A plugin directory given explicitly could not be read.
    #[error("cannot read plugin directory {}: {error}", path.display())]
    PluginDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        error: std::io::Error,
    },
}

impl HostError {
    /// The kind of the backend error, if this is one.
    pub fn backend_kind(&self) -> Option<ErrorKind> {
        match self {
            HostError::Backend { error, .. } => Some(error.kind()),
            _ => None,
        }
    }

    /// Whether this says the user's configuration is wrong (a missing or invalid key), as
    /// opposed to an infrastructure failure: retrying will not help.
    pub fn is_config_error(&self) -> bool {
        matches!(
            self.backend_kind(),
            Some(ErrorKind::INVALID_CONFIG) | Some(ErrorKind::MISSING_ENDPOINT_CONFIG)
        )
    }
}
