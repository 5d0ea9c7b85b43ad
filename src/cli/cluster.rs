//! `charter cluster status|add|remove`.

use super::client::{Client, Global};
use super::output;
use charter_proto as pb;
use charter_proto::cluster_client::ClusterClient;
use clap::Subcommand;
use serde::Serialize;

/// Cluster verbs.
#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Members, leader, term, commit and applied index.
    Status {
        /// Answer from local state without a ReadIndex round (may be stale).
        #[arg(long)]
        stale: bool,
    },
    /// Add a member (start it first with `charter server --join`).
    Add {
        /// Its raft id.
        id: u64,
        /// Its gRPC address.
        addr: String,
    },
    /// Remove a member.
    Remove {
        /// Its raft id.
        id: u64,
    },
}

/// `cluster status --json`: a stable interface.
#[derive(Serialize)]
struct StatusJson {
    id: u64,
    leader_id: Option<u64>,
    term: u64,
    role: String,
    commit_index: u64,
    applied_index: u64,
    snapshot_index: u64,
    members: Vec<MemberJson>,
}

#[derive(Serialize)]
struct MemberJson {
    id: u64,
    addr: String,
}

fn members_json(ms: &[pb::Member]) -> Vec<MemberJson> {
    ms.iter()
        .map(|m| MemberJson {
            id: m.id,
            addr: m.addr.clone(),
        })
        .collect()
}

/// Runs a cluster verb.
pub async fn run(g: &Global, cmd: ClusterCmd) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    match cmd {
        ClusterCmd::Status { stale } => {
            let s = c
                .call("cluster status", |ch| {
                    let req = c.req(pb::StatusRequest { stale });
                    async move { ClusterClient::new(ch).status(req).await }
                })
                .await?;
            let j = StatusJson {
                id: s.id,
                leader_id: (s.leader_id != 0).then_some(s.leader_id),
                term: s.term,
                role: s.role.clone(),
                commit_index: s.commit_index,
                applied_index: s.applied_index,
                snapshot_index: s.snapshot_index,
                members: members_json(&s.members),
            };
            if g.json {
                output::json(&j)?;
            } else {
                println!(
                    "member {} ({}), leader {}, term {}, commit {}, applied {}",
                    j.id,
                    j.role,
                    j.leader_id.map_or("none".to_string(), |l| l.to_string()),
                    j.term,
                    j.commit_index,
                    j.applied_index
                );
                let rows = j
                    .members
                    .iter()
                    .map(|m| {
                        let role = if Some(m.id) == j.leader_id {
                            "leader"
                        } else {
                            "follower"
                        };
                        vec![m.id.to_string(), m.addr.clone(), role.to_string()]
                    })
                    .collect();
                output::table(&["ID", "ADDR", "ROLE"], rows);
            }
        }
        ClusterCmd::Add { id, addr } => {
            let r = c
                .call("cluster add", |ch| {
                    let req = c.req(pb::AddMemberRequest {
                        id,
                        addr: addr.clone(),
                    });
                    async move { ClusterClient::new(ch).add_member(req).await }
                })
                .await?;
            print_members(g, &r.members)?;
        }
        ClusterCmd::Remove { id } => {
            let r = c
                .call("cluster remove", |ch| {
                    let req = c.req(pb::RemoveMemberRequest { id });
                    async move { ClusterClient::new(ch).remove_member(req).await }
                })
                .await?;
            print_members(g, &r.members)?;
        }
    }
    Ok(0)
}

fn print_members(g: &Global, ms: &[pb::Member]) -> anyhow::Result<()> {
    if g.json {
        output::json(&serde_json::json!({ "members": members_json(ms) }))
    } else {
        output::table(
            &["ID", "ADDR"],
            ms.iter()
                .map(|m| vec![m.id.to_string(), m.addr.clone()])
                .collect(),
        );
        Ok(())
    }
}
