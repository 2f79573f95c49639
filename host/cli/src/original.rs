//! The original worker's settings by their names (travis-ci/worker `config/config.go`), so
//! that an operator can swap the binary and keep `/etc/default/travis-worker`.
//!
//! The original reads each setting `NAME` from `TRAVIS_WORKER_NAME` or `NAME`. Here each one
//! this worker implements becomes the `HOST_*` variable of the flag that does the same, when
//! that variable is not set, before the command line is read. So the precedence is: the
//! flag, then `HOST_*`, then `TRAVIS_WORKER_*`, then the unprefixed name, then the default.
//! A backend's config by the original's names is read with the backend
//! (`host::config::original_names`). A setting of the original that this worker does not implement is named in one
//! warning at start, with what to use instead where there is something.
//!
//! This runs first thing in `main`, before any thread exists (the environment is changed).

use std::ffi::OsString;

/// An original setting this worker implements, and the `HOST_*` variable it becomes.
pub struct Mapped {
    pub name: &'static str,
    pub host: &'static str,
}

const fn m(name: &'static str, host: &'static str) -> Mapped {
    Mapped { name, host }
}

/// The settings taken over as they are (the queue's URL is made of several: see
/// [`queue_url`]).
pub const MAPPED: &[Mapped] = &[
    m("PROVIDER_NAME", "HOST_BACKEND"),
    m("QUEUE_NAME", "HOST_QUEUE_NAME"),
    m("AMQP_INSECURE", "HOST_AMQP_INSECURE"),
    m("AMQP_TLS_CERT", "HOST_AMQP_TLS_CERT"),
    m("AMQP_TLS_CERT_PATH", "HOST_AMQP_TLS_CERT_PATH"),
    m("AMQP_HEARTBEAT", "HOST_AMQP_HEARTBEAT"),
    m("AMQP_CONSUMER_PRIORITY", "HOST_AMQP_CONSUMER_PRIORITY"),
    m("POOL_SIZE", "HOST_POOL_SIZE"),
    m("HARD_TIMEOUT", "HOST_MAX_HARD_TIMEOUT"),
    m("LOG_TIMEOUT", "HOST_MAX_LOG_SILENCE"),
    m("SCRIPT_UPLOAD_TIMEOUT", "HOST_UPLOAD_TIMEOUT"),
    m("STARTUP_TIMEOUT", "HOST_STARTUP_TIMEOUT"),
    m("MAX_LOG_LENGTH", "HOST_MAX_LOG_BYTES"),
    m("PROGRESS_TYPE", "HOST_PROGRESS_TYPE"),
    m("REMOTE_CONTROLLER_ADDR", "HOST_HTTP"),
    m("REMOTE_CONTROLLER_AUTH", "HOST_HTTP_AUTH"),
    m("INFRA", "HOST_INFRA"),
    m("START_HOOK", "HOST_START_HOOK"),
    m("STOP_HOOK", "HOST_STOP_HOOK"),
    m("HEARTBEAT_URL", "HOST_HEARTBEAT_URL"),
    m("HEARTBEAT_URL_AUTH_TOKEN", "HOST_HEARTBEAT_URL_AUTH_TOKEN"),
    m(
        "PAYLOAD_FILTER_EXECUTABLE",
        "HOST_PAYLOAD_FILTER_EXECUTABLE",
    ),
    m("INITIAL_SLEEP", "HOST_INITIAL_SLEEP"),
    m("BUILD_API_INSECURE_SKIP_VERIFY", "HOST_BUILD_API_INSECURE"),
    m("LOGS_AMQP_URI", "HOST_LOGS_AMQP_URI"),
    m("LOGS_AMQP_TLS_CERT", "HOST_LOGS_AMQP_TLS_CERT"),
    m("LOGS_AMQP_TLS_CERT_PATH", "HOST_LOGS_AMQP_TLS_CERT_PATH"),
    m("HOSTNAME", "HOST_HOSTNAME"),
    m("DEFAULT_LANGUAGE", "HOST_DEFAULT_LANGUAGE"),
    m("DEFAULT_DIST", "HOST_DEFAULT_DIST"),
    m("DEFAULT_ARCH", "HOST_DEFAULT_ARCH"),
    m("DEFAULT_GROUP", "HOST_DEFAULT_GROUP"),
    m("DEFAULT_OS", "HOST_DEFAULT_OS"),
];

