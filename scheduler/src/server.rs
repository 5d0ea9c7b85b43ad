//! One member, wired together: sled storage, the raft driver thread, the gRPC
//! transport and services, the HTTP endpoints and the controllers.

use crate::clock::{Clock, SystemClock};
use crate::raft_driver::{Driver, Input, MemberConfig, MemberHandle};
use crate::service::auth::Tokens;
use crate::service::{Api, Peer, http};
use crate::storage::EngineStore;
use crate::transport::{GrpcTransport, MAX_PEER_MESSAGE};
use crate::{Error, Result, controller};
use charter_proto as pb;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tower_http::set_header::SetResponseHeaderLayer;

/// Everything a member needs to start.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Raft member id.
    pub id: u64,
    /// Data directory (raft storage lives in `DIR/raft`).
    pub data: PathBuf,
    /// gRPC listen address (API and peers).
    pub listen: SocketAddr,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// Initial members (id → gRPC address).
    pub peers: BTreeMap<u64, String>,
    /// Who may call.
    pub tokens: Tokens,
    /// Start empty and wait to be added.
    pub join: bool,
    /// Applied entries between log compactions.
    pub snapshot_entries: u64,
    /// Raft tick.
    pub tick: Duration,
    /// Ticks without a leader before a follower campaigns, and ticks
    /// between the leader's heartbeats.
    pub timing: (usize, usize),
    /// Pools that can grow (from `--config`), and how to start local agents.
    pub scaling: controller::provision::ScalingOptions,
    /// Checks cron schedules for `Cron.Apply` (Hydra's parser, from the binary).
    pub schedule_check: Option<crate::service::ScheduleChecker>,
    /// The artifact store (the deployer's, from the binary).
    pub artifacts: Option<crate::service::ArtifactStore>,
    /// More HTTP routes (the deployer's webhook, from the binary).
    pub http_extra: Option<axum::Router>,
    /// What leaves the live state, and when (put in force by the leader).
    pub retention: crate::state::Retention,
    /// What this member's history store keeps.
    pub history: controller::HistoryKeep,
}

/// The file in the data directory that says which member it belongs to.
const IDENTITY: &str = "member-id";

/// Refuses a data directory of another member, and one whose raft data
/// vanished (sled recovers a damaged file as empty: starting over would
/// forget this member's votes and log).
fn check_identity(opts: &ServerOptions, fresh: bool) -> Result<()> {
    let path = opts.data.join(IDENTITY);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Config(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let id: u64 = text.trim().parse().map_err(|_| {
        Error::Config(format!(
            "{} is corrupt (expected a member id, got {:?}); the data directory is damaged",
            path.display(),
            text.trim()
        ))
    })?;
    if id != opts.id {
        return Err(Error::Config(format!(
            "data directory {} belongs to member {id}, not {}; pass --id {id} or another --data",
            opts.data.display(),
            opts.id
        )));
    }
    // A joiner may restart before the leader's snapshot arrived.
    if fresh && !opts.join {
        return Err(Error::Config(format!(
            "the raft data in {} is missing or unreadable, but member {id} has run from this directory before; \
             its log and votes are lost or corrupt. Restore the directory from a backup, or remove the member \
             (`charter cluster remove {id}`), delete the directory and start it again with --join",
            opts.data.join("raft").display()
        )));
    }
    Ok(())
}

fn write_identity(opts: &ServerOptions) -> Result<()> {
    let path = opts.data.join(IDENTITY);
    if path.exists() {
        return Ok(());
    }
    let write = || -> std::io::Result<()> {
        std::fs::write(&path, format!("{}\n", opts.id))?;
        std::fs::File::open(&path)?.sync_all()?;
        std::fs::File::open(&opts.data)?.sync_all()
    };
    write().map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))
}

