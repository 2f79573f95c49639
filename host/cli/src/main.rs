//! The `host` command: a thin CLI over the `host` library (the core: plugins, jobs) and the
//! `host-worker` library (the worker). It parses arguments, sets up logging and signals,
//! prints, and chooses exit codes; everything else lives in the libraries.

mod exit;
mod fds;
mod inspect;
mod list;
mod logging;
mod original;
mod provider;
mod reap;
mod run;
mod worker;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use exit::{say, CliError};
use host::PluginPolicy;

const ABOUT: &str =
    "Plugin host for CI build backends: loads backend plugins and runs build jobs on them";

const AFTER_HELP: &str = "\
Plugin directories: --plugin-dir DIR (repeatable), else HOST_PLUGIN_PATH (colon-separated), \
else plugins/ beside this executable and this executable's own directory. Every .so/.dylib \
file there is tried, under the same trust rules and plugin lock for every command (this \
help included).

Backend configuration: a backend reads its keys from BACKEND_<ALIAS>_<KEY> environment \
variables (values are URL-query-unescaped: + is a space, %2F is /), e.g. BACKEND_FAKE_LOG_OUTPUT.";

#[derive(Parser, Debug)]
#[command(name = "host", version, about = ABOUT, after_help = AFTER_HELP)]
struct Cli {
    /// Look for backend plugins in DIR (repeatable; replaces the default directories)
    #[arg(long = "plugin-dir", value_name = "DIR", global = true)]
    plugin_dirs: Vec<PathBuf>,

    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// Only errors on stderr
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    /// Only load plugins whose SHA-256 this lock pins (`sha256  filename` lines); default:
    /// HOST_PLUGIN_LOCK, else plugins.lock in the plugin's own directory, if present
    #[arg(long, value_name = "FILE", global = true)]
    plugin_lock: Option<PathBuf>,

    /// Run plugin ALIAS out of process, in a plugin server of its own, so that a crash in
    /// it fails its calls instead of ending the host (repeatable; `all` for every plugin);
    /// default: HOST_ISOLATE (comma-separated)
    #[arg(long = "isolate", value_name = "ALIAS|all", global = true)]
    isolate: Vec<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the backends that load, their config keys, and the files that were rejected
    ///
    /// Exit status: 0 when every plugin file loaded, 3 when some were rejected (the
    /// backends that loaded are still listed).
    ListBackends(list::Args),

    /// Run one build job: start an instance, upload SCRIPT, stream its log to stdout, stop
    ///
    /// The job's lifecycle is the original worker's: setup, start, upload, run with the log
    /// streamed as it is produced, and stop on every path (success, failure, timeout,
    /// SIGINT/SIGTERM/SIGHUP/SIGQUIT). A line on stderr names the backend, the instance and
    /// its startup time before the log starts.
    #[command(after_help = run::after_help())]
    Run(Box<run::Args>),

    /// Tell everything about one plugin file: size, sha256, trust checks, ABI and
    /// plugin-api versions, alias, name, config keys, or exactly why it is refused
    ///
    /// Exit status: 0 when the host would load it, 4 when not.
    Inspect(inspect::Args),

    /// Remove what a backend left behind that is older than --older-than (containers,
    /// working directories, processes of a host that crashed)
    ///
    /// Exit status: 0 done, 1 failed, 69 the backend does not support reaping, 64/78 bad
    /// usage/config.
    Reap(reap::Args),

    /// Run a long-lived CI worker: take jobs from a queue, run them on a pool of instances,
    /// record their states and logs, requeue what broke
    ///
    /// Exit status: 0 after a drain (SIGINT) or shutdown (SIGTERM), 64/78 bad usage/config,
    /// 74 the queue or the HTTP address cannot be used.
    #[command(after_help = worker::WORKER_HELP)]
    Worker(Box<worker::WorkerArgs>),

    /// Put a job payload (JSON) on a queue
    ///
    /// Exit status: 0 queued, 65 not a job payload, 66 unreadable, 74 the queue cannot be
    /// written.
    Enqueue(worker::EnqueueArgs),
}

