//! One container, one job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, ExecConfig, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt as _;
use plugin_api::sdk::*;

use crate::config::Settings;
use crate::engine::{self, error, is_not_found};

/// A started container.
pub struct DockerInstance {
    docker: Docker,
    settings: Arc<Settings>,
    name: String,
    image: String,
    cpus: Arc<Mutex<Vec<usize>>>,
    cpuset: Vec<usize>,
    startup: Duration,
    uploaded: AtomicBool,
    stopped: AtomicBool,
}

/// Removes a container whose start did not finish (cancelled or failed), in the background.
struct RemoveOnDrop {
    docker: Docker,
    name: String,
    armed: bool,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (docker, name) = (self.docker.clone(), self.name.clone());
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                let opts = RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build();
                let _ = docker.remove_container(&name, Some(opts)).await;
            });
        }
    }
}

fn take_cpus(pool: &Mutex<Vec<usize>>, n: usize) -> Vec<usize> {
    let mut use_count = pool.lock().unwrap_or_else(|e| e.into_inner());
    let mut order: Vec<usize> = (0..use_count.len()).collect();
    order.sort_by_key(|i| use_count[*i]);
    let chosen: Vec<usize> = order.into_iter().take(n).collect();
    for c in &chosen {
        use_count[*c] += 1;
    }
    chosen
}

fn give_cpus(pool: &Mutex<Vec<usize>>, cpus: &[usize]) {
    let mut use_count = pool.lock().unwrap_or_else(|e| e.into_inner());
    for c in cpus {
        if let Some(n) = use_count.get_mut(*c) {
            *n = n.saturating_sub(1);
        }
    }
}