/// Settings read to make others: the queue's type, URL and directory; the build API's URL
/// (its user is the token).
const COMPOSED: &[&str] = &["QUEUE_TYPE", "AMQP_URI", "BASE_DIR", "BUILD_API_URI"];

/// Settings of the original this worker does not implement, with what to use instead.
const NOT_IMPLEMENTED: &[(&str, &str)] = &[
    (
        "FILE_POLLING_INTERVAL",
        "the directory queue looks every 2 to 100 ms",
    ),
    ("HTTP_POLLING_INTERVAL", "no job-board queue"),
    ("HTTP_REFRESH_CLAIM_INTERVAL", "no job-board queue"),
    ("JOB_BOARD_URL", "no job-board queue"),
    ("TRAVIS_SITE", ""),
    ("LIBRATO_EMAIL", "/metrics (--http)"),
    ("LIBRATO_TOKEN", "/metrics (--http)"),
    ("LIBRATO_SOURCE", "/metrics (--http)"),
    ("SILENCE_METRICS", "/metrics (--http)"),
    ("LOG_METRICS", "/metrics (--http)"),
    ("SENTRY_DSN", "the worker's stderr"),
    ("SENTRY_HOOK_ERRORS", "the worker's stderr"),
    ("STACKDRIVER_TRACE_ACCOUNT_JSON", ""),
    ("STACKDRIVER_PROJECT_ID", ""),
    ("OPENCENSUS_TRACING_ENABLED", ""),
    ("OPENCENSUS_SAMPLING_RATE", ""),
    (
        "STATE_UPDATE_POOL_SIZE",
        "states are published as they come",
    ),
    ("LOG_POOL_SIZE", "log parts are published as they come"),
    ("RABBITMQ_SHARDING", ""),
    ("BUILD_CACHE_FETCH_TIMEOUT", ""),
    ("BUILD_CACHE_PUSH_TIMEOUT", ""),
    ("BUILD_APT_CACHE", ""),
    ("BUILD_NPM_CACHE", ""),
    ("BUILD_PARANOID", ""),
    ("BUILD_FIX_RESOLV_CONF", ""),
    ("BUILD_FIX_ETC_HOSTS", ""),
    ("BUILD_CACHE_TYPE", ""),
    ("BUILD_CACHE_S3_SCHEME", ""),
    ("BUILD_CACHE_S3_REGION", ""),
    ("BUILD_CACHE_S3_BUCKET", ""),
    ("BUILD_CACHE_S3_ACCESS_KEY_ID", ""),
    ("BUILD_CACHE_S3_SECRET_ACCESS_KEY", ""),
    ("BUILD_TRACE_ENABLED", ""),
    ("BUILD_TRACE_S3_BUCKET", ""),
    ("BUILD_TRACE_S3_KEY_PREFIX", ""),
    ("BUILD_TRACE_S3_REGION", ""),
    ("SKIP_SHUTDOWN_ON_LOG_TIMEOUT", ""),
    ("UPDATE_IMAGES", ""),
];

/// Unprefixed names that are commonly set for other reasons (a container's `HOSTNAME`): read
/// or warned about only when given with `TRAVIS_WORKER_`.
const AMBIENT: &[&str] = &["HOSTNAME", "DEBUG"];

