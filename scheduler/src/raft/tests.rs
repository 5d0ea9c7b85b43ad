//! Driver tests on one member with in-memory parts.

use super::{Driver, Input, MemberConfig, Role};
use crate::Error;
use crate::clock::{Clock, ManualClock};
use crate::state::{Applied, Command, Proposal, Resources};
use crate::storage::{LogStore, MemStore, SnapshotWriter, StoreResult};
use crate::transport::Transport;
use raft::eraftpb::{ConfState, Entry, HardState, Message, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

struct NoNet;

impl Transport for NoNet {
    fn send(&mut self, _: Vec<Message>) {}
    fn set_peer(&mut self, _: u64, _: &str) {}
    fn remove_peer(&mut self, _: u64) {}
}

/// A store whose fsync starts failing when told to, and that counts them.
struct FailingStore {
    inner: MemStore,
    fail: Arc<AtomicBool>,
    syncs: Arc<AtomicU64>,
}

impl Storage for FailingStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.inner.initial_state()
    }
    fn entries(
        &self,
        lo: u64,
        hi: u64,
        max: impl Into<Option<u64>>,
        c: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.inner.entries(lo, hi, max, c)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.inner.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.inner.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.inner.last_index()
    }
    fn snapshot(&self, i: u64, to: u64) -> raft::Result<Snapshot> {
        self.inner.snapshot(i, to)
    }
}

impl LogStore for FailingStore {
    fn append(&mut self, e: &[Entry]) -> StoreResult<()> {
        self.inner.append(e)
    }
    fn set_hard_state(&mut self, hs: &HardState) -> StoreResult<()> {
        self.inner.set_hard_state(hs)
    }
    fn set_commit(&mut self, c: u64) -> StoreResult<()> {
        self.inner.set_commit(c)
    }
    fn set_conf_state(&mut self, cs: &ConfState) -> StoreResult<()> {
        self.inner.set_conf_state(cs)
    }
    fn apply_snapshot(&mut self, s: &Snapshot) -> StoreResult<()> {
        self.inner.apply_snapshot(s)
    }
    fn compact_to(&mut self, i: u64, cs: &ConfState, d: Vec<u8>) -> StoreResult<bool> {
        self.inner.compact_to(i, cs, d)
    }
    fn sync(&mut self) -> StoreResult<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(Error::Storage("injected: fsync failed (EIO)".into()));
        }
        self.syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync()
    }
    fn latest_snapshot(&self) -> Option<Snapshot> {
        self.inner.latest_snapshot()
    }
    fn hard_state(&self) -> HardState {
        self.inner.hard_state()
    }
    fn take_snapshot_request(&mut self) -> bool {
        self.inner.take_snapshot_request()
    }
    fn conf_state(&self) -> ConfState {
        self.inner.conf_state()
    }
    fn snapshot_writer(&self) -> SnapshotWriter {
        self.inner.snapshot_writer()
    }
}

fn register(name: &str) -> Proposal {
    Proposal {
        at: 0,
        principal: "root".into(),
        admin: true,
        key: Some(name.into()),
        hint: None,
        cmd: Command::RegisterNode {
            name: name.into(),
            capacity: Resources {
                cpu_millis: 1000,
                ..Resources::default()
            },
            labels: Default::default(),
            pool: "p".into(),
            cost_per_hour: 0.0,
            ttl_ms: None,
            agent: None,
        },
    }
}

/// A one-member cluster that has elected itself, with its store's switches.
fn lone_leader() -> (
    Driver<FailingStore, NoNet>,
    super::MemberHandle,
    Arc<AtomicBool>,
    Arc<AtomicU64>,
) {
    let fail = Arc::new(AtomicBool::new(false));
    let syncs = Arc::new(AtomicU64::new(0));
    let store = FailingStore {
        inner: MemStore::new(),
        fail: fail.clone(),
        syncs: syncs.clone(),
    };
    let cfg = MemberConfig::new(1, [(1, "m1".to_string())].into());
    let (tx, rx) = std::sync::mpsc::channel();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_000));
    let (mut d, h) = Driver::new(cfg, store, NoNet, clock, tx, rx, 7).unwrap();
    // Campaign and win alone.
    for _ in 0..30 {
        d.tick();
        d.turn().unwrap();
    }
    assert_eq!(h.status().role, Role::Leader);
    (d, h, fail, syncs)
}

/// Raft messages into one shared queue, delivered by the test.
struct LoopNet(Arc<Mutex<Vec<Message>>>);

impl Transport for LoopNet {
    fn send(&mut self, msgs: Vec<Message>) {
        self.0.lock().unwrap().extend(msgs);
    }
    fn set_peer(&mut self, _: u64, _: &str) {}
    fn remove_peer(&mut self, _: u64) {}
}

