//! Domain types to protobuf and back, at the edge.

use crate::state::{Lease, Node, PoolOffer, Quota, Resources, Task};
use charter_config::codec::Kind;
use charter_proto as pb;
use std::collections::BTreeMap;

/// A typed record for an API `bytes` field, in Charter's codec; a record
/// that does not encode is an `INTERNAL` error, never an empty field.
pub fn record<T: serde::Serialize>(kind: Kind, v: &T) -> Result<Vec<u8>, tonic::Status> {
    charter_config::codec::encode(kind, v)
        .map_err(|e| tonic::Status::internal(format!("cannot send a {kind:?}: {e}")))
}

fn resources_out(r: &Resources) -> pb::Resources {
    pb::Resources::from(r)
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
        spec: Some(pb::TaskSpec::from(&t.spec)),
        state: t.state.as_str().to_string(),
        exit_code: t.exit_code,
        starts: t.starts,
        health: t.health.to_string(),
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

#[cfg(test)]
mod fuzz {
    //! API request decoding: no bytes on the wire make decoding panic, and a
    //! decoded request is either a valid spec or `INVALID_ARGUMENT`.
    use super::*;
    use crate::state::LeaseSpec;
    use proptest::prelude::*;
    use prost::Message as _;
    use protobuf::Message as _;

    proptest! {
        #[test]
        fn lease_requests_decode_or_refuse(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(r) = pb::LeaseRequest::decode(&bytes[..])
                && let Err(s) = LeaseSpec::try_from(r)
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
            if let Err(s) = LeaseSpec::try_from(r) {
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
