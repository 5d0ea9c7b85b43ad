//! The web dashboard every member serves on its HTTP port.
//!
//! `GET /` is one page of plain HTML, CSS and JavaScript compiled into the
//! binary. It logs in with a token (`POST /ui/login` checks it and sets an
//! HttpOnly, SameSite=Strict cookie), reads `GET /v1/overview` and then
//! follows `GET /v1/events`, reading the overview again after each batch of
//! events: the page changes without a reload. `GET /v1/tasks/ID/logs`
//! streams a task's output as Server-Sent Events.
//!
//! Who may call: user and admin tokens (machine credentials are refused).
//! A non-admin sees the cluster, the nodes and only its own leases, tasks,
//! cron jobs and apps, as the CLI shows them. The cookie is accepted only
//! by these GET routes, never by a route that changes anything, so a page
//! of another site cannot act with it.

use super::Api;
use super::auth::{Principal, Tokens};
use super::http::{caller, error};
use crate::raft_driver::{Role, Status};
use crate::state::{LeaseState, Millis, State};
use axum::Router;
use axum::extract::{Form, Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use charter_proto as pb;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// At most this many of each list go to the page.
const LEASES_SHOWN: usize = 500;
/// Each queued request's why walks placement: the first this many.
const QUEUE_SHOWN: usize = 100;
const TASKS_SHOWN: usize = 200;
const RUNS_SHOWN: usize = 20;
const DEPLOYS_SHOWN: usize = 5;

#[derive(Clone)]
struct Ui {
    api: Api,
    tokens: Tokens,
}

/// The dashboard's routes.
pub fn router(api: Api, tokens: Tokens) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/ui/app.js", get(script))
        .route("/ui/style.css", get(style))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route("/v1/overview", get(overview))
        .route("/v1/tasks/{id}/logs", get(task_logs))
        .with_state(Ui { api, tokens })
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// Checks the token and sets it as the session cookie.
async fn login(AxState(ui): AxState<Ui>, Form(f): Form<LoginForm>) -> Response {
    let token = f.token.trim();
    let back = |why: &str| {
        (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, format!("/?login={why}"))],
        )
            .into_response()
    };
    if token.is_empty() || token.len() > 4096 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return back("malformed");
    }
    let mut h = HeaderMap::new();
    if let Ok(v) = format!("Bearer {token}").parse() {
        h.insert(header::AUTHORIZATION, v);
    }
    if caller(&ui.tokens, &h, false, "the dashboard").is_err() {
        return back("refused");
    }
    let cookie = format!(
        "{}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200",
        super::http::COOKIE
    );
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, "/".into())],
    )
        .into_response()
}

async fn logout() -> Response {
    let cookie = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        super::http::COOKIE
    );
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, "/".into())],
    )
        .into_response()
}

