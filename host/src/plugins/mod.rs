//! Plugin loading, entered through [`PluginPolicy`]: where plugin files are found, which
//! may load ([`trust`]: ownership, modes, the lock), how a file is checked before it runs
//! in this process ([`probe`], in a child), loaded ([`loader`]) or only described
//! ([`inspect`]), and the [`Registry`](registry::Registry) of what loaded.
//!
//! The modules import each other in one direction only, from the policy down:
//! `policy` → `inspect`, `registry` → `loader` → `probe` → `trust`, with [`loaded`] (a loaded
//! backend) below `loader` and `registry`, and the progress type they share in
//! [`crate::progress`]. Nothing here reaches back up into the policy. A new rule for what
//! may load goes into [`trust`] (a check of a file) or [`policy`] (which files, which lock).

pub(crate) mod elf;
pub mod inspect;
pub mod loaded;
pub mod loader;
pub mod policy;
pub mod probe;
pub mod registry;
pub mod trust;

pub use policy::PluginPolicy;
