//! `charter quota set|list`: per-principal limits.

use super::client::{Client, Global, new_key};
use super::output::{self, fail};
use charter_config::units;
use charter_proto as pb;
use charter_proto::leases_client::LeasesClient;
use clap::Subcommand;
use serde::Serialize;

/// Quota verbs.
#[derive(Subcommand, Debug)]
pub enum QuotaCmd {
    /// Set a principal's limits (`*` is everyone's default); unset flags mean no limit (admin).
    Set {
        /// The principal, or `*`.
        principal: String,
        /// Most cores held by its pending and granted leases together.
        #[arg(long)]
        max_cores: Option<String>,
        /// Most leases at once.
        #[arg(long)]
        max_leases: Option<u32>,
        /// Longest lease, renewals included, e.g. 24h.
        #[arg(long)]
        max_duration: Option<String>,
    },
    /// List the quotas.
    List,
}

#[derive(Serialize)]
struct QuotaJson {
    principal: String,
    max_cpu_millis: Option<u64>,
    max_leases: Option<u32>,
    max_duration_ms: Option<u64>,
}

fn quota_json(q: &pb::Quota) -> QuotaJson {
    QuotaJson {
        principal: q.principal.clone(),
        max_cpu_millis: q.max_cpu_millis,
        max_leases: q.max_leases,
        max_duration_ms: q.max_duration_ms,
    }
}

fn print(g: &Global, qs: &[pb::Quota]) -> anyhow::Result<()> {
    if g.json {
        return output::json(
            &serde_json::json!({ "quotas": qs.iter().map(quota_json).collect::<Vec<_>>() }),
        );
    }
    let none = || "-".to_string();
    output::table(
        &["PRINCIPAL", "MAX CORES", "MAX LEASES", "MAX DURATION"],
        qs.iter()
            .map(|q| {
                vec![
                    q.principal.clone(),
                    q.max_cpu_millis.map_or_else(none, units::format_cores),
                    q.max_leases.map_or_else(none, |v| v.to_string()),
                    q.max_duration_ms.map_or_else(none, units::format_duration),
                ]
            })
            .collect(),
    );
    Ok(())
}

/// Runs a quota verb.
pub async fn run(g: &Global, cmd: QuotaCmd) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    match cmd {
        QuotaCmd::Set {
            principal,
            max_cores,
            max_leases,
            max_duration,
        } => {
            let bad = |flag: &str, v: &str, e: String| {
                fail(
                    format!("bad {flag} `{v}`"),
                    e,
                    format!("see `charter quota set --help` for {flag}"),
                )
            };
            let max_cpu_millis = max_cores
                .as_deref()
                .map(|v| units::parse_cores(v).map_err(|e| bad("--max-cores", v, e)))
                .transpose()?;
            let max_duration_ms = max_duration
                .as_deref()
                .map(|v| units::parse_duration(v).map_err(|e| bad("--max-duration", v, e)))
                .transpose()?;
            let quota = pb::Quota {
                principal,
                max_cpu_millis,
                max_leases,
                max_duration_ms,
            };
            let key = new_key();
            let r = c
                .call("quota set", |ch| {
                    let req = c.req(pb::SetQuotaRequest {
                        idempotency_key: key.clone(),
                        quota: Some(quota.clone()),
                    });
                    async move { LeasesClient::new(ch).set_quota(req).await }
                })
                .await?;
            print(g, &[r.quota.unwrap_or_default()])?;
        }
        QuotaCmd::List => {
            let r = c
                .call("quota list", |ch| {
                    let req = c.req(pb::ListQuotasRequest {});
                    async move { LeasesClient::new(ch).list_quotas(req).await }
                })
                .await?;
            print(g, &r.quotas)?;
        }
    }
    Ok(0)
}
