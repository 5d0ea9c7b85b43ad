//! The agent's own gRPC service, for the servers: a task's logs. Callers
//! must present the secret the agent registered with its node.

use crate::logs;
use charter_proto as pb;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The service.
#[derive(Clone)]
pub struct AgentService {
    /// The agent's data directory.
    pub data: PathBuf,
    /// The bearer secret callers must present.
    pub secret: String,
    /// Tasks whose processes run now.
    pub running: Arc<Mutex<BTreeSet<u64>>>,
}

impl AgentService {
    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let want = format!("Bearer {}", self.secret);
        let got = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if constant_eq(got.as_bytes(), want.as_bytes()) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "this agent answers only the servers of its cluster",
            ))
        }
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    type LogsStream = ChunkStream;

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<ChunkStream>, Status> {
        self.check(&req)?;
        let r = req.into_inner();
        let dir = logs::task_dir(&self.data, r.task_id);
        if !dir.exists() {
            return Err(Status::not_found(format!(
                "this agent has no logs of task {}; it has not started here yet",
                r.task_id
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::LogChunk, Status>>(16);
        let running = self.running.clone();
        let (task, follow) = (r.task_id, r.follow);
        tokio::spawn(async move {
            let mut sent = [0usize; 2];
            loop {
                let live = running.lock().map(|r| r.contains(&task)).unwrap_or(false);
                for (i, name) in ["stdout", "stderr"].into_iter().enumerate() {
                    let all = logs::read_all(&dir, name);
                    // A rotation shrinks the files: start over from what is left.
                    if all.len() < sent[i] {
                        sent[i] = 0;
                    }
                    if all.len() > sent[i] {
                        let chunk = pb::LogChunk {
                            stream: name.to_string(),
                            data: all[sent[i]..].to_vec(),
                        };
                        sent[i] = all.len();
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                }
                if !follow || !live {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
