//! `charter events`: what the applied log meant, one line per event.

use super::client::{Client, Global, status_error};
use super::output;
use charter_proto as pb;
use charter_proto::cluster_client::ClusterClient;
use clap::Args;
use std::io::Write;
use std::time::Duration;
use tonic::Code;

/// `charter events` flags.
#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Keep printing new events as they are applied.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Topics or types, comma-separated: lease, node, task, cron, deploy,
    /// member, or one type such as lease.granted.
    #[arg(long = "type", value_delimiter = ',')]
    types: Vec<String>,
    /// Start at this raft index (events are kept from the oldest index
    /// `charter events` shows; an older one is an error).
    #[arg(long)]
    since_index: Option<u64>,
    /// Without --since-index: the newest this many kept events first.
    #[arg(short = 'n', long, default_value_t = 20)]
    tail: u32,
    /// Only this principal's events (others than your own need an admin token).
    #[arg(long)]
    principal: Option<String>,
}

/// One event as a line.
fn line(e: &pb::EventMessage) -> String {
    let who = if e.principal.is_empty() {
        String::new()
    } else {
        format!(" ({})", e.principal)
    };
    let topic = e.r#type.split('.').next().unwrap_or("");
    let detail = if e.detail.is_empty() {
        String::new()
    } else {
        format!(": {}", e.detail)
    };
    format!(
        "{} {:>7} {:<22} {topic} {}{who}{detail}",
        output::time(e.at_ms),
        e.index,
        e.r#type,
        e.subject
    )
}

/// Runs `charter events`.
pub async fn run(g: &Global, a: EventsArgs) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    let mut since = a.since_index.unwrap_or(0);
    // The last event printed: a stream resumed on another member skips it
    // and everything before it.
    let mut last: Option<(u64, u32)> = None;
    let mut out = std::io::stdout();
    loop {
        let req = pb::EventsRequest {
            since_index: since,
            tail: if a.since_index.is_none() && last.is_none() {
                a.tail
            } else {
                0
            },
            types: a.types.clone(),
            principal: a.principal.clone().unwrap_or_default(),
            follow: a.follow,
        };
        let mut s = c
            .call("events", |ch| {
                let req = c.req(req.clone());
                async move { ClusterClient::new(ch).events(req).await }
            })
            .await?;
        loop {
            match s.message().await {
                Ok(Some(e)) => {
                    if last.is_some_and(|l| (e.index, e.seq) <= l) {
                        continue;
                    }
                    last = Some((e.index, e.seq));
                    let text = if g.json {
                        charter_scheduler::service::events::http::event_json(&e).to_string()
                    } else {
                        line(&e)
                    };
                    if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
                        // The reader went away (`| head`).
                        return Ok(0);
                    }
                }
                Ok(None) if !a.follow => return Ok(0),
                // The member stopped: follow on from another.
                Ok(None) => break,
                Err(e) if a.follow && matches!(e.code(), Code::Unavailable | Code::Cancelled) => {
                    break;
                }
                Err(e) => return Err(status_error("events", "", &e).into()),
            }
        }
        if let Some((index, _)) = last {
            since = index;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Wakes a waiting command when events of some types are applied, instead
/// of polling: `lease request --wait`, `deploy status --watch`.
pub struct Wake {
    rx: tokio::sync::mpsc::Receiver<pb::EventMessage>,
    /// The stream failed: wake on a slow timer instead.
    fallback: Duration,
}

impl Wake {
    /// Follows events of `types` (topics or types) from now on.
    pub fn on(g: &Global, types: &[&str]) -> Wake {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let g = g.clone();
        let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        tokio::spawn(async move {
            let Ok(c) = Client::new(&g) else { return };
            loop {
                let req = pb::EventsRequest {
                    since_index: 0,
                    // The newest one, then what comes: one early wake-up
                    // at most, never a missed one.
                    tail: 1,
                    types: types.clone(),
                    principal: String::new(),
                    follow: true,
                };
                let s = c
                    .call("events", |ch| {
                        let req = c.req(req.clone());
                        async move { ClusterClient::new(ch).events(req).await }
                    })
                    .await;
                let Ok(mut s) = s else { return };
                while let Ok(Some(e)) = s.message().await {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Wake {
            rx,
            fallback: Duration::from_secs(2),
        }
    }

    /// Resolves at the next event (or, if the stream is gone, after the
    /// fallback interval), with the event when there was one.
    pub async fn next(&mut self) -> Option<pb::EventMessage> {
        tokio::select! {
            e = self.rx.recv() => match e {
                Some(e) => Some(e),
                None => {
                    tokio::time::sleep(self.fallback).await;
                    None
                }
            },
            _ = tokio::time::sleep(self.fallback * 5) => None,
        }
    }
}
