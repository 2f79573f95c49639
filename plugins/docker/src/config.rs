//! The docker backend's configuration: the original's keys and defaults, every value
//! checked (the original silently ignored some bad ones: we name the key and value).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use plugin_api::{BackendError, ProviderConfig};

/// Where the script goes in the container by default.
pub const DEFAULT_SCRIPT_PATH: &str = "/home/travis/build.sh";

/// Help for every key, as the original documented them.
pub const HELP: &[(&str, &str)] = &[
    (
        "ENDPOINT",
        "[REQUIRED] tcp or unix address for connecting to Docker (HOST is accepted too)",
    ),
    ("HOST", "the same as ENDPOINT"),
    (
        "CERT_PATH",
        "directory where ca.pem, cert.pem, and key.pem are located (default \"\")",
    ),
    (
        "CMD",
        "command (CMD) to run when creating containers (default \"/sbin/init\")",
    ),
    (
        "EXEC_CMD",
        "command to run the script with via exec (default \"bash <SCRIPT_PATH>\")",
    ),
    (
        "INSPECT_INTERVAL",
        "time to wait between container inspections as duration (default \"500ms\")",
    ),
    (
        "MEMORY",
        "memory to allocate to each container (0 disables allocation, default \"4G\")",
    ),
    (
        "SHM",
        "/dev/shm to allocate to each container (0 disables allocation, default \"64MiB\")",
    ),
    (
        "CPUS",
        "cpu count to allocate to each container (0 disables allocation, default 2)",
    ),
    (
        "CPU_SET_SIZE",
        "size of available cpu set (default: the number of CPUs here; at least 2)",
    ),
    (
        "PRIVILEGED",
        "run containers in privileged mode (default false)",
    ),
    (
        "TMPFS_MAP",
        "\"+\"-delimited path:options map of tmpfs mounts (example \"/run:rw,exec,nosuid\")",
    ),
    (
        "CONTAINER_LABELS",
        "comma- or space-delimited key:value labels to apply to each container",
    ),
    (
        "BINDS",
        "space-delimited bind mounts (example \"/var/run/docker.sock:/var/run/docker.sock\")",
    ),
    (
        "SECURITY_OPT",
        "space-delimited security options (example \"seccomp=unconfined\")",
    ),
    ("IMAGE", "image to use, overriding selection by language"),
    (
        "IMAGE_SELECTOR_TYPE",
        "how an image is chosen: \"tag\" (the engine's images named after the language) or \"env\" (the IMAGE_* keys) (default \"tag\")",
    ),
    (
        "IMAGE_*",
        "with IMAGE_SELECTOR_TYPE=env, the image for a job's language, dist, group or os, as the original's env selector: IMAGE_DEFAULT, IMAGE_<LANG>, IMAGE_DIST_<DIST>_<LANG>, IMAGE_GROUP_<GROUP>_<LANG>, IMAGE_OS_<OS>_<LANG>, IMAGE_DIST_<DIST>, ...; a value that names another of these keys stands for its value",
    ),
    (
        "SCRIPT_PATH",
        "where the build script goes in the container (default \"/home/travis/build.sh\")",
    ),
    (
        "STOP_GRACE",
        "time a container gets to stop before it is killed (default \"10s\")",
    ),
];

/// Validated settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub endpoint: String,
    pub cert_path: Option<PathBuf>,
    pub cmd: Vec<String>,
    pub exec_cmd: Vec<String>,
    pub inspect_interval: Duration,
    pub memory: i64,
    pub shm: i64,
    pub cpus: usize,
    pub cpu_set_size: usize,
    pub privileged: bool,
    pub tmpfs: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub binds: Vec<String>,
    pub security_opt: Vec<String>,
    pub image: Option<String>,
    pub selector: Selector,
    pub script_path: String,
    pub stop_grace: Duration,
}

/// How an image is chosen when `IMAGE` does not name one.
#[derive(Clone, Debug, PartialEq)]
pub enum Selector {
    /// The first of `travis:<lang>`, `<lang>`, `travis:default`, `default` that the engine
    /// has (the original's "tag" selector).
    Tag,
    /// From the `IMAGE_*` keys, as the original's env selector: the keys lowercased without
    /// `IMAGE_`, mapped to images.
    Env(BTreeMap<String, String>),
}

