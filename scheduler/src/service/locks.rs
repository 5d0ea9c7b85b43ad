//! The `Locks` service and its HTTP/JSON twin: named locks, semaphores and
//! elections over [`crate::state::locks`].
//!
//! Who may call: any user (or admin) token; machine credentials may not. An
//! acquisition is renewed or released only by its principal or an admin
//! (the state refuses others). Lock names are one namespace shared by all
//! principals, as in etcd or Consul, so that teams can coordinate; another
//! principal's `holder` and `value` are blanked for a non-admin reader.
//!
//! Waiting: a call that waits (Acquire with `block_ms`, Wait, Observe)
//! reads the applied state each time this member applies entries (the
//! member's applied watch), never by a timed poll, so a handover is seen as
//! soon as it is applied here.
//!
//! Over 500 lines: the Locks gRPC service and its HTTP routes, which share their checks and answers.

use super::Api;
use super::auth::{Principal, principal};
use crate::state::{Applied, Command, HoldState, LockHold, LockSpec, State, locks};
use charter_proto as pb;
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

/// The longest a single call waits (clients call again).
pub const MAX_BLOCK: Duration = Duration::from_secs(25);
/// How often Observe repeats the lock when nothing changed.
const OBSERVE_KEEPALIVE: Duration = Duration::from_secs(5);
/// How many ended acquisitions Show reads from history at most.
const MAX_RECENT: usize = 100;

/// `h` as `who` may see it, at `applied`, `position` in line (0: not waiting).
pub fn hold_pb(h: &LockHold, who: &Principal, position: usize, applied: u64) -> pb::LockHold {
    let visible = who.admin || h.principal == who.name;
    pb::LockHold {
        id: h.id,
        lock: h.lock.clone(),
        principal: h.principal.clone(),
        holder: if visible {
            h.holder.clone()
        } else {
            String::new()
        },
        value: if visible {
            h.value.clone()
        } else {
            String::new()
        },
        ttl_ms: h.ttl_ms,
        state: h.state.to_string(),
        token: h.token,
        requested_at_ms: h.requested_at,
        wait_until_ms: if h.wait_until == i64::MAX {
            0
        } else {
            h.wait_until
        },
        acquired_at_ms: h.acquired_at.unwrap_or(0),
        expires_at_ms: h.expires_at,
        ended_at_ms: h.ended_at.unwrap_or(0),
        position: u32::try_from(position).unwrap_or(u32::MAX),
        applied_index: applied,
    }
}

fn view(s: &State, name: &str, who: &Principal, applied: u64) -> pb::LockReply {
    let Some((lock, _)) = s.locks.view(name) else {
        return pb::LockReply {
            name: name.to_string(),
            applied_index: applied,
            ..Default::default()
        };
    };
    let pick = |ids: &[u64], line: bool| -> Vec<pb::LockHold> {
        ids.iter()
            .enumerate()
            .filter_map(|(i, id)| {
                let h = s.locks.holds.get(id)?;
                Some(hold_pb(h, who, if line { i + 1 } else { 0 }, applied))
            })
            .collect()
    };
    pb::LockReply {
        name: name.to_string(),
        limit: lock.limit,
        holders: pick(&lock.holders, false),
        waiters: pick(&lock.waiters, true),
        recent: Vec::new(),
        applied_index: applied,
    }
}

fn live_hold(s: &State, id: u64, who: &Principal, applied: u64) -> Option<pb::LockHold> {
    let h = s.locks.holds.get(&id)?;
    Some(hold_pb(h, who, s.locks.position(&h.lock, id), applied))
}

fn check_name(name: &str) -> Result<(), Status> {
    locks::check_name(name).map_err(Status::invalid_argument)
}

impl Api {
    fn applied_hold(&self, out: Applied, who: &Principal) -> Result<pb::LockHold, Status> {
        let Applied::Hold(h) = out else {
            return Err(Status::internal(format!(
                "a lock command applied as {out:?}"
            )));
        };
        // The outcome as applied (this member may not have applied it yet
        // when it forwarded the command); the place in line as known here.
        let applied = self.member.status().applied;
        let position = self.member.read(|s| s.locks.position(&h.lock, h.id));
        Ok(hold_pb(&h, who, position, applied))
    }

