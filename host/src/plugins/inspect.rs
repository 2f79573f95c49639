//! Everything the host can tell about one plugin file, in the spirit of `modinfo`: for
//! `host inspect`, through [`crate::PluginPolicy::inspect`] (so a file is opened only if the
//! policy every other command applies allows it).

use std::path::Path;

use serde::Serialize;

use crate::error::LoadError;
use crate::plugins::loaded::Backend;
use crate::plugins::trust::sha256_file;
use crate::progress::Progress;

/// What `host inspect` reports about a file.
#[derive(Debug, Serialize)]
pub struct Inspection {
    /// The path as given.
    pub path: String,
    /// The file with symlinks resolved, if it resolves.
    pub resolved: Option<String>,
    /// Size in bytes (regular files only).
    pub size: Option<u64>,
    /// SHA-256 (regular files only).
    pub sha256: Option<String>,
    /// `ok (...)` or the reason the trust checks refuse it.
    pub trust: String,
    /// What the probe in a child process found (see [`crate::plugins::probe`]), if one ran.
    pub probe: Option<String>,
    /// The abi_stable ABI version in its header, e.g. `0.11`.
    pub abi_stable: Option<String>,
    /// The plugin-api version it was built against.
    pub plugin_api: Option<String>,
    /// The backend alias.
    pub alias: Option<String>,
    /// The human-readable name.
    pub name: Option<String>,
    /// The plugin's own version.
    pub plugin_version: Option<String>,
    /// Config keys and help, as the plugin lists them.
    pub config_keys: Vec<(String, String)>,
    /// Whether this host would load it.
    pub loadable: bool,
    /// Whether it would run out of process, in a plugin server (`--isolate`).
    pub isolated: bool,
    /// Why it would not, in one line.
    pub error: Option<String>,
}

/// What is known of `path` after a load attempt that got as far as `progress` says and
/// ended with `result`.
pub(crate) fn describe(
    path: &Path,
    progress: &Progress,
    result: Result<Backend, LoadError>,
) -> Inspection {
    let resolved = std::fs::canonicalize(path).ok();
    let regular = resolved
        .as_deref()
        .and_then(|p| std::fs::metadata(p).ok())
        .filter(std::fs::Metadata::is_file);
    let mut out = Inspection {
        path: path.display().to_string(),
        resolved: resolved.as_ref().map(|p| p.display().to_string()),
        size: regular.as_ref().map(std::fs::Metadata::len),
        sha256: regular.as_ref().and_then(|_| sha256_file(path).ok()),
        trust: String::new(),
        probe: progress.probe.clone(),
        abi_stable: None,
        plugin_api: None,
        alias: None,
        name: None,
        plugin_version: None,
        config_keys: Vec::new(),
        loadable: false,
        isolated: false,
        error: None,
    };
    out.trust = match &progress.facts {
        Some(f) => format!(
            "ok (owner uid {}, mode {:04o}{})",
            f.uid,
            f.mode,
            if f.sha256.is_some() {
                ", sha256 pinned by the lock"
            } else {
                ""
            }
        ),
        None => match &result {
            Err(e) => e.to_string(),
            Ok(_) => "ok".into(),
        },
    };
    out.abi_stable = progress.abi.map(|(a, b)| format!("{a}.{b}"));
    out.plugin_api = progress.plugin_api_version.clone();
    match result {
        Ok(backend) => {
            out.alias = Some(backend.alias);
            out.name = Some(backend.human_readable_name);
            out.plugin_version = Some(backend.plugin_version);
            out.config_keys = backend.provider_help.into_iter().collect();
            out.loadable = true;
            out.isolated = backend.isolated;
        }
        Err(e) => out.error = Some(e.to_string()),
    }
    out
}
