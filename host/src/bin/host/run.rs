//! `host run`: one build job on one backend, from the command line.

use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use host::job::{
    fmt_duration, run_job, CancelReason, Job, JobObserver, JobOptions, JobReport, TimeoutKind,
};
use host::{Instance, Registry};
use plugin_api::config::{parse_byte_size, parse_duration};
use plugin_api::StartAttributes;

use crate::exit;

pub const AFTER_HELP: &str = "\
Exit status:
    the script's own exit code when the run completed (0 passed, 1 failed, other: errored)
    75   not completed: setup, start, upload or the run broke, or start/upload timed out
         (infrastructure failure; a worker would requeue the job)
    124  hard timeout, log silence timeout or log size limit reached
    130  cancelled by SIGINT; 143 cancelled by SIGTERM
    74   the log's reader went away (e.g. piped into `head`)
    64   bad usage (unknown backend, malformed flag or duration)
    66   the script cannot be read
    78   bad backend config (config file, invalid or missing key)

Config precedence: --config KEY=VALUE > BACKEND_<ALIAS>_<KEY> environment > --config-file
FILE (TOML, a table per alias, e.g. [fake] LOG_OUTPUT = \"hi\") > the backend's defaults.
A key the backend does not list is warned about. The instance is stopped on every path; a
second SIGINT while stopping abandons the stop and says so.";

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

    /// Write a JSON summary of the job to FILE (outcome, exit code, instance, durations...)
    #[arg(long, value_name = "FILE")]
    json_summary: Option<PathBuf>,

    /// The build script, or - to read it from standard input
    #[arg(value_name = "SCRIPT")]
    script: PathBuf,
}

pub fn run(args: Args, registry: &Registry, quiet: bool) -> ExitCode {
    let script = match read_script(&args.script) {
        Ok(s) => s,
        Err(msg) => {
            eprintln!("host: {msg}");
            return ExitCode::from(exit::NO_INPUT);
        }
    };
    let (backend, provider) = match args.backend.provider(registry) {
        Ok(found) => found,
        Err(code) => return code,
    };

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
        options: JobOptions {
            startup_timeout: args.startup_timeout,
            upload_timeout: args.upload_timeout,
            hard_timeout: args.hard_timeout,
            log_silence_timeout: args.log_silence_timeout,
            max_log_bytes: args.max_log_bytes,
            stop_timeout: args.stop_timeout,
        },
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("host-rt")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("host: cannot start the async runtime: {e}");
            return ExitCode::from(host::job::EXIT_NOT_COMPLETED);
        }
    };
    let observer = Reporter::new(&backend.alias, &backend.human_readable_name, quiet);
    let report = runtime.block_on(async {
        let mut cancel = match signals() {
            Ok(rx) => rx,
            Err(e) => {
                eprintln!("host: cannot install signal handlers: {e}");
                return None;
            }
        };
        let log = match BlockingStdout::new() {
            Ok(out) => out,
            Err(e) => {
                eprintln!("host: cannot write to standard output: {e}");
                return None;
            }
        };
        Some(run_job(&provider, job, log, &mut cancel, &observer).await)
    });
    let Some(report) = report else {
        return ExitCode::from(host::job::EXIT_NOT_COMPLETED);
    };
    observer.finish_spinner();
    summarize(&report, quiet);
    if let Some(path) = &args.json_summary {
        if let Err(e) = write_summary(path, &report) {
            eprintln!(
                "host: cannot write the JSON summary to {}: {e}",
                path.display()
            );
        }
    }
    // Plugin runtimes keep threads; the process ends here without waiting for them.
    drop(provider);
    runtime.shutdown_timeout(Duration::from_millis(100));
    ExitCode::from(report.exit_code)
}

fn read_script(path: &std::path::Path) -> Result<Vec<u8>, String> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read the script from standard input: {e}"))?;
        Ok(buf)
    } else {
        std::fs::read(path).map_err(|e| format!("cannot read script {}: {e}", path.display()))
    }
}

