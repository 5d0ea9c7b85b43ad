//! Cron definitions (`charter cron apply crontab.toml`): Hydra's jobs.
//! `examples/crontab.toml` shows every field.
//!
//! ```toml
//! [[job]]
//! name = "nightly-report"
//! schedule = "30 2 * * mon-fri"     # crontab(5); optional leading seconds
//! timezone = "Europe/Berlin"        # IANA, default UTC
//! depends_on = ["ingest"]           # upstream runs of the same tick must succeed
//! window = "1h"                     # or: the upstream's newest run within this
//! dependency_wait = "30m"           # then the run is skipped as late
//! concurrency = "forbid"            # allow | forbid | replace
//! missed = "latest"                 # skip | latest | all
//! max_catch_up = 3                  # with missed = "all"
//! retries = 2
//! paused = false
//! owner = "ann"
//! [job.task]                        # a task config, as for `charter task submit -f`
//! command = ["./report.sh", "--day", "{scheduled_date}"]
//! cpu = 0.5
//! for = "1h"
//! ```
//!
//! The reader checks the whole file: every job's fields, that names are
//! unique, that `depends_on` names jobs of the file, and that dependencies
//! have no cycle. Schedule expressions are checked by the caller's
//! `check_schedule` (Hydra's parser), so their errors carry the line too.

use crate::reader::Fields;
use crate::task::TaskConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

crate::named! {
    /// What to do with a tick while a run of the same job is still going.
    #[derive(Default)]
    pub enum Concurrency: "concurrency" {
        /// Fire it anyway.
        #[default]
        Allow = "allow",
        /// Skip it.
        Forbid = "forbid",
        /// Fire it and cancel the running one.
        Replace = "replace",
    }
}

crate::named! {
    /// What to do with ticks missed while no leader was there to fire them.
    #[derive(Default)]
    pub enum Missed: "missed policy" {
        /// Skip them all.
        Skip = "skip",
        /// Fire the newest one only.
        #[default]
        Latest = "latest",
        /// Fire them all, up to `max_catch_up` of the newest.
        All = "all",
    }
}

/// A validated cron file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CronConfig {
    /// The jobs, in file order.
    pub jobs: Vec<JobConfig>,
}

/// One job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobConfig {
    /// Unique name.
    pub name: String,
    /// The crontab(5) expression.
    pub schedule: String,
    /// IANA zone (empty: UTC).
    pub timezone: String,
    /// Upstream jobs.
    pub depends_on: Vec<String>,
    /// Upstream window in ms (0: the same tick only).
    pub window_ms: u64,
    /// How long a run waits for its upstreams, in ms.
    pub dependency_wait_ms: u64,
    /// A tick while a run is going.
    pub concurrency: Concurrency,
    /// Ticks missed while no leader was there.
    pub missed: Missed,
    /// With missed = all.
    pub max_catch_up: u32,
    /// Further attempts of a failed run.
    pub retries: u32,
    /// Paused jobs do not fire.
    pub paused: bool,
    /// Who the runs belong to (empty: whoever applies the file).
    pub owner: String,
    /// What each run does.
    pub task: TaskConfig,
}

/// Checks one schedule: `(expression, zone) -> Ok or the reason`.
pub type ScheduleCheck<'f> = &'f dyn Fn(&str, Option<&str>) -> Result<(), String>;

