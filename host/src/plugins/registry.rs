//! The registry of loaded backends, mirroring the original's `backend` package:
//! [`Registry::each_backend`] visits backends in sorted alias order and
//! [`Registry::new_backend_provider`] makes a provider by alias.

use std::collections::BTreeMap;

use plugin_api::ProviderConfig;

use crate::backend::Provider;
use crate::error::{HostError, LoadError, Rejected};

pub use super::loaded::Backend;

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

    pub(crate) fn with_dir_errors(dir_errors: Vec<HostError>) -> Self {
        Self {
            dir_errors,
            ..Self::default()
        }
    }

    pub(crate) fn reject(&mut self, rejected: Rejected) {
        self.rejected.push(rejected);
    }

    /// Adds a loaded backend; a second file with an alias already present is rejected,
    /// naming both files.
    pub(crate) fn insert(&mut self, backend: Backend) {
        if let Some(first) = self.backends.get(&backend.alias) {
            let reason = LoadError::DuplicateAlias {
                alias: backend.alias.clone(),
                first: first.path.clone(),
            };
            self.rejected.push(Rejected {
                path: backend.path,
                reason,
            });
            return;
        }
        tracing::debug!(alias = %backend.alias, path = %backend.path.display(), "plugin loaded");
        backend.connect_logger();
        self.backends.insert(backend.alias.clone(), backend);
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
