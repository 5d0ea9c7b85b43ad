//! The event stream: `Cluster.Events` (gRPC) and `GET /v1/events`
//! (Server-Sent Events on the HTTP port), both over the member's
//! [`crate::events::EventLog`].
//!
//! Who may call: any user or admin token (machine credentials are refused by
//! [`principal`]); a non-admin sees only the events of its own objects, an
//! admin everything (or one principal's with `principal`).

use super::Api;
use super::auth::{Principal, principal};
use crate::events::{Cursor, EventLog};
use crate::state::{Event, KindFilter};
use charter_proto as pb;
use tonic::{Request, Response, Status};

/// Events sent per read of the log before the stream yields.
const PAGE: usize = 512;

/// What one follower asked for, checked.
#[derive(Clone, Debug)]
pub struct Follow {
    /// The first index wanted (0: the oldest kept).
    pub since_index: u64,
    /// Without `since_index`: the newest this many kept events.
    pub tail: u32,
    /// Types and topics.
    pub kinds: KindFilter,
    /// Only this principal's events.
    pub principal: Option<String>,
    /// Keep going.
    pub follow: bool,
    /// Resume after this event (an SSE client's `Last-Event-ID`).
    pub after: Option<Cursor>,
}

impl Follow {
    /// Checks a request against who made it.
    pub fn of(who: &Principal, r: pb::EventsRequest) -> Result<Follow, Status> {
        let kinds = KindFilter::parse(&r.types).map_err(Status::invalid_argument)?;
        let principal = super::auth::own_or_admin(who, r.principal, "events")?;
        Ok(Follow {
            since_index: r.since_index,
            tail: r.tail,
            kinds,
            principal,
            after: None,
            follow: r.follow,
        })
    }

    fn keeps(&self, e: &Event) -> bool {
        self.kinds.matches(e.kind) && self.principal.as_ref().is_none_or(|p| e.principal == *p)
    }

    /// Where reading starts: after the events before `since_index`, or
    /// before the newest `tail` that pass.
    fn start(&self, log: &EventLog) -> Cursor {
        if let Some(c) = self.after {
            c
        } else if self.since_index > 0 {
            EventLog::cursor_before(self.since_index)
        } else if self.tail == 0 {
            EventLog::cursor_before(log.oldest())
        } else {
            log.before_tail(self.tail as usize, |e| self.keeps(e))
        }
    }
}

/// An event as the API sends it.
pub fn to_pb(e: &Event) -> pb::EventMessage {
    pb::EventMessage {
        index: e.index,
        seq: e.seq,
        at_ms: e.at,
        r#type: e.kind.to_string(),
        principal: e.principal.clone(),
        subject: e.subject.clone(),
        detail: e.detail.clone(),
    }
}

