//! Out-of-process plugins: a plugin marked for isolation is never opened as a library in
//! the host. It runs in a plugin server, the same executable started with a hidden argument
//! (see [`crate::serve_if_asked`]), connected by a socketpair; one server per plugin
//! file serves every provider, instance and call of that plugin at once. The [`Provider`]
//! and [`Instance`] an embedder holds are the same for both modes.
//!
//! - **Protocol**: length-prefixed postcard frames; calls multiplexed by id; a run's log
//!   streamed in chunks with credits (at most 16 chunks in flight per run: a stalled
//!   reader bounds the server's memory), each chunk in a slot of memory the server shares
//!   with the host (lent to the log's reader as it is, given back when read; see
//!   `ring.rs`) or, when none is free, raw on the socket; dropping a call's future cancels
//!   it in the server; the plugin's log events reach the host's log as in process.
//! - **Crashes**: when the server dies (a signal, an abort, an exit, an OOM kill) or hangs
//!   (silent for [`HANG_AFTER`] while pinged every second; the server polls every call on
//!   one thread, so a plugin blocking it is a hang), every call in flight on it fails as not
//!   completed, naming the plugin, the call and what happened ("plugin docker crashed
//!   (SIGSEGV) during run_script"); the host lives. The server's process group is killed,
//!   and the backend's `reap` runs in a new server (started after a backoff, 0.1 s doubling
//!   to 10 s) for every config used, so what the dead server started is found and stopped;
//!   `stop` on its instances waits for that. The next use starts a new server.
//!
//! [`Provider`]: crate::Provider
//! [`Instance`]: crate::Instance

mod client;
mod ring;
mod server;
mod wire;

use std::collections::BTreeSet;

pub(crate) use client::{RemoteInstance, RemoteProvider, Server};
pub use client::{HANG_AFTER, SERVER_ARG};
pub(crate) use server::serve;

/// The environment variable listing the plugins to isolate (comma-separated aliases, or
/// `all`).
pub const ISOLATE_ENV: &str = "HOST_ISOLATE";

/// Which plugins run in a plugin server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    /// None: every plugin is loaded into the host process.
    #[default]
    None,
    /// Every plugin.
    All,
    /// The plugins with these aliases.
    Aliases(BTreeSet<String>),
}

impl Isolation {
    /// From `--isolate` values or `HOST_ISOLATE` items: aliases, or `all`.
    pub fn parse<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Self {
        let mut aliases = BTreeSet::new();
        for item in items {
            for alias in item.as_ref().split(',').map(str::trim) {
                match alias {
                    "" => {}
                    "all" => return Self::All,
                    a => {
                        aliases.insert(a.to_owned());
                    }
                }
            }
        }
        if aliases.is_empty() {
            Self::None
        } else {
            Self::Aliases(aliases)
        }
    }

    /// From [`ISOLATE_ENV`].
    pub fn from_env() -> Self {
        Self::parse(std::env::var(ISOLATE_ENV).ok())
    }

    /// Whether plugin `alias` runs in a server.
    pub fn covers(&self, alias: &str) -> bool {
        match self {
            Self::None => false,
            Self::All => true,
            Self::Aliases(a) => a.contains(alias),
        }
    }

    /// Whether any plugin is isolated.
    pub fn any(&self) -> bool {
        !matches!(self, Self::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_parses_aliases_lists_and_all() {
        assert_eq!(Isolation::parse(Vec::<String>::new()), Isolation::None);
        assert_eq!(Isolation::parse([" , "]), Isolation::None);
        let some = Isolation::parse(["docker", "local, fake"]);
        assert!(some.covers("fake") && some.covers("docker") && !some.covers("x"));
        assert_eq!(Isolation::parse(["docker", "all"]), Isolation::All);
        assert!(Isolation::All.covers("anything"));
    }
}
