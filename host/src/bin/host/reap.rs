//! `host reap`: remove what a backend left behind (after a host crash, say).

use std::process::ExitCode;
use std::time::Duration;

use host::Registry;
use plugin_api::config::parse_duration;
use plugin_api::ErrorKind;

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

pub fn run(args: &Args, registry: &Registry) -> ExitCode {
    let (backend, provider) = match args.backend.provider(registry) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("host: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(provider.reap(args.older_than, args.dry_run));
    match result {
        Ok(lines) => {
            let verb = if args.dry_run {
                "would remove"
            } else {
                "removed"
            };
            for l in &lines {
                println!("{verb}: {l}");
            }
            eprintln!(
                "host: {verb} {} item(s) of backend {} older than {}",
                lines.len(),
                backend.alias,
                host::job::fmt_duration(args.older_than)
            );
            ExitCode::SUCCESS
        }
        Err(e) if e.backend_kind() == Some(ErrorKind::UNSUPPORTED) => {
            eprintln!("host: {e}");
            ExitCode::from(crate::exit::UNSUPPORTED)
        }
        Err(e) => {
            eprintln!("host: {e}");
            ExitCode::FAILURE
        }
    }
}
