//! `host run`: one build job on one backend, from the command line.

use std::io::{IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use host::job::{
    run_job, CancelReason, Job, JobEvent, JobObserver, JobOptions, JobReport, Limit, Outcome,
    TimeoutKind,
};
use host::output::BlockingFile;
use host::text::{escape_controls, fmt_duration};
use host::PluginPolicy;
use plugin_api::config::{parse_byte_size, parse_duration};
use plugin_api::{ProgressEntry, ProgressState, StartAttributes};

use crate::exit::say;
use crate::exit::{self, CliError};
use crate::fds::StdFds;

/// The default of `--max-script-bytes`.
const DEFAULT_MAX_SCRIPT: &str = "64MiB";

pub fn after_help() -> String {
    format!(
        "{}
Signals: SIGINT, SIGTERM, SIGHUP and SIGQUIT cancel the job and stop the instance (exit
128+N). One that arrives while the instance is being stopped lets the stop finish (bounded by
--stop-timeout); the next one abandons it and says what may be left running. Other signals
(SIGUSR1, SIGUSR2, SIGALRM...) are ignored.

Config precedence: --config KEY=VALUE > BACKEND_<ALIAS>_<KEY> environment > --config-file
FILE (TOML, a table per alias, e.g. [fake] LOG_OUTPUT = \"hi\") > the backend's defaults.
A key the backend does not list, a table naming no backend and an unusable variable are
warned about.",
        exit::help_table()
    )
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_byte_size(s)
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    backend: crate::provider::BackendArgs,

    /// Build language (default "default")
    #[arg(long, help_heading = "Start attributes")]
    language: Option<String>,
    /// Operating system (default "linux")
    #[arg(long, help_heading = "Start attributes")]
    os: Option<String>,
    /// Distribution (default "xenial")
    #[arg(long, help_heading = "Start attributes")]
    dist: Option<String>,
    /// Architecture (default "amd64")
    #[arg(long, help_heading = "Start attributes")]
    arch: Option<String>,
    /// Image group (default "stable")
    #[arg(long, help_heading = "Start attributes")]
    group: Option<String>,
    /// Explicit image name
    #[arg(long, help_heading = "Start attributes")]
    image: Option<String>,
    /// VM type (default "default")
    #[arg(long, help_heading = "Start attributes")]
    vm_type: Option<String>,

    /// How long setup and start may take
    #[arg(long, value_name = "DURATION", default_value = "4m", value_parser = duration_arg, help_heading = "Limits")]
    startup_timeout: Duration,
    /// How long the upload may take
    #[arg(long, value_name = "DURATION", default_value = "3m30s", value_parser = duration_arg, help_heading = "Limits")]
    upload_timeout: Duration,
    /// How long the run may take
    #[arg(long, value_name = "DURATION", default_value = "50m", value_parser = duration_arg, help_heading = "Limits")]
    hard_timeout: Duration,
    /// How long the run may go without output
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = duration_arg, help_heading = "Limits")]
    log_silence_timeout: Duration,
    /// Stop the job once the log reaches this size (e.g. 4MiB; default: no limit)
    #[arg(long, value_name = "BYTES", value_parser = size_arg, help_heading = "Limits")]
    max_log_bytes: Option<u64>,
    /// How long stopping the instance may take, on every path
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration_arg, help_heading = "Limits")]
    stop_timeout: Duration,
    /// Refuse a script larger than this (exit 66)
    #[arg(long, value_name = "BYTES", default_value = DEFAULT_MAX_SCRIPT, value_parser = size_arg, help_heading = "Limits")]
    max_script_bytes: u64,

    /// Write a JSON summary of the job to FILE (outcome, exit code, instance, image, the
    /// start's steps with their times, durations...); it is created before the job starts,
    /// and the job does not run if it cannot be
    #[arg(long, value_name = "FILE")]
    json_summary: Option<PathBuf>,

    /// How the steps of the instance's start are shown: on a terminal they are a live
    /// line; "text" also prints them as plain lines on stderr where there is no terminal
    #[arg(long, value_name = "TYPE", value_parser = ["text"])]
    progress: Option<String>,

    /// Save the instance's trace (a backend that keeps one; e.g. fake) to FILE after the
    /// run; a backend without one is said on stderr, and the job's outcome stands
    #[arg(long, value_name = "FILE")]
    trace_file: Option<PathBuf>,

    /// The build script, or - to read it from standard input
    #[arg(value_name = "SCRIPT")]
    script: PathBuf,
}

