//! Locks, semaphores and leader elections on a Charter cluster.
//!
//! A [`Lock`] is held until it is released, dropped, or lost; while held, a
//! background task renews it every third of its TTL. Every acquisition
//! carries a fencing token that only grows across the cluster: hand it to
//! the resource you protect, and have the resource refuse a token smaller
//! than the largest it has seen. That is what keeps a holder that was
//! paused (GC, SIGSTOP, a swapped-out VM) from writing after its lock moved
//! on: its local timers cannot tell it in time, the token check can.
//!
//! ```no_run
//! # async fn demo() -> Result<(), charter_client::Status> {
//! use charter_client::Client;
//! use std::time::Duration;
//!
//! let client = Client::connect(&["127.0.0.1:7700"], Some("my-token".into()))?;
//! let lock = client.lock("nightly-report").ttl(Duration::from_secs(10)).acquire().await?;
//! println!("held with fencing token {}", lock.token());
//! // ... work, passing lock.token() to every write ...
//! lock.release().await?;
//!
//! // Leader election: on_elected runs each time this process becomes
//! // leader, on_lost when it stops being leader (at the latest at the
//! // lock's expiry, before anyone else can be elected).
//! client
//!     .election("scheduler-primary", "10.0.0.7:8080")
//!     .run(
//!         |lock| println!("leader, term {}", lock.token()),
//!         |why| println!("no longer leader: {why}"),
//!     )
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The local view of a lock is conservative: [`Lock::deadline`] is the
//! send time of the last renewal that succeeded plus the TTL, never later
//! than the cluster's own `expires_at` (which is stamped when the leader
//! received the renewal), so a process that stops its work by its deadline
//! has stopped before anyone else can be granted the lock.
//!
//! Over 500 lines: the client library's one public surface: locks, elections and observing.

use charter_proto as pb;
use charter_proto::conn::Servers;
use pb::locks_client::LocksClient;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Code;
pub use tonic::Status;

/// The TTL of a lock that names none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);
/// The longest one call blocks waiting for a lock (it is called again).
const BLOCK: Duration = Duration::from_secs(2);
/// How long calls keep retrying through elections.
const RETRY_FOR: Duration = Duration::from_secs(15);

/// A connection to a Charter cluster (cheap to clone).
#[derive(Clone)]
pub struct Client {
    servers: Arc<Servers>,
}

impl Client {
    /// A client of the members at `addrs` (`HOST:PORT`), calling with
    /// `token`. With TLS, install the process's TLS settings first
    /// ([`charter_proto::tls`]).
    pub fn connect(addrs: &[&str], token: Option<String>) -> Result<Client, Status> {
        let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let servers = Servers::new(&addrs, token).map_err(Status::invalid_argument)?;
        Ok(Client::from_servers(servers))
    }

    /// A client over channels already made.
    pub fn from_servers(servers: Servers) -> Client {
        Client {
            servers: Arc::new(servers),
        }
    }

    /// The options of an acquisition of lock `name`: `.acquire().await`.
    pub fn lock(&self, name: &str) -> LockOptions {
        LockOptions {
            client: self.clone(),
            name: name.to_string(),
            ttl: DEFAULT_TTL,
            limit: 1,
            wait: None,
            holder: default_holder(),
            value: String::new(),
        }
    }

    /// An election on lock `name`, campaigning with `value` (e.g. this
    /// process's address, which others read with [`Client::observe`]).
    pub fn election(&self, name: &str, value: &str) -> Election {
        Election {
            options: self.lock(name).value(value),
        }
    }

    /// Lock `name` as it is now: holders (the first is an election's
    /// leader) and waiters.
    pub async fn show(&self, name: &str) -> Result<pb::LockReply, Status> {
        let req = pb::ShowLockRequest {
            name: name.to_string(),
            ..Default::default()
        };
        self.call(RETRY_FOR, |mut c, s| {
            let r = req.clone();
            async move { c.show(s.req(r)).await }
        })
        .await
    }

    /// The leader of election `name` now and at every change, as a stream
    /// (`None`: no leader). The stream ends when the member serving it
    /// stops; call again.
    pub async fn observe(
        &self,
        name: &str,
    ) -> Result<impl tokio_stream::Stream<Item = Result<Option<Leader>, Status>> + use<>, Status>
    {
        use tokio_stream::StreamExt;
        let req = pb::ShowLockRequest {
            name: name.to_string(),
            ..Default::default()
        };
        let stream = self
            .call(RETRY_FOR, |mut c, s| {
                let r = req.clone();
                async move { c.observe(s.req(r)).await }
            })
            .await?;
        Ok(stream.map(|r| r.map(|l| l.holders.first().map(Leader::of))))
    }

    async fn call<T, F, Fut>(&self, budget: Duration, f: F) -> Result<T, Status>
    where
        F: Fn(LocksClient<tonic::transport::Channel>, Arc<Servers>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let servers = self.servers.clone();
        self.servers
            .call(budget, |ch| f(LocksClient::new(ch), servers.clone()))
            .await
            .map_err(|e| {
                Status::new(
                    e.status.code(),
                    format!("{} (from {})", e.status.message(), e.addr),
                )
            })
    }
}