impl DockerInstance {
    pub(crate) async fn start(
        docker: Docker,
        settings: Arc<Settings>,
        cpus: Arc<Mutex<Vec<usize>>>,
        attributes: &StartAttributes,
        progress: &Progress,
    ) -> Result<Self, BackendError> {
        let began = Instant::now();
        let failed = |e: BackendError| {
            progress.failure(e.message().to_owned());
            e
        };
        let image = engine::select_image(
            &docker,
            &settings,
            crate::config::ImageParams {
                image_name: &attributes.image_name,
                language: &attributes.language,
                dist: &attributes.dist,
                group: &attributes.group,
                os: &attributes.os,
            },
        )
        .await
        .map_err(failed)?;
        progress.success(format!("image {image}"));
        let name = format!(
            "host-{}",
            plugin_api::sdk::instances::instance_name("docker")
        );
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut labels: HashMap<String, String> = settings.labels.clone().into_iter().collect();
        labels.insert(engine::LABEL_BACKEND.into(), "docker".into());
        labels.insert(engine::LABEL_INSTANCE.into(), name.clone());
        labels.insert(engine::LABEL_HOST.into(), engine::hostname());
        labels.insert(engine::LABEL_PID.into(), std::process::id().to_string());
        labels.insert(engine::LABEL_CREATED.into(), created.to_string());
        let cpuset = if settings.cpus > 0 {
            take_cpus(&cpus, settings.cpus)
        } else {
            Vec::new()
        };
        let host_config = HostConfig {
            memory: (settings.memory > 0).then_some(settings.memory),
            shm_size: (settings.shm > 0).then_some(settings.shm),
            cpuset_cpus: (!cpuset.is_empty()).then(|| {
                cpuset
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            privileged: Some(settings.privileged),
            tmpfs: (!settings.tmpfs.is_empty())
                .then(|| settings.tmpfs.clone().into_iter().collect()),
            binds: (!settings.binds.is_empty()).then(|| settings.binds.clone()),
            security_opt: (!settings.security_opt.is_empty())
                .then(|| settings.security_opt.clone()),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            cmd: Some(settings.cmd.clone()),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        let mut guard = RemoveOnDrop {
            docker: docker.clone(),
            name: name.clone(),
            armed: true,
        };
        progress.neutral(format!("creating container {name}"));
        let created = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await;
        if let Err(e) = created {
            guard.armed = false;
            give_cpus(&cpus, &cpuset);
            return Err(failed(error(
                &format!("creating a container from {image}"),
                e,
            )));
        }
        progress.success(format!("container {name} created"));
        let result = async {
            docker
                .start_container(&name, None)
                .await
                .map_err(|e| error(&format!("starting container {name}"), e))?;
            progress.neutral("container started; waiting for it to run");
            loop {
                let info = docker
                    .inspect_container(&name, None)
                    .await
                    .map_err(|e| error(&format!("inspecting container {name}"), e))?;
                let state = info.state.unwrap_or_default();
                if state.running == Some(true) {
                    return Ok(());
                }
                if state.status == Some(bollard::models::ContainerStateStatusEnum::EXITED) {
                    return Err(BackendError::other(format!(
                        "container {name} exited right after starting (exit code {:?}); is CMD {:?} right for image {image}?",
                        state.exit_code, settings.cmd
                    )));
                }
                tokio::time::sleep(settings.inspect_interval).await;
            }
        }
        .await;
        if let Err(e) = result {
            give_cpus(&cpus, &cpuset);
            return Err(failed(e)); // the guard removes the container
        }
        progress.success("container running");
        guard.armed = false;
        tracing::info!(container = %name, image = %image, "container started");
        Ok(Self {
            docker,
            settings,
            name,
            image,
            cpus,
            cpuset,
            startup: began.elapsed(),
            uploaded: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        })
    }

    /// The image the container was made from.
    pub fn image(&self) -> &str {
        &self.image
    }
}

impl Instance for DockerInstance {
    async fn upload_script(&self, script: &[u8]) -> Result<(), BackendError> {
        if self.uploaded.swap(true, Ordering::SeqCst) {
            return Err(BackendError::stale_vm());
        }
        let tar = crate::tar::single_file(&self.settings.script_path, 0o755, script)
            .map_err(|e| BackendError::other(format!("cannot pack the script: {e}")))?;
        let opts = UploadToContainerOptionsBuilder::new().path("/").build();
        self.docker
            .upload_to_container(&self.name, Some(opts), bollard::body_full(tar.into()))
            .await
            .map_err(|e| {
                error(
                    &format!("uploading the script to container {}", self.name),
                    e,
                )
            })
    }

    async fn run_script(&self, output: &mut Output) -> Result<RunResult, BackendError> {
        if !self.uploaded.load(Ordering::SeqCst) {
            return Err(BackendError::other("no script was uploaded"));
        }
        let exec = self
            .docker
            .create_exec(
                &self.name,
                ExecConfig {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(self.settings.exec_cmd.clone()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| error(&format!("creating the exec in container {}", self.name), e))?;
        let started = self
            .docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(|e| error(&format!("starting the exec in container {}", self.name), e))?;
        let StartExecResults::Attached {
            output: mut stream, ..
        } = started
        else {
            return Err(BackendError::other("the engine did not attach to the exec"));
        };
        while let Some(item) = stream.next().await {
            match item {
                Ok(LogOutput::StdOut { message })
                | Ok(LogOutput::StdErr { message })
                | Ok(LogOutput::Console { message }) => output.write(Vec::from(message)).await?,
                Ok(LogOutput::StdIn { .. }) => {}
                Err(e) => {
                    tracing::warn!(container = %self.name, "lost the engine connection mid-run: {e}");
                    return Ok(RunResult::not_completed());
                }
            }
        }
        // The stream ends as the process does; its exit code may take a moment to show.
        for _ in 0..50 {
            let info = match self.docker.inspect_exec(&exec.id).await {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(container = %self.name, "cannot inspect the exec: {e}");
                    return Ok(RunResult::not_completed());
                }
            };
            if info.running != Some(true) {
                if let Some(code) = info.exit_code {
                    return Ok(RunResult::completed(code as i32));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(RunResult::not_completed())
    }

    async fn stop(&self) -> Result<(), BackendError> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        give_cpus(&self.cpus, &self.cpuset);
        let grace = self.settings.stop_grace.as_secs().min(i32::MAX as u64) as i32;
        let stop = StopContainerOptionsBuilder::new().t(grace).build();
        match self.docker.stop_container(&self.name, Some(stop)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            // Already stopped (304) or refusing: the forced removal below settles it.
            Err(e) => tracing::debug!(container = %self.name, "stop: {e}"),
        }
        let remove = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(&self.name, Some(remove)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(error(&format!("removing container {}", self.name), e)),
        }
    }

    fn id(&self) -> &str {
        &self.name
    }

    fn image_name(&self) -> &str {
        &self.image
    }

    fn supports_progress(&self) -> bool {
        true
    }

    fn startup_duration(&self) -> Duration {
        self.startup
    }
}
