//! [`Transport`] over tonic: one queue and one task per peer, so messages to a
//! peer stay in order and a slow or dead peer delays nobody else. Each task
//! sends what has queued up as one `RaftPeer.Send` call; each message is its
//! own rust-protobuf encoding. A full queue drops messages (raft resends).

use super::{Report, Transport};
use charter_proto::RaftBatch;
use charter_proto::raft_peer_client::RaftPeerClient;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// The largest gRPC message between peers (snapshots travel whole).
pub const MAX_PEER_MESSAGE: usize = 256 << 20;
const QUEUE: usize = 4096;
const MAX_BATCH: usize = 256;

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
        let ep = Endpoint::from_shared(format!("http://{}", self.addr))
            .ok()?
            .connect_timeout(Duration::from_millis(300))
            .tcp_nodelay(true);
        Some(
            RaftPeerClient::new(ep.connect_lazy())
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_PEER_MESSAGE),
        )
    }

    async fn run(self, mut rx: mpsc::Receiver<Message>) {
        let Some(mut client) = self.client() else {
            tracing::error!(peer = self.to, addr = %self.addr, "invalid peer address; raft messages to it are dropped");
            return;
        };
        let mut failing = false;
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let snapshot = batch
                .iter()
                .any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
            let msgs: Vec<Vec<u8>> = batch
                .iter()
                .filter_map(|m| m.write_to_bytes().ok())
                .collect();
            let mut req = tonic::Request::new(RaftBatch {
                from: self.from,
                msgs,
            });
            if let Some(t) = &self.token
                && let Ok(v) = format!("Bearer {t}").parse()
            {
                req.metadata_mut().insert("authorization", v);
            }
            req.set_timeout(Duration::from_secs(if snapshot { 30 } else { 2 }));
            match client.send(req).await {
                Ok(_) => {
                    if failing {
                        tracing::info!(peer = self.to, "peer reachable again");
                        failing = false;
                    }
                    if snapshot {
                        (self.reports)(Report::Snapshot(self.to, true));
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(peer = self.to, addr = %self.addr, error = %e.message(), "peer unreachable");
                        failing = true;
                    }
                    (self.reports)(Report::Unreachable(self.to));
                    if snapshot {
                        (self.reports)(Report::Snapshot(self.to, false));
                    }
                    // Drop what queued while the peer was away; raft resends.
                    while rx.try_recv().is_ok() {}
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
