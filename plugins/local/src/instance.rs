//! One local instance: a working directory, a script, and at most one run, on the SDK's
//! process helpers ([`plugin_api::sdk::process`]), which hold the containment.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugin_api::sdk::process::{Command, Jobs, WorkDir};
use plugin_api::sdk::*;

use crate::Settings;

/// The script's file name in the working directory.
const SCRIPT_NAME: &str = "build.sh";

/// A local instance.
pub struct LocalInstance {
    dir: WorkDir,
    settings: Arc<Settings>,
    env: Vec<(String, String)>,
    startup: Duration,
    uploaded: AtomicBool,
    running: AtomicBool,
    stopped: AtomicBool,
    jobs: Jobs,
}

impl LocalInstance {
    pub(crate) fn create(
        settings: Arc<Settings>,
        attributes: &StartAttributes,
    ) -> Result<Self, BackendError> {
        let began = Instant::now();
        let dir = WorkDir::create(&settings.scripts_dir, "local")?.keep(settings.keep_files);
        let a = attributes;
        let mut env: Vec<(String, String)> = [
            ("CI", "true"),
            ("BUILD_LANGUAGE", a.language.as_str()),
            ("BUILD_OS", a.os.as_str()),
            ("BUILD_DIST", a.dist.as_str()),
            ("BUILD_ARCH", a.arch.as_str()),
            ("BUILD_GROUP", a.group.as_str()),
            ("BUILD_IMAGE", a.image_name.as_str()),
            ("BUILD_OSX_IMAGE", a.osx_image.as_str()),
            ("BUILD_VM_TYPE", a.vm_type.as_str()),
            ("BUILD_VM_SIZE", a.vm_size.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        env.push(("BUILD_DIR".into(), dir.path().display().to_string()));
        env.extend(settings.env.iter().cloned());
        Ok(Self {
            dir,
            jobs: Jobs::new(settings.kill_grace),
            settings,
            env,
            startup: began.elapsed(),
            uploaded: AtomicBool::new(false),
            running: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        })
    }

    /// The instance's working directory.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// Clears the instance's running flag however the run ends.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Instance for LocalInstance {
    async fn upload_script(&self, script: &[u8]) -> Result<(), BackendError> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(BackendError::other("the instance was stopped"));
        }
        if self.uploaded.swap(true, Ordering::SeqCst) {
            return Err(BackendError::stale_vm());
        }
        self.dir.write_script(SCRIPT_NAME, script).await
    }

    async fn run_script(&self, output: &mut Output) -> Result<RunResult, BackendError> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(BackendError::other("the instance was stopped"));
        }
        if !self.uploaded.load(Ordering::SeqCst) {
            return Err(BackendError::other("no script was uploaded"));
        }
        if self.running.swap(true, Ordering::SeqCst) {
            return Err(BackendError::other("the script is already running"));
        }
        let _running = Running(&self.running);
        let mut command = Command::new(&self.settings.shell)
            .arg(SCRIPT_NAME)
            .current_dir(self.dir.path())
            .envs(self.env.iter().cloned())
            .tag(self.id());
        if self.settings.use_cgroup {
            command = command.cgroup(format!("host-{}", self.id()));
        }
        self.jobs.run(command, output).await
    }

    async fn stop(&self) -> Result<(), BackendError> {
        self.stopped.store(true, Ordering::SeqCst);
        let ended = self.jobs.stop().await;
        let removed = self.dir.remove().await;
        ended.and(removed)
    }

    fn id(&self) -> &str {
        self.dir.id()
    }

    fn startup_duration(&self) -> Duration {
        self.startup
    }
}

/// A working directory left by a host process that is gone.
pub(crate) struct Stale {
    pub(crate) id: String,
    pub(crate) host_pid: u32,
    pub(crate) dir: PathBuf,
}

/// The instance id's host pid (ids are made by [`instances::instance_name`]).
pub(crate) fn host_pid_of(id: &str) -> Option<u32> {
    instances::host_pid_of(id, "local")
}

/// The working directories in `base` whose host process no longer runs and that were last
/// changed more than `older_than` ago.
pub(crate) fn stale_instances(
    base: &std::path::Path,
    older_than: Duration,
) -> Result<Vec<Stale>, BackendError> {
    let entries = std::fs::read_dir(base)
        .map_err(|e| BackendError::other(format!("cannot read {}: {e}", base.display())))?;
    let now = std::time::SystemTime::now();
    let mut stale = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("host-") else {
            continue;
        };
        let Some(host_pid) = host_pid_of(id) else {
            continue;
        };
        if instances::process_alive(host_pid) {
            continue; // its host still runs: not ours to touch
        }
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if age >= older_than {
            stale.push(Stale {
                id: id.to_owned(),
                host_pid,
                dir: entry.path(),
            });
        }
    }
    stale.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(stale)
}
