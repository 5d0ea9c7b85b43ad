//! `charter bench` scenarios that need agents:
//! - `expiry`: a 3-member cluster and one `charter agent` process; leases
//!   running `sleep` end by expiry. Per lease: `expires_at` → expired in
//!   state (the lease's `ended_at`), and `expires_at` → its last process
//!   gone (watched in /proc from outside). Also the agent's RSS idle and
//!   with 100 running tasks.
//! - `cron`: a 3-member cluster (Hydra embedded) and one agent; a
//!   per-second job runs `true` for `--duration`: lateness (fired_at −
//!   scheduled_at) p50/p99/max; then `--cron-kills` leader kills 5 s apart:
//!   ticks submitted twice (tasks carrying the same tick), holes in the
//!   ticks, and the largest lateness around the kills.
//! - `tasks`: `charter dev` (one member, its in-process agent); tiny tasks
//!   (`true`) submitted by 16 clients, run and finished per second, and
//!   submit → running latency.
//!
//! Over 500 lines: the expiry, tasks and cron scenarios, which share an agent and their helpers.

use super::bench::{Report, authed, channel, percentile_ms, rss_mib};
use super::output::fail;
use charter::harness::{Cluster, TOKEN};
use charter_config::states::{RunState, TaskState};
use charter_proto as pb;
use charter_proto::tasks_client::TasksClient;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

