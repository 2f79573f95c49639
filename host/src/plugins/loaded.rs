//! A loaded backend: what its plugin said of itself, where it came from, and where its code
//! runs (in this process or in a plugin server).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use plugin_api::ProviderConfig;

use crate::abi::module::{Description, Module};
use crate::backend::Provider;
use crate::error::HostError;
use crate::plugins::trust::FileFacts;

/// A loaded backend (the original's `Backend` struct, plus where it came from). Its texts
/// are the plugin's, with control characters escaped.
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
    /// What the trust checks found (with the SHA-256 when a lock was checked).
    pub facts: FileFacts,
    /// Runs out of process, in a plugin server ([`crate::isolate`]).
    pub isolated: bool,
    module: Loaded,
}

/// Where a backend's code runs.
#[derive(Clone)]
enum Loaded {
    InProcess(Module),
    Isolated(std::sync::Arc<crate::isolate::Server>),
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
    /// Reads a loaded root module's description. The plugin gets the host's logger from
    /// [`Backend::connect_logger`], once it is known to be used (a duplicate never is).
    pub(crate) fn new(path: PathBuf, module: Module, facts: FileFacts) -> Self {
        Self::described(path, module.describe(), facts, Loaded::InProcess(module))
    }

    /// A backend that runs in `server`, as its probe described it.
    pub(crate) fn isolated(
        path: PathBuf,
        d: Description,
        server: std::sync::Arc<crate::isolate::Server>,
        facts: FileFacts,
    ) -> Self {
        Self::described(path, d, facts, Loaded::Isolated(server))
    }

    fn described(path: PathBuf, d: Description, facts: FileFacts, module: Loaded) -> Self {
        Self {
            alias: d.alias,
            human_readable_name: d.human_readable_name,
            provider_help: d.provider_help,
            plugin_version: d.plugin_version,
            plugin_api_version: d.plugin_api_version,
            path,
            facts,
            isolated: matches!(module, Loaded::Isolated(_)),
            module,
        }
    }

    /// Hands the plugin the host's logger: its `tracing` events and panics reach the host's
    /// log from now on. (Setting up its logging is the plugin's first real work, so it is
    /// not done for a file that is only inspected or refused as a duplicate.)
    pub(crate) fn connect_logger(&self) {
        if let Loaded::InProcess(module) = &self.module {
            module.set_logger(&self.alias);
        }
    }

    /// Makes a provider of this backend from `config`. For an isolated backend the plugin's
    /// provider is made in its server on the first call (a config mistake is then that
    /// call's error, still named `new_provider`).
    pub fn new_provider(&self, config: &ProviderConfig) -> Result<Provider, HostError> {
        let alias = Arc::from(self.alias.as_str());
        match &self.module {
            Loaded::InProcess(module) => match module.new_provider(config) {
                Ok(inner) => Ok(Provider::new(alias, inner)),
                Err(error) => Err(HostError::Backend {
                    alias: self.alias.clone(),
                    call: "new_provider",
                    error,
                }),
            },
            Loaded::Isolated(server) => {
                let pairs = config
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                Ok(Provider::remote(
                    alias,
                    crate::isolate::RemoteProvider::new(Arc::clone(server), pairs),
                ))
            }
        }
    }

    /// Whether the backend documents `key` in its help.
    /// A key documented as `PREFIX_*` stands for a family: every longer key that starts
    /// with `PREFIX_` (the docker backend's `IMAGE_*`).
    pub fn knows_key(&self, key: &str) -> bool {
        let key = key.to_ascii_uppercase();
        self.provider_help.contains_key(&key)
            || self
                .key_families()
                .any(|prefix| key.len() > prefix.len() && key.starts_with(prefix))
    }

    /// The prefixes of the documented key families (`IMAGE_` for `IMAGE_*`).
    pub fn key_families(&self) -> impl Iterator<Item = &str> {
        self.provider_help
            .keys()
            .filter_map(|k| k.strip_suffix('*').filter(|p| p.ends_with('_')))
    }
}