pub fn run(args: Args, policy: &PluginPolicy, quiet: bool, fds: &StdFds) -> Result<u8, CliError> {
    let script = read_script(&args.script, args.max_script_bytes)?;
    if fds.stdout_closed {
        return Err(CliError::Io(
            "standard output is closed: the job's log would be lost (nothing was run)".into(),
        ));
    }
    let summary = args.json_summary.as_deref().map(open_summary).transpose()?;
    let registry = policy.load();
    let (backend, provider) = args.backend.provider(&registry)?;

    let mut attributes = StartAttributes {
        language: args.language.unwrap_or_default(),
        os: args.os.unwrap_or_default(),
        dist: args.dist.unwrap_or_default(),
        arch: args.arch.unwrap_or_default(),
        group: args.group.unwrap_or_default(),
        image_name: args.image.unwrap_or_default(),
        vm_type: args.vm_type.unwrap_or_default(),
        hard_timeout: args.hard_timeout,
        ..Default::default()
    };
    attributes.set_worker_defaults();
    let job = Job {
        script,
        attributes,
        trace: args.trace_file.is_some(),
        worker_info: None,
        options: JobOptions {
            startup_timeout: args.startup_timeout,
            upload_timeout: args.upload_timeout,
            hard_timeout: args.hard_timeout,
            log_silence_timeout: args.log_silence_timeout,
            max_log_bytes: args.max_log_bytes,
            stop_timeout: args.stop_timeout,
        },
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("host-rt")
        .build()
        .map_err(|e| CliError::TempFail(format!("cannot start the async runtime: {e}")))?;
    let mut observer = Reporter::new(&backend.alias, &backend.human_readable_name, quiet);
    observer.plain_progress = args.progress.is_some() && !std::io::stderr().is_terminal();
    let report = runtime.block_on(async {
        let mut cancel = signals()
            .map_err(|e| CliError::TempFail(format!("cannot install signal handlers: {e}")))?;
        let log = log_stdout()
            .map_err(|e| CliError::Io(format!("cannot write to standard output: {e}")))?;
        Ok::<_, CliError>(run_job(&provider, job, log, &mut cancel, &observer).await)
    })?;
    observer.finish_spinner();
    let code = exit_code(&report.outcome);
    summarize(&report, code, quiet);
    let mut status = Ok(code);
    if let (Some(path), Some(trace)) = (&args.trace_file, &report.trace) {
        match trace {
            Ok(bytes) => {
                if let Err(e) = std::fs::write(path, bytes) {
                    status = Err(CliError::Io(format!(
                        "cannot write the trace to {}: {e}",
                        path.display()
                    )));
                }
            }
            Err(why) => say!("host: no trace saved to {}: {why}", path.display()),
        }
    }
    if let (Some(file), Some(path)) = (summary, &args.json_summary) {
        if let Err(e) = write_summary(file, &report, code) {
            status = Err(CliError::Io(format!(
                "cannot write the JSON summary to {}: {e}",
                path.display()
            )));
        }
    }
    // Plugin runtimes keep threads; the process ends here without waiting for them.
    drop(provider);
    runtime.shutdown_timeout(Duration::from_millis(100));
    status
}

/// The exit status for an outcome (see [`exit::TABLE`]).
fn exit_code(outcome: &Outcome) -> u8 {
    match outcome {
        Outcome::Passed => 0,
        Outcome::Failed => 1,
        Outcome::Errored { exit_code } => u8::try_from(*exit_code).unwrap_or(exit::OUT_OF_RANGE),
        Outcome::NotCompleted(f) if f.is_config_error() => exit::CONFIG,
        Outcome::NotCompleted(_) => exit::TEMPFAIL,
        Outcome::TimedOut(_) => exit::TIMED_OUT,
        Outcome::Cancelled(r) => r
            .signal()
            .map_or(exit::TEMPFAIL, |(n, _)| (128 + n).clamp(0, 255) as u8),
        Outcome::OutputClosed => exit::IO,
    }
}

/// Reads the script, at most `limit` bytes.
fn read_script(path: &Path, limit: u64) -> Result<Vec<u8>, CliError> {
    let (reader, name): (Box<dyn std::io::Read>, String) = if path.as_os_str() == "-" {
        (Box::new(std::io::stdin()), "from standard input".into())
    } else {
        let f = std::fs::File::open(path).map_err(|e| {
            CliError::NoInput(format!("cannot read script {}: {e}", path.display()))
        })?;
        (Box::new(f), path.display().to_string())
    };
    let mut buf = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| CliError::NoInput(format!("cannot read the script {name}: {e}")))?;
    if buf.len() as u64 > limit {
        return Err(CliError::NoInput(format!(
            "the script {name} is larger than --max-script-bytes ({limit} bytes)"
        )));
    }
    Ok(buf)
}

