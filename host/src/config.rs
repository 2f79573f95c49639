//! Assembling a backend's config from its sources, highest precedence first:
//! `--config KEY=VALUE` > `BACKEND_<ALIAS>_<KEY>` environment > `--config-file FILE` (TOML,
//! one table per alias) > the plugin's own defaults (keys left unset). `host run`, `host
//! reap` and a worker all call [`ConfigSources::assemble`], so the rules and the warnings are
//! the same everywhere.
//!
//! ```toml
//! [fake]
//! LOG_OUTPUT = "hello"
//! RUN_SLEEP = "2s"
//! EXIT_CODE = 3          # numbers and booleans are taken as their text
//! ```
//!
//! Nothing given is silently ignored: a key the backend does not list, a table that names
//! no loaded backend, an environment variable whose value is not UTF-8 or does not
//! unescape, each becomes a [`ConfigWarning`] naming it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use plugin_api::config::{env_prefix, query_unescape};
use plugin_api::ProviderConfig;

use crate::plugins::registry::{Backend, Registry};

/// The largest config file read.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// A config that could not be used; names the file or argument and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        error: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_FILE_BYTES`].
    #[error("config file {} is larger than the limit of {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line where the parser knows it.
        message: String,
        /// The parser's error, when it was the parser that refused it.
        #[source]
        source: Option<Box<toml::de::Error>>,
    },
    /// A `--config` argument without `=`, or with an empty key.
    #[error("--config {0:?}: expected KEY=VALUE")]
    BadPair(String),
    /// A `--config` argument that is not UTF-8.
    #[error("--config {0:?}: not valid UTF-8 (config keys and values are text)")]
    NotUtf8(String),
}

impl ConfigError {
    /// Whether the mistake is in the command line (a usage error) rather than in a file.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::BadPair(_) | Self::NotUtf8(_))
    }
}

/// Something in the config's sources that was not used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigWarning {
    /// Keys the backend does not document: most likely typos.
    #[error("backend {alias} does not know config key{} {}; it knows: {}", if keys.len() == 1 { "" } else { "s" }, keys.join(", "), known.join(", "))]
    UnknownKeys {
        /// The backend.
        alias: String,
        /// The keys it does not know.
        keys: Vec<String>,
        /// The keys it knows.
        known: Vec<String>,
    },
    /// A config file table that names no loaded backend.
    #[error("config file {}: table [{table}] names no loaded backend{}; loaded: {}", file.display(), suggestion.as_ref().map(|s| format!(" (did you mean [{s}]?)")).unwrap_or_default(), if loaded.is_empty() { "none".to_owned() } else { loaded.join(", ") })]
    UnknownTable {
        /// The file.
        file: PathBuf,
        /// The table's name.
        table: String,
        /// A loaded alias that differs only in case.
        suggestion: Option<String>,
        /// The aliases that loaded.
        loaded: Vec<String>,
    },
    /// An environment variable of the backend whose name or value is not UTF-8: ignored.
    #[error("environment variable {variable} is not valid UTF-8: ignored")]
    EnvNotUtf8 {
        /// The variable's name (lossily decoded).
        variable: String,
    },
    /// An environment variable whose value does not URL-unescape (a bad `%` escape): used
    /// as written.
    #[error("environment variable {variable}: {value:?} is not a valid URL-query escape (a % must be followed by two hex digits): used as written")]
    EnvBadEscape {
        /// The variable's name.
        variable: String,
        /// Its value, masked if the key looks secret.
        value: String,
    },
}

/// A parsed `--config-file`: a table of keys per backend alias.
#[derive(Debug, Default, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    tables: BTreeMap<String, ProviderConfig>,
}

impl ConfigFile {
    /// Reads (at most [`MAX_CONFIG_FILE_BYTES`]) and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_error = |error| ConfigError::Read {
            path: path.to_owned(),
            error,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                limit: MAX_CONFIG_FILE_BYTES,
            });
        }
        let parse_error = |message: String, source| ConfigError::Parse {
            path: path.to_owned(),
            message,
            source,
        };
        let text = String::from_utf8(bytes).map_err(|e| {
            parse_error(
                format!("not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to()),
                None,
            )
        })?;
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| parse_error(e.to_string(), Some(Box::new(e))))?;
        let mut file = Self::from_table(doc).map_err(|m| parse_error(m, None))?;
        file.path = path.to_owned();
        Ok(file)
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        Self::from_table(doc)
    }

    fn from_table(doc: toml::Table) -> Result<Self, String> {
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
        Ok(Self {
            path: PathBuf::new(),
            tables,
        })
    }

    /// The table for `alias` (empty if the file has none).
    pub fn for_backend(&self, alias: &str) -> ProviderConfig {
        self.tables.get(alias).cloned().unwrap_or_default()
    }

    /// A warning for every table that names none of `loaded`.
    pub fn unknown_tables(&self, loaded: &[String]) -> Vec<ConfigWarning> {
        self.tables
            .keys()
            .filter(|t| !loaded.contains(t))
            .map(|table| ConfigWarning::UnknownTable {
                file: self.path.clone(),
                table: table.clone(),
                suggestion: loaded
                    .iter()
                    .find(|a| a.eq_ignore_ascii_case(table))
                    .cloned(),
                loaded: loaded.to_vec(),
            })
            .collect()
    }
}

