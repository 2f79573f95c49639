//! The plugin-server protocol: frames of a `u32` little-endian length, a kind byte and a
//! body, each way over one socketpair. The body is a postcard message, except a run's output
//! from the server, which travels raw when it does not travel in a slot of the shared ring
//! ([`FromServer::Slot`], see [`super::ring`]). Byte fields of messages go as byte strings
//! (`serde_bytes`): serde's default for a `Vec<u8>` is a sequence, encoded and decoded one
//! element at a time, which cost 0.6 ms per 256 KiB chunk of log. Calls carry an id chosen by the host; everything about a
//! call (its output, its progress, its reply) carries that id, so any number of calls are
//! in flight at once.

use plugin_api::{BackendError, ErrorKind, ProgressEntry, ProgressState};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::output::LogChunk;

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
    /// Slots of the shared ring the host is done with (see [`super::ring`]).
    Slots { free: Vec<u32> },
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
        #[serde(with = "serde_bytes")]
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
    /// A chunk of the log of run `id`, in a slot of the shared ring. (A chunk that crosses
    /// the socket is a raw frame: [`Incoming::Output`].)
    Slot { id: u64, slot: u32, len: u32 },
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
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
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

/// A frame's first body byte: a postcard message follows.
const MESSAGE: u8 = 0;
/// A frame's first body byte: a run's output follows raw, as `[id: u64 LE][bytes]` (the
/// bulk of what crosses: no encoding, no copy into a message on either side).
const OUTPUT: u8 = 1;

/// One message frame, encoded.
pub(crate) fn encode<T: Serialize>(message: &T) -> std::io::Result<Vec<u8>> {
    let mut frame = Vec::new();
    encode_into(&mut frame, message)?;
    Ok(frame)
}

/// Appends one message frame to `buf`; on an error `buf` is as it was.
fn encode_into<T: Serialize>(buf: &mut Vec<u8>, message: &T) -> std::io::Result<()> {
    /// `buf` as the `Extend` postcard writes into.
    struct Append<'a>(&'a mut Vec<u8>);
    impl Extend<u8> for Append<'_> {
        fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
            self.0.extend(bytes);
        }
    }
    let start = buf.len();
    buf.extend_from_slice(&[0, 0, 0, 0, MESSAGE]);
    if let Err(e) = postcard::to_extend(message, Append(buf)) {
        buf.truncate(start);
        return Err(std::io::Error::other(format!("cannot encode a frame: {e}")));
    }
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// What the server writes: a message, or a run's output still in the buffer the plugin
/// wrote it in (it crosses the socket straight from there: no copy into a frame).
pub(crate) enum Outgoing {
    Message(FromServer),
    Output { id: u64, chunk: LogChunk },
}

/// Writes the server's frames. Messages collect in a buffer; a run's output goes out in one
/// `writev` with whatever is buffered before it and its own head, straight from the chunk.
pub(crate) struct FrameWriter<W> {
    w: W,
    buf: Vec<u8>,
}

/// Buffered messages beyond which [`FrameWriter::push`] writes them out.
const WRITE_BUFFER: usize = 64 * 1024;

impl<W: tokio::io::AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(w: W) -> Self {
        Self {
            w,
            buf: Vec::with_capacity(WRITE_BUFFER),
        }
    }

    /// Writes `frame`, or buffers it when it is a message (see [`Self::flush`]).
    pub(crate) async fn push(&mut self, frame: &Outgoing) -> std::io::Result<()> {
        match frame {
            Outgoing::Message(message) => {
                encode_into(&mut self.buf, message)?;
                if self.buf.len() >= WRITE_BUFFER {
                    self.flush().await?;
                }
                Ok(())
            }
            Outgoing::Output { id, chunk } => {
                let len = (1 + 8 + chunk.len()) as u32;
                self.buf.extend_from_slice(&len.to_le_bytes());
                self.buf.push(OUTPUT);
                self.buf.extend_from_slice(&id.to_le_bytes());
                self.write_all(chunk).await
            }
        }
    }

    /// Writes what is buffered.
    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        self.write_all(&[]).await
    }

    /// Writes the buffer, then `tail`, in as few calls as the socket allows.
    async fn write_all(&mut self, tail: &[u8]) -> std::io::Result<()> {
        let (mut head_done, mut tail_done) = (0, 0);
        while head_done < self.buf.len() || tail_done < tail.len() {
            let parts = [
                std::io::IoSlice::new(&self.buf[head_done..]),
                std::io::IoSlice::new(&tail[tail_done..]),
            ];
            let mut n = self.w.write_vectored(&parts).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            let from_head = n.min(self.buf.len() - head_done);
            head_done += from_head;
            n -= from_head;
            tail_done += n;
        }
        self.buf.clear();
        Ok(())
    }
}