/// A running member.
pub struct Server {
    /// Handle to the member.
    pub member: MemberHandle,
    /// The bound gRPC address.
    pub listen: SocketAddr,
    /// The bound HTTP address.
    pub http: SocketAddr,
    stop: watch::Sender<bool>,
    driver: Option<std::thread::JoinHandle<Result<()>>>,
    driver_done: tokio::sync::oneshot::Receiver<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Opens storage, binds both ports and starts everything. Errors say what
    /// failed and what to do; nothing is left running on error.
    pub async fn start(opts: ServerOptions) -> Result<Server> {
        let (grpc_listener, http_listener) = bind(&opts).await?;
        let listen = grpc_listener
            .local_addr()
            .map_err(|e| Error::Config(format!("cannot read the bound gRPC address: {e}")))?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|e| Error::Config(format!("cannot read the bound HTTP address: {e}")))?;
        let (member, driver, driver_done) = start_member(&opts)?;
        let (stop, stop_rx) = watch::channel(false);
        let api = Api::new(member.clone(), opts.tokens.peer_token(), stop_rx.clone())
            .with_schedule_check(opts.schedule_check.clone())
            .with_artifacts(opts.artifacts.clone())
            .with_history_keep(opts.history);
        let mut tasks = vec![serve_grpc(
            &opts,
            &member,
            &api,
            grpc_listener,
            stop_rx.clone(),
        )?];
        tasks.push(serve_http(
            &opts,
            &member,
            api,
            http_listener,
            stop_rx.clone(),
        ));
        tasks.extend(start_controllers(&opts, &member, stop_rx));
        Ok(Server {
            member,
            listen,
            http: http_addr,
            stop,
            driver: Some(driver),
            driver_done,
            tasks,
        })
    }

    /// Resolves when the raft thread has ended (a fatal error, or shutdown).
    pub async fn driver_stopped(&mut self) {
        let _ = (&mut self.driver_done).await;
    }

    /// Stops serving, stops the raft thread (which syncs storage) and waits.
    /// Returns the raft thread's error, if it ended on one.
    pub async fn shutdown(mut self) -> Result<()> {
        let _ = self.stop.send(true);
        self.member.shutdown();
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        match self.driver.take() {
            Some(h) => tokio::task::spawn_blocking(move || h.join())
                .await
                .map_err(|e| Error::Config(format!("raft thread join failed: {e}")))?
                .map_err(|_| Error::Config("the raft thread panicked".into()))?,
            None => Ok(()),
        }
    }
}

/// Binds the gRPC and HTTP ports, saying which flag to change on failure.
async fn bind(opts: &ServerOptions) -> Result<(tokio::net::TcpListener, tokio::net::TcpListener)> {
    let grpc = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| {
            Error::Config(format!(
                "cannot listen on {} for gRPC: {e}; choose another --listen",
                opts.listen
            ))
        })?;
    let http = tokio::net::TcpListener::bind(opts.http)
        .await
        .map_err(|e| {
            Error::Config(format!(
                "cannot listen on {} for HTTP: {e}; choose another --http",
                opts.http
            ))
        })?;
    Ok((grpc, http))
}

/// The member's handle, its raft thread, and what tells when that ended.
type Started = (
    MemberHandle,
    std::thread::JoinHandle<Result<()>>,
    tokio::sync::oneshot::Receiver<()>,
);

/// Opens the member's storage and history, and starts its raft thread.
fn start_member(opts: &ServerOptions) -> Result<Started> {
    let raft_dir = opts.data.join("raft");
    let store = EngineStore::open(&raft_dir).map_err(|e| {
        Error::Config(format!(
            "{e}; check that --data {} is a writable directory Charter owns",
            opts.data.display()
        ))
    })?;
    check_identity(opts, store.is_fresh())?;
    let (tx, rx) = std::sync::mpsc::channel::<Input>();
    let report_tx = std::sync::Mutex::new(tx.clone());
    let transport = GrpcTransport::new(
        opts.id,
        opts.tokens.peer_token(),
        tokio::runtime::Handle::current(),
        Arc::new(move |r| {
            if let Ok(t) = report_tx.lock() {
                let _ = t.send(Input::Report(r));
            }
        }),
    );
    let history_dir = opts.data.join("history");
    let history = crate::storage::History::open(&history_dir).map_err(Error::Config)?;
    let mut cfg = MemberConfig::new(opts.id, opts.peers.clone());
    cfg.history = Some(Arc::new(history));
    cfg.join = opts.join;
    cfg.snapshot_entries = opts.snapshot_entries;
    cfg.tick = opts.tick;
    (cfg.election_tick, cfg.heartbeat_tick) = opts.timing;
    // Each campaign after 1-2x the election timeout.
    cfg.election_spread = cfg.election_tick;
    let clock: Arc<dyn Clock> = Arc::new(crate::clock::SteadyClock::new(SystemClock));
    let (driver, member) = Driver::new(cfg, store, transport, clock, tx, rx, rand::random())?;
    write_identity(opts)?;
    let (done_tx, driver_done) = tokio::sync::oneshot::channel();
    let driver = std::thread::Builder::new()
        .name(format!("raft-{}", opts.id))
        .spawn(move || {
            let r = driver.run();
            let _ = done_tx.send(());
            r
        })
        .map_err(|e| Error::Config(format!("cannot start the raft thread: {e}")))?;
    Ok((member, driver, driver_done))
}