impl Selector {
    fn from_config(cfg: &ProviderConfig) -> Result<Self, BackendError> {
        let images: BTreeMap<String, String> = cfg
            .iter()
            .filter(|(k, _)| *k != "IMAGE_SELECTOR_TYPE" && *k != "IMAGE_SELECTOR_URL")
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix("IMAGE_").filter(|r| !r.is_empty())?;
                Some((rest.to_ascii_lowercase(), v.trim().to_owned()))
            })
            .filter(|(_, v)| !v.is_empty())
            .collect();
        match cfg.lookup("IMAGE_SELECTOR_TYPE").map(str::trim) {
            None | Some("") | Some("tag") => {
                if !images.is_empty() {
                    tracing::warn!(
                        "IMAGE_* keys are set but IMAGE_SELECTOR_TYPE is tag: they are not used (set IMAGE_SELECTOR_TYPE=env)"
                    );
                }
                Ok(Self::Tag)
            }
            Some("env") => Ok(Self::Env(images)),
            Some("api") => Err(BackendError::invalid_config(
                "IMAGE_SELECTOR_TYPE",
                "api",
                "the image selector API is not supported by this backend; use tag or env",
            )),
            Some(other) => Err(BackendError::invalid_config(
                "IMAGE_SELECTOR_TYPE",
                other,
                "expected tag or env",
            )),
        }
    }
}

/// What a job asks of its image: the attributes the env selector looks at.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImageParams<'a> {
    /// The job's own image name (its payload's `image_name`): taken before any selector.
    pub image_name: &'a str,
    pub language: &'a str,
    pub dist: &'a str,
    pub group: &'a str,
    pub os: &'a str,
}

/// The env selector's choice among `images` (the `IMAGE_*` keys, lowercased without
/// `IMAGE_`), in the original's order of candidate keys, most specific first; "default"
/// when none matches. A choice that is itself a key stands for that key's value (once).
pub fn env_image(images: &BTreeMap<String, String>, p: ImageParams<'_>) -> String {
    let (lang, dist, group, os) = (p.language, p.dist, p.group, p.os);
    let mut keys: Vec<String> = Vec::new();
    if !dist.is_empty() && !group.is_empty() && !lang.is_empty() {
        keys.push(format!("dist_{dist}_group_{group}_{lang}"));
        keys.push(format!("{dist}_{group}_{lang}"));
    }
    if !dist.is_empty() && !lang.is_empty() {
        keys.push(format!("dist_{dist}_{lang}"));
        keys.push(format!("{dist}_{lang}"));
    }
    if !group.is_empty() && !lang.is_empty() {
        keys.push(format!("group_{group}_{lang}"));
        keys.push(format!("{group}_{lang}"));
    }
    if !os.is_empty() && !lang.is_empty() {
        keys.push(format!("os_{os}_{lang}"));
        keys.push(format!("{os}_{lang}"));
    }
    if !dist.is_empty() {
        keys.push(format!("default_dist_{dist}"));
        keys.push(format!("dist_{dist}"));
        keys.push(dist.to_owned());
    }
    if !group.is_empty() {
        keys.push(format!("default_group_{group}"));
        keys.push(format!("group_{group}"));
        keys.push(group.to_owned());
    }
    if !lang.is_empty() {
        keys.push(format!("language_{lang}"));
        keys.push(lang.to_owned());
    }
    if !os.is_empty() {
        keys.push(format!("default_os_{os}"));
        keys.push(format!("os_{os}"));
        keys.push(os.to_owned());
    }
    let chosen = keys
        .iter()
        .find_map(|k| images.get(&k.to_ascii_lowercase()))
        .cloned()
        .unwrap_or_else(|| "default".to_owned());
    images.get(&chosen).cloned().unwrap_or(chosen)
}

