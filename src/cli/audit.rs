//! `charter audit`: who did what, from the replicated log.

use super::client::{Client, Global};
use super::output::{self, fail};
use charter_proto as pb;
use charter_proto::cluster_client::ClusterClient;
use clap::Args;
use serde::Serialize;

/// `charter audit` flags.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only this principal's records (others than your own need an admin token).
    #[arg(long)]
    principal: Option<String>,
    /// Only records since this time: a duration ago (`1h`, `30m`) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// The newest this many (at most 10,000).
    #[arg(short = 'n', long, default_value_t = 100)]
    n: u32,
}

#[derive(Serialize)]
struct AuditJson {
    index: u64,
    at: String,
    principal: String,
    command: String,
    target: String,
    outcome: String,
}

/// `--since` as ms since the epoch, given the time now.
fn since_ms(s: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    let d = charter_config::units::parse_duration(s)?;
    Ok(now_ms.saturating_sub(i64::try_from(d).unwrap_or(i64::MAX)))
}

/// Runs `charter audit`.
pub async fn run(g: &Global, a: AuditArgs) -> anyhow::Result<i32> {
    let since = match &a.since {
        None => 0,
        Some(s) => since_ms(s, chrono::Utc::now().timestamp_millis()).map_err(|e| {
            fail(
                format!("bad --since `{s}`"),
                e,
                "e.g. --since 1h or --since 2026-12-03T10:00:00Z",
            )
        })?,
    };
    let c = Client::new(g)?;
    let r = c
        .call("audit", |ch| {
            let req = c.req(pb::AuditRequest {
                principal: a.principal.clone().unwrap_or_default(),
                since_ms: since,
                n: a.n,
            });
            async move { ClusterClient::new(ch).audit(req).await }
        })
        .await?;
    let rows: Vec<AuditJson> = r
        .entries
        .into_iter()
        .map(|e| AuditJson {
            index: e.index,
            at: output::time(e.at_ms),
            principal: e.principal,
            command: e.command,
            target: e.target,
            outcome: e.outcome,
        })
        .collect();
    if g.json {
        output::json(&serde_json::json!({ "entries": rows }))?;
    } else {
        output::table(
            &["TIME", "INDEX", "PRINCIPAL", "COMMAND", "TARGET", "OUTCOME"],
            rows.into_iter()
                .map(|r| {
                    vec![
                        r.at,
                        r.index.to_string(),
                        r.principal,
                        r.command,
                        r.target,
                        r.outcome,
                    ]
                })
                .collect(),
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_ago_or_a_time() {
        assert_eq!(since_ms("1h", 10_000_000), Ok(10_000_000 - 3_600_000));
        assert_eq!(since_ms("1970-01-01T00:00:01Z", 0), Ok(1_000));
        assert!(since_ms("yesterday", 0).is_err());
    }
}
