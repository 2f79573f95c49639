//! The `local` backend: each job's script runs as a real process tree on this machine, in a
//! working directory of its own, and nothing of it is left behind.
//!
//! Unlike the original's local backend (whose bugs we do not copy), a non-zero exit is a
//! completed run with that exit code, cancellation kills the whole job, and the script
//! and its directory are removed at stop.
//!
//! # What runs, and where
//! - `start` makes the instance's directory `<SCRIPTS_DIR>/host-local-<id>` (mode 0700).
//! - `upload_script` writes `build.sh` there (mode 0700); a second upload is the original's
//!   stale-VM error.
//! - `run_script` runs `<SHELL> build.sh` in that directory with stdin from /dev/null.
//!   stdout and stderr share one pipe (as the original's, which gave both to one writer), so
//!   the log holds both streams interleaved in the order they were written, byte for byte.
//! - The environment is the host's, without its `BACKEND_*` variables (they hold backend
//!   config and secrets), plus `CI=true`, `BUILD_DIR`, the start attributes as
//!   `BUILD_LANGUAGE`, `BUILD_OS`, `BUILD_DIST`, `BUILD_ARCH`, `BUILD_GROUP`, `BUILD_IMAGE`,
//!   `BUILD_OSX_IMAGE`, `BUILD_VM_TYPE`, `BUILD_VM_SIZE`, and the `ENV` config pairs.
//!
//! # Exit status
//! Exit codes 0-255 are reported as themselves; a script killed by signal N completes with
//! exit code 128+N and a line in the log naming the signal.
//!
//! # Nothing left behind
//! The SDK's process helpers hold the containment: see [`plugin_api::sdk::process::tree`]
//! for what is guaranteed where.

mod instance;

use std::path::PathBuf;
use std::time::Duration;

use plugin_api::sdk::process::{Cgroup, ProcessTree};
use plugin_api::sdk::*;

pub use instance::LocalInstance;

/// The local backend.
pub struct Local;

/// Default grace between SIGTERM and SIGKILL.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

impl Backend for Local {
    const ALIAS: &'static str = "local";
    const HUMAN_READABLE_NAME: &'static str = "Local";
    const HELP: &'static [(&'static str, &'static str)] = &[
        (
            "SCRIPTS_DIR",
            "directory for each job's working directory (default: the system temp dir)",
        ),
        ("SHELL", "shell that runs the build script (default: bash)"),
        (
            "KILL_GRACE",
            "time between SIGTERM and SIGKILL when a job is stopped (default: 10s)",
        ),
        (
            "KEEP_FILES",
            "keep the job's working directory after stop, for debugging (true/false)",
        ),
        (
            "ENV",
            "extra environment for the script: comma-separated KEY=VALUE pairs",
        ),
        (
            "CGROUP",
            "put each job in a cgroup of its own when the system allows (default: true)",
        ),
    ];
    type Provider = LocalProvider;

    fn new_provider(config: &ProviderConfig) -> Result<LocalProvider, BackendError> {
        let scripts_dir = match config.lookup("SCRIPTS_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => std::env::temp_dir(),
        };
        if !scripts_dir.is_dir() {
            return Err(BackendError::invalid_config(
                "SCRIPTS_DIR",
                &scripts_dir.display().to_string(),
                "not an existing directory",
            ));
        }
        let shell = match config.lookup("SHELL") {
            Some(s) if !s.trim().is_empty() => s.trim().to_owned(),
            _ => "bash".to_owned(),
        };
        if let Err(why) = check_program(&shell) {
            return Err(BackendError::invalid_config("SHELL", &shell, why));
        }
        Ok(LocalProvider {
            settings: std::sync::Arc::new(Settings {
                scripts_dir,
                shell,
                kill_grace: config.duration("KILL_GRACE")?.unwrap_or(DEFAULT_KILL_GRACE),
                keep_files: config.bool("KEEP_FILES")?.unwrap_or(false),
                env: parse_env(config.get("ENV"))?,
                use_cgroup: config.bool("CGROUP")?.unwrap_or(true),
            }),
        })
    }
}

/// Checks that `program` names an executable file: as a path when it has a `/`, else on
/// `PATH`, as `exec` would find it. A shell that cannot start is the user's config mistake,
/// found here rather than as a broken run.
fn check_program(program: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return if executable(std::path::Path::new(program)) {
            Ok(())
        } else {
            Err("no executable file at that path".into())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| executable(&dir.join(program))) {
        Ok(())
    } else {
        Err("not found on PATH".into())
    }
}

