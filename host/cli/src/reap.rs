//! `host reap`: remove what a backend left behind (after a host crash, say).

use std::time::Duration;

use host::text::fmt_duration;
use host::PluginPolicy;
use plugin_api::config::parse_duration;
use plugin_api::ErrorKind;

use crate::exit::say;
use crate::exit::{print_out, CliError};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    backend: crate::provider::BackendArgs,

    /// Only what is older than this
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    older_than: Duration,

    /// List what would be removed, remove nothing
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: &Args, policy: &PluginPolicy) -> Result<u8, CliError> {
    let registry = policy.load();
    let (backend, provider) = args.backend.provider(&registry)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))?;
    let lines = runtime
        .block_on(provider.reap(args.older_than, args.dry_run))
        .map_err(|e| match e.backend_kind() {
            Some(ErrorKind::UNSUPPORTED) => CliError::Unsupported(e.to_string()),
            _ => CliError::Failed(e.to_string()),
        })?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let text: String = lines.iter().map(|l| format!("{verb}: {l}\n")).collect();
    print_out(&text)?;
    say!(
        "host: {verb} {} item(s) of backend {} older than {}",
        lines.len(),
        backend.alias,
        fmt_duration(args.older_than)
    );
    Ok(0)
}
