//! `charter bench --scenario deploy`: the deployer's own overhead, and what
//! polling costs.
//!
//! - A 3-member cluster (the deployer embedded) and one agent; a git
//!   repository with the example app (`examples/app/hello.rs`, built with
//!   this machine's `rustc`). Each round commits a new version and sends a
//!   signed GitHub push to `POST /hooks/git`; overhead = (webhook sent →
//!   promoted) − the build task's run time − the slower server's start
//!   (task started → healthy). `min_healthy` is 0 here: it is a wait the
//!   app asks for, not overhead.
//! - Polling: one pass over `--deploy-apps` apps' branch heads as the
//!   deployer's poller does it (refs read from local repositories), in CPU
//!   time; the same with `git ls-remote` per app (remote repositories); and
//!   one controller read (`Deploy.Plan` + decoding) with that many apps
//!   registered.

use super::bench::{Report, percentile_ms};
use super::output::fail;
use charter::harness::{Cluster, TOKEN};
use charter_config::codec::{self, Kind};
use charter_config::deployment::{DeployStatus, Deployment, TaskView};
use charter_proto as pb;
use charter_proto::deploy_client::DeployClient;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const SECRET: &str = "bench-secret";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    charter::harness::git(dir, args).map_err(|e| fail("git failed", e, ""))
}

/// CPU time of this process and its waited-for children, in ms.
fn cpu_ms() -> (f64, f64) {
    let get = |who| {
        // SAFETY: getrusage fills the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut u) };
        let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
        ms(u.ru_utime) + ms(u.ru_stime)
    };
    (get(libc::RUSAGE_SELF), get(libc::RUSAGE_CHILDREN))
}

fn app_toml(name: &str, repo: &Path, poll: &str) -> String {
    format!(
        "kind = \"app\"\nname = \"{name}\"\nrepo = \"{}\"\nbranch = \"main\"\nservers = 2\nprogress_deadline = \"5m\"\n{poll}secret = \"{SECRET}\"\n\
         [build]\ncommand = [\"sh\", \"build.sh\"]\nartifact = \"out/hello\"\ncpu = 0.5\nmem = \"1GiB\"\ntimeout = \"5m\"\n\
         [run]\ncommand = [\"./hello\"]\nports = [\"http\"]\n\
         [health]\nhttp = \"/healthz\"\ninterval = \"100ms\"\nmin_healthy = \"0s\"\n\
         [requirements]\ncpu = 0.1\nmem = \"64MiB\"\n",
        repo.display()
    )
}

/// The bench's calls to the cluster, blocking on its runtime.
struct Calls<'a> {
    rt: &'a tokio::runtime::Runtime,
    conn: charter_proto::conn::Servers,
    retry: Duration,
}

impl Calls<'_> {
    /// Applies app `name` from `text`.
    fn apply(&self, name: &str, text: String) -> anyhow::Result<()> {
        let conn = &self.conn;
        self.rt
            .block_on(conn.call(self.retry, |ch| {
                let r = conn.req(pb::ApplyAppRequest {
                    idempotency_key: String::new(),
                    file: format!("{name}.toml"),
                    text: text.clone(),
                });
                async move { DeployClient::new(ch).apply(r).await }
            }))
            .map(|_| ())
            .map_err(|f| {
                fail(
                    "cannot apply the bench app",
                    f.status.message().to_string(),
                    "",
                )
            })
    }

    /// The newest deployment of `hello`, and its tasks.
    fn history(&self) -> anyhow::Result<pb::DeployHistoryReply> {
        let conn = &self.conn;
        self.rt
            .block_on(conn.call(self.retry, |ch| {
                let r = conn.req(pb::DeployHistoryRequest {
                    app: "hello".into(),
                    n: 1,
                    stale: false,
                });
                async move { DeployClient::new(ch).history(r).await }
            }))
            .map_err(|f| {
                fail(
                    "cannot read the history",
                    f.status.message().to_string(),
                    "",
                )
            })
    }

    /// When task `id` started and ended.
    fn task_times(&self, id: u64) -> Option<(i64, i64)> {
        let conn = &self.conn;
        let t = self
            .rt
            .block_on(conn.call(self.retry, |ch| {
                let r = conn.req(pb::ShowTaskRequest { id, stale: false });
                async move { pb::tasks_client::TasksClient::new(ch).show(r).await }
            }))
            .ok()?
            .task?;
        Some((t.started_at_ms, t.ended_at_ms))
    }

    /// Waits until the newest deployment is of `commit` and promoted.
    fn promoted(&self, commit: &str) -> anyhow::Result<Deployment> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let h = self.history()?;
            let d = h.deployments.first().map(|d| {
                codec::decode::<Deployment>(Kind::Deployment, d)
                    .map_err(|e| fail("cannot read a deployment", e.to_string(), ""))
            });
            let d = d.transpose()?;
            if let Some(d) = d
                .as_ref()
                .filter(|d| d.commit == commit && d.promoted_at.is_some())
            {
                return Ok(d.clone());
            }
            if let Some(d) = d.filter(|d| d.status == DeployStatus::RolledBack) {
                return Err(fail("the bench deployment rolled back", d.reason, ""));
            }
            if Instant::now() > deadline {
                return Err(fail("the bench deployment took over 5 minutes", "", ""));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The slower server of `d`: task started → healthy, in ms.
    fn slowest_start(&self, d: &Deployment) -> anyhow::Result<i64> {
        let h = self.history()?;
        let mut start = 0;
        for id in &d.instances {
            let view = h
                .tasks
                .get(id)
                .and_then(|t| codec::decode::<TaskView>(Kind::TaskView, t).ok());
            if let (Some((s, _)), Some(v)) = (self.task_times(*id), view)
                && let Some(hs) = v.health_since
            {
                start = start.max(hs - s);
            }
        }
        Ok(start)
    }
}