/// The variables this worker reads as the original's settings (any `TRAVIS_WORKER_*`, and
/// the unprefixed names of the settings it implements) whose value is not UTF-8: such a
/// value cannot be a setting, and reading it as unset would change what the worker does
/// (log parts to the jobs' broker...) without a word.
pub fn not_utf8(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<String> {
    let read = |name: &str| {
        name.starts_with("TRAVIS_WORKER_")
            || (!AMBIENT.contains(&name)
                && (MAPPED.iter().any(|m| m.name == name) || COMPOSED.contains(&name)))
    };
    vars.into_iter()
        .filter(|(_, v)| v.to_str().is_none())
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| read(k))
        .collect()
}

/// Whether the environment variable `name` is one of the worker's own settings (for backend
/// `alias`), which the jobs it runs must not inherit: a broker's password, a token, the
/// control API's credentials. These are the original's names (`TRAVIS_WORKER_*` and the
/// unprefixed ones it implements), `HOST_*` but for the plugin policy's (which the plugin
/// servers it starts read), `BACKEND_*`, and the backend's `<ALIAS>_*`.
pub fn is_worker_setting(name: &str, alias: &str) -> bool {
    const KEPT: &[&str] = &[
        "HOST_PLUGIN_PATH",
        "HOST_PLUGIN_LOCK",
        "HOST_ISOLATE",
        "HOST_PROBE_CACHE",
        "HOST_PLUGIN_SERVER_LOG_LEVEL",
    ];
    let alias = format!("{}_", alias.to_ascii_uppercase().replace('-', "_"));
    name.starts_with("TRAVIS_WORKER_")
        || name.starts_with("BACKEND_")
        || (name.starts_with("HOST_") && !KEPT.contains(&name))
        || (alias.len() > 1 && name.starts_with(&alias))
        || (!AMBIENT.contains(&name)
            && (MAPPED.iter().any(|m| m.name == name) || COMPOSED.contains(&name)))
}

/// What [`apply`] did: lines to say at start.
#[derive(Debug, Default)]
pub struct Applied {
    pub warnings: Vec<String>,
}

/// The value of original setting `name`: `TRAVIS_WORKER_<NAME>`, else `<NAME>`; empty is
/// unset. `env` reads a variable.
fn original(env: &impl Fn(&str) -> Option<String>, name: &str) -> Option<(String, String)> {
    [format!("TRAVIS_WORKER_{name}"), name.to_owned()]
        .into_iter()
        .find_map(|var| env(&var).filter(|v| !v.is_empty()).map(|v| (var, v)))
}

/// The queue URL the original's settings make: `QUEUE_TYPE` (`amqp` by default) with
/// `AMQP_URI`, or `file` with `BASE_DIR`/`QUEUE_NAME`. `None` when none of them is set.
pub fn queue_url(env: &impl Fn(&str) -> Option<String>) -> Result<Option<String>, String> {
    let kind = original(env, "QUEUE_TYPE").map(|(_, v)| v.to_ascii_lowercase());
    match kind.as_deref() {
        None | Some("amqp") => {
            Ok(original(env, "AMQP_URI").map(|(_, uri)| {
                // The original's default, `amqp://`, is the local broker as guest.
                if uri == "amqp://" {
                    "amqp://guest:guest@localhost:5672/".to_owned()
                } else {
                    uri
                }
            }))
        }
        Some("file") => {
            let base = original(env, "BASE_DIR").map_or_else(|| ".".to_owned(), |(_, v)| v);
            let Some((_, name)) = original(env, "QUEUE_NAME") else {
                return Err("QUEUE_TYPE=file needs QUEUE_NAME (the queue's directory under BASE_DIR)".into());
            };
            let dir = std::path::Path::new(&base).join(name);
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            Ok(Some(format!("file://{}", dir.display())))
        }
        Some("http") => Err(
            "QUEUE_TYPE=http (the job-board queue) is not supported by this worker; use amqp or file".into(),
        ),
        Some(other) => Err(format!(
            "QUEUE_TYPE={other}: not a queue type (amqp or file)"
        )),
    }
}

