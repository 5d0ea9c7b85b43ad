//! Domain types to protobuf and back, at the edge.

use crate::state::{
    Amp, Check, Constraint, Health, Lease, LeaseSpec, Node, PoolOffer, Prefer, Quota, Resources,
    Restart, Task, TaskSpec,
};
use charter_config::limits;
use charter_proto as pb;
use std::collections::BTreeMap;
use tonic::Status;

pub fn resources_in(r: &pb::Resources) -> Resources {
    Resources {
        cpu_millis: r.cpu_millis,
        memory_bytes: r.memory_bytes,
        disk_bytes: r.disk_bytes,
        gpus: r.gpus,
    }
}

pub fn resources_out(r: &Resources) -> pb::Resources {
    pb::Resources {
        cpu_millis: r.cpu_millis,
        memory_bytes: r.memory_bytes,
        disk_bytes: r.disk_bytes,
        gpus: r.gpus,
    }
}

pub fn node(n: &Node) -> pb::Node {
    pb::Node {
        name: n.name.clone(),
        capacity: Some(resources_out(&n.capacity)),
        allocated: Some(resources_out(&n.allocated)),
        labels: n.labels.clone().into_iter().collect(),
        pool: n.pool.clone(),
        cost_per_hour: n.cost_per_hour,
        state: n.state.as_str().to_string(),
        registered_at_ms: n.registered_at,
        leases: n.leases.len() as u32,
        ttl_ms: n.ttl_ms.unwrap_or(0),
        last_seen_ms: n.last_seen,
        agent_addr: n.agent.as_ref().map(|a| a.addr.clone()).unwrap_or_default(),
        lease_ids: n.leases.iter().copied().collect(),
    }
}

pub fn pool(p: &PoolOffer, nodes: u32) -> pb::Pool {
    pb::Pool {
        name: p.name.clone(),
        max_nodes: p.max_nodes,
        capacity: Some(resources_out(&p.capacity)),
        labels: p.labels.clone().into_iter().collect(),
        cost_per_hour: p.cost_per_hour,
        idle_ms: p.idle_ms,
        nodes,
    }
}

pub fn lease(l: &Lease) -> pb::Lease {
    pb::Lease {
        id: l.id,
        principal: l.principal.clone(),
        nodes: l.nodes.clone(),
        resources: Some(resources_out(&l.spec.resources)),
        state: l.state.as_str().to_string(),
        granted_at_ms: l.granted_at,
        expires_at_ms: l.expires_at,
        fencing_token: l.fencing_token,
        reason: l.spec.reason.clone(),
        ended_at_ms: l.ended_at.unwrap_or(0),
        requested_at_ms: l.requested_at,
        wait_until_ms: l.wait_until,
        priority: l.spec.priority,
        cost_per_hour: l.cost_per_hour,
        cost: l.cost(),
        max_total_ms: l.spec.max_total_ms,
        constraints: l.spec.constraints.iter().map(|c| c.to_string()).collect(),
        deadline_ms: l.spec.deadline.unwrap_or(0),
        gpu_ids: l
            .gpu_ids
            .iter()
            .flat_map(|(n, ids)| ids.iter().map(move |g| format!("{n}:{g}")))
            .collect(),
        duration_ms: l.spec.duration_ms,
    }
}

/// A limit of [`charter_config::limits`] as `INVALID_ARGUMENT`.
fn within(r: Result<(), String>) -> Result<(), Status> {
    r.map_err(|e| Status::invalid_argument(format!("{e}; nothing was changed")))
}

/// A lease request from the wire, checked: every problem is `INVALID_ARGUMENT`.
pub fn lease_spec(r: pb::LeaseRequest) -> Result<LeaseSpec, Status> {
    within(limits::reason(&r.reason))?;
    within(limits::constraints(&r.constraints))?;
    if r.duration_ms == 0 {
        return Err(Status::invalid_argument(
            "lease duration is zero; pass --for, e.g. --for 2h",
        ));
    }
    let constraints = r
        .constraints
        .iter()
        .map(|c| Constraint::parse(c).map_err(Status::invalid_argument))
        .collect::<Result<Vec<_>, _>>()?;
    let prefer = Prefer::parse(&r.prefer).map_err(Status::invalid_argument)?;
    if let Some(c) = r.max_cost_per_hour
        && !(c.is_finite() && c >= 0.0)
    {
        return Err(Status::invalid_argument(format!(
            "max cost {c} is not a price >= 0"
        )));
    }
    if r.max_total_ms != 0 && r.max_total_ms < r.duration_ms {
        return Err(Status::invalid_argument(
            "max total is shorter than the duration; raise --max-total",
        ));
    }
    Ok(LeaseSpec {
        resources: resources_in(&r.resources.unwrap_or_default()),
        constraints,
        count: r.count.max(1),
        duration_ms: r.duration_ms,
        max_total_ms: r.max_total_ms,
        priority: r.priority,
        wait_ms: r.wait_ms,
        max_cost_per_hour: r.max_cost_per_hour,
        prefer,
        deadline: r.deadline_ms,
        reason: r.reason,
    })
}

