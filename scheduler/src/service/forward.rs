//! Writes a follower hands to the leader, sent together.
//!
//! Each write a follower receives joins one queue; a sender takes what has
//! gathered (up to [`MAX_BATCH`]) and sends it as one `ForwardBatch` call.
//! One write alone goes at once. While a call is out, what arrives waits for
//! it to come back and goes in the next call, so under load the leader sees
//! one call (and proposes one log entry) where it saw one per write: one
//! call out at a time measured best on this machine's loopback
//! (`bench --scenario grant` via a follower at 64 in flight gave 10,194
//! grants/s with one, 9,107 with two, 8,408 with a call per write).
//!
//! A write waits for the calls out at most [`PATIENCE`], then goes in a call
//! of its own (up to [`MAX_IN_FLIGHT`] out at once): on a slow or lossy link
//! a call takes a second or more, and a write queued behind it would take
//! two (measured on 100-300 ms links with 10% loss, `tests/lossy.rs`: p50
//! 2.2 s with strictly one call out, where etcd took 1.2 s). On loopback a
//! call comes back well inside the patience, so batching is unchanged. The
//! leader proposes a batch's writes together and answers each with its own
//! outcome or error.

use super::{placer, require_admin, to_status};
use crate::raft_driver::MemberHandle;
use crate::state::{Outcome, Proposal};
use crate::{Error, codec};
use charter_proto as pb;
use charter_proto::raft_peer_client::RaftPeerClient;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Writes in one call at most.
const MAX_BATCH: usize = 256;
/// Calls on their way to the leader at once, at most.
const MAX_IN_FLIGHT: usize = 16;
/// How long a write waits for the calls out before it goes in one of its own.
const PATIENCE: Duration = Duration::from_millis(50);

/// One write waiting to be forwarded.
struct Pending {
    addr: String,
    ch: Channel,
    proposal: Vec<u8>,
    reply: oneshot::Sender<Result<Outcome, Error>>,
}

/// The follower's side: a queue and the task that empties it, started on
/// first use.
#[derive(Clone)]
pub(super) struct Forwarder {
    queue: Arc<OnceLock<mpsc::UnboundedSender<Pending>>>,
    peer_token: Option<String>,
}

impl Forwarder {
    pub(super) fn new(peer_token: Option<String>) -> Forwarder {
        Forwarder {
            queue: Arc::default(),
            peer_token,
        }
    }

    /// Forwards `p` to the leader at `addr` over `ch`; its outcome.
    pub(super) async fn forward(
        &self,
        addr: &str,
        ch: Channel,
        p: &Proposal,
    ) -> Result<Outcome, Error> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let token = self.peer_token.clone();
            tokio::spawn(send_loop(rx, move |batch| send(batch, token.clone())));
            tx
        });
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            addr: addr.to_string(),
            ch,
            proposal: codec::encode(codec::Kind::Forward, p),
            reply,
        };
        queue.send(pending).map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::LeaderChanged)?
    }
}

/// Takes what has gathered once a call may go, and sends it.
async fn send_loop<S, F>(mut rx: mpsc::UnboundedReceiver<Pending>, send: S)
where
    S: Fn(Vec<Pending>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let back = Arc::new(Notify::new());
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        wait_for_calls_out(&slots, &back).await;
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                // A write for another leader (it just changed) starts the next call.
                Ok(p) if p.addr != batch[0].addr => {
                    carried = Some(p);
                    break;
                }
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let call = send(batch);
        let back = back.clone();
        tokio::spawn(async move {
            call.await;
            drop(slot);
            back.notify_one();
        });
    }
}

/// Returns when no call is out, or after [`PATIENCE`].
async fn wait_for_calls_out(slots: &Semaphore, back: &Notify) {
    if slots.available_permits() == MAX_IN_FLIGHT {
        return;
    }
    let patience = tokio::time::sleep(PATIENCE);
    tokio::pin!(patience);
    // A call that comes back between the check and the wait leaves a permit
    // in `back`, so the wait sees it.
    while slots.available_permits() < MAX_IN_FLIGHT {
        tokio::select! {
            _ = back.notified() => {}
            _ = &mut patience => return,
        }
    }
}

/// The error a write gets when its whole call failed with `s`.
fn call_error(s: &Status) -> Error {
    match s.code() {
        tonic::Code::FailedPrecondition => Error::Config(s.message().to_string()),
        _ => Error::LeaderChanged,
    }
}

async fn send(batch: Vec<Pending>, token: Option<String>) {
    let ch = batch[0].ch.clone();
    let mut replies = Vec::with_capacity(batch.len());
    let mut proposals = Vec::with_capacity(batch.len());
    for p in batch {
        proposals.push(p.proposal);
        replies.push(p.reply);
    }
    let mut req =
        charter_proto::conn::bearer(token.as_deref(), pb::ForwardBatchRequest { proposals });
    req.set_timeout(super::WRITE_RETRY);
    let results = match RaftPeerClient::new(ch).forward_batch(req).await {
        Ok(r) => r.into_inner().results,
        Err(s) => {
            for r in replies {
                let _ = r.send(Err(call_error(&s)));
            }
            return;
        }
    };
    if results.len() != replies.len() {
        let msg = format!(
            "the leader answered {} of {} forwarded writes",
            results.len(),
            replies.len()
        );
        for r in replies {
            let _ = r.send(Err(Error::Config(msg.clone())));
        }
        return;
    }
    for (res, reply) in results.into_iter().zip(replies) {
        let _ = reply.send(result_of(res));
    }
}

