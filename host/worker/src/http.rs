//! The worker's HTTP endpoints, as the original's: `GET /healthz` (200 while the process
//! lives), `GET /ready` (200 when taking jobs, 503 when paused, draining or the queue cannot
//! be used), `GET /worker` (JSON: pool, running jobs), `POST /pool/increment` and
//! `/pool/decrement`, and `GET /metrics` (Prometheus text format). Bind it to loopback unless a proxy guards it:
//! the pool endpoints change what the worker does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::{Control, MAX_POOL_SIZE};

/// How long a client may take to send a request's head (and how long an idle keep-alive
/// connection is kept).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection lives, whatever it does.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Connections served at once; more are closed as they arrive.
pub const MAX_CONNECTIONS: usize = 64;

/// How the endpoints are guarded.
#[derive(Clone, Debug, Default)]
pub struct HttpSettings {
    /// Basic auth as the original's `HTTP_API_AUTH`: `USER:PASS`. Everything but `/healthz`,
    /// `/ready` and `/metrics` needs it.
    pub auth: Option<String>,
}

/// Why the endpoints cannot be served as asked.
pub fn check_bind(addr: SocketAddr, settings: &HttpSettings, forced: bool) -> Result<(), String> {
    if settings.auth.is_none() && !addr.ip().is_loopback() && !forced {
        return Err(format!(
            "--http {addr}: not a loopback address, and no --http-auth: anyone who reaches it \
             could resize the pool or stop the worker. Set --http-auth USER:PASS (or \
             HOST_HTTP_AUTH), bind 127.0.0.1, or pass --http-allow-unauthenticated if a proxy \
             guards it"
        ));
    }
    Ok(())
}

#[derive(Clone)]
struct Api {
    control: Control,
    /// SHA-256 of `USER:PASS`, compared in constant time.
    auth: Option<[u8; 32]>,
    /// The `Host` values a request without auth may carry (loopback binds only).
    hosts: Option<Arc<Vec<String>>>,
}

fn digest(text: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(text).into()
}

/// Equal in time that does not depend on where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn basic_credentials(headers: &HeaderMap) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, format!("{why}\n")).into_response()
}

/// Guards every endpoint but the probes: basic auth when set; without it, only requests
/// addressed to the loopback address the worker listens on (DNS rebinding). A request that
/// changes something and carries an `Origin` (a browser's, so a web page's) is refused
/// either way (CSRF).
async fn guard(State(api): State<Api>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if matches!(path, "/healthz" | "/ready" | "/metrics") {
        return next.run(request).await;
    }
    let headers = request.headers();
    if request.method() != Method::GET && headers.contains_key(header::ORIGIN) {
        return refuse(
            StatusCode::FORBIDDEN,
            "a request from a web page (it has an Origin header) may not change the worker",
        );
    }
    match &api.auth {
        Some(expected) => match basic_credentials(headers) {
            None => {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Basic realm=\"host worker\"")],
                    "credentials needed (basic auth)\n",
                )
                    .into_response()
            }
            Some(given) if !same(&digest(&given), expected) => {
                return refuse(StatusCode::FORBIDDEN, "wrong credentials")
            }
            Some(_) => {}
        },
        None => {
            if let Some(hosts) = &api.hosts {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
                    return refuse(
                        StatusCode::FORBIDDEN,
                        "the Host header does not name the address the worker listens on",
                    );
                }
            }
        }
    }
    next.run(request).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn ready(State(api): State<Api>) -> impl IntoResponse {
    let c = &api.control;
    if c.ready() {
        (StatusCode::OK, "ready\n".to_owned())
    } else if let Some(problem) = c.queue_problem() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not taking jobs: the queue cannot be used: {problem}\n"),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not taking jobs (paused or draining)\n".to_owned(),
        )
    }
}

async fn worker(State(api): State<Api>) -> impl IntoResponse {
    Json(api.control.status())
}

/// 400 with the original's error body.
fn bad_request(error: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": error })),
    )
        .into_response()
}

/// The original's `PATCH /worker` body.
#[derive(serde::Deserialize)]
struct WorkerPatch {
    #[serde(rename = "poolSize", default)]
    pool_size: usize,
}

async fn patch_worker(State(api): State<Api>, body: axum::body::Bytes) -> Response {
    let patch: WorkerPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return bad_request(e.to_string()),
    };
    if patch.pool_size > MAX_POOL_SIZE {
        return bad_request(format!(
            "poolSize {} is above the limit of {MAX_POOL_SIZE}",
            patch.pool_size
        ));
    }
    if patch.pool_size > 0 {
        api.control.set_pool_size(patch.pool_size);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// The original's `DELETE /worker` body.
#[derive(serde::Deserialize, Default)]
struct Shutdown {
    #[serde(default)]
    graceful: bool,
    #[serde(default)]
    pause: bool,
}

async fn delete_worker(State(api): State<Api>, body: axum::body::Bytes) -> Response {
    let options: Shutdown = if body.is_empty() {
        Shutdown::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(o) => o,
            Err(e) => return bad_request(e.to_string()),
        }
    };
    match (options.graceful, options.pause) {
        // As the original: a graceful shutdown with pause stops intake and keeps the
        // process; without, it drains and exits.
        (true, true) => api.control.pause(),
        (true, false) => api.control.drain(),
        (false, _) => api.control.shutdown(),
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn increment(State(api): State<Api>) -> impl IntoResponse {
    Json(serde_json::json!({ "pool_size": api.control.grow() }))
}

async fn decrement(State(api): State<Api>) -> impl IntoResponse {
    Json(serde_json::json!({ "pool_size": api.control.shrink() }))
}

async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        api.control.metrics(),
    )
}

/// The `Host` values a loopback bind answers to.
fn loopback_hosts(bound: SocketAddr) -> Vec<String> {
    let port = bound.port();
    let mut hosts = vec![
        bound.to_string(),
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ];
    if port == 80 {
        hosts.extend(["localhost", "127.0.0.1", "[::1]"].map(str::to_owned));
    }
    hosts
}

/// Binds `addr` and serves the endpoints on a task of their own; returns the address bound
/// (port 0 picks one). Each connection has [`HEAD_TIMEOUT`] to send a request's head and
/// lives at most [`CONNECTION_LIFETIME`]; at most [`MAX_CONNECTIONS`] are served at once
/// (more are closed as they arrive), so slow or idle clients cannot take every descriptor.
pub async fn serve(
    addr: SocketAddr,
    settings: HttpSettings,
    control: Control,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let api = Api {
        control,
        auth: settings.auth.as_deref().map(|a| digest(a.as_bytes())),
        hosts: (settings.auth.is_none() && bound.ip().is_loopback())
            .then(|| Arc::new(loopback_hosts(bound))),
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/ready", get(ready))
        .route(
            "/worker",
            get(worker).patch(patch_worker).delete(delete_worker),
        )
        .route("/pool/increment", post(increment))
        .route("/pool/decrement", post(decrement))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(api.clone(), guard))
        .with_state(api);
    tokio::spawn(accept(listener, app));
    Ok(bound)
}

async fn accept(listener: tokio::net::TcpListener, app: Router) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut warned: Option<std::time::Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors (EMFILE), say: said once a minute, tried again soon.
                if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!("the HTTP endpoints cannot accept a connection: {e}");
                    warned = Some(std::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream); // at the cap: closed at once
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(slot);
        });
    }
}
