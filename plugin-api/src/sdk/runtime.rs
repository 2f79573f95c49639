//! The plugin's own tokio runtime, and the guard every future and call goes through on its
//! way to the host: enter the runtime, catch panics, never let one cross the boundary.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use abi_stable::std_types::{RErr, RResult};
use async_ffi::FutureExt as _;
use tokio::runtime::{Handle, Runtime};

use crate::error::{BackendError, ErrorKind};
use crate::ffi::FfiResultFuture;

static ALIAS: OnceLock<&'static str> = OnceLock::new();
static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// Worker threads of a plugin's runtime: they drive its timers and IO; the futures
/// themselves are polled by the host.
const RUNTIME_THREADS: usize = 2;

pub(crate) fn set_alias(alias: &'static str) {
    let _ = ALIAS.set(alias);
}

pub(crate) fn alias() -> &'static str {
    ALIAS.get().copied().unwrap_or("plugin")
}

fn runtime() -> Result<&'static Runtime, BackendError> {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(RUNTIME_THREADS)
                .thread_name(format!("{}-rt", alias()))
                .enable_all()
                .build()
                .map_err(|e| format!("{} plugin could not start its runtime: {e}", alias()))
        })
        .as_ref()
        .map_err(|e| BackendError::other(e.clone()))
}

/// The plugin runtime's handle: for code that must spawn or enter it explicitly.
pub fn runtime_handle() -> Result<Handle, BackendError> {
    runtime().map(|rt| rt.handle().clone())
}

/// Runs `future` as a task on the plugin's runtime and waits for it. Dropping the returned
/// future aborts the task.
pub async fn spawn<F, T>(future: F) -> Result<T, BackendError>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handle = runtime()?.spawn(future);
    let mut guard = AbortOnDrop(Some(handle));
    let result = match guard.0.as_mut() {
        Some(h) => h.await,
        None => return Err(BackendError::other("task handle vanished")),
    };
    guard.0 = None;
    result.map_err(|e| join_error("a spawned task", e))
}

/// Runs blocking or CPU-heavy `f` on the plugin runtime's blocking pool, off the host's
/// threads. Dropping the returned future does not stop `f`, but its result is discarded.
pub async fn spawn_blocking<F, T>(f: F) -> Result<T, BackendError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    runtime()?
        .spawn_blocking(f)
        .await
        .map_err(|e| join_error("a blocking task", e))
}

fn join_error(what: &str, e: tokio::task::JoinError) -> BackendError {
    if e.is_panic() {
        panic_error(what, e.into_panic())
    } else {
        BackendError::cancelled(what)
    }
}

struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

thread_local! {
    static LAST_PANIC_LOCATION: std::cell::RefCell<Option<String>> =
        const { std::cell::RefCell::new(None) };
}

pub(crate) fn record_panic_location(location: String) {
    let _ = LAST_PANIC_LOCATION.try_with(|l| *l.borrow_mut() = Some(location));
}

/// The error a caught panic becomes: names the plugin, the call, the message and where.
pub(crate) fn panic_error(what: &str, payload: Box<dyn Any + Send>) -> BackendError {
    let msg = match payload.downcast_ref::<&'static str>() {
        Some(s) => (*s).to_owned(),
        None => match payload.downcast_ref::<String>() {
            Some(s) => s.clone(),
            None => "(a non-string panic payload)".to_owned(),
        },
    };
    drop_quietly(payload);
    let location = LAST_PANIC_LOCATION
        .try_with(|l| l.borrow_mut().take())
        .ok()
        .flatten();
    let at = location.map(|l| format!(" at {l}")).unwrap_or_default();
    BackendError::new(
        ErrorKind::PANIC,
        format!("{} plugin panicked in {what}: {msg}{at}", alias()),
    )
}

/// Drops `value`, swallowing a panic from its destructor (it must not cross the boundary).
pub(crate) fn drop_quietly<T>(value: T) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
        // Dropping the payload could panic again: leak it instead.
        std::mem::forget(payload);
    }
}

/// Runs a synchronous entry point inside the runtime, turning a panic into an error.
pub(crate) fn guard_sync<T>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, BackendError>,
) -> Result<T, BackendError> {
    let _enter = runtime().ok().map(|rt| rt.enter());
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(panic_error(what, payload)),
    }
}

/// Wraps a plugin future for the host: each poll enters the plugin runtime and is guarded
/// against panics, and so is dropping it (which is how the host cancels).
pub(crate) fn guard_future<T, F>(what: &'static str, future: F) -> FfiResultFuture<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T, BackendError>> + Send + 'static,
{
    // One allocation per call: async-ffi boxes `Guarded`, which holds the future inline.
    Guarded {
        what,
        future: Some(future),
    }
    .into_ffi()
}

struct Guarded<F> {
    what: &'static str,
    future: Option<F>,
}

impl<T, F> Future for Guarded<F>
where
    F: Future<Output = Result<T, BackendError>>,
{
    type Output = RResult<T, BackendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `future` is never moved out while pinned: it is polled in place and
        // dropped in place (by assigning `None`), which pinning allows.
        let this = unsafe { self.get_unchecked_mut() };
        let what = this.what;
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => {
                drop_in_place_quietly(&mut this.future);
                return Poll::Ready(RErr(e));
            }
        };
        let Some(future) = this.future.as_mut() else {
            return Poll::Ready(RErr(BackendError::other(format!(
                "{what} was polled after it finished"
            ))));
        };
        // SAFETY: see above; `future` stays where it is until it is dropped.
        let future = unsafe { Pin::new_unchecked(future) };
        let _enter = rt.enter();
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => {
                drop_in_place_quietly(&mut this.future);
                Poll::Ready(result.into())
            }
            Err(payload) => {
                let err = panic_error(what, payload);
                drop_in_place_quietly(&mut this.future);
                Poll::Ready(RErr(err))
            }
        }
    }
}

/// Drops the future in place (it may be pinned), swallowing a panic from its destructor.
fn drop_in_place_quietly<F>(slot: &mut Option<F>) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| *slot = None)) {
        std::mem::forget(payload);
    }
}

impl<F> Drop for Guarded<F> {
    fn drop(&mut self) {
        if self.future.is_some() {
            let _enter = runtime().ok().map(|rt| rt.enter());
            drop_in_place_quietly(&mut self.future);
        }
    }
}

/// Runs a cheap synchronous entry point (an accessor) with panics caught; no runtime is
/// entered, since such a call starts nothing.
pub(crate) fn guard_plain<T>(what: &'static str, f: impl FnOnce() -> T) -> Result<T, BackendError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panic_error(what, payload))
}
