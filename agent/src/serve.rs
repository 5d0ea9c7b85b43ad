//! The agent's own gRPC service, for the servers: a task's logs. Callers
//! must present the secret the agent registered with its node.

use crate::logs;
use crate::sandbox::{self, Isolation};
use crate::supervisor::Sandboxed;
use charter_proto as pb;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The service.
#[derive(Clone)]
pub struct AgentService {
    /// The agent's data directory.
    pub data: PathBuf,
    /// Where the leases' sandboxes are.
    pub sandboxes: PathBuf,
    /// The bearer secret callers must present.
    pub secret: String,
    /// Tasks whose processes run now.
    pub running: Arc<Mutex<BTreeSet<u64>>>,
    /// Leases with a live sandbox here, and who their processes run as.
    pub leases: Sandboxed,
    /// This node's name.
    pub node: String,
    /// How processes are limited.
    pub iso: Isolation,
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
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;
type ExecStream = Pin<Box<dyn Stream<Item = Result<pb::ExecOutput, Status>> + Send>>;

/// Forwards one pipe of an exec'd process as chunks of `stream`.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    stream: &'static str,
    tx: tokio::sync::mpsc::Sender<Result<pb::ExecOutput, Status>>,
) {
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            return;
        }
        let out = pb::ExecOutput {
            stream: stream.into(),
            data: buf[..n].to_vec(),
            exit_code: None,
        };
        if tx.send(Ok(out)).await.is_err() {
            return;
        }
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    type LogsStream = ChunkStream;
    type ExecStream = ExecStream;

    async fn exec(&self, req: Request<pb::ExecRequest>) -> Result<Response<ExecStream>, Status> {
        self.check(&req)?;
        let r = req.into_inner();
        if r.argv.is_empty() || r.argv[0].is_empty() {
            return Err(Status::invalid_argument(
                "no command; put it after `--`, like `charter lease exec 7 -- uname -a`",
            ));
        }
        let (lease, user) = self
            .leases
            .lock()
            .ok()
            .and_then(|l| l.get(&r.lease_id).cloned())
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "lease {} has no sandbox on node {} (it ended, or the agent has not seen it yet)",
                    r.lease_id, self.node
                ))
            })?;
        // As the lease's user, like its task: never as the agent.
        let launch = crate::supervisor::launch_for(
            (&self.data, &self.sandboxes, &self.node),
            &lease,
            user,
            r.env.into_iter().collect(),
        );
        let mut child = sandbox::spawn(&launch, &self.iso, &r.argv, Stdio::piped(), Stdio::piped())
            .map_err(|e| Status::failed_precondition(format!("cannot run {:?}: {e}", r.argv[0])))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::ExecOutput, Status>>(16);
        let out = child
            .stdout
            .take()
            .map(|o| tokio::spawn(pump(o, "stdout", tx.clone())));
        let err = child
            .stderr
            .take()
            .map(|e| tokio::spawn(pump(e, "stderr", tx.clone())));
        tokio::spawn(async move {
            let status = child.wait().await;
            for p in [out, err].into_iter().flatten() {
                let _ = p.await;
            }
            let code = status.ok().and_then(|s| {
                use std::os::unix::process::ExitStatusExt;
                s.code().or_else(|| s.signal().map(|sig| 128 + sig))
            });
            let _ = tx
                .send(Ok(pb::ExecOutput {
                    stream: "exit".into(),
                    data: Vec::new(),
                    exit_code: Some(code.unwrap_or(-1)),
                }))
                .await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<ChunkStream>, Status> {
        self.check(&req)?;
        let r = req.into_inner();
        // No directory yet: the task has printed nothing (files are made on
        // the first output), so the stream starts empty.
        let dir = logs::task_dir(&self.data, r.task_id);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::LogChunk, Status>>(16);
        let running = self.running.clone();
        let (task, follow) = (r.task_id, r.follow);
        tokio::spawn(async move {
            // First what is kept, then (following) only what each current
            // file gains; no file is read whole twice.
            let mut offset = [0u64; 2];
            let mut first = true;
            loop {
                let live = running.lock().map(|r| r.contains(&task)).unwrap_or(false);
                for (i, name) in ["stdout", "stderr"].into_iter().enumerate() {
                    let (data, next) = if first {
                        logs::read_all(&dir, name)
                    } else {
                        logs::read_since(&dir, name, offset[i])
                    };
                    offset[i] = next;
                    if data.is_empty() {
                        continue;
                    }
                    let chunk = pb::LogChunk {
                        stream: name.to_string(),
                        data,
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                first = false;
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
