//! The HTTP port: `/metrics` for Prometheus, `/healthz` (alive) and `/readyz` (partitions
//! assigned, not shutting down). It exposes no configuration.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::source::Health;

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    health: Arc<Health>,
}

async fn render_metrics(State(s): State<AppState>) -> String {
    s.metrics.render()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    let h = &s.health;
    if h.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if h.assigned.load(Ordering::Relaxed) == 0 {
        (StatusCode::SERVICE_UNAVAILABLE, "no partitions assigned\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// Binds the listener (so a bad address fails at start) and returns the address bound and
/// the server future.
pub async fn bind(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    health: Arc<Health>,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health });
    Ok((local, async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    }))
}
