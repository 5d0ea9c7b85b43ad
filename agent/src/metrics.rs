//! The agent's metrics (`prometheus-client`), served at `/metrics` on its
//! `--http` port: tasks by state, starts, restarts, exits, health-check
//! failures and how late a lease's processes were killed after its
//! `expires_at`. One agent per process, so the registry is a static the
//! supervisor and the health checks count into.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;

/// One `kind="…"` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// The value.
    pub kind: String,
}

/// Everything the agent counts.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    /// Task processes started.
    pub starts: Counter,
    /// Restarts by the task's restart policy.
    pub restarts: Counter,
    /// Tasks that ended, by how (succeeded, failed, ...).
    pub exits: Family<Kind, Counter>,
    /// Health probes that failed.
    pub health_failures: Counter,
    /// From a lease's `expires_at` to its processes killed.
    pub kill_lateness: Histogram,
    /// Leases this agent runs now.
    pub leases: Gauge,
    /// Task processes running now.
    pub running: Gauge,
}

/// The agent's metrics.
pub static METRICS: LazyLock<AgentMetrics> = LazyLock::new(AgentMetrics::new);

impl AgentMetrics {
    fn new() -> AgentMetrics {
        let m = AgentMetrics {
            registry: Registry::default(),
            starts: Counter::default(),
            restarts: Counter::default(),
            exits: Family::default(),
            health_failures: Counter::default(),
            kill_lateness: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            leases: Gauge::default(),
            running: Gauge::default(),
        };
        let mut r = m.registry;
        r.register(
            "charter_agent_task_starts",
            "Task processes started",
            m.starts.clone(),
        );
        r.register(
            "charter_agent_task_restarts",
            "Task restarts by their restart policy",
            m.restarts.clone(),
        );
        r.register(
            "charter_agent_task_exits",
            "Tasks that ended here, by state",
            m.exits.clone(),
        );
        r.register(
            "charter_agent_health_check_failures",
            "Health probes that failed",
            m.health_failures.clone(),
        );
        r.register(
            "charter_agent_kill_lateness_seconds",
            "From a lease's expires_at to its processes killed",
            m.kill_lateness.clone(),
        );
        r.register(
            "charter_agent_leases",
            "Leases this agent runs now",
            m.leases.clone(),
        );
        r.register(
            "charter_agent_tasks_running",
            "Task processes running now",
            m.running.clone(),
        );
        AgentMetrics { registry: r, ..m }
    }

    /// Counts a task's end.
    pub fn exited(&self, state: &str) {
        self.exits
            .get_or_create(&Kind {
                kind: state.to_string(),
            })
            .inc();
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!(error = %e, "cannot encode the agent's metrics");
        }
        out
    }
}

/// `/metrics` for the agent's `--http` port; `now` tells the leases and
/// running tasks at each scrape.
pub fn router(now: impl Fn() -> (i64, i64) + Clone + Send + Sync + 'static) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            let (leases, running) = now();
            METRICS.leases.set(leases);
            METRICS.running.set(running);
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                METRICS.render(),
            )
        }),
    )
}
