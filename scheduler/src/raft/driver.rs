//! The member thread: owns the `RawNode`, storage, transport and state machine.
//!
//! Over 500 lines: one driver in raft-rs's Ready order (propose, persist, send, apply, advance, snapshot) kept together so the order reads in one place.

use super::{MemberHandle, Role, Status};
use crate::clock::Clock;
use crate::events::EventLog;
use crate::metrics::Metrics;
use crate::state::{Event, EventKind, Millis, Outcome, Proposal, State};
use crate::storage::{History, LogStore, SnapshotWriter, Written};
use crate::transport::{Report, Transport};
use crate::{Error, Result};
use ::raft::eraftpb::{ConfChange, ConfChangeType, ConfState, Entry, EntryType, Message, Snapshot};
use ::raft::{Config, RawNode, ReadOnlyOption, ReadState, SnapshotStatus, StateRole};
use protobuf::Message as _;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most inputs taken in one loop turn before the Ready is processed.
const MAX_INPUTS_PER_TURN: usize = 4096;

/// How a member runs.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    /// This member's raft id (non-zero).
    pub id: u64,
    /// The raft tick.
    pub tick: Duration,
    /// Ticks without a leader before a follower campaigns (randomised up to twice this).
    pub election_tick: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_tick: usize,
    /// Applied entries between log compactions…
    pub snapshot_entries: u64,
    /// …or applied bytes of entries, whichever comes first: a log of large
    /// batched entries is compacted before it holds much disk. A state
    /// larger than this is snapshotted after as many bytes of log as its
    /// last snapshot held, so snapshotting costs at most a byte encoded per
    /// byte of log (measured: at 64 in flight with 150,000 leases held, a
    /// snapshot every 4 MiB took 18% of the members' CPU and made the p99).
    pub snapshot_log_bytes: u64,
    /// The initial members and their peer addresses (used to bootstrap and to find peers).
    pub peers: BTreeMap<u64, String>,
    /// Start empty and wait to be added, instead of bootstrapping from `peers`.
    pub join: bool,
    /// Serialise snapshots on a background thread (off for deterministic simulation).
    pub background_snapshots: bool,
    /// Election timeout spread: raft-rs picks a timeout in
    /// `[election_tick, election_tick + spread)` with its own RNG; a spread of
    /// 1 makes it deterministic (for simulation).
    pub election_spread: usize,
    /// Where what leaves the live state is kept (none: it is dropped).
    pub history: Option<Arc<History>>,
}

impl MemberConfig {
    /// Defaults for member `id` with `peers`: 50 ms ticks, elections after
    /// 0.5–1 s without a leader, heartbeats every 100 ms.
    pub fn new(id: u64, peers: BTreeMap<u64, String>) -> MemberConfig {
        MemberConfig {
            id,
            tick: Duration::from_millis(50),
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_entries: 10_000,
            snapshot_log_bytes: 4 << 20,
            peers,
            join: false,
            background_snapshots: true,
            election_spread: 10,
            history: None,
        }
    }
}

/// What the driver thread is asked to do.
pub enum Input {
    /// A raft message from a peer.
    Raft(Message),
    /// A client write, on the leader.
    Propose {
        /// The write.
        proposal: Proposal,
        /// Answered once applied.
        reply: oneshot::Sender<Result<Outcome>>,
    },
    /// A linearizable read barrier.
    Read {
        /// Answered once the read index is applied here.
        reply: oneshot::Sender<Result<()>>,
    },
    /// Add (`Some(addr)`) or remove (`None`) a member.
    ConfChange {
        /// The member id.
        id: u64,
        /// Its peer address when adding.
        addr: Option<String>,
        /// Answered with the members once applied.
        reply: oneshot::Sender<Result<BTreeMap<u64, String>>>,
    },
    /// Delivery feedback from the transport.
    Report(Report),
    /// A snapshot of the state at `index`, serialised off the raft thread.
    SnapshotData {
        /// The applied index the state was taken at.
        index: u64,
        /// The conf state at that index.
        conf_state: ConfState,
        /// What the store wrote: its size, and the bytes when it keeps
        /// them in memory.
        written: Written,
    },
    /// Writing a snapshot's data failed: fatal for the member.
    SnapshotFailed(Error),
    /// Stop after this turn.
    Shutdown,
}

