//! The gRPC services. One listen address serves the client API (Cluster,
//! Nodes, Leases) and the peer service (RaftPeer).
//!
//! Writes: the member that receives a write turns it into a [`Proposal`] with
//! an idempotency key (the client's, or a fresh one), then proposes it when it
//! leads or forwards it to the leader (`RaftPeer.Forward`). While there is no
//! leader or leadership moves, it retries for a few seconds with the same key,
//! so a retry never applies twice; after that the client gets `UNAVAILABLE`
//! with a message saying to retry.
//!
//! Reads are linearizable unless the request asks for `stale`: the member
//! waits on a ReadIndex barrier, then reads its applied state.
//!
//! Over 500 lines: the Api type and the Cluster, Nodes and Leases services share their helpers (submit, forward, barrier, auth); the other services have files of their own.

pub mod auth;
pub mod dashboard;
pub mod events;
mod history;
pub mod locks;
pub use cron::{ScheduleChecker, run_pb};
pub use deploy::{ArtifactStore, Artifacts, deploy_view, task_view};
mod convert;
pub mod cron;
mod deploy;
mod forward;
pub mod http;
mod placer;
pub mod proxy;
mod tasks;

use crate::raft_driver::{MemberHandle, Role};
use crate::state::{
    AgentEndpoint, Applied, Command, KeyOutcome, LeaseState, Outcome, Proposal, Refusal,
};
use crate::{Error, codec};
use auth::{Principal, agent_caller, own_node, principal, principal_or, require_admin};
use charter_proto as pb;
use protobuf::Message as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// How long a write keeps retrying through elections before giving up.
const WRITE_RETRY: Duration = Duration::from_secs(5);
/// How long a read waits for its ReadIndex barrier.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// The API of one member.
#[derive(Clone)]
pub struct Api {
    member: MemberHandle,
    placer: Arc<placer::Placer>,
    peer_token: Option<String>,
    clients: Arc<Mutex<HashMap<String, Channel>>>,
    forwarder: forward::Forwarder,
    schedule_check: Option<ScheduleChecker>,
    artifacts: Option<ArtifactStore>,
    /// Becomes true when the member stops serving: long-lived streams end
    /// then, or the server's graceful stop would wait its limit out.
    stop: tokio::sync::watch::Receiver<bool>,
    /// What this member's history store keeps (for "no longer kept").
    keep: crate::controller::HistoryKeep,
    /// The newest resource sample of each running task, from its agent:
    /// telemetry, kept in memory and never replicated.
    usage: Arc<Mutex<HashMap<u64, crate::state::Usage>>>,
}

/// Maps a scheduler error to a gRPC status; retryable ones are `UNAVAILABLE`.
pub fn to_status(e: Error) -> Status {
    if e.is_retryable() {
        Status::unavailable(format!(
            "{e} (retry: the cluster is electing a leader or restarting)"
        ))
    } else if let Error::Config(m) = e {
        Status::failed_precondition(m)
    } else {
        Status::internal(e.to_string())
    }
}

fn refusal_status(r: Refusal) -> Status {
    let msg = r.to_string();
    match r {
        Refusal::Invalid { .. } => Status::invalid_argument(msg),
        Refusal::NoCapacity { .. } => Status::resource_exhausted(msg),
        Refusal::NotFound { .. } | Refusal::Gone { .. } => Status::not_found(msg),
        Refusal::NotYours { .. } => Status::permission_denied(msg),
        Refusal::Ended { .. } | Refusal::Limit { .. } => Status::failed_precondition(msg),
        Refusal::Denied { .. } => Status::permission_denied(msg),
    }
}

/// Resolves once `stop` is true, or its sender is gone.
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

