//! Every exit status of `host`, in one table, and the one error type that carries a status:
//! `--help` prints [`TABLE`], the README's table is held to it by a test, and `main` is a
//! single match over [`CliError`].

use std::fmt;

/// Some plugin files were rejected (`list-backends`); the ones that loaded were listed.
pub const SOME_REJECTED: u8 = 3;
/// The file would not load (`inspect`).
pub const NOT_LOADABLE: u8 = 4;
/// Bad usage: an unknown backend or flag, a malformed value (EX_USAGE).
pub const USAGE: u8 = 64;
/// The input is not what it must be: a job that is not a payload (EX_DATAERR).
pub const DATA_ERR: u8 = 65;
/// The script cannot be read, or is larger than the limit (EX_NOINPUT).
pub const NO_INPUT: u8 = 66;
/// The backend does not support the operation (EX_UNAVAILABLE).
pub const UNSUPPORTED: u8 = 69;
/// An output file cannot be created (EX_CANTCREAT).
pub const CANT_CREATE: u8 = 73;
/// The log's destination or an output file failed (EX_IOERR).
pub const IO: u8 = 74;
/// The job did not complete: infrastructure (EX_TEMPFAIL).
pub const TEMPFAIL: u8 = 75;
/// Bad backend config (EX_CONFIG).
pub const CONFIG: u8 = 78;
/// A hard timeout, log silence or log cap, as `timeout(1)`.
pub const TIMED_OUT: u8 = 124;
/// The script's exit code was outside 0..=255.
pub const OUT_OF_RANGE: u8 = 255;

/// `(status, meaning)`, in the order `--help` and the README show them.
pub const TABLE: &[(&str, &str)] = &[
    ("0", "run: the job passed; worker: stopped after a drain or shutdown; other commands: success"),
    ("1", "run: the job failed (the script exited 1); reap, list-backends --write-lock: the operation failed"),
    ("2-255", "run: the script's own exit code when the run completed (the job errored)"),
    ("3", "list-backends: some plugin files were rejected (the ones that loaded are listed)"),
    ("4", "inspect: the file would not load"),
    ("64", "bad usage: unknown backend or flag, malformed value or duration"),
    ("65", "enqueue: the job is not a JSON payload with a job id, or a field of it is invalid"),
    ("66", "run: the script cannot be read, or is larger than --max-script-bytes"),
    ("69", "reap: the backend does not support reaping"),
    ("73", "run: the --json-summary file cannot be created (nothing was run)"),
    ("74", "run: the log's destination failed (its reader went away, a write error, standard output closed) or the summary could not be written; worker, enqueue: the queue or the HTTP address cannot be used"),
    ("75", "run: not completed: setup, start, upload or the run broke, or start/upload timed out (infrastructure; a worker would requeue the job)"),
    ("78", "bad backend config: config file, invalid or missing key, at any stage"),
    ("124", "run: hard timeout, log silence timeout or log size limit reached"),
    ("129", "run: cancelled by SIGHUP"),
    ("130", "run: cancelled by SIGINT"),
    ("131", "run: cancelled by SIGQUIT"),
    ("143", "run: cancelled by SIGTERM"),
    ("255", "run: the script's exit code was outside 0..=255 (errored; the real code is in the summary and on stderr)"),
];

/// The table as `--help` shows it.
pub fn help_table() -> String {
    let mut out = String::from("Exit status:\n");
    for (code, meaning) in TABLE {
        out.push_str(&format!("    {code:<6} {meaning}\n"));
    }
    out
}

/// Why `host` stops with a status other than a job's own. The message is printed after
/// `host: ` on stderr (none for [`CliError::Quiet`]).
#[derive(Debug)]
pub enum CliError {
    /// Bad usage (64).
    Usage(String),
    /// Bad input data (65).
    DataErr(String),
    /// The input cannot be read (66).
    NoInput(String),
    /// Bad config (78).
    Config(String),
    /// An output file cannot be created (73).
    CantCreate(String),
    /// An output failed (74).
    Io(String),
    /// The operation is not supported (69).
    Unsupported(String),
    /// Infrastructure (75).
    TempFail(String),
    /// Another failure (1).
    Failed(String),
    /// Stop with this status and say nothing (e.g. stdout's reader went away).
    Quiet(u8),
}

