//! The host's side of an isolated plugin: one server process per plugin file, started on
//! first use, watched by a heartbeat, restarted (after a backoff) on the next use once it
//! died; and the provider and instance handles whose calls go to it.

use std::collections::HashMap;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plugin_api::{BackendError, ProgressEntry, RunResult, StartAttributes};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::{mpsc, watch};

use super::ring::{self, BufferPool, HostRing};
use super::server::{FILE_FD, LOG_LEVEL_ENV, SOCKET_FD};
use super::wire::{self, Call, FromServer, Incoming, Reply, ToServer};
use crate::abi::calls::ProgressFn;
use crate::output::{Lent, LogSink};

/// The hidden first argument that makes the `host` binary a plugin server.
pub const SERVER_ARG: &str = "__host-plugin-server";

/// How often the host checks that a server answers.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A server silent this long is hung: it is killed.
pub const HANG_AFTER: Duration = Duration::from_secs(5);
/// The first wait before a crashed server is started again; doubled per crash up to
/// [`MAX_BACKOFF`], back to this after a server that lived a minute.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The socket buffer asked for each way.
const SOCKET_BUFFER: libc::c_int = 4 << 20;
/// The host's read buffer on a server's socket (see [`read_frames`]).
const READ_BUFFER: usize = 16 * 1024;
/// Idle output buffers a connection keeps (each the size of a plugin's chunk, often
/// 256 KiB): enough for a steady flow, a bounded cost when idle.
const SPARE_BUFFERS: usize = 8;
/// How long `stop` on an instance of a crashed server waits for the crash's cleanup.
const CLEANUP_WAIT: Duration = Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One isolated plugin file and its server, if one runs.
pub(crate) struct Server {
    alias: String,
    exe: PathBuf,
    file: std::fs::File,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    restart: Mutex<Restart>,
    /// The configs providers were made with, for the backend's `reap` after a crash.
    configs: Mutex<Vec<Vec<(String, String)>>>,
}

struct Restart {
    not_before: Option<Instant>,
    backoff: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("alias", &self.alias)
            .finish()
    }
}

impl Server {
    /// The server of plugin `alias` in `file` (checked, open), run as `exe` [`SERVER_ARG`].
    pub(crate) fn new(alias: String, exe: PathBuf, file: std::fs::File) -> Arc<Self> {
        Arc::new(Self {
            alias,
            exe,
            file,
            conn: tokio::sync::Mutex::new(None),
            restart: Mutex::new(Restart {
                not_before: None,
                backoff: FIRST_BACKOFF,
            }),
            configs: Mutex::new(Vec::new()),
        })
    }

    /// The running server, started (again) if there is none.
    async fn connect(self: &Arc<Self>) -> Result<Arc<Conn>, BackendError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.alive()) {
            return Ok(Arc::clone(c));
        }
        let not_before = lock(&self.restart).not_before;
        if let Some(t) = not_before {
            tokio::time::sleep_until(t.into()).await;
        }
        let conn = Conn::spawn(self).map_err(|e| {
            BackendError::other(format!(
                "cannot start the plugin server of {}: {e}",
                self.alias
            ))
        })?;
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    fn remember(&self, config: &[(String, String)]) {
        let mut configs = lock(&self.configs);
        if !configs.iter().any(|c| c == config) {
            configs.push(config.to_vec());
        }
    }

    /// After `conn` died: its process group killed, the restart delayed, and the
    /// backend's `reap` run in a new server for every config used, so that what the dead
    /// server started (jobs in sessions of their own, containers) is found and stopped.
    async fn after_crash(self: Arc<Self>, conn: Arc<Conn>) {
        // SAFETY: kill(2) on the server's process group (its pid); no memory involved.
        unsafe { libc::kill(-conn.pid, libc::SIGKILL) };
        {
            let mut r = lock(&self.restart);
            let lived = conn.started.elapsed();
            if lived > Duration::from_secs(60) {
                r.backoff = FIRST_BACKOFF;
            }
            r.not_before = Some(Instant::now() + r.backoff);
            r.backoff = (r.backoff * 2).min(MAX_BACKOFF);
        }
        let configs = lock(&self.configs).clone();
        for config in configs {
            let provider = RemoteProvider::new(Arc::clone(&self), config);
            match provider.reap(Duration::ZERO, false).await {
                Ok(lines) => {
                    for line in lines {
                        tracing::info!(target: "backend", backend = %self.alias, "after the crash, reaped: {line}");
                    }
                }
                Err(e) if e.kind() == plugin_api::ErrorKind::UNSUPPORTED => {}
                Err(e) => {
                    tracing::warn!(target: "backend", backend = %self.alias, "after the crash, reap failed: {e}")
                }
            }
        }
        conn.cleaned.send_replace(true);
    }
}

