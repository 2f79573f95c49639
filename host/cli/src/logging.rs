//! Log output on stderr through `tracing`: `-v`/`-q` pick the level, `RUST_LOG` overrides.
//! Plugin events arrive with target `backend` and the plugin's alias in the `backend` field.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

pub fn init(verbose: u8, quiet: bool) {
    // lapin reports connection trouble at error level on its own; the host says it once, in
    // its own words, so lapin's lines appear only from -v on.
    let default = match (quiet, verbose) {
        (true, _) => "error,lapin=off",
        (false, 0) => "warn,lapin=off",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Never blocks for long on a full stderr, nor holds Rust's stderr lock meanwhile.
        .with_writer(|| crate::exit::StderrNoWait)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true)
        .try_init();
}