fn bearer<M>(token: &str, m: M) -> tonic::Request<M> {
    charter_proto::conn::bearer(Some(token), m)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn submit_req(i: u64, argv: &[&str], cpu: u64, dur_ms: u64) -> pb::SubmitTaskRequest {
    pb::SubmitTaskRequest {
        idempotency_key: format!("bench-task-{i}-{}", rand::random::<u32>()),
        lease: Some(pb::LeaseRequest {
            resources: Some(pb::Resources {
                cpu_millis: cpu,
                ..Default::default()
            }),
            duration_ms: dur_ms,
            wait_ms: 60_000,
            ..Default::default()
        }),
        task: Some(pb::TaskSpec {
            command: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
    }
}

async fn task(ch: &Channel, id: u64) -> Option<pb::TaskReply> {
    TasksClient::new(ch.clone())
        .show(authed(pb::ShowTaskRequest { id, stale: true }))
        .await
        .ok()
        .map(|r| r.into_inner())
}

fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

pub struct AgentProc {
    child: Child,
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = charter::harness::stop_child(&mut self.child, Duration::from_secs(15));
    }
}

/// The `expiry` scenario.
/// A `charter agent` process named `bench` offering 64 cores to `c`, with
/// `extra` flags.
pub fn start_agent(exe: &Path, c: &Cluster, extra: &[&str]) -> anyhow::Result<AgentProc> {
    let dir = c.dir.path().join("agent");
    std::fs::create_dir_all(&dir)?;
    let child = Command::new(exe)
        .args([
            "--server",
            &c.servers(),
            "--token",
            TOKEN,
            "agent",
            "--name",
            "bench",
        ])
        .args(["--cpu", "64", "--mem", "64GiB", "--disk", "100GiB"])
        .args(extra)
        .arg("--data")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(AgentProc { child })
}

pub fn expiry(
    rt: &tokio::runtime::Runtime,
    exe: &Path,
    leases: usize,
    agent_tasks: usize,
) -> anyhow::Result<Report> {
    let _ctx = rt.enter();
    let c =
        Cluster::start(exe, 3, &[]).map_err(|e| fail("cannot start the bench cluster", e, ""))?;
    let leader = c
        .wait_leader(Duration::from_secs(20))
        .map_err(|e| fail("the bench cluster elected no leader", e, ""))?;
    let agent = start_agent(exe, &c, &[])?;
    let dir = c.dir.path().join("agent");
    let pid = agent.child.id();
    let ch = channel(&c.members[leader].grpc)?;
    let mut metrics = BTreeMap::new();
    rt.block_on(async {
        await_node(&ch, "bench").await?;
        agent_rss(&ch, pid, agent_tasks, &mut metrics).await?;
        lateness(&ch, &dir, leases, &mut metrics).await
    })?;
    drop(agent);
    Ok(Report {
        scenario: "expiry".into(),
        metrics,
    })
}

/// Waits (up to 20 s) for node `name` to be registered.
async fn await_node(ch: &Channel, name: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let r = pb::nodes_client::NodesClient::new(ch.clone())
            .list(authed(pb::ListNodesRequest { stale: true }))
            .await;
        if r.is_ok_and(|r| r.into_inner().nodes.iter().any(|n| n.name == name)) {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(20) {
            return Err(fail("the bench agent never registered", "", ""));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agent's RSS idle, then with `n` running tasks (cancelled after).
async fn agent_rss(
    ch: &Channel,
    pid: u32,
    n: usize,
    metrics: &mut BTreeMap<String, f64>,
) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    metrics.insert("agent_idle_rss_mib".into(), rss_mib(pid));
    // Running tasks: the agent's RSS with them.
    let mut held = Vec::new();
    for i in 0..n as u64 {
        let r = TasksClient::new(ch.clone())
            .submit(authed(submit_req(i, &["sleep", "600"], 10, 600_000)))
            .await?
            .into_inner();
        held.push(r.task.unwrap_or_default().id);
    }
    let t = Instant::now();
    loop {
        let mut running = 0;
        for id in &held {
            if task(ch, *id)
                .await
                .is_some_and(|r| r.task.is_some_and(|t| state(&t) == TaskState::Running))
            {
                running += 1;
            }
        }
        if running == held.len() || t.elapsed() > Duration::from_secs(60) {
            metrics.insert("agent_tasks_running".into(), running as f64);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    metrics.insert("agent_rss_mib_with_tasks".into(), rss_mib(pid));
    for id in held {
        let _ = TasksClient::new(ch.clone())
            .cancel(authed(pb::CancelTaskRequest {
                idempotency_key: format!("bench-cancel-{id}"),
                id,
            }))
            .await;
    }
    Ok(())
}

/// Leases of 2 s running `sleep 600`, ten at a time: from `expires_at` to
/// the lease ended in the state, and to its last process gone.
async fn lateness(
    ch: &Channel,
    dir: &Path,
    leases: usize,
    metrics: &mut BTreeMap<String, f64>,
) -> anyhow::Result<()> {
    // Leases of 2 s running `sleep 600`, a few at a time.
    let mut state_ms = Vec::new();
    let mut gone_ms = Vec::new();
    let mut pending: Vec<(u64, u64, i64, Vec<u32>)> = Vec::new();
    let (mut next, mut done) = (0u64, 0usize);
    while done < leases {
        while pending.len() < 10 && (next as usize) < leases {
            let r = TasksClient::new(ch.clone())
                .submit(authed(submit_req(
                    1000 + next,
                    &["sleep", "600"],
                    10,
                    2_000,
                )))
                .await?
                .into_inner();
            let t = r.task.unwrap_or_default();
            let l = r.lease.unwrap_or_default();
            pending.push((t.id, l.id, l.expires_at_ms, Vec::new()));
            next += 1;
        }
        let now = now_ms();
        let mut keep = Vec::new();
        for (tid, lid, exp, mut pids) in pending.drain(..) {
            if pids.is_empty() && now < exp {
                pids = charter_agent::sandbox::lease_pids(&charter_agent::sandbox::Scope {
                    agent: dir.to_path_buf(),
                    lease: lid,
                    uid: None,
                });
            }
            if now < exp || pids.iter().any(|p| alive(*p)) {
                keep.push((tid, lid, exp, pids));
                continue;
            }
            done += 1;
            // A lease whose process was never seen running is no sample.
            if pids.is_empty() {
                continue;
            }
            gone_ms.push(u64::try_from(now - exp).unwrap_or(0) * 1000);
            if let Some(r) = task(ch, tid).await
                && let Some(l) = r.lease
                && l.ended_at_ms > 0
            {
                state_ms.push(u64::try_from(l.ended_at_ms - exp).unwrap_or(0) * 1000);
            }
        }
        pending = keep;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gone_ms.sort_unstable();
    state_ms.sort_unstable();
    metrics.insert("leases".into(), gone_ms.len() as f64);
    metrics.insert("to_state_p50_ms".into(), percentile_ms(&state_ms, 0.5));
    metrics.insert("to_state_p99_ms".into(), percentile_ms(&state_ms, 0.99));
    metrics.insert("to_gone_p50_ms".into(), percentile_ms(&gone_ms, 0.5));
    metrics.insert("to_gone_p99_ms".into(), percentile_ms(&gone_ms, 0.99));
    metrics.insert("to_gone_max_ms".into(), percentile_ms(&gone_ms, 1.0));
    Ok(())
}

/// The `tasks` scenario.
///
/// Over 80 lines: a benchmark script, read top to bottom: start, submit, wait, measure.
pub fn tasks(rt: &tokio::runtime::Runtime, exe: &Path, dur: Duration) -> anyhow::Result<Report> {
    let _ctx = rt.enter();
    let home = tempfile::tempdir()?;
    let ports = charter::harness::free_ports(2).map_err(|e| fail("no free ports", e, ""))?;
    let listen = format!("127.0.0.1:{}", ports[0]);
    let child = Command::new(exe)
        .args([
            "dev",
            // Plaintext, as the other scenarios' clusters: this bench's
            // clients dial without TLS.
            "--no-tls",
            "--listen",
            &listen,
            "--http",
            &format!("127.0.0.1:{}", ports[1]),
        ])
        .env("CHARTER_HOME", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let dev = AgentProc { child };
    let token = {
        let t = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(home.path().join("dev-token")) {
                break s.trim().to_string();
            }
            if t.elapsed() > Duration::from_secs(20) {
                return Err(fail("charter dev wrote no token", "", ""));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let ch = channel(&listen)?;
    let mut metrics = BTreeMap::new();
    rt.block_on(async {
        // Wait for the dev agent's node.
        let t = Instant::now();
        loop {
            let r = pb::nodes_client::NodesClient::new(ch.clone())
                .list(bearer(&token, pb::ListNodesRequest { stale: true }))
                .await;
            if r.is_ok_and(|r| !r.into_inner().nodes.is_empty()) {
                break;
            }
            if t.elapsed() > Duration::from_secs(20) {
                return Err(fail("the dev agent never registered", "", ""));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ids = Arc::new(Mutex::new(Vec::new()));
        let seq = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let deadline = start + dur;
        let mut clients = Vec::new();
        for _ in 0..16 {
            let (ch, ids, seq, token) = (ch.clone(), ids.clone(), seq.clone(), token.clone());
            clients.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let i = seq.fetch_add(1, Ordering::SeqCst);
                    if let Ok(r) = TasksClient::new(ch.clone())
                        .submit(bearer(&token, submit_req(i, &["true"], 1, 60_000)))
                        .await
                        && let Some(t) = r.into_inner().task
                        && let Ok(mut v) = ids.lock()
                    {
                        v.push(t.id);
                    }
                }
            }));
        }
        for c in clients {
            let _ = c.await;
        }
        let ids: Vec<u64> = ids.lock().map(|v| v.clone()).unwrap_or_default();
        // Wait for every task to end.
        let mut lat = Vec::new();
        let mut ok = 0u64;
        let t = Instant::now();
        let mut left: Vec<u64> = ids.clone();
        while !left.is_empty() && t.elapsed() < Duration::from_secs(120) {
            let r = TasksClient::new(ch.clone())
                .list(bearer(
                    &token,
                    pb::ListTasksRequest {
                        all: true,
                        state: String::new(),
                        stale: true,
                        key: String::new(),
                    },
                ))
                .await?
                .into_inner();
            let ended: BTreeMap<u64, pb::Task> = r
                .tasks
                .into_iter()
                .filter(|t| state(t).is_ended())
                .map(|t| (t.id, t))
                .collect();
            left.retain(|id| {
                let Some(t) = ended.get(id) else { return true };
                if state(t) == TaskState::Succeeded {
                    ok += 1;
                }
                if t.started_at_ms > 0 {
                    lat.push(
                        u64::try_from(t.started_at_ms - t.submitted_at_ms).unwrap_or(0) * 1000,
                    );
                }
                false
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let secs = start.elapsed().as_secs_f64();
        lat.sort_unstable();
        metrics.insert("submitted".into(), ids.len() as f64);
        metrics.insert(TaskState::Succeeded.to_string(), ok as f64);
        metrics.insert("tasks_per_s".into(), ok as f64 / secs);
        metrics.insert("submit_to_running_p50_ms".into(), percentile_ms(&lat, 0.5));
        metrics.insert("submit_to_running_p99_ms".into(), percentile_ms(&lat, 0.99));
        Ok::<(), anyhow::Error>(())
    })?;
    drop(dev);
    Ok(Report {
        scenario: "tasks".into(),
        metrics,
    })
}

/// A tick's time from its RFC 3339 form in a task's environment.
fn tick_of(t: &pb::Task) -> Option<i64> {
    let v = t.spec.as_ref()?.env.get("CHARTER_CRON_SCHEDULED_AT")?;
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// Over 80 lines: a benchmark script, read top to bottom: apply, kill leaders, read the runs, measure.
pub fn cron(
    rt: &tokio::runtime::Runtime,
    exe: &Path,
    dur: Duration,
    kills: usize,
) -> anyhow::Result<Report> {
    use charter_proto::cron_client::CronClient;
    let _ctx = rt.enter();
    let mut c =
        Cluster::start(exe, 3, &[]).map_err(|e| fail("cannot start the bench cluster", e, ""))?;
    c.wait_leader(Duration::from_secs(20))
        .map_err(|e| fail("the bench cluster elected no leader", e, ""))?;
    let _agent = start_agent(exe, &c, &[])?;
    let servers: Vec<String> = c.members.iter().map(|m| m.grpc.clone()).collect();
    let conn = charter_proto::conn::Servers::new(&servers, Some(TOKEN.to_string()))
        .map_err(|e| fail("bad bench addresses", e, ""))?;
    let text = "[[job]]\nname = \"bench\"\nschedule = \"* * * * * *\"\n[job.task]\ncommand = [\"true\"]\ncpu = 0.01\nmem = \"1MiB\"\nfor = \"1m\"\n";
    let retry = Duration::from_secs(10);
    rt.block_on(conn.call(retry, |ch| {
        let r = conn.req(pb::ApplyCronRequest {
            idempotency_key: "bench-cron".into(),
            file: "bench.toml".into(),
            text: text.into(),
            dry_run: false,
        });
        async move { CronClient::new(ch).apply(r).await }
    }))
    .map_err(|f| {
        fail(
            "cannot apply the bench crontab",
            f.status.message().to_string(),
            "",
        )
    })?;
    let history = |conn: &charter_proto::conn::Servers| {
        rt.block_on(conn.call(retry, |ch| {
            let r = conn.req(pb::CronHistoryRequest {
                job: "bench".into(),
                n: 100_000,
                stale: false,
            });
            async move { CronClient::new(ch).history(r).await }
        }))
        .map(|h| h.runs)
        .map_err(|f| {
            fail(
                "cannot read the history",
                f.status.message().to_string(),
                "",
            )
        })
    };
    let start = now_ms();
    std::thread::sleep(dur);
    let steady_end = now_ms();
    let mut late: Vec<u64> = history(&conn)?
        .iter()
        .filter(|r| r.scheduled_at_ms > start && r.scheduled_at_ms <= steady_end)
        .map(|r| (r.fired_at_ms - r.scheduled_at_ms).max(0) as u64 * 1000)
        .collect();
    late.sort_unstable();
    let mut metrics = BTreeMap::new();
    metrics.insert("steady_ticks".into(), late.len() as f64);
    metrics.insert("lateness_p50_ms".into(), percentile_ms(&late, 0.5));
    metrics.insert("lateness_p99_ms".into(), percentile_ms(&late, 0.99));
    metrics.insert("lateness_max_ms".into(), percentile_ms(&late, 1.0));
    if kills > 0 {
        let kill_start = now_ms();
        for _ in 0..kills {
            let leader = c
                .wait_leader(Duration::from_secs(20))
                .map_err(|e| fail("no leader after a kill", e, ""))?;
            c.kill9(leader);
            std::thread::sleep(Duration::from_secs(2));
            c.spawn(leader, false)
                .map_err(|e| fail("cannot restart a member", e, ""))?;
            std::thread::sleep(Duration::from_secs(3));
        }
        std::thread::sleep(Duration::from_secs(3));
        let runs: Vec<pb::CronRun> = history(&conn)?
            .into_iter()
            .filter(|r| r.scheduled_at_ms > kill_start)
            .collect();
        let holes = runs
            .windows(2)
            .filter(|w| w[1].scheduled_at_ms - w[0].scheduled_at_ms != 1_000)
            .count();
        let skipped = runs
            .iter()
            .filter(|r| r.state.parse() == Ok(RunState::Skipped))
            .count();
        let worst = runs
            .iter()
            .map(|r| r.fired_at_ms - r.scheduled_at_ms)
            .max()
            .unwrap_or(0);
        let tasks = rt
            .block_on(conn.call(retry, |ch| {
                let r = conn.req(pb::ListTasksRequest {
                    all: true,
                    state: String::new(),
                    stale: false,
                    key: String::new(),
                });
                async move { TasksClient::new(ch).list(r).await }
            }))
            .map_err(|f| fail("cannot list tasks", f.status.message().to_string(), ""))?
            .tasks;
        let mut per_tick: BTreeMap<i64, usize> = BTreeMap::new();
        for t in &tasks {
            if let Some(at) = tick_of(t) {
                *per_tick.entry(at).or_default() += 1;
            }
        }
        let dups = per_tick.values().filter(|n| **n > 1).count();
        metrics.insert("kills".into(), kills as f64);
        metrics.insert("kill_phase_ticks".into(), runs.len() as f64);
        metrics.insert("duplicates".into(), dups as f64);
        metrics.insert("holes".into(), holes as f64);
        metrics.insert(RunState::Skipped.to_string(), skipped as f64);
        metrics.insert("kill_lateness_max_ms".into(), worst as f64);
    }
    Ok(Report {
        scenario: "cron".into(),
        metrics,
    })
}

/// A task's state from the wire (one this build does not know: pending).
fn state(t: &pb::Task) -> TaskState {
    t.state.parse().unwrap_or_default()
}