/// Turns the original's settings in `env` into `HOST_*` and `BACKEND_*` settings (through
/// `set`, for those `env` does not have already). Errors: a queue type that cannot be.
pub fn apply(
    env: &impl Fn(&str) -> Option<String>,
    set: &mut impl FnMut(&str, &str),
) -> Result<Applied, String> {
    let mut applied = Applied::default();
    let mut set_unless = |host: &str, value: &str| {
        if env(host).is_none_or(|v| v.is_empty()) {
            set(host, value);
        }
    };
    for s in MAPPED {
        let value = if AMBIENT.contains(&s.name) {
            env(&format!("TRAVIS_WORKER_{}", s.name)).filter(|v| !v.is_empty())
        } else {
            original(env, s.name).map(|(_, v)| v)
        };
        if let Some(v) = value {
            set_unless(s.host, &v);
        }
    }
    if let Some(url) = queue_url(env)? {
        set_unless("HOST_QUEUE_URL", &url);
    }
    if let Some((_, uri)) = original(env, "BUILD_API_URI") {
        // A user in the URL is the token, as the original sends it.
        match split_user(&uri) {
            Some((token, url)) => {
                set_unless("HOST_BUILD_API", &url);
                set_unless("HOST_BUILD_API_TOKEN", &token);
            }
            None => set_unless("HOST_BUILD_API", &uri),
        }
    }
    let mut unused = Vec::new();
    for (name, instead) in NOT_IMPLEMENTED {
        let prefixed = format!("TRAVIS_WORKER_{name}");
        let given = if AMBIENT.contains(name) {
            env(&prefixed)
                .is_some_and(|v| !v.is_empty())
                .then_some(prefixed)
        } else {
            original(env, name).map(|(var, _)| var)
        };
        if let Some(var) = given {
            unused.push(if instead.is_empty() {
                var
            } else {
                format!("{var} ({instead})")
            });
        }
    }
    if !unused.is_empty() {
        applied.warnings.push(format!(
            "settings of travis-ci/worker that this worker does not implement, not used: {}",
            unused.join(", ")
        ));
    }
    // A backend's config by the original's names is read where the backend is known
    // (host::config::original_names): its documented keys only, in the original's order.
    Ok(applied)
}

/// `https://TOKEN@host/path` as (`TOKEN`, `https://host/path`).
pub fn split_user(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (user, host) = authority.rsplit_once('@')?;
    let token = user.split(':').next().unwrap_or(user);
    (!token.is_empty()).then(|| (token.to_owned(), format!("{scheme}://{host}{path}")))
}