fn result_of(r: pb::ForwardResult) -> Result<Outcome, Error> {
    if r.error.is_empty() {
        codec::decode(codec::Kind::Outcome, &r.outcome)
            .map_err(|e| Error::Config(format!("the leader sent an unreadable outcome: {e}")))
    } else if r.retry {
        Err(Error::LeaderChanged)
    } else {
        Err(Error::Config(r.error))
    }
}

/// The leader's side of `ForwardBatch`: who may call it is checked here
/// (members only: the peer token and, with TLS, a member certificate).
pub(super) async fn serve_batch(
    member: &MemberHandle,
    placer: &Arc<placer::Placer>,
    req: Request<pb::ForwardBatchRequest>,
) -> Result<Response<pb::ForwardBatchReply>, Status> {
    require_admin(&super::principal(&req)?, "forwarding writes")?;
    super::auth::member_certificate(&req)?;
    // An undecodable write gets its own error; the rest are proposed.
    let mut errors: Vec<Option<String>> = Vec::new();
    let mut proposals = Vec::new();
    for b in &req.get_ref().proposals {
        match codec::decode::<Proposal>(codec::Kind::Forward, b) {
            Ok(p) => {
                errors.push(None);
                proposals.push(p);
            }
            Err(e) => errors.push(Some(format!("undecodable forwarded write: {e}"))),
        }
    }
    // Placement reservations are held until every outcome is in.
    let mut held = Vec::new();
    if member.is_leader() {
        for p in &mut proposals {
            held.push(placer.reserve(member, p));
        }
    }
    member.metrics().forward_batches.inc();
    member
        .metrics()
        .forwarded_writes
        .inc_by(proposals.len() as u64);
    let mut outcomes = member.propose_all(proposals).await.into_iter();
    let mut results = Vec::with_capacity(errors.len());
    for error in errors {
        let outcome = match error {
            Some(e) => Err(Error::Config(e)),
            None => outcomes.next().unwrap_or(Err(Error::Stopped)),
        };
        results.push(match outcome {
            Ok(o) => pb::ForwardResult {
                outcome: codec::encode(codec::Kind::Outcome, &o),
                ..Default::default()
            },
            Err(e) => pb::ForwardResult {
                retry: !matches!(e, Error::Config(_)),
                error: match e {
                    Error::Config(m) => m,
                    e => to_status(e).message().to_string(),
                },
                ..Default::default()
            },
        });
    }
    drop(held);
    Ok(Response::new(pb::ForwardBatchReply { results }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    fn pending(reply: oneshot::Sender<Result<Outcome, Error>>) -> Pending {
        let ch = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        Pending {
            addr: "127.0.0.1:9".into(),
            ch,
            proposal: Vec::new(),
            reply,
        }
    }

    /// A leader that answers the first call after 2 s and the rest at once.
    fn slow_first_call()
    -> impl Fn(Vec<Pending>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        move |batch: Vec<Pending>| {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if n == 0 {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                for p in batch {
                    let _ = p
                        .reply
                        .send(Ok(Ok(crate::state::Applied::Retention(Default::default()))));
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_does_not_wait_behind_a_slow_call_longer_than_the_patience() {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_loop(rx, slow_first_call()));
        let t0 = Instant::now();
        let (r1, first) = oneshot::channel();
        tx.send(pending(r1)).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (r2, second) = oneshot::channel();
        tx.send(pending(r2)).unwrap();
        second.await.unwrap().unwrap().unwrap();
        let waited = t0.elapsed();
        assert!(
            waited < Duration::from_millis(100),
            "the second write waited {waited:?} behind the first call"
        );
        first.await.unwrap().unwrap().unwrap();
        assert!(t0.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn writes_that_arrive_while_a_quick_call_is_out_go_together() {
        let (tx, rx) = mpsc::unbounded_channel();
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        tokio::spawn(send_loop(rx, move |batch: Vec<Pending>| {
            seen.lock().unwrap().push(batch.len());
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                for p in batch {
                    let _ = p
                        .reply
                        .send(Ok(Ok(crate::state::Applied::Retention(Default::default()))));
                }
            }
        }));
        let mut replies = Vec::new();
        for _ in 0..5 {
            let (r, rx) = oneshot::channel();
            tx.send(pending(r)).unwrap();
            replies.push(rx);
            tokio::task::yield_now().await;
        }
        for r in replies {
            r.await.unwrap().unwrap().unwrap();
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, 4]);
    }
}