impl CronConfig {
    /// Reads a cron file; `None` when a diagnostic was recorded.
    pub fn read(f: &Fields<'_, '_>, check_schedule: ScheduleCheck<'_>) -> Option<CronConfig> {
        let tables = f.tables("job");
        if tables.is_empty() && !f.has("job") {
            f.missing("job", "[[job]] tables, one per job");
        }
        let mut jobs = Vec::new();
        let mut ok = true;
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for t in &tables {
            match JobConfig::read(t, check_schedule) {
                Some(j) => {
                    if seen.insert(j.name.clone(), jobs.len()).is_some() {
                        t.error_at("name", format!("job \"{}\" is defined twice", j.name));
                        ok = false;
                    }
                    jobs.push(j);
                }
                None => ok = false,
            }
        }
        if ok {
            for (j, t) in jobs.iter().zip(&tables) {
                for d in &j.depends_on {
                    if d == &j.name {
                        t.error_at("depends_on", "a job cannot depend on itself");
                        ok = false;
                    } else if !seen.contains_key(d) {
                        t.error_at(
                            "depends_on",
                            format!(
                                "no job named \"{d}\" in this file; depend on jobs defined here"
                            ),
                        );
                        ok = false;
                    }
                }
            }
        }
        if ok && let Some(cycle) = find_cycle(&jobs) {
            let i = seen[&cycle[0]];
            tables[i].error_at(
                "depends_on",
                format!("dependency cycle: {}", cycle.join(" -> ")),
            );
            ok = false;
        }
        for t in tables {
            t.finish();
        }
        ok.then_some(CronConfig { jobs })
    }
}

/// A dependency cycle, as job names from and back to its first job.
fn find_cycle(jobs: &[JobConfig]) -> Option<Vec<String>> {
    let deps: BTreeMap<&str, &[String]> = jobs
        .iter()
        .map(|j| (j.name.as_str(), j.depends_on.as_slice()))
        .collect();
    fn visit<'a>(
        n: &'a str,
        deps: &BTreeMap<&'a str, &'a [String]>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut c: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
            c.push(n.to_string());
            return Some(c);
        }
        if !done.insert(n) {
            return None;
        }
        path.push(n);
        for d in deps.get(n).copied().unwrap_or_default() {
            if let Some(c) = visit(d, deps, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for j in jobs {
        if let Some(c) = visit(&j.name, &deps, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

impl JobConfig {
    fn read(f: &Fields<'_, '_>, check_schedule: ScheduleCheck<'_>) -> Option<JobConfig> {
        let name = f.req_str("name", "the job's name, like name = \"nightly-report\"");
        let schedule = f.req_str("schedule", "a crontab(5) expression, like \"30 2 * * *\"");
        let timezone = f.str("timezone").unwrap_or_default();
        if let Some(s) = &schedule
            && let Err(e) = check_schedule(s, Some(timezone.as_str()).filter(|z| !z.is_empty()))
        {
            if e.contains("time zone") {
                f.error_at("timezone", e);
                // The expression on its own, so both problems show at once.
                if let Err(e) = check_schedule(s, None) {
                    f.error_at("schedule", e);
                }
            } else {
                f.error_at("schedule", e);
            }
        }
        let depends_on = f.str_list("depends_on");
        let window = f.duration("window").unwrap_or(0);
        let wait = f.duration("dependency_wait").unwrap_or(3_600_000);
        let concurrency: Concurrency = f.named("concurrency").unwrap_or_default();
        let missed: Missed = f.named("missed").unwrap_or_default();
        let max_catch_up = f.u64("max_catch_up").unwrap_or(1);
        let retries = f.u64("retries").unwrap_or(0);
        let paused = f.bool("paused").unwrap_or(false);
        let owner = f.str("owner").unwrap_or_default();
        if let Some(n) = &name
            && !crate::node::valid_name(n)
        {
            f.error_at(
                "name",
                format!("expected 1-63 letters, digits, '-', '.' or '_', got \"{n}\""),
            );
        }
        let task = match f.table("task") {
            Some(t) => {
                let out = TaskConfig::read(&t);
                t.finish();
                out
            }
            None => {
                f.missing("task", "a [job.task] table: what each run does");
                None
            }
        };
        let small = |key: &str, v: u64| {
            u32::try_from(v)
                .map_err(|_| f.error_at(key, "expected a whole number below 4294967296"))
        };
        Some(JobConfig {
            name: name.filter(|n| crate::node::valid_name(n))?,
            schedule: schedule?,
            timezone,
            depends_on,
            window_ms: window,
            dependency_wait_ms: wait,
            concurrency,
            missed,
            max_catch_up: small("max_catch_up", max_catch_up).ok()?.max(1),
            retries: small("retries", retries).ok()?,
            paused,
            owner,
            task: task?,
        })
    }
}
