//! Errors that cross the plugin boundary.
//!
//! A [`BackendError`] is a kind plus a human-readable message. The kind is a plain number on
//! the wire (not a Rust enum) so that a later plugin-api 1.x can add kinds without making
//! older hosts misread them: an unknown kind is shown as `other`.

use std::fmt;

use abi_stable::{std_types::RString, StableAbi};

/// What kind of failure a [`BackendError`] reports.
///
/// Compare against the associated constants; a value this build does not know is treated as
/// [`ErrorKind::OTHER`] by [`ErrorKind::name`].
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorKind(u32);

impl ErrorKind {
    /// Anything that has no more specific kind.
    pub const OTHER: Self = Self(0);
    /// The instance carries artifacts of an earlier build (the original's `ErrStaleVM`).
    pub const STALE_VM: Self = Self(1);
    /// The backend needs an endpoint and none was configured (`ErrMissingEndpointConfig`).
    pub const MISSING_ENDPOINT_CONFIG: Self = Self(2);
    /// A configuration value is missing or malformed.
    pub const INVALID_CONFIG: Self = Self(3);
    /// The backend does not support what was asked.
    pub const UNSUPPORTED: Self = Self(4);
    /// The operation was cancelled before it finished.
    pub const CANCELLED: Self = Self(5);
    /// The plugin panicked; the panic was caught at the boundary.
    pub const PANIC: Self = Self(6);
    /// The output sink refused more output (its reader went away or a log cap was hit).
    pub const OUTPUT_CLOSED: Self = Self(7);

    /// A short lowercase name, for messages and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::STALE_VM => "stale_vm",
            Self::MISSING_ENDPOINT_CONFIG => "missing_endpoint_config",
            Self::INVALID_CONFIG => "invalid_config",
            Self::UNSUPPORTED => "unsupported",
            Self::CANCELLED => "cancelled",
            Self::PANIC => "panic",
            Self::OUTPUT_CLOSED => "output_closed",
            _ => "other",
        }
    }

    /// The number this kind travels as.
    pub fn code(self) -> u32 {
        self.0
    }
}

impl fmt::Debug for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An error returned by a backend, safe to pass across the plugin boundary.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq)]
pub struct BackendError {
    kind: ErrorKind,
    message: RString,
}

/// The message of the original worker's `ErrStaleVM`.
pub const STALE_VM_MESSAGE: &str = "previous build artifacts found on stale vm";
/// The message of the original worker's `ErrMissingEndpointConfig`.
pub const MISSING_ENDPOINT_CONFIG_MESSAGE: &str = "expected config key endpoint";

impl BackendError {
    /// An error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: RString::from(message.into()),
        }
    }

    /// An error of kind [`ErrorKind::OTHER`].
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::OTHER, message)
    }

    /// The original worker's `ErrStaleVM`: "previous build artifacts found on stale vm".
    pub fn stale_vm() -> Self {
        Self::new(ErrorKind::STALE_VM, STALE_VM_MESSAGE)
    }

    /// The original worker's `ErrMissingEndpointConfig`: "expected config key endpoint".
    pub fn missing_endpoint_config() -> Self {
        Self::new(
            ErrorKind::MISSING_ENDPOINT_CONFIG,
            MISSING_ENDPOINT_CONFIG_MESSAGE,
        )
    }

    /// A configuration error naming the key and the value at fault (a secret value, or a
    /// secret inside a list of pairs, is masked as [`crate::ProviderConfig`] shows it).
    pub fn invalid_config(key: &str, value: &str, why: impl fmt::Display) -> Self {
        let value = crate::config::masked_value(key, value);
        Self::new(
            ErrorKind::INVALID_CONFIG,
            format!("invalid value {value:?} for config key {key}: {why}"),
        )
    }

    /// The operation was cancelled.
    pub fn cancelled(what: impl fmt::Display) -> Self {
        Self::new(ErrorKind::CANCELLED, format!("{what} was cancelled"))
    }

    /// The backend does not support something.
    pub fn unsupported(what: impl fmt::Display) -> Self {
        Self::new(ErrorKind::UNSUPPORTED, format!("unsupported: {what}"))
    }

    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        self.message.as_str()
    }
}

impl fmt::Debug for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendError")
            .field("kind", &self.kind)
            .field("message", &self.message.as_str())
            .finish()
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message.as_str())
    }
}

impl std::error::Error for BackendError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_errors_keep_their_exact_messages() {
        assert_eq!(
            BackendError::stale_vm().to_string(),
            "previous build artifacts found on stale vm"
        );
        assert_eq!(
            BackendError::missing_endpoint_config().to_string(),
            "expected config key endpoint"
        );
        assert_eq!(BackendError::stale_vm().kind(), ErrorKind::STALE_VM);
    }

    #[test]
    fn an_unknown_kind_reads_as_other() {
        assert_eq!(ErrorKind(999).name(), "other");
        assert_eq!(ErrorKind::PANIC.name(), "panic");
    }
}
