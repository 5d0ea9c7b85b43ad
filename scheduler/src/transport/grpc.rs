//! [`Transport`] over tonic: one queue and one task per peer, so messages to a
//! peer stay in order and a slow or dead peer delays nobody else. Each task
//! keeps one `RaftPeer.Stream` call open and sends what has queued up as one
//! batch on it, without waiting for any answer; each message is its own
//! rust-protobuf encoding. A full queue drops messages (raft resends).
//! A snapshot goes on its own `RaftPeer.Snapshot` call in chunks of
//! [`SNAPSHOT_CHUNK`], so its size is bounded by memory, not by a message.

use super::{Report, Transport};
use charter_proto::raft_peer_client::RaftPeerClient;
use charter_proto::{RaftBatch, SnapshotChunk};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// The largest gRPC message between peers (raft batches; snapshots travel
/// in chunks).
pub const MAX_PEER_MESSAGE: usize = 16 << 20;
/// Bytes of snapshot data per chunk.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;
const QUEUE: usize = 4096;
const MAX_BATCH: usize = 256;
/// Batches waiting to go out on a peer's stream.
const STREAM_QUEUE: usize = 64;
/// A stream open this long before it failed counts as having worked.
const STREAM_LASTED: Duration = Duration::from_secs(2);
/// HTTP/2 keep-alive ping interval to peers.
const KEEPALIVE: Duration = Duration::from_secs(1);

/// Where delivery reports go.
pub type ReportSink = Arc<dyn Fn(Report) + Send + Sync>;

struct Peer {
    addr: String,
    tx: mpsc::Sender<Message>,
}

/// Raft messages over gRPC.
pub struct GrpcTransport {
    id: u64,
    token: Option<String>,
    runtime: tokio::runtime::Handle,
    reports: ReportSink,
    peers: HashMap<u64, Peer>,
}

impl GrpcTransport {
    /// A transport for member `id`. Peer calls carry `token` as a bearer token.
    pub fn new(
        id: u64,
        token: Option<String>,
        runtime: tokio::runtime::Handle,
        reports: ReportSink,
    ) -> GrpcTransport {
        GrpcTransport {
            id,
            token,
            runtime,
            reports,
            peers: HashMap::new(),
        }
    }
}

impl Transport for GrpcTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            let Some(peer) = self.peers.get(&to) else {
                continue;
            };
            if peer.tx.try_send(m).is_err() {
                (self.reports)(Report::Unreachable(to));
            }
        }
    }

    fn set_peer(&mut self, id: u64, addr: &str) {
        if id == self.id || self.peers.get(&id).is_some_and(|p| p.addr == addr) {
            return;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = PeerTask {
            from: self.id,
            to: id,
            addr: addr.to_string(),
            token: self.token.clone(),
            reports: self.reports.clone(),
        };
        self.runtime.spawn(task.run(rx));
        // Replacing the sender ends the old task when its queue drains.
        self.peers.insert(
            id,
            Peer {
                addr: addr.to_string(),
                tx,
            },
        );
    }

    fn remove_peer(&mut self, id: u64) {
        self.peers.remove(&id);
    }
}

struct PeerTask {
    from: u64,
    to: u64,
    addr: String,
    token: Option<String>,
    reports: ReportSink,
}

