//! The flags that pick a backend and configure it, shared by `run` and `reap`, and the
//! provider they make.

use std::path::PathBuf;
use std::process::ExitCode;

use host::config::{parse_pairs, resolve, unknown_keys, ConfigFile};
use host::{Backend, Provider, Registry};
use plugin_api::{ErrorKind, ProviderConfig};

use crate::exit;

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
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
    pub config: Vec<String>,

    /// Read backend config from a TOML file with a table per backend alias
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
}

impl BackendArgs {
    /// The backend and a provider made from the config, or the exit status after the
    /// error has been printed: 64 for an unknown backend or a malformed `--config`, 78 for a
    /// config the backend refuses.
    pub fn provider<'r>(
        &self,
        registry: &'r Registry,
    ) -> Result<(&'r Backend, Provider), ExitCode> {
        for r in registry.rejected() {
            tracing::warn!("plugin rejected: {r}");
        }
        for e in registry.dir_errors() {
            tracing::warn!("{e}");
        }
        let backend = match registry.backend(&self.backend) {
            Ok(b) => b,
            Err(e) => {
                let known: Vec<&str> = registry.backends().map(|b| b.alias.as_str()).collect();
                eprintln!(
                    "host: {e} (loaded backends: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                );
                return Err(ExitCode::from(exit::USAGE));
            }
        };
        let file = match self
            .config_file
            .as_deref()
            .map(ConfigFile::load)
            .transpose()
        {
            Ok(f) => f,
            Err(e) => {
                eprintln!("host: {e}");
                return Err(ExitCode::from(exit::CONFIG));
            }
        };
        let cli = match parse_pairs(&self.config) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("host: {e}");
                return Err(ExitCode::from(exit::USAGE));
            }
        };
        let config = resolve(
            file.as_ref(),
            &backend.alias,
            &ProviderConfig::from_env(&backend.alias),
            &cli,
        );
        let unknown = unknown_keys(backend, &config);
        if !unknown.is_empty() {
            let known: Vec<&str> = backend.provider_help.keys().map(String::as_str).collect();
            tracing::warn!(
                "backend {} does not know config key{} {}; it knows: {}",
                backend.alias,
                if unknown.len() == 1 { "" } else { "s" },
                unknown.join(", "),
                known.join(", ")
            );
        }
        tracing::info!(backend = %backend.alias, config = %config, "backend config");
        match backend.new_provider(&config) {
            Ok(p) => Ok((backend, p)),
            Err(e) => {
                eprintln!("host: {e}");
                let code = match e.backend_kind() {
                    Some(ErrorKind::PANIC) => host::job::EXIT_NOT_COMPLETED,
                    _ => exit::CONFIG,
                };
                Err(ExitCode::from(code))
            }
        }
    }
}
