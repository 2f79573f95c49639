//! A loaded root module: what it says about itself, and its provider factory.

use std::collections::BTreeMap;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RString, Tuple2};
use plugin_api::ffi::{BackendMod_Ref, FfiLogger_TO};
use plugin_api::{BackendError, ProviderConfig};

use super::calls::{sanitize, ProviderObj};
use super::logger::HostLogger;
use crate::text::escape_controls;

/// A plugin's root module. Copyable: the library it lives in is never unloaded.
#[derive(Clone, Copy)]
pub(crate) struct Module {
    inner: BackendMod_Ref,
    plugin_api_version: &'static str,
}

/// What a root module says about itself, escaped for a terminal.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Description {
    pub(crate) alias: String,
    pub(crate) human_readable_name: String,
    pub(crate) plugin_version: String,
    pub(crate) plugin_api_version: String,
    pub(crate) provider_help: BTreeMap<String, String>,
}

impl Module {
    pub(crate) fn new(inner: BackendMod_Ref, plugin_api_version: &'static str) -> Self {
        Self {
            inner,
            plugin_api_version,
        }
    }

    /// The alias exactly as the plugin gives it (the registry's key).
    pub(crate) fn alias(&self) -> String {
        escape_controls(self.inner.alias()().as_str()).into_owned()
    }

    pub(crate) fn describe(&self) -> Description {
        let text = |s: &str| escape_controls(s).into_owned();
        Description {
            alias: self.alias(),
            human_readable_name: text(self.inner.human_readable_name()().as_str()),
            plugin_version: text(self.inner.plugin_version()().as_str()),
            plugin_api_version: self.plugin_api_version.to_owned(),
            provider_help: self.inner.help()()
                .into_iter()
                .map(|Tuple2(k, v)| (text(k.as_str()), text(v.as_str())))
                .collect(),
        }
    }

    /// Hands the plugin the host's logger, whose events carry `alias`.
    pub(crate) fn set_logger(&self, alias: &str) {
        self.inner.set_logger()(FfiLogger_TO::from_value(
            HostLogger::new(alias.to_owned()),
            TD_Opaque,
        ));
    }

    /// Hands the plugin a logger that passes each event at or below `max_level` (1 error
    /// ... 5 trace) to `forward` as `target: message` (the plugin server's, to the host).
    pub(crate) fn set_forwarding_logger(
        &self,
        max_level: u8,
        forward: impl Fn(u8, String) + Send + Sync + 'static,
    ) {
        self.inner.set_logger()(FfiLogger_TO::from_value(
            super::logger::ForwardingLogger::new(max_level, forward),
            TD_Opaque,
        ));
    }

    pub(crate) fn new_provider(
        &self,
        config: &ProviderConfig,
    ) -> Result<ProviderObj, BackendError> {
        let raw = config
            .iter()
            .map(|(k, v)| Tuple2(RString::from(k), RString::from(v)))
            .collect();
        self.inner.new_provider()(raw)
            .into_result()
            .map(ProviderObj)
            .map_err(sanitize)
    }
}
