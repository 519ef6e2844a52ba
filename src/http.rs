//! The HTTP port: `/metrics` for Prometheus, `/healthz` (alive) and `/readyz` (ready: in the
//! group with partitions assigned, the brokers answering, not stuck, not shutting down). It
//! exposes no configuration.
//!
//! `/metrics` negotiates: a scraper whose `Accept` prefers `application/openmetrics-text`
//! (Prometheus with exemplar storage on) gets OpenMetrics with the RED metrics' exemplars
//! ([`crate::telemetry::openmetrics`]); any other gets the classic Prometheus text, as before.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::health::Health;
use crate::telemetry::exemplars::Exemplars;
use crate::telemetry::openmetrics;

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    exemplars: Option<Arc<Exemplars>>,
    health: Arc<Health>,
    stall_timeout: Duration,
}

async fn render_metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let body = crate::telemetry::render(&s.metrics);
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(openmetrics::accepts);
    if !accept {
        return body.into_response();
    }
    let body = openmetrics::render(&body, s.exemplars.as_deref());
    ([(header::CONTENT_TYPE, openmetrics::CONTENT_TYPE)], body).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    match readiness(&s.health, s.stall_timeout) {
        Ok(msg) => (StatusCode::OK, msg),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Ready, or why not (the `/readyz` body, one line).
///
/// Not ready while shutting down; before the group gave this instance partitions (or when it
/// has none: more instances than partitions; naming an input topic that does not exist yet); while the brokers do not answer lag queries;
/// and when stuck: lag behind the partitions' end and nothing consumed for `stall_timeout`.
pub fn readiness(h: &Health, stall_timeout: Duration) -> Result<String, String> {
    if h.draining.load(Ordering::Relaxed) {
        return Err("not ready: shutting down\n".into());
    }
    let assigned = h.assigned.load(Ordering::Relaxed);
    if assigned == 0 {
        let missing = h.lag.missing_topics();
        if !missing.is_empty() {
            return Err(format!(
                "not ready: waiting for input topic `{}` to exist (no partitions assigned)\n",
                missing.join("`, `")
            ));
        }
        return Err("not ready: no partitions assigned (joining the group, or more instances than partitions)\n".into());
    }
    if let Some(e) = h.lag.broker_error() {
        return Err(format!("not ready: brokers unreachable: {e}\n"));
    }
    let reading = h.reading_back.load(Ordering::Relaxed);
    if reading > 0 {
        return Err(format!(
            "not ready: reading the decision log back for {reading} newly assigned partitions\n"
        ));
    }
    if let Some(why) = h.decision_log.get().and_then(|l| l.stuck(stall_timeout)) {
        return Err(format!("not ready: {why}\n"));
    }
    let lag = h.lag.total();
    let idle = h.lag.since_progress();
    if lag.is_some_and(|l| l > 0) && idle >= stall_timeout {
        let paused = if h.paused.load(Ordering::Relaxed) {
            " (fetching paused: buffer over budget)"
        } else {
            ""
        };
        return Err(format!(
            "not ready: stuck: lag {} and nothing consumed for {}s{paused}\n",
            lag.unwrap_or(0),
            idle.as_secs()
        ));
    }
    Ok(match lag {
        Some(l) => format!("ready: {assigned} partitions, lag {l}\n"),
        None => format!("ready: {assigned} partitions, lag not measured yet\n"),
    })
}

/// The HTTP port could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}")]
pub struct ListenError {
    /// The address asked for (`http.listen`).
    pub addr: SocketAddr,
    /// The operating system's refusal.
    #[source]
    pub source: std::io::Error,
}

/// The HTTP server, running.
pub struct Server {
    /// The address bound.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Binds `http.listen` (so a bad address fails at start) and serves `/metrics`, `/healthz`
/// and `/readyz` on a task of its own. `exemplars`, if any, are shown in OpenMetrics scrapes.
pub async fn start(
    config: &Config,
    metrics: PrometheusHandle,
    exemplars: Option<Arc<Exemplars>>,
    health: Arc<Health>,
) -> Result<Server, ListenError> {
    let addr = config.http.listen;
    let failed = |source| ListenError { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            metrics,
            exemplars,
            health,
            stall_timeout: config.monitoring.stall_timeout,
        });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(Server { addr: local, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_partitions_a_reachable_broker_and_progress() {
        let stall = Duration::from_millis(50);
        let h = Health::default();
        let not = |h: &Health| readiness(h, stall).expect_err("not ready");
        assert!(not(&h).contains("no partitions assigned"));
        h.lag.set_missing_topics(vec!["spans".into()]);
        assert!(
            not(&h).contains("waiting for input topic `spans` to exist"),
            "{}",
            not(&h)
        );
        h.lag.set_missing_topics(Vec::new());
        h.assigned.store(2, Ordering::Relaxed);
        h.lag.assigned("in", 0);
        let ok = readiness(&h, stall).expect("ready once assigned");
        assert!(ok.contains("lag not measured yet"), "{ok}");

        // Caught up: no lag, however long since the last message.
        std::thread::sleep(stall * 2);
        h.lag.positions([("in", 0, 10)]);
        h.lag.test_measure("in", 0, 10, None);
        assert!(readiness(&h, stall).is_ok());

        // Lag and no progress for longer than the stall timeout: stuck.
        h.lag.test_measure("in", 0, 25, None);
        assert!(not(&h).contains("stuck: lag 15"), "{}", not(&h));
        h.lag.progress();
        assert!(readiness(&h, stall).is_ok(), "progress again: ready");

        h.lag.test_measure("in", 0, 25, Some("timed out".into()));
        assert!(not(&h).contains("brokers unreachable: timed out"));
        h.lag.test_measure("in", 0, 25, None);
        h.draining.store(true, Ordering::Relaxed);
        assert!(not(&h).contains("shutting down"));
    }
}
