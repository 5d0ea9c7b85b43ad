//! Tasks (for people and controllers) and Agents (for agents): submitting,
//! inspecting and cancelling tasks, streaming their logs from the agent
//! through this member, and the agents' assignment watch and reports.
//!
//! Over 500 lines: the Tasks and Agents services, which share the task's record.

use super::auth::{Scope, agent_caller, own_node, principal, principal_or};
use super::{Api, convert};
use crate::state::AgentEndpoint;
use crate::state::{Applied, Command, HealthState, State, TaskReport, TaskState};
use charter_proto as pb;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// How often a watch looks for a new applied index.
const WATCH_POLL: Duration = Duration::from_millis(10);
/// A watch resends the assignments this often even when nothing changed.
const WATCH_KEEPALIVE: Duration = Duration::from_secs(5);

fn task_reply(a: Applied) -> Result<Response<pb::TaskReply>, Status> {
    match a {
        Applied::Task { task, lease } => Ok(Response::new(pb::TaskReply {
            task: Some(convert::task(&task, Some(&lease))),
            lease: Some(convert::lease(&lease)),
        })),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// Most bytes of one page of a node's assignments (gRPC's default limit
/// for a message is 4 MiB).
const PAGE_BYTES: usize = 1 << 20;

/// The assignments of `node` in wire form, in pages of at most about
/// [`PAGE_BYTES`] (each but the last marked `more`). The agent needs
/// neither a lease's reason nor its constraints: they are left out.
fn assignments(s: &State, node: &str, applied: u64) -> Vec<pb::Assignments> {
    let items = s
        .assignments(node)
        .into_iter()
        .map(|(l, t)| pb::Assignment {
            task: t.as_ref().map(|t| convert::task(t, Some(&l))),
            lease: Some(pb::Lease {
                reason: String::new(),
                constraints: Vec::new(),
                ..convert::lease(&l)
            }),
        });
    paged(items, applied, PAGE_BYTES)
}

/// Splits `items` into pages of at most `max` encoded bytes (a single item
/// larger than that gets a page of its own); there is always one page.
fn paged(
    items: impl Iterator<Item = pb::Assignment>,
    applied: u64,
    max: usize,
) -> Vec<pb::Assignments> {
    use prost::Message;
    let page = |items| pb::Assignments {
        items,
        applied_index: applied,
        more: true,
    };
    let mut pages = Vec::new();
    let (mut cur, mut bytes) = (Vec::new(), 0usize);
    for it in items {
        let n = it.encoded_len() + 8;
        if !cur.is_empty() && bytes + n > max {
            pages.push(page(std::mem::take(&mut cur)));
            bytes = 0;
        }
        bytes += n;
        cur.push(it);
    }
    pages.push(page(cur));
    if let Some(last) = pages.last_mut() {
        last.more = false;
    }
    pages
}

impl Api {
    /// `t` with its agent's newest resource sample, when this member has one.
    fn with_usage(&self, mut t: pb::Task) -> pb::Task {
        if let Ok(u) = self.usage.lock()
            && let Some(u) = u.get(&t.id)
        {
            t.usage = Some(pb::Usage {
                rss_bytes: u.rss_bytes,
                cpu_ms: u.cpu_ms,
                sampled_at_ms: u.sampled_at,
            });
        }
        t
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
    s
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;
type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Assignments, Status>> + Send>>;

#[tonic::async_trait]
impl pb::tasks_server::Tasks for Api {
    type LogsStream = ChunkStream;

    async fn submit(
        &self,
        req: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::TaskReply>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let lease = crate::state::LeaseSpec::try_from(r.lease.unwrap_or_default())?;
        let task = crate::state::TaskSpec::try_from(r.task.unwrap_or_default())?;
        let artifacts = !task.artifact_out.is_empty() || !task.artifact_in.is_empty();
        if artifacts && !who.admin {
            return Err(Status::permission_denied(
                "artifact_out and artifact_in are set by the deployer for builds and servers; drop them from the task",
            ));
        }
        task_reply(
            self.submit(
                &who,
                &r.idempotency_key,
                Command::SubmitTask {
                    lease: Box::new(lease),
                    task: Box::new(task),
                },
            )
            .await?,
        )
    }

    async fn show(
        &self,
        req: Request<pb::ShowTaskRequest>,
    ) -> Result<Response<pb::TaskReply>, Status> {
        let who = principal(&req)?;
        self.barrier(req.get_ref().stale).await?;
        let id = req.get_ref().id;
        match self.task_anywhere(id)? {
            (t, l) if t.principal == who.name || who.admin => Ok(Response::new(pb::TaskReply {
                task: Some(self.with_usage(convert::task(&t, l.as_ref()))),
                lease: l.as_ref().map(convert::lease),
            })),
            (t, _) => Err(Status::permission_denied(format!(
                "task {id} belongs to {}, not to {}",
                t.principal, who.name
            ))),
        }
    }

    async fn list(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksReply>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        self.barrier(r.stale).await?;
        if !r.key.is_empty() {
            // A submit by its key: the caller's own keys only.
            let id = self
                .member
                .read(|s| match s.kept_outcome(&who.name, &r.key) {
                    Some(crate::state::KeyOutcome::Task { id }) => Some(*id),
                    _ => None,
                });
            let tasks = match id {
                Some(id) => {
                    let (t, l) = self.task_anywhere(id)?;
                    let mut t = self.with_usage(convert::task(&t, l.as_ref()));
                    if let Some(spec) = t.spec.as_mut() {
                        spec.env.clear();
                    }
                    vec![t]
                }
                None => Vec::new(),
            };
            return Ok(Response::new(pb::ListTasksReply { tasks }));
        }
        let want = if r.state.is_empty() {
            None
        } else {
            Some(
                r.state
                    .parse::<TaskState>()
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            )
        };
        let wanted = |t: &crate::state::Task| {
            (who.admin || t.principal == who.name)
                && match want {
                    Some(st) => t.state == st,
                    None => r.all || !t.state.is_ended(),
                }
        };
        // A listing shows no env (`task show` does): up to 64 KiB a task
        // that no table prints.
        let listed = |t: &crate::state::Task, l: Option<&crate::state::Lease>| {
            let mut t = self.with_usage(convert::task(t, l));
            if let Some(spec) = t.spec.as_mut() {
                spec.env.clear();
            }
            t
        };
        let mut tasks: Vec<pb::Task> = self.member.read(|s| {
            s.tasks
                .values()
                .filter(|t| wanted(t))
                .map(|t| listed(t, s.leases.get(&t.lease).map(|l| &**l)))
                .collect()
        });
        if r.all || want.is_some_and(|w| w.is_ended()) {
            // And what left the live state (the newest kept), in id order.
            let present: std::collections::HashSet<u64> = tasks.iter().map(|t| t.id).collect();
            let h = self.member.history();
            tasks.extend(
                self.tasks_kept(|t| wanted(t) && !present.contains(&t.id))
                    .iter()
                    .map(|t| listed(t, h.and_then(|h| h.lease(t.lease)).as_ref())),
            );
            tasks.sort_by_key(|t| t.id);
        }
        Ok(Response::new(pb::ListTasksReply { tasks }))
    }

    async fn cancel(
        &self,
        req: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::TaskReply>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        task_reply(
            self.submit(&who, &r.idempotency_key, Command::CancelTask { id: r.id })
                .await?,
        )
    }

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<ChunkStream>, Status> {
        let who = principal_or(&req, Scope::Deployer)?;
        self.barrier(false).await?;
        let r = req.into_inner();
        let id = r.task_id;
        if who.scope == Scope::Deployer
            && !self.member.read(|s| super::deploy::deployment_task(s, id))
        {
            return Err(Status::permission_denied(format!(
                "task {id}: a deployer token reads only deployments' logs"
            )));
        }
        let found = self.member.read(|s| {
            let t = s.tasks.get(&id)?;
            let node = s
                .leases
                .get(&t.lease)
                .and_then(|l| l.nodes.first())
                .and_then(|n| s.nodes.get(n))
                .map(|n| (n.name.clone(), n.agent.clone()));
            Some((t.principal.clone(), t.started_at.is_some(), node))
        });
        let (owner, started, node) =
            found.ok_or_else(|| Status::not_found(format!("task {id} not found")))?;
        if owner != who.name && !who.admin {
            return Err(Status::permission_denied(format!(
                "task {id} belongs to {owner}, not to {}",
                who.name
            )));
        }
        let Some((name, agent)) = node else {
            return Err(Status::failed_precondition(if started {
                format!("the node of task {id} is gone, and its logs with it")
            } else {
                format!("task {id} has not been placed on a node yet; try again once it runs")
            }));
        };
        let (ch, q) = agent_request(
            &name,
            agent.as_ref(),
            pb::LogsRequest {
                task_id: id,
                follow: r.follow,
            },
        )
        .await?;
        let stream = pb::agent_client::AgentClient::new(ch)
            .logs(q)
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(self.until_stopped(stream))))
    }
}

/// A channel to node `name`'s agent and `msg` with the agent's secret on it.
pub(super) async fn agent_request<T>(
    name: &str,
    agent: Option<&AgentEndpoint>,
    msg: T,
) -> Result<(Channel, Request<T>), Status> {
    let Some(agent) = agent else {
        return Err(Status::failed_precondition(format!(
            "node {name} has no agent (it was registered by hand), so nothing runs there"
        )));
    };
    let ch = charter_proto::tls::endpoint(&agent.addr, charter_proto::tls::Role::Agent)
        .map_err(|e| Status::internal(format!("bad agent address {}: {e}", agent.addr)))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| {
            Status::unavailable(format!(
                "cannot reach the agent of node {name} at {}: {e}",
                agent.addr
            ))
        })?;
    Ok((ch, charter_proto::conn::bearer(Some(&agent.secret), msg)))
}

#[tonic::async_trait]
impl pb::agents_server::Agents for Api {
    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let (_, scoped) = agent_caller(&req, "watching a node's assignments")?;
        let node = req.into_inner().node;
        own_node(&scoped, &node, "watch the assignments of")?;
        let member = self.member.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::Assignments, Status>>(4);
        tokio::spawn(async move {
            let mut last: Option<Vec<pb::Assignments>> = None;
            let mut seen_index = u64::MAX;
            let mut sent_at = Instant::now();
            loop {
                let applied = member.status().applied;
                if applied != seen_index || sent_at.elapsed() >= WATCH_KEEPALIVE {
                    seen_index = applied;
                    let mut pages = member.read(|s| assignments(s, &node, applied));
                    // Compared without the index, which moves with every write.
                    pages.iter_mut().for_each(|p| p.applied_index = 0);
                    if last.as_ref() != Some(&pages) || sent_at.elapsed() >= WATCH_KEEPALIVE {
                        last = Some(pages.clone());
                        sent_at = Instant::now();
                        for mut p in pages {
                            p.applied_index = applied;
                            if tx.send(Ok(p)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(WATCH_POLL).await;
            }
        });
        // The agent reconnects to another member when this one stops.
        Ok(Response::new(Box::pin(self.until_stopped(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))))
    }

    async fn usage(
        &self,
        req: Request<pb::UsageReport>,
    ) -> Result<Response<pb::UsageReply>, Status> {
        let (_, scoped) = agent_caller(&req, "reporting resource usage")?;
        let r = req.into_inner();
        own_node(&scoped, &r.node, "report the usage of")?;
        // Only samples of tasks running on the reporting node are kept, and
        // samples of tasks no longer running here go.
        let running: std::collections::HashSet<u64> = self.member.read(|s| {
            r.tasks
                .iter()
                .filter(|u| {
                    s.tasks.get(&u.task_id).is_some_and(|t| {
                        !t.state.is_ended()
                            && s.leases
                                .get(&t.lease)
                                .is_some_and(|l| l.nodes.contains(&r.node))
                    })
                })
                .map(|u| u.task_id)
                .collect()
        });
        let live: std::collections::HashSet<u64> = {
            let mut ids: Vec<u64> = self
                .usage
                .lock()
                .map(|u| u.keys().copied().collect())
                .unwrap_or_default();
            ids.retain(|id| !running.contains(id));
            self.member.read(|s| {
                ids.into_iter()
                    .filter(|id| s.tasks.get(id).is_some_and(|t| !t.state.is_ended()))
                    .collect()
            })
        };
        if let Ok(mut u) = self.usage.lock() {
            u.retain(|id, _| running.contains(id) || live.contains(id));
            for t in r.tasks.into_iter().filter(|t| running.contains(&t.task_id)) {
                if let Some(x) = t.usage {
                    u.insert(
                        t.task_id,
                        crate::state::Usage {
                            rss_bytes: x.rss_bytes,
                            cpu_ms: x.cpu_ms,
                            sampled_at: x.sampled_at_ms,
                        },
                    );
                }
            }
        }
        Ok(Response::new(pb::UsageReply {}))
    }

    async fn report(
        &self,
        req: Request<pb::TaskReportRequest>,
    ) -> Result<Response<pb::TaskReply>, Status> {
        let (who, scoped) = agent_caller(&req, "reporting on a task")?;
        let r = req.into_inner();
        own_node(&scoped, &r.node, "report tasks of")?;
        let state: TaskState =
            r.state
                .parse()
                .map_err(|e: charter_config::named::UnknownName| {
                    Status::invalid_argument(e.to_string())
                })?;
        let health: HealthState =
            r.health
                .parse()
                .map_err(|e: charter_config::named::UnknownName| {
                    Status::invalid_argument(e.to_string())
                })?;
        let report = TaskReport {
            id: r.task_id,
            node: r.node,
            state,
            exit_code: r.exit_code,
            starts: r.starts,
            health,
            // An agent's note, kept short (it travels in every assignment list).
            message: cut(r.message, charter_config::limits::TEXT_MAX),
            // Samples go through `Usage`, never the log.
            usage: None,
            ports: r
                .ports
                .into_iter()
                .filter_map(|(k, v)| Some((k, u16::try_from(v).ok()?)))
                .collect(),
            artifact: r.artifact,
        };
        task_reply(
            self.submit_unkeyed(&who, Command::ReportTask(report))
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_assignment_list_goes_in_pages_under_the_limit() {
        use prost::Message;
        let item = |id| pb::Assignment {
            lease: Some(pb::Lease {
                id,
                reason: "r".repeat(1000),
                ..Default::default()
            }),
            task: None,
        };
        let pages = paged((0..100).map(item), 7, 10_000);
        assert!(pages.len() >= 10, "{} pages", pages.len());
        for p in &pages[..pages.len() - 1] {
            assert!(p.more && p.encoded_len() <= 10_000 + 16);
        }
        assert!(!pages[pages.len() - 1].more);
        let ids: Vec<u64> = pages
            .iter()
            .flat_map(|p| p.items.iter().map(|i| i.lease.as_ref().unwrap().id))
            .collect();
        assert_eq!(ids, (0..100).collect::<Vec<_>>(), "every item, in order");
        let empty = paged(std::iter::empty(), 7, 10_000);
        assert_eq!(empty.len(), 1, "an empty list is one page");
        assert!(!empty[0].more && empty[0].applied_index == 7);
    }
}