impl Api {
    /// The events `f` asks for, as they are applied, until the client goes
    /// or the member stops (or, without `follow`, until the kept ones are
    /// sent).
    pub fn event_stream(
        &self,
        f: Follow,
    ) -> tokio::sync::mpsc::Receiver<Result<pb::EventMessage, Status>> {
        let member = self.member.clone();
        let mut stop = self.stop.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(PAGE);
        tokio::spawn(async move {
            let log = member.events().clone();
            let mut applied = member.applied_watch();
            let mut cursor = f.start(&log);
            loop {
                applied.borrow_and_update();
                let (batch, next) = match log.after(cursor, PAGE, |e| f.keeps(e)) {
                    Ok(b) => b,
                    Err(gone) => {
                        let _ = tx.send(Err(Status::out_of_range(gone.to_string()))).await;
                        return;
                    }
                };
                cursor = next;
                let full = batch.len() >= PAGE;
                for e in batch {
                    if tx.send(Ok(to_pb(&e))).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                if !f.follow {
                    return;
                }
                tokio::select! {
                    r = applied.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                    _ = stop.changed() => return,
                }
            }
        });
        rx
    }

    /// `Cluster.Events`.
    pub(super) async fn events_rpc(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> Result<Response<super::EventStream>, Status> {
        let who = principal(&req)?;
        let f = Follow::of(&who, req.into_inner())?;
        let rx = self.event_stream(f);
        Ok(Response::new(Box::pin(self.until_stopped(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))))
    }
}

/// `GET /v1/events` as Server-Sent Events.
pub mod http {
    use super::Follow;
    use crate::service::Api;
    use crate::service::auth::Tokens;
    use axum::Router;
    use axum::extract::{Query, State};
    use axum::http::HeaderMap;
    use axum::response::sse::{Event, KeepAlive, Sse};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use charter_proto as pb;
    use serde_json::json;
    use std::collections::HashMap;
    use std::time::Duration;

    #[derive(Clone)]
    pub(crate) struct Http {
        pub api: Api,
        pub tokens: Tokens,
    }

    /// The route, served with `api` and authenticated by `tokens`.
    pub fn router(api: Api, tokens: Tokens) -> Router {
        Router::new()
            .route("/v1/events", get(events))
            .with_state(Http { api, tokens })
    }

    pub(crate) use crate::service::http::{caller, error};

    fn request_of(q: &HashMap<String, String>) -> Result<pb::EventsRequest, tonic::Status> {
        let num = |k: &str| -> Result<u64, tonic::Status> {
            q.get(k).map_or(Ok(0), |v| {
                v.parse().map_err(|_| {
                    tonic::Status::invalid_argument(format!(
                        "query parameter {k}={v:?} is not a whole number"
                    ))
                })
            })
        };
        let follow = q.get("follow").is_none_or(|v| !(v == "0" || v == "false"));
        Ok(pb::EventsRequest {
            since_index: num("since_index")?,
            tail: u32::try_from(num("tail")?).unwrap_or(u32::MAX),
            types: q.get("type").map(|t| vec![t.clone()]).unwrap_or_default(),
            principal: q.get("principal").cloned().unwrap_or_default(),
            follow,
        })
    }

    /// `GET /v1/events?since_index=&tail=&type=lease,task&principal=&follow=1`:
    /// each event as `id: <index>.<seq>` and JSON data (its `type` inside);
    /// an error as `event: error`.
    /// A `Last-Event-ID` header resumes after that event.
    async fn events(
        State(h): State<Http>,
        Query(q): Query<HashMap<String, String>>,
        headers: HeaderMap,
    ) -> Response {
        use tokio_stream::StreamExt;
        let who = match caller(&h.tokens, &headers, true, "events") {
            Ok(p) => p,
            Err(r) => return *r,
        };
        let req = match request_of(&q) {
            Ok(r) => r,
            Err(e) => return error(e),
        };
        let mut f = match Follow::of(&who, req) {
            Ok(f) => f,
            Err(e) => return error(e),
        };
        // A reconnecting EventSource resumes right after the last event it got.
        f.after = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (i, s) = v.split_once('.')?;
                Some((i.parse().ok()?, s.parse().ok()?))
            });
        let rx = h.api.event_stream(f);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| {
            let ev = match item {
                Ok(e) => Event::default()
                    .id(format!("{}.{}", e.index, e.seq))
                    .data(event_json(&e).to_string()),
                Err(s) => Event::default()
                    .event("error")
                    .data(json!({ "error": s.message() }).to_string()),
            };
            Ok::<_, std::convert::Infallible>(ev)
        });
        Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response()
    }

    /// An event as JSON, the same shape `charter events --json` prints.
    pub fn event_json(e: &pb::EventMessage) -> serde_json::Value {
        json!({
            "index": e.index,
            "seq": e.seq,
            "at_ms": e.at_ms,
            "at": chrono::DateTime::from_timestamp_millis(e.at_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            "type": e.r#type,
            "principal": e.principal,
            "subject": e.subject,
            "detail": e.detail,
        })
    }
}