/// Serves every gRPC service behind the token interceptor, and the raft
/// peer service with its larger message cap, until `stop`. Every answer
/// names the leader this member knows, so clients go there first
/// (`charter_proto::conn`). With TLS (the process's identity,
/// `charter_proto::tls`) the port speaks nothing else: a plaintext client
/// fails the handshake.
fn serve_grpc(
    opts: &ServerOptions,
    member: &MemberHandle,
    api: &Api,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>> {
    let peer = Peer::new(member.clone(), api);
    let icpt = opts.tokens.interceptor();
    let named = member.clone();
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = charter_proto::tls::installed() {
        builder = builder
            .tls_config(t.server().map_err(Error::Config)?)
            .map_err(|e| Error::Config(format!("cannot use the TLS settings: {e}")))?;
    }
    let a = || (api.clone(), icpt.clone());
    let router = builder
        .tcp_nodelay(true)
        .layer(SetResponseHeaderLayer::overriding(
            ::http::HeaderName::from_static(charter_proto::conn::LEADER_HEADER),
            move |_: &::http::Response<tonic::body::Body>| {
                named
                    .leader_addr()
                    .and_then(|a| ::http::HeaderValue::from_str(&a).ok())
            },
        ))
        .add_service({
            let (api, i) = a();
            pb::cluster_server::ClusterServer::with_interceptor(api, i)
        })
        .add_service({
            let (api, i) = a();
            pb::nodes_server::NodesServer::with_interceptor(api, i)
        })
        .add_service({
            let (api, i) = a();
            pb::leases_server::LeasesServer::with_interceptor(api, i)
        })
        .add_service({
            let (api, i) = a();
            pb::tasks_server::TasksServer::with_interceptor(api, i)
        })
        .add_service({
            let (api, i) = a();
            pb::agents_server::AgentsServer::with_interceptor(api, i)
        })
        .add_service({
            let (api, i) = a();
            pb::cron_server::CronServer::with_interceptor(api, i)
        })
        .add_service({
            let (api, i) = a();
            pb::deploy_server::DeployServer::with_interceptor(api, i)
        })
        .add_service({
            let (api, i) = a();
            pb::locks_server::LocksServer::with_interceptor(api, i)
        })
        .add_service(tonic::service::interceptor::InterceptedService::new(
            pb::raft_peer_server::RaftPeerServer::new(peer)
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_PEER_MESSAGE),
            icpt.clone(),
        ));
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    Ok(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.changed().await;
        };
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::error!(error = %e, "gRPC server failed");
        }
    }))
}

/// Serves the HTTP port (health, metrics, webhooks, locks, events, the
/// dashboard, and whatever the caller added) until `stop`.
fn serve_http(
    opts: &ServerOptions,
    member: &MemberHandle,
    api: Api,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut app = http::router(member.clone())
        .merge(crate::service::locks::http::router(
            api.clone(),
            opts.tokens.clone(),
        ))
        .merge(crate::service::events::http::router(
            api.clone(),
            opts.tokens.clone(),
        ))
        .merge(crate::service::dashboard::router(api, opts.tokens.clone()));
    if let Some(extra) = opts.http_extra.clone() {
        app = app.merge(extra);
    }
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.changed().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    })
}

/// The leader-only loops: ticks (expiry, liveness, the queue), retention,
/// and pools that grow.
fn start_controllers(
    opts: &ServerOptions,
    member: &MemberHandle,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut scaling = opts.scaling.clone();
    if scaling.dir.as_os_str().is_empty() {
        scaling.dir = opts.data.join("pools");
    }
    if scaling.token.is_none() {
        scaling.token = opts.tokens.peer_token();
    }
    vec![
        tokio::spawn(controller::ticks(member.clone(), stop.clone())),
        tokio::spawn(controller::retention(
            member.clone(),
            opts.retention,
            opts.history,
            stop.clone(),
        )),
        tokio::spawn(controller::provision::run(member.clone(), scaling, stop)),
    ]
}