/// Creates the summary file before the job runs. Opening does not wait (a FIFO without a
/// reader is refused at once), so nothing blocks past a signal.
fn open_summary(path: &Path) -> Result<std::fs::File, CliError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::ENXIO) {
                " (a FIFO with no reader)"
            } else {
                ""
            };
            CliError::CantCreate(format!(
                "cannot create the JSON summary {}: {e}{hint}; nothing was run",
                path.display()
            ))
        })?;
    Ok(file)
}

fn write_summary(mut file: std::fs::File, report: &JobReport, code: u8) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut json = serde_json::to_value(report).map_err(std::io::Error::other)?;
    if let Some(obj) = json.as_object_mut() {
        obj.insert("exit_code".into(), code.into());
    }
    let text = serde_json::to_string_pretty(&json).map_err(std::io::Error::other)? + "\n";
    file.write_all(text.as_bytes())?;
    file.flush()
}

/// Turns SIGINT, SIGTERM, SIGHUP and SIGQUIT into cancel requests, every time they arrive,
/// and takes the signals that mean nothing to a job (so that they do not end the host
/// without cleanup). Handlers, unlike SIG_IGN, do not pass on to the job's processes.
fn signals() -> std::io::Result<host::job::CancelReceiver> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut quit = signal(SignalKind::quit())?;
    let ignored = [
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGPWR,
    ];
    let ignored: Vec<_> = ignored
        .into_iter()
        .map(|n| signal(SignalKind::from_raw(n)))
        .collect::<Result<_, _>>()?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let _ignored = ignored;
        loop {
            let reason = tokio::select! {
                Some(()) = int.recv() => CancelReason::Interrupt,
                Some(()) = term.recv() => CancelReason::Terminate,
                Some(()) = hup.recv() => CancelReason::Hangup,
                Some(()) = quit.recv() => CancelReason::Quit,
                else => break,
            };
            if tx.send(reason).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

fn summarize(report: &JobReport, code: u8, quiet: bool) {
    match &report.outcome {
        Outcome::NotCompleted(f) if f.is_config_error() => {
            say!("host: bad backend config: {f}")
        }
        Outcome::NotCompleted(f) => {
            say!("host: job not completed (infrastructure failure; a worker would requeue it): {f}")
        }
        Outcome::OutputClosed => {
            say!("host: the log's destination failed (its reader went away or a write failed); the job was stopped")
        }
        Outcome::Errored { exit_code } if i32::from(code) != *exit_code => {
            say!("host: job errored with exit code {exit_code}, outside 0..=255: exiting {code}")
        }
        _ if quiet => {}
        outcome @ (Outcome::Passed | Outcome::Failed | Outcome::Errored { .. }) => say!(
            "host: job {} (exit code {})",
            outcome.name(),
            report.script_exit_code.unwrap_or_default()
        ),
        _ => {}
    }
}

/// Shows the job's progress on stderr: the worker-info line, a spinner while starting on a
/// terminal, and a line for each limit or signal.
struct Reporter {
    alias: String,
    name: String,
    quiet: bool,
    /// `--progress text` without a terminal: each step of the start as a plain line.
    plain_progress: bool,
    spinner: Mutex<Option<indicatif::ProgressBar>>,
}

impl Reporter {
    fn new(alias: &str, name: &str, quiet: bool) -> Self {
        Self {
            alias: alias.to_owned(),
            name: name.to_owned(),
            quiet,
            plain_progress: false,
            spinner: Mutex::new(None),
        }
    }

    /// A step of the start: on a terminal, a step done (or failed) is printed above the
    /// spinner and one under way becomes its line; else a plain line with `--progress text`.
    fn step(&self, e: &ProgressEntry) {
        if self.quiet {
            return;
        }
        let head = match e.state {
            ProgressState::Success => "✓",
            ProgressState::Failure => "✗",
            ProgressState::Neutral => "•",
        };
        let message = escape_controls(&e.message);
        if let Ok(s) = self.spinner.lock() {
            if let Some(bar) = s.as_ref() {
                match e.state {
                    ProgressState::Neutral => bar.set_message(format!("{head} {message}")),
                    _ => {
                        bar.println(format!("{head} {message}"));
                        bar.set_message(format!(
                            "starting an instance on backend {}...",
                            self.alias
                        ));
                    }
                }
                return;
            }
        }
        if self.plain_progress {
            say!("host: {head} {message}");
        }
    }

    fn finish_spinner(&self) {
        if let Ok(mut s) = self.spinner.lock() {
            if let Some(bar) = s.take() {
                bar.finish_and_clear();
            }
        }
    }

    fn start_spinner(&self) {
        if self.quiet || !std::io::stderr().is_terminal() {
            return;
        }
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            bar.set_style(style);
        }
        bar.set_message(format!("starting an instance on backend {}...", self.alias));
        bar.enable_steady_tick(Duration::from_millis(100));
        if let Ok(mut s) = self.spinner.lock() {
            *s = Some(bar);
        }
    }
}