/// One server process and the calls in flight on it.
struct Conn {
    alias: String,
    pid: i32,
    started: Instant,
    out: Arc<Outbox>,
    calls: Mutex<HashMap<u64, mpsc::UnboundedSender<Event>>>,
    next_id: AtomicU64,
    /// What ended the server, once it is dead.
    death: watch::Sender<Option<String>>,
    /// Set once the crash's cleanup ran.
    cleaned: watch::Sender<bool>,
    hung: AtomicBool,
    last_heard: Mutex<Instant>,
    last_stderr: Mutex<String>,
    /// Buffers for runs' output that crosses the socket.
    buffers: Arc<BufferPool>,
    /// The slots shared with the server for runs' output, if the system has memfds.
    ring: Option<Arc<HostRing>>,
}

/// What reaches a call in flight: a frame about it, or a chunk of its output.
enum Event {
    Frame(FromServer),
    Output(Lent),
}

impl Conn {
    fn alive(&self) -> bool {
        self.death.borrow().is_none()
    }

    fn death(&self) -> String {
        self.death
            .borrow()
            .clone()
            .unwrap_or_else(|| "its connection closed".into())
    }

    fn crashed(&self, call: &str) -> BackendError {
        BackendError::other(format!(
            "plugin {} crashed ({}) during {call}",
            self.alias,
            self.death()
        ))
    }

