//! The shape a snapshot stores the state in: every replicated field by
//! name, flat, as format version 1 has had it. The rooms of [`State`] are
//! how a member holds the state; this is how it is written, so the rooms can
//! change without changing what a snapshot means. Derived indexes are not
//! stored: [`State::rebuild_index`] makes them after loading.

use super::apps::App;
use super::cron::{CronJob, Runs};
use super::locks::{Lock, LockHold};
use super::retention::{KeyId, KeyOutcome};
use super::{Lease, Millis, Node, Outcome, PoolOffer, Quota, Retention, State, Task};
use charter_config::deployment::Deployment;
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The stored state (field names are the format: do not rename them).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stored {
    time: Millis,
    #[serde(deserialize_with = "bounded::map")]
    nodes: OrdMap<String, Node>,
    #[serde(deserialize_with = "bounded::map")]
    leases: OrdMap<u64, Box<Lease>>,
    #[serde(deserialize_with = "bounded::set")]
    expiries: OrdSet<(Millis, u64)>,
    #[serde(deserialize_with = "bounded::set")]
    queue: OrdSet<(i64, Millis, u64)>,
    #[serde(deserialize_with = "bounded::set")]
    timeouts: OrdSet<(Millis, u64)>,
    #[serde(default, deserialize_with = "bounded::set")]
    price_steps: OrdSet<(Millis, u64)>,
    #[serde(default, deserialize_with = "bounded::set")]
    heartbeats: OrdSet<(Millis, String)>,
    #[serde(default, deserialize_with = "bounded::map")]
    quotas: OrdMap<String, Quota>,
    #[serde(default, deserialize_with = "bounded::map")]
    pools: OrdMap<String, PoolOffer>,
    #[serde(default, deserialize_with = "bounded::map")]
    tasks: OrdMap<u64, Task>,
    #[serde(default, deserialize_with = "bounded::map")]
    lease_tasks: OrdMap<u64, u64>,
    #[serde(default, deserialize_with = "bounded::map")]
    cron_jobs: OrdMap<String, CronJob>,
    #[serde(default, deserialize_with = "bounded::runs")]
    cron_runs: Runs,
    #[serde(default, deserialize_with = "bounded::map")]
    apps: OrdMap<String, App>,
    #[serde(default, deserialize_with = "bounded::map")]
    deployments: OrdMap<u64, Deployment>,
    #[serde(default)]
    next_deploy_id: u64,
    #[serde(default)]
    cron_version: String,
    #[serde(default)]
    next_task_id: u64,
    next_lease_id: u64,
    fencing_token: u64,
    #[serde(default, deserialize_with = "bounded::map")]
    keys: OrdMap<KeyId, (Millis, KeyOutcome)>,
    /// Read from snapshots written before retention, never written.
    #[serde(default, skip_serializing, deserialize_with = "bounded::map")]
    applied_keys: OrdMap<String, Outcome>,
    #[serde(default)]
    retention: Retention,
    #[serde(default, deserialize_with = "bounded::map")]
    locks: OrdMap<String, Lock>,
    #[serde(default, deserialize_with = "bounded::map")]
    holds: OrdMap<u64, LockHold>,
    #[serde(default)]
    next_hold_id: u64,
    members: BTreeMap<u64, String>,
    #[serde(default)]
    term: u64,
}

impl From<Stored> for State {
    fn from(s: Stored) -> State {
        let mut st = State {
            time: s.time,
            fencing_token: s.fencing_token,
            retention: s.retention,
            ..State::default()
        };
        st.nodes.nodes = s.nodes;
        st.nodes.heartbeats = s.heartbeats;
        st.nodes.pools = s.pools;
        st.leases.all = s.leases;
        st.leases.expiries = s.expiries;
        st.leases.queue = s.queue;
        st.leases.timeouts = s.timeouts;
        st.leases.price_steps = s.price_steps;
        st.leases.quotas = s.quotas;
        st.leases.next_id = s.next_lease_id;
        st.tasks.all = s.tasks;
        st.tasks.by_lease = s.lease_tasks;
        st.tasks.next_id = s.next_task_id;
        st.cron.jobs = s.cron_jobs;
        st.cron.runs = s.cron_runs;
        st.cron.version = s.cron_version;
        st.apps.all = s.apps;
        st.apps.deployments = s.deployments;
        st.apps.next_deploy_id = s.next_deploy_id;
        st.locks.all = s.locks;
        st.locks.holds = s.holds;
        st.locks.next_hold_id = s.next_hold_id;
        st.keys.all = s.keys;
        st.keys.legacy = s.applied_keys;
        st.members.ids = s.members;
        st.members.term = s.term;
        st
    }
}

