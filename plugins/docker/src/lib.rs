//! The `docker` backend: each job runs in a container made through the Docker Engine API
//! (any engine that speaks it: Docker, podman's API service), and nothing of it is left
//! behind.
//!
//! - `start` picks the image (`IMAGE`, or by the job's language as the original's tag
//!   selector: `travis:<lang>`, `<lang>`, `travis:default`, `default`, among the images the
//!   engine has), creates a container labelled so that this host can find it later
//!   (backend, instance, host, host pid, creation time), with the memory, shm, cpuset,
//!   tmpfs, privileged, bind and security options of the config, starts it and waits until
//!   it runs.
//! - `upload_script` puts the script at `SCRIPT_PATH` (mode 0755) through the archive API;
//!   a second upload is the stale-VM error.
//! - `run_script` execs `EXEC_CMD` attached and streams stdout and stderr into the log as
//!   they arrive; the exit code comes from the exec's inspection. A connection to the engine
//!   lost mid-run is a run that did not complete (requeue), not a failed build.
//! - `stop` stops the container (with `STOP_GRACE`) and force-removes it with its volumes,
//!   on every path; a container already gone is not an error. A start that is cancelled
//!   removes what it created.
//! - `reap` removes labelled containers of this machine older than a limit whose host
//!   process is gone (what a crash or a power cut leaves).

mod config;
mod engine;
mod instance;
mod tar;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use plugin_api::sdk::*;

pub use config::Settings;
pub use instance::DockerInstance;

/// The docker backend.
pub struct DockerBackend;

impl Backend for DockerBackend {
    const ALIAS: &'static str = "docker";
    const HUMAN_READABLE_NAME: &'static str = "Docker";
    const HELP: &'static [(&'static str, &'static str)] = config::HELP;
    type Provider = DockerProvider;

    fn new_provider(cfg: &ProviderConfig) -> Result<DockerProvider, BackendError> {
        let settings = Settings::from_config(cfg)?;
        let docker = engine::connect(&settings)?;
        Ok(DockerProvider {
            cpus: Arc::new(Mutex::new(vec![0; settings.cpu_set_size])),
            settings: Arc::new(settings),
            docker,
        })
    }
}

/// Starts containers.
pub struct DockerProvider {
    settings: Arc<Settings>,
    docker: bollard::Docker,
    /// Containers using each CPU of the set, for choosing cpusets.
    cpus: Arc<Mutex<Vec<usize>>>,
}

impl Provider for DockerProvider {
    type Instance = DockerInstance;

    /// Checks that the engine answers.
    async fn setup(&self) -> Result<(), BackendError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| engine::error(&format!("the engine at {}", self.settings.endpoint), e))
    }

    async fn start(&self, attributes: &StartAttributes) -> Result<DockerInstance, BackendError> {
        self.start_with_progress(attributes, Progress::none()).await
    }

    fn supports_progress(&self) -> bool {
        true
    }

    /// The image chosen, the container created, started, and running.
    async fn start_with_progress(
        &self,
        attributes: &StartAttributes,
        progress: Progress,
    ) -> Result<DockerInstance, BackendError> {
        DockerInstance::start(
            self.docker.clone(),
            Arc::clone(&self.settings),
            Arc::clone(&self.cpus),
            attributes,
            &progress,
        )
        .await
    }

    async fn reap(&self, older_than: Duration, dry_run: bool) -> Result<Vec<String>, BackendError> {
        engine::reap(&self.docker, older_than, dry_run).await
    }
}

plugin_api::export_backend!(DockerBackend);