/// Whether this command line runs the worker or enqueue (the original's settings apply to
/// them only).
pub fn applies_to(args: &[OsString]) -> bool {
    args.iter().skip(1).any(|a| a == "worker" || a == "enqueue")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(pairs: &[(&str, &str)]) -> (HashMap<String, String>, Result<Applied, String>) {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut set = HashMap::new();
        let get = |k: &str| env.get(k).cloned();
        let r = apply(&get, &mut |k: &str, v: &str| {
            set.insert(k.to_owned(), v.to_owned());
        });
        (set, r)
    }

    #[test]
    fn host_settings_win_over_prefixed_ones_which_win_over_unprefixed_ones() {
        let (set, _) = run(&[
            ("TRAVIS_WORKER_POOL_SIZE", "6"),
            ("POOL_SIZE", "2"),
            ("PROVIDER_NAME", "local"),
            ("HOST_HARD_TIMEOUT_UNUSED", "x"),
            ("HOST_BACKEND", "fake"),
            ("HARD_TIMEOUT", "1h30m"),
        ]);
        assert_eq!(set.get("HOST_POOL_SIZE").map(String::as_str), Some("6"));
        assert_eq!(
            set.get("HOST_BACKEND"),
            None,
            "HOST_BACKEND was set already"
        );
        assert_eq!(
            set.get("HOST_MAX_HARD_TIMEOUT").map(String::as_str),
            Some("1h30m")
        );
    }

    #[test]
    fn the_queue_is_made_from_its_type_and_uri_or_directory() {
        let (set, _) = run(&[("TRAVIS_WORKER_AMQP_URI", "amqps://u:p@b/v")]);
        assert_eq!(set["HOST_QUEUE_URL"], "amqps://u:p@b/v");
        let (set, _) = run(&[("AMQP_URI", "amqp://")]);
        assert_eq!(set["HOST_QUEUE_URL"], "amqp://guest:guest@localhost:5672/");
        let (set, _) = run(&[
            ("QUEUE_TYPE", "file"),
            ("BASE_DIR", "/var/q"),
            ("QUEUE_NAME", "builds"),
        ]);
        assert_eq!(set["HOST_QUEUE_URL"], "file:///var/q/builds");
        let (_, r) = run(&[("TRAVIS_WORKER_QUEUE_TYPE", "http")]);
        assert!(r.err().unwrap_or_default().contains("not supported"));
    }

    #[test]
    fn the_workers_settings_are_told_from_other_variables() {
        for name in [
            "TRAVIS_WORKER_AMQP_URI",
            "AMQP_URI",
            "HOST_HTTP_AUTH",
            "HOST_BUILD_API_TOKEN",
            "BACKEND_DOCKER_CERT_PATH",
            "LOCAL_SCRIPTS_DIR",
            "REMOTE_CONTROLLER_AUTH",
        ] {
            assert!(is_worker_setting(name, "local"), "{name}");
        }
        for name in [
            "PATH",
            "HOME",
            "HOSTNAME",
            "HOST_PLUGIN_LOCK",
            "HOST_ISOLATE",
            "DOCKER_HOST",
        ] {
            assert!(!is_worker_setting(name, "local"), "{name}");
        }
    }

    #[test]
    fn values_that_are_not_utf8_are_named() {
        use std::os::unix::ffi::OsStringExt as _;
        let bad = || OsString::from_vec(vec![b'a', 0xff]);
        let vars = [
            (OsString::from("TRAVIS_WORKER_LOGS_AMQP_URI"), bad()),
            (OsString::from("POOL_SIZE"), bad()),
            (OsString::from("HOSTNAME"), bad()),
            (OsString::from("LANG"), bad()),
            (
                OsString::from("TRAVIS_WORKER_POOL_SIZE"),
                OsString::from("3"),
            ),
        ];
        assert_eq!(
            not_utf8(vars),
            [
                "TRAVIS_WORKER_LOGS_AMQP_URI".to_owned(),
                "POOL_SIZE".to_owned()
            ]
        );
    }

    #[test]
    fn the_build_api_users_is_its_token() {
        let (set, _) = run(&[("BUILD_API_URI", "https://s3cret@build.example/script")]);
        assert_eq!(set["HOST_BUILD_API"], "https://build.example/script");
        assert_eq!(set["HOST_BUILD_API_TOKEN"], "s3cret");
    }

    #[test]
    fn backend_config_and_unimplemented_settings() {
        let (set, r) = run(&[
            ("TRAVIS_WORKER_DOCKER_ENDPOINT", "unix:///run/docker.sock"),
            ("TRAVIS_WORKER_LIBRATO_TOKEN", "x"),
            ("SENTRY_DSN", "y"),
            ("HOSTNAME", "container-1"),
        ]);
        // A backend's keys are read with the backend (host::config::original_names).
        assert!(!set.contains_key("BACKEND_DOCKER_ENDPOINT"), "{set:?}");
        assert!(!set.contains_key("BACKEND_LIBRATO_TOKEN"));
        let w = r.map(|a| a.warnings).unwrap_or_default();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("TRAVIS_WORKER_LIBRATO_TOKEN (/metrics"),
            "{w:?}"
        );
        assert!(w[0].contains("SENTRY_DSN"), "{w:?}");
        assert!(!w[0].contains("HOSTNAME"), "{w:?}");
        assert!(!set.contains_key("HOST_HOSTNAME"), "{set:?}");
        let (set, _) = run(&[("TRAVIS_WORKER_HOSTNAME", "builder-7")]);
        assert_eq!(set["HOST_HOSTNAME"], "builder-7");
    }
}