/// An election's leader, as observers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// The leader's principal.
    pub principal: String,
    /// The value it campaigned with (blank if it is another principal's
    /// and the observer is not an admin).
    pub value: String,
    /// Its fencing token: the election's term, greater for every new leader.
    pub token: u64,
    /// When its leadership ends unless renewed (ms since the epoch, the
    /// cluster's clock).
    pub expires_at_ms: i64,
}

impl Leader {
    fn of(h: &pb::LockHold) -> Leader {
        Leader {
            principal: h.principal.clone(),
            value: h.value.clone(),
            token: h.token,
            expires_at_ms: h.expires_at_ms,
        }
    }
}

fn default_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", host.trim(), std::process::id())
}

fn fresh_key() -> String {
    format!(
        "lock-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// How to acquire a lock.
#[derive(Clone)]
pub struct LockOptions {
    client: Client,
    name: String,
    ttl: Duration,
    limit: u32,
    wait: Option<Duration>,
    holder: String,
    value: String,
}

impl LockOptions {
    /// How long the lock lives without a renewal (default 15 s, at least 1 s).
    pub fn ttl(mut self, ttl: Duration) -> LockOptions {
        self.ttl = ttl;
        self
    }

    /// How many may hold it at once (default 1; N makes it a semaphore).
    pub fn limit(mut self, limit: u32) -> LockOptions {
        self.limit = limit;
        self
    }

    /// How long to wait in line (default: until granted).
    pub fn wait(mut self, wait: Duration) -> LockOptions {
        self.wait = Some(wait);
        self
    }

    /// Who holds it, for `charter lock show` (default `hostname:pid`).
    pub fn holder(mut self, holder: &str) -> LockOptions {
        self.holder = holder.to_string();
        self
    }

    /// An election's value.
    pub fn value(mut self, value: &str) -> LockOptions {
        self.value = value.to_string();
        self
    }

    /// Takes the lock: waits in line (renewing its place) until it is
    /// held, or fails when the wait runs out (`DEADLINE_EXCEEDED`), when the
    /// lock is busy and no wait was allowed (`FAILED_PRECONDITION`), or on
    /// an invalid request.
    pub async fn acquire(self) -> Result<Lock, Status> {
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let wait_ms = self.wait.map_or(u64::MAX, |w| {
            u64::try_from(w.as_millis()).unwrap_or(u64::MAX)
        });
        let quarter = (self.ttl / 3).min(BLOCK);
        let req = pb::AcquireLockRequest {
            idempotency_key: fresh_key(),
            name: self.name.clone(),
            ttl_ms,
            limit: self.limit,
            wait_ms,
            holder: self.holder.clone(),
            value: self.value.clone(),
            block_ms: u64::try_from(quarter.as_millis()).unwrap_or(0),
        };
        let c = &self.client;
        let mut sent = Instant::now();
        let mut h = c
            .call(RETRY_FOR, |mut l, s| {
                let r = req.clone();
                async move { l.acquire(s.req(r)).await }
            })
            .await?;
        let give_up = self.wait.map(|w| sent + w);
        // `sent`: when the last acquire or renewal that succeeded was sent.
        while h.state == "waiting" {
            if give_up.is_some_and(|g| Instant::now() >= g) {
                let _ = release(c, &self.name, h.id).await;
                return Err(Status::deadline_exceeded(format!(
                    "lock {} was not free within the wait",
                    self.name
                )));
            }
            if sent.elapsed() >= self.ttl / 3 {
                let t = Instant::now();
                h = renew(c, h.id, RETRY_FOR.min(self.ttl)).await?;
                sent = t;
                continue;
            }
            let left = (sent + self.ttl / 3).saturating_duration_since(Instant::now());
            let wreq = pb::WaitLockRequest {
                name: self.name.clone(),
                id: h.id,
                max_ms: u64::try_from(left.min(BLOCK).as_millis()).unwrap_or(0),
            };
            h = c
                .call(RETRY_FOR, |mut l, s| {
                    let r = wreq.clone();
                    async move { l.wait(s.req(r)).await }
                })
                .await?;
        }
        if h.state != "held" {
            return Err(Status::aborted(format!(
                "lock {} acquisition {} ended ({}) before it was granted",
                self.name, h.id, h.state
            )));
        }
        Ok(Lock::start(c.clone(), h, self.ttl, sent))
    }
}

async fn renew(c: &Client, id: u64, budget: Duration) -> Result<pb::LockHold, Status> {
    let req = pb::LockHoldRequest {
        id,
        ..Default::default()
    };
    c.call(budget.max(Duration::from_millis(250)), |mut l, s| {
        let r = req.clone();
        async move { l.renew(s.req(r)).await }
    })
    .await
}

async fn release(c: &Client, name: &str, id: u64) -> Result<pb::LockHold, Status> {
    let req = pb::LockHoldRequest {
        idempotency_key: fresh_key(),
        id,
        name: name.to_string(),
    };
    c.call(RETRY_FOR, |mut l, s| {
        let r = req.clone();
        async move { l.release(s.req(r)).await }
    })
    .await
}

/// A held lock. It is renewed in the background until released, dropped
/// (released on a best-effort basis) or lost.
pub struct Lock {
    client: Client,
    name: String,
    id: u64,
    token: u64,
    deadline: watch::Receiver<Instant>,
    lost: watch::Receiver<Option<String>>,
    renewer: tokio::task::JoinHandle<()>,
    released: bool,
}

impl Lock {
    fn start(client: Client, h: pb::LockHold, ttl: Duration, sent: Instant) -> Lock {
        let (deadline_tx, deadline) = watch::channel(sent + ttl);
        let (lost_tx, lost) = watch::channel(None);
        let renewer = tokio::spawn(keep(client.clone(), h.id, ttl, sent, deadline_tx, lost_tx));
        Lock {
            client,
            name: h.lock,
            id: h.id,
            token: h.token,
            deadline,
            lost,
            renewer,
            released: false,
        }
    }

    /// The fencing token: pass it to what you protect.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The acquisition's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The latest moment this process may assume it holds the lock.
    pub fn deadline(&self) -> Instant {
        *self.deadline.borrow()
    }

    /// The deadline, changing at every renewal.
    pub fn deadline_watch(&self) -> watch::Receiver<Instant> {
        self.deadline.clone()
    }

    /// Why the lock was lost, if it was.
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.borrow().clone()
    }

    /// Resolves when the lock is lost (it could not be renewed before its
    /// deadline, or the cluster ended it), with why.
    pub async fn lost(&self) -> String {
        let mut rx = self.lost.clone();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return "the renewal task ended".into();
            }
        }
    }

    /// Stops renewing without letting go: the lock stays held until its
    /// expiry (or until someone renews it by id, e.g. `charter lock renew`).
    pub fn detach(mut self) -> (u64, u64) {
        self.renewer.abort();
        self.released = true;
        (self.id, self.token)
    }

    /// Lets go of the lock (the next in line gets it at once).
    pub async fn release(mut self) -> Result<(), Status> {
        self.renewer.abort();
        self.released = true;
        match release(&self.client, &self.name, self.id).await {
            Ok(_) => Ok(()),
            // Already over: nothing to let go of.
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(s),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.renewer.abort();
        if self.released {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (c, name, id) = (self.client.clone(), self.name.clone(), self.id);
            rt.spawn(async move {
                let _ = release(&c, &name, id).await;
            });
        }
    }
}

