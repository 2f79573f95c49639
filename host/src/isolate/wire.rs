//! The plugin-server protocol: frames of a `u32` little-endian length and a postcard body,
//! each way over one socketpair. Calls carry an id chosen by the host; everything about a
//! call (its output, its progress, its reply) carries that id, so any number of calls are
//! in flight at once.

use plugin_api::{BackendError, ErrorKind, ProgressEntry, ProgressState};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The largest frame either side accepts (a script is capped at 64 MiB by default).
pub(crate) const MAX_FRAME: usize = 256 << 20;

/// Chunks of output a run may have in flight before the host grants more.
pub(crate) const OUTPUT_CREDITS: u32 = 16;

/// What the host asks of the server.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToServer {
    /// Starts call `id`.
    Call { id: u64, call: Call },
    /// The host no longer waits for call `id`: the server drops its future.
    Cancel { id: u64 },
    /// The host took `chunks` more output chunks of call `id`.
    Credit { id: u64, chunks: u32 },
    /// The host will take no more output of call `id` (its reader went away, a cap).
    OutputClosed { id: u64 },
    /// Liveness check: answered with [`FromServer::Pong`].
    Ping { n: u64 },
    /// A provider or instance the host no longer holds.
    Release { object: u64 },
}

/// One call on the plugin's objects. Objects are numbered by the server.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Call {
    NewProvider {
        config: Vec<(String, String)>,
    },
    Setup {
        provider: u64,
    },
    Reap {
        provider: u64,
        older_than_ms: u64,
        dry_run: bool,
    },
    Start {
        provider: u64,
        attributes: Box<plugin_api::StartAttributes>,
        progress: bool,
    },
    Upload {
        instance: u64,
        script: Vec<u8>,
    },
    Run {
        instance: u64,
    },
    Stop {
        instance: u64,
    },
    DownloadTrace {
        instance: u64,
    },
}

impl Call {
    /// The call's name, as the host's errors give it.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Call::NewProvider { .. } => "new_provider",
            Call::Setup { .. } => "setup",
            Call::Reap { .. } => "reap",
            Call::Start { .. } => "start",
            Call::Upload { .. } => "upload_script",
            Call::Run { .. } => "run_script",
            Call::Stop { .. } => "stop",
            Call::DownloadTrace { .. } => "download_trace",
        }
    }
}

/// What the server tells the host.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromServer {
    /// Call `id` is over.
    Reply {
        id: u64,
        result: Result<Reply, WireError>,
    },
    /// A chunk of the log of run `id`.
    Output { id: u64, chunk: Vec<u8> },
    /// A step of start `id`.
    Progress { id: u64, entry: WireProgress },
    /// A log event of the plugin's (level 1 error ... 5 trace).
    Log { level: u8, message: String },
    /// The answer to [`ToServer::Ping`].
    Pong { n: u64 },
}

/// A call's result.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Provider {
        object: u64,
        supports_progress: bool,
    },
    Unit,
    Lines(Vec<String>),
    Instance {
        object: u64,
        id: String,
        startup_ns: u64,
        image_name: String,
        warmed: bool,
        supports_progress: bool,
    },
    Run {
        exit_code: i32,
        completed: bool,
    },
    Bytes(Vec<u8>),
}

/// A [`BackendError`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireError {
    kind: u32,
    message: String,
}

impl From<&BackendError> for WireError {
    fn from(e: &BackendError) -> Self {
        Self {
            kind: e.kind().code(),
            message: e.message().to_owned(),
        }
    }
}

impl From<WireError> for BackendError {
    fn from(e: WireError) -> Self {
        let kind = [
            ErrorKind::STALE_VM,
            ErrorKind::MISSING_ENDPOINT_CONFIG,
            ErrorKind::INVALID_CONFIG,
            ErrorKind::UNSUPPORTED,
            ErrorKind::CANCELLED,
            ErrorKind::PANIC,
            ErrorKind::OUTPUT_CLOSED,
        ]
        .into_iter()
        .find(|k| k.code() == e.kind)
        .unwrap_or(ErrorKind::OTHER);
        BackendError::new(kind, e.message)
    }
}

/// A [`ProgressEntry`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireProgress {
    message: String,
    state: u8,
    interrupts: bool,
    continues: bool,
    raw: bool,
}

impl From<&ProgressEntry> for WireProgress {
    fn from(e: &ProgressEntry) -> Self {
        Self {
            message: e.message.clone(),
            state: match e.state {
                ProgressState::Neutral => 0,
                ProgressState::Success => 1,
                ProgressState::Failure => 2,
            },
            interrupts: e.interrupts,
            continues: e.continues,
            raw: e.raw,
        }
    }
}

impl From<WireProgress> for ProgressEntry {
    fn from(e: WireProgress) -> Self {
        let mut entry = ProgressEntry::new(
            e.message,
            match e.state {
                1 => ProgressState::Success,
                2 => ProgressState::Failure,
                _ => ProgressState::Neutral,
            },
        );
        entry.interrupts = e.interrupts;
        entry.continues = e.continues;
        entry.raw = e.raw;
        entry
    }
}

/// Writes one frame.
pub(crate) async fn write_frame<W: tokio::io::AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    message: &T,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    let mut body = postcard::to_extend(message, std::mem::take(buf))
        .map_err(|e| std::io::Error::other(format!("cannot encode a frame: {e}")))?;
    let len = (body.len() - 4) as u32;
    body[..4].copy_from_slice(&len.to_le_bytes());
    let written = w.write_all(&body).await;
    *buf = body;
    written
}

/// Reads one frame; `Ok(None)` at a clean end of the stream.
pub(crate) async fn read_frame<R: tokio::io::AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "a frame of {len} bytes (at most {MAX_FRAME})"
        )));
    }
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    postcard::from_bytes(buf)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("cannot decode a frame: {e}")))
}