    /// Takes `spec`'s lock (or a place in line), waiting up to `block`.
    pub async fn lock_acquire(
        &self,
        who: &Principal,
        key: &str,
        spec: LockSpec,
        block: Duration,
    ) -> Result<pb::LockHold, Status> {
        let name = spec.name.clone();
        let out = self.submit(who, key, Command::AcquireLock(spec)).await?;
        let h = self.applied_hold(out, who)?;
        if h.state == HoldState::Waiting.as_str() && !block.is_zero() {
            return self.lock_wait(who, &name, h.id, block).await;
        }
        Ok(h)
    }

    /// Waits up to `max` for acquisition `id` of `name` to stop waiting.
    pub async fn lock_wait(
        &self,
        who: &Principal,
        name: &str,
        id: u64,
        max: Duration,
    ) -> Result<pb::LockHold, Status> {
        check_name(name)?;
        let deadline = Instant::now() + max.min(MAX_BLOCK);
        let mut applied = self.member.applied_watch();
        // Everything committed before this call (the acquisition itself,
        // when it was proposed through another member) is applied here.
        self.barrier(false).await?;
        loop {
            let at = *applied.borrow_and_update();
            let now = self.member.read(|s| {
                s.locks
                    .holds
                    .get(&id)
                    .map(|h| (h.lock == name, h.principal == who.name || who.admin))
                    .map(|found| (found, live_hold(s, id, who, at)))
            });
            match now {
                Some(((false, _), _)) => {
                    return Err(Status::invalid_argument(format!(
                        "lock acquisition {id} is not of lock {name}"
                    )));
                }
                Some(((true, false), _)) => {
                    return Err(Status::permission_denied(format!(
                        "lock acquisition {id} of {name} belongs to another principal"
                    )));
                }
                Some((_, Some(h))) if h.state == HoldState::Waiting.as_str() => {
                    if Instant::now() >= deadline {
                        return Ok(h);
                    }
                }
                Some((_, Some(h))) => return Ok(h),
                _ => return self.ended_hold(who, name, id),
            }
            tokio::select! {
                r = applied.changed() => if r.is_err() {
                    return Err(Status::unavailable("this member stopped; retry on another"));
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// An acquisition that left the live state, from this member's history.
    fn ended_hold(&self, who: &Principal, name: &str, id: u64) -> Result<pb::LockHold, Status> {
        let applied = self.member.status().applied;
        let next = self.member.read(|s| s.locks.next_hold_id);
        let found = self
            .member
            .history()
            .and_then(|h| h.holds(name, MAX_RECENT).into_iter().find(|h| h.id == id));
        match found {
            Some(h) if h.principal == who.name || who.admin => Ok(hold_pb(&h, who, 0, applied)),
            Some(_) => Err(Status::permission_denied(format!(
                "lock acquisition {id} of {name} belongs to another principal"
            ))),
            None if id == 0 || id >= next => Err(Status::not_found(format!(
                "lock acquisition {id} not found; `charter lock show {name}` shows the lock"
            ))),
            None => Err(Status::not_found(format!(
                "lock acquisition {id} of {name} has ended (and is no longer kept here); acquire again"
            ))),
        }
    }

    /// Renews (`renew`) or releases acquisition `id`.
    pub async fn lock_change(
        &self,
        who: &Principal,
        key: &str,
        id: u64,
        renew: bool,
    ) -> Result<pb::LockHold, Status> {
        let cmd = if renew {
            Command::RenewLock { id }
        } else {
            Command::ReleaseLock { id }
        };
        let out = if renew {
            // A renewal is harmless twice: no outcome kept per renewal.
            self.submit_unkeyed(who, cmd).await?
        } else {
            self.submit(who, key, cmd).await?
        };
        self.applied_hold(out, who)
    }

    /// Lock `name` now, with up to `recent` ended acquisitions.
    pub async fn lock_show(
        &self,
        who: &Principal,
        name: &str,
        stale: bool,
        recent: usize,
    ) -> Result<pb::LockReply, Status> {
        check_name(name)?;
        self.barrier(stale).await?;
        let applied = self.member.status().applied;
        let mut v = self.member.read(|s| view(s, name, who, applied));
        if recent > 0
            && let Some(h) = self.member.history()
        {
            v.recent = h
                .holds(name, recent.min(MAX_RECENT))
                .iter()
                .map(|h| hold_pb(h, who, 0, applied))
                .collect();
        }
        Ok(v)
    }

    /// Every lock someone holds or waits for.
    pub async fn lock_list(
        &self,
        who: &Principal,
        stale: bool,
    ) -> Result<pb::ListLocksReply, Status> {
        self.barrier(stale).await?;
        let applied = self.member.status().applied;
        let locks = self.member.read(|s| {
            s.locks
                .keys()
                .map(|name| view(s, name, who, applied))
                .collect()
        });
        Ok(pb::ListLocksReply { locks })
    }

    /// The lock now and at every change of its holders, until the client
    /// goes or the member stops.
    pub fn lock_observe(
        &self,
        who: Principal,
        name: String,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<pb::LockReply, Status>>, Status> {
        check_name(&name)?;
        let member = self.member.clone();
        let mut stop = self.stop.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut applied = member.applied_watch();
            let mut last: Option<Seen> = None;
            let mut sent = Instant::now();
            loop {
                let at = *applied.borrow_and_update();
                let v = member.read(|s| view(s, &name, &who, at));
                let key = (
                    v.holders.iter().map(|h| (h.id, h.token)).collect(),
                    v.waiters.iter().map(|h| h.id).collect(),
                );
                if last.as_ref() != Some(&key) || sent.elapsed() >= OBSERVE_KEEPALIVE {
                    last = Some(key);
                    sent = Instant::now();
                    if tx.send(Ok(v)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    r = applied.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep_until(sent + OBSERVE_KEEPALIVE) => {}
                    _ = tx.closed() => return,
                    _ = stop.changed() => return,
                }
            }
        });
        Ok(rx)
    }
}

/// What Observe compares to see a change: holders (id, token) and waiters.
type Seen = (Vec<(u64, u64)>, Vec<u64>);

/// The spec of an acquisition request (limit 0 means 1).
pub fn spec_of(r: &pb::AcquireLockRequest) -> Result<LockSpec, Status> {
    let s = LockSpec {
        name: r.name.clone(),
        ttl_ms: r.ttl_ms,
        limit: r.limit.max(1),
        wait_ms: r.wait_ms,
        holder: r.holder.clone(),
        value: r.value.clone(),
    };
    locks::check_spec(&s).map_err(Status::invalid_argument)?;
    Ok(s)
}

type ObserveStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LockReply, Status>> + Send>>;

#[tonic::async_trait]
impl pb::locks_server::Locks for Api {
    type ObserveStream = ObserveStream;

    async fn acquire(
        &self,
        req: Request<pb::AcquireLockRequest>,
    ) -> Result<Response<pb::LockHold>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let spec = spec_of(&r)?;
        let block = Duration::from_millis(r.block_ms);
        Ok(Response::new(
            self.lock_acquire(&who, &r.idempotency_key, spec, block)
                .await?,
        ))
    }

    async fn wait(
        &self,
        req: Request<pb::WaitLockRequest>,
    ) -> Result<Response<pb::LockHold>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let max = Duration::from_millis(r.max_ms);
        Ok(Response::new(
            self.lock_wait(&who, &r.name, r.id, max).await?,
        ))
    }

    async fn renew(
        &self,
        req: Request<pb::LockHoldRequest>,
    ) -> Result<Response<pb::LockHold>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        Ok(Response::new(
            self.lock_change(&who, &r.idempotency_key, r.id, true)
                .await?,
        ))
    }

    async fn release(
        &self,
        req: Request<pb::LockHoldRequest>,
    ) -> Result<Response<pb::LockHold>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        Ok(Response::new(
            self.lock_change(&who, &r.idempotency_key, r.id, false)
                .await?,
        ))
    }

