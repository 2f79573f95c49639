//! The worker's HTTP endpoints, as the original's: `GET /healthz` (200 while the process
//! lives), `GET /ready` (200 when taking jobs, 503 when paused, draining or the queue cannot
//! be used), `GET /worker` (JSON: pool, running jobs), `POST /pool/increment` and
//! `/pool/decrement`, and `GET /metrics` (Prometheus text format). Bind it to loopback unless a proxy guards it:
//! the pool endpoints change what the worker does.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::Control;

async fn healthz() -> &'static str {
    "ok\n"
}

async fn ready(State(c): State<Control>) -> impl IntoResponse {
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

async fn worker(State(c): State<Control>) -> impl IntoResponse {
    Json(c.status())
}

async fn increment(State(c): State<Control>) -> impl IntoResponse {
    Json(serde_json::json!({ "pool_size": c.grow() }))
}

async fn decrement(State(c): State<Control>) -> impl IntoResponse {
    Json(serde_json::json!({ "pool_size": c.shrink() }))
}

async fn metrics(State(c): State<Control>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        c.metrics(),
    )
}

/// Binds `addr` and serves the endpoints on a task of their own; returns the address bound
/// (port 0 picks one).
pub async fn serve(addr: SocketAddr, control: Control) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/ready", get(ready))
        .route("/worker", get(worker))
        .route("/pool/increment", post(increment))
        .route("/pool/decrement", post(decrement))
        .route("/metrics", get(metrics))
        .with_state(control);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the HTTP endpoints stopped: {e}");
        }
    });
    Ok(bound)
}