fn write_summary(path: &std::path::Path, report: &JobReport) -> std::io::Result<()> {
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(path, json + "\n")
}

/// Turns SIGINT and SIGTERM into cancel requests, every time they arrive.
fn signals() -> std::io::Result<host::job::CancelReceiver> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let reason = tokio::select! {
                Some(()) = int.recv() => CancelReason::Interrupt,
                Some(()) = term.recv() => CancelReason::Terminate,
                else => break,
            };
            if tx.send(reason).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

fn summarize(report: &JobReport, quiet: bool) {
    use host::job::Outcome;
    let outcome = report.outcome();
    match &outcome {
        Outcome::NotCompleted { reason } => eprintln!(
            "host: job not completed (infrastructure failure; a worker would requeue it): {reason}"
        ),
        Outcome::OutputClosed => {
            eprintln!("host: the log's reader went away; the job was stopped")
        }
        _ if quiet => {}
        Outcome::Passed | Outcome::Failed | Outcome::Errored { .. } => eprintln!(
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
    spinner: Mutex<Option<indicatif::ProgressBar>>,
}

impl Reporter {
    fn new(alias: &str, name: &str, quiet: bool) -> Self {
        Self {
            alias: alias.to_owned(),
            name: name.to_owned(),
            quiet,
            spinner: Mutex::new(None),
        }
    }

    fn finish_spinner(&self) {
        if let Ok(mut s) = self.spinner.lock() {
            if let Some(bar) = s.take() {
                bar.finish_and_clear();
            }
        }
    }
}

impl JobObserver for Reporter {
    fn starting(&self) {
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

    fn started(&self, instance: &Instance) {
        self.finish_spinner();
        if !self.quiet {
            eprintln!(
                "host: worker info: backend {} ({}), instance {}, startup {}",
                self.alias,
                self.name,
                instance.id(),
                fmt_duration(instance.startup_duration())
            );
        }
    }

    fn timed_out(&self, kind: TimeoutKind, limit: &str) {
        self.finish_spinner();
        let what = match kind {
            TimeoutKind::LogSilence => format!("no output for {limit}: log silence timeout"),
            _ => format!("{} ({limit}) reached", kind.describe()),
        };
        eprintln!("host: {what}; ending the job");
    }

    fn cancelled(&self, reason: CancelReason) {
        self.finish_spinner();
        eprintln!(
            "host: {} received; cancelling the job and stopping the instance (send it again to abandon the stop)",
            reason.signal_name()
        );
    }

    fn stop_failed(&self, instance_id: &str, error: &str) {
        eprintln!("host: stopping instance {instance_id} failed: {error}");
    }

    fn abandoning(&self, what: &str) {
        eprintln!("host: second signal: abandoning the {what}");
    }

    fn stop_timed_out(&self, instance_id: &str, limit: Duration) {
        eprintln!(
            "host: stopping instance {instance_id} did not finish within {}; it may be left running",
            fmt_duration(limit)
        );
    }
}

/// Standard output for the job's log, written straight to the file descriptor.
///
/// tokio's own stdout hands every write to its blocking pool (a thread hop per chunk) and
/// std's is line-buffered (a partial line would wait for its newline). `host run` runs one
/// job, so blocking the worker thread that writes while the pipe is full stops nothing else:
/// the other worker keeps the timers and signals going.
struct BlockingStdout(std::fs::File);

impl BlockingStdout {
    fn new() -> std::io::Result<Self> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let file = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
        // When stdout is a pipe, a larger kernel buffer (Linux's default is 64 KiB) means
        // fewer blocked writes while the reader catches up. Best effort.
        // SAFETY: fcntl on a descriptor we own; it fails harmlessly on a non-pipe.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
        Ok(Self(file))
    }
}

impl tokio::io::AsyncWrite for BlockingStdout {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::io::Write as _;
        std::task::Poll::Ready(self.0.write(buf))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