type MembersReply = oneshot::Sender<Result<BTreeMap<u64, String>>>;

enum Waiter {
    Batch(Proposed),
    Conf(MembersReply),
}

/// An entry this member proposed, waiting to be applied.
struct Proposed {
    /// A digest of the entry's data: an entry from another proposer that
    /// happens to carry the same context is never mistaken for ours.
    sum: u64,
    at: Instant,
    /// What the entry holds, as it was encoded: applied as it is, so the
    /// leader does not decode its own entries (the codec's round trip is
    /// exact: `codec::tests` checks every command).
    props: Vec<Proposal>,
    replies: Vec<oneshot::Sender<Result<Outcome>>>,
}

/// FNV-1a of an entry's data.
fn digest(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The leader's INFO line for each grant and expiry, task start and exit,
/// cron fire and deploy step, with the ids as fields (the rest are in
/// `charter events`).
fn log_events(member: u64, index: u64, events: &[Event]) {
    for e in events {
        use EventKind::*;
        if matches!(
            e.kind,
            LeaseGranted
                | LeaseExpired
                | LeaseRevoked
                | LeaseLost
                | TaskStarted
                | TaskExited
                | CronFired
                | CronSkipped
                | DeployStep
                | DeployPromoted
                | DeployRolledBack
                | NodeDown
        ) {
            tracing::info!(
                member,
                index,
                event = e.kind.as_str(),
                subject = %e.subject,
                principal = %e.principal,
                detail = %e.detail,
                "{}",
                e.kind
            );
        }
    }
}

/// A snapshot to be: the state at an applied index and what serialising
/// it needs, so it can be done on any thread.
struct SnapshotCut {
    state: State,
    index: u64,
    conf_state: ConfState,
    writer: SnapshotWriter,
}

impl SnapshotCut {
    /// Streams the state through the store's writer; what the driver
    /// compacts with, or why it could not.
    fn serialise(self) -> Input {
        let SnapshotCut {
            state,
            index,
            conf_state,
            writer,
        } = self;
        match writer(index, &mut |w: &mut dyn Write| state.write_to(w)) {
            Ok(written) => Input::SnapshotData {
                index,
                conf_state,
                written,
            },
            Err(e) => Input::SnapshotFailed(e),
        }
    }
}

/// The member: raft, storage, transport and the state machine, on one thread.
pub struct Driver<S: LogStore, T: Transport> {
    raw: RawNode<S>,
    transport: T,
    /// Our own inbox's sender: snapshot threads report back through it.
    tx: Sender<Input>,
    rx: Receiver<Input>,
    state: Arc<RwLock<State>>,
    status: Arc<Mutex<Status>>,
    /// The applied index, for those who wait for the state to change.
    applied_tx: Arc<tokio::sync::watch::Sender<u64>>,
    /// What the applied entries meant to people ([`crate::events`]).
    events: Arc<EventLog>,
    /// What `/metrics` counts ([`crate::metrics`]).
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    cfg: MemberConfig,
    nonce: u64,
    seq: u64,
    batch: Vec<(Proposal, oneshot::Sender<Result<Outcome>>)>,
    waiters: HashMap<Vec<u8>, Waiter>,
    reads_new: Vec<oneshot::Sender<Result<()>>>,
    reads_sent: HashMap<Vec<u8>, Vec<oneshot::Sender<Result<()>>>>,
    reads_ready: Vec<(u64, Vec<oneshot::Sender<Result<()>>>)>,
    applied: u64,
    snapshot_index: u64,
    /// A snapshot is being serialised in the background.
    snapshotting: bool,
    /// Bytes of entries applied since the last snapshot was started.
    log_bytes: u64,
    /// Size of the newest snapshot's data.
    snapshot_bytes: u64,
    /// A fatal error met while handling input; ends the thread at the turn's end.
    fatal: Option<Error>,
    was_leader: bool,
    stop: bool,
}

fn logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

/// Forwards raft-rs's slog records to tracing.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(
        &self,
        r: &slog::Record<'_>,
        _: &slog::OwnedKVList,
    ) -> std::result::Result<(), slog::Never> {
        match r.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", r.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", r.msg()),
            slog::Level::Info => tracing::info!(target: "raft", "{}", r.msg()),
            _ => tracing::trace!(target: "raft", "{}", r.msg()),
        }
        Ok(())
    }
}