/// Turns every member and delivers their messages until all is quiet.
fn settle(
    ds: &mut [Driver<FailingStore, LoopNet>],
    hs: &[super::MemberHandle],
    net: &Mutex<Vec<Message>>,
) {
    for _ in 0..1000 {
        for d in ds.iter_mut() {
            d.turn().unwrap();
        }
        let msgs = std::mem::take(&mut *net.lock().unwrap());
        if msgs.is_empty() {
            return;
        }
        for m in msgs {
            hs[(m.to - 1) as usize].send_input(Input::Raft(m)).unwrap();
        }
    }
    panic!("the cluster never went quiet");
}

#[test]
fn a_write_costs_each_member_one_fsync_and_its_commit_none() {
    let peers: std::collections::BTreeMap<u64, String> =
        (1..=3).map(|i| (i, format!("m{i}"))).collect();
    let net = Arc::new(Mutex::new(Vec::new()));
    let (mut ds, mut hs, mut syncs) = (Vec::new(), Vec::new(), Vec::new());
    for id in 1..=3 {
        let count = Arc::new(AtomicU64::new(0));
        let store = FailingStore {
            inner: MemStore::new(),
            fail: Arc::new(AtomicBool::new(false)),
            syncs: count.clone(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_000));
        let cfg = MemberConfig::new(id, peers.clone());
        let (d, h) = Driver::new(cfg, store, LoopNet(net.clone()), clock, tx, rx, id).unwrap();
        ds.push(d);
        hs.push(h);
        syncs.push(count);
    }
    // Only member 1's clock runs: it campaigns and wins.
    for _ in 0..60 {
        ds[0].tick();
        settle(&mut ds, &hs, &net);
        if hs[0].status().role == Role::Leader {
            break;
        }
    }
    assert_eq!(hs[0].status().role, Role::Leader);
    let before: Vec<u64> = syncs.iter().map(|s| s.load(Ordering::SeqCst)).collect();
    for i in 0..10 {
        let (reply, mut rx) = oneshot::channel();
        hs[0]
            .send_input(Input::Propose {
                proposal: register(&format!("n{i}")),
                reply,
            })
            .unwrap();
        settle(&mut ds, &hs, &net);
        assert!(matches!(rx.try_recv(), Ok(Ok(Ok(Applied::Node(_))))));
    }
    // The entry is made durable on every member; the commit index that
    // follows it (the leader's on the followers' answers, the followers'
    // on the leader's next append) is not fsynced on its own.
    let took: Vec<u64> = syncs
        .iter()
        .zip(&before)
        .map(|(s, b)| s.load(Ordering::SeqCst) - b)
        .collect();
    assert_eq!(took, vec![10, 10, 10]);
    for h in &hs {
        assert_eq!(h.read(|s| s.nodes.len()), 10);
    }
}

#[test]
fn a_failed_fsync_stops_the_member_and_answers_nobody() {
    let (mut d, h, fail, _) = lone_leader();
    let (reply, mut ok_rx) = oneshot::channel();
    h.send_input(Input::Propose {
        proposal: register("a"),
        reply,
    })
    .unwrap();
    d.turn().unwrap();
    assert!(matches!(ok_rx.try_recv(), Ok(Ok(Ok(Applied::Node(_))))));

    fail.store(true, Ordering::SeqCst);
    let (reply, mut lost_rx) = oneshot::channel();
    h.send_input(Input::Propose {
        proposal: register("b"),
        reply,
    })
    .unwrap();
    let err = d.turn().unwrap_err();
    assert!(err.is_fatal(), "{err}");
    assert!(err.to_string().contains("fsync failed"), "{err}");
    // The write that could not be made durable was never acknowledged.
    assert!(lost_rx.try_recv().is_err());
    assert!(h.read(|s| !s.nodes.contains_key("b")));
}

#[test]
fn a_graceful_stop_leaves_a_snapshot_at_the_applied_index() {
    let (mut d, h, _, _) = lone_leader();
    for i in 0..3 {
        let (reply, mut rx) = oneshot::channel();
        h.send_input(Input::Propose {
            proposal: register(&format!("n{i}")),
            reply,
        })
        .unwrap();
        d.turn().unwrap();
        assert!(matches!(rx.try_recv(), Ok(Ok(Ok(Applied::Node(_))))));
    }
    let applied = h.status().applied;
    assert_eq!(h.status().snapshot_bytes, 0, "far from a periodic snapshot");
    h.shutdown();
    d.run().unwrap();
    let s = h.status();
    assert!(s.snapshot_bytes > 0, "no snapshot at stop: {s:?}");
    assert_eq!((s.applied, s.snapshot_index), (applied, applied));
}