    fn spawn(server: &Arc<Server>) -> std::io::Result<Arc<Conn>> {
        let (ours, theirs) = socketpair()?;
        let (diag_read, diag_write) = crate::fds::pipe()?;
        let ring_fd = ring::memfd();
        let mut cmd = std::process::Command::new(&server.exe);
        cmd.arg(SERVER_ARG)
            .env(
                LOG_LEVEL_ENV,
                crate::abi::logger::host_max_level().to_string(),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(diag_write.try_clone()?))
            .stderr(std::process::Stdio::from(diag_write));
        let mut moves = vec![
            (server.file.as_raw_fd(), FILE_FD),
            (theirs.as_raw_fd(), SOCKET_FD),
        ];
        if let Some(fd) = &ring_fd {
            moves.push((fd.as_raw_fd(), ring::RING_FD));
        }
        // SAFETY: the closure only calls async-signal-safe functions (setpgid, dup2, fcntl).
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(move || {
                // A group of its own: what it starts without a session of its own dies
                // with it after a crash.
                libc::setpgid(0, 0);
                crate::fds::move_fds(&moves)
            });
        }
        let mut child = tokio::process::Command::from(cmd).spawn()?;
        drop(theirs);
        let pid = child.id().map(|p| p as i32).unwrap_or(-1);
        ours.set_nonblocking(true)?;
        let socket = tokio::net::UnixStream::from_std(ours)?;
        let (reader, writer) = socket.into_split();
        let out = Arc::new(Outbox {
            socket: writer,
            state: Mutex::new(OutState::default()),
            wake: tokio::sync::Notify::new(),
        });
        let ring = ring_fd.and_then(|fd| {
            let out = Arc::clone(&out);
            HostRing::new(&fd, move |free| out.send(&ToServer::Slots { free })).ok()
        });
        let conn = Arc::new(Conn {
            alias: server.alias.clone(),
            pid,
            started: Instant::now(),
            out,
            calls: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            death: watch::channel(None).0,
            cleaned: watch::channel(false).0,
            hung: AtomicBool::new(false),
            last_heard: Mutex::new(Instant::now()),
            buffers: BufferPool::new(SPARE_BUFFERS),
            ring,
            last_stderr: Mutex::new(String::new()),
        });
        tracing::debug!(backend = %server.alias, pid, "plugin server started");
        tokio::spawn(Arc::clone(&conn.out).drain());
        tokio::spawn(heartbeat(Arc::clone(&conn)));
        let diag = tokio::net::unix::pipe::Receiver::from_owned_fd(diag_read)?;
        let diag_task = tokio::spawn(diagnostics(Arc::clone(&conn), diag));
        let server = Arc::clone(server);
        let watched = Arc::clone(&conn);
        tokio::spawn(async move {
            read_frames(&watched, reader).await;
            // The socket closed: the server is dead or dying. What ended it:
            let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            let status = match status {
                Ok(s) => s.ok(),
                Err(_) => {
                    let _ = child.start_kill();
                    child.wait().await.ok()
                }
            };
            let _ = tokio::time::timeout(Duration::from_millis(500), diag_task).await;
            let what = if watched.hung.load(Ordering::SeqCst) {
                format!("hung: no answer for {}s, killed", HANG_AFTER.as_secs())
            } else {
                let base = match status.map(|s| (s.signal(), s.code())) {
                    Some((Some(sig), _)) => plugin_api::sdk::process::signal_name(sig).to_owned(),
                    Some((None, Some(code))) => format!("exit status {code}"),
                    _ => "ended".to_owned(),
                };
                let last = lock(&watched.last_stderr).clone();
                if last.is_empty() {
                    base
                } else {
                    format!("{base}: {last}")
                }
            };
            tracing::warn!(target: "backend", backend = %watched.alias, pid = watched.pid, "plugin server died ({what})");
            watched.death.send_replace(Some(what));
            // Every call in flight learns it from its closed channel.
            lock(&watched.calls).clear();
            server.after_crash(watched).await;
        });
        Ok(conn)
    }

    /// Starts `call`; its frames arrive on the returned handle.
    fn begin(self: &Arc<Self>, call: Call) -> Pending {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let name = call.name();
        let (tx, rx) = mpsc::unbounded_channel();
        if self.alive() {
            lock(&self.calls).insert(id, tx);
            self.out.send(&ToServer::Call { id, call });
        }
        Pending {
            conn: Arc::clone(self),
            id,
            name,
            rx,
            done: false,
        }
    }

    /// Runs `call` to its reply (for calls without output or progress).
    async fn call(self: &Arc<Self>, call: Call) -> Result<Reply, BackendError> {
        let mut pending = self.begin(call);
        loop {
            if let Event::Frame(FromServer::Reply { result, .. }) = pending.next().await? {
                pending.done = true;
                return result.map_err(BackendError::from);
            }
        }
    }

    fn release(&self, object: u64) {
        if self.alive() {
            self.out.send(&ToServer::Release { object });
        }
    }
}

/// A call in flight; dropping it before its reply cancels it in the server.
struct Pending {
    conn: Arc<Conn>,
    id: u64,
    name: &'static str,
    rx: mpsc::UnboundedReceiver<Event>,
    done: bool,
}

impl Pending {
    async fn next(&mut self) -> Result<Event, BackendError> {
        match self.rx.recv().await {
            Some(frame) => Ok(frame),
            None => {
                self.done = true;
                // The channel closes when the server died: wait for what ended it.
                let mut death = self.conn.death.subscribe();
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), death.wait_for(|d| d.is_some()))
                        .await;
                Err(self.conn.crashed(self.name))
            }
        }
    }

    fn send(&self, frame: ToServer) {
        self.conn.out.send(&frame);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done && lock(&self.conn.calls).remove(&self.id).is_some() {
            self.send(ToServer::Cancel { id: self.id });
        }
    }
}

/// Frames to the server. The caller writes its frame itself when nothing is waiting (no hop
/// to another task on the way out: a call's latency is one round trip more than the raw
/// socket's, not two thread wake-ups more); what the socket does not take at once is queued,
/// in order, for [`Outbox::drain`].
struct Outbox {
    socket: tokio::net::unix::OwnedWriteHalf,
    state: Mutex<OutState>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct OutState {
    queue: std::collections::VecDeque<Vec<u8>>,
    /// How much of the queue's first frame is written.
    written: usize,
    closed: bool,
}

impl Outbox {
    fn send(&self, frame: &ToServer) {
        let Ok(bytes) = wire::encode(frame) else {
            return;
        };
        let mut st = lock(&self.state);
        if st.closed {
            return;
        }
        if st.queue.is_empty() {
            let mut off = 0;
            while off < bytes.len() {
                match self.socket.try_write(&bytes[off..]) {
                    Ok(n) => off += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        st.closed = true;
                        return;
                    }
                }
            }
            if off == bytes.len() {
                return;
            }
            st.written = off;
        }
        st.queue.push_back(bytes);
        drop(st);
        self.wake.notify_one();
    }

