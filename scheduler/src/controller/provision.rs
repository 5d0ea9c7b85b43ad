//! Scaling, the IO half: runs on every member, acts only on the leader.
//! Each round it reads the state, lets [`scaling::plan`] decide, and then
//! starts provisioners and proposes `RemoveNode` for idle nodes.
//!
//! - `local` pools start `charter agent` child processes of this server
//!   (named `POOL-N`, data under `DATA/pools/POOL/NAME`, log in `agent.log`
//!   there). A retired node's agent notices its node is gone and exits; it
//!   is also sent SIGTERM. Children are stopped with the server.
//! - `command` pools run the user's program with the demand as JSON on
//!   stdin (see [`demand_json`]), and `CHARTER_SERVERS` (the members'
//!   addresses) and `CHARTER_POOL` in its environment; it must make the
//!   nodes join. A failed or
//!   timed-out run blocks the pool for [`BACKOFF`] so a broken script is
//!   not run in a loop. After a node is retired the optional `retire`
//!   program gets `{"pool": ..., "node": ...}` on stdin.
//!
//! State the loop keeps (nodes in flight, idle times) lives only on the
//! leader: after a failover the new leader starts its idle clocks afresh,
//! which only delays a retirement.
//!
//! Over 500 lines: pools that grow: provisioning, retiring and the local provisioner.

use super::scaling::{self, Inflight};
use crate::raft_driver::MemberHandle;
use crate::state::{Applied, Command, Millis, PoolOffer, Proposal, Resources, State};
use charter_config::server::{PoolConfig, Provisioner};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

/// How often the scaler looks at the queue.
pub const PERIOD: Duration = Duration::from_millis(250);
/// How long a pool whose provisioner failed is left alone.
pub const BACKOFF: Duration = Duration::from_secs(30);

/// What the scaler needs besides the member.
#[derive(Clone, Debug, Default)]
pub struct ScalingOptions {
    /// The pools of this server's config.
    pub pools: Vec<PoolConfig>,
    /// The `charter` binary, for `local` pools.
    pub exe: Option<PathBuf>,
    /// Where local agents keep their data (`DATA/pools`).
    pub dir: PathBuf,
    /// The peer token, from which each local agent's node credential is
    /// minted.
    pub token: Option<String>,
}

/// The replicated offer of a configured pool.
pub fn offer(p: &PoolConfig) -> PoolOffer {
    PoolOffer {
        name: p.name.clone(),
        max_nodes: p.max_nodes,
        capacity: Resources {
            cpu_millis: p.cpu_millis,
            memory_bytes: p.memory_bytes,
            disk_bytes: p.disk_bytes,
            gpus: p.gpus,
        },
        labels: p.labels.clone(),
        cost_per_hour: p.cost_per_hour,
        idle_ms: p.idle_ms,
    }
}

