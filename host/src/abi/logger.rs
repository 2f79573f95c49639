//! The logger the host hands each plugin: plugin log events become host `tracing` events
//! with target `backend` and a `backend` field holding the plugin's alias.

use abi_stable::std_types::RStr;
use plugin_api::ffi::FfiLogger;
use tracing::level_filters::LevelFilter;

pub(crate) struct HostLogger {
    alias: String,
}

impl HostLogger {
    pub(crate) fn new(alias: String) -> Self {
        Self { alias }
    }
}

impl FfiLogger for HostLogger {
    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>) {
        let (alias, target, message) = (self.alias.as_str(), target.as_str(), message.as_str());
        match level {
            1 => tracing::error!(target: "backend", backend = alias, "{target}: {message}"),
            2 => tracing::warn!(target: "backend", backend = alias, "{target}: {message}"),
            3 => tracing::info!(target: "backend", backend = alias, "{target}: {message}"),
            4 => tracing::debug!(target: "backend", backend = alias, "{target}: {message}"),
            _ => tracing::trace!(target: "backend", backend = alias, "{target}: {message}"),
        }
    }

    fn max_level(&self) -> u8 {
        match LevelFilter::current() {
            LevelFilter::OFF => 0,
            LevelFilter::ERROR => 1,
            LevelFilter::WARN => 2,
            LevelFilter::INFO => 3,
            LevelFilter::DEBUG => 4,
            _ => 5,
        }
    }
}