fn main() -> ExitCode {
    // A child probing a plugin file answers and exits here (see host::plugins::probe).
    host::serve_if_asked();
    // Before anything opens a file: standard descriptors that are closed get /dev/null (so
    // no plugin file or socket lands on them), and descriptors inherited beyond them are
    // kept from every child (jobs get 0, 1 and 2 only).
    let std_fds = fds::sanitize();
    let args: Vec<OsString> = std::env::args_os().collect();
    // systemd's notify socket and watchdog (a worker under a Type=notify unit): taken out of
    // the environment before any thread exists, so that no job inherits them.
    if let Some(problem) = host_worker::notify::take_from_env() {
        say!("host: warning: {problem}");
    }
    // The original worker's settings by their names, for `worker` and `enqueue`: made into
    // this worker's before the command line is read (no thread exists yet).
    if original::applies_to(&args) {
        let bad = original::not_utf8(std::env::vars_os());
        if !bad.is_empty() {
            let e = CliError::Config(format!(
                "not UTF-8, so not a setting: {} (the value is not shown)",
                bad.join(", ")
            ));
            say!("host: {e}");
            return ExitCode::from(e.exit_code());
        }
        let env = |k: &str| std::env::var(k).ok();
        match original::apply(&env, &mut |k: &str, v: &str| std::env::set_var(k, v)) {
            Ok(applied) => {
                for w in applied.warnings {
                    say!("host: warning: {w}");
                }
            }
            Err(e) => {
                let e = CliError::Config(e);
                say!("host: {e}");
                return ExitCode::from(e.exit_code());
            }
        }
    }
    match dispatch(&args, &std_fds) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if !matches!(e, CliError::Quiet(_)) {
                say!("host: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn dispatch(args: &[OsString], std_fds: &fds::StdFds) -> Result<u8, CliError> {
    let cli = Cli::command()
        .try_get_matches_from(args)
        .and_then(|m| Cli::from_arg_matches(&m))
        .map_err(|e| clap_error(e, args))?;
    logging::init(cli.verbose, cli.quiet);
    let mut policy = PluginPolicy::resolve(&cli.plugin_dirs, cli.plugin_lock.as_deref());
    if !cli.isolate.is_empty() {
        policy = policy.with_isolation(host::isolate::Isolation::parse(&cli.isolate));
    }
    match cli.command {
        Command::ListBackends(a) => list::run(&a, &policy),
        Command::Run(a) => run::run(*a, &policy, cli.quiet, std_fds),
        Command::Reap(a) => reap::run(&a, &policy),
        Command::Inspect(a) => inspect::run(&a, &policy),
        Command::Worker(a) => worker::run(*a, &policy),
        Command::Enqueue(a) => worker::enqueue(&a),
    }
}

/// Prints clap's error or help. Help ends with the exit statuses and with what the loaded
/// backends accept, as the original worker's help did; the backends are loaded under the
/// same policy as every other command.
fn clap_error(e: clap::Error, args: &[OsString]) -> CliError {
    use clap::error::ErrorKind;
    let print = |text: String| exit::print_out(&text);
    let result = match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let (dirs, lock) = prescan(args);
            let registry = PluginPolicy::resolve(&dirs, lock.as_deref()).load();
            print(format!(
                "{}\n{}{}",
                e.render().ansi(),
                exit::help_table(),
                list::backends_help(&registry)
            ))
            .map(|()| {
                if matches!(e.kind(), ErrorKind::DisplayHelp) {
                    0
                } else {
                    exit::USAGE
                }
            })
        }
        ErrorKind::DisplayVersion => print(e.render().to_string()).map(|()| 0),
        _ => {
            let _ = e.print();
            Ok(exit::USAGE)
        }
    };
    match result {
        Ok(code) => CliError::Quiet(code),
        Err(e) => e,
    }
}

/// `--plugin-dir` and `--plugin-lock` values, found without a full parse (the parse failed
/// or showed help).
fn prescan(args: &[OsString]) -> (Vec<PathBuf>, Option<PathBuf>) {
    let mut dirs = Vec::new();
    let mut lock = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let Some(s) = a.to_str() else { continue };
        if s == "--" {
            break;
        } else if s == "--plugin-dir" {
            dirs.extend(it.next().map(PathBuf::from));
        } else if let Some(d) = s.strip_prefix("--plugin-dir=") {
            dirs.push(PathBuf::from(d));
        } else if s == "--plugin-lock" {
            lock = it.next().map(PathBuf::from);
        } else if let Some(l) = s.strip_prefix("--plugin-lock=") {
            lock = Some(PathBuf::from(l));
        }
    }
    (dirs, lock)
}