/// Reads one frame's length and kind; `Ok(None)` at a clean end of the stream.
async fn read_head<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(usize, u8)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "a frame of {len} bytes (1 to {MAX_FRAME})"
        )));
    }
    Ok(Some((len - 1, head[4])))
}

fn decode<T: serde::de::DeserializeOwned>(buf: &[u8]) -> std::io::Result<T> {
    postcard::from_bytes(buf)
        .map_err(|e| std::io::Error::other(format!("cannot decode a frame: {e}")))
}

/// Reads one message frame (the server's side: the host sends no raw output).
pub(crate) async fn read_frame<R: tokio::io::AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<T>> {
    let Some((len, kind)) = read_head(r).await? else {
        return Ok(None);
    };
    if kind != MESSAGE {
        return Err(std::io::Error::other(format!("a frame of kind {kind}")));
    }
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    decode(buf).map(Some)
}

/// A frame from the server, read.
pub(crate) enum Incoming {
    Message(FromServer),
    /// A chunk of the log of run `id` that crossed the socket.
    Output {
        id: u64,
        chunk: Vec<u8>,
    },
}

/// Reads one frame from the server; a run's output lands in a buffer of its own, which
/// `chunk_buffer` gives (empty).
pub(crate) async fn read_from_server<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    chunk_buffer: impl FnOnce() -> Vec<u8>,
) -> std::io::Result<Option<Incoming>> {
    let Some((len, kind)) = read_head(r).await? else {
        return Ok(None);
    };
    match kind {
        MESSAGE => {
            buf.resize(len, 0);
            r.read_exact(buf).await?;
            decode(buf).map(|m| Some(Incoming::Message(m)))
        }
        OUTPUT if len >= 8 => {
            let mut id = [0u8; 8];
            r.read_exact(&mut id).await?;
            // Read into spare capacity: no zeroing of a buffer about to be overwritten.
            let mut chunk = chunk_buffer();
            chunk.clear();
            chunk.reserve_exact(len - 8);
            while chunk.len() < len - 8 {
                let want = len - 8 - chunk.len();
                if (&mut *r).take(want as u64).read_buf(&mut chunk).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            Ok(Some(Incoming::Output {
                id: u64::from_le_bytes(id),
                chunk,
            }))
        }
        other => Err(std::io::Error::other(format!("a frame of kind {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_and_raw_output_cross_in_order_and_garbage_is_an_error() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut a = FrameWriter::new(a);
        a.push(&Outgoing::Message(FromServer::Pong { n: 7 }))
            .await
            .unwrap();
        let chunk: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        a.push(&Outgoing::Output {
            id: 42,
            chunk: LogChunk::from_vec(chunk.clone()),
        })
        .await
        .unwrap();
        let reply = FromServer::Reply {
            id: 42,
            result: Ok(Reply::Bytes(vec![1, 2, 3])),
        };
        a.push(&Outgoing::Message(reply)).await.unwrap();
        a.flush().await.unwrap();
        drop(a);
        let mut buf = Vec::new();
        let got = read_from_server(&mut b, &mut buf, Vec::new).await.unwrap();
        assert!(
            matches!(got, Some(Incoming::Message(FromServer::Pong { n: 7 }))),
            "a pong first"
        );
        match read_from_server(&mut b, &mut buf, Vec::new).await.unwrap() {
            Some(Incoming::Output { id: 42, chunk: c }) => assert!(c == chunk),
            _ => panic!("not the output"),
        }
        match read_from_server(&mut b, &mut buf, Vec::new).await.unwrap() {
            Some(Incoming::Message(FromServer::Reply {
                id: 42,
                result: Ok(Reply::Bytes(v)),
            })) => assert_eq!(v, [1, 2, 3]),
            _ => panic!("not the reply"),
        }
        assert!(read_from_server(&mut b, &mut buf, Vec::new)
            .await
            .unwrap()
            .is_none());

        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, &[5, 0, 0, 0, 9, 1, 2, 3, 4])
            .await
            .unwrap();
        assert!(read_from_server(&mut b, &mut buf, Vec::new).await.is_err());
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, &[0xff, 0xff, 0xff, 0xff, 0])
            .await
            .unwrap();
        assert!(read_frame::<_, ToServer>(&mut b, &mut buf).await.is_err());
    }
}
