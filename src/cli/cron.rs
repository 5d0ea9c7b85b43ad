//! `charter cron`: Hydra, distributed cron. For now: `cron next`, which
//! prints a schedule's next fire times so anyone can check an expression.

use super::output::{self, fail};
use charter_hydra::schedule::Schedule;
use clap::Subcommand;

/// Cron verbs.
#[derive(Subcommand, Debug)]
pub enum CronCmd {
    /// Print the next fire times of a crontab(5) expression.
    Next {
        /// The expression, e.g. "30 2 * * mon-fri" or "@daily" (quote it).
        expr: String,
        /// IANA time zone the fields are read in (default UTC).
        #[arg(long)]
        tz: Option<String>,
        /// Start from this time (RFC 3339; default now).
        #[arg(long)]
        from: Option<String>,
        /// How many.
        #[arg(short = 'n', default_value_t = 5)]
        n: usize,
    },
}

/// Runs a cron verb.
pub fn run(json: bool, cmd: CronCmd) -> anyhow::Result<i32> {
    match cmd {
        CronCmd::Next { expr, tz, from, n } => {
            let s = Schedule::parse(&expr, tz.as_deref()).map_err(|e| {
                fail(
                    format!("bad schedule `{expr}`"),
                    e.to_string(),
                    "write 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or a macro like @daily",
                )
            })?;
            let from = match from {
                Some(f) => chrono::DateTime::parse_from_rfc3339(&f)
                    .map_err(|e| {
                        fail(
                            format!("bad --from `{f}`"),
                            e.to_string(),
                            "give an RFC 3339 time like 2026-11-22T06:00:00Z",
                        )
                    })?
                    .with_timezone(&chrono::Utc),
                None => chrono::Utc::now(),
            };
            let next = s.upcoming(from, n.min(10_000));
            let shown: Vec<String> = next
                .iter()
                .map(|t| output::time(t.timestamp_millis()))
                .collect();
            if json {
                output::json(&serde_json::json!({ "next": shown }))?;
            } else {
                let tz = s.tz();
                for t in &next {
                    println!(
                        "{}  ({} {})",
                        output::time(t.timestamp_millis()),
                        t.with_timezone(&tz).format("%a %Y-%m-%d %H:%M:%S"),
                        tz.name()
                    );
                }
            }
            Ok(0)
        }
    }
}