fn corrupt(index: u64, reason: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        index,
        reason: reason.to_string(),
    }
}

impl<S: LogStore, T: Transport> Driver<S, T> {
    /// Opens a member over `store`. A fresh store bootstraps from `cfg.peers`
    /// unless `cfg.join`. `tx`/`rx` are the driver's inbox (`std::sync::mpsc::channel()`),
    /// made by the caller so the transport can report into it.
    ///
    /// Over 80 lines: the driver's fields, built once; its steps are functions.
    pub fn new(
        cfg: MemberConfig,
        mut store: S,
        mut transport: T,
        clock: Arc<dyn Clock>,
        tx: Sender<Input>,
        rx: Receiver<Input>,
        nonce: u64,
    ) -> Result<(Driver<S, T>, MemberHandle)> {
        if cfg.id == 0 {
            return Err(Error::Config("member id must be 1 or more".into()));
        }
        bootstrap(&cfg, &mut store)?;
        let (state, applied, snapshot_bytes) = match store.latest_snapshot() {
            Some(s) => (
                State::from_bytes(&s.data).map_err(|e| corrupt(s.get_metadata().index, e))?,
                s.get_metadata().index,
                s.data.len() as u64,
            ),
            None => (State::default(), 0, 0),
        };
        let mut peers = cfg.peers.clone();
        peers.extend(state.members.ids.clone());
        for (id, addr) in &peers {
            if *id != cfg.id {
                transport.set_peer(*id, addr);
            }
        }
        let rcfg = raft_config(&cfg, applied);
        rcfg.validate()?;
        let mut raw = RawNode::new(&rcfg, store, &logger())?;
        // The only voter: no one to wait for, so no election timeout either
        // (`charter dev` leads at once whatever the timing settings).
        let voters: Vec<u64> = raw.raft.prs().conf().voters().ids().iter().collect();
        if voters == [cfg.id] {
            let _ = raw.campaign();
        }
        // The state was loaded from the newest snapshot: its index.
        let snapshot_index = applied;
        let state = Arc::new(RwLock::new(state));
        let status = Arc::new(Mutex::new(Status {
            id: cfg.id,
            applied,
            snapshot_index,
            members: peers,
            ..Status::default()
        }));
        let applied_tx = Arc::new(tokio::sync::watch::Sender::new(applied));
        let events = Arc::new(EventLog::new(applied));
        let metrics = Arc::new(Metrics::new());
        let handle = MemberHandle {
            events: events.clone(),
            metrics: metrics.clone(),
            id: cfg.id,
            tx: tx.clone(),
            state: state.clone(),
            status: status.clone(),
            applied: applied_tx.clone(),
            clock: clock.clone(),
            history: cfg.history.clone(),
        };
        let driver = Driver {
            raw,
            transport,
            tx,
            rx,
            state,
            status,
            applied_tx,
            events,
            metrics,
            clock,
            cfg,
            nonce,
            seq: 0,
            batch: Vec::new(),
            waiters: HashMap::new(),
            reads_new: Vec::new(),
            reads_sent: HashMap::new(),
            reads_ready: Vec::new(),
            applied,
            snapshot_index,
            snapshotting: false,
            log_bytes: 0,
            snapshot_bytes,
            fatal: None,
            was_leader: false,
            stop: false,
        };
        Ok((driver, handle))
    }

