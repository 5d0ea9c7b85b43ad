//! Talking to the servers: one lazily connected channel per address, a
//! bearer token on every call, and failover. A call goes to the member that
//! answered last; when it is down or has no leader (`UNAVAILABLE`), the next
//! address is tried, until a retry budget runs out. Followers forward writes
//! to the leader, so any live member will do.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// Channels to every server of a cluster.
pub struct Servers {
    addrs: Vec<String>,
    channels: Vec<Channel>,
    token: Option<String>,
    current: AtomicUsize,
}

/// A call that failed for good: the server that answered last and its status.
#[derive(Debug)]
pub struct Failed {
    /// The address of the member that gave the final answer.
    pub addr: String,
    /// Its answer.
    pub status: Status,
}

/// Whether a status means "try another member, or again later".
pub fn retryable(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Cancelled)
        || (s.code() == Code::Unknown && s.message().contains("transport"))
}

impl Servers {
    /// Channels to `addrs` (`HOST:PORT`, or with `http://`); nothing connects yet.
    pub fn new(addrs: &[String], token: Option<String>) -> Result<Servers, String> {
        let addrs: Vec<String> = addrs
            .iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() {
            return Err("no server address was given".into());
        }
        let mut channels = Vec::new();
        for a in &addrs {
            let url = if a.starts_with("http://") {
                a.clone()
            } else {
                format!("http://{a}")
            };
            let ep = Endpoint::from_shared(url)
                .map_err(|e| format!("bad server address `{a}`: {e}; use HOST:PORT"))?;
            channels.push(
                ep.connect_timeout(Duration::from_millis(500))
                    .timeout(Duration::from_secs(10))
                    .tcp_nodelay(true)
                    .connect_lazy(),
            );
        }
        Ok(Servers {
            addrs,
            channels,
            token: token.filter(|t| !t.is_empty()),
            current: AtomicUsize::new(0),
        })
    }

    /// Every member's channel, with its address (to reach each one: an
    /// artifact is stored on every member).
    pub fn each(&self) -> Vec<(String, Channel)> {
        self.addrs
            .iter()
            .cloned()
            .zip(self.channels.iter().cloned())
            .collect()
    }

    /// Wraps a message with the bearer token.
    pub fn req<M>(&self, m: M) -> Request<M> {
        bearer(self.token.as_deref(), m)
    }

    /// Calls `f` on a member's channel, moving on to the next member when
    /// one is unavailable, until it succeeds or `retry_for` has passed.
    pub async fn call<T, F, Fut>(&self, retry_for: Duration, f: F) -> Result<T, Failed>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + retry_for;
        let n = self.channels.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut tried = 0usize;
        loop {
            let idx = (start + tried) % n;
            match f(self.channels[idx].clone()).await {
                Ok(r) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(r.into_inner());
                }
                Err(s) if retryable(&s) && Instant::now() < deadline => {
                    tried += 1;
                    if tried.is_multiple_of(n) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Err(status) => {
                    return Err(Failed {
                        addr: self.addrs[idx].clone(),
                        status,
                    });
                }
            }
        }
    }
}

/// `m` as a request carrying `token` (if any) as its bearer token.
pub fn bearer<M>(token: Option<&str>, m: M) -> Request<M> {
    let mut r = Request::new(m);
    if let Some(t) = token
        && let Ok(v) = format!("Bearer {t}").parse()
    {
        r.metadata_mut().insert("authorization", v);
    }
    r
}