pub fn members(m: &BTreeMap<u64, String>) -> pb::MembershipReply {
    pb::MembershipReply {
        members: m
            .iter()
            .map(|(id, addr)| pb::Member {
                id: *id,
                addr: addr.clone(),
            })
            .collect(),
    }
}

pub fn quota(principal: &str, q: &Quota) -> pb::Quota {
    pb::Quota {
        principal: principal.to_string(),
        max_cpu_millis: q.max_cpu_millis,
        max_leases: q.max_leases,
        max_duration_ms: q.max_duration_ms,
    }
}

pub fn task(t: &Task, l: Option<&Lease>) -> pb::Task {
    pb::Task {
        id: t.id,
        principal: t.principal.clone(),
        lease_id: t.lease,
        spec: Some(task_spec_out(&t.spec)),
        state: t.state.as_str().to_string(),
        exit_code: t.exit_code,
        starts: t.starts,
        health: t.health.clone(),
        submitted_at_ms: t.submitted_at,
        started_at_ms: t.started_at.unwrap_or(0),
        ended_at_ms: t.ended_at.unwrap_or(0),
        message: t.message.clone(),
        node: l.and_then(|l| l.nodes.first().cloned()).unwrap_or_default(),
        usage: t.usage.map(|u| pb::Usage {
            rss_bytes: u.rss_bytes,
            cpu_ms: u.cpu_ms,
            sampled_at_ms: u.sampled_at,
        }),
        ports: t
            .ports
            .iter()
            .map(|(k, v)| (k.clone(), u32::from(*v)))
            .collect(),
    }
}

fn task_spec_out(s: &TaskSpec) -> pb::TaskSpec {
    pb::TaskSpec {
        name: s.name.clone(),
        amp: s.amp.as_str().to_string(),
        command: s.command.clone(),
        env: s.env.clone().into_iter().collect(),
        retries: s.retries,
        restart: s.restart.as_str().to_string(),
        max_restarts: s.max_restarts,
        health: s.health.as_ref().map(|h| {
            let mut out = pb::HealthCheck {
                interval_ms: h.interval_ms,
                timeout_ms: h.timeout_ms,
                healthy_after: h.healthy_after,
                unhealthy_after: h.unhealthy_after,
                ..Default::default()
            };
            match &h.check {
                Check::Http { port, path, status } => {
                    out.kind = "http".into();
                    out.port = u32::from(*port);
                    out.path = path.clone();
                    out.status = u32::from(*status);
                }
                Check::Tcp { port } => {
                    out.kind = "tcp".into();
                    out.port = u32::from(*port);
                }
                Check::Command { argv } => {
                    out.kind = "command".into();
                    out.argv = argv.clone();
                }
            }
            out
        }),
        grace_ms: s.grace_ms,
        ports: s.ports.clone(),
        artifact_out: s.artifact_out.clone(),
        artifact_in: s.artifact_in.clone(),
        artifact_name: s.artifact_name.clone(),
    }
}