fn signal_name(reason: CancelReason) -> &'static str {
    reason.signal().map_or("a cancel request", |(_, name)| name)
}

fn limit_reached(kind: TimeoutKind, limit: Limit) -> String {
    let limit = match limit {
        Limit::Time(d) => fmt_duration(d),
        Limit::Bytes(b) => format!("{b} bytes"),
    };
    match kind {
        TimeoutKind::Startup => format!("startup timeout ({limit}) reached"),
        TimeoutKind::Upload => format!("upload timeout ({limit}) reached"),
        TimeoutKind::Hard => format!("hard timeout ({limit}) reached"),
        TimeoutKind::LogSilence => format!("no output for {limit}: log silence timeout"),
        TimeoutKind::LogCap => format!("log size limit ({limit}) reached"),
    }
}

impl JobObserver for Reporter {
    fn event(&self, event: &JobEvent) {
        match event {
            JobEvent::Starting => self.start_spinner(),
            JobEvent::Progress(e) => self.step(e),
            JobEvent::Started {
                instance_id,
                startup,
                image_name,
                warmed,
            } => {
                self.finish_spinner();
                if !self.quiet {
                    let image = if image_name.is_empty() {
                        String::new()
                    } else {
                        format!(", image {image_name}")
                    };
                    say!(
                        "host: worker info: backend {} ({}), instance {instance_id}{image}{}, startup {}",
                        self.alias,
                        self.name,
                        if *warmed { ", warmed" } else { "" },
                        fmt_duration(*startup)
                    );
                }
            }
            JobEvent::Running | JobEvent::Stopping { .. } => {}
            JobEvent::LimitReached { kind, limit } => {
                self.finish_spinner();
                say!("host: {}; ending the job", limit_reached(*kind, *limit));
            }
            JobEvent::Cancelled(reason) => {
                self.finish_spinner();
                say!(
                    "host: {} received; cancelling the job and stopping the instance (send another signal to abandon the stop)",
                    signal_name(*reason)
                );
            }
            JobEvent::CancelDuringStop(reason) => say!(
                "host: {} received while stopping the instance; letting the stop finish (send another signal to abandon it)",
                signal_name(*reason)
            ),
            JobEvent::StopFailed { instance_id, error } => {
                say!("host: stopping instance {instance_id} failed: {error}")
            }
            JobEvent::StopTimedOut { instance_id, limit } => say!(
                "host: stopping instance {instance_id} did not finish within {}; it may be left running",
                fmt_duration(*limit)
            ),
            JobEvent::StopAbandoned { instance_id, reason } => say!(
                "host: second signal ({}): abandoning the stop of instance {instance_id} on backend {}: it may be left running (`host reap --backend {}` removes it later)",
                signal_name(*reason),
                self.alias,
                self.alias
            ),
        }
    }
}

/// Standard output for the job's log, written straight to the file descriptor (see
/// [`BlockingFile`]): `host run` runs one job, so a write that blocks while the pipe is full
/// stops nothing else.
fn log_stdout() -> std::io::Result<BlockingFile> {
    use std::os::fd::AsFd as _;
    let file = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    // When stdout is a pipe, a larger kernel buffer (Linux's default is 64 KiB) means fewer
    // blocked writes while the reader catches up. Best effort.
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        // SAFETY: fcntl on a descriptor we own; it fails harmlessly on a non-pipe.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    }
    Ok(BlockingFile::new(file))
}