/// Renews acquisition `id` every third of `ttl` until it is lost.
async fn keep(
    c: Client,
    id: u64,
    ttl: Duration,
    mut sent: Instant,
    deadline: watch::Sender<Instant>,
    lost: watch::Sender<Option<String>>,
) {
    loop {
        tokio::time::sleep_until(sent + ttl / 3).await;
        loop {
            let t = Instant::now();
            let until = sent + ttl;
            if t >= until {
                lost.send_replace(Some("it could not be renewed before its deadline".into()));
                return;
            }
            match renew(&c, id, until - t).await {
                Ok(h) if h.state == "held" => {
                    sent = t;
                    deadline.send_replace(t + ttl);
                    break;
                }
                Ok(h) => {
                    lost.send_replace(Some(format!("the cluster says it is {}", h.state)));
                    return;
                }
                Err(s) if s.code() == Code::Unavailable || s.code() == Code::DeadlineExceeded => {
                    tracing::debug!(error = %s.message(), "lock renewal failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(s) => {
                    lost.send_replace(Some(format!("renewal refused: {}", s.message())));
                    return;
                }
            }
        }
    }
}

/// An election: a lock with limit 1 whose holder is the leader.
pub struct Election {
    options: LockOptions,
}

impl Election {
    /// Leadership lasts this long without a renewal (default 15 s): the
    /// longest a dead leader keeps others waiting.
    pub fn ttl(mut self, ttl: Duration) -> Election {
        self.options = self.options.ttl(ttl);
        self
    }

    /// Blocks until this process is leader; the lock is its leadership
    /// (release it to resign; `lock.token()` is the term).
    pub async fn campaign(&self) -> Result<Lock, Status> {
        self.options.clone().limit(1).acquire().await
    }

    /// Campaigns for ever: `on_elected` when elected, `on_lost` with why
    /// when leadership ends, then campaigns again. Returns only on an error
    /// that a retry cannot fix (a bad name or TTL, a refused token).
    pub async fn run(
        &self,
        mut on_elected: impl FnMut(&Lock),
        mut on_lost: impl FnMut(&str),
    ) -> Result<(), Status> {
        loop {
            let lock = match self.campaign().await {
                Ok(l) => l,
                Err(s) if matches!(s.code(), Code::Unavailable | Code::Aborted) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(s) => return Err(s),
            };
            on_elected(&lock);
            let why = lock.lost().await;
            on_lost(&why);
        }
    }
}
