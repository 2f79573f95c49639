//! [`StartAttributes`]: what a job asks of the instance that will run it.
//!
//! Field for field the original worker's `backend.StartAttributes`. The fields the original
//! serialises (language, osx_image, dist, arch, group, os, image_name) keep its JSON names;
//! the rest come from the job payload or the processor and are not serialised.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The worker's default language.
pub const DEFAULT_LANGUAGE: &str = "default";
/// The worker's default dist.
pub const DEFAULT_DIST: &str = "xenial";
/// The worker's default arch.
pub const DEFAULT_ARCH: &str = "amd64";
/// The worker's default group.
pub const DEFAULT_GROUP: &str = "stable";
/// The worker's default OS.
pub const DEFAULT_OS: &str = "linux";
/// The worker's default VM type.
pub const DEFAULT_VM_TYPE: &str = "default";

/// GPU and placement wishes of a job (the original's `VmConfig`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// Number of GPUs; 0 means none asked for.
    #[serde(default)]
    pub gpu_count: i64,
    /// GPU model.
    #[serde(default)]
    pub gpu_type: String,
    /// Zone to place the instance in.
    #[serde(default)]
    pub zone: String,
}

/// The attributes an instance is started with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartAttributes {
    /// Build language, e.g. `go`.
    #[serde(default)]
    pub language: String,
    /// macOS image name.
    #[serde(default)]
    pub osx_image: String,
    /// Linux distribution, e.g. `xenial`.
    #[serde(default)]
    pub dist: String,
    /// CPU architecture, e.g. `amd64`.
    #[serde(default)]
    pub arch: String,
    /// Image group, e.g. `stable`.
    #[serde(default)]
    pub group: String,
    /// Operating system, e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// An explicit image name.
    #[serde(default)]
    pub image_name: String,
    /// VM type (from the job payload, not serialised).
    #[serde(skip)]
    pub vm_type: String,
    /// GPU and zone wishes (from the job payload, not serialised).
    #[serde(skip)]
    pub vm_config: VmConfig,
    /// VM size (from the job payload, not serialised).
    #[serde(skip)]
    pub vm_size: String,
    /// Whether a warmed instance may be used (from the job payload, not serialised).
    #[serde(skip)]
    pub warmer: bool,
    /// The job's hard timeout, injected by the processor (not serialised).
    #[serde(skip)]
    pub hard_timeout: Duration,
    /// How progress is reported, injected by the processor (not serialised).
    #[serde(skip)]
    pub progress_type: String,
}

impl StartAttributes {
    /// Fills only the fields that are empty (or zero) with the given defaults, as the
    /// original's `SetDefaults`: language, dist, arch, group, os, vm_type and the three
    /// vm_config fields. Values already given are kept.
    // The original's signature, argument for argument, so its callers translate directly.
    #[allow(clippy::too_many_arguments)]
    pub fn set_defaults(
        &mut self,
        lang: &str,
        dist: &str,
        arch: &str,
        group: &str,
        os: &str,
        vm_type: &str,
        vm_config: &VmConfig,
    ) {
        fill(&mut self.language, lang);
        fill(&mut self.dist, dist);
        fill(&mut self.arch, arch);
        fill(&mut self.group, group);
        fill(&mut self.os, os);
        fill(&mut self.vm_type, vm_type);
        if self.vm_config.gpu_count == 0 {
            self.vm_config.gpu_count = vm_config.gpu_count;
        }
        fill(&mut self.vm_config.gpu_type, &vm_config.gpu_type);
        fill(&mut self.vm_config.zone, &vm_config.zone);
    }

    /// [`set_defaults`](Self::set_defaults) with the worker's defaults: "default", "xenial",
    /// "amd64", "stable", "linux", VM type "default", no GPU.
    pub fn set_worker_defaults(&mut self) {
        self.set_defaults(
            DEFAULT_LANGUAGE,
            DEFAULT_DIST,
            DEFAULT_ARCH,
            DEFAULT_GROUP,
            DEFAULT_OS,
            DEFAULT_VM_TYPE,
            &VmConfig::default(),
        );
    }
}

fn fill(field: &mut String, default: &str) {
    if field.is_empty() {
        default.clone_into(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> VmConfig {
        VmConfig {
            gpu_count: 1,
            gpu_type: "nvidia-tesla-p100".into(),
            zone: "us-central1-a".into(),
        }
    }

    #[test]
    fn set_defaults_fills_empty_fields_and_keeps_given_ones() {
        let cases: Vec<(StartAttributes, StartAttributes)> = vec![
            (
                StartAttributes::default(),
                StartAttributes {
                    language: "default".into(),
                    dist: "xenial".into(),
                    arch: "amd64".into(),
                    group: "stable".into(),
                    os: "linux".into(),
                    vm_type: "default".into(),
                    vm_config: defaults(),
                    ..Default::default()
                },
            ),
            (
                StartAttributes {
                    language: "ruby".into(),
                    dist: "trusty".into(),
                    arch: "arm64".into(),
                    group: "edge".into(),
                    os: "osx".into(),
                    vm_type: "premium".into(),
                    vm_config: VmConfig {
                        gpu_count: 4,
                        gpu_type: "k80".into(),
                        zone: "eu".into(),
                    },
                    osx_image: "xcode10".into(),
                    image_name: "img".into(),
                    ..Default::default()
                },
                StartAttributes {
                    language: "ruby".into(),
                    dist: "trusty".into(),
                    arch: "arm64".into(),
                    group: "edge".into(),
                    os: "osx".into(),
                    vm_type: "premium".into(),
                    vm_config: VmConfig {
                        gpu_count: 4,
                        gpu_type: "k80".into(),
                        zone: "eu".into(),
                    },
                    osx_image: "xcode10".into(),
                    image_name: "img".into(),
                    ..Default::default()
                },
            ),
            (
                StartAttributes {
                    language: "go".into(),
                    os: "windows".into(),
                    ..Default::default()
                },
                StartAttributes {
                    language: "go".into(),
                    dist: "xenial".into(),
                    arch: "amd64".into(),
                    group: "stable".into(),
                    os: "windows".into(),
                    vm_type: "default".into(),
                    vm_config: defaults(),
                    ..Default::default()
                },
            ),
        ];
        for (mut given, want) in cases {
            given.set_defaults(
                "default",
                "xenial",
                "amd64",
                "stable",
                "linux",
                "default",
                &defaults(),
            );
            assert_eq!(given, want);
        }
    }

    #[test]
    fn set_defaults_leaves_fields_it_does_not_own_alone() {
        let mut sa = StartAttributes::default();
        sa.set_worker_defaults();
        assert_eq!(sa.osx_image, "");
        assert_eq!(sa.image_name, "");
        assert_eq!(sa.vm_size, "");
        assert_eq!(sa.vm_config.gpu_count, 0);
    }

    #[test]
    fn only_the_original_fields_are_serialised_under_their_json_names() {
        let sa = StartAttributes {
            language: "go".into(),
            osx_image: "x".into(),
            vm_type: "premium".into(),
            hard_timeout: Duration::from_secs(3),
            ..Default::default()
        };
        let json = serde_json::to_value(&sa).unwrap();
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "arch",
                "dist",
                "group",
                "image_name",
                "language",
                "os",
                "osx_image"
            ]
        );
    }
}
