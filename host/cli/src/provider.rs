//! The flags that pick a backend and configure it, shared by `run` and `reap`, and the
//! provider they make.

use std::ffi::OsString;
use std::path::PathBuf;

use host::config::ConfigSources;
use host::{Backend, Provider, Registry};
use plugin_api::ErrorKind;

use crate::exit::CliError;

#[derive(clap::Args, Debug)]
pub struct BackendArgs {
    /// The backend to use (see `host list-backends`)
    #[arg(
        long,
        short = 'b',
        value_name = "ALIAS",
        default_value = "fake",
        env = "HOST_BACKEND"
    )]
    pub backend: String,

    /// Set a backend config key (repeatable; beats the environment and the config file)
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = clap::value_parser!(OsString))]
    pub config: Vec<OsString>,

    /// Read backend config from a TOML file with a table per backend alias (at most 1 MiB)
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// Also read the backend's keys by the original worker's names (`host worker` only).
    #[arg(skip)]
    pub original_names: bool,
}

impl BackendArgs {
    /// The backend and a provider made from the assembled config. Errors: 64 for an unknown
    /// backend or a malformed `--config`, 78 for a config the backend refuses or a bad file,
    /// 75 when the plugin's factory panicked.
    pub fn provider<'r>(
        &self,
        registry: &'r Registry,
    ) -> Result<(&'r Backend, Provider), CliError> {
        let (backend, config) = self.assemble(registry)?;
        match backend.new_provider(&config) {
            Ok(p) => Ok((backend, p)),
            Err(e) if e.backend_kind() == Some(ErrorKind::PANIC) => {
                Err(CliError::TempFail(e.to_string()))
            }
            Err(e) => Err(CliError::Config(e.to_string())),
        }
    }

    /// The backend and its assembled config (warnings logged), without a provider.
    pub fn assemble<'r>(
        &self,
        registry: &'r Registry,
    ) -> Result<(&'r Backend, plugin_api::ProviderConfig), CliError> {
        for r in registry.rejected() {
            tracing::warn!("plugin rejected: {r}");
        }
        for e in registry.dir_errors() {
            tracing::warn!("{e}");
        }
        let backend = registry.backend(&self.backend).map_err(|e| {
            let known: Vec<&str> = registry.backends().map(|b| b.alias.as_str()).collect();
            let known = if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            };
            CliError::Usage(format!("{e} (loaded backends: {known})"))
        })?;
        let sources = ConfigSources {
            pairs: self.config.clone(),
            file: self.config_file.clone(),
            original_names: self.original_names,
        };
        let assembled = sources.assemble(backend, registry).map_err(|e| {
            if e.is_usage() {
                CliError::Usage(e.to_string())
            } else {
                CliError::Config(e.to_string())
            }
        })?;
        for w in &assembled.warnings {
            tracing::warn!("{w}");
        }
        tracing::info!(backend = %backend.alias, config = %assembled.config, "backend config");
        Ok((backend, assembled.config))
    }
}