async fn overview(AxState(ui): AxState<Ui>, headers: HeaderMap) -> Response {
    let who = match caller(&ui.tokens, &headers, true, "the dashboard") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let member = ui.api.member.clone();
    let st = member.status();
    let now = member.clock().now();
    let upcoming = ui.api.schedule_check.clone();
    let body = member.read(|s| {
        view(s, &who, &st, now, &|expr: &str, tz: Option<&str>| {
            upcoming
                .as_ref()
                .map(|c| (c.upcoming)(expr, tz, now, 3))
                .unwrap_or_default()
        })
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// A task's output as Server-Sent Events (`event: stdout|stderr`).
async fn task_logs(
    AxState(ui): AxState<Ui>,
    Path(id): Path<u64>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use pb::tasks_server::Tasks;
    use tokio_stream::StreamExt;
    let who = match caller(&ui.tokens, &headers, true, "the dashboard") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let follow = q.get("follow").is_some_and(|v| v == "1" || v == "true");
    let mut req = tonic::Request::new(pb::LogsRequest {
        task_id: id,
        follow,
    });
    req.extensions_mut().insert::<Principal>(who);
    let stream = match ui.api.logs(req).await {
        Ok(r) => r.into_inner(),
        Err(e) => return error(e),
    };
    let events = stream.map(|item| {
        let ev = match item {
            Ok(c) => Event::default()
                .event(if c.stream == "stderr" {
                    "stderr"
                } else {
                    "stdout"
                })
                .data(String::from_utf8_lossy(&c.data).replace('\r', "")),
            Err(s) => Event::default()
                .event("error")
                .data(json!({ "error": s.message() }).to_string()),
        };
        Ok::<_, std::convert::Infallible>(ev)
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// What the page shows, as `who` may see it.
fn view(
    s: &State,
    who: &Principal,
    st: &Status,
    now: Millis,
    upcoming: &dyn Fn(&str, Option<&str>) -> Vec<i64>,
) -> Value {
    let mine = |p: &str| who.admin || p == who.name;
    let (leases, queue) = leases_json(s, &mine);
    json!({
        "principal": who.name,
        "admin": who.admin,
        "now": now,
        "cluster": cluster_json(st),
        "nodes": nodes_json(s),
        "leases": leases,
        "queue": queue,
        "tasks": tasks_json(s, &mine),
        "cron": cron_json(s, &mine, upcoming),
        "apps": apps_json(s, &mine),
    })
}

/// Members, leader, term, indexes, health.
fn cluster_json(st: &Status) -> Value {
    json!({
        "member": st.id,
        "leader": st.leader_id,
        "role": st.role.as_str(),
        "term": st.term,
        "commit_index": st.commit,
        "applied_index": st.applied,
        "healthy": st.fatal.is_none() && st.leader_id.is_some(),
        "fatal": st.fatal,
        "members": st.members.iter().map(|(id, addr)| json!({
            "id": id,
            "addr": addr,
            "leader": st.leader_id == Some(*id),
        })).collect::<Vec<_>>(),
        "is_leader": st.role == Role::Leader,
    })
}

/// Every node with its allocation.
fn nodes_json(s: &State) -> Vec<Value> {
    s.nodes
        .values()
        .map(|n| {
            json!({
                "name": n.name,
                "state": n.state.as_str(),
                "pool": n.pool,
                "labels": n.labels,
                "cpu": [n.allocated.cpu_millis, n.capacity.cpu_millis],
                "memory": [n.allocated.memory_bytes, n.capacity.memory_bytes],
                "gpus": [n.allocated.gpus, n.capacity.gpus],
                "leases": n.leases.len(),
            })
        })
        .collect()
}

/// Live granted leases (newest first) and the queue, with each request's why.
fn leases_json(s: &State, mine: &dyn Fn(&str) -> bool) -> (Vec<Value>, Vec<Value>) {
    let mut leases = Vec::new();
    let mut queue = Vec::new();
    for l in s.leases.values().rev() {
        if !mine(&l.principal) || l.state.is_ended() {
            continue;
        }
        let base = json!({
            "id": l.id,
            "principal": l.principal,
            "state": l.state.as_str(),
            "nodes": l.nodes,
            "cpu": l.spec.resources.cpu_millis * u64::from(l.spec.count.max(1)),
            "requested_at": l.requested_at,
            "expires_at": l.expires_at,
            "token": l.fencing_token,
            "reason": l.spec.reason,
        });
        if l.state == LeaseState::Pending {
            if queue.len() >= QUEUE_SHOWN {
                continue;
            }
            let (_, why) = s.why_pending(l);
            let mut q = base;
            q["why"] = json!(why);
            q["wait_until"] = json!(l.wait_until);
            queue.push(q);
        } else if leases.len() < LEASES_SHOWN {
            leases.push(base);
        }
    }
    (leases, queue)
}

/// The newest tasks.
fn tasks_json(s: &State, mine: &dyn Fn(&str) -> bool) -> Vec<Value> {
    s.tasks
        .values()
        .rev()
        .filter(|t| mine(&t.principal))
        .take(TASKS_SHOWN)
        .map(|t| {
            let node = s
                .leases
                .get(&t.lease)
                .and_then(|l| l.nodes.first().cloned());
            json!({
                "id": t.id,
                "name": t.spec.name,
                "principal": t.principal,
                "state": t.state.as_str(),
                "health": t.health,
                "amp": t.spec.amp.as_str(),
                "lease": t.lease,
                "node": node,
                "exit_code": t.exit_code,
                "submitted_at": t.submitted_at,
                "started_at": t.started_at,
                "ended_at": t.ended_at,
                "message": t.message,
            })
        })
        .collect()
}

/// Cron jobs with their next ticks and recent runs.
fn cron_json(
    s: &State,
    mine: &dyn Fn(&str) -> bool,
    upcoming: &dyn Fn(&str, Option<&str>) -> Vec<i64>,
) -> Vec<Value> {
    s.cron
        .jobs
        .values()
        .filter(|j| mine(&j.owner))
        .map(|j| {
            let c = &j.config;
            let tz = (!c.timezone.is_empty()).then_some(c.timezone.as_str());
            let runs: Vec<Value> = s
                .cron
                .runs
                .get(&c.name)
                .map(|r| {
                    r.values()
                        .rev()
                        .take(RUNS_SHOWN)
                        .map(|r| {
                            json!({
                                "scheduled_at": r.scheduled_at,
                                "fired_at": r.fired_at,
                                "late_ms": if r.manual { 0 } else { r.fired_at - r.scheduled_at },
                                "manual": r.manual,
                                "state": r.state.as_str(),
                                "task": r.task,
                                "exit_code": r.exit_code,
                                "reason": r.reason,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "name": c.name,
                "owner": j.owner,
                "schedule": c.schedule,
                "timezone": c.timezone,
                "paused": j.paused,
                "next": if j.paused { Vec::new() } else { upcoming(&c.schedule, tz) },
                "runs": runs,
            })
        })
        .collect()
}

/// Apps with their newest deployments.
fn apps_json(s: &State, mine: &dyn Fn(&str) -> bool) -> Vec<Value> {
    s
        .apps
        .values()
        .filter(|a| mine(&a.applied_by))
        .map(|a| {
            let name = &a.config.name;
            let deployments: Vec<Value> = s
                .apps.deployments
                .values()
                .rev()
                .filter(|d| &d.app == name)
                .take(DEPLOYS_SHOWN)
                .map(|d| {
                    let tail: Vec<&str> = d.build_log.lines().rev().take(20).collect();
                    json!({
                        "id": d.id,
                        "commit": d.commit,
                        "fingerprint": d.fingerprint,
                        "status": d.status.as_str(),
                        "trigger": d.trigger,
                        "created_at": d.created_at,
                        "promoted_at": d.promoted_at,
                        "steps": d.steps.iter().map(|r| json!({
                            "step": r.step,
                            "state": r.state,
                            "started_at": r.started_at,
                            "ended_at": r.ended_at,
                            "message": r.message,
                        })).collect::<Vec<_>>(),
                        "servers": d.instances.iter().filter_map(|id| s.tasks.get(id)).map(|t| json!({
                            "task": t.id,
                            "state": t.state.as_str(),
                            "health": t.health,
                            "node": s.leases.get(&t.lease).and_then(|l| l.nodes.first().cloned()),
                            "ports": t.ports,
                        })).collect::<Vec<_>>(),
                        "reason": d.reason,
                        "build_log_tail": tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                    })
                })
                .collect();
            json!({
                "name": name,
                "owner": a.applied_by,
                "active": a.active,
                "deployments": deployments,
            })
        })
        .collect()
}