impl From<State> for Stored {
    fn from(st: State) -> Stored {
        Stored {
            time: st.time,
            nodes: st.nodes.nodes,
            leases: st.leases.all,
            expiries: st.leases.expiries,
            queue: st.leases.queue,
            timeouts: st.leases.timeouts,
            price_steps: st.leases.price_steps,
            heartbeats: st.nodes.heartbeats,
            quotas: st.leases.quotas,
            pools: st.nodes.pools,
            tasks: st.tasks.all,
            lease_tasks: st.tasks.by_lease,
            cron_jobs: st.cron.jobs,
            cron_runs: st.cron.runs,
            apps: st.apps.all,
            deployments: st.apps.deployments,
            next_deploy_id: st.apps.next_deploy_id,
            cron_version: st.cron.version,
            next_task_id: st.tasks.next_id,
            next_lease_id: st.leases.next_id,
            fencing_token: st.fencing_token,
            keys: st.keys.all,
            applied_keys: OrdMap::new(),
            retention: st.retention,
            locks: st.locks.all,
            holds: st.locks.holds,
            next_hold_id: st.locks.next_hold_id,
            members: st.members.ids,
            term: st.members.term,
        }
    }
}

/// Decoding the maps and sets without trusting their stated length. imbl's
/// own `Deserialize` reserves as many slots as a MessagePack header claims,
/// so a corrupt snapshot or a peer's forged one claiming 2^32 entries made
/// a member abort on a terabyte allocation; these insert what is really
/// there and fail cleanly when the bytes run out.
mod bounded {
    use super::super::{CronRun, Millis, Runs};
    use imbl::{OrdMap, OrdSet};
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::fmt;
    use std::marker::PhantomData;

    /// An [`OrdMap`] decoded entry by entry.
    #[derive(Clone)]
    struct Map<K, V>(OrdMap<K, V>);

    impl<'de, K, V> Deserialize<'de> for Map<K, V>
    where
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Entries<K, V>(PhantomData<(K, V)>);
            impl<'de, K, V> Visitor<'de> for Entries<K, V>
            where
                K: Deserialize<'de> + Ord + Clone,
                V: Deserialize<'de> + Clone,
            {
                type Value = Map<K, V>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a map")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Map<K, V>, A::Error> {
                    let mut m = OrdMap::new();
                    while let Some((k, v)) = a.next_entry()? {
                        m.insert(k, v);
                    }
                    Ok(Map(m))
                }
            }
            d.deserialize_map(Entries(PhantomData))
        }
    }

    pub fn map<'de, D, K, V>(d: D) -> Result<OrdMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        Map::deserialize(d).map(|m| m.0)
    }

    pub fn set<'de, D, A>(d: D) -> Result<OrdSet<A>, D::Error>
    where
        D: Deserializer<'de>,
        A: Deserialize<'de> + Ord + Clone,
    {
        struct Elements<A>(PhantomData<A>);
        impl<'de, A: Deserialize<'de> + Ord + Clone> Visitor<'de> for Elements<A> {
            type Value = OrdSet<A>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut s: S) -> Result<OrdSet<A>, S::Error> {
                let mut set = OrdSet::new();
                while let Some(a) = s.next_element()? {
                    set.insert(a);
                }
                Ok(set)
            }
        }
        d.deserialize_seq(Elements(PhantomData))
    }

    /// Cron runs: a map of maps, both decoded entry by entry.
    pub fn runs<'de, D: Deserializer<'de>>(d: D) -> Result<Runs, D::Error> {
        let jobs: Map<String, Map<Millis, CronRun>> = Map::deserialize(d)?;
        Ok(jobs
            .0
            .into_iter()
            .map(|(job, runs)| (job, runs.0))
            .collect())
    }
}