    /// Runs until shutdown or a fatal error. Blocking: call it on its own thread.
    pub fn run(mut self) -> Result<()> {
        let mut next_tick = Instant::now() + self.cfg.tick;
        let result = loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(i) => self.handle(i),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break Ok(()),
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick();
                next_tick += self.cfg.tick;
                if next_tick < now {
                    next_tick = now + self.cfg.tick;
                }
            }
            if let Err(e) = self.turn() {
                break Err(e);
            }
            if self.stop {
                break Ok(());
            }
        };
        if let Err(e) = &result {
            tracing::error!(member = self.cfg.id, error = %e, "member stopped on a fatal error");
            if let Ok(mut s) = self.status.lock() {
                s.fatal = Some(e.to_string());
            }
        }
        self.fail_all(|| Error::Stopped);
        if result.is_ok() {
            self.snapshot_at_stop();
        }
        // Best effort: make what was written durable before the thread ends.
        let _ = self.raw.mut_store().sync();
        result
    }

    /// One raft tick (elections, heartbeats), and cleanup of abandoned reads.
    pub fn tick(&mut self) {
        self.raw.tick();
        self.gc_reads();
    }

    /// This member's applied index.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The raft storage (read-only).
    pub fn store(&self) -> &S {
        self.raw.store()
    }

    /// One step after input arrived: drain the inbox, propose, read, process the Ready.
    pub fn turn(&mut self) -> Result<()> {
        for _ in 0..MAX_INPUTS_PER_TURN {
            match self.rx.try_recv() {
                Ok(i) => self.handle(i),
                Err(_) => break,
            }
        }
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        self.flush_proposals();
        self.flush_reads();
        self.on_ready()?;
        self.maybe_compact();
        Ok(())
    }

    fn next_ctx(&mut self) -> Vec<u8> {
        self.seq += 1;
        let mut c = Vec::with_capacity(24);
        c.extend_from_slice(&self.cfg.id.to_be_bytes());
        c.extend_from_slice(&self.nonce.to_be_bytes());
        c.extend_from_slice(&self.seq.to_be_bytes());
        c
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Raft(m) => {
                if let Err(e) = self.raw.step(m) {
                    tracing::debug!(member = self.cfg.id, error = %e, "raft message ignored");
                }
            }
            Input::Propose { proposal, reply } => {
                if self.is_leader() {
                    self.batch.push((proposal, reply));
                } else {
                    let _ = reply.send(Err(Error::NotLeader));
                }
            }
            Input::Read { reply } => self.reads_new.push(reply),
            Input::ConfChange { id, addr, reply } => self.propose_conf_change(id, addr, reply),
            Input::Report(Report::Unreachable(id)) => self.raw.report_unreachable(id),
            Input::Report(Report::Snapshot(id, ok)) => {
                let s = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(id, s);
            }
            Input::SnapshotData {
                index,
                conf_state,
                written: Written { bytes, data },
            } => {
                self.snapshotting = false;
                // The log up to `index` is about to go: what its entries
                // trimmed into the history store must be on disk first.
                if let Some(h) = &self.cfg.history
                    && let Err(e) = h.flush()
                {
                    tracing::error!(member = self.cfg.id, error = %e, "cannot flush the history store");
                }
                match self.raw.mut_store().compact_to(index, &conf_state, data) {
                    Ok(true) => {
                        self.snapshot_index = self.snapshot_index.max(index);
                        self.snapshot_bytes = bytes;
                        if let Ok(mut s) = self.status.lock() {
                            s.snapshot_bytes = bytes;
                            s.snapshot_index = self.snapshot_index;
                        }
                        tracing::debug!(
                            member = self.cfg.id,
                            index,
                            "compacted the log into a snapshot"
                        );
                    }
                    Ok(false) => {}
                    Err(e) => self.fatal = Some(e),
                }
            }
            Input::SnapshotFailed(e) => {
                self.snapshotting = false;
                self.fatal = Some(e);
            }
            Input::Shutdown => self.stop = true,
        }
    }

    fn propose_conf_change(&mut self, id: u64, addr: Option<String>, reply: MembersReply) {
        if !self.is_leader() {
            let _ = reply.send(Err(Error::NotLeader));
            return;
        }
        let members = self.read_members();
        let refuse = |why: String| Err(Error::Config(why));
        let check = match &addr {
            _ if id == 0 => refuse("member id must be 1 or more".into()),
            Some(_) if members.contains_key(&id) => refuse(format!(
                "member {id} is already in the cluster; remove it first to change its address"
            )),
            None if !members.contains_key(&id) => {
                refuse(format!("member {id} is not in the cluster"))
            }
            None if members.len() == 1 => refuse("cannot remove the last member".into()),
            _ if self.raw.raft.has_pending_conf() => refuse(
                "another membership change is still being applied; retry when it is done".into(),
            ),
            _ => Ok(()),
        };
        if let Err(e) = check {
            let _ = reply.send(Err(e));
            return;
        }
        let mut cc = ConfChange {
            node_id: id,
            ..Default::default()
        };
        match &addr {
            Some(a) => {
                cc.set_change_type(ConfChangeType::AddNode);
                cc.context = a.clone().into_bytes().into();
            }
            None => cc.set_change_type(ConfChangeType::RemoveNode),
        }
        let ctx = self.next_ctx();
        match self.raw.propose_conf_change(ctx.clone(), cc) {
            Ok(()) => {
                self.waiters.insert(ctx, Waiter::Conf(reply));
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    fn read_members(&self) -> BTreeMap<u64, String> {
        match self.state.read() {
            Ok(s) => s.members.ids.clone(),
            Err(p) => p.into_inner().members.ids.clone(),
        }
    }

    fn flush_proposals(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        if !self.is_leader() {
            for (_, r) in batch {
                let _ = r.send(Err(Error::NotLeader));
            }
            return;
        }
        let at = self.clock.now();
        let (mut props, replies): (Vec<Proposal>, Vec<_>) = batch.into_iter().unzip();
        for p in &mut props {
            p.at = at;
        }
        let data = crate::codec::encode(crate::codec::Kind::Entry, &props);
        let ctx = self.next_ctx();
        let sum = digest(&data);
        match self.raw.propose(ctx.clone(), data) {
            Ok(()) => {
                let proposed = Proposed {
                    sum,
                    at: Instant::now(),
                    props,
                    replies,
                };
                self.waiters.insert(ctx, Waiter::Batch(proposed));
            }
            Err(_) => {
                for r in replies {
                    let _ = r.send(Err(Error::LeaderChanged));
                }
            }
        }
    }

    fn flush_reads(&mut self) {
        if self.reads_new.is_empty() {
            return;
        }
        let reads = std::mem::take(&mut self.reads_new);
        if self.raw.raft.leader_id == 0 {
            for r in reads {
                let _ = r.send(Err(Error::NoLeader));
            }
            return;
        }
        let ctx = self.next_ctx();
        self.raw.read_index(ctx.clone());
        self.reads_sent.insert(ctx, reads);
    }

    /// Drops reads whose callers gave up (e.g. the leader went away meanwhile).
    fn gc_reads(&mut self) {
        self.reads_sent
            .retain(|_, ws| ws.iter().any(|w| !w.is_closed()));
    }

    fn on_read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            if let Some(ws) = self.reads_sent.remove(&rs.request_ctx) {
                self.reads_ready.push((rs.index, ws));
            }
        }
    }

    fn on_ready(&mut self) -> Result<()> {
        if !self.raw.has_ready() {
            self.after_turn();
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if !ready.messages().is_empty() {
            self.transport.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.install_snapshot(&snap)?;
        }
        self.on_read_states(ready.take_read_states());
        self.apply(ready.take_committed_entries())?;
        if !ready.entries().is_empty() {
            self.raw.mut_store().append(ready.entries())?;
        }
        if let Some(hs) = ready.hs() {
            self.raw.mut_store().set_hard_state(hs)?;
        }
        // New entries, a new term or vote must be durable before anything
        // depending on them is sent. A hard state whose only change is the
        // commit index is not synced on its own (etcd's MustSync rule): a
        // commit lost in a crash is learned again from the leader, and the
        // store raises a stored commit below its snapshot when it opens.
        if ready.must_sync() {
            let t = Instant::now();
            self.raw.mut_store().sync()?;
            self.metrics.observe_fsync(t.elapsed());
        }
        if !ready.persisted_messages().is_empty() {
            self.transport.send(ready.take_persisted_messages());
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        self.transport.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.after_turn();
        Ok(())
    }

    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        let index = snap.get_metadata().index;
        let state = State::from_bytes(&snap.data).map_err(|e| corrupt(index, e))?;
        self.raw.mut_store().apply_snapshot(snap)?;
        self.raw.mut_store().sync()?;
        for (id, addr) in state.members.iter() {
            if *id != self.cfg.id {
                self.transport.set_peer(*id, addr);
            }
        }
        match self.state.write() {
            Ok(mut g) => *g = state,
            Err(p) => *p.into_inner() = state,
        }
        self.applied = index;
        self.snapshot_index = index;
        self.events.reset(index);
        tracing::info!(
            member = self.cfg.id,
            index,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {}
                EntryType::EntryNormal => {
                    self.log_bytes += e.data.len() as u64;
                    self.apply_batch(&e)?
                }
                EntryType::EntryConfChange => self.apply_conf_change(&e)?,
                EntryType::EntryConfChangeV2 => {
                    return Err(corrupt(
                        e.index,
                        "joint-consensus conf changes are not used by Charter",
                    ));
                }
            }
            self.applied = e.index;
        }
        Ok(())
    }

    fn apply_batch(&mut self, e: &Entry) -> Result<()> {
        // Ours (this member proposed it, as leader): its proposals as they
        // were encoded. Anyone else's: decoded, and our waiter for this
        // context, if any, learns its entry was lost.
        let (props, ours) = match self.waiters.remove(&e.context[..]) {
            Some(Waiter::Batch(w)) if w.sum == digest(&e.data) => {
                let Proposed {
                    at, props, replies, ..
                } = w;
                (props, Some((at, replies)))
            }
            other => {
                if let Some(Waiter::Batch(w)) = other {
                    // Not our entry: ours was lost; the clients retry with their keys.
                    for r in w.replies {
                        let _ = r.send(Err(Error::LeaderChanged));
                    }
                }
                let props: Vec<Proposal> =
                    crate::codec::decode_stored(crate::codec::Kind::Entry, &e.data)
                        .map_err(|err| corrupt(e.index, err))?;
                (props, None)
            }
        };
        tracing::debug!(
            member = self.cfg.id,
            index = e.index,
            proposals = props.len(),
            "apply"
        );
        let outcomes: Vec<Outcome> = {
            let mut st = match self.state.write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let mut events = Vec::new();
            if let Some(first) = props.first() {
                if e.term > st.members.term {
                    events.push(self.leader_event(e.term, first.at.max(st.time)));
                }
                st.observe_term(e.term, first.at);
            }
            let outs: Vec<Outcome> = props.iter().map(|p| st.apply(p)).collect();
            events.extend(st.take_events());
            self.metrics.observe_events(&events);
            if self.was_leader {
                log_events(self.cfg.id, e.index, &events);
            }
            for r in outs.iter().filter_map(|o| o.as_ref().err()) {
                self.metrics.observe_refusal(r);
            }
            self.events.push(e.index, events);
            // Who did what, from the entry itself (see `state::audit`).
            if let Some(h) = &self.cfg.history {
                let records: Vec<_> = props
                    .iter()
                    .zip(&outs)
                    .enumerate()
                    .filter_map(|(i, (p, o))| crate::state::audit::record(e.index, i as u32, p, o))
                    .collect();
                if !records.is_empty()
                    && let Err(err) = h.put_audit(e.index, &records)
                {
                    tracing::error!(member = self.cfg.id, error = %err, "audit lost: cannot write the history store");
                }
            }
            // What the retention rules took out goes to the history store
            // (not fsynced here: see `compact`).
            let gone = st.take_trimmed();
            if !gone.is_empty()
                && let Some(h) = &self.cfg.history
                && let Err(err) = h.put(st.time, &gone)
            {
                tracing::error!(member = self.cfg.id, error = %err, "history lost: cannot keep what left the live state");
            }
            outs
        };
        if let Some((proposed, replies)) = ours {
            // One reply per proposal, in order (the batch was made so).
            self.metrics
                .propose_to_apply
                .observe(proposed.elapsed().as_secs_f64());
            for (r, o) in replies.into_iter().zip(outcomes) {
                let _ = r.send(Ok(o));
            }
        }
        Ok(())
    }

    /// The event of the first entry of a new term: its leader (as far as
    /// this member knows it) took over.
    fn leader_event(&self, term: u64, at: Millis) -> Event {
        let r = &self.raw.raft;
        let leader = if r.term == term && r.leader_id != 0 {
            r.leader_id.to_string()
        } else {
            "unknown".to_string()
        };
        Event {
            index: 0,
            seq: 0,
            at,
            kind: EventKind::LeaderChanged,
            principal: String::new(),
            subject: leader,
            detail: format!("term {term}"),
            ms: None,
        }
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Result<()> {
        let cc = ConfChange::parse_from_bytes(&e.data).map_err(|err| corrupt(e.index, err))?;
        let cs = self.raw.apply_conf_change(&cc)?;
        self.raw.mut_store().set_conf_state(&cs)?;
        if cc.get_change_type() == ConfChangeType::RemoveNode && cc.node_id == self.cfg.id {
            // Removed: a leader steps down before this ready's entries are
            // marked persisted (raft-rs keeps no progress for a leader that
            // is not a member, and would panic), and the rest elect one; a
            // member no longer in the configuration never campaigns.
            tracing::warn!(
                member = self.cfg.id,
                "this member was removed from the cluster; it no longer takes part"
            );
            if self.raw.raft.state == ::raft::StateRole::Leader {
                let term = self.raw.raft.term;
                self.raw.raft.become_follower(term, ::raft::INVALID_ID);
            }
        }
        let addr = match cc.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                Some(String::from_utf8(cc.context.to_vec()).map_err(|err| corrupt(e.index, err))?)
            }
            ConfChangeType::RemoveNode => None,
        };
        match &addr {
            Some(a) if cc.node_id != self.cfg.id => self.transport.set_peer(cc.node_id, a),
            None => self.transport.remove_peer(cc.node_id),
            _ => {}
        }
        let members = {
            let mut st = match self.state.write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            st.set_member(cc.node_id, addr);
            st.members.ids.clone()
        };
        tracing::info!(
            member = self.cfg.id,
            changed = cc.node_id,
            ?members,
            "membership changed"
        );
        let (kind, detail) = match cc.get_change_type() {
            ConfChangeType::RemoveNode => (EventKind::MemberLeft, String::new()),
            _ => (
                EventKind::MemberJoined,
                members.get(&cc.node_id).cloned().unwrap_or_default(),
            ),
        };
        let at = match self.state.read() {
            Ok(s) => s.time,
            Err(p) => p.into_inner().time,
        };
        self.events.push(
            e.index,
            vec![Event {
                index: e.index,
                seq: 0,
                at,
                kind,
                principal: String::new(),
                subject: cc.node_id.to_string(),
                detail,
                ms: None,
            }],
        );
        if let Some(Waiter::Conf(r)) = self.waiters.remove(&e.context[..]) {
            let _ = r.send(Ok(members));
        }
        Ok(())
    }

    /// The state at `applied` (a clone: a consistent cut) with what
    /// serialising it needs.
    fn cut(&self) -> SnapshotCut {
        SnapshotCut {
            state: match self.state.read() {
                Ok(g) => g.clone(),
                Err(p) => p.into_inner().clone(),
            },
            index: self.applied,
            conf_state: self.raw.store().conf_state(),
            writer: self.raw.store().snapshot_writer(),
        }
    }

    /// Serialises `cut` on this thread and compacts the log to it.
    fn snapshot_here(&mut self, cut: SnapshotCut) {
        self.snapshotting = true;
        let input = cut.serialise();
        self.handle(input);
    }

    /// On a graceful stop, a snapshot at the applied index (unless one is
    /// being written or the last is there already), so a restart loads it
    /// instead of applying the log since the last snapshot again (what a
    /// `kill -9` still costs). A failure only costs that replay.
    fn snapshot_at_stop(&mut self) {
        if self.snapshotting || self.applied <= self.snapshot_index {
            return;
        }
        self.snapshot_here(self.cut());
        if let Some(e) = self.fatal.take() {
            tracing::warn!(member = self.cfg.id, error = %e, "no snapshot at stop");
        }
    }

    /// Starts a snapshot when enough entries were applied since the last one
    /// or raft asked for a fresh one. The state is cloned here (a consistent
    /// cut at `applied`) and serialised on another thread, so a large state
    /// does not stall raft; the driver compacts when the bytes come back.
    fn maybe_compact(&mut self) {
        let wanted = self.raw.mut_store().take_snapshot_request();
        let due = self.applied >= self.snapshot_index + self.cfg.snapshot_entries.max(1)
            || self.log_bytes >= self.cfg.snapshot_log_bytes.max(self.snapshot_bytes).max(1);
        if self.snapshotting || !(due || wanted) || self.applied <= self.snapshot_index {
            return;
        }
        let cut = self.cut();
        self.log_bytes = 0;
        if !self.cfg.background_snapshots {
            self.snapshot_here(cut);
            return;
        }
        let tx = self.tx.clone();
        // The driver may have stopped meanwhile; then nobody needs it.
        let spawned = std::thread::Builder::new()
            .name(format!("snapshot-{}", self.cfg.id))
            .spawn(move || drop(tx.send(cut.serialise())));
        match spawned {
            Ok(_) => self.snapshotting = true,
            Err(e) => {
                tracing::warn!(member = self.cfg.id, error = %e, "cannot start a snapshot thread; will retry")
            }
        }
    }

    /// Publishes status, answers reads that are now applied, and fails
    /// in-flight writes when leadership was lost.
    fn after_turn(&mut self) {
        let applied = self.applied;
        let mut i = 0;
        while i < self.reads_ready.len() {
            if self.reads_ready[i].0 <= applied {
                let (_, ws) = self.reads_ready.swap_remove(i);
                for w in ws {
                    let _ = w.send(Ok(()));
                }
            } else {
                i += 1;
            }
        }
        let leader = self.is_leader();
        if self.was_leader && !leader {
            self.fail_all(|| Error::LeaderChanged);
        }
        if leader && !self.was_leader {
            // A new term's time starts from this member's wall clock, never
            // behind the state's; from here on it moves with the monotonic
            // clock (crate::clock::SteadyClock).
            let floor = match self.state.read() {
                Ok(s) => s.time,
                Err(p) => p.into_inner().time,
            };
            self.clock.anchor(floor);
        }
        self.was_leader = leader;
        let r = &self.raw.raft;
        let role = match r.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Follower => Role::Follower,
        };
        let (leader_id, term, commit) = (r.leader_id, r.term, r.raft_log.committed);
        let members = self.read_members();
        if let Ok(mut s) = self.status.lock() {
            s.leader_id = (leader_id != 0).then_some(leader_id);
            s.term = term;
            s.role = role;
            s.commit = commit;
            s.applied = applied;
            s.snapshot_index = self.snapshot_index;
            if s.members != members && !members.is_empty() {
                s.members = members;
            }
        }
        self.applied_tx.send_if_modified(|a| {
            let moved = *a != applied;
            *a = applied;
            moved
        });
    }

    fn fail_all(&mut self, err: impl Fn() -> Error) {
        for (_, w) in self.waiters.drain() {
            match w {
                Waiter::Batch(w) => {
                    for r in w.replies {
                        let _ = r.send(Err(err()));
                    }
                }
                Waiter::Conf(r) => {
                    let _ = r.send(Err(err()));
                }
            }
        }
        for (_, r) in self.batch.drain(..) {
            let _ = r.send(Err(err()));
        }
    }
}

