//! The agent's HTTP endpoint (loopback by default).
//!
//! | route | answers |
//! | --- | --- |
//! | `GET /healthz` | 200 while the process serves requests |
//! | `GET /readyz` | 200 once the first reconcile finished and the agent is not stalled; 503 with the reason otherwise |
//! | `GET /status` | the status document (JSON), as also written to the state directory |
//! | `GET /metrics` | Prometheus text format 0.0.4 |
//! | `POST /hooks/git` | fetch the branch now (202); with `--webhook-token-file`, only with `Authorization: Bearer TOKEN` (or `X-Cinderblock-Token`), else 401 |
//!
//! axum over hyper: the tokio team's HTTP stack, kept current, and small
//! with only the `http1` and `tokio` features; rejected a hand-written
//! parser (a network-facing one is exactly what not to write ourselves).
//!
//! The token is compared as BLAKE3 digests, whose equality is constant-time,
//! so neither the bytes nor the length of the token leak through timing.
//!
//! Must not: take the state lock, block on a reconcile (handlers only copy
//! from the shared status under a short mutex), or log request bodies.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::watch;

use super::{Shared, lock};

/// The router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/hooks/git", post(hook))
        .with_state(shared)
}

/// Serves until shutdown.
pub async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| format!("cannot use the listener: {e}"))?;
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await
        .map_err(|e| format!("the HTTP server failed: {e}"))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let why = lock(&shared.status).not_ready();
    match why {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let doc = lock(&shared.status).clone();
    match serde_json::to_vec_pretty(&doc) {
        Ok(mut body) => {
            body.push(b'\n');
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = lock(&shared.metrics).render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = v.strip_prefix("Bearer ")
    {
        return Some(t.trim());
    }
    headers
        .get("x-cinderblock-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

async fn hook(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !shared.git {
        return (
            StatusCode::NOT_FOUND,
            "this agent does not follow a git branch\n",
        )
            .into_response();
    }
    if let Some(expected) = &shared.webhook_token {
        let ok = presented_token(&headers).is_some_and(|t| blake3::hash(t.as_bytes()) == *expected);
        if !ok {
            *lock(&shared.metrics)
                .webhooks
                .entry("unauthorized".into())
                .or_default() += 1;
            tracing::warn!("webhook call without a valid token refused");
            return (StatusCode::UNAUTHORIZED, "a valid token is required\n").into_response();
        }
    }
    *lock(&shared.metrics)
        .webhooks
        .entry("accepted".into())
        .or_default() += 1;
    shared.git_wake.notify_one();
    (StatusCode::ACCEPTED, "fetching\n").into_response()
}
