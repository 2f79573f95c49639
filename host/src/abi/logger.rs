//! The logger the host hands each plugin: plugin log events become host `tracing` events
//! with target `backend` and a `backend` field holding the plugin's alias.

use abi_stable::std_types::RStr;
use plugin_api::ffi::FfiLogger;
use tracing::level_filters::LevelFilter;

use crate::text::escape_controls;

/// The levels of `FfiLogger::log`, which travel as a `u8` (1 error ... 5 trace; 0 in
/// `max_level` means nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl Level {
    /// A number from the wire; anything past trace is trace.
    fn from_wire(n: u8) -> Self {
        match n {
            0 => Self::Off,
            1 => Self::Error,
            2 => Self::Warn,
            3 => Self::Info,
            4 => Self::Debug,
            _ => Self::Trace,
        }
    }
}

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
        emit(
            &self.alias,
            level,
            &format!("{}: {}", target.as_str(), message.as_str()),
        );
    }

    fn max_level(&self) -> u8 {
        host_max_level()
    }
}

/// A plugin's event (`target: message`, level 1 error ... 5 trace) as a host `tracing`
/// event with target `backend` and field `backend = alias`, escaped for a terminal; from a
/// plugin in this process or from a plugin server.
pub(crate) fn emit(alias: &str, level: u8, message: &str) {
    let message = escape_controls(message);
    match Level::from_wire(level) {
        Level::Off => {}
        Level::Error => tracing::error!(target: "backend", backend = alias, "{message}"),
        Level::Warn => tracing::warn!(target: "backend", backend = alias, "{message}"),
        Level::Info => tracing::info!(target: "backend", backend = alias, "{message}"),
        Level::Debug => tracing::debug!(target: "backend", backend = alias, "{message}"),
        Level::Trace => tracing::trace!(target: "backend", backend = alias, "{message}"),
    }
}

/// The most verbose level the host's log shows, as the wire's number.
pub(crate) fn host_max_level() -> u8 {
    let level = match LevelFilter::current() {
        LevelFilter::OFF => Level::Off,
        LevelFilter::ERROR => Level::Error,
        LevelFilter::WARN => Level::Warn,
        LevelFilter::INFO => Level::Info,
        LevelFilter::DEBUG => Level::Debug,
        _ => Level::Trace,
    };
    level as u8
}

/// A logger that hands every event to a closure: the plugin server's, whose closure sends
/// it to the host.
pub(crate) struct ForwardingLogger<F> {
    max_level: u8,
    forward: F,
}

impl<F: Fn(u8, String) + Send + Sync + 'static> ForwardingLogger<F> {
    pub(crate) fn new(max_level: u8, forward: F) -> Self {
        Self { max_level, forward }
    }
}

impl<F: Fn(u8, String) + Send + Sync + 'static> FfiLogger for ForwardingLogger<F> {
    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>) {
        if level <= self.max_level {
            (self.forward)(level, format!("{}: {}", target.as_str(), message.as_str()));
        }
    }

    fn max_level(&self) -> u8 {
        self.max_level
    }
}
