//! Health checks of service tasks: HTTP (reqwest, an expected status), a
//! TCP connect, or a command in the sandbox (run like the task: as the
//! lease's user, in its session, marked as its). A monitor runs the check every
//! `interval` with a `timeout`; `healthy_after` passes in a row make the
//! task `healthy`, `unhealthy_after` failures in a row make it `unhealthy`.
//! It starts `starting`.

use crate::sandbox::{self, Isolation, Launch};
use charter_config::spec::Health;
use charter_config::states::HealthState;
use std::time::Duration;
use tokio::sync::watch;

/// The probe a health check runs: the task spec's check.
pub use charter_config::spec::Check as Probe;

/// How long between checks, and one check's limit: what the task's spec
/// says, never less than 100 ms.
fn timing(h: &Health) -> (Duration, Duration) {
    (
        Duration::from_millis(h.interval_ms.max(100)),
        Duration::from_millis(h.timeout_ms.max(100)),
    )
}

/// A running health monitor.
pub struct Monitor {
    state: watch::Receiver<HealthState>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    /// Starts checking; a command probe runs as `launch` says.
    pub fn start(check: Health, launch: Launch, iso: Isolation) -> Monitor {
        let (interval, timeout) = timing(&check);
        let (tx, rx) = watch::channel(HealthState::Starting);
        let task = tokio::spawn(async move {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .no_proxy()
                .build()
                .ok();
            let (mut pass, mut fail) = (0u32, 0u32);
            loop {
                tokio::time::sleep(interval).await;
                let ok = probe(&check, client.as_ref(), (&launch, &iso)).await;
                if ok {
                    pass += 1;
                    fail = 0;
                } else {
                    crate::metrics::METRICS.health_failures.inc();
                    fail += 1;
                    pass = 0;
                }
                let cur = *tx.borrow();
                let next = if pass >= check.healthy_after.max(1) {
                    HealthState::Healthy
                } else if fail >= check.unhealthy_after.max(1) {
                    HealthState::Unhealthy
                } else {
                    cur
                };
                if next != cur && tx.send(next).is_err() {
                    return;
                }
            }
        });
        Monitor { state: rx, task }
    }

    /// The state now.
    pub fn state(&self) -> HealthState {
        *self.state.borrow()
    }

    /// Waits for the next change and returns the new state.
    pub async fn changed(&mut self) -> HealthState {
        if self.state.changed().await.is_err() {
            return std::future::pending().await;
        }
        *self.state.borrow()
    }

    /// Stops checking.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// One probe, bounded by the check's timeout.
async fn probe(
    check: &Health,
    client: Option<&reqwest::Client>,
    (launch, iso): (&Launch, &Isolation),
) -> bool {
    let (_, limit) = timing(check);
    match &check.check {
        Probe::Http { port, path, status } => {
            let Some(c) = client else { return false };
            let url = format!("http://127.0.0.1:{port}{path}");
            tokio::time::timeout(limit, c.get(url).send())
                .await
                .is_ok_and(|r| r.is_ok_and(|r| r.status().as_u16() == *status))
        }
        Probe::Tcp { port } => {
            tokio::time::timeout(limit, tokio::net::TcpStream::connect(("127.0.0.1", *port)))
                .await
                .is_ok_and(|r| r.is_ok())
        }
        Probe::Command { argv } => {
            let null = std::process::Stdio::null;
            let Ok(mut child) = sandbox::spawn(launch, iso, argv, null(), null()) else {
                return false;
            };
            match tokio::time::timeout(limit, child.wait()).await {
                Ok(r) => r.is_ok_and(|s| s.success()),
                Err(_) => {
                    // Its own session: the whole group goes.
                    if let Some(pid) = child.id() {
                        sandbox::signal_group(pid, libc::SIGKILL);
                    }
                    let _ = child.wait().await;
                    false
                }
            }
        }
    }
}