    async fn show(
        &self,
        req: Request<pb::ShowLockRequest>,
    ) -> Result<Response<pb::LockReply>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        Ok(Response::new(
            self.lock_show(&who, &r.name, r.stale, r.recent as usize)
                .await?,
        ))
    }

    async fn list(
        &self,
        req: Request<pb::ListLocksRequest>,
    ) -> Result<Response<pb::ListLocksReply>, Status> {
        let who = principal(&req)?;
        let stale = req.get_ref().stale;
        Ok(Response::new(self.lock_list(&who, stale).await?))
    }

    async fn observe(
        &self,
        req: Request<pb::ShowLockRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let rx = self.lock_observe(who, r.name)?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The HTTP/JSON API of locks and elections, on the member's HTTP port:
///
/// - `POST /v1/locks/NAME` with `{"ttl_ms", "limit", "wait_ms", "block_ms",
///   "holder", "value", "idempotency_key"}` (all optional: 15 s TTL, limit
///   1, no wait, blocking as long as the wait up to 25 s) acquires;
/// - `GET /v1/locks`, `GET /v1/locks/NAME?recent=N` show;
/// - `GET /v1/locks/NAME/ID?wait_ms=N` waits for a place in line to turn
///   into the lock; `PUT /v1/locks/NAME/ID` renews; `DELETE
///   /v1/locks/NAME/ID` releases;
/// - `GET /v1/elections/NAME` is the leader now; with `?watch=1` it is a
///   Server-Sent Events stream of the lock at every change.
///
/// The token comes as `Authorization: Bearer TOKEN`, as on gRPC.
pub mod http {
    use super::{Api, MAX_BLOCK, Principal, spec_of};
    use crate::service::auth::Tokens;
    use axum::extract::{Path, Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use axum::{Json, Router};
    use charter_proto as pb;
    use serde::Deserialize;
    use serde_json::{Value, json};
    use std::collections::HashMap;
    use std::time::Duration;

    /// The TTL of an acquisition that names none.
    const DEFAULT_TTL_MS: u64 = 15_000;

    #[derive(Clone)]
    struct Http {
        api: Api,
        tokens: Tokens,
    }

    /// The routes, served with `api` and authenticated by `tokens`.
    pub fn router(api: Api, tokens: Tokens) -> Router {
        Router::new()
            .route("/v1/locks", get(list))
            .route("/v1/locks/{name}", get(show).post(acquire))
            .route(
                "/v1/locks/{name}/{id}",
                get(wait).put(renew).delete(release),
            )
            .route("/v1/elections/{name}", get(election))
            .with_state(Http { api, tokens })
    }

    use crate::service::http::error;

    fn caller(h: &Http, headers: &HeaderMap) -> Result<Principal, Box<Response>> {
        crate::service::http::caller(&h.tokens, headers, false, "locks")
    }

    /// An acquisition as JSON.
    pub fn hold_json(h: &pb::LockHold) -> Value {
        let opt = |v: i64| if v == 0 { Value::Null } else { json!(v) };
        json!({
            "id": h.id,
            "lock": h.lock,
            "principal": h.principal,
            "holder": h.holder,
            "value": h.value,
            "ttl_ms": h.ttl_ms,
            "state": h.state,
            "token": h.token,
            "requested_at_ms": h.requested_at_ms,
            "wait_until_ms": opt(h.wait_until_ms),
            "acquired_at_ms": opt(h.acquired_at_ms),
            "expires_at_ms": h.expires_at_ms,
            "ended_at_ms": opt(h.ended_at_ms),
            "position": h.position,
            "applied_index": h.applied_index,
        })
    }

    /// A lock as JSON (with `leader`: its first holder, or null).
    pub fn lock_json(l: &pb::LockReply) -> Value {
        json!({
            "name": l.name,
            "limit": l.limit,
            "leader": l.holders.first().map(hold_json),
            "holders": l.holders.iter().map(hold_json).collect::<Vec<_>>(),
            "waiters": l.waiters.iter().map(hold_json).collect::<Vec<_>>(),
            "recent": l.recent.iter().map(hold_json).collect::<Vec<_>>(),
            "applied_index": l.applied_index,
        })
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct AcquireBody {
        ttl_ms: Option<u64>,
        limit: Option<u32>,
        wait_ms: Option<u64>,
        block_ms: Option<u64>,
        #[serde(default)]
        holder: String,
        #[serde(default)]
        value: String,
        #[serde(default)]
        idempotency_key: String,
    }

    async fn acquire(
        State(h): State<Http>,
        Path(name): Path<String>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> Response {
        let who = match caller(&h, &headers) {
            Ok(p) => p,
            Err(r) => return *r,
        };
        let b: AcquireBody = if body.iter().all(u8::is_ascii_whitespace) {
            AcquireBody::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(b) => b,
                Err(e) => {
                    return error(tonic::Status::invalid_argument(format!(
                        "the request body is not a lock acquisition ({e}); send JSON like {{\"ttl_ms\": 10000, \"wait_ms\": 60000, \"holder\": \"web-1\"}}"
                    )));
                }
            }
        };
        let wait_ms = b.wait_ms.unwrap_or(0);
        let req = pb::AcquireLockRequest {
            idempotency_key: b.idempotency_key,
            name,
            ttl_ms: b.ttl_ms.unwrap_or(DEFAULT_TTL_MS),
            limit: b.limit.unwrap_or(1),
            wait_ms,
            holder: b.holder,
            value: b.value,
            block_ms: b.block_ms.unwrap_or(wait_ms),
        };
        let spec = match spec_of(&req) {
            Ok(s) => s,
            Err(e) => return error(e),
        };
        let block = Duration::from_millis(req.block_ms).min(MAX_BLOCK);
        match h
            .api
            .lock_acquire(&who, &req.idempotency_key, spec, block)
            .await
        {
            Ok(hold) => {
                let code = if hold.state == "held" {
                    StatusCode::OK
                } else {
                    StatusCode::ACCEPTED
                };
                (code, Json(hold_json(&hold))).into_response()
            }
            Err(e) => error(e),
        }
    }

    fn number(q: &HashMap<String, String>, key: &str) -> Result<u64, Box<Response>> {
        match q.get(key) {
            None => Ok(0),
            Some(v) => v.parse().map_err(|_| {
                Box::new(error(tonic::Status::invalid_argument(format!(
                    "query parameter {key}={v:?} is not a whole number"
                ))))
            }),
        }
    }

    async fn show(
        State(h): State<Http>,
        Path(name): Path<String>,
        Query(q): Query<HashMap<String, String>>,
        headers: HeaderMap,
    ) -> Response {
        let who = match caller(&h, &headers) {
            Ok(p) => p,
            Err(r) => return *r,
        };
        let recent = match number(&q, "recent") {
            Ok(n) => n as usize,
            Err(r) => return *r,
        };
        match h.api.lock_show(&who, &name, false, recent).await {
            Ok(l) => Json(lock_json(&l)).into_response(),
            Err(e) => error(e),
        }
    }

    async fn list(State(h): State<Http>, headers: HeaderMap) -> Response {
        let who = match caller(&h, &headers) {
            Ok(p) => p,
            Err(r) => return *r,
        };
        match h.api.lock_list(&who, false).await {
            Ok(l) => Json(json!({
                "locks": l.locks.iter().map(lock_json).collect::<Vec<_>>()
            }))
            .into_response(),
            Err(e) => error(e),
        }
    }

    async fn wait(
        State(h): State<Http>,
        Path((name, id)): Path<(String, u64)>,
        Query(q): Query<HashMap<String, String>>,
        headers: HeaderMap,
    ) -> Response {
        let who = match caller(&h, &headers) {
            Ok(p) => p,
            Err(r) => return *r,
        };
        let max = match number(&q, "wait_ms") {
            Ok(n) => Duration::from_millis(n),
            Err(r) => return *r,
        };
        match h.api.lock_wait(&who, &name, id, max).await {
            Ok(hold) => Json(hold_json(&hold)).into_response(),
            Err(e) => error(e),
        }
    }

    async fn change(h: Http, name: String, id: u64, headers: HeaderMap, renew: bool) -> Response {
        let who = match caller(&h, &headers) {
            Ok(p) => p,
            Err(r) => return *r,
        };
        match h.api.lock_change(&who, "", id, renew).await {
            Ok(hold) if hold.lock != name => error(tonic::Status::invalid_argument(format!(
                "lock acquisition {id} is of lock {}, not {name}",
                hold.lock
            ))),
            Ok(hold) => Json(hold_json(&hold)).into_response(),
            Err(e) => error(e),
        }
    }

    async fn renew(
        State(h): State<Http>,
        Path((name, id)): Path<(String, u64)>,
        headers: HeaderMap,
    ) -> Response {
        change(h, name, id, headers, true).await
    }

    async fn release(
        State(h): State<Http>,
        Path((name, id)): Path<(String, u64)>,
        headers: HeaderMap,
    ) -> Response {
        change(h, name, id, headers, false).await
    }

    async fn election(
        State(h): State<Http>,
        Path(name): Path<String>,
        Query(q): Query<HashMap<String, String>>,
        headers: HeaderMap,
    ) -> Response {
        use axum::response::sse::{Event, KeepAlive, Sse};
        use tokio_stream::StreamExt;
        let who = match caller(&h, &headers) {
            Ok(p) => p,
            Err(r) => return *r,
        };
        let watch = q.get("watch").is_some_and(|v| v == "1" || v == "true");
        if !watch {
            return match h.api.lock_show(&who, &name, false, 0).await {
                Ok(l) => Json(lock_json(&l)).into_response(),
                Err(e) => error(e),
            };
        }
        let rx = match h.api.lock_observe(who, name) {
            Ok(rx) => rx,
            Err(e) => return error(e),
        };
        let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| {
            let ev = match item {
                Ok(l) => Event::default()
                    .event("leader")
                    .data(lock_json(&l).to_string()),
                Err(s) => Event::default()
                    .event("error")
                    .data(json!({ "error": s.message() }).to_string()),
            };
            Ok::<_, std::convert::Infallible>(ev)
        });
        Sse::new(events)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response()
    }
}