/// Checks an endpoint's form, so that a typo is a config error at once rather than a
/// broken connection (a requeue) at the first request.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    if let Some(path) = endpoint.strip_prefix("unix://") {
        return if path.is_empty() {
            Err("no socket path after unix://".into())
        } else {
            Ok(())
        };
    }
    let rest = ["tcp://", "http://", "https://"]
        .iter()
        .find_map(|scheme| endpoint.strip_prefix(scheme))
        .ok_or("expected unix:///path/to/socket, tcp://host:port, http://host:port or https://host:port")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let port = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("unclosed [ in an IPv6 address")?;
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
        match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("expected :port after the IPv6 address")?,
            ),
        }
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(format!("{host:?} is not a host name or address"));
        }
        port
    };
    if let Some(p) = port {
        p.parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port number"))?;
    }
    Ok(())
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

fn size(cfg: &ProviderConfig, key: &str, default: i64) -> Result<i64, BackendError> {
    match cfg.byte_size(key)? {
        None => Ok(default),
        Some(n) => i64::try_from(n)
            .map_err(|_| BackendError::invalid_config(key, cfg.get(key), "too large")),
    }
}

fn count(cfg: &ProviderConfig, key: &str, default: usize) -> Result<usize, BackendError> {
    match cfg.lookup(key).map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| BackendError::invalid_config(key, v, "expected a whole number")),
    }
}