/// Parses `KEY=VALUE` arguments, naming the one at fault.
pub fn parse_pairs(pairs: &[OsString]) -> Result<ProviderConfig, ConfigError> {
    let mut cfg = ProviderConfig::new();
    for p in pairs {
        let text = p
            .to_str()
            .ok_or_else(|| ConfigError::NotUtf8(p.to_string_lossy().into_owned()))?;
        let (k, v) = text
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| ConfigError::BadPair(text.to_owned()))?;
        cfg.set(k.trim(), v);
    }
    Ok(cfg)
}

/// The config of backend `alias` from `vars` (`BACKEND_<ALIAS>_<KEY>`, URL-query-unescaped),
/// with a warning for each variable that could not be used as it is.
pub fn from_env_vars(
    alias: &str,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> (ProviderConfig, Vec<ConfigWarning>) {
    let prefix = env_prefix(alias);
    let mut cfg = ProviderConfig::new();
    let mut warnings = Vec::new();
    for (name, value) in vars {
        let lossy = name.to_string_lossy();
        let Some(key) = lossy.strip_prefix(&prefix).filter(|k| !k.is_empty()) else {
            continue;
        };
        let (Some(_), Some(value)) = (name.to_str(), value.to_str()) else {
            warnings.push(ConfigWarning::EnvNotUtf8 {
                variable: lossy.into_owned(),
            });
            continue;
        };
        let unescaped = match query_unescape(value) {
            Some(v) => v,
            None => {
                warnings.push(ConfigWarning::EnvBadEscape {
                    variable: lossy.to_string(),
                    value: plugin_api::config::masked_value(key, value).into_owned(),
                });
                value.to_owned()
            }
        };
        cfg.set(key, unescaped);
    }
    (cfg, warnings)
}

/// Adds to `env` each key `backend` documents that it lacks, from `vars`' `<ALIAS>_<KEY>` or
/// else `TRAVIS_WORKER_<ALIAS>_<KEY>` (the original's `ProviderConfigFromEnviron` lets the
/// unprefixed name win; the key's case does not matter; URL-query-unescaped; empty is
/// unset). Only documented keys (and keys of a documented family, `IMAGE_*`): `<ALIAS>_`
/// variables set for other programs are not this worker's unless the backend has that key.
/// A `TRAVIS_WORKER_<ALIAS>_<KEY>` the backend does not know is named in a warning (that
/// prefix is this worker's alone: it is a typo).
pub fn original_names(
    backend: &Backend,
    vars: &[(OsString, OsString)],
    env: &mut ProviderConfig,
) -> Vec<ConfigWarning> {
    let alias = backend.alias.to_ascii_uppercase().replace('-', "_");
    let prefixes = [format!("{alias}_"), format!("TRAVIS_WORKER_{alias}_")];
    let mut warnings = Vec::new();
    let mut unknown = Vec::new();
    // Per prefix, in order: the keys given (upper case) and their variable.
    let mut given: [Vec<(String, &OsString, &OsString)>; 2] = [Vec::new(), Vec::new()];
    for (name, value) in vars {
        let Some(name_str) = name.to_str() else {
            continue;
        };
        for (n, prefix) in prefixes.iter().enumerate() {
            if let Some(key) = name_str
                .strip_prefix(prefix.as_str())
                .filter(|k| !k.is_empty())
            {
                let key = key.to_ascii_uppercase();
                if n == 1 && !backend.knows_key(&key) {
                    unknown.push(key.clone());
                }
                given[n].push((key, name, value));
            }
        }
    }
    let wanted = |key: &str| backend.knows_key(key) && !key.ends_with('*');
    for list in &given {
        for (key, name, value) in list {
            if !wanted(key) || env.lookup(key).is_some() {
                continue;
            }
            let name = name.to_string_lossy().into_owned();
            let Some(value) = value.to_str() else {
                warnings.push(ConfigWarning::EnvNotUtf8 { variable: name });
                continue;
            };
            if value.is_empty() {
                continue;
            }
            let unescaped = query_unescape(value).unwrap_or_else(|| {
                warnings.push(ConfigWarning::EnvBadEscape {
                    variable: name.clone(),
                    value: plugin_api::config::masked_value(key, value).into_owned(),
                });
                value.to_owned()
            });
            env.set(key.as_str(), unescaped);
        }
    }
    if !unknown.is_empty() {
        unknown.sort();
        unknown.dedup();
        warnings.push(ConfigWarning::UnknownKeys {
            alias: backend.alias.clone(),
            keys: unknown
                .into_iter()
                .map(|k| format!("TRAVIS_WORKER_{alias}_{k}"))
                .collect(),
            known: backend.provider_help.keys().cloned().collect(),
        });
    }
    warnings
}

static ENVIRONMENT: std::sync::OnceLock<Vec<(OsString, OsString)>> = std::sync::OnceLock::new();

/// Keeps this process's environment as it is now as the one backend config is read from
/// ([`ConfigSources::assemble`]), so that a program can then take its settings and secrets
/// out of its environment before it runs jobs, which would inherit them. Once only: later
/// calls keep the first copy.
pub fn keep_environment() {
    let _ = ENVIRONMENT.set(std::env::vars_os().collect());
}

/// The environment backend config is read from: the one [`keep_environment`] kept, else
/// this process's.
pub fn environment() -> Vec<(OsString, OsString)> {
    match ENVIRONMENT.get() {
        Some(kept) => kept.clone(),
        None => std::env::vars_os().collect(),
    }
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

/// Where a backend's config comes from: the command line's pairs and a config file (the
/// environment is read by [`ConfigSources::assemble`]).
#[derive(Debug, Default, Clone)]
pub struct ConfigSources {
    /// `KEY=VALUE` pairs, highest precedence.
    pub pairs: Vec<OsString>,
    /// A TOML file with a table per alias, lowest precedence.
    pub file: Option<PathBuf>,
    /// Also read each key the backend documents from the original worker's names,
    /// `<ALIAS>_<KEY>` and then `TRAVIS_WORKER_<ALIAS>_<KEY>` (as its
    /// `ProviderConfigFromEnviron`), below `BACKEND_<ALIAS>_<KEY>`: see [`original_names`].
    pub original_names: bool,
}

/// A backend's config, ready for [`Backend::new_provider`], and what was not used.
#[derive(Debug)]
pub struct Assembled {
    /// The merged config.
    pub config: ProviderConfig,
    /// Everything that was ignored or looked wrong, each naming its source.
    pub warnings: Vec<ConfigWarning>,
}

impl ConfigSources {
    /// The config of `backend` from the command line, this process's environment and the
    /// file, by precedence, with a warning for everything given but not used.
    pub fn assemble(
        &self,
        backend: &Backend,
        registry: &Registry,
    ) -> Result<Assembled, ConfigError> {
        let cli = parse_pairs(&self.pairs)?;
        let file = self.file.as_deref().map(ConfigFile::load).transpose()?;
        let vars = environment();
        let (mut env, mut warnings) = from_env_vars(&backend.alias, vars.iter().cloned());
        if self.original_names {
            warnings.extend(original_names(backend, &vars, &mut env));
        }
        if let Some(file) = &file {
            let loaded: Vec<String> = registry.backends().map(|b| b.alias.clone()).collect();
            warnings.extend(file.unknown_tables(&loaded));
        }
        let config = resolve(file.as_ref(), &backend.alias, &env, &cli);
        let keys = unknown_keys(backend, &config);
        if !keys.is_empty() {
            warnings.push(ConfigWarning::UnknownKeys {
                alias: backend.alias.clone(),
                keys,
                known: backend.provider_help.keys().cloned().collect(),
            });
        }
        Ok(Assembled { config, warnings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn cli_beats_env_beats_file() {
        let file = ConfigFile::parse(
            "[fake]\nA = \"file\"\nB = \"file\"\nC = \"file\"\nN = 3\n[other]\nA = \"x\"\n",
        )
        .unwrap();
        let env = ProviderConfig::from_map([("B", "env"), ("C", "env")]);
        let cli = parse_pairs(&os(&["c=cli"])).unwrap();
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
        assert!(parse_pairs(&os(&["NOEQUALS"])).is_err());
        assert!(parse_pairs(&os(&["=v"])).is_err());
        assert_eq!(parse_pairs(&os(&["K=a=b"])).unwrap().get("K"), "a=b");
    }

    #[test]
    fn unknown_tables_are_named_with_a_suggestion() {
        let file = ConfigFile::parse("[FAKE]\nA = 1\n[nosuch]\nB = 2\n[local]\n").unwrap();
        let w = file.unknown_tables(&["fake".into(), "local".into()]);
        assert_eq!(w.len(), 2, "{w:?}");
        let text: Vec<String> = w.iter().map(ToString::to_string).collect();
        assert!(
            text[0].contains("[FAKE]") && text[0].contains("did you mean [fake]"),
            "{text:?}"
        );
        assert!(
            text[1].contains("[nosuch]") && text[1].contains("loaded: fake, local"),
            "{text:?}"
        );
    }

    #[test]
    fn environment_values_that_cannot_be_used_are_named() {
        use std::os::unix::ffi::OsStringExt as _;
        let vars = vec![
            ("BACKEND_FAKE_A".into(), "a+b".into()),
            (
                "BACKEND_FAKE_B".into(),
                OsString::from_vec(vec![0xff, 0xfe]),
            ),
            ("BACKEND_FAKE_C".into(), "100%".into()),
            ("BACKEND_OTHER_D".into(), "x".into()),
        ];
        let (cfg, w) = from_env_vars("fake", vars);
        assert_eq!(cfg.get("A"), "a b");
        assert!(!cfg.is_set("B"));
        assert_eq!(cfg.get("C"), "100%");
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].to_string().contains("BACKEND_FAKE_B"), "{w:?}");
        assert!(w[1].to_string().contains("BACKEND_FAKE_C"), "{w:?}");
    }
}
