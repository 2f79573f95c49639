//! `host worker`: a long-running CI worker on a queue; `host enqueue`: put a job on one.

use std::io::{IsTerminal as _, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use host::job::JobOptions;
use host::text::{escape_controls, fmt_duration};
use host::PluginPolicy;
use host_worker::amqp::{masked_url, AmqpQueue, AmqpSettings, Broker, BrokerError, TlsSettings};
use host_worker::build_api::BuildApi;
use host_worker::dir::DirQueue;
use host_worker::payload::Payload;
use host_worker::{Control, Worker, WorkerEvent, WorkerObserver, WorkerSettings};
use plugin_api::config::{parse_byte_size, parse_duration};

use crate::exit::say;
use crate::exit::CliError;

pub const WORKER_HELP: &str = "\
Queue: --queue file:///DIR (or HOST_QUEUE_URL) is a directory queue: DIR/new/*.json wait,
a worker claims one by renaming it into DIR/claimed/<worker-id>/, writes DIR/log/<id>.log and
DIR/state/<id>.jsonl, and moves it to DIR/done/ (or back to DIR/new/ when requeued; files
that are not jobs go to DIR/rejected/ with a .reason). Any number of workers may share DIR;
a worker requeues the claims of workers of this machine that are gone (at start-up, then
every 10 s), after it stops what they left running (fencing). DIR and its parents must be
writable by no one but the worker's user (new/ by its group with --queue-shared-new).

Signals: SIGINT drains (takes nothing new, lets running jobs finish, exits 0; a second one
cancels and requeues them); SIGTERM, SIGHUP and SIGQUIT cancel running jobs, requeue them and
exit after cleanup (another one abandons stops still in progress, names what may be left,
and exits 3 s later at the latest, with 75 if it had to); SIGUSR1 prints the pool and each
running job; SIGUSR2 pauses or resumes intake; SIGTTIN and SIGTTOU grow and shrink the pool
by one.

HTTP: --http ADDR serves /healthz, /ready, /worker (GET, PATCH, DELETE), /pool/* and
/metrics; --http-auth USER:PASS guards all but /healthz, /ready and /metrics. See the README's
\"Security\" section.";

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    backend: crate::provider::BackendArgs,

    #[command(flatten)]
    target: QueueArgs,

    #[command(flatten)]
    amqp: AmqpArgs,

    /// Jobs at once (default: the number of CPUs)
    #[arg(long, value_name = "N", env = "HOST_POOL_SIZE", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pool_size: Option<u32>,

    /// Serve /healthz, /ready, /worker, /pool/increment|decrement and /metrics here
    /// (HOST:PORT; :PORT is every address)
    #[arg(long, value_name = "ADDR", env = "HOST_HTTP", value_parser = parse_listen)]
    http: Option<SocketAddr>,

    /// Basic auth for every endpoint but /healthz, /ready and /metrics (the original's
    /// HTTP_API_AUTH); needed to serve on an address other than loopback
    #[arg(
        long,
        value_name = "USER:PASS",
        env = "HOST_HTTP_AUTH",
        hide_env_values = true
    )]
    http_auth: Option<String>,

    /// Serve --http on a non-loopback address without --http-auth (a proxy guards it)
    #[arg(long)]
    http_allow_unauthenticated: bool,

    /// Where the workers of this machine keep their job locks (RabbitMQ: two workers here
    /// never run one job at once); every worker of the machine must use the same one
    #[arg(long, value_name = "DIR", env = "HOST_LOCK_DIR", default_value_os_t = host_worker::machine::default_dir())]
    lock_dir: PathBuf,

    /// A directory queue's new/ may be writable by its group (the users who submit jobs);
    /// everything else in the queue stays the worker's alone
    #[arg(long)]
    queue_shared_new: bool,

    /// A travis-build compatible service to turn payloads without a script into scripts
    #[arg(long, value_name = "URL", env = "HOST_BUILD_API")]
    build_api: Option<String>,

    /// The token for --build-api (sent as `Authorization: token T`)
    #[arg(
        long,
        value_name = "TOKEN",
        env = "HOST_BUILD_API_TOKEN",
        hide_env_values = true
    )]
    build_api_token: Option<String>,

    /// Begin each job's log with the original's "Worker information" fold naming this
    /// machine NAME, the version, the instance and its startup time (the original's
    /// HOSTNAME; by default no such header)
    #[arg(long, value_name = "NAME", env = "HOST_HOSTNAME")]
    hostname: Option<String>,

    /// Do not verify the certificate of an https:// --build-api (said at start; the original's
    /// BUILD_API_INSECURE_SKIP_VERIFY)
    #[arg(long, env = "HOST_BUILD_API_INSECURE", action = clap::ArgAction::SetTrue, value_parser = parse_boolish)]
    build_api_insecure: bool,

    /// The longest a job may run, whatever its payload asks
    #[arg(long, value_name = "DURATION", env = "HOST_MAX_HARD_TIMEOUT", default_value = "50m", value_parser = parse_duration, help_heading = "Limits")]
    max_hard_timeout: Duration,
    /// The longest a job may go without output, whatever its payload asks
    #[arg(long, value_name = "DURATION", env = "HOST_MAX_LOG_SILENCE", default_value = "10m", value_parser = parse_duration, help_heading = "Limits")]
    max_log_silence: Duration,
    /// How long setup and start may take
    #[arg(long, value_name = "DURATION", env = "HOST_STARTUP_TIMEOUT", default_value = "4m", value_parser = parse_duration, help_heading = "Limits")]
    startup_timeout: Duration,
    /// How long the upload may take
    #[arg(long, value_name = "DURATION", env = "HOST_UPLOAD_TIMEOUT", default_value = "3m30s", value_parser = parse_duration, help_heading = "Limits")]
    upload_timeout: Duration,
    /// How long stopping an instance may take
    #[arg(long, value_name = "DURATION", env = "HOST_STOP_TIMEOUT", default_value = "30s", value_parser = parse_duration, help_heading = "Limits")]
    stop_timeout: Duration,
    /// End a job whose log reaches this size (errored)
    #[arg(long, value_name = "BYTES", env = "HOST_MAX_LOG_BYTES", value_parser = parse_byte_size, help_heading = "Limits")]
    max_log_bytes: Option<u64>,
    /// How often a job may be requeued before it is errored
    #[arg(
        long,
        value_name = "N",
        env = "HOST_MAX_REQUEUES",
        default_value_t = 3,
        help_heading = "Limits"
    )]
    max_requeues: u32,

    /// Stop (exit 0) once no job runs and none is waiting
    #[arg(long)]
    exit_when_idle: bool,

    /// "text": the steps of each instance's start go into the job's log, as the original's
    /// text progresser writes them (for backends that report progress)
    #[arg(long, value_name = "TYPE", env = "HOST_PROGRESS_TYPE", value_parser = ["text"])]
    progress_type: Option<String>,

    /// What the first log part's meta.infra says (the original's INFRA; default: the
    /// backend's alias)
    #[arg(long, value_name = "NAME", env = "HOST_INFRA")]
    infra: Option<String>,

    /// Asked every --heartbeat-every whether to go on: `{"state": "down"}` drains the worker
    /// (the original's HEARTBEAT_URL)
    #[arg(long, value_name = "URL", env = "HOST_HEARTBEAT_URL")]
    heartbeat_url: Option<String>,

    /// The token for --heartbeat-url (`Authorization: token T`; file://PATH reads it from a
    /// file)
    #[arg(
        long,
        value_name = "TOKEN",
        env = "HOST_HEARTBEAT_URL_AUTH_TOKEN",
        hide_env_values = true
    )]
    heartbeat_url_auth_token: Option<String>,

    /// How often --heartbeat-url is asked (30 s after a failed check, or this if shorter)
    #[arg(long, value_name = "DURATION", env = "HOST_HEARTBEAT_EVERY", default_value = "5m", value_parser = parse_duration)]
    heartbeat_every: Duration,

    /// A program each job's payload (JSON) goes through, stdin to stdout, before its script
    /// is requested or run; its failure errors the job (the original's
    /// PAYLOAD_FILTER_EXECUTABLE)
    #[arg(long, value_name = "PROGRAM", env = "HOST_PAYLOAD_FILTER_EXECUTABLE")]
    payload_filter_executable: Option<PathBuf>,

    /// How long the payload filter may take before the job errors
    #[arg(long, value_name = "DURATION", env = "HOST_PAYLOAD_FILTER_TIMEOUT", default_value = "60s", value_parser = parse_duration, help_heading = "Limits")]
    payload_filter_timeout: Duration,

    /// A pause between a job's receipt and its start (the original's INITIAL_SLEEP, whose
    /// default is 1s)
    #[arg(long, value_name = "DURATION", env = "HOST_INITIAL_SLEEP", default_value = "0s", value_parser = parse_duration, help_heading = "Limits")]
    initial_sleep: Duration,

    /// The language of a payload that names none (the original's DEFAULT_LANGUAGE)
    #[arg(long, value_name = "NAME", env = "HOST_DEFAULT_LANGUAGE", default_value = plugin_api::attributes::DEFAULT_LANGUAGE, help_heading = "Defaults")]
    default_language: String,
    /// The distribution of a payload that names none (DEFAULT_DIST)
    #[arg(long, value_name = "NAME", env = "HOST_DEFAULT_DIST", default_value = plugin_api::attributes::DEFAULT_DIST, help_heading = "Defaults")]
    default_dist: String,
    /// The architecture of a payload that names none (DEFAULT_ARCH)
    #[arg(long, value_name = "NAME", env = "HOST_DEFAULT_ARCH", default_value = plugin_api::attributes::DEFAULT_ARCH, help_heading = "Defaults")]
    default_arch: String,
    /// The image group of a payload that names none (DEFAULT_GROUP)
    #[arg(long, value_name = "NAME", env = "HOST_DEFAULT_GROUP", default_value = plugin_api::attributes::DEFAULT_GROUP, help_heading = "Defaults")]
    default_group: String,
    /// The operating system of a payload that names none (DEFAULT_OS)
    #[arg(long, value_name = "NAME", env = "HOST_DEFAULT_OS", default_value = plugin_api::attributes::DEFAULT_OS, help_heading = "Defaults")]
    default_os: String,

    /// A program (and its arguments, split at spaces) run before the worker takes its first
    /// job; if it fails, the worker does not start (75), its output in the message (the
    /// original's START_HOOK)
    #[arg(long, value_name = "COMMAND", env = "HOST_START_HOOK")]
    start_hook: Option<String>,

    /// A program run after the worker stopped (the original's STOP_HOOK); a failure is said
    #[arg(long, value_name = "COMMAND", env = "HOST_STOP_HOOK")]
    stop_hook: Option<String>,

    /// Print the settings in force as `export TRAVIS_WORKER_...` lines (secrets masked) and
    /// exit
    #[arg(long)]
    echo_config: bool,

    /// Print the backends that loaded, one alias a line, and exit (the original's flag)
    #[arg(long)]
    list_backend_providers: bool,

    /// One line per job start and finish on stderr, as text or JSON (for log shippers)
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// `--echo-config`: the settings in force as the original's `export TRAVIS_WORKER_...`
/// lines, secrets masked (the original prints them), the backend's config last.
fn echo_config(args: &WorkerArgs, url: &QueueUrl, policy: &PluginPolicy) -> Result<u8, CliError> {
    let registry = policy.load();
    let (backend, config) = args.backend.assemble(&registry)?;
    let mut out =
        String::from("# host worker: the settings in force, as travis-ci/worker names them\n");
    let mut put = |name: &str, value: &str| {
        out.push_str(&format!(
            "export TRAVIS_WORKER_{name}={}\n",
            shell_quote(value)
        ));
    };
    put("PROVIDER_NAME", &backend.alias);
    match url {
        QueueUrl::Dir(dir) => {
            put("QUEUE_TYPE", "file");
            let base = dir.parent().unwrap_or(Path::new("/"));
            put("BASE_DIR", &base.display().to_string());
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            put("QUEUE_NAME", name.as_deref().unwrap_or(""));
        }
        QueueUrl::Amqp(u) => {
            put("QUEUE_TYPE", "amqp");
            put("AMQP_URI", &masked_url(u));
            if let Some(name) = &args.target.queue_name {
                put("QUEUE_NAME", name);
            }
            let b = &args.target.broker;
            put("AMQP_HEARTBEAT", &go_duration(b.amqp_heartbeat));
            if b.amqp_insecure {
                put("AMQP_INSECURE", "true");
            }
            if let Some(p) = b.amqp_tls_cert_path.as_deref().filter(|p| !p.is_empty()) {
                put("AMQP_TLS_CERT_PATH", p);
            }
            if let Some(pem) = b.amqp_tls_cert.as_deref().filter(|p| !p.trim().is_empty()) {
                put("AMQP_TLS_CERT", &pem.replace('\n', "\\n"));
            }
            let a = &args.amqp;
            if let Some(u) = a.logs_amqp_uri.as_deref().filter(|u| !u.is_empty()) {
                put("LOGS_AMQP_URI", &masked_url(u));
            }
            if let Some(p) = a
                .logs_amqp_tls_cert_path
                .as_deref()
                .filter(|p| !p.is_empty())
            {
                put("LOGS_AMQP_TLS_CERT_PATH", p);
            }
            if let Some(pem) = a
                .logs_amqp_tls_cert
                .as_deref()
                .filter(|p| !p.trim().is_empty())
            {
                put("LOGS_AMQP_TLS_CERT", &pem.replace('\n', "\\n"));
            }
        }
    }
    let pool = args
        .pool_size
        .map_or_else(|| WorkerSettings::default().pool_size, |n| n as usize);
    put("POOL_SIZE", &pool.to_string());
    put("HARD_TIMEOUT", &go_duration(args.max_hard_timeout));
    put("LOG_TIMEOUT", &go_duration(args.max_log_silence));
    put("SCRIPT_UPLOAD_TIMEOUT", &go_duration(args.upload_timeout));
    put("STARTUP_TIMEOUT", &go_duration(args.startup_timeout));
    if let Some(n) = args.max_log_bytes {
        put("MAX_LOG_LENGTH", &n.to_string());
    }
    if let Some(t) = &args.progress_type {
        put("PROGRESS_TYPE", t);
    }
    if let Some(a) = args.http {
        put("REMOTE_CONTROLLER_ADDR", &a.to_string());
    }
    if args.http_auth.as_deref().is_some_and(|a| !a.is_empty()) {
        put("REMOTE_CONTROLLER_AUTH", "***");
    }
    if let Some(api) = &args.build_api {
        // The token as the URL's user, as the original writes it, masked.
        let token = args.build_api_token.as_deref().filter(|t| !t.is_empty());
        let uri = match (token, api.split_once("://")) {
            (Some(_), Some((scheme, rest))) => format!("{scheme}://***@{rest}"),
            _ => masked_url(api),
        };
        put("BUILD_API_URI", &uri);
        if args.build_api_insecure {
            put("BUILD_API_INSECURE_SKIP_VERIFY", "true");
        }
    }
    put("INFRA", args.infra.as_deref().unwrap_or(&backend.alias));
    if let Some(h) = args.hostname.as_deref().filter(|h| !h.is_empty()) {
        put("HOSTNAME", h);
    }
    put("INITIAL_SLEEP", &go_duration(args.initial_sleep));
    put("DEFAULT_LANGUAGE", &args.default_language);
    put("DEFAULT_DIST", &args.default_dist);
    put("DEFAULT_ARCH", &args.default_arch);
    put("DEFAULT_GROUP", &args.default_group);
    put("DEFAULT_OS", &args.default_os);
    if let Some(p) = &args.payload_filter_executable {
        put("PAYLOAD_FILTER_EXECUTABLE", &p.display().to_string());
    }
    if let Some(h) = &args.start_hook {
        put("START_HOOK", h);
    }
    if let Some(h) = &args.stop_hook {
        put("STOP_HOOK", h);
    }
    if let Some(u) = &args.heartbeat_url {
        put("HEARTBEAT_URL", &masked_url(u));
        if args.heartbeat_url_auth_token.is_some() {
            put("HEARTBEAT_URL_AUTH_TOKEN", "***");
        }
    }
    if let Some(p) = args.amqp.amqp_consumer_priority {
        put("AMQP_CONSUMER_PRIORITY", &p.to_string());
    }
    let alias = backend.alias.to_ascii_uppercase();
    for (key, value) in config.iter() {
        put(
            &format!("{alias}_{key}"),
            &plugin_api::config::masked_value(key, value),
        );
    }
    crate::exit::print_out(&out)?;
    Ok(0)
}

/// How long a start or stop hook may run.
const HOOK_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `command` (a program and its arguments, split at spaces, as the original splits
/// them) with no input, and waits at most [`HOOK_TIMEOUT`]. Its output (the last 2 KiB of
/// stdout and stderr together) is in the error.
fn run_hook(what: &str, command: &str) -> Result<(), String> {
    use std::io::Read as _;
    let mut parts = command.split_whitespace();
    let Some(program) = parts.next() else {
        return Ok(());
    };
    let mut child = std::process::Command::new(program)
        .args(parts)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what} {command:?} cannot start: {e}"))?;
    // Each stream read to its end on a thread of its own, its last 2 KiB kept.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let streams: [Option<Box<dyn std::io::Read + Send>>; 2] = [
        child.stdout.take().map(|s| Box::new(s) as _),
        child.stderr.take().map(|s| Box::new(s) as _),
    ];
    for (n, stream) in streams.into_iter().enumerate() {
        let Some(mut stream) = stream else { continue };
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(k) = stream.read(&mut buf) {
                if k == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..k]);
                if out.len() > 4096 {
                    out.drain(..out.len() - 2048);
                }
            }
            let _ = done_tx.send((n, out));
        });
    }
    drop(done_tx);
    let deadline = std::time::Instant::now() + HOOK_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("did not end within {}", fmt_duration(HOOK_TIMEOUT)));
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    // A process the hook left behind that keeps a pipe open must not hold the worker.
    let mut parts: [Vec<u8>; 2] = Default::default();
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while let Ok((n, out)) =
        done_rx.recv_timeout(until.saturating_duration_since(std::time::Instant::now()))
    {
        parts[n] = out;
    }
    let output = parts.concat();
    let mut text = String::from_utf8_lossy(&output).trim().to_owned();
    if text.len() > 2048 {
        let cut = text.len() - 2048;
        let cut = (cut..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(cut);
        text = format!("...{}", &text[cut..]);
    }
    let text = escape_controls(&text).into_owned();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!(
            "{what} {command:?} failed ({s}){}",
            if text.is_empty() {
                String::new()
            } else {
                format!(": {text}")
            }
        )),
        Err(e) => Err(format!("{what} {command:?} {e}")),
    }
}

/// `value` in single quotes for a POSIX shell.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// A duration as Go writes one (`1h30m0s`, `50m0s`, `500ms`), which both workers read.
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    if secs == 0 {
        return match nanos {
            0 => "0s".into(),
            n if n % 1_000_000 == 0 => format!("{}ms", n / 1_000_000),
            n => format!("{n}ns"),
        };
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let s = if nanos == 0 {
        format!("{s}s")
    } else {
        format!("{s}.{:09}", nanos).trim_end_matches('0').to_owned() + "s"
    };
    match (h, m) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

/// A yes or no as environment files write them (`1`, `true`, `yes`, `on`...); empty is no.
fn parse_boolish(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "n" | "off" | "f" => Ok(false),
        "1" | "true" | "yes" | "y" | "on" | "t" => Ok(true),
        other => Err(format!(
            "{other:?} is not a yes or no (true, false, 1, 0, yes, no)"
        )),
    }
}

/// A listening address: HOST:PORT, or :PORT for every address (as the original writes it).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    full.parse()
        .map_err(|e| format!("{s:?}: {e} (expected HOST:PORT or :PORT)"))
}

/// Which queue: `worker` takes jobs from it, `enqueue` puts one on it.
#[derive(clap::Args, Debug)]
pub struct QueueArgs {
    /// The queue: file:///DIR for a directory queue, amqp://USER:PASS@HOST:PORT/VHOST for
    /// RabbitMQ (amqps:// with TLS)
    #[arg(
        long,
        value_name = "URL",
        env = "HOST_QUEUE_URL",
        hide_env_values = true
    )]
    queue: Option<String>,

    /// With an amqp:// queue: the durable queue of jobs (e.g. builds.linux)
    #[arg(long, value_name = "NAME", env = "HOST_QUEUE_NAME")]
    queue_name: Option<String>,

    #[command(flatten)]
    broker: BrokerArgs,
}

/// How the broker is reached: TLS for amqps://, the heartbeat.
#[derive(clap::Args, Debug)]
struct BrokerArgs {
    /// With amqps://: the CA certificate(s) to verify the broker with, as PEM text (line
    /// breaks may be written \n); they replace the system's CA certificates (the original's
    /// AMQP_TLS_CERT)
    #[arg(
        long,
        value_name = "PEM",
        env = "HOST_AMQP_TLS_CERT",
        allow_hyphen_values = true,
        help_heading = "RabbitMQ"
    )]
    amqp_tls_cert: Option<String>,
    /// With amqps://: a PEM file of the CA certificate(s) to verify the broker with; they
    /// replace the system's CA certificates (the original's AMQP_TLS_CERT_PATH)
    #[arg(
        long,
        value_name = "FILE",
        env = "HOST_AMQP_TLS_CERT_PATH",
        help_heading = "RabbitMQ"
    )]
    amqp_tls_cert_path: Option<String>,
    /// With amqps:// and no CA given: do not verify the broker's certificate at all (said
    /// loudly at every start; anyone on the path can then read and change the traffic)
    #[arg(long, env = "HOST_AMQP_INSECURE", action = clap::ArgAction::SetTrue, value_parser = parse_boolish, help_heading = "RabbitMQ")]
    amqp_insecure: bool,
    /// With amqps://: this worker's certificate (PEM chain), for brokers that ask for one;
    /// with ?auth_mechanism=external in the URL the broker takes the user from it
    #[arg(
        long,
        value_name = "FILE",
        env = "HOST_AMQP_TLS_CLIENT_CERT",
        help_heading = "RabbitMQ"
    )]
    amqp_tls_client_cert: Option<String>,
    /// The private key of --amqp-tls-client-cert (PEM, not encrypted)
    #[arg(
        long,
        value_name = "FILE",
        env = "HOST_AMQP_TLS_CLIENT_KEY",
        help_heading = "RabbitMQ"
    )]
    amqp_tls_client_key: Option<String>,
    /// The AMQP heartbeat asked for, in whole seconds (the broker's, if lower, is used; 0:
    /// the broker's); ?heartbeat=SECONDS in the URL wins
    #[arg(long, value_name = "DURATION", env = "HOST_AMQP_HEARTBEAT", default_value = "10s", value_parser = parse_duration, help_heading = "RabbitMQ")]
    amqp_heartbeat: Duration,
}

impl BrokerArgs {
    /// Whether any TLS setting is given.
    fn any_tls(&self) -> bool {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
        set(&self.amqp_tls_cert)
            || set(&self.amqp_tls_cert_path)
            || set(&self.amqp_tls_client_cert)
            || set(&self.amqp_tls_client_key)
            || self.amqp_insecure
    }

    /// The broker at `url`, checked; its warnings said.
    fn broker(&self, url: &str) -> Result<Broker, CliError> {
        let broker = self.broker_with(
            url,
            "--queue",
            &self.amqp_tls_cert,
            &self.amqp_tls_cert_path,
        )?;
        for warning in broker.warnings() {
            say!("host: warning: {warning}");
        }
        Ok(broker)
    }

    /// The logs broker, when --logs-amqp-uri names one.
    fn logs_broker(&self, amqp: &AmqpArgs) -> Result<Option<Broker>, CliError> {
        match amqp.logs_amqp_uri.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => self
                .broker_with(
                    url,
                    "--logs-amqp-uri",
                    &amqp.logs_amqp_tls_cert,
                    &amqp.logs_amqp_tls_cert_path,
                )
                .map(Some),
            None => Ok(None),
        }
    }

    /// The broker at `url` (given by `flag`) verified with the CA `ca_pem` or `ca_path`.
    fn broker_with(
        &self,
        url: &str,
        flag: &str,
        ca_pem: &Option<String>,
        ca_path: &Option<String>,
    ) -> Result<Broker, CliError> {
        // An empty setting (`HOST_AMQP_TLS_CERT_PATH=` in an environment file) is no setting.
        let path = |p: &Option<String>| p.clone().filter(|p| !p.is_empty()).map(PathBuf::from);
        if self.amqp_heartbeat.subsec_nanos() != 0 {
            return Err(CliError::Usage(format!(
                "--amqp-heartbeat {}: AMQP counts the heartbeat in whole seconds",
                fmt_duration(self.amqp_heartbeat)
            )));
        }
        let tls = TlsSettings {
            // PEM text from an environment file may come with its line breaks written `\n`.
            ca_pem: ca_pem.clone().filter(|p| !p.trim().is_empty()).map(|p| {
                if p.contains('\n') {
                    p
                } else {
                    p.replace("\\n", "\n")
                }
            }),
            ca_path: path(ca_path),
            insecure: self.amqp_insecure,
            client_cert: path(&self.amqp_tls_client_cert),
            client_key: path(&self.amqp_tls_client_key),
            for_logs: flag == "--logs-amqp-uri",
        };
        let broker = Broker::new(url, &tls, self.amqp_heartbeat).map_err(|e| match e {
            BrokerError::Url(m) => CliError::Usage(format!("{flag}: {m}")),
            BrokerError::Tls(m) => CliError::Config(m),
        })?;
        Ok(broker)
    }

    /// The jobs' broker at `url` and the logs' own, if any, with their warnings said (a TLS
    /// setting one of them uses is not "not used" because the other is plain).
    fn brokers(&self, url: &str, amqp: &AmqpArgs) -> Result<(Broker, Option<Broker>), CliError> {
        let jobs = self.broker_with(
            url,
            "--queue",
            &self.amqp_tls_cert,
            &self.amqp_tls_cert_path,
        )?;
        let logs = self.logs_broker(amqp)?;
        let unused = |w: &str| w.contains("they are not used");
        let any_tls = jobs.is_tls() || logs.as_ref().is_some_and(Broker::is_tls);
        for b in std::iter::once(&jobs).chain(logs.as_ref()) {
            for w in b.warnings() {
                if !(any_tls && unused(w)) {
                    say!("host: warning: {w}");
                }
            }
        }
        if logs.is_none() {
            let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
            if set(&amqp.logs_amqp_tls_cert) || set(&amqp.logs_amqp_tls_cert_path) {
                say!("host: warning: --logs-amqp-tls-cert(-path) is given without --logs-amqp-uri: not used (log parts go to the jobs' broker)");
            }
        }
        Ok((jobs, logs))
    }
}

/// The reporting names on a RabbitMQ broker.
#[derive(clap::Args, Debug)]
pub struct AmqpArgs {
    /// With an amqp:// queue: where state updates go (the original's name by default)
    #[arg(long, value_name = "NAME", default_value = host_worker::amqp::STATE_QUEUE, help_heading = "RabbitMQ")]
    state_queue: String,
    /// With an amqp:// queue: the routing key and queue of log parts on the `reporting`
    /// exchange (the original's name by default)
    #[arg(long, value_name = "NAME", default_value = host_worker::amqp::LOG_QUEUE, help_heading = "RabbitMQ")]
    log_queue: String,
    /// With an amqp:// queue: this worker's consumer priority (x-priority): the broker gives
    /// jobs to the workers of the highest priority that have room first
    #[arg(
        long,
        value_name = "N",
        env = "HOST_AMQP_CONSUMER_PRIORITY",
        help_heading = "RabbitMQ"
    )]
    amqp_consumer_priority: Option<i32>,
    /// Log parts go to this broker instead of the jobs' (amqp:// or amqps://; the TLS
    /// settings above apply, but for the CA: --logs-amqp-tls-cert); the original's
    /// LOGS_AMQP_URI
    #[arg(
        long,
        value_name = "URL",
        env = "HOST_LOGS_AMQP_URI",
        hide_env_values = true,
        help_heading = "RabbitMQ"
    )]
    logs_amqp_uri: Option<String>,
    /// With an amqps:// --logs-amqp-uri: the CA certificate(s) of the logs broker, as PEM
    /// text (the original's LOGS_AMQP_TLS_CERT)
    #[arg(
        long,
        value_name = "PEM",
        env = "HOST_LOGS_AMQP_TLS_CERT",
        allow_hyphen_values = true,
        help_heading = "RabbitMQ"
    )]
    logs_amqp_tls_cert: Option<String>,
    /// With an amqps:// --logs-amqp-uri: a PEM file of the logs broker's CA certificate(s)
    /// (the original's LOGS_AMQP_TLS_CERT_PATH)
    #[arg(
        long,
        value_name = "FILE",
        env = "HOST_LOGS_AMQP_TLS_CERT_PATH",
        help_heading = "RabbitMQ"
    )]
    logs_amqp_tls_cert_path: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct EnqueueArgs {
    #[command(flatten)]
    target: QueueArgs,

    /// The job payload (JSON), or - to read it from standard input
    #[arg(value_name = "JOB")]
    job: PathBuf,
}

/// A queue as `--queue` names it.
enum QueueUrl {
    Dir(PathBuf),
    Amqp(String),
}

fn queue_url(url: Option<&str>) -> Result<QueueUrl, CliError> {
    let Some(url) = url else {
        return Err(CliError::Usage(
            "no queue: give --queue file:///DIR or amqp(s)://... (or HOST_QUEUE_URL; or the original's AMQP_URI, or QUEUE_TYPE=file with BASE_DIR and QUEUE_NAME)".into(),
        ));
    };
    if url.trim().is_empty() || url != url.trim() {
        if !url.trim().is_empty() {
            return Err(CliError::Usage(format!(
                "--queue {:?}: spaces around the URL",
                masked_url(url)
            )));
        }
        return Err(CliError::Usage(
            "--queue is empty: give file:///DIR, amqp://... or amqps://...".into(),
        ));
    }
    let lower = url.to_ascii_lowercase();
    // `amqps//user:pass@h` (a colon missing) is a mistyped URL, not a directory named after
    // the password.
    if lower.starts_with("amqp")
        && (url.contains('@') || lower.starts_with("amqp//") || lower.starts_with("amqps//"))
        && !lower.starts_with("amqp:")
        && !lower.starts_with("amqps:")
    {
        return Err(CliError::Usage(
            "--queue: not a URL (amqp:// and amqps:// are written with a colon and two slashes; the value is not shown)".into(),
        ));
    }
    // A scheme in any case; `amqps:/h` and the like are mistyped URLs, never a directory
    // named after them (whose name would then hold the password).
    for scheme in ["amqps", "amqp"] {
        if lower.starts_with(&format!("{scheme}:")) {
            if lower.starts_with(&format!("{scheme}://")) {
                return Ok(QueueUrl::Amqp(url.to_owned()));
            }
            return Err(CliError::Usage(format!(
                "--queue {}: not a URL ({scheme}:// is written with two slashes)",
                masked_url(url)
            )));
        }
    }
    if let Some(rest) = url.strip_prefix("file:") {
        // RFC 8089: file:///DIR, file://localhost/DIR and file:/DIR all name /DIR; another
        // host cannot be reached through a directory.
        let path = match rest.strip_prefix("//") {
            Some(authority_and_path) => {
                let (host, path) = match authority_and_path.find('/') {
                    Some(i) => authority_and_path.split_at(i),
                    None => (authority_and_path, ""),
                };
                if !host.is_empty() && !host.eq_ignore_ascii_case("localhost") {
                    return Err(CliError::Usage(format!(
                        "--queue {url:?}: a directory queue is on this machine; file://{host}/ names another (use file:///DIR)"
                    )));
                }
                path
            }
            None => rest,
        };
        if !path.starts_with('/') {
            return Err(CliError::Usage(format!(
                "--queue {url:?}: no absolute directory after file: (use file:///DIR, or a plain path)"
            )));
        }
        return Ok(QueueUrl::Dir(PathBuf::from(path)));
    }
    match url.split_once("://") {
        Some((scheme, _)) => Err(CliError::Usage(format!(
            "--queue: {scheme}:// queues are not supported; use file:///DIR, amqp://USER:PASS@HOST:PORT/VHOST or amqps://..."
        ))),
        None => Ok(QueueUrl::Dir(PathBuf::from(url))),
    }
}

fn queue_name(name: &Option<String>) -> Result<String, CliError> {
    let name = name.clone().filter(|n| !n.is_empty()).ok_or_else(|| {
        CliError::Usage("an amqp:// queue needs --queue-name (e.g. builds.linux)".into())
    })?;
    amqp_name("--queue-name", &name)?;
    Ok(name)
}

/// AMQP 0.9.1 names (queues, routing keys) are short strings: at most 255 bytes, and here
/// not empty (the broker would name an empty queue itself, and what goes there is lost).
fn amqp_name(flag: &str, name: &str) -> Result<(), CliError> {
    if name.trim().is_empty() {
        return Err(CliError::Usage(format!("{flag} is empty")));
    }
    if name.len() > 255 {
        return Err(CliError::Usage(format!(
            "{flag}: {} bytes, longer than the 255 bytes AMQP allows for a name ({}...)",
            name.len(),
            name.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

/// How long the line printer waits after a batch's first line for more.
const LINGER: std::time::Duration = std::time::Duration::from_millis(10);

/// Prints a line per job event, as text or JSON lines. The lines go to stderr from a thread
/// of their own through a bounded queue: a stderr that blocks (a stalled pipe, a full
/// terminal buffer) must never stop the jobs, so when the queue is full lines are dropped
/// and counted, and the count is printed once stderr moves again.
struct Lines {
    json: bool,
    out: std::sync::mpsc::SyncSender<String>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl Lines {
    /// The observer, and the printing thread to join once every observer is gone.
    fn new(json: bool) -> (Self, Option<std::thread::JoinHandle<()>>) {
        let (out, rx) = std::sync::mpsc::sync_channel::<String>(4096);
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = Arc::clone(&dropped);
        let spawned = std::thread::Builder::new()
            .name("host-lines".into())
            .spawn(move || {
                let mut reported = 0;
                let mut text = String::new();
                // One write for every line waiting: a busy worker's lines cost a wake-up and
                // a write per batch, not per line. After the first line of a batch the thread
                // sleeps a moment (not parked on the queue: a job's `emit` then wakes no one),
                // so at thousands of jobs a second it wakes [`LINGER`]-often, not per line.
                while let Ok(first) = rx.recv() {
                    std::thread::sleep(LINGER);
                    text.clear();
                    let before = reported;
                    let lost = seen.load(std::sync::atomic::Ordering::Relaxed);
                    if lost > reported {
                        text.push_str(&format!(
                            "host: {} line(s) dropped while stderr was blocked\n",
                            lost - reported
                        ));
                        reported = lost;
                    }
                    text.push_str(&first);
                    text.push('\n');
                    let mut lines = 1;
                    while text.len() < 64 * 1024 {
                        let Ok(line) = rx.try_recv() else { break };
                        text.push_str(&line);
                        text.push('\n');
                        lines += 1;
                    }
                    // A stderr that stays full costs this batch, not the worker (a
                    // blocking write here would hold every line behind it, signals' too).
                    if crate::exit::StderrNoWait
                        .write_bounded(text.as_bytes())
                        .is_err()
                    {
                        seen.fetch_add(lines, std::sync::atomic::Ordering::Relaxed);
                        reported = before; // the count, if it was in the batch, is said later
                    }
                }
            });
        let printer = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                say!("host: cannot start the thread that prints job lines: {e}");
                None
            }
        };
        (Self { json, out, dropped }, printer)
    }

    fn emit(&self, line: String) {
        if self.out.try_send(line).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl WorkerObserver for Lines {
    fn event(&self, event: &WorkerEvent) {
        let at = humantime_now();
        if self.json {
            let v = match event {
                WorkerEvent::JobStarted {
                    job_id,
                    instance_id,
                } => serde_json::json!({
                    "at": at, "event": "job_started", "job_id": job_id, "instance_id": instance_id}),
                WorkerEvent::JobFinished {
                    job_id,
                    state,
                    exit_code,
                    reason,
                    duration,
                } => serde_json::json!({
                    "at": at, "event": "job_finished", "job_id": job_id, "state": state,
                    "exit_code": exit_code, "reason": reason, "duration_secs": duration.as_secs_f64()}),
                WorkerEvent::Rejected { reason } => serde_json::json!({
                    "at": at, "event": "rejected", "reason": reason}),
                WorkerEvent::Warning(text) => serde_json::json!({
                    "at": at, "event": "warning", "message": text}),
            };
            self.emit(v.to_string());
            return;
        }
        match event {
            WorkerEvent::JobStarted {
                job_id,
                instance_id,
            } => self.emit(format!(
                "host: job {job_id} started on instance {instance_id}"
            )),
            WorkerEvent::JobFinished {
                job_id,
                state,
                exit_code,
                reason,
                duration,
            } => {
                let code = exit_code
                    .map(|c| format!(" (exit code {c})"))
                    .unwrap_or_default();
                // Reasons may hold what a queue entry's name or a service's answer said:
                // control characters are shown escaped, never sent to a terminal.
                let why = reason
                    .as_deref()
                    .map(|r| format!(": {}", escape_controls(r)))
                    .unwrap_or_default();
                self.emit(format!(
                    "host: job {job_id} {}{code} after {}{why}",
                    state.name(),
                    fmt_duration(*duration)
                ))
            }
            WorkerEvent::Rejected { reason } => self.emit(format!(
                "host: rejected a queue entry: {}",
                escape_controls(reason)
            )),
            WorkerEvent::Warning(text) => {
                self.emit(format!("host: warning: {}", escape_controls(text)))
            }
        }
    }
}

fn humantime_now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

pub fn run(mut args: WorkerArgs, policy: &PluginPolicy) -> Result<u8, CliError> {
    args.backend.original_names = true;
    // A user in the build API's URL is its token, as the original sends it (as a URL's user
    // it would go out as basic auth, and be printed with the URL).
    if let Some((token, bare)) = args
        .build_api
        .as_deref()
        .and_then(crate::original::split_user)
    {
        args.build_api = Some(bare);
        if args.build_api_token.as_deref().is_none_or(str::is_empty) {
            args.build_api_token = Some(token);
        }
    }
    if args.list_backend_providers {
        let registry = policy.load();
        let mut out = String::new();
        registry.each_backend(|b| {
            out.push_str(&b.alias);
            out.push('\n');
        });
        crate::exit::print_out(&out)?;
        return Ok(0);
    }
    let url = queue_url(args.target.queue.as_deref())?;
    if args.echo_config {
        return echo_config(&args, &url, policy);
    }
    // The worker's settings (a broker's password, tokens, the control API's credentials) are
    // read: the backend's config is read from a copy of the environment, and the process's
    // own loses them, so that no job inherits them. No thread exists yet.
    host::config::keep_environment();
    let remove: Vec<std::ffi::OsString> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            k.to_str()
                .is_some_and(|k| crate::original::is_worker_setting(k, &args.backend.backend))
        })
        .collect();
    for name in remove {
        std::env::remove_var(name);
    }
    let http_settings = host_worker::http::HttpSettings {
        auth: args.http_auth.clone().filter(|a| !a.is_empty()),
    };
    if let Some(auth) = &http_settings.auth {
        if !auth.contains(':') {
            return Err(CliError::Usage(
                "--http-auth: expected USER:PASS (the value is not shown)".into(),
            ));
        }
    }
    if let Some(addr) = args.http {
        host_worker::http::check_bind(addr, &http_settings, args.http_allow_unauthenticated)
            .map_err(CliError::Usage)?;
    }
    if let QueueUrl::Amqp(_) = url {
        queue_name(&args.target.queue_name)?;
        amqp_name("--state-queue", &args.amqp.state_queue)?;
        amqp_name("--log-queue", &args.amqp.log_queue)?;
    }
    let registry = policy.load();
    let heartbeat = match args.heartbeat_url.clone().filter(|u| !u.is_empty()) {
        Some(url) => Some(host_worker::heartbeat::Heartbeat {
            url,
            token: args
                .heartbeat_url_auth_token
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(host_worker::heartbeat::token)
                .transpose()
                .map_err(CliError::Config)?,
            every: args.heartbeat_every,
            after_error: args.heartbeat_every.min(Duration::from_secs(30)),
        }),
        None => None,
    };
    let (backend, provider) = args.backend.provider(&registry)?;
    if args.build_api_insecure
        && args.build_api.as_deref().is_some_and(|u| {
            u.get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        })
    {
        say!("host: warning: --build-api-insecure: the build script service's certificate is not verified; anyone on the path can read the payloads and change the scripts");
    }
    if let Some(hook) = args.start_hook.as_deref().filter(|h| !h.trim().is_empty()) {
        run_hook("start hook", hook).map_err(CliError::TempFail)?;
    }
    let stop_hook = args.stop_hook.clone().filter(|h| !h.trim().is_empty());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("host-worker")
        .build()
        .map_err(|e| CliError::TempFail(format!("cannot start the async runtime: {e}")))?;
    let alias = backend.alias.clone();
    let outcome = runtime.block_on(async move {
        let settings = WorkerSettings {
            pool_size: args
                .pool_size
                .map_or_else(|| WorkerSettings::default().pool_size, |n| n as usize),
            limits: JobOptions {
                startup_timeout: args.startup_timeout,
                upload_timeout: args.upload_timeout,
                hard_timeout: args.max_hard_timeout,
                log_silence_timeout: args.max_log_silence,
                max_log_bytes: args.max_log_bytes,
                stop_timeout: args.stop_timeout,
            },
            max_requeues: args.max_requeues,
            build_api: args.build_api.map(|url| BuildApi {
                insecure: args.build_api_insecure,
                ..BuildApi::new(url, args.build_api_token.clone())
            }),
            exit_when_idle: args.exit_when_idle,
            progress_type: args.progress_type.clone().unwrap_or_default(),
            payload_filter: args
                .payload_filter_executable
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
            payload_filter_timeout: args.payload_filter_timeout,
            initial_sleep: args.initial_sleep,
            defaults: host_worker::AttributeDefaults {
                language: args.default_language.clone(),
                dist: args.default_dist.clone(),
                arch: args.default_arch.clone(),
                group: args.default_group.clone(),
                os: args.default_os.clone(),
            },
            worker_info: args
                .hostname
                .clone()
                .filter(|h| !h.is_empty())
                .map(|hostname| host::job::WorkerInfo {
                    hostname,
                    version: format!("host {}", env!("CARGO_PKG_VERSION")),
                    via: match url {
                        QueueUrl::Amqp(_) => "amqp",
                        QueueUrl::Dir(_) => "file",
                    }
                    .into(),
                }),
        };
        // Fencing: what dead workers on this host left running goes before any of their
        // jobs can run again here.
        let fenced = host_worker::fence(&provider).await;
        for line in &fenced.removed {
            say!("host: reaped what a worker that is gone left: {line}");
        }
        if let Some(problem) = &fenced.problem {
            say!("host: warning: {problem}");
        }
        let (lines, printer) = Lines::new(args.log_format == "json");
        let observer: Arc<dyn WorkerObserver> = Arc::new(lines);
        let at = Serve {
            heartbeat,
            http: args.http,
            http_settings,
            alias: alias.clone(),
        };
        match url {
            QueueUrl::Dir(dir) => {
                if args.target.broker.any_tls() {
                    say!("host: warning: TLS settings are given but the queue is a directory: they are not used");
                }
                if args.amqp.logs_amqp_uri.as_deref().is_some_and(|u| !u.is_empty()) {
                    say!("host: warning: --logs-amqp-uri is given but the queue is a directory: logs go to its log/");
                }
                let access = host_worker::dir::DirAccess {
                    shared_new: args.queue_shared_new,
                };
                let queue = DirQueue::open(&dir, access).map_err(|e| {
                    CliError::Io(format!("cannot open the queue {}: {e}", dir.display()))
                })?;
                for line in queue.recover() {
                    say!("host: requeued {line}");
                }
                let id = queue.worker_id().to_owned();
                let place = dir.display().to_string();
                let worker = Worker::new(queue, provider, settings, id.clone(), observer);
                at.run(worker, &id, &place, None)
                    .await
                    .map(|()| (id, printer))
            }
            QueueUrl::Amqp(url) => {
                let (broker, logs_broker) = args.target.broker.brokers(&url, &args.amqp)?;
                let amqp = AmqpSettings {
                    broker,
                    logs_broker,
                    queue_name: queue_name(&args.target.queue_name)?,
                    prefetch: u16::try_from(settings.pool_size).unwrap_or(u16::MAX),
                    state_queue: args.amqp.state_queue.clone(),
                    log_queue: args.amqp.log_queue.clone(),
                    infra: args.infra.clone().unwrap_or_else(|| alias.clone()),
                    consumer_priority: args.amqp.amqp_consumer_priority,
                    machine_locks: Some(
                        host_worker::machine::MachineLocks::open(&args.lock_dir).map_err(|e| {
                            CliError::Io(format!("cannot use the lock directory: {e}"))
                        })?,
                    ),
                };
                let mut place = format!("{} queue {}", amqp.broker.masked(), amqp.queue_name);
                if let Some(logs) = &amqp.logs_broker {
                    place.push_str(&format!(" (log parts to {})", logs.masked()));
                }
                let (queue, cancels) = AmqpQueue::open(amqp)
                    .await
                    .map_err(|e| CliError::Io(format!("cannot use the queue: {e}")))?;
                let id = host_worker::dir::worker_id();
                let worker = Worker::new(queue, provider, settings, id.clone(), observer);
                at.run(worker, &id, &place, Some(cancels))
                    .await
                    .map(|()| (id, printer))
            }
        }
    });
    if let Some(hook) = &stop_hook {
        if let Err(e) = run_hook("stop hook", hook) {
            say!("host: warning: {e}");
        }
    }
    let (id, printer) = outcome?;
    // The worker and its observer are gone: the printer writes what is left, then ends.
    if let Some(p) = printer {
        // Bounded: a stderr that stays blocked must not keep the worker from exiting.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !p.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if p.is_finished() {
            let _ = p.join();
        }
    }
    say!("host: worker {id} stopped");
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(0)
}

/// What a worker serves beside its queue.
struct Serve {
    heartbeat: Option<host_worker::heartbeat::Heartbeat>,
    http: Option<SocketAddr>,
    http_settings: host_worker::http::HttpSettings,
    alias: String,
}

impl Serve {
    /// Serves HTTP and signals for `worker`, routes cancel commands to it, and runs it.
    async fn run<Q: host_worker::JobQueue>(
        self,
        worker: Worker<Q>,
        worker_id: &str,
        place: &str,
        cancels: Option<tokio::sync::mpsc::Receiver<u64>>,
    ) -> Result<(), CliError> {
        let control = worker.control();
        let pool = control.status().pool_size;
        if let Some(mut cancels) = cancels {
            let control = control.clone();
            tokio::spawn(async move {
                while let Some(id) = cancels.recv().await {
                    if control.cancel(id) {
                        say!("host: cancel_job {id}: cancelling it");
                    }
                }
            });
        }
        if let Some(addr) = self.http {
            let bound = host_worker::http::serve(addr, self.http_settings, control.clone())
                .await
                .map_err(|e| CliError::Io(format!("cannot serve HTTP on {addr}: {e}")))?;
            say!("host: worker HTTP endpoints on http://{bound}");
        }
        if let Some(hb) = self.heartbeat {
            tokio::spawn(hb.run(control.clone()));
        }
        signals(control)
            .map_err(|e| CliError::TempFail(format!("cannot install signal handlers: {e}")))?;
        say!(
            "host: worker {worker_id} on {place} with backend {}, {pool} job(s) at once",
            self.alias
        );
        // Under a Type=notify unit: READY=1 now, then its status, STOPPING=1 and the
        // watchdog.
        tokio::spawn(host_worker::notify::supervise(worker.control()));
        // On a worker thread, beside the jobs it spawns (the thread that blocks on the
        // runtime would take a wake-up of its own per job).
        tokio::spawn(worker.run())
            .await
            .map_err(|e| CliError::TempFail(format!("the worker's task failed: {e}")))
    }
}

/// The worker's signals, as the original's (see [`WORKER_HELP`]).
fn signals(control: Control) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut ttin = signal(SignalKind::from_raw(libc::SIGTTIN))?;
    let mut ttou = signal(SignalKind::from_raw(libc::SIGTTOU))?;
    let ignored: Vec<_> = [
        libc::SIGALRM,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGPWR,
    ]
    .into_iter()
    .map(|n| signal(SignalKind::from_raw(n)))
    .collect::<Result<_, _>>()?;
    tokio::spawn(async move {
        let _ignored = ignored;
        let mut interrupts = 0;
        loop {
            tokio::select! {
                Some(()) = int.recv() => {
                    interrupts += 1;
                    if interrupts == 1 {
                        say!("host: SIGINT: draining (no new jobs; running jobs finish; send it again to requeue them)");
                        say_waiting(&control, "SIGINT");
                        control.drain();
                    } else if interrupts == 2 {
                        if control.status().running.is_empty() {
                            say!("host: SIGINT again: no job is running; stopping");
                        } else {
                            say!("host: SIGINT again: cancelling and requeueing the running jobs");
                        }
                        control.shutdown();
                    } else {
                        // As a second SIGTERM: stops in progress abandoned, out within 3 s.
                        shutdown(&control, "SIGINT");
                    }
                }
                Some(()) = term.recv() => shutdown(&control, "SIGTERM"),
                Some(()) = hup.recv() => shutdown(&control, "SIGHUP"),
                Some(()) = quit.recv() => shutdown(&control, "SIGQUIT"),
                Some(()) = usr1.recv() => say!("host: SIGUSR1: {}", status_line(&control.status())),
                Some(()) = usr2.recv() => {
                    let paused = control.toggle_pause();
                    say!("host: SIGUSR2: intake {}", if paused { "paused" } else { "resumed" });
                }
                Some(()) = ttin.recv() => say!("host: SIGTTIN: pool size {}", control.grow()),
                Some(()) = ttou.recv() => say!("host: SIGTTOU: pool size {}", control.shrink()),
                else => break,
            }
        }
    });
    Ok(())
}

/// How long a second shutdown signal lets the worker end on its own before it exits anyway.
const SECOND_SIGNAL_GRACE: Duration = Duration::from_secs(3);

/// What SIGUSR1 says: the pool and each job running, as the original logs its processors.
fn status_line(s: &host_worker::WorkerStatus) -> String {
    let intake = s.intake();
    let jobs: Vec<String> = s
        .running
        .iter()
        .map(|r| {
            let instance = r.instance_id.as_deref().unwrap_or("starting");
            format!(
                "job {} on {instance} for {}",
                r.job_id,
                fmt_duration(Duration::from_secs_f64(r.elapsed_secs.max(0.0)))
            )
        })
        .collect();
    format!(
        "worker {} ({}), pool size {}, {intake}, up {}; {} running{}{}",
        s.worker_id,
        s.backend,
        s.pool_size,
        fmt_duration(Duration::from_secs_f64(s.uptime_secs.max(0.0))),
        jobs.len(),
        if jobs.is_empty() { "" } else { ": " },
        jobs.join(", ")
    )
}

fn shutdown(control: &Control, name: &str) {
    if control.shutting_down() {
        // What is left may wait on a queue that does not answer (a broker that is down, a
        // full disk): exit anyway, a little later. Nothing is lost: the broker gives back
        // what was not acknowledged, and the next worker requeues a directory queue's claims.
        static FORCED: std::sync::Once = std::sync::Once::new();
        let signal = name.to_owned();
        let watched = control.clone();
        FORCED.call_once(move || {
            let started = std::thread::Builder::new()
                .name("forced-exit".into())
                .spawn(move || {
                    std::thread::sleep(SECOND_SIGNAL_GRACE);
                    let why = watched
                        .queue_problem()
                        .unwrap_or_else(|| "is the broker down?".into());
                    say!(
                        "host: {signal} again: still waiting for the queue after {} s ({why}); exiting anyway: the broker gives back unacknowledged jobs (a finished job whose messages were not all confirmed runs again), and the next worker requeues a directory queue's claims",
                        SECOND_SIGNAL_GRACE.as_secs()
                    );
                    std::process::exit(75);
                });
            if let Err(e) = started {
                say!("host: cannot start the forced-exit timer: {e}");
            }
        });
        let running = control.status().running;
        if running.is_empty() {
            say!("host: {name} again: stopping");
        } else {
            let jobs: Vec<String> = running
                .iter()
                .map(|r| match &r.instance_id {
                    Some(i) => format!("job {} (instance {i})", r.job_id),
                    None => format!("job {}", r.job_id),
                })
                .collect();
            say!(
                "host: {name} again: abandoning the stops in progress; what these jobs started may be left running: {}. \
                 The next worker started on this machine removes it before their jobs run again here (or `host reap --backend {} --older-than 0s`)",
                jobs.join(", "),
                running[0].backend
            );
        }
    } else {
        say!("host: {name}: cancelling the running jobs, requeueing them, and stopping");
        say_waiting(control, name);
    }
    control.shutdown();
}

/// While the queue cannot be used, a stop waits for it (finished jobs' states and logs must
/// reach it): said, with the way out.
fn say_waiting(control: &Control, name: &str) {
    if let Some(problem) = control.queue_problem() {
        say!("host: {name}: {problem}; the stop waits for it (what has finished must reach it), or {name} again exits anyway");
    }
}

pub fn enqueue(args: &EnqueueArgs) -> Result<u8, CliError> {
    let url = queue_url(args.target.queue.as_deref())?;
    let limit = host_worker::dir::MAX_JOB_BYTES;
    let (reader, name): (Box<dyn std::io::Read>, String) = if args.job.as_os_str() == "-" {
        if std::io::stdin().is_terminal() {
            say!("host: reading the job payload from standard input (end with Ctrl-D)");
        }
        (Box::new(std::io::stdin()), "standard input".into())
    } else {
        let f = std::fs::File::open(&args.job)
            .map_err(|e| CliError::NoInput(format!("cannot read {}: {e}", args.job.display())))?;
        (Box::new(f), args.job.display().to_string())
    };
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::NoInput(format!("cannot read {name}: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(CliError::DataErr(format!(
            "{name} is larger than {limit} bytes"
        )));
    }
    let payload = Payload::parse(&bytes).map_err(|e| CliError::DataErr(format!("{name}: {e}")))?;
    match url {
        QueueUrl::Dir(dir) => {
            if args.target.broker.any_tls() {
                say!("host: warning: TLS settings are given but the queue is a directory: they are not used");
            }
            let path = DirQueue::enqueue(Path::new(&dir), &bytes, payload.id).map_err(|e| {
                CliError::Io(format!("cannot put the job on {}: {e}", dir.display()))
            })?;
            say!("host: queued job {} as {}", payload.id, path.display());
        }
        QueueUrl::Amqp(url) => {
            let name = queue_name(&args.target.queue_name)?;
            let broker = args.target.broker.broker(&url)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| CliError::TempFail(format!("cannot start the async runtime: {e}")))?;
            runtime
                .block_on(host_worker::amqp::enqueue(&broker, &name, &bytes))
                .map_err(|e| CliError::Io(format!("cannot put the job on {name}: {e}")))?;
            say!(
                "host: queued job {} on {} queue {name}",
                payload.id,
                broker.masked()
            );
        }
    }
    Ok(0)
}