fn fresh_key() -> String {
    format!(
        "auto-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

impl Api {
    /// The API over `member`; `peer_token` authenticates forwarded calls;
    /// its long-lived streams end when `stop` becomes true.
    pub fn new(
        member: MemberHandle,
        peer_token: Option<String>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Api {
        Api {
            forwarder: forward::Forwarder::new(peer_token.clone()),
            placer: Arc::new(placer::Placer::default()),
            member,
            peer_token,
            clients: Arc::new(Mutex::new(HashMap::new())),
            schedule_check: None,
            artifacts: None,
            stop,
            keep: Default::default(),
            usage: Arc::default(),
        }
    }

    /// Says what this member's history store keeps.
    pub fn with_history_keep(mut self, keep: crate::controller::HistoryKeep) -> Api {
        self.keep = keep;
        self
    }

    /// `stream`, ended early when the member stops serving.
    fn until_stopped<T: Send + 'static>(
        &self,
        mut stream: impl tokio_stream::Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<T, Status>> {
        use tokio_stream::StreamExt;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stop = stopped(self.stop.clone());
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    item = stream.next() => {
                        let Some(item) = item else { return };
                        if tx.send(item).await.is_err() {
                            return;
                        }
                    }
                    _ = &mut stop => return,
                    _ = tx.closed() => return,
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// Lets `Cron.Apply` check schedules with `check` (Hydra's parser).
    pub fn with_schedule_check(mut self, check: Option<ScheduleChecker>) -> Api {
        self.schedule_check = check;
        self
    }

    /// Lets `Deploy.PutArtifact`/`GetArtifact` use `store`.
    pub fn with_artifacts(mut self, store: Option<ArtifactStore>) -> Api {
        self.artifacts = store;
        self
    }

    fn artifacts(&self) -> Result<ArtifactStore, Status> {
        self.artifacts.clone().ok_or_else(|| {
            Status::failed_precondition("this member keeps no artifacts (started without a store)")
        })
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut cs = self
            .clients
            .lock()
            .map_err(|_| Status::internal("client cache poisoned"))?;
        if let Some(c) = cs.get(addr) {
            return Ok(c.clone());
        }
        let ch = charter_proto::tls::endpoint(addr, charter_proto::tls::Role::Member)
            .map_err(|e| Status::internal(format!("bad leader address {addr}: {e}")))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .connect_lazy();
        cs.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    fn authed<T>(&self, msg: T) -> Request<T> {
        charter_proto::conn::bearer(self.peer_token.as_deref(), msg)
    }

    async fn forward(&self, addr: &str, p: &Proposal) -> Result<Outcome, Error> {
        let ch = self.channel(addr).map_err(|_| Error::NoLeader)?;
        self.member.metrics().forwards.inc();
        self.forwarder.forward(addr, ch, p).await
    }

    /// Proposes `cmd` for `who` through the leader, retrying through elections.
    pub async fn submit(
        &self,
        who: &Principal,
        key: &str,
        cmd: Command,
    ) -> Result<Applied, Status> {
        let key = if key.is_empty() {
            fresh_key()
        } else {
            key.to_string()
        };
        self.submit_with(who, Some(key), cmd).await
    }

    /// [`Api::submit`] without an idempotency key, for commands that are
    /// harmless to apply twice (heartbeats, task reports): their outcomes
    /// are not kept in the state.
    pub async fn submit_unkeyed(&self, who: &Principal, cmd: Command) -> Result<Applied, Status> {
        self.submit_with(who, None, cmd).await
    }

    /// Refuses a non-admin `what`, and puts the refusal in the log so that
    /// `charter audit` shows it (`command` and `target` as the audit names
    /// them).
    pub async fn admin_only(
        &self,
        who: &Principal,
        what: &str,
        command: &str,
        target: String,
    ) -> Result<(), Status> {
        let Err(status) = require_admin(who, what) else {
            return Ok(());
        };
        let cmd = Command::Refused {
            command: command.to_string(),
            target,
            reason: status.message().to_string(),
        };
        // The refusal stands whether or not its record could be written.
        if let Err(e) = self.submit_unkeyed(who, cmd).await {
            tracing::warn!(principal = %who.name, command, error = %e.message(), "cannot log a refused call");
        }
        Err(status)
    }

    async fn submit_with(
        &self,
        who: &Principal,
        key: Option<String>,
        cmd: Command,
    ) -> Result<Applied, Status> {
        let p = Proposal {
            at: 0,
            principal: who.name.clone(),
            admin: who.admin,
            key,
            hint: None,
            cmd,
        };
        use tracing::Instrument;
        // The request's path (receive, forward or propose, reply) at DEBUG;
        // the driver logs the apply with the entry's index.
        let span =
            tracing::debug_span!("request", member = self.member.id(), principal = %who.name);
        async move {
            tracing::debug!(key = ?p.key, "receive");
            let deadline = Instant::now() + WRITE_RETRY;
            loop {
                let st = self.member.status();
                let res = if st.role == Role::Leader {
                    let mut p = p.clone();
                    let _held = self.placer.reserve(&self.member, &mut p);
                    tracing::debug!(hint = ?p.hint, "propose");
                    self.member.propose(p).await
                } else if let Some(addr) = st.leader_id.and_then(|l| st.members.get(&l)) {
                    tracing::debug!(leader = %addr, "forward");
                    self.forward(addr, &p).await
                } else {
                    Err(Error::NoLeader)
                };
                match res {
                    Ok(outcome) => {
                        tracing::debug!(ok = outcome.is_ok(), "reply");
                        return outcome.map_err(refusal_status);
                    }
                    Err(e) if e.is_retryable() && Instant::now() < deadline => {
                        tracing::debug!(error = %e, "retry");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "reply");
                        return Err(to_status(e));
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Waits until a linearizable read may be served here (unless `stale`).
    pub async fn barrier(&self, stale: bool) -> Result<(), Status> {
        if stale {
            return Ok(());
        }
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            let res = tokio::time::timeout(READ_TIMEOUT, self.member.read_barrier()).await;
            match res {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) if e.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Err(e)) => return Err(to_status(e)),
                Err(_) => return Err(to_status(Error::NoLeader)),
            }
        }
    }

    async fn forward_membership(
        &self,
        req: pb::AddMemberRequest,
        remove: bool,
    ) -> Result<pb::MembershipReply, Status> {
        let st = self.member.status();
        let Some(addr) = st.leader_id.and_then(|l| st.members.get(&l)) else {
            return Err(to_status(Error::NoLeader));
        };
        let mut client = pb::cluster_client::ClusterClient::new(self.channel(addr)?);
        let reply = if remove {
            client
                .remove_member(self.authed(pb::RemoveMemberRequest { id: req.id }))
                .await?
        } else {
            client.add_member(self.authed(req)).await?
        };
        Ok(reply.into_inner())
    }

    async fn change_member(
        &self,
        who: &Principal,
        id: u64,
        addr: Option<String>,
    ) -> Result<pb::MembershipReply, Status> {
        let verb = if addr.is_some() {
            "cluster add"
        } else {
            "cluster remove"
        };
        self.admin_only(
            who,
            "changing cluster membership",
            verb,
            format!("member {id}"),
        )
        .await?;
        if let Some(a) = &addr
            && a.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(Status::invalid_argument(format!(
                "member address `{a}` is not HOST:PORT with a numeric host, e.g. 127.0.0.1:7704"
            )));
        }
        let deadline = Instant::now() + WRITE_RETRY;
        loop {
            let res = if self.member.is_leader() {
                self.member.change_member(id, addr.clone()).await
            } else {
                let req = pb::AddMemberRequest {
                    id,
                    addr: addr.clone().unwrap_or_default(),
                };
                return self.forward_membership(req, addr.is_none()).await;
            };
            match res {
                Ok(members) => return Ok(convert::members(&members)),
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(to_status(e)),
            }
        }
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Api {
    type EventsStream = EventStream;

    async fn events(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.events_rpc(req).await
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        principal(&req)?;
        self.barrier(req.get_ref().stale).await?;
        let st = self.member.status();
        Ok(Response::new(pb::StatusReply {
            id: st.id,
            leader_id: st.leader_id.unwrap_or(0),
            term: st.term,
            commit_index: st.commit,
            applied_index: st.applied,
            role: st.role.as_str().to_string(),
            members: convert::members(&st.members).members,
            snapshot_index: st.snapshot_index,
        }))
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        Ok(Response::new(
            self.change_member(&who, r.id, Some(r.addr)).await?,
        ))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        Ok(Response::new(self.change_member(&who, r.id, None).await?))
    }

    async fn audit(
        &self,
        req: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditReply>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let only = auth::own_or_admin(&who, r.principal, "audit records")?;
        let n = match r.n {
            0 => 100,
            n => (n as usize).min(10_000),
        };
        let Some(h) = self.member.history() else {
            return Err(Status::failed_precondition(
                "this member keeps no history store, so no audit records",
            ));
        };
        let since = r.since_ms;
        let records = tokio::task::spawn_blocking({
            let h = h.clone();
            move || {
                h.audit(since, n, |a| {
                    only.as_ref().is_none_or(|p| a.principal == *p)
                })
            }
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::AuditReply {
            entries: records
                .into_iter()
                .map(|a| pb::AuditEntry {
                    index: a.index,
                    at_ms: a.at,
                    principal: a.principal,
                    command: a.command,
                    target: a.target,
                    outcome: a.outcome,
                })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl pb::nodes_server::Nodes for Api {
    async fn credential(
        &self,
        req: Request<pb::NodeCredentialRequest>,
    ) -> Result<Response<pb::NodeCredentialReply>, Status> {
        let who = principal(&req)?;
        let name = req.into_inner().name;
        self.admin_only(
            &who,
            "minting a node credential",
            "node credential",
            format!("node {}", name.chars().take(64).collect::<String>()),
        )
        .await?;
        let Some(peer) = self.peer_token.as_deref() else {
            return Err(Status::failed_precondition(
                "this member runs without tokens (--insecure): agents need no credential",
            ));
        };
        let credential = auth::node_credential(peer, &name).ok_or_else(|| {
            Status::invalid_argument(format!(
                "node name {:?}: {}",
                name.chars().take(64).collect::<String>(),
                charter_config::limits::NAME_RULE
            ))
        })?;
        Ok(Response::new(pb::NodeCredentialReply { credential }))
    }

    async fn register(
        &self,
        req: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::NodeReply>, Status> {
        let (who, scoped) = agent_caller(&req, "registering a node")?;
        let r = req.into_inner();
        own_node(&scoped, &r.name, "register")?;
        use charter_config::limits;
        if !limits::name(&r.name) {
            return Err(Status::invalid_argument(format!(
                "node name {:?}: {}",
                r.name.chars().take(64).collect::<String>(),
                limits::NAME_RULE
            )));
        }
        if !r.pool.is_empty() && !limits::name(&r.pool) {
            return Err(Status::invalid_argument(format!(
                "pool name {:?}: {}",
                r.pool.chars().take(64).collect::<String>(),
                limits::NAME_RULE
            )));
        }
        let labels: std::collections::BTreeMap<String, String> = r.labels.into_iter().collect();
        limits::labels(&labels).map_err(Status::invalid_argument)?;
        let cap = r.capacity.unwrap_or_default();
        let cmd = Command::RegisterNode {
            name: r.name,
            capacity: crate::state::Resources::from(&cap),
            labels,
            pool: if r.pool.is_empty() {
                "default".into()
            } else {
                r.pool
            },
            cost_per_hour: r.cost_per_hour,
            ttl_ms: (r.ttl_ms > 0).then_some(r.ttl_ms),
            agent: (!r.agent_addr.is_empty()).then_some(AgentEndpoint {
                addr: r.agent_addr,
                secret: r.agent_secret,
            }),
        };
        match self.submit(&who, &r.idempotency_key, cmd).await? {
            Applied::Node(n) => Ok(Response::new(pb::NodeReply {
                node: Some(convert::node(&n)),
            })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::NodeReply>, Status> {
        let (who, scoped) = agent_caller(&req, "a node heartbeat")?;
        let name = req.into_inner().name;
        own_node(&scoped, &name, "heartbeat for")?;
        match self
            .submit_unkeyed(&who, Command::Heartbeat { name })
            .await?
        {
            Applied::Node(n) => Ok(Response::new(pb::NodeReply {
                node: Some(convert::node(&n)),
            })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::NodeReply>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        self.admin_only(
            &who,
            "removing a node",
            "node remove",
            format!("node {}", r.name.chars().take(64).collect::<String>()),
        )
        .await?;
        let cmd = Command::RemoveNode { name: r.name };
        match self.submit(&who, &r.idempotency_key, cmd).await? {
            Applied::Node(n) => Ok(Response::new(pb::NodeReply {
                node: Some(convert::node(&n)),
            })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn set_draining(
        &self,
        req: Request<pb::SetDrainingRequest>,
    ) -> Result<Response<pb::NodeReply>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        self.admin_only(
            &who,
            "draining a node",
            if r.draining {
                "node drain"
            } else {
                "node undrain"
            },
            format!("node {}", r.name.chars().take(64).collect::<String>()),
        )
        .await?;
        let cmd = Command::SetDraining {
            name: r.name,
            draining: r.draining,
        };
        match self.submit(&who, &r.idempotency_key, cmd).await? {
            Applied::Node(n) => Ok(Response::new(pb::NodeReply {
                node: Some(convert::node(&n)),
            })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn list(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesReply>, Status> {
        principal(&req)?;
        self.barrier(req.get_ref().stale).await?;
        let nodes = self
            .member
            .read(|s| s.nodes.values().map(convert::node).collect());
        Ok(Response::new(pb::ListNodesReply { nodes }))
    }

    async fn pools(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListPoolsReply>, Status> {
        principal(&req)?;
        self.barrier(req.get_ref().stale).await?;
        let pools = self.member.read(|s| {
            s.nodes
                .pools
                .values()
                .map(|p| {
                    let held = s.nodes.values().filter(|n| n.pool == p.name).count();
                    convert::pool(p, u32::try_from(held).unwrap_or(u32::MAX))
                })
                .collect()
        });
        Ok(Response::new(pb::ListPoolsReply { pools }))
    }
}

fn lease_reply(a: Applied) -> Result<Response<pb::LeaseReply>, Status> {
    match a {
        Applied::Lease(l) => Ok(Response::new(pb::LeaseReply {
            lease: Some(convert::lease(&l)),
        })),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `Cluster.Events`' stream.
pub type EventStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::EventMessage, Status>> + Send>>;

type ExecStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ExecOutput, Status>> + Send>>;

#[tonic::async_trait]
impl pb::leases_server::Leases for Api {
    type ExecStream = ExecStream;

    async fn exec(&self, req: Request<pb::ExecRequest>) -> Result<Response<ExecStream>, Status> {
        let who = principal(&req)?;
        self.barrier(false).await?;
        let r = req.into_inner();
        let id = r.lease_id;
        let found = self.member.read(|s| {
            let l = s.leases.get(&id)?;
            let node = l.nodes.first().and_then(|n| s.nodes.get(n));
            Some((
                l.principal.clone(),
                l.state,
                node.map(|n| (n.name.clone(), n.agent.clone())),
            ))
        });
        let (owner, state, node) =
            found.ok_or_else(|| Status::not_found(format!("lease {id} not found")))?;
        if owner != who.name && !who.admin {
            return Err(Status::permission_denied(format!(
                "lease {id} belongs to {owner}, not to {}",
                who.name
            )));
        }
        let (Some((name, agent)), LeaseState::Granted) = (node, state) else {
            return Err(Status::failed_precondition(format!(
                "lease {id} is {state}; commands run only in a granted lease"
            )));
        };
        let (ch, q) = tasks::agent_request(&name, agent.as_ref(), r).await?;
        let stream = pb::agent_client::AgentClient::new(ch)
            .exec(q)
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(self.until_stopped(stream))))
    }
    async fn request(
        &self,
        req: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let key = r.idempotency_key.clone();
        let spec = crate::state::LeaseSpec::try_from(r)?;
        lease_reply(self.submit(&who, &key, Command::RequestLease(spec)).await?)
    }

    async fn renew(
        &self,
        req: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        let who = principal_or(&req, auth::Scope::Deployer)?;
        let r = req.into_inner();
        if who.scope == auth::Scope::Deployer
            && !self.member.read(|s| deploy::deployment_lease(s, r.id))
        {
            return Err(Status::permission_denied(format!(
                "lease {}: a deployer token renews only deployments' leases",
                r.id
            )));
        }
        if r.duration_ms == 0 {
            return Err(Status::invalid_argument(
                "renewal duration is zero; pass --for, e.g. --for 1h",
            ));
        }
        let cmd = Command::RenewLease {
            id: r.id,
            duration_ms: r.duration_ms,
        };
        lease_reply(self.submit(&who, &r.idempotency_key, cmd).await?)
    }

    async fn revoke(
        &self,
        req: Request<pb::ReleaseLeaseRequest>,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        self.admin_only(
            &who,
            "revoking a lease",
            "lease revoke",
            format!("lease {}", r.id),
        )
        .await?;
        lease_reply(
            self.submit(&who, &r.idempotency_key, Command::RevokeLease { id: r.id })
                .await?,
        )
    }

    async fn set_quota(
        &self,
        req: Request<pb::SetQuotaRequest>,
    ) -> Result<Response<pb::QuotaReply>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        self.admin_only(
            &who,
            "setting a quota",
            "quota set",
            format!(
                "quota {}",
                r.quota
                    .as_ref()
                    .map(|q| q.principal.chars().take(64).collect::<String>())
                    .unwrap_or_default()
            ),
        )
        .await?;
        let q = r.quota.unwrap_or_default();
        let quota = crate::state::Quota {
            max_cpu_millis: q.max_cpu_millis,
            max_leases: q.max_leases,
            max_duration_ms: q.max_duration_ms,
        };
        match self
            .submit(
                &who,
                &r.idempotency_key,
                Command::SetQuota {
                    principal: q.principal,
                    quota,
                },
            )
            .await?
        {
            Applied::Quota { principal, quota } => Ok(Response::new(pb::QuotaReply {
                quota: Some(convert::quota(&principal, &quota)),
            })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn list_quotas(
        &self,
        req: Request<pb::ListQuotasRequest>,
    ) -> Result<Response<pb::ListQuotasReply>, Status> {
        principal(&req)?;
        self.barrier(false).await?;
        let quotas = self.member.read(|s| {
            s.leases
                .quotas
                .iter()
                .map(|(p, q)| convert::quota(p, q))
                .collect()
        });
        Ok(Response::new(pb::ListQuotasReply { quotas }))
    }

    async fn why(
        &self,
        req: Request<pb::ShowLeaseRequest>,
    ) -> Result<Response<pb::WhyReply>, Status> {
        let who = principal(&req)?;
        self.barrier(false).await?;
        let id = req.get_ref().id;
        let reply = self.member.read(|s| {
            let l = s
                .leases
                .get(&id)
                .filter(|l| l.principal == who.name || who.admin)?;
            let (reasons, summary) = match l.state {
                LeaseState::Pending => s.why_pending(l),
                LeaseState::Granted => (vec![], format!("granted on {}", l.nodes.join(", "))),
                other => (vec![], format!("{other}; nothing is waiting")),
            };
            Some(pb::WhyReply {
                state: l.state.as_str().to_string(),
                reasons,
                summary,
            })
        });
        reply.map(Response::new).ok_or_else(|| {
            Status::not_found(format!(
                "lease {id} not found; `charter lease list` shows yours"
            ))
        })
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseLeaseRequest>,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        lease_reply(
            self.submit(&who, &r.idempotency_key, Command::ReleaseLease { id: r.id })
                .await?,
        )
    }

    async fn show(
        &self,
        req: Request<pb::ShowLeaseRequest>,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        let who = principal(&req)?;
        self.barrier(false).await?;
        let id = req.get_ref().id;
        match self.lease_anywhere(id)? {
            l if l.principal == who.name || who.admin => lease_reply(Applied::Lease(l)),
            _ => Err(Status::not_found(format!(
                "lease {id} not found; `charter lease list` shows yours"
            ))),
        }
    }

    async fn list(
        &self,
        req: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesReply>, Status> {
        let who = principal(&req)?;
        let r = req.get_ref();
        self.barrier(r.stale).await?;
        if !r.key.is_empty() {
            // A request by its key: the caller's own keys only.
            let id = self
                .member
                .read(|s| match s.kept_outcome(&who.name, &r.key) {
                    Some(KeyOutcome::Lease { id }) => Some(*id),
                    _ => None,
                });
            let leases = match id {
                Some(id) => vec![convert::lease(&self.lease_anywhere(id)?)],
                None => Vec::new(),
            };
            return Ok(Response::new(pb::ListLeasesReply { leases }));
        }
        let mine = |l: &crate::state::Lease| who.admin || l.principal == who.name;
        let mut leases: Vec<pb::Lease> = self.member.read(|s| {
            if r.all {
                s.leases
                    .values()
                    .filter(|l| mine(l))
                    .map(|l| convert::lease(l))
                    .collect()
            } else {
                history::live_leases(s)
                    .into_iter()
                    .filter(|l| mine(l))
                    .map(convert::lease)
                    .collect()
            }
        });
        if r.all {
            // And what left the live state (the newest kept), in id order.
            let present: std::collections::HashSet<u64> = leases.iter().map(|l| l.id).collect();
            leases.extend(
                self.leases_kept(|l| mine(l) && !present.contains(&l.id))
                    .iter()
                    .map(convert::lease),
            );
            leases.sort_by_key(|l| l.id);
        }
        Ok(Response::new(pb::ListLeasesReply { leases }))
    }
}

/// The peer service: raft messages in, forwarded writes handled on the leader.
#[derive(Clone)]
pub struct Peer {
    member: MemberHandle,
    placer: Arc<placer::Placer>,
    /// Becomes true when the member stops serving.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Peer {
    /// The peer service of `member`, placing forwarded requests with `api`'s
    /// overlay; its raft streams end when `api`'s member stops serving.
    pub fn new(member: MemberHandle, api: &Api) -> Peer {
        Peer {
            member,
            placer: api.placer.clone(),
            stop: api.stop.clone(),
        }
    }

    /// Hands a batch's messages to the raft driver, in order.
    fn step_all(&self, batch: pb::RaftBatch) -> Result<(), Status> {
        for b in batch.msgs {
            let m = ::raft::eraftpb::Message::parse_from_bytes(&b)
                .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
            self.member.step(m).map_err(to_status)?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::raft_peer_server::RaftPeer for Peer {
    async fn send(&self, req: Request<pb::RaftBatch>) -> Result<Response<pb::RaftAck>, Status> {
        require_admin(&principal(&req)?, "raft peer traffic")?;
        auth::member_certificate(&req)?;
        self.step_all(req.into_inner())?;
        Ok(Response::new(pb::RaftAck {}))
    }

    async fn stream(
        &self,
        req: Request<Streaming<pb::RaftBatch>>,
    ) -> Result<Response<pb::RaftAck>, Status> {
        require_admin(&principal(&req)?, "raft peer traffic")?;
        auth::member_certificate(&req)?;
        let mut batches = req.into_inner();
        let stop = stopped(self.stop.clone());
        tokio::pin!(stop);
        loop {
            tokio::select! {
                batch = batches.message() => match batch? {
                    Some(batch) => self.step_all(batch)?,
                    None => break,
                },
                // A peer's stream may sit idle (a follower's, to a leader
                // that stopped sending); the server's graceful shutdown
                // would wait for it.
                _ = &mut stop => break,
            }
        }
        Ok(Response::new(pb::RaftAck {}))
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftAck>, Status> {
        require_admin(&principal(&req)?, "raft peer traffic")?;
        auth::member_certificate(&req)?;
        let mut chunks = req.into_inner();
        let mut head: Option<::raft::eraftpb::Message> = None;
        let mut data = Vec::new();
        while let Some(c) = chunks.message().await? {
            if head.is_none() {
                head = Some(
                    ::raft::eraftpb::Message::parse_from_bytes(&c.message).map_err(|e| {
                        Status::invalid_argument(format!("undecodable snapshot message: {e}"))
                    })?,
                );
            }
            data.extend_from_slice(&c.data);
        }
        let mut m = head.ok_or_else(|| Status::invalid_argument("an empty snapshot stream"))?;
        if m.get_msg_type() != ::raft::eraftpb::MessageType::MsgSnapshot {
            return Err(Status::invalid_argument(
                "the snapshot stream carries no MsgSnapshot",
            ));
        }
        m.mut_snapshot().set_data(data.into());
        self.member.step(m).map_err(to_status)?;
        Ok(Response::new(pb::RaftAck {}))
    }

    async fn forward(
        &self,
        req: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardReply>, Status> {
        require_admin(&principal(&req)?, "forwarding writes")?;
        auth::member_certificate(&req)?;
        let mut p: Proposal = codec::decode(codec::Kind::Forward, &req.get_ref().proposal)
            .map_err(|e| Status::invalid_argument(format!("undecodable forwarded write: {e}")))?;
        let _held = if self.member.is_leader() {
            self.placer.reserve(&self.member, &mut p)
        } else {
            None
        };
        let outcome = self.member.propose(p).await.map_err(to_status)?;
        Ok(Response::new(pb::ForwardReply {
            outcome: codec::encode(codec::Kind::Outcome, &outcome),
        }))
    }

    async fn forward_batch(
        &self,
        req: Request<pb::ForwardBatchRequest>,
    ) -> Result<Response<pb::ForwardBatchReply>, Status> {
        forward::serve_batch(&self.member, &self.placer, req).await
    }
}
