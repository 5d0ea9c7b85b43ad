//! Talking to the servers: one lazily connected channel per address, a
//! bearer token on every call, and failover. A call goes first to the member
//! last named as leader (members name it in a [`LEADER_HEADER`] on every
//! answer), else to the member that answered last. Each attempt is bounded
//! by its share of the retry budget (at least [`MIN_ATTEMPT`], never more
//! than what is left), so a silent member (frozen, cut off, or waiting out
//! an election of its own) costs one share and the call moves on to the
//! next address, as on `UNAVAILABLE`, until the budget runs out. Followers
//! forward writes to the leader, so any member of a majority will do.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Channels to every server of a cluster.
pub struct Servers {
    addrs: Vec<String>,
    channels: Vec<Channel>,
    token: Option<String>,
    current: AtomicUsize,
    /// The index of the member last named as leader, plus one (0: none).
    leader: AtomicUsize,
    /// Give up after this long per member when no member could even be
    /// connected to (a person at a terminal); `None`: the whole budget.
    connect_budget: Option<Duration>,
}

/// The response header in which a member names the leader it knows
/// (its client address), so clients can go there first.
pub const LEADER_HEADER: &str = "x-charter-leader";

/// The shortest time one attempt is given, whatever the budget.
pub const MIN_ATTEMPT: Duration = Duration::from_millis(250);

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
            let ep = crate::tls::endpoint(a, crate::tls::Role::Member)
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
            leader: AtomicUsize::new(0),
            connect_budget: None,
        })
    }

    /// Gives up after `per_member` for each member when none of them could
    /// be connected to at all, naming every address tried: a wrong
    /// `--server` fails in seconds, not after the whole retry budget.
    pub fn give_up_unreachable(mut self, per_member: Duration) -> Servers {
        self.connect_budget = Some(per_member);
        self
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
    /// one is unavailable or silent, until it succeeds or `retry_for` has
    /// passed. Each attempt gets `retry_for / members` (at least
    /// [`MIN_ATTEMPT`], at most what is left); one that runs out is
    /// abandoned (a write carries its idempotency key, so trying it again
    /// elsewhere never applies it twice).
    pub async fn call<T, F, Fut>(&self, retry_for: Duration, f: F) -> Result<T, Failed>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let began = Instant::now();
        let deadline = began + retry_for;
        let n = self.channels.len();
        let share = (retry_for / n as u32).max(MIN_ATTEMPT);
        let start = self.first();
        let mut tried = 0usize;
        let mut reached = false;
        loop {
            let idx = (start + tried) % n;
            let left = deadline.saturating_duration_since(Instant::now());
            let bound = share.min(left).max(MIN_ATTEMPT);
            let (res, silent) =
                match tokio::time::timeout(bound, f(self.channels[idx].clone())).await {
                    Ok(r) => (r, false),
                    Err(_) => (
                        Err(Status::unavailable(format!(
                            "{} did not answer within {} ms",
                            self.addrs[idx],
                            bound.as_millis()
                        ))),
                        true,
                    ),
                };
            // Whether this attempt never reached a member at all.
            let missed = silent || res.as_ref().is_err_and(not_connected);
            match res {
                Ok(r) => {
                    self.current.store(idx, Ordering::Relaxed);
                    self.note_leader(r.metadata());
                    return Ok(r.into_inner());
                }
                Err(s)
                    if !reached
                        && missed
                        && self
                            .connect_budget
                            .is_some_and(|b| began.elapsed() >= b * n as u32) =>
                {
                    return Err(Failed {
                        addr: self.addrs.join(","),
                        status: Status::unavailable(format!(
                            "cannot connect to {} (each tried for {:.0} s; last: {})",
                            self.addrs.join(", "),
                            self.connect_budget.unwrap_or_default().as_secs_f64(),
                            s.message()
                        )),
                    });
                }
                Err(s) if retryable(&s) && Instant::now() < deadline => {
                    reached |= !missed;
                    if tried == 0 {
                        // The leader hint led to a member that failed:
                        // forget it until someone names the leader again.
                        self.leader.store(0, Ordering::Relaxed);
                    }
                    tried += 1;
                    if tried.is_multiple_of(n) {
                        let left = deadline.saturating_duration_since(Instant::now());
                        tokio::time::sleep(Duration::from_millis(100).min(left)).await;
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

    /// Remembers the leader a member named, if it is one of ours.
    fn note_leader(&self, md: &MetadataMap) {
        let Some(name) = md.get(LEADER_HEADER).and_then(|v| v.to_str().ok()) else {
            return;
        };
        let bare = |a: &str| {
            a.trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string()
        };
        let name = bare(name);
        let hit = self.addrs.iter().position(|a| bare(a) == name);
        self.leader
            .store(hit.map_or(0, |i| i + 1), Ordering::Relaxed);
    }

    /// The member calls go to first: the leader last named, else the
    /// member that answered last.
    fn first(&self) -> usize {
        let i = match self.leader.load(Ordering::Relaxed) {
            0 => self.current.load(Ordering::Relaxed),
            l => l - 1,
        };
        i % self.channels.len()
    }
}

/// Whether a call failed before any member got it (no connection), as
/// opposed to a member's own `UNAVAILABLE` (tonic names the transport).
fn not_connected(s: &Status) -> bool {
    let m = s.message();
    s.code() == Code::Unavailable && (m.contains("tcp connect") || m.contains("transport"))
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
