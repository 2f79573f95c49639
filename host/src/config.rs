//! Assembling a backend's config from its sources, highest precedence first:
//! `--config KEY=VALUE` > `BACKEND_<ALIAS>_<KEY>` environment > `--config-file FILE` (TOML,
//! one table per alias) > the plugin's own defaults (keys left unset).
//!
//! ```toml
//! [fake]
//! LOG_OUTPUT = "hello"
//! RUN_SLEEP = "2s"
//! EXIT_CODE = 3          # numbers and booleans are taken as their text
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plugin_api::ProviderConfig;

use crate::registry::Backend;

/// A config file that could not be used; names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line where the parser knows it.
        message: String,
    },
    /// A `--config` argument without `=`.
    #[error("--config {0:?}: expected KEY=VALUE")]
    BadPair(String),
}

/// A parsed `--config-file`: a table of keys per backend alias.
#[derive(Debug, Default, Clone)]
pub struct ConfigFile {
    tables: BTreeMap<String, ProviderConfig>,
}

impl ConfigFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        let mut tables = BTreeMap::new();
        for (alias, value) in doc {
            let toml::Value::Table(table) = value else {
                return Err(format!(
                    "top-level key {alias:?} must be a table of config keys, e.g. [{alias}]"
                ));
            };
            let mut cfg = ProviderConfig::new();
            for (key, value) in table {
                let text = match value {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => {
                        return Err(format!(
                            "[{alias}] {key}: expected a string, number or boolean, found {}",
                            other.type_str()
                        ))
                    }
                };
                cfg.set(&key, text);
            }
            tables.insert(alias, cfg);
        }
        Ok(Self { tables })
    }

    /// The table for `alias` (empty if the file has none).
    pub fn for_backend(&self, alias: &str) -> ProviderConfig {
        self.tables.get(alias).cloned().unwrap_or_default()
    }
}

/// Parses `KEY=VALUE` arguments.
pub fn parse_pairs(pairs: &[String]) -> Result<ProviderConfig, ConfigError> {
    let mut cfg = ProviderConfig::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| ConfigError::BadPair(p.clone()))?;
        cfg.set(k.trim(), v);
    }
    Ok(cfg)
}

/// Merges the sources by precedence: `cli` over `env` over `file`.
pub fn resolve(
    file: Option<&ConfigFile>,
    alias: &str,
    env: &ProviderConfig,
    cli: &ProviderConfig,
) -> ProviderConfig {
    let mut cfg = file.map(|f| f.for_backend(alias)).unwrap_or_default();
    cfg.merge_from(env);
    cfg.merge_from(cli);
    cfg
}

/// Keys of `config` that `backend` does not document: most likely typos.
pub fn unknown_keys(backend: &Backend, config: &ProviderConfig) -> Vec<String> {
    config
        .iter()
        .filter(|(k, _)| !backend.knows_key(k))
        .map(|(k, _)| k.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_beats_env_beats_file() {
        let file = ConfigFile::parse(
            "[fake]\nA = \"file\"\nB = \"file\"\nC = \"file\"\nN = 3\n[other]\nA = \"x\"\n",
        )
        .unwrap();
        let env = ProviderConfig::from_map([("B", "env"), ("C", "env")]);
        let cli = parse_pairs(&["c=cli".into()]).unwrap();
        let cfg = resolve(Some(&file), "fake", &env, &cli);
        assert_eq!(cfg.get("A"), "file");
        assert_eq!(cfg.get("B"), "env");
        assert_eq!(cfg.get("C"), "cli");
        assert_eq!(cfg.get("N"), "3");
    }

    #[test]
    fn bad_files_and_pairs_say_what_is_wrong() {
        assert!(ConfigFile::parse("fake = 1")
            .unwrap_err()
            .contains("must be a table"));
        assert!(ConfigFile::parse("[fake]\nA = [1]")
            .unwrap_err()
            .contains("[fake] A"));
        assert!(ConfigFile::parse("[fake\n").is_err());
        assert!(parse_pairs(&["NOEQUALS".into()]).is_err());
        assert!(parse_pairs(&["=v".into()]).is_err());
        assert_eq!(parse_pairs(&["K=a=b".into()]).unwrap().get("K"), "a=b");
    }
}
