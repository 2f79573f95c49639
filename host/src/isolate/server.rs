//! The plugin server: the child process an isolated plugin runs in. It opens the plugin file
//! handed to it (descriptor 3), then serves the host over the socket on descriptor 4 until
//! the host goes away. One event loop (a current-thread runtime) polls every call, so a
//! plugin that blocks it stops the heartbeat too, and the host sees a hang.

use std::collections::HashMap;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plugin_api::{BackendError, ProviderConfig};
use tokio::sync::{mpsc, Semaphore};

use super::ring::ServerRing;
use super::wire::{
    self, Call, FrameWriter, FromServer, Outgoing, Reply, ToServer, WireError, WireProgress,
};
use crate::abi::calls::{InstanceObj, ProviderObj};
use crate::abi::module::Module;
use crate::output::log_channel;
use crate::progress::Progress;

/// The plugin file's descriptor in the server.
pub(crate) const FILE_FD: i32 = 3;
/// The socket to the host.
pub(crate) const SOCKET_FD: i32 = 4;
/// The environment variable with the host's log level (0 off ... 5 trace).
pub(crate) const LOG_LEVEL_ENV: &str = "HOST_PLUGIN_SERVER_LOG_LEVEL";
/// Log frames waiting to be written beyond which a plugin's events are dropped.
const MAX_QUEUED_LOGS: usize = 1024;
/// How long the instances get to stop when the host has gone away.
const ORPHAN_STOP: Duration = Duration::from_secs(30);

/// Runs the server; the process's exit status.
pub(crate) fn serve() -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            {
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr(), "plugin server: no runtime: {e}");
            }
            return 70;
        }
    };
    runtime.block_on(async {
        let path = PathBuf::from(format!("/proc/self/fd/{FILE_FD}"));
        let module = match crate::abi::load::open_root_module(&path, &mut Progress::default()) {
            Ok(m) => m,
            Err(e) => {
                {
                    use std::io::Write as _;
                    let _ = writeln!(std::io::stderr(), "plugin server: {e}");
                }
                return 70;
            }
        };
        // SAFETY: the host hands the server SOCKET_FD; nothing else in it owns the descriptor.
        let std_socket =
            std::os::unix::net::UnixStream::from(unsafe { OwnedFd::from_raw_fd(SOCKET_FD) });
        let socket = match std_socket
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(std_socket))
        {
            Ok(s) => s,
            Err(e) => {
                {
                    use std::io::Write as _;
                    let _ = writeln!(std::io::stderr(), "plugin server: bad socket: {e}");
                }
                return 71;
            }
        };
        run(module, socket).await;
        0
    })
}

/// What the server's calls share.
struct Shared {
    alias: String,
    module: Module,
    out: mpsc::UnboundedSender<Outgoing>,
    providers: Mutex<HashMap<u64, Arc<ProviderObj>>>,
    instances: Mutex<HashMap<u64, Arc<InstanceObj>>>,
    calls: Mutex<HashMap<u64, CallState>>,
    next_object: Mutex<u64>,
    /// The slots shared with the host for output, when it handed them over.
    ring: Option<ServerRing>,
}

struct CallState {
    abort: tokio::task::AbortHandle,
    credits: Option<Arc<Semaphore>>,
    closed: Option<Arc<tokio::sync::Notify>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn send(&self, frame: FromServer) {
        let _ = self.out.send(Outgoing::Message(frame));
    }

    fn object(&self) -> u64 {
        let mut n = lock(&self.next_object);
        *n += 1;
        *n
    }

    fn provider(&self, id: u64) -> Result<Arc<ProviderObj>, BackendError> {
        lock(&self.providers)
            .get(&id)
            .cloned()
            .ok_or_else(|| BackendError::other(format!("no provider {id} in the plugin server")))
    }

    fn instance(&self, id: u64) -> Result<Arc<InstanceObj>, BackendError> {
        lock(&self.instances)
            .get(&id)
            .cloned()
            .ok_or_else(|| BackendError::other(format!("no instance {id} in the plugin server")))
    }
}