    /// Writes what [`Self::send`] queued, as the socket takes it.
    async fn drain(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            loop {
                if lock(&self.state).queue.is_empty() {
                    break;
                }
                if self.socket.writable().await.is_err() {
                    lock(&self.state).closed = true;
                    return;
                }
                let mut st = lock(&self.state);
                let OutState {
                    queue,
                    written,
                    closed,
                } = &mut *st;
                while let Some(front) = queue.front() {
                    match self.socket.try_write(&front[*written..]) {
                        Ok(n) => {
                            *written += n;
                            if *written == front.len() {
                                queue.pop_front();
                                *written = 0;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            *closed = true;
                            return;
                        }
                    }
                }
            }
        }
    }
}

async fn read_frames(conn: &Arc<Conn>, reader: tokio::net::unix::OwnedReadHalf) {
    // Heads and small messages come from the buffer; most of a chunk of output is read
    // past it, straight into the chunk's own buffer.
    let mut reader = tokio::io::BufReader::with_capacity(READ_BUFFER, reader);
    let mut buf = Vec::new();
    loop {
        let frame =
            match wire::read_from_server(&mut reader, &mut buf, || conn.buffers.take()).await {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(e) => {
                    if conn.alive() {
                        tracing::debug!(backend = %conn.alias, "plugin server's socket: {e}");
                    }
                    return;
                }
            };
        *lock(&conn.last_heard) = Instant::now();
        // Which call the frame is for, and whether it is the call's last.
        let (id, event, last) = match frame {
            Incoming::Output { id, chunk } => (id, Event::Output(conn.buffers.lend(chunk)), false),
            Incoming::Message(FromServer::Slot { id, slot, len }) => {
                let lent = match &conn.ring {
                    Some(ring) => ring.lend(slot, len),
                    None => Err(std::io::Error::other("output in a slot, but no slots")),
                };
                match lent {
                    Ok(lent) => (id, Event::Output(lent), false),
                    Err(e) => {
                        // The server broke the protocol: its connection ends (see `spawn`).
                        tracing::warn!(target: "backend", backend = %conn.alias, "plugin server sent bad output: {e}");
                        return;
                    }
                }
            }
            Incoming::Message(FromServer::Log { level, message }) => {
                crate::abi::logger::emit(&conn.alias, level, &message);
                continue;
            }
            Incoming::Message(FromServer::Pong { .. }) => continue,
            Incoming::Message(m @ FromServer::Reply { id, .. }) => (id, Event::Frame(m), true),
            Incoming::Message(m @ FromServer::Progress { id, .. }) => (id, Event::Frame(m), false),
        };
        let mut calls = lock(&conn.calls);
        let tx = if last {
            calls.remove(&id)
        } else {
            calls.get(&id).cloned()
        };
        drop(calls);
        if let Some(tx) = tx {
            let _ = tx.send(event);
        }
    }
}

/// What the server writes on stdout/stderr (an abort message, ld.so's complaint): each line
/// a warning, the last kept for the crash message.
async fn diagnostics(conn: Arc<Conn>, pipe: tokio::net::unix::pipe::Receiver) {
    let mut lines = tokio::io::BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = crate::text::escape_controls(line.trim()).into_owned();
        if line.is_empty() {
            continue;
        }
        tracing::warn!(target: "backend", backend = %conn.alias, "plugin server: {line}");
        *lock(&conn.last_stderr) = line.chars().take(300).collect();
    }
}

/// Pings the server; one silent for [`HANG_AFTER`] is killed as hung.
async fn heartbeat(conn: Arc<Conn>) {
    let mut n = 0;
    while conn.alive() {
        tokio::time::sleep(HEARTBEAT).await;
        if !conn.alive() {
            break;
        }
        if lock(&conn.last_heard).elapsed() > HANG_AFTER {
            conn.hung.store(true, Ordering::SeqCst);
            // SAFETY: kill(2) on the server's process group; no memory involved.
            unsafe { libc::kill(-conn.pid, libc::SIGKILL) };
            break;
        }
        n += 1;
        conn.out.send(&ToServer::Ping { n });
    }
}