impl CliError {
    /// The exit status, from the table above.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => USAGE,
            Self::DataErr(_) => DATA_ERR,
            Self::NoInput(_) => NO_INPUT,
            Self::Config(_) => CONFIG,
            Self::CantCreate(_) => CANT_CREATE,
            Self::Io(_) => IO,
            Self::Unsupported(_) => UNSUPPORTED,
            Self::TempFail(_) => TEMPFAIL,
            Self::Failed(_) => 1,
            Self::Quiet(code) => *code,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(m)
            | Self::DataErr(m)
            | Self::NoInput(m)
            | Self::Config(m)
            | Self::CantCreate(m)
            | Self::Io(m)
            | Self::Unsupported(m)
            | Self::TempFail(m)
            | Self::Failed(m) => f.write_str(m),
            Self::Quiet(_) => Ok(()),
        }
    }
}

/// Writes `text` to stdout. A reader that went away ends the command quietly (status 0, as
/// ripgrep does); another write error is [`CliError::Io`].
pub fn print_out(text: &str) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CliError::Quiet(0)),
        Err(e) => Err(CliError::Io(format!(
            "cannot write to standard output: {e}"
        ))),
    }
}

/// Writes one line to stderr, and never panics nor blocks for long: a stderr whose reader
/// went away (a log shipper that restarted, `2>&1 | head -1`) or that fails loses the line,
/// and one that stays full (a pipe nobody reads) loses it after [`STDERR_PATIENCE`].
/// `eprintln!` panics on the first and blocks for ever on the second, which in the signal
/// task of a worker left every later signal unanswered.
pub fn say_line(args: std::fmt::Arguments<'_>) {
    let line = format!("{args}\n");
    let _ = StderrNoWait.write_bounded(line.as_bytes());
}

/// How long a line waits for a full stderr before it is dropped.
pub const STDERR_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);

/// Stderr, written with a wait for room that is bounded ([`STDERR_PATIENCE`] per write) and
/// without Rust's stderr lock (which a writer blocked on a full pipe would hold): the
/// writer of every line of the `host` binary, the log's included. Lines are written in
/// pieces of at most `PIPE_BUF` bytes, each after `poll` said there is room, so a write
/// never blocks; a pipe's writes of that size are never interleaved with another's.
#[derive(Clone, Copy, Debug, Default)]
pub struct StderrNoWait;

impl StderrNoWait {
    /// Writes all of `bytes`, or fails once stderr has had no room for [`STDERR_PATIENCE`].
    pub fn write_bounded(&self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let mut fd = libc::pollfd {
                fd: 2,
                events: libc::POLLOUT,
                revents: 0,
            };
            let patience = STDERR_PATIENCE.as_millis() as libc::c_int;
            // SAFETY: poll on one pollfd that lives across the call.
            let ready = unsafe { libc::poll(&mut fd, 1, patience) };
            if ready < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if ready == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "stderr stayed full",
                ));
            }
            let piece = &bytes[..bytes.len().min(libc::PIPE_BUF)];
            // SAFETY: write from a live slice of `piece.len()` bytes.
            let n = unsafe { libc::write(2, piece.as_ptr().cast(), piece.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) {
                    continue;
                }
                return Err(e);
            }
            bytes = &bytes[n as usize..];
        }
        Ok(())
    }
}

impl std::io::Write for StderrNoWait {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_bounded(buf).map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `eprintln!` that cannot panic: see [`say_line`].
macro_rules! say {
    ($($arg:tt)*) => { $crate::exit::say_line(format_args!($($arg)*)) };
}
pub(crate) use say;
