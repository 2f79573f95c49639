//! The registry of loaded backends, mirroring the original's `backend` package:
//! [`Registry::each_backend`] visits backends in sorted alias order and
//! [`Registry::new_backend_provider`] makes a provider by alias.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RString, Tuple2};
use plugin_api::ffi::{BackendMod_Ref, FfiLogger_TO};
use plugin_api::ProviderConfig;

use crate::backend::Provider;
use crate::error::{HostError, LoadError, Rejected};
use crate::loader::{candidate_files, open_plugin, OpenedPlugin, PluginDir};
use crate::logger::HostLogger;
use crate::trust::{lock_for_dir, Lock, TrustError};

/// A loaded backend (the original's `Backend` struct, plus where it came from).
#[derive(Clone)]
pub struct Backend {
    /// What users select it by, e.g. `fake`.
    pub alias: String,
    /// E.g. `Fake`.
    pub human_readable_name: String,
    /// Config keys and their help, sorted by key.
    pub provider_help: BTreeMap<String, String>,
    /// The plugin's own version.
    pub plugin_version: String,
    /// The plugin-api version the plugin was built against.
    pub plugin_api_version: String,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// The file's SHA-256, when a lock was checked.
    pub sha256: Option<String>,
    /// The abi_stable ABI version in the plugin's header.
    pub abi: (u32, u32),
    module: BackendMod_Ref,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("alias", &self.alias)
            .field("human_readable_name", &self.human_readable_name)
            .field("plugin_version", &self.plugin_version)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Reads a loaded root module's description and hands it the host's logger.
    fn from_opened(path: &Path, opened: OpenedPlugin) -> Self {
        let module = opened.module;
        let alias = module.alias()().as_str().to_owned();
        let provider_help = module.help()()
            .into_iter()
            .map(|Tuple2(k, v)| (k.as_str().to_owned(), v.as_str().to_owned()))
            .collect();
        module.set_logger()(FfiLogger_TO::from_value(
            HostLogger::new(alias.clone()),
            TD_Opaque,
        ));
        Self {
            human_readable_name: module.human_readable_name()().as_str().to_owned(),
            plugin_version: module.plugin_version()().as_str().to_owned(),
            plugin_api_version: opened.plugin_api_version.to_owned(),
            path: path.to_owned(),
            sha256: opened.facts.sha256,
            abi: opened.abi,
            provider_help,
            alias,
            module,
        }
    }

    /// Makes a provider of this backend from `config`.
    pub fn new_provider(&self, config: &ProviderConfig) -> Result<Provider, HostError> {
        let raw = config
            .iter()
            .map(|(k, v)| Tuple2(RString::from(k), RString::from(v)))
            .collect();
        match self.module.new_provider()(raw).into_result() {
            Ok(inner) => Ok(Provider::new(Arc::from(self.alias.as_str()), inner)),
            Err(error) => Err(HostError::Backend {
                alias: self.alias.clone(),
                call: "new_provider",
                error,
            }),
        }
    }

    /// Whether the backend documents `key` in its help.
    pub fn knows_key(&self, key: &str) -> bool {
        self.provider_help.contains_key(&key.to_ascii_uppercase())
    }
}

/// Every backend that loaded, and every file that did not.
#[derive(Debug, Default)]
pub struct Registry {
    backends: BTreeMap<String, Backend>,
    rejected: Vec<Rejected>,
    dir_errors: Vec<HostError>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads every plugin file in `dirs` (see [`crate::loader`]), with the directory locks
    /// of [`crate::trust`]. Never fails: a file that cannot be loaded is recorded in
    /// [`Registry::rejected`] and the rest still load.
    pub fn load(dirs: &[PluginDir]) -> Self {
        Self::load_locked(dirs, None)
    }

    /// [`Registry::load`] with an explicit plugin lock (`--plugin-lock`) that applies to
    /// every directory. A lock that cannot be used refuses every file.
    pub fn load_locked(dirs: &[PluginDir], lock: Option<&Path>) -> Self {
        let (files, dir_errors) = candidate_files(dirs);
        let mut registry = Self {
            dir_errors,
            ..Self::default()
        };
        let explicit: Option<Result<Lock, TrustError>> = lock.map(Lock::load);
        let mut dir_locks: Vec<Option<Option<Result<Lock, TrustError>>>> = vec![None; dirs.len()];
        for (path, dir) in files {
            let lock = match &explicit {
                Some(l) => Some(l.clone()),
                None => dir_locks[dir]
                    .get_or_insert_with(|| lock_for_dir(None, &dirs[dir].path))
                    .clone(),
            };
            match lock {
                Some(Err(e)) => registry.rejected.push(Rejected {
                    path,
                    reason: LoadError::Untrusted(e),
                }),
                Some(Ok(lock)) => {
                    registry.load_file(&path, Some(&lock));
                }
                None => {
                    registry.load_file(&path, None);
                }
            }
        }
        registry
    }

    /// Loads one file into the registry; a failure is recorded, not returned.
    pub fn load_file(&mut self, path: &Path, lock: Option<&Lock>) -> Option<&Backend> {
        let opened = match open_plugin(path, lock) {
            Ok(o) => o,
            Err(reason) => {
                tracing::debug!(path = %path.display(), %reason, "plugin rejected");
                self.rejected.push(Rejected {
                    path: path.to_owned(),
                    reason,
                });
                return None;
            }
        };
        let alias = opened.module.alias()().as_str().to_owned();
        if let Some(first) = self.backends.get(&alias) {
            self.rejected.push(Rejected {
                path: path.to_owned(),
                reason: LoadError::DuplicateAlias {
                    alias,
                    first: first.path.clone(),
                },
            });
            return None;
        }
        let backend = Backend::from_opened(path, opened);
        tracing::debug!(alias = %backend.alias, path = %path.display(), "plugin loaded");
        Some(self.backends.entry(alias).or_insert(backend))
    }

    /// Visits every backend in sorted alias order (the original's `EachBackend`).
    pub fn each_backend(&self, mut f: impl FnMut(&Backend)) {
        for b in self.backends.values() {
            f(b);
        }
    }

    /// The backends in sorted alias order.
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.backends.values()
    }

    /// The backend with `alias`.
    pub fn backend(&self, alias: &str) -> Result<&Backend, HostError> {
        self.backends
            .get(alias)
            .ok_or_else(|| HostError::UnknownBackend(alias.to_owned()))
    }

    /// Makes a provider of backend `alias` (the original's `NewBackendProvider`).
    pub fn new_backend_provider(
        &self,
        alias: &str,
        config: &ProviderConfig,
    ) -> Result<Provider, HostError> {
        self.backend(alias)?.new_provider(config)
    }

    /// Files that were found but not loaded.
    pub fn rejected(&self) -> &[Rejected] {
        &self.rejected
    }

    /// Plugin directories the user named that could not be read.
    pub fn dir_errors(&self) -> &[HostError] {
        &self.dir_errors
    }
}
