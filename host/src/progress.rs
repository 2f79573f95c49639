//! How far loading a plugin file got: each step's finding, whatever stopped it. One type
//! shared by the loading steps (trust checks, the ABI header, the probe), the plugin server
//! and `host inspect`, so none of them imports another for it.

use crate::plugins::trust::FileFacts;

/// How far loading got, for `host inspect`: each step's finding, whatever stopped it.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// Trust checks passed with these facts.
    pub facts: Option<FileFacts>,
    /// The abi_stable header's (major, minor).
    pub abi: Option<(u32, u32)>,
    /// The plugin-api version in the header.
    pub plugin_api_version: Option<String>,
    /// What the probe in a child process found, and whether from the cache.
    pub probe: Option<String>,
}