impl PeerTask {
    fn client(&self) -> Option<RaftPeerClient<Channel>> {
        let ep = charter_proto::tls::endpoint(&self.addr, charter_proto::tls::Role::Member)
            .ok()?
            .connect_timeout(Duration::from_millis(300))
            .tcp_nodelay(true)
            // A peer that stops answering (frozen, or its host gone) ends
            // the stream, so its messages are reported unreachable.
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE * 2)
            .keep_alive_while_idle(true);
        Some(
            RaftPeerClient::new(ep.connect_lazy())
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_PEER_MESSAGE),
        )
    }

    fn request<T>(&self, body: T) -> tonic::Request<T> {
        charter_proto::conn::bearer(self.token.as_deref(), body)
    }

    /// Sends batches on one stream per connection; a snapshot goes by a
    /// unary call, whose answer says whether it arrived. When the stream
    /// ends in an error, the peer is reported unreachable, what queued
    /// meanwhile is dropped (raft resends), and a new stream is opened for
    /// the next message.
    async fn run(self, mut rx: mpsc::Receiver<Message>) {
        let Some(client) = self.client() else {
            tracing::error!(peer = self.to, addr = %self.addr, "invalid peer address; raft messages to it are dropped");
            return;
        };
        let mut failed_before = false;
        let mut next = None;
        loop {
            if next.is_none() {
                // Open a stream only once there is something to send.
                match rx.recv().await {
                    Some(m) => next = Some(m),
                    None => return,
                }
            }
            let (out, out_rx) = mpsc::channel::<RaftBatch>(STREAM_QUEUE);
            let mut streaming = client.clone();
            let req = self.request(ReceiverStream::new(out_rx));
            let opened = tokio::time::Instant::now();
            let mut call = tokio::spawn(async move { streaming.stream(req).await });
            let ended = loop {
                let first = match next.take() {
                    Some(m) => m,
                    None => tokio::select! {
                        m = rx.recv() => match m {
                            Some(m) => m,
                            // The transport dropped this peer: dropping
                            // `out` ends the stream.
                            None => return,
                        },
                        r = &mut call => break r,
                    },
                };
                let (snapshots, batch): (Vec<Message>, Vec<Message>) = take_batch(first, &mut rx)
                    .into_iter()
                    .partition(|m| m.get_msg_type() == MessageType::MsgSnapshot);
                for s in snapshots {
                    self.send_snapshot(&client, s).await;
                }
                let msgs: Vec<Vec<u8>> = batch
                    .iter()
                    .filter_map(|m| m.write_to_bytes().ok())
                    .collect();
                if msgs.is_empty() {
                    continue;
                }
                let batch = RaftBatch {
                    from: self.from,
                    msgs,
                };
                if out.send(batch).await.is_err() {
                    // The call ended; its result says why.
                    break (&mut call).await;
                }
            };
            let error = match ended {
                Ok(Ok(_)) => "the peer ended the stream".to_string(),
                Ok(Err(e)) => e.message().to_string(),
                Err(e) => e.to_string(),
            };
            // A stream that lasted is a new failure worth a line; quick
            // failures in a row while the peer stays away are not.
            if !failed_before || opened.elapsed() > STREAM_LASTED {
                tracing::warn!(peer = self.to, addr = %self.addr, %error, "peer unreachable");
            }
            failed_before = true;
            (self.reports)(Report::Unreachable(self.to));
            // Drop what queued while the peer was away; raft resends.
            while rx.try_recv().is_ok() {}
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends one MsgSnapshot in chunks; raft hears whether it arrived.
    async fn send_snapshot(&self, client: &RaftPeerClient<Channel>, mut m: Message) {
        let data = m.mut_snapshot().take_data();
        let head = m.write_to_bytes().unwrap_or_default();
        let from = self.from;
        let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
        let feed = tokio::spawn(async move {
            let mut pieces = data.chunks(SNAPSHOT_CHUNK);
            let first = SnapshotChunk {
                from,
                message: head,
                data: pieces.next().unwrap_or_default().to_vec(),
            };
            if tx.send(first).await.is_err() {
                return;
            }
            for p in pieces {
                let c = SnapshotChunk {
                    from,
                    message: Vec::new(),
                    data: p.to_vec(),
                };
                if tx.send(c).await.is_err() {
                    return;
                }
            }
        });
        let mut req = self.request(ReceiverStream::new(rx));
        req.set_timeout(Duration::from_secs(120));
        let sent = client.clone().snapshot(req).await;
        feed.abort();
        let ok = match sent {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(peer = self.to, addr = %self.addr, error = %e.message(), "snapshot not delivered");
                (self.reports)(Report::Unreachable(self.to));
                false
            }
        };
        (self.reports)(Report::Snapshot(self.to, ok));
    }
}

/// `first` and whatever else is queued, up to [`MAX_BATCH`] messages.
fn take_batch(first: Message, rx: &mut mpsc::Receiver<Message>) -> Vec<Message> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(m) => batch.push(m),
            Err(_) => break,
        }
    }
    batch
}
