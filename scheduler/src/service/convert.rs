//! Domain types to protobuf and back, at the edge.

use crate::state::{Lease, Node, Resources};
use charter_proto as pb;
use std::collections::BTreeMap;

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
    }
}

pub fn lease(l: &Lease) -> pb::Lease {
    pb::Lease {
        id: l.id,
        principal: l.principal.clone(),
        node: l.node.clone(),
        resources: Some(resources_out(&l.resources)),
        state: l.state.as_str().to_string(),
        granted_at_ms: l.granted_at,
        expires_at_ms: l.expires_at,
        fencing_token: l.fencing_token,
        reason: l.reason.clone(),
        ended_at_ms: l.ended_at.unwrap_or(0),
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
