//! From a file to a checked root module: abi_stable's header, the plugin-api version, the
//! layout (against the snapshot of the 1.x minor the plugin was built with), and the root
//! module's initialiser. abi_stable's errors become one-line [`LoadError`]s.

use std::path::Path;

use abi_stable::library::{abi_header_from_path, LibraryError, RootModuleError};
use plugin_api::ffi::BackendMod_Ref;

use super::module::Module;
use crate::error::LoadError;
use crate::progress::Progress;

/// Opens the library at `path` (for the loader, a `/proc/self/fd/N` path of a file it has
/// already checked) and initialises its root module, recording what it learns in `progress`.
pub(crate) fn open_root_module(path: &Path, progress: &mut Progress) -> Result<Module, LoadError> {
    let abi_header = abi_header_from_path(path).map_err(library_error)?;
    progress.abi = Some((abi_header.abi_major, abi_header.abi_minor));
    let header = abi_header.upgrade().map_err(library_error)?;
    let version = header.version_strings().version.as_str();
    progress.plugin_api_version = Some(version.to_owned());
    let module = init_root_module(header, version)?;
    Ok(Module::new(module, version))
}

/// Checks the plugin's layout against the ABI of the plugin-api version it was built with
/// (an older 1.x has fewer appended fields, which abi_stable refuses to compare against the
/// current types) and returns its root module as the current type.
fn init_root_module(
    header: &'static abi_stable::library::LibHeader,
    plugin_api_version: &str,
) -> Result<BackendMod_Ref, LoadError> {
    let mut parts = plugin_api_version.split('.');
    let same_major = parts.next().and_then(|m| m.parse::<u64>().ok()) == Some(host_major());
    let minor = parts.next().and_then(|m| m.parse::<u64>().ok());
    let checked = match (same_major, minor) {
        (true, Some(0)) => Some(header.ensure_layout::<plugin_api::ffi::v1_0::BackendMod_Ref>()),
        (true, Some(1)) => Some(header.ensure_layout::<plugin_api::ffi::v1_1::BackendMod_Ref>()),
        _ => None,
    };
    if let Some(checked) = checked {
        checked.map_err(library_error)?;
        // SAFETY: the layout was just checked against the snapshot of the plugin-api minor
        // the plugin was built with, and the current types differ from it only by fields
        // appended to prefix types (root module, trait vtables), which are reached through
        // accessors that check at run time whether the plugin has them.
        unsafe { header.init_root_module_with_unchecked_layout::<BackendMod_Ref>() }
            .map_err(library_error)
    } else {
        header
            .init_root_module::<BackendMod_Ref>()
            .map_err(library_error)
    }
}

/// The major version of plugin-api this host speaks.
pub(crate) fn host_major() -> u64 {
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
fn layout_summary(full: &str) -> String {
    let mut unique: Vec<&str> = Vec::new();
    for e in full
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Error:"))
    {
        if !unique.contains(&e) {
            unique.push(e);
        }
    }
    if unique.is_empty() {
        return one_line(full.lines().next().unwrap_or("the layouts differ"));
    }
    let more = unique.len().saturating_sub(3);
    let mut s = unique[..unique.len().min(3)].join("; ");
    if more > 0 {
        s.push_str(&format!(
            " (and {more} more; run with -vv for the full report)"
        ));
    }
    s
}

fn one_line(s: &str) -> String {
    crate::text::escape_controls(&s.split_whitespace().collect::<Vec<_>>().join(" ")).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_summary_keeps_the_error_lines_only() {
        let full = "header\n  Error: field a differs\nnoise\n  Error: field b differs\n Error: field a differs\n";
        assert_eq!(
            layout_summary(full),
            "Error: field a differs; Error: field b differs"
        );
    }
}