/// Reads and checks a task spec from the wire.
pub fn task_spec(s: pb::TaskSpec) -> Result<TaskSpec, Status> {
    let bad = |m: String| Err(Status::invalid_argument(m));
    within(limits::text("the task's name", &s.name))?;
    within(limits::command("the command", &s.command))?;
    within(limits::env(&s.env))?;
    if let Some(app) = s.env.get("CHARTER_APP")
        && !limits::name(app)
    {
        return bad(format!(
            "CHARTER_APP {:?} is not an app name ({})",
            app.chars().take(64).collect::<String>(),
            limits::NAME_RULE
        ));
    }
    if s.ports.len() > limits::PORTS_MAX {
        return bad(format!(
            "{} named ports; at most {}",
            s.ports.len(),
            limits::PORTS_MAX
        ));
    }
    if let Some(h) = &s.health {
        within(limits::command("the health check's command", &h.argv))?;
        within(limits::text("the health check's path", &h.path))?;
    }
    let amp = Amp::parse(&s.amp).map_err(Status::invalid_argument)?;
    if s.command.is_empty() || s.command[0].trim().is_empty() {
        return bad(
            "a task needs a command: put it after `--`, like `charter task submit -- ./run.sh`"
                .into(),
        );
    }
    let health = match s.health.filter(|h| !h.kind.is_empty()) {
        None => None,
        Some(h) => {
            // Port 0 checks the task's first named port.
            let first_port = !s.ports.is_empty();
            let port = || {
                u16::try_from(h.port)
                    .ok()
                    .filter(|p| *p > 0 || first_port)
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "health check port {} is not 1-65535 (0 checks the task's first named port, and it has none)",
                            h.port
                        ))
                    })
            };
            let check = match h.kind.as_str() {
                "http" => Check::Http {
                    port: port()?,
                    path: if h.path.is_empty() {
                        "/".into()
                    } else {
                        h.path.clone()
                    },
                    status: u16::try_from(h.status)
                        .ok()
                        .filter(|s| *s > 0)
                        .unwrap_or(200),
                },
                "tcp" => Check::Tcp { port: port()? },
                "command" if !h.argv.is_empty() => Check::Command {
                    argv: h.argv.clone(),
                },
                "command" => return bad("a command health check needs a command".into()),
                other => {
                    return bad(format!(
                        "unknown health check `{other}`; expected http, tcp or command"
                    ));
                }
            };
            if amp != Amp::Service {
                return bad("health checks are for service tasks; add --amp service".into());
            }
            Some(Health {
                check,
                interval_ms: if h.interval_ms == 0 {
                    1_000
                } else {
                    h.interval_ms
                },
                timeout_ms: if h.timeout_ms == 0 {
                    1_000
                } else {
                    h.timeout_ms
                },
                healthy_after: h.healthy_after.max(1),
                unhealthy_after: h.unhealthy_after.max(1),
            })
        }
    };
    Ok(TaskSpec {
        name: s.name,
        amp,
        command: s.command,
        env: s.env.into_iter().collect(),
        retries: s.retries,
        restart: Restart::parse(&s.restart).map_err(Status::invalid_argument)?,
        max_restarts: s.max_restarts,
        health,
        grace_ms: s.grace_ms,
        ports: {
            for p in &s.ports {
                if !crate::state::valid_port_name(p) {
                    return bad(format!(
                        "port name `{p}` must be 1-32 letters, digits or '_', like http"
                    ));
                }
            }
            s.ports
        },
        artifact_out: {
            if !s.artifact_out.is_empty() && !limits::relative_path(&s.artifact_out) {
                return bad(format!(
                    "artifact_out {:?} must be a relative path inside the task's sandbox (no `..`), like out/app",
                    s.artifact_out.chars().take(64).collect::<String>()
                ));
            }
            s.artifact_out
        },
        artifact_in: {
            let ok = s.artifact_in.is_empty()
                || (s.artifact_in.len() == 64
                    && s.artifact_in
                        .chars()
                        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
            if !ok {
                return bad(format!(
                    "artifact_in `{}` is not a sha256 (64 lower-case hex digits)",
                    s.artifact_in.chars().take(64).collect::<String>()
                ));
            }
            if !s.artifact_in.is_empty()
                && (!limits::file_name(&s.artifact_name) || s.artifact_name.starts_with('.'))
            {
                return bad(format!(
                    "artifact_name {:?} must be a plain file name, like app",
                    s.artifact_name.chars().take(64).collect::<String>()
                ));
            }
            s.artifact_in
        },
        artifact_name: s.artifact_name,
    })
}

#[cfg(test)]
mod fuzz {
    //! API request decoding: no bytes on the wire make decoding panic, and a
    //! decoded request is either a valid spec or `INVALID_ARGUMENT`.
    use super::*;
    use proptest::prelude::*;
    use prost::Message as _;
    use protobuf::Message as _;

    proptest! {
        #[test]
        fn lease_requests_decode_or_refuse(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(r) = pb::LeaseRequest::decode(&bytes[..])
                && let Err(s) = lease_spec(r)
            {
                prop_assert_eq!(s.code(), tonic::Code::InvalidArgument);
            }
        }

        #[test]
        fn built_requests_decode_or_refuse(
            duration_ms in 0u64..10_000,
            constraints in prop::collection::vec("[a-z!<>=(), .0-9]{0,16}", 0..3),
            prefer in "[a-z]{0,9}",
            cost in prop::option::of(-5.0f64..5.0),
            max_total_ms in 0u64..20_000,
        ) {
            let r = pb::LeaseRequest { duration_ms, constraints, prefer, max_cost_per_hour: cost, max_total_ms, ..Default::default() };
            if let Err(s) = lease_spec(r) {
                prop_assert_eq!(s.code(), tonic::Code::InvalidArgument);
            }
        }

        #[test]
        fn raft_messages_and_proposals_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            use crate::codec::{Kind, decode};
            let _ = ::raft::eraftpb::Message::parse_from_bytes(&bytes);
            let _ = decode::<Vec<crate::state::Proposal>>(Kind::Entry, &bytes);
            // With a valid header too, so the MessagePack decoder is reached.
            let mut framed = b"CH\x01E".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decode::<Vec<crate::state::Proposal>>(Kind::Entry, &framed);
            let mut framed = b"CH\x01S".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decode::<crate::state::State>(Kind::Snapshot, &framed);
        }
    }
}