fn socketpair() -> std::io::Result<(std::os::unix::net::UnixStream, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Room for a few chunks of log each way (best effort: the kernel caps it at wmem_max
    // unless we may force it): fewer wake-ups per chunk.
    for fd in fds {
        for (opt, force) in [
            (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE),
            (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE),
        ] {
            let size: libc::c_int = SOCKET_BUFFER;
            let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let p = (&size as *const libc::c_int).cast();
            // SAFETY: setsockopt with a valid int option value of the size given.
            unsafe {
                if libc::setsockopt(fd, libc::SOL_SOCKET, force, p, len) != 0 {
                    libc::setsockopt(fd, libc::SOL_SOCKET, opt, p, len);
                }
            }
        }
    }
    // SAFETY: two fresh descriptors that nothing else owns.
    unsafe {
        Ok((
            std::os::unix::net::UnixStream::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        ))
    }
}

/// A provider whose plugin runs in a server. Made without a round trip; the server makes
/// the plugin's provider on first use (and again after a restart).
pub(crate) struct RemoteProvider {
    server: Arc<Server>,
    config: Vec<(String, String)>,
    bound: tokio::sync::Mutex<Option<(Arc<Conn>, u64)>>,
    supports_progress: AtomicBool,
}

impl RemoteProvider {
    pub(crate) fn new(server: Arc<Server>, config: Vec<(String, String)>) -> Self {
        Self {
            server,
            config,
            bound: tokio::sync::Mutex::new(None),
            supports_progress: AtomicBool::new(false),
        }
    }

    async fn bound(&self) -> Result<(Arc<Conn>, u64), BackendError> {
        let mut bound = self.bound.lock().await;
        if let Some((conn, object)) = bound.as_ref().filter(|(c, _)| c.alive()) {
            return Ok((Arc::clone(conn), *object));
        }
        let conn = self.server.connect().await?;
        let reply = conn
            .call(Call::NewProvider {
                config: self.config.clone(),
            })
            .await?;
        let Reply::Provider {
            object,
            supports_progress,
        } = reply
        else {
            return Err(unexpected("new_provider"));
        };
        self.supports_progress
            .store(supports_progress, Ordering::Relaxed);
        self.server.remember(&self.config);
        *bound = Some((Arc::clone(&conn), object));
        Ok((conn, object))
    }

    /// Makes the plugin's provider now, so that a config mistake shows up at once.
    pub(crate) async fn bind(&self) -> Result<(), BackendError> {
        self.bound().await.map(drop)
    }

    pub(crate) async fn setup(&self) -> Result<(), BackendError> {
        let (conn, provider) = self.bound().await?;
        conn.call(Call::Setup { provider }).await.map(drop)
    }

    pub(crate) async fn reap(
        &self,
        older_than: Duration,
        dry_run: bool,
    ) -> Result<Vec<String>, BackendError> {
        let (conn, provider) = self.bound().await?;
        let older_than_ms = older_than.as_millis().min(u64::MAX as u128) as u64;
        match conn
            .call(Call::Reap {
                provider,
                older_than_ms,
                dry_run,
            })
            .await?
        {
            Reply::Lines(lines) => Ok(lines),
            _ => Err(unexpected("reap")),
        }
    }

    pub(crate) fn supports_progress(&self) -> bool {
        self.supports_progress.load(Ordering::Relaxed)
    }

    pub(crate) async fn start(
        &self,
        attributes: &StartAttributes,
        progress: Option<ProgressFn>,
    ) -> Result<RemoteInstance, BackendError> {
        let (conn, provider) = self.bound().await?;
        let mut pending = conn.begin(Call::Start {
            provider,
            attributes: Box::new(attributes.clone()),
            progress: progress.is_some(),
        });
        loop {
            match pending.next().await? {
                Event::Frame(FromServer::Progress { entry, .. }) => {
                    if let Some(f) = &progress {
                        f(ProgressEntry::from(entry));
                    }
                }
                Event::Frame(FromServer::Reply { result, .. }) => {
                    pending.done = true;
                    let Reply::Instance {
                        object,
                        id,
                        startup_ns,
                        image_name,
                        warmed,
                        supports_progress,
                    } = result.map_err(BackendError::from)?
                    else {
                        return Err(unexpected("start"));
                    };
                    return Ok(RemoteInstance {
                        conn: Arc::clone(&conn),
                        object,
                        id,
                        startup: Duration::from_nanos(startup_ns),
                        image_name,
                        warmed,
                        supports_progress,
                    });
                }
                _ => {}
            }
        }
    }
}

impl Drop for RemoteProvider {
    fn drop(&mut self) {
        if let Some((conn, object)) = self.bound.get_mut().take() {
            conn.release(object);
        }
    }
}

fn unexpected(call: &str) -> BackendError {
    BackendError::other(format!(
        "the plugin server answered {call} with something else"
    ))
}

/// An instance whose plugin runs in a server.
pub(crate) struct RemoteInstance {
    conn: Arc<Conn>,
    object: u64,
    id: String,
    startup: Duration,
    image_name: String,
    warmed: bool,
    supports_progress: bool,
}

impl RemoteInstance {
    async fn unit(&self, call: Call) -> Result<(), BackendError> {
        self.conn.call(call).await.map(drop)
    }

    pub(crate) async fn upload_script(&self, script: Vec<u8>) -> Result<(), BackendError> {
        self.unit(Call::Upload {
            instance: self.object,
            script,
        })
        .await
    }

    pub(crate) async fn run_script(&self, mut sink: LogSink) -> Result<RunResult, BackendError> {
        let mut pending = self.conn.begin(Call::Run {
            instance: self.object,
        });
        let mut open = true;
        let mut taken = 0;
        loop {
            match pending.next().await? {
                Event::Output(chunk) => {
                    if !open {
                        continue;
                    }
                    if sink.write_lent(chunk).await.is_ok() {
                        // Credits go back in batches: one frame (and one wake-up of the
                        // server) per half window of chunks, not per chunk.
                        taken += 1;
                        if taken >= wire::OUTPUT_CREDITS / 2 {
                            pending.send(ToServer::Credit {
                                id: pending.id,
                                chunks: taken,
                            });
                            taken = 0;
                        }
                    } else {
                        open = false;
                        pending.send(ToServer::OutputClosed { id: pending.id });
                    }
                }
                Event::Frame(FromServer::Reply { result, .. }) => {
                    pending.done = true;
                    if let Some(ring) = &self.conn.ring {
                        // Slots the log's reader is done with go back now, not with a
                        // later run's.
                        ring.flush();
                    }
                    return match result.map_err(BackendError::from)? {
                        Reply::Run {
                            exit_code,
                            completed,
                        } => Ok(RunResult {
                            exit_code,
                            completed,
                        }),
                        _ => Err(unexpected("run_script")),
                    };
                }
                _ => {}
            }
        }
    }

    /// Stops the instance. On a server that died, waits for the crash's cleanup (the
    /// backend's `reap` in a new server) instead: that is what stops it.
    pub(crate) async fn stop(&self) -> Result<(), BackendError> {
        if self.conn.alive() {
            match self
                .unit(Call::Stop {
                    instance: self.object,
                })
                .await
            {
                Err(_) if !self.conn.alive() => {}
                other => return other,
            }
        }
        let mut cleaned = self.conn.cleaned.subscribe();
        if tokio::time::timeout(CLEANUP_WAIT, cleaned.wait_for(|c| *c))
            .await
            .is_err()
        {
            return Err(BackendError::other(format!(
                "plugin {} crashed ({}); its cleanup did not finish within {}s",
                self.conn.alias,
                self.conn.death(),
                CLEANUP_WAIT.as_secs()
            )));
        }
        Ok(())
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn startup_duration(&self) -> Duration {
        self.startup
    }

    pub(crate) fn image_name(&self) -> &str {
        &self.image_name
    }

    pub(crate) fn warmed(&self) -> bool {
        self.warmed
    }

    pub(crate) fn supports_progress(&self) -> bool {
        self.supports_progress
    }

    pub(crate) async fn download_trace(&self) -> Result<Vec<u8>, BackendError> {
        match self
            .conn
            .call(Call::DownloadTrace {
                instance: self.object,
            })
            .await?
        {
            Reply::Bytes(b) => Ok(b),
            _ => Err(unexpected("download_trace")),
        }
    }
}

impl Drop for RemoteInstance {
    fn drop(&mut self) {
        self.conn.release(self.object);
    }
}