/// Commits version `round + 1` of the app (round 0: the first commit as it
/// is) and sends its signed push to `web`; the commit and when it was sent.
fn push(repo: &Path, web: &str, round: usize) -> anyhow::Result<(String, i64)> {
    let commit = if round == 0 {
        git(repo, &["rev-parse", "HEAD"])?
    } else {
        let p = repo.join("hello.rs");
        let text = std::fs::read_to_string(&p)?;
        let text = text.replacen(&format!("\"v{round}\""), &format!("\"v{}\"", round + 1), 1);
        std::fs::write(&p, text)?;
        git(
            repo,
            &["commit", "--quiet", "-am", &format!("v{}", round + 1)],
        )?;
        git(repo, &["rev-parse", "HEAD"])?
    };
    let body = format!(
        r#"{{"ref":"refs/heads/main","after":"{commit}","repository":{{"clone_url":"{}"}}}}"#,
        repo.display()
    );
    let sig = charter_deployer::webhook::hmac_sha256(SECRET.as_bytes(), body.as_bytes());
    let sig: String = sig.iter().map(|b| format!("{b:02x}")).collect();
    let sent = now_ms();
    let (delivery, signature) = (format!("bench-{round}-{sent}"), format!("sha256={sig}"));
    let (code, answer) = charter::harness::http(
        web,
        "POST",
        "/hooks/git",
        &[
            ("x-github-delivery", &delivery),
            ("x-hub-signature-256", &signature),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    )?;
    if code != 202 {
        return Err(fail(
            "the bench webhook was refused",
            format!("{code}: {answer}"),
            "",
        ));
    }
    Ok((commit, sent))
}

/// Rounds of push → promoted: totals, builds, app starts and the
/// deployer's overhead (what is left), as p50 (and the overhead's max).
fn rounds(
    calls: &Calls<'_>,
    repo: &Path,
    web: &str,
    rounds: usize,
    metrics: &mut BTreeMap<String, f64>,
) -> anyhow::Result<()> {
    let (mut totals, mut builds, mut starts, mut overheads) = (vec![], vec![], vec![], vec![]);
    // Round 0 deploys the first version (nothing to swap); it is measured too.
    for round in 0..rounds.max(1) {
        let (commit, sent) = push(repo, web, round)?;
        let d = calls.promoted(&commit)?;
        let promoted = d.promoted_at.unwrap_or(sent);
        let build = d
            .build_task
            .and_then(|id| calls.task_times(id))
            .map_or(0, |(s, e)| (e - s).max(0));
        let start = calls.slowest_start(&d)?;
        let total = promoted - sent;
        totals.push(total as u64 * 1000);
        builds.push(build as u64 * 1000);
        starts.push(start as u64 * 1000);
        overheads.push((total - build - start).max(0) as u64 * 1000);
    }
    for v in [&mut totals, &mut builds, &mut starts, &mut overheads] {
        v.sort_unstable();
    }
    metrics.insert("rounds".into(), totals.len() as f64);
    metrics.insert(
        "webhook_to_active_p50_ms".into(),
        percentile_ms(&totals, 0.5),
    );
    metrics.insert("build_p50_ms".into(), percentile_ms(&builds, 0.5));
    metrics.insert("app_start_p50_ms".into(), percentile_ms(&starts, 0.5));
    metrics.insert("overhead_p50_ms".into(), percentile_ms(&overheads, 0.5));
    metrics.insert("overhead_max_ms".into(), percentile_ms(&overheads, 1.0));
    Ok(())
}

/// One polling pass over `apps` apps' branch heads: from local
/// repositories as the poller reads them, and with `git ls-remote` per app
/// (a tenth of the apps, scaled up).
fn polling(repo: &Path, apps: usize, metrics: &mut BTreeMap<String, f64>) -> anyhow::Result<()> {
    let (self0, _) = cpu_ms();
    let t = Instant::now();
    let path = repo.display().to_string();
    for _ in 0..apps {
        if charter_deployer::git::local_head(&path, "main").is_none() {
            return Err(fail("cannot read the bench repository's head", path, ""));
        }
    }
    let (self1, _) = cpu_ms();
    metrics.insert("apps".into(), apps as f64);
    metrics.insert("poll_cycle_local_cpu_ms".into(), self1 - self0);
    metrics.insert(
        "poll_cycle_local_wall_ms".into(),
        t.elapsed().as_secs_f64() * 1000.0,
    );
    let sample = (apps / 10).max(1);
    let (_, kids0) = cpu_ms();
    let t = Instant::now();
    for _ in 0..sample {
        charter_deployer::git::head(&path, "main")
            .map_err(|e| fail("git ls-remote failed", e.to_string(), ""))?;
    }
    let (_, kids1) = cpu_ms();
    let scale = apps as f64 / sample as f64;
    metrics.insert(
        "poll_cycle_ls_remote_cpu_ms".into(),
        (kids1 - kids0) * scale,
    );
    metrics.insert(
        "poll_cycle_ls_remote_wall_ms".into(),
        t.elapsed().as_secs_f64() * 1000.0 * scale,
    );
    Ok(())
}

/// The controller's read (`Deploy.Plan` and decoding) with `apps` apps
/// registered (polling off), 20 times.
fn plan_reads(
    calls: &Calls<'_>,
    repo: &Path,
    apps: usize,
    metrics: &mut BTreeMap<String, f64>,
) -> anyhow::Result<()> {
    for i in 0..apps {
        let name = format!("app{i:04}");
        calls.apply(&name, app_toml(&name, repo, ""))?;
    }
    let n = 20;
    let conn = &calls.conn;
    let (self0, _) = cpu_ms();
    let t = Instant::now();
    for _ in 0..n {
        let r = calls
            .rt
            .block_on(conn.call(calls.retry, |ch| {
                let r = conn.req(pb::DeployPlanRequest { leader_only: false });
                async move { DeployClient::new(ch).plan(r).await }
            }))
            .map_err(|f| fail("cannot read the plan", f.status.message().to_string(), ""))?;
        let v: charter_config::deployment::DeployView = codec::decode(Kind::DeployView, &r.view)?;
        if v.apps.len() < apps {
            return Err(fail(
                "the plan lacks apps",
                format!("{} of {apps}", v.apps.len()),
                "",
            ));
        }
    }
    let (self1, _) = cpu_ms();
    metrics.insert(
        "plan_read_wall_ms".into(),
        t.elapsed().as_secs_f64() * 1000.0 / n as f64,
    );
    metrics.insert("plan_read_client_cpu_ms".into(), (self1 - self0) / n as f64);
    Ok(())
}

pub fn deploy(
    rt: &tokio::runtime::Runtime,
    exe: &Path,
    rounds_n: usize,
    apps: usize,
) -> anyhow::Result<Report> {
    let _ctx = rt.enter();
    let c =
        Cluster::start(exe, 3, &[]).map_err(|e| fail("cannot start the bench cluster", e, ""))?;
    c.wait_leader(Duration::from_secs(20))
        .map_err(|e| fail("the bench cluster elected no leader", e, ""))?;
    // Builds run as the apps' owner, the bench's admin `root`, mapped to
    // the system's root: a toolchain under /root (0700) is out of reach of
    // a lease's own uid.
    let _agent = super::bench_agent::start_agent(exe, &c, &["--run-as", "root=root"])?;
    let servers: Vec<String> = c.members.iter().map(|m| m.grpc.clone()).collect();
    let conn = charter_proto::conn::Servers::new(&servers, Some(TOKEN.to_string()))
        .map_err(|e| fail("bad bench addresses", e, ""))?;
    let calls = Calls {
        rt,
        conn,
        retry: Duration::from_secs(10),
    };
    let repo = charter::harness::example_app_repo(c.dir.path())
        .map_err(|e| fail("cannot make the bench repository", e, ""))?;
    calls.apply("hello", app_toml("hello", &repo, ""))?;
    let mut metrics = BTreeMap::new();
    rounds(&calls, &repo, &c.members[0].http, rounds_n, &mut metrics)?;
    polling(&repo, apps, &mut metrics)?;
    plan_reads(&calls, &repo, apps, &mut metrics)?;
    Ok(Report {
        scenario: "deploy".into(),
        metrics,
    })
}