async fn run(module: Module, socket: tokio::net::UnixStream) {
    let (mut reader, writer) = socket.into_split();
    let (out, out_rx) = mpsc::unbounded_channel();
    let queued_logs = Arc::new(AtomicUsize::new(0));
    let alias = module.alias();
    let max_level = std::env::var(LOG_LEVEL_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    {
        // The plugin's log events, as frames to the host; dropped while too many wait.
        let out = out.clone();
        let queued = Arc::clone(&queued_logs);
        module.set_forwarding_logger(max_level, move |level, message| {
            if queued.load(Ordering::Relaxed) >= MAX_QUEUED_LOGS {
                return;
            }
            queued.fetch_add(1, Ordering::Relaxed);
            let _ = out.send(Outgoing::Message(FromServer::Log { level, message }));
        });
    }
    let shared = Arc::new(Shared {
        alias,
        module,
        out,
        providers: Mutex::default(),
        instances: Mutex::default(),
        calls: Mutex::default(),
        next_object: Mutex::new(0),
        ring: ServerRing::open(),
    });
    let writing = tokio::spawn(write_frames(writer, out_rx, queued_logs));
    let mut buf = Vec::new();
    while let Ok(Some(frame)) = wire::read_frame::<_, ToServer>(&mut reader, &mut buf).await {
        match frame {
            ToServer::Call { id, call } => start_call(&shared, id, call),
            ToServer::Cancel { id } => {
                if let Some(c) = lock(&shared.calls).remove(&id) {
                    c.abort.abort();
                }
            }
            ToServer::Credit { id, chunks } => {
                if let Some(Some(credits)) = lock(&shared.calls).get(&id).map(|c| c.credits.clone())
                {
                    credits.add_permits(chunks as usize);
                }
            }
            ToServer::OutputClosed { id } => {
                if let Some(Some(closed)) = lock(&shared.calls).get(&id).map(|c| c.closed.clone()) {
                    closed.notify_one();
                }
            }
            ToServer::Ping { n } => shared.send(FromServer::Pong { n }),
            ToServer::Slots { free } => {
                if let Some(ring) = &shared.ring {
                    ring.free(&free);
                }
            }
            ToServer::Release { object } => {
                let provider = lock(&shared.providers).remove(&object);
                let instance = lock(&shared.instances).remove(&object);
                drop((provider, instance));
            }
        }
    }
    // The host is gone (it exited or died): stop what is still running, then exit.
    let calls: Vec<CallState> = lock(&shared.calls).drain().map(|(_, c)| c).collect();
    for c in calls {
        c.abort.abort();
    }
    let instances: Vec<Arc<InstanceObj>> =
        lock(&shared.instances).drain().map(|(_, i)| i).collect();
    for instance in instances {
        let _ = tokio::time::timeout(ORPHAN_STOP, instance.stop(&shared.alias)).await;
    }
    writing.abort();
}

/// Writes frames as they come, flushing when nothing more is waiting.
async fn write_frames(
    writer: tokio::net::unix::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    queued_logs: Arc<AtomicUsize>,
) {
    let mut w = FrameWriter::new(writer);
    while let Some(frame) = rx.recv().await {
        let mut next = Some(frame);
        while let Some(frame) = next.take() {
            if matches!(frame, Outgoing::Message(FromServer::Log { .. })) {
                queued_logs.fetch_sub(1, Ordering::Relaxed);
            }
            if w.push(&frame).await.is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if w.flush().await.is_err() {
            return;
        }
    }
}

fn start_call(shared: &Arc<Shared>, id: u64, call: Call) {
    let credits = matches!(call, Call::Run { .. })
        .then(|| Arc::new(Semaphore::new(wire::OUTPUT_CREDITS as usize)));
    let closed = credits
        .as_ref()
        .map(|_| Arc::new(tokio::sync::Notify::new()));
    let task = {
        let shared = Arc::clone(shared);
        let credits = credits.clone();
        let closed = closed.clone();
        tokio::spawn(async move {
            let result = answer(&shared, id, call, credits, closed).await;
            // Only a call the host still waits for is answered.
            if lock(&shared.calls).remove(&id).is_some() {
                shared.send(FromServer::Reply {
                    id,
                    result: result.map_err(|e| WireError::from(&e)),
                });
            }
        })
    };
    lock(&shared.calls).insert(
        id,
        CallState {
            abort: task.abort_handle(),
            credits,
            closed,
        },
    );
}

async fn answer(
    shared: &Arc<Shared>,
    id: u64,
    call: Call,
    credits: Option<Arc<Semaphore>>,
    closed: Option<Arc<tokio::sync::Notify>>,
) -> Result<Reply, BackendError> {
    let alias = shared.alias.as_str();
    match call {
        Call::NewProvider { config } => {
            let provider = shared
                .module
                .new_provider(&ProviderConfig::from_map(config))?;
            let supports_progress = provider.supports_progress();
            let object = shared.object();
            lock(&shared.providers).insert(object, Arc::new(provider));
            Ok(Reply::Provider {
                object,
                supports_progress,
            })
        }
        Call::Setup { provider } => {
            shared.provider(provider)?.setup(alias).await?;
            Ok(Reply::Unit)
        }
        Call::Reap {
            provider,
            older_than_ms,
            dry_run,
        } => {
            let lines = shared
                .provider(provider)?
                .reap(alias, Duration::from_millis(older_than_ms), dry_run)
                .await?;
            Ok(Reply::Lines(lines))
        }
        Call::Start {
            provider,
            attributes,
            progress,
        } => {
            let progress: Option<crate::abi::calls::ProgressFn> = progress.then(|| {
                let out = shared.out.clone();
                Box::new(move |entry: plugin_api::ProgressEntry| {
                    let _ = out.send(Outgoing::Message(FromServer::Progress {
                        id,
                        entry: WireProgress::from(&entry),
                    }));
                }) as crate::abi::calls::ProgressFn
            });
            let instance = shared
                .provider(provider)?
                .start(alias, &attributes, progress)
                .await?;
            let object = shared.object();
            let reply = Reply::Instance {
                object,
                id: instance.id().to_owned(),
                startup_ns: instance.startup_duration().as_nanos() as u64,
                image_name: instance.image_name().to_owned(),
                warmed: instance.warmed(),
                supports_progress: instance.supports_progress(),
            };
            lock(&shared.instances).insert(object, Arc::new(instance));
            Ok(reply)
        }
        Call::Upload { instance, script } => {
            shared
                .instance(instance)?
                .upload_script(alias, script)
                .await?;
            Ok(Reply::Unit)
        }
        Call::Run { instance } => {
            let instance = shared.instance(instance)?;
            let (sink, mut rx) = log_channel(crate::output::DEFAULT_CAPACITY);
            let credits = credits.unwrap_or_else(|| Arc::new(Semaphore::new(1)));
            let closed = closed.unwrap_or_default();
            let forward = async {
                loop {
                    let chunk = tokio::select! {
                        c = rx.recv() => c,
                        () = closed.notified() => {
                            rx.close();
                            None
                        }
                    };
                    let Some(chunk) = chunk else { break };
                    match credits.acquire().await {
                        Ok(permit) => permit.forget(),
                        Err(_) => break,
                    }
                    let frame = match shared.ring.as_ref().and_then(|r| r.put(&chunk)) {
                        Some(slot) => Outgoing::Message(FromServer::Slot {
                            id,
                            slot,
                            len: chunk.len() as u32,
                        }),
                        None => Outgoing::Output { id, chunk },
                    };
                    let _ = shared.out.send(frame);
                }
                // Refuse what comes after a close; wait for the plugin to drop its sink.
                rx.close();
            };
            let (result, ()) = tokio::join!(instance.run_script(alias, sink), forward);
            let r = result?;
            Ok(Reply::Run {
                exit_code: r.exit_code,
                completed: r.completed,
            })
        }
        Call::Stop { instance } => {
            shared.instance(instance)?.stop(alias).await?;
            Ok(Reply::Unit)
        }
        Call::DownloadTrace { instance } => Ok(Reply::Bytes(
            shared.instance(instance)?.download_trace(alias).await?,
        )),
    }
}
