//! Talking to the engine: connecting, choosing images, labels, reaping.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{
    ListContainersOptions, ListImagesOptions, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use plugin_api::BackendError;

use crate::config::{env_image, ImageParams, Selector, Settings};

pub const LABEL_BACKEND: &str = "dev.ci-host.backend";
pub const LABEL_INSTANCE: &str = "dev.ci-host.instance";
pub const LABEL_HOST: &str = "dev.ci-host.host";
pub const LABEL_PID: &str = "dev.ci-host.pid";
pub const LABEL_CREATED: &str = "dev.ci-host.created";

/// Seconds a request may take before bollard gives up (not the streamed output of a run).
const REQUEST_TIMEOUT: u64 = 120;

/// A client for the engine at `ENDPOINT` (unix socket, TCP, or TLS with `CERT_PATH`).
pub fn connect(s: &Settings) -> Result<Docker, BackendError> {
    let version = bollard::API_DEFAULT_VERSION;
    let result = if s.endpoint.starts_with("unix://") {
        Docker::connect_with_unix(&s.endpoint, REQUEST_TIMEOUT, version)
    } else if let Some(certs) = &s.cert_path {
        Docker::connect_with_ssl(
            &s.endpoint,
            &certs.join("key.pem"),
            &certs.join("cert.pem"),
            &certs.join("ca.pem"),
            REQUEST_TIMEOUT,
            version,
        )
    } else {
        Docker::connect_with_http(&s.endpoint, REQUEST_TIMEOUT, version)
    };
    result.map_err(|e| BackendError::invalid_config("ENDPOINT", &s.endpoint, e))
}

/// An engine error as a backend error, saying what was being done.
pub fn error(what: &str, e: bollard::errors::Error) -> BackendError {
    BackendError::other(format!("{what}: {e}"))
}

/// Whether `e` is the engine saying "no such container".
pub fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// This machine's name, for the host label.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `name` as the engine lists it: `localhost/x:tag` and `docker.io/library/x` are `x`, and
/// a name without a tag is `:latest`.
fn normalize(name: &str) -> String {
    let name = name
        .strip_prefix("localhost/")
        .or_else(|| name.strip_prefix("docker.io/library/"))
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// The image for a job: `IMAGE` if set (the operator's), else the job's own image name (its
/// payload's `image_name`, as the original takes it first), else with the env selector the
/// `IMAGE_*` key that fits the job best, else the first of `travis:<lang>`, `<lang>`,
/// `travis:default`, `default` that the engine has. The image chosen must exist on the
/// engine.
pub async fn select_image(
    docker: &Docker,
    s: &Settings,
    params: ImageParams<'_>,
) -> Result<String, BackendError> {
    let language = params.language;
    let images = docker
        .list_images(Some(ListImagesOptions::default()))
        .await
        .map_err(|e| error("listing the engine's images", e))?;
    let have: Vec<String> = images
        .iter()
        .flat_map(|i| i.repo_tags.iter().map(|t| normalize(t)))
        .collect();
    let tried: Vec<String> = match (&s.image, &s.selector) {
        (Some(image), _) => vec![image.clone()],
        (None, _) if !params.image_name.trim().is_empty() => {
            vec![params.image_name.trim().to_owned()]
        }
        (None, Selector::Env(images)) => vec![env_image(images, params)],
        (None, Selector::Tag) => {
            let lang = if language.is_empty() {
                "default"
            } else {
                language
            };
            vec![
                format!("travis:{lang}"),
                lang.to_owned(),
                "travis:default".to_owned(),
                "default".to_owned(),
            ]
        }
    };
    for candidate in &tried {
        if have.contains(&normalize(candidate)) {
            return Ok(candidate.clone());
        }
    }
    let mut known = have.clone();
    known.sort();
    known.dedup();
    Err(BackendError::other(format!(
        "no image found on the engine: tried {} (the engine has: {})",
        tried.join(", "),
        if known.is_empty() {
            "no images".to_owned()
        } else {
            known.join(", ")
        }
    )))
}

/// Removes this machine's labelled containers older than `older_than` whose host process
/// is gone (or, with `dry_run`, lists them).
pub async fn reap(
    docker: &Docker,
    older_than: Duration,
    dry_run: bool,
) -> Result<Vec<String>, BackendError> {
    let host = hostname();
    // Podman shows a container that is being stopped as "stopped", a state the Docker API
    // (and so bollard) does not have, and a listing holding one fails to decode. So only
    // the states both engines know are asked for (the values of one filter key are OR'ed;
    // podman refuses Docker's "restarting" and "dead"): a container that is being stopped
    // (its stopper removes it) and Docker's rare "dead" ones are left for a later reap. A
    // decode failure that still happens is tried again a few times before it is an error.
    let filters = HashMap::from([
        (
            "label".to_owned(),
            vec![
                format!("{LABEL_BACKEND}=docker"),
                format!("{LABEL_HOST}={host}"),
            ],
        ),
        (
            "status".to_owned(),
            ["created", "running", "paused", "exited", "removing"]
                .map(str::to_owned)
                .to_vec(),
        ),
    ]);
    let mut attempt = 0;
    let containers = loop {
        let listed = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters.clone()),
                ..Default::default()
            }))
            .await;
        match listed {
            Ok(c) => break c,
            Err(e @ bollard::errors::Error::JsonSerdeError { .. }) if attempt < 20 => {
                tracing::debug!("listing containers: {e}; trying again");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(error("listing containers", e)),
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut lines = Vec::new();
    for c in containers {
        let labels = c.labels.clone().unwrap_or_default();
        // Both the label filter and this check: an engine that ignores filters must not make
        // us remove containers that are not ours.
        if labels.get(LABEL_BACKEND).map(String::as_str) != Some("docker")
            || labels.get(LABEL_HOST) != Some(&host)
        {
            continue;
        }
        let created = labels
            .get(LABEL_CREATED)
            .and_then(|v| v.parse::<i64>().ok())
            .or(c.created)
            .unwrap_or(now);
        let age = Duration::from_secs((now - created).max(0) as u64);
        if age < older_than {
            continue;
        }
        let pid = labels.get(LABEL_PID).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(plugin_api::sdk::instances::process_alive) {
            continue; // its host still runs and will stop it
        }
        let Some(id) = c.id.clone() else { continue };
        let name = labels
            .get(LABEL_INSTANCE)
            .cloned()
            .unwrap_or_else(|| id.clone());
        lines.push(format!(
            "container {name} ({}), created {}s ago by host pid {} (gone)",
            &id[..id.len().min(12)],
            age.as_secs(),
            pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
        ));
        if !dry_run {
            let opts = RemoveContainerOptionsBuilder::new()
                .force(true)
                .v(true)
                .build();
            match docker.remove_container(&id, Some(opts)).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(error(&format!("removing container {name}"), e)),
            }
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn image_names_compare_as_the_engine_lists_them() {
        assert_eq!(normalize("localhost/travis:go"), "travis:go");
        assert_eq!(normalize("ruby"), "ruby:latest");
        assert_eq!(normalize("docker.io/library/ruby:3"), "ruby:3");
        assert_eq!(normalize("registry:5000/x"), "registry:5000/x:latest");
    }
}
