//! `host list-backends`: what loaded, what each backend accepts, and what was rejected.

use std::fmt::Write as _;

use host::plugins::loader::PluginDir;
use host::{PluginPolicy, Registry};
use plugin_api::config::env_prefix;
use serde::Serialize;

use crate::exit::say;
use crate::exit::{print_out, CliError, SOME_REJECTED};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON for machines instead of a table
    #[arg(long)]
    json: bool,

    /// Write a plugin lock pinning the SHA-256 of every plugin that loads now
    #[arg(long, value_name = "FILE")]
    write_lock: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct Listing<'a> {
    plugin_dirs: Vec<String>,
    backends: Vec<BackendJson<'a>>,
    rejected: Vec<RejectedJson>,
}

#[derive(Serialize)]
struct BackendJson<'a> {
    alias: &'a str,
    name: &'a str,
    plugin_version: &'a str,
    plugin_api_version: &'a str,
    path: String,
    /// Runs out of process, in a plugin server (`--isolate`).
    isolated: bool,
    config_keys: Vec<KeyJson<'a>>,
}

#[derive(Serialize)]
struct KeyJson<'a> {
    key: &'a str,
    env: String,
    help: &'a str,
}

#[derive(Serialize)]
struct RejectedJson {
    path: String,
    reason: String,
}

pub fn run(args: &Args, policy: &PluginPolicy) -> Result<u8, CliError> {
    let registry = &policy.load();
    let dirs = policy.dirs();
    let rejected: Vec<RejectedJson> = registry
        .dir_errors()
        .iter()
        .map(|e| match e {
            host::HostError::PluginDir { path, error } => RejectedJson {
                path: path.display().to_string(),
                reason: format!("cannot read plugin directory: {error}"),
            },
            other => RejectedJson {
                path: String::new(),
                reason: other.to_string(),
            },
        })
        .chain(registry.rejected().iter().map(|r| RejectedJson {
            path: r.path.display().to_string(),
            reason: r.reason.to_string(),
        }))
        .collect();
    let failed = !rejected.is_empty();
    if let Some(path) = &args.write_lock {
        write_lock(path, registry).map_err(|e| {
            CliError::Failed(format!(
                "cannot write the plugin lock {}: {e}",
                path.display()
            ))
        })?;
    }
    let text = if args.json {
        let listing = Listing {
            plugin_dirs: dirs.iter().map(|d| d.path.display().to_string()).collect(),
            backends: registry
                .backends()
                .map(|b| BackendJson {
                    alias: &b.alias,
                    name: &b.human_readable_name,
                    plugin_version: &b.plugin_version,
                    plugin_api_version: &b.plugin_api_version,
                    path: b.path.display().to_string(),
                    isolated: b.isolated,
                    config_keys: b
                        .provider_help
                        .iter()
                        .map(|(k, h)| KeyJson {
                            key: k,
                            env: format!("{}{k}", env_prefix(&b.alias)),
                            help: h,
                        })
                        .collect(),
                })
                .collect(),
            rejected,
        };
        serde_json::to_string_pretty(&listing)
            .map_err(|e| CliError::Failed(format!("cannot encode the listing as JSON: {e}")))?
            + "\n"
    } else {
        let mut out = table(registry, dirs);
        if failed {
            out.push_str("\nRejected plugin files:\n");
            for r in &rejected {
                let _ = writeln!(out, "  {}: {}", r.path, r.reason);
            }
        }
        out
    };
    print_out(&text)?;
    Ok(if failed { SOME_REJECTED } else { 0 })
}

fn table(registry: &Registry, dirs: &[PluginDir]) -> String {
    let mut out = String::new();
    if registry.backends().next().is_none() {
        let searched: Vec<String> = dirs.iter().map(|d| d.path.display().to_string()).collect();
        let _ = writeln!(
            out,
            "No backends loaded (searched: {}).",
            searched.join(", ")
        );
        return out;
    }
    let rows: Vec<[String; 5]> = registry
        .backends()
        .map(|b| {
            [
                b.alias.clone(),
                b.human_readable_name.clone(),
                b.plugin_version.clone(),
                if b.isolated { "isolated" } else { "in host" }.to_owned(),
                b.path.display().to_string(),
            ]
        })
        .collect();
    let header = ["ALIAS", "NAME", "VERSION", "RUNS", "FILE"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = |cells: [&str; 5]| {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    };
    line(header);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
    out.push_str(&backends_help(registry));
    out
}

fn write_lock(path: &std::path::Path, registry: &Registry) -> std::io::Result<()> {
    let mut files = Vec::new();
    for b in registry.backends() {
        let name = b
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let hash = match &b.facts.sha256 {
            Some(h) => h.clone(),
            None => host::plugins::trust::sha256_file(&b.facts.resolved)?,
        };
        files.push((name, hash));
    }
    host::plugins::trust::Lock::write(path, &files)?;
    say!(
        "host: wrote {} with {} plugin(s)",
        path.display(),
        files.len()
    );
    Ok(())
}

/// Each backend's config keys with their help, for `list-backends` and `--help`.
pub fn backends_help(registry: &Registry) -> String {
    let mut out = String::new();
    registry.each_backend(|b| {
        let prefix = env_prefix(&b.alias);
        let _ = writeln!(
            out,
            "\n{} ({}) config keys, set with --config KEY=VALUE or {prefix}<KEY>:",
            b.alias, b.human_readable_name
        );
        let width = b.provider_help.keys().map(|k| k.len()).max().unwrap_or(0);
        for (k, h) in &b.provider_help {
            let _ = writeln!(out, "  {k:<width$}  {h}");
        }
        if b.provider_help.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
    });
    out
}
