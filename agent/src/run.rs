//! The agent's life: register the node, then heartbeat until stopped or
//! until the cluster removes the node.
//!
//! - Registration retries through elections and restarts with backoff
//!   (0.2 s doubling to 5 s); a refusal (bad token, not admin, bad offer) is
//!   fatal and says why.
//! - Heartbeats go every third of the TTL. A missed one is retried; the
//!   node is only marked down by the servers when the whole TTL passes.
//! - A heartbeat answered `NOT_FOUND` means the node was removed (retired
//!   by its pool, or `charter node remove`): the agent exits cleanly.

use crate::conn::{Servers, retryable};
use charter_proto as pb;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tonic::Code;

/// How long one call keeps trying other members before the loop backs off.
const CALL_RETRY: Duration = Duration::from_secs(2);

/// Everything the agent offers and where it reports.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Server addresses.
    pub servers: Vec<String>,
    /// The token (admin: agents register nodes).
    pub token: Option<String>,
    /// Node name.
    pub name: String,
    /// What it offers.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Disk in bytes.
    pub disk_bytes: u64,
    /// GPUs.
    pub gpus: u32,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Pool.
    pub pool: String,
    /// Price per hour.
    pub cost_per_hour: f64,
    /// Heartbeat TTL: the servers mark the node down after this long without one.
    pub ttl: Duration,
    /// The agent's data directory.
    pub data: PathBuf,
}

/// How the agent ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop (a signal).
    Stopped,
    /// The cluster removed the node.
    Removed,
}

/// Why the agent cannot run.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {why}")]
pub struct AgentError {
    /// What failed.
    pub what: String,
    /// Why, from the server.
    pub why: String,
}

fn refused(what: &str, addr: &str, s: &tonic::Status) -> AgentError {
    AgentError {
        what: what.to_string(),
        why: format!("{} (server {addr}, code {:?})", s.message(), s.code()),
    }
}

/// Runs the agent until `stop` resolves or the node is removed.
pub async fn run(opts: AgentOptions, stop: impl Future<Output = ()>) -> Result<Exit, AgentError> {
    let servers = Servers::new(&opts.servers, opts.token.clone()).map_err(|e| AgentError {
        what: "cannot reach the servers".into(),
        why: e,
    })?;
    tokio::pin!(stop);
    let mut backoff = Duration::from_millis(200);
    // Register.
    loop {
        let req = pb::RegisterNodeRequest {
            idempotency_key: String::new(),
            name: opts.name.clone(),
            capacity: Some(pb::Resources {
                cpu_millis: opts.cpu_millis,
                memory_bytes: opts.memory_bytes,
                disk_bytes: opts.disk_bytes,
                gpus: opts.gpus,
            }),
            labels: opts.labels.clone().into_iter().collect(),
            pool: opts.pool.clone(),
            cost_per_hour: opts.cost_per_hour,
            ttl_ms: opts.ttl.as_millis() as u64,
        };
        let res = servers
            .call(CALL_RETRY, |ch| {
                let r = servers.req(req.clone());
                async move { pb::nodes_client::NodesClient::new(ch).register(r).await }
            })
            .await;
        match res {
            Ok(_) => break,
            Err(f) if retryable(&f.status) => {
                tracing::warn!(error = %f.status.message(), "no server answered the registration; retrying");
            }
            Err(f) => {
                return Err(refused(
                    "registering the node was refused",
                    &f.addr,
                    &f.status,
                ));
            }
        }
        tokio::select! {
            _ = &mut stop => return Ok(Exit::Stopped),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    tracing::info!(node = %opts.name, pool = %opts.pool, "registered");
    let every = (opts.ttl / 3).max(Duration::from_millis(50));
    let mut down_since: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(Exit::Stopped),
            _ = tokio::time::sleep(every) => {}
        }
        let name = opts.name.clone();
        let res = servers
            .call(CALL_RETRY, |ch| {
                let r = servers.req(pb::HeartbeatRequest { name: name.clone() });
                async move { pb::nodes_client::NodesClient::new(ch).heartbeat(r).await }
            })
            .await;
        match res {
            Ok(_) => {
                if let Some(t) = down_since.take() {
                    tracing::info!(after = ?t.elapsed(), "servers reachable again");
                }
            }
            Err(f) if f.status.code() == Code::NotFound => {
                tracing::info!(node = %opts.name, "the node was removed from the cluster; the agent exits");
                return Ok(Exit::Removed);
            }
            Err(f) if retryable(&f.status) => {
                if down_since.is_none() {
                    tracing::warn!(error = %f.status.message(), "heartbeat failed; retrying");
                    down_since = Some(std::time::Instant::now());
                }
            }
            Err(f) => return Err(refused("the heartbeat was refused", &f.addr, &f.status)),
        }
    }
}
