//! The job payload, as the original worker receives it (`job.go`, `example-payload.json`),
//! and what a job runs with: start attributes, limits and a script.
//!
//! Parsing is lenient where real payloads vary (unknown fields are ignored, `null` means
//! "not given", a timeout of 0 means the default) and strict where a job could not run
//! right: a payload that is not JSON or has no job id cannot be reported on at all
//! ([`PayloadError::Unreadable`]); one with an id but a bad field is a job that errors
//! ([`PayloadError::Invalid`]).

use std::time::Duration;

use plugin_api::{StartAttributes, VmConfig};
use serde::Deserialize;
use serde_json::Value;

/// Where `meta` keeps how often the worker requeued the job (our field; the original keeps
/// `state_update_count` there).
pub const REQUEUE_COUNT: &str = "requeue_count";

/// Why a payload cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or no job id: nothing can be reported about it.
    #[error("{0}")]
    Unreadable(String),
    /// A job with an id, but something in it is wrong: it errors with this reason.
    #[error("job {id}: {reason}")]
    Invalid {
        /// The job's id.
        id: u64,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raw {
    job: RawJob,
    uuid: Option<String>,
    config: RawConfig,
    timeouts: Option<RawTimeouts>,
    vm_type: Option<String>,
    vm_config: Option<RawVmConfig>,
    vm_size: Option<String>,
    queue: Option<String>,
    warmer: Option<bool>,
    repository: Option<RawRepository>,
    script: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawJob {
    number: Option<String>,
    queued_at: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawRepository {
    slug: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    language: Option<String>,
    os: Option<String>,
    dist: Option<String>,
    arch: Option<String>,
    group: Option<String>,
    osx_image: Option<String>,
    image_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawTimeouts {
    hard_limit: Option<i64>,
    log_silence: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawVmConfig {
    gpu_count: Option<i64>,
    gpu_type: Option<String>,
    zone: Option<String>,
}

/// A job payload that can run.
#[derive(Debug, Clone)]
pub struct Payload {
    /// `job.id`.
    pub id: u64,
    /// `job.number`, e.g. `445.1`.
    pub number: Option<String>,
    /// `uuid`.
    pub uuid: Option<String>,
    /// `repository.slug`.
    pub slug: Option<String>,
    /// `job.queued_at`, as given.
    pub queued_at: Option<String>,
    /// `queue`.
    pub queue: Option<String>,
    /// The start attributes (without the worker's defaults).
    pub attributes: StartAttributes,
    /// `timeouts.hard_limit`, when given and not 0.
    pub hard_limit: Option<Duration>,
    /// `timeouts.log_silence`, when given and not 0.
    pub log_silence: Option<Duration>,
    /// The build script (our extension), when the payload carries one.
    pub script: Option<String>,
    /// How often this job was requeued (`meta.requeue_count`).
    pub requeue_count: u32,
    /// The whole document, to write back when the job is requeued.
    pub document: Value,
}

/// The job id of a document: `job.id`, a number or a string of digits.
pub(crate) fn job_id(doc: &Value) -> Option<u64> {
    job_id_of_job(doc.get("job")?)
}

/// The job id of a document's `job` object.
pub(crate) fn job_id_of_job(job: &Value) -> Option<u64> {
    match job.get("id")? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn seconds(id: u64, what: &str, v: Option<i64>) -> Result<Option<Duration>, PayloadError> {
    match v {
        None | Some(0) => Ok(None),
        Some(s) if s < 0 => Err(PayloadError::Invalid {
            id,
            reason: format!(
                "timeouts.{what} is negative ({s}); expected seconds, or 0/null for the default"
            ),
        }),
        Some(s) => Ok(Some(Duration::from_secs(s as u64))),
    }
}

impl Payload {
    /// Parses a payload. See the module docs for what is an error.
    pub fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let document: Value = serde_json::from_slice(bytes)
            .map_err(|e| PayloadError::Unreadable(format!("not a JSON job payload: {e}")))?;
        let id = job_id(&document).ok_or_else(|| {
            PayloadError::Unreadable("the payload has no job id (job.id, a whole number)".into())
        })?;
        let raw = Raw::deserialize(&document).map_err(|e| PayloadError::Invalid {
            id,
            reason: format!("the payload does not have the expected shape: {e}"),
        })?;
        let timeouts = raw.timeouts.unwrap_or_default();
        let hard_limit = seconds(id, "hard_limit", timeouts.hard_limit)?;
        let log_silence = seconds(id, "log_silence", timeouts.log_silence)?;
        let vm = raw.vm_config.unwrap_or_default();
        if vm.gpu_count.is_some_and(|n| n < 0) {
            return Err(PayloadError::Invalid {
                id,
                reason: "vm_config.gpu_count is negative".into(),
            });
        }
        let text = |v: Option<String>| v.unwrap_or_default();
        let attributes = StartAttributes {
            language: text(raw.config.language),
            osx_image: text(raw.config.osx_image),
            dist: text(raw.config.dist),
            arch: text(raw.config.arch),
            group: text(raw.config.group),
            os: text(raw.config.os),
            image_name: text(raw.config.image_name),
            vm_type: text(raw.vm_type),
            vm_config: VmConfig {
                gpu_count: vm.gpu_count.unwrap_or(0),
                gpu_type: text(vm.gpu_type),
                zone: text(vm.zone),
            },
            vm_size: text(raw.vm_size),
            warmer: raw.warmer.unwrap_or(false),
            ..StartAttributes::default()
        };
        let requeue_count = document
            .get("meta")
            .and_then(|m| m.get(REQUEUE_COUNT))
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(u64::from(u32::MAX)) as u32;
        Ok(Self {
            id,
            number: raw.job.number,
            uuid: raw.uuid,
            slug: raw.repository.and_then(|r| r.slug),
            queued_at: raw.job.queued_at,
            queue: raw.queue,
            attributes,
            hard_limit,
            log_silence,
            script: raw.script,
            requeue_count,
            document,
        })
    }

    /// The document with `meta.requeue_count` one higher, to put back on the queue.
    pub fn requeued_document(&self) -> Vec<u8> {
        let mut doc = self.document.clone();
        if let Some(obj) = doc.as_object_mut() {
            let meta = obj
                .entry("meta")
                .or_insert_with(|| Value::Object(Default::default()));
            if !meta.is_object() {
                *meta = Value::Object(Default::default());
            }
            if let Some(meta) = meta.as_object_mut() {
                meta.insert(REQUEUE_COUNT.into(), (self.requeue_count + 1).into());
            }
        }
        serde_json::to_vec(&doc).unwrap_or_default()
    }
}

/// A job file's document with `meta.requeue_count` raised, the new count and the job's id:
/// for a crashed worker's claims. `None` when it is not a job.
pub fn bump_requeue_count(bytes: &[u8]) -> Option<(Vec<u8>, u32, u64)> {
    let p = Payload::parse(bytes).ok()?;
    Some((p.requeued_document(), p.requeue_count + 1, p.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "type": "test", "vm_type": "default", "queue": "builds.ec2",
      "config": {"language": "ruby", "script": "echo Hello World", "os": "linux", "group": "stable", "dist": "trusty", "image_name": "travis:ruby-7"},
      "env_vars": [],
      "job": {"id": 721270, "number": "445.1", "queued_at": "2018-05-14T14:26:50Z", "ref": null},
      "source": {"id": 721269, "number": "445", "event_type": "push"},
      "repository": {"id": 44461, "slug": "igor/hello-world"},
      "timeouts": {"hard_limit": 3000, "log_silence": null},
      "script": "echo hi"
    }"#;

    #[test]
    fn the_originals_example_payload_parses() {
        let p = Payload::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(p.id, 721270);
        assert_eq!(p.number.as_deref(), Some("445.1"));
        assert_eq!(p.attributes.language, "ruby");
        assert_eq!(p.attributes.dist, "trusty");
        assert_eq!(p.attributes.image_name, "travis:ruby-7");
        assert_eq!(p.hard_limit, Some(Duration::from_secs(3000)));
        assert_eq!(p.log_silence, None, "null means the default");
        assert_eq!(p.script.as_deref(), Some("echo hi"));
        assert_eq!(p.slug.as_deref(), Some("igor/hello-world"));
    }

    #[test]
    fn bad_payloads_say_whether_they_can_be_reported_on() {
        assert!(matches!(
            Payload::parse(b"{nope"),
            Err(PayloadError::Unreadable(_))
        ));
        assert!(matches!(
            Payload::parse(b"{\"job\": {}}"),
            Err(PayloadError::Unreadable(_))
        ));
        let neg = br#"{"job": {"id": 7}, "timeouts": {"hard_limit": -1}}"#;
        match Payload::parse(neg) {
            Err(PayloadError::Invalid { id: 7, reason }) => {
                assert!(reason.contains("negative"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let wrong = br#"{"job": {"id": "8"}, "config": {"language": 3}}"#;
        assert!(matches!(
            Payload::parse(wrong),
            Err(PayloadError::Invalid { id: 8, .. })
        ));
    }

    #[test]
    fn a_requeued_document_counts_up() {
        let p = Payload::parse(EXAMPLE.as_bytes()).unwrap();
        let again = Payload::parse(&p.requeued_document()).unwrap();
        assert_eq!(again.requeue_count, 1);
        let third = Payload::parse(&again.requeued_document()).unwrap();
        assert_eq!(third.requeue_count, 2);
        assert_eq!(third.id, p.id);
    }
}
