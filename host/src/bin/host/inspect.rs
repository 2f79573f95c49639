//! `host inspect FILE`: everything the host knows about one plugin file.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use host::inspect::inspect;
use host::trust::Lock;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The plugin file
    file: PathBuf,
    /// Print JSON for machines
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args, lock: Option<&Lock>) -> ExitCode {
    let found = inspect(&args.file, lock);
    if args.json {
        match serde_json::to_string_pretty(&found) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("host: cannot encode as JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let mut out = String::new();
        let mut row = |k: &str, v: Option<&str>| {
            if let Some(v) = v {
                let _ = writeln!(out, "{k:<12} {v}");
            }
        };
        row("path:", Some(&found.path));
        if found.resolved.as_deref() != Some(found.path.as_str()) {
            row("resolved:", found.resolved.as_deref());
        }
        row("size:", found.size.map(|s| format!("{s} bytes")).as_deref());
        row("sha256:", found.sha256.as_deref());
        row("trust:", Some(&found.trust));
        row(
            "abi_stable:",
            found
                .abi_stable
                .as_deref()
                .map(|v| format!("ABI {v}"))
                .as_deref(),
        );
        row("plugin-api:", found.plugin_api.as_deref());
        row("alias:", found.alias.as_deref());
        row("name:", found.name.as_deref());
        row("version:", found.plugin_version.as_deref());
        let status = match &found.error {
            None => "loadable".to_owned(),
            Some(e) => format!("not loadable: {e}"),
        };
        row("status:", Some(&status));
        if !found.config_keys.is_empty() {
            let _ = writeln!(out, "config keys:");
            let w = found
                .config_keys
                .iter()
                .map(|(k, _)| k.len())
                .max()
                .unwrap_or(0);
            for (k, h) in &found.config_keys {
                let _ = writeln!(out, "  {k:<w$}  {h}");
            }
        }
        print!("{out}");
    }
    if found.loadable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::exit::SOME_REJECTED)
    }
}