/// A fresh store of a member that bootstraps (not `join`): the initial
/// members' state as the snapshot at index 1, so every founding member
/// starts from the same entry.
fn bootstrap<S: LogStore>(cfg: &MemberConfig, store: &mut S) -> Result<()> {
    let fresh = store.initial_state()?.hard_state == Default::default()
        && store.latest_snapshot().is_none()
        && store.last_index()? == 0;
    if !fresh || cfg.join {
        return Ok(());
    }
    if !cfg.peers.contains_key(&cfg.id) {
        return Err(Error::Config(format!(
            "--peers does not name this member's id {}; list every initial member as ID=ADDR",
            cfg.id
        )));
    }
    let mut snap = Snapshot::default();
    snap.set_data(State::new(cfg.peers.clone()).to_bytes().into());
    let m = snap.mut_metadata();
    m.index = 1;
    m.term = 1;
    m.mut_conf_state().voters = cfg.peers.keys().copied().collect();
    store.apply_snapshot(&snap)?;
    store.sync()?;
    Ok(())
}

/// raft-rs's settings: pre-vote and check-quorum on (a partitioned member
/// neither disrupts nor keeps leading), linearizable reads by ReadIndex,
/// 1 MiB messages and 256 in flight per peer, and an election timeout
/// spread over `election_spread` ticks.
fn raft_config(cfg: &MemberConfig, applied: u64) -> Config {
    Config {
        id: cfg.id,
        election_tick: cfg.election_tick,
        heartbeat_tick: cfg.heartbeat_tick,
        applied,
        check_quorum: true,
        pre_vote: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        read_only_option: ReadOnlyOption::Safe,
        min_election_tick: cfg.election_tick,
        max_election_tick: cfg.election_tick + cfg.election_spread.max(1),
        ..Config::default()
    }
}
