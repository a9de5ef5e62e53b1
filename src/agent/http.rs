//! The agent's HTTP endpoint (loopback by default).
//!
//! | route | answers |
//! | --- | --- |
//! | `GET /` | the status page: HTML for people ([`super::page`]), self-contained, under a `Content-Security-Policy` that allows nothing external |
//! | `GET /healthz` | 200 while the process serves requests |
//! | `GET /readyz` | 200 once the first reconcile finished and the agent is not stalled; 503 with the reason otherwise |
//! | `GET /status` | the status document (JSON), as also written to the state directory |
//! | `GET /metrics` | Prometheus text format 0.0.4 |
//! | `POST /hooks/git` | fetch the branch now (202); with `--webhook-token-file`, only with `Authorization: Bearer TOKEN` (or `X-Cinderblock-Token`), else 401 |
//!
//! axum over hyper: the tokio team's HTTP stack, kept current, and small
//! with only the `http1` and `tokio` features; rejected a hand-written
//! parser (a network-facing one is exactly what not to write ourselves).
//! Every connection has a request-head timeout and a lifetime limit, and
//! their number is bounded (see [`serve`]).
//!
//! The token is compared as BLAKE3 digests, whose equality is constant-time,
//! so neither the bytes nor the length of the token leak through timing.
//!
//! Must not: take the state lock, block on a reconcile (handlers only copy
//! from the shared status under a short mutex), or log request bodies.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::{Shared, lock};

/// The router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/hooks/git", post(hook))
        .with_state(shared)
}

/// A client must send its whole request head within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection (keep-alive included) is closed after this time, so a slow
/// or stuck client cannot hold one open.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 64;

/// Serves until shutdown.
///
/// Its own accept loop over hyper rather than `axum::serve`, which sets no
/// timer and so has no request-head timeout: each connection gets
/// [`HEADER_TIMEOUT`] for its request head and [`CONNECTION_TIMEOUT`] in
/// all, and at most [`MAX_CONNECTIONS`] are open, so neither a slow client
/// (slowloris) nor a flood can exhaust the agent's file descriptors.
pub async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| format!("cannot use the listener: {e}"))?;
    let app = router(shared);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors or a connection reset before
                        // accept: back off a little, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    tracing::warn!(%peer, limit = MAX_CONNECTIONS, "too many HTTP connections; closing this one");
                    continue;
                };
                let service = TowerToHyperService::new(app.clone());
                conns.spawn(async move {
                    let _permit = permit;
                    let mut builder = http1::Builder::new();
                    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTP connection ended"),
                        Err(_) => tracing::debug!(%peer, "HTTP connection closed after the time limit"),
                    }
                });
            }
        }
    }
    // Handlers never block, so whatever is still open is an idle or slow
    // client: close it.
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    Ok(())
}

async fn page(State(shared): State<Arc<Shared>>) -> Response {
    let doc = lock(&shared.status).clone();
    let html = super::page::render(&doc, chrono::Utc::now());
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                super::page::CONTENT_SECURITY_POLICY,
            ),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        html,
    )
        .into_response()
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
