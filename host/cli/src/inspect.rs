//! `host inspect FILE`: everything the host knows about one plugin file.

use std::fmt::Write as _;
use std::path::PathBuf;

use host::PluginPolicy;

use crate::exit::{print_out, CliError, NOT_LOADABLE};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The plugin file
    file: PathBuf,
    /// Print JSON for machines
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args, policy: &PluginPolicy) -> Result<u8, CliError> {
    let found = policy.inspect(&args.file);
    let text = if args.json {
        serde_json::to_string_pretty(&found)
            .map_err(|e| CliError::Failed(format!("cannot encode as JSON: {e}")))?
            + "\n"
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
        row("probe:", found.probe.as_deref());
        let abi = found.abi_stable.as_deref().map(|v| format!("ABI {v}"));
        row("abi_stable:", abi.as_deref());
        row("plugin-api:", found.plugin_api.as_deref());
        row("alias:", found.alias.as_deref());
        row("name:", found.name.as_deref());
        row("version:", found.plugin_version.as_deref());
        let status = match &found.error {
            None if found.isolated => "loadable; runs isolated, in a plugin server".to_owned(),
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
        out
    };
    print_out(&text)?;
    Ok(if found.loadable { 0 } else { NOT_LOADABLE })
}