impl Settings {
    /// Reads and checks every key.
    pub fn from_config(cfg: &ProviderConfig) -> Result<Self, BackendError> {
        let endpoint = match (cfg.lookup("ENDPOINT"), cfg.lookup("HOST")) {
            (Some(e), _) if !e.trim().is_empty() => e.trim().to_owned(),
            (_, Some(h)) if !h.trim().is_empty() => h.trim().to_owned(),
            _ => return Err(BackendError::missing_endpoint_config()),
        };
        check_endpoint(&endpoint)
            .map_err(|why| BackendError::invalid_config("ENDPOINT", &endpoint, why))?;
        let cert_path = cfg
            .lookup("CERT_PATH")
            .filter(|p| !p.trim().is_empty())
            .map(PathBuf::from);
        if let Some(p) = &cert_path {
            for f in ["ca.pem", "cert.pem", "key.pem"] {
                if !p.join(f).is_file() {
                    return Err(BackendError::invalid_config(
                        "CERT_PATH",
                        &p.display().to_string(),
                        format!("{f} is missing there"),
                    ));
                }
            }
        }
        let cmd = match cfg.lookup("CMD").map(str::trim) {
            None | Some("") => vec!["/sbin/init".to_owned()],
            Some(c) => words(c),
        };
        let script_path = match cfg.lookup("SCRIPT_PATH").map(str::trim) {
            None | Some("") => DEFAULT_SCRIPT_PATH.to_owned(),
            Some(p) if p.starts_with('/') && !p.ends_with('/') => p.to_owned(),
            Some(p) => {
                return Err(BackendError::invalid_config(
                    "SCRIPT_PATH",
                    p,
                    "expected an absolute file path",
                ))
            }
        };
        let exec_cmd = match cfg.lookup("EXEC_CMD").map(str::trim) {
            None | Some("") => vec!["bash".to_owned(), script_path.clone()],
            Some(c) => words(c),
        };
        let inspect_interval = cfg
            .duration("INSPECT_INTERVAL")?
            .unwrap_or(Duration::from_millis(500));
        let stop_grace = cfg
            .duration("STOP_GRACE")?
            .unwrap_or(Duration::from_secs(10));
        let privileged = cfg.bool("PRIVILEGED")?.unwrap_or(false);
        let detected = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        // As the original: fewer than two CPUs in the set becomes two.
        let cpu_set_size = count(cfg, "CPU_SET_SIZE", detected)?.max(2);
        let cpus = count(cfg, "CPUS", 2)?;
        if cpus > cpu_set_size {
            return Err(BackendError::invalid_config(
                "CPUS",
                cfg.get("CPUS"),
                format!("more than the {cpu_set_size} CPUs of CPU_SET_SIZE"),
            ));
        }
        let mut tmpfs = BTreeMap::new();
        for entry in cfg
            .get("TMPFS_MAP")
            .split('+')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (path, opts) = entry.split_once(':').unwrap_or((entry, ""));
            if !path.starts_with('/') {
                return Err(BackendError::invalid_config(
                    "TMPFS_MAP",
                    cfg.get("TMPFS_MAP"),
                    format!("{entry:?} does not start with an absolute path"),
                ));
            }
            tmpfs.insert(path.to_owned(), opts.to_owned());
        }
        let mut labels = BTreeMap::new();
        for entry in cfg
            .get("CONTAINER_LABELS")
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty())
        {
            match entry.split_once(':') {
                Some((k, v)) if !k.is_empty() => {
                    labels.insert(k.to_owned(), v.to_owned());
                }
                _ => {
                    return Err(BackendError::invalid_config(
                        "CONTAINER_LABELS",
                        cfg.get("CONTAINER_LABELS"),
                        format!("{entry:?} is not key:value"),
                    ))
                }
            }
        }
        Ok(Self {
            endpoint,
            cert_path,
            cmd,
            exec_cmd,
            inspect_interval,
            memory: size(cfg, "MEMORY", 4 << 30)?,
            shm: size(cfg, "SHM", 64 << 20)?,
            cpus,
            cpu_set_size,
            privileged,
            tmpfs,
            labels,
            binds: words(cfg.get("BINDS")),
            security_opt: words(cfg.get("SECURITY_OPT")),
            image: cfg
                .lookup("IMAGE")
                .map(str::trim)
                .filter(|i| !i.is_empty())
                .map(str::to_owned),
            selector: Selector::from_config(cfg)?,
            script_path,
            stop_grace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::ErrorKind;

    fn cfg(pairs: &[(&str, &str)]) -> ProviderConfig {
        let mut c = ProviderConfig::from_map([("ENDPOINT", "unix:///var/run/docker.sock")]);
        for (k, v) in pairs {
            c.set(k, *v);
        }
        c
    }

    #[test]
    fn the_env_selector_takes_the_most_specific_key_and_follows_one_name() {
        let c = cfg(&[
            ("IMAGE_SELECTOR_TYPE", "env"),
            ("IMAGE_DEFAULT", "base:1"),
            ("IMAGE_DIST_JAMMY", "jammy:1"),
            ("IMAGE_DIST_JAMMY_GO", "jammy-go:1"),
            ("IMAGE_GROUP_DEV_GO", "dev-go:1"),
            ("IMAGE_GROUP_DEV", "dev:1"),
            ("IMAGE_LANGUAGE_RUST", "rust:1"),
            ("IMAGE_OS_FREEBSD", "bsd:1"),
            // A value that names another key stands for that key's value.
            ("IMAGE_ELIXIR", "erlang"),
            ("IMAGE_ERLANG", "erlang:26"),
        ]);
        let Selector::Env(images) = Settings::from_config(&c).unwrap().selector else {
            panic!("not the env selector");
        };
        let pick = |language, dist, group, os| {
            env_image(
                &images,
                ImageParams {
                    image_name: "",
                    language,
                    dist,
                    group,
                    os,
                },
            )
        };
        assert_eq!(pick("go", "jammy", "", ""), "jammy-go:1");
        assert_eq!(pick("go", "jammy", "dev", ""), "jammy-go:1");
        assert_eq!(pick("go", "", "dev", ""), "dev-go:1");
        assert_eq!(pick("java", "jammy", "", ""), "jammy:1");
        assert_eq!(pick("java", "", "dev", ""), "dev:1");
        assert_eq!(pick("rust", "focal", "", "linux"), "rust:1");
        assert_eq!(pick("c", "", "", "freebsd"), "bsd:1");
        assert_eq!(pick("elixir", "", "", ""), "erlang:26");
        // Nothing fits: "default", which IMAGE_DEFAULT names.
        assert_eq!(pick("cobol", "focal", "stable", "linux"), "base:1");
        let no_default = BTreeMap::from([("go".to_owned(), "go:1".to_owned())]);
        assert_eq!(env_image(&no_default, ImageParams::default()), "default");
    }

    #[test]
    fn the_selector_type_is_checked() {
        assert_eq!(
            Settings::from_config(&cfg(&[("IMAGE_GO", "go:1")]))
                .unwrap()
                .selector,
            Selector::Tag
        );
        for bad in ["api", "ENV", "json"] {
            let e = Settings::from_config(&cfg(&[("IMAGE_SELECTOR_TYPE", bad)])).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::INVALID_CONFIG, "{bad}");
            assert!(
                e.message().contains("IMAGE_SELECTOR_TYPE"),
                "{}",
                e.message()
            );
        }
    }

    #[test]
    fn a_missing_endpoint_is_the_originals_error() {
        let e = Settings::from_config(&ProviderConfig::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MISSING_ENDPOINT_CONFIG);
        assert_eq!(e.message(), "expected config key endpoint");
        let s = Settings::from_config(&ProviderConfig::from_map([("HOST", "tcp://1.2.3.4:2376")]))
            .unwrap();
        assert_eq!(s.endpoint, "tcp://1.2.3.4:2376");
    }

    #[test]
    fn a_malformed_endpoint_is_a_config_error_at_once() {
        for bad in [
            "http://[::1",
            "tcp://",
            "unix://",
            "tcp://host:99999",
            "ftp://x",
            "tcp://a b:1",
        ] {
            let e = Settings::from_config(&cfg(&[("ENDPOINT", bad)])).unwrap_err();
            assert_eq!(
                e.kind(),
                plugin_api::ErrorKind::INVALID_CONFIG,
                "{bad}: {e}"
            );
        }
        for good in [
            "unix:///run/d.sock",
            "tcp://127.0.0.1:2375",
            "http://[::1]:2375",
            "https://docker.example:2376/",
        ] {
            assert!(
                Settings::from_config(&cfg(&[("ENDPOINT", good)])).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn the_defaults_are_the_originals() {
        let s = Settings::from_config(&cfg(&[])).unwrap();
        assert_eq!(s.cmd, ["/sbin/init"]);
        assert_eq!(s.exec_cmd, ["bash", "/home/travis/build.sh"]);
        assert_eq!(s.memory, 4 << 30);
        assert_eq!(s.shm, 64 << 20);
        assert_eq!(s.cpus, 2);
        assert!(!s.privileged);
        assert_eq!(s.inspect_interval, Duration::from_millis(500));
    }

    #[test]
    fn invalid_values_are_errors_naming_key_and_value() {
        for (key, value) in [
            ("PRIVILEGED", "sure"),
            ("CPU_SET_SIZE", "lots"),
            ("INSPECT_INTERVAL", "often"),
            ("MEMORY", "plenty"),
            ("CPUS", "-1"),
            ("CONTAINER_LABELS", "novalue"),
            ("TMPFS_MAP", "run:rw"),
            ("SCRIPT_PATH", "build.sh"),
        ] {
            let e = Settings::from_config(&cfg(&[(key, value)])).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::INVALID_CONFIG, "{key}");
            assert!(
                e.message().contains(key) && e.message().contains(value),
                "{e}"
            );
        }
    }

    #[test]
    fn the_originals_parsing_cases() {
        let s = Settings::from_config(&cfg(&[("CPU_SET_SIZE", "1"), ("CPUS", "1")])).unwrap();
        assert_eq!(s.cpu_set_size, 2, "below 2 becomes 2");
        let s = Settings::from_config(&cfg(&[("MEMORY", "99MB")])).unwrap();
        assert_eq!(s.memory, 99 << 20);
        let s = Settings::from_config(&cfg(&[("CMD", "/bin/sh -c  sleep\t100")])).unwrap();
        assert_eq!(s.cmd, ["/bin/sh", "-c", "sleep", "100"]);
        let s = Settings::from_config(&cfg(&[
            ("TMPFS_MAP", "/run:rw,exec+/tmp:rw"),
            ("CONTAINER_LABELS", "a:1, b:2 c:3"),
            ("SCRIPT_PATH", "/opt/job.sh"),
        ]))
        .unwrap();
        assert_eq!(s.tmpfs.get("/run").map(String::as_str), Some("rw,exec"));
        assert_eq!(s.labels.len(), 3);
        assert_eq!(s.exec_cmd, ["bash", "/opt/job.sh"]);
    }
}