/// Parses `ENV`: comma-separated `KEY=VALUE` pairs.
fn parse_env(s: &str) -> Result<Vec<(String, String)>, BackendError> {
    let mut pairs = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !k.contains(char::is_whitespace) => {
                pairs.push((k.trim().to_owned(), v.to_owned()))
            }
            _ => {
                return Err(BackendError::invalid_config(
                    "ENV",
                    s,
                    format!("{part:?} is not KEY=VALUE"),
                ))
            }
        }
    }
    Ok(pairs)
}

/// Validated config of a local provider.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) scripts_dir: PathBuf,
    pub(crate) shell: String,
    pub(crate) kill_grace: Duration,
    pub(crate) keep_files: bool,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) use_cgroup: bool,
}

/// Starts local instances.
pub struct LocalProvider {
    settings: std::sync::Arc<Settings>,
}

impl Provider for LocalProvider {
    type Instance = LocalInstance;

    async fn start(&self, attributes: &StartAttributes) -> Result<LocalInstance, BackendError> {
        LocalInstance::create(std::sync::Arc::clone(&self.settings), attributes)
    }

    /// Removes what hosts that are gone left in `SCRIPTS_DIR`: each `host-local-<pid>-...`
    /// working directory whose host process no longer runs and that is older than
    /// `older_than`, after ending the processes of its job (its cgroup, its tag).
    async fn reap(&self, older_than: Duration, dry_run: bool) -> Result<Vec<String>, BackendError> {
        let settings = std::sync::Arc::clone(&self.settings);
        let stale =
            spawn_blocking(move || instance::stale_instances(&settings.scripts_dir, older_than))
                .await??;
        let mut lines = Vec::new();
        let mut reaped = std::collections::HashSet::new();
        for s in stale {
            reaped.insert(s.id.clone());
            let job = std::sync::Arc::new(ProcessTree::found(
                &s.id,
                Cgroup::existing(&format!("host-{}", s.id)),
            ));
            let pids = job.live_pids();
            lines.push(format!(
                "instance {} of host pid {} (gone): working directory {}, {} process(es)",
                s.id,
                s.host_pid,
                s.dir.display(),
                pids.len()
            ));
            if dry_run {
                continue;
            }
            job.terminate(Duration::ZERO).await?;
            drop(job);
            std::fs::remove_dir_all(&s.dir).map_err(|e| {
                BackendError::other(format!("cannot remove {}: {e}", s.dir.display()))
            })?;
        }
        // Cgroups of gone hosts whose directories are already gone (or elsewhere), as old
        // as --older-than asks: a younger one is left, whole, with its processes.
        for name in Cgroup::names_with_prefix("host-local-") {
            let id = name.trim_start_matches("host-");
            let gone = instance::host_pid_of(id).is_some_and(|pid| !instances::process_alive(pid));
            if !gone || reaped.contains(id) {
                continue;
            }
            let Some(cgroup) = Cgroup::existing(&name) else {
                continue;
            };
            if cgroup.age() < older_than {
                continue;
            }
            let job = std::sync::Arc::new(ProcessTree::found(id, Some(cgroup)));
            lines.push(format!(
                "cgroup {name} of a gone host: {} process(es)",
                job.live_pids().len()
            ));
            if !dry_run {
                job.terminate(Duration::ZERO).await?;
            }
        }
        Ok(lines)
    }

    fn supports_progress(&self) -> bool {
        true
    }

    /// The working directory, and how the job's processes will be contained.
    async fn start_with_progress(
        &self,
        attributes: &StartAttributes,
        progress: Progress,
    ) -> Result<LocalInstance, BackendError> {
        progress.neutral("making a working directory");
        let instance = match self.start(attributes).await {
            Ok(i) => i,
            Err(e) => {
                progress.failure(format!("no working directory: {e}"));
                return Err(e);
            }
        };
        progress.success(format!("working directory {}", instance.dir().display()));
        progress.success(if self.settings.use_cgroup {
            "the job's processes go in a cgroup of their own where the system allows"
        } else {
            "the job's processes are tracked by a tag in their environment (CGROUP=false)"
        });
        Ok(instance)
    }
}

plugin_api::export_backend!(Local);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs_parse_and_bad_ones_name_the_key() {
        assert_eq!(
            parse_env("A=1, B=x=y ,").unwrap(),
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert!(parse_env("").unwrap().is_empty());
        let e = parse_env("A=1,oops").unwrap_err();
        assert!(
            e.message().contains("ENV") && e.message().contains("oops"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_scripts_dir_is_a_config_error() {
        let cfg = ProviderConfig::from_map([("SCRIPTS_DIR", "/nonexistent/dir")]);
        let e = Local::new_provider(&cfg).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::INVALID_CONFIG);
        assert!(e.message().contains("SCRIPTS_DIR"));
    }
}