/// What a `command` provisioner reads on stdin.
pub fn demand_json(state: &State, g: &scaling::Grow, servers: &[String]) -> serde_json::Value {
    let node = state.nodes.pools.get(&g.pool);
    let demand: Vec<serde_json::Value> = g
        .demand
        .iter()
        .filter_map(|id| state.leases.get(id))
        .map(|l| {
            serde_json::json!({
                "lease": l.id,
                "principal": l.principal,
                "cpu_millis": l.spec.resources.cpu_millis,
                "memory_bytes": l.spec.resources.memory_bytes,
                "disk_bytes": l.spec.resources.disk_bytes,
                "gpus": l.spec.resources.gpus,
                "count": l.spec.count,
                "constraints": l.spec.constraints.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "pool": g.pool,
        "count": g.count,
        "node": node.map(|p| serde_json::json!({
            "cpu_millis": p.capacity.cpu_millis,
            "memory_bytes": p.capacity.memory_bytes,
            "disk_bytes": p.capacity.disk_bytes,
            "gpus": p.capacity.gpus,
            "labels": p.labels,
            "cost_per_hour": p.cost_per_hour,
        })),
        "demand": demand,
        "servers": servers,
    })
}

enum Done {
    /// A provisioner run failed: drop `count` unnamed in-flight nodes of the pool.
    Failed { pool: String, count: u32 },
}

struct Scaler {
    member: MemberHandle,
    opts: ScalingOptions,
    inflight: Vec<Inflight>,
    known: BTreeSet<String>,
    idle_since: BTreeMap<String, Millis>,
    blocked: BTreeMap<String, Millis>,
    children: BTreeMap<String, tokio::process::Child>,
    /// The members' addresses, as of the last round (agents join these).
    servers: Vec<String>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
}

/// Runs the scaler until `stop` turns true; then stops the local agents.
pub async fn run(member: MemberHandle, opts: ScalingOptions, mut stop: watch::Receiver<bool>) {
    if opts.pools.is_empty() {
        let _ = stop.changed().await;
        return;
    }
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let mut s = Scaler {
        member,
        opts,
        inflight: Vec::new(),
        known: BTreeSet::new(),
        idle_since: BTreeMap::new(),
        blocked: BTreeMap::new(),
        children: BTreeMap::new(),
        servers: Vec::new(),
        done_tx,
        done_rx,
    };
    let mut every = tokio::time::interval(PERIOD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => break,
        }
        s.round().await;
    }
    s.stop_children().await;
}

impl Scaler {
    async fn round(&mut self) {
        self.reap();
        let now = self.member.clock().now();
        while let Ok(Done::Failed { pool, count }) = self.done_rx.try_recv() {
            for _ in 0..count {
                if let Some(i) = self
                    .inflight
                    .iter()
                    .position(|f| f.pool == pool && f.name.is_none())
                {
                    self.inflight.remove(i);
                }
            }
            let until = now.saturating_add(BACKOFF.as_millis() as i64);
            tracing::warn!(pool = %pool, "provisioner failed; pool left alone for {} s", BACKOFF.as_secs());
            self.blocked.insert(pool, until);
        }
        if !self.member.is_leader() {
            self.idle_since.clear();
            return;
        }
        let mut offers: Vec<PoolOffer> = self.opts.pools.iter().map(offer).collect();
        offers.sort_by(|a, b| a.name.cmp(&b.name)); // the state keeps them by name
        let current = self
            .member
            .read(|st| st.nodes.pools.values().cloned().collect::<Vec<_>>());
        if current != offers {
            let p = self.proposal(now, Command::SetPools { pools: offers });
            match self.member.propose(p).await {
                Ok(Ok(_)) => tracing::info!("pools from the server config are in force"),
                Ok(Err(e)) => tracing::warn!(error = %e, "the pools were refused"),
                Err(e) => tracing::debug!(error = %e, "proposing the pools failed; will retry"),
            }
            return;
        }
        self.blocked.retain(|_, until| *until > now);
        let timeouts: BTreeMap<String, u64> = self
            .opts
            .pools
            .iter()
            .map(|p| (p.name.clone(), p.join_timeout_ms))
            .collect();
        let blocked: BTreeSet<String> = self.blocked.keys().cloned().collect();
        let (plan, given_up, jobs) = self.member.read(|st| {
            let given_up =
                scaling::settle_inflight(st, &mut self.inflight, &mut self.known, &timeouts, now);
            scaling::observe_idle(st, &mut self.idle_since, now);
            let plan = scaling::plan(st, &self.inflight, &blocked, &self.idle_since, now);
            self.servers = st.members.values().cloned().collect();
            let servers = &self.servers;
            let jobs: Vec<(scaling::Grow, serde_json::Value, Vec<String>)> = plan
                .grow
                .iter()
                .map(|g| {
                    let names = local_names(st, &self.inflight, &self.children, &g.pool, g.count);
                    (g.clone(), demand_json(st, g, servers), names)
                })
                .collect();
            (plan, given_up, jobs)
        });
        for g in given_up {
            tracing::warn!(pool = %g.pool, node = ?g.name, "a provisioned node did not join in time; given up");
            if let Some(name) = g.name
                && let Some(mut c) = self.children.remove(&name)
            {
                let _ = c.start_kill();
            }
        }
        for (g, json, names) in jobs {
            self.grow(now, &g, json, names);
        }
        for name in plan.retire {
            self.retire(now, &name).await;
        }
    }

    fn proposal(&self, now: Millis, cmd: Command) -> Proposal {
        Proposal {
            at: now,
            principal: "charter:scaling".into(),
            admin: true,
            key: None,
            hint: None,
            cmd,
        }
    }

    fn grow(
        &mut self,
        now: Millis,
        g: &scaling::Grow,
        json: serde_json::Value,
        names: Vec<String>,
    ) {
        let Some(cfg) = self.opts.pools.iter().find(|p| p.name == g.pool).cloned() else {
            return;
        };
        tracing::info!(pool = %g.pool, count = g.count, demand = ?g.demand, "growing a pool for queued demand");
        match &cfg.provisioner {
            Provisioner::Local => {
                for name in names {
                    match self.start_agent(&cfg, &name) {
                        Ok(child) => {
                            self.children.insert(name.clone(), child);
                            self.inflight.push(Inflight {
                                pool: g.pool.clone(),
                                name: Some(name),
                                since: now,
                            });
                        }
                        Err(e) => {
                            tracing::warn!(pool = %g.pool, error = %e, "cannot start a local agent");
                            let until = now.saturating_add(BACKOFF.as_millis() as i64);
                            self.blocked.insert(g.pool.clone(), until);
                            return;
                        }
                    }
                }
            }
            Provisioner::Command {
                argv, timeout_ms, ..
            } => {
                for _ in 0..g.count {
                    self.inflight.push(Inflight {
                        pool: g.pool.clone(),
                        name: None,
                        since: now,
                    });
                }
                let done = self.done_tx.clone();
                let (pool, count) = (g.pool.clone(), g.count);
                let argv = argv.clone();
                let timeout = Duration::from_millis(*timeout_ms);
                let servers = self.servers.clone();
                tokio::spawn(async move {
                    if let Err(e) = run_program(&argv, &json, &servers, timeout).await {
                        tracing::warn!(pool = %pool, error = %e, "the pool's provisioner failed");
                        let _ = done.send(Done::Failed { pool, count });
                    }
                });
            }
        }
    }

    fn start_agent(&self, cfg: &PoolConfig, name: &str) -> std::io::Result<tokio::process::Child> {
        let exe = self.opts.exe.clone().ok_or_else(|| {
            std::io::Error::other("no charter binary is known to start agents with")
        })?;
        let dir = self.opts.dir.join(&cfg.name).join(name);
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("agent.log"))?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("agent")
            .arg("--join")
            .arg(self.servers.join(","))
            .arg("--name")
            .arg(name)
            .arg("--cpu")
            .arg(format!("{}m", cfg.cpu_millis))
            .arg("--mem")
            .arg(cfg.memory_bytes.to_string())
            .arg("--disk")
            .arg(cfg.disk_bytes.to_string())
            .arg("--gpu")
            .arg(cfg.gpus.to_string())
            .arg("--pool")
            .arg(&cfg.name)
            .arg("--cost")
            .arg(cfg.cost_per_hour.to_string())
            .arg("--data")
            .arg(&dir);
        for (k, v) in &cfg.labels {
            cmd.arg("--label").arg(format!("{k}={v}"));
        }
        // The agent gets its node's credential, not the peer token itself.
        let credential = self
            .opts
            .token
            .as_deref()
            .and_then(|t| crate::service::auth::node_credential(t, name));
        if let Some(c) = credential {
            cmd.env("CHARTER_TOKEN", c);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd.spawn()?;
        tracing::info!(pool = %cfg.name, node = %name, pid = ?child.id(), "started a local agent");
        Ok(child)
    }

    async fn retire(&mut self, now: Millis, name: &str) {
        let p = self.proposal(
            now,
            Command::RemoveNode {
                name: name.to_string(),
            },
        );
        let node = match self.member.propose(p).await {
            Ok(Ok(Applied::Node(n))) => n,
            Ok(other) => {
                tracing::debug!(node = %name, outcome = ?other, "not retired");
                return;
            }
            Err(e) => {
                tracing::debug!(node = %name, error = %e, "retiring failed; will retry");
                return;
            }
        };
        tracing::info!(node = %name, pool = %node.pool, "retired an idle node");
        self.idle_since.remove(name);
        if let Some(c) = self.children.get(name)
            && let Some(pid) = c.id()
        {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        let retire_argv = self
            .opts
            .pools
            .iter()
            .find(|p| p.name == node.pool)
            .and_then(|p| match &p.provisioner {
                Provisioner::Command {
                    retire, timeout_ms, ..
                } if !retire.is_empty() => Some((retire.clone(), *timeout_ms)),
                _ => None,
            });
        if let Some((argv, timeout_ms)) = retire_argv {
            let json = serde_json::json!({"pool": node.pool, "node": node.name});
            let servers = self.servers.clone();
            tokio::spawn(async move {
                let timeout = Duration::from_millis(timeout_ms);
                if let Err(e) = run_program(&argv, &json, &servers, timeout).await {
                    tracing::warn!(error = %e, "the pool's retire program failed");
                }
            });
        }
    }

    /// Forgets local agents that have exited.
    fn reap(&mut self) {
        self.children.retain(|name, c| match c.try_wait() {
            Ok(Some(status)) => {
                tracing::info!(node = %name, %status, "local agent exited");
                false
            }
            _ => true,
        });
    }

    async fn stop_children(&mut self) {
        for c in self.children.values() {
            if let Some(pid) = c.id() {
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        for (_, mut c) in std::mem::take(&mut self.children) {
            if tokio::time::timeout(Duration::from_secs(5), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}

/// `count` names `POOL-N` that no node, in-flight node or child has.
fn local_names(
    st: &State,
    inflight: &[Inflight],
    children: &BTreeMap<String, tokio::process::Child>,
    pool: &str,
    count: u32,
) -> Vec<String> {
    let taken = |n: &str| {
        st.nodes.contains_key(n)
            || children.contains_key(n)
            || inflight.iter().any(|i| i.name.as_deref() == Some(n))
    };
    (1..)
        .map(|k| format!("{pool}-{k}"))
        .filter(|n| !taken(n))
        .take(count as usize)
        .collect()
}

/// Runs `argv` with `json` on stdin, and `CHARTER_SERVERS` (the members'
/// addresses) and `CHARTER_POOL` in its environment; an error unless it
/// exits 0 in time.
async fn run_program(
    argv: &[String],
    json: &serde_json::Value,
    servers: &[String],
    timeout: Duration,
) -> Result<(), String> {
    let (prog, args) = argv.split_first().ok_or("empty command")?;
    let mut child = tokio::process::Command::new(prog)
        .args(args)
        .env("CHARTER_SERVERS", servers.join(","))
        .env("CHARTER_POOL", json["pool"].as_str().unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let body = serde_json::to_vec(json).map_err(|e| e.to_string())?;
        stdin
            .write_all(&body)
            .await
            .map_err(|e| format!("cannot write to {prog}'s stdin: {e}"))?;
    }
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "{prog} ran longer than {} s and was killed",
                timeout.as_secs()
            )
        })?
        .map_err(|e| format!("waiting for {prog}: {e}"))?;
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        s.lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ")
    };
    if out.status.success() {
        tracing::info!(program = %prog, output = %tail(&out.stdout), "provisioner finished");
        Ok(())
    } else {
        Err(format!(
            "{prog} exited with {}: {}",
            out.status,
            tail(&out.stderr)
        ))
    }
}
