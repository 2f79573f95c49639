//! The `host` command: a thin CLI over the host library. It parses arguments, sets up
//! logging and signals, and prints; everything else lives in the library.

mod inspect;
mod list;
mod logging;
mod provider;
mod reap;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use host::{loader, Registry};

/// Exit statuses of `host` itself (a job's own statuses are documented under `run`).
pub mod exit {
    /// Bad usage: an unknown flag, a malformed value (EX_USAGE).
    pub const USAGE: u8 = 64;
    /// Some plugin files were rejected; the ones that loaded were still listed.
    pub const SOME_REJECTED: u8 = 3;
    /// The script cannot be read (EX_NOINPUT).
    pub const NO_INPUT: u8 = 66;
    /// Bad backend config (EX_CONFIG).
    pub const CONFIG: u8 = 78;
    /// The backend does not support the operation (EX_UNAVAILABLE).
    pub const UNSUPPORTED: u8 = 69;
}

const ABOUT: &str =
    "Plugin host for CI build backends: loads backend plugins and runs build jobs on them";

const AFTER_HELP: &str = "\
Plugin directories: --plugin-dir DIR (repeatable), else HOST_PLUGIN_PATH (colon-separated), \
else plugins/ beside this executable and this executable's own directory. Every .so/.dylib \
file there is tried.

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

    /// Only load plugins whose SHA-256 this lock pins (`sha256  filename` lines; default:
    /// plugins.lock inside each plugin directory, if present)
    #[arg(long, value_name = "FILE", global = true, env = "HOST_PLUGIN_LOCK")]
    plugin_lock: Option<PathBuf>,

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
    /// SIGINT/SIGTERM). A line on stderr names the backend, the instance and its startup
    /// time before the log starts.
    #[command(after_help = run::AFTER_HELP)]
    Run(Box<run::Args>),

    /// Tell everything about one plugin file: size, sha256, trust checks, ABI and
    /// plugin-api versions, alias, name, config keys, or exactly why it is refused
    ///
    /// Exit status: 0 when the host would load it, 3 when not.
    Inspect(inspect::Args),

    /// Remove what a backend left behind that is older than --older-than (containers,
    /// working directories, processes of a host that crashed)
    ///
    /// Exit status: 0 done, 69 the backend does not support reaping, 64/78 bad usage/config.
    Reap(reap::Args),
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = match Cli::command().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => return usage_error(e, &args),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => return usage_error(e, &args),
    };
    logging::init(cli.verbose, cli.quiet);
    let dirs = loader::plugin_dirs(&cli.plugin_dirs);
    let lock = cli.plugin_lock.as_deref();
    match cli.command {
        Command::ListBackends(a) => list::run(&a, &dirs, &Registry::load_locked(&dirs, lock)),
        Command::Run(a) => run::run(*a, &Registry::load_locked(&dirs, lock), cli.quiet),
        Command::Reap(a) => reap::run(&a, &Registry::load_locked(&dirs, lock)),
        Command::Inspect(a) => match lock.map(host::trust::Lock::load).transpose() {
            Ok(lock) => inspect::run(&a, lock.as_ref()),
            Err(e) => {
                eprintln!("host: {e}");
                ExitCode::from(exit::CONFIG)
            }
        },
    }
}

/// Prints clap's error or help. Help ends with what the loaded backends accept, as the
/// original worker's help did.
fn usage_error(e: clap::Error, args: &[std::ffi::OsString]) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let registry = Registry::load(&loader::plugin_dirs(&prescan_plugin_dirs(args)));
            let _ = e.print();
            print!("{}", list::backends_help(&registry));
            if matches!(e.kind(), ErrorKind::DisplayHelp) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(exit::USAGE)
            }
        }
        ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            let _ = e.print();
            ExitCode::from(exit::USAGE)
        }
    }
}

/// `--plugin-dir` values, found without a full parse (the parse failed or showed help).
fn prescan_plugin_dirs(args: &[std::ffi::OsString]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let Some(s) = a.to_str() else { continue };
        if s == "--" {
            break;
        } else if s == "--plugin-dir" {
            if let Some(d) = it.next() {
                dirs.push(PathBuf::from(d));
            }
        } else if let Some(d) = s.strip_prefix("--plugin-dir=") {
            dirs.push(PathBuf::from(d));
        }
    }
    dirs
}
