//! charter-config: typed configs. TOML in, validated types out, then
//! canonical bytes, a content hash and a fingerprint.
//!
//! - [`units`]: durations (`30s 15m 2h 1d`), sizes (`512MiB 4GiB`), cores (`2`, `0.5`, `"500m"`).
//! - [`reader`]: a spanned TOML reader that collects *every* error with file,
//!   line and field, and what was expected.
//! - [`limits`]: allowed characters and sizes of names and fields.
//! - [`constraint`]: label constraints (`gpu=a100`, `zone in (a,b)`, `cuda>=12`).
//! - [`lease`], [`node`], [`server`], [`task`], [`cron`], [`app`]: the config
//!   kinds, as files write them.
//! - [`spec`]: what a lease asks for and what a task runs, as the servers
//!   keep them and the agent runs them.
//! - [`states`]: lifecycles of nodes, leases, tasks, health and cron runs;
//!   [`deployment`]: a deployment's steps, states and records.
//! - [`named!`]: enums with one name per variant (serde, `Display`, `FromStr`).
//! - [`canonical`]: canonical serialisation and the sha256 content hash.
//! - [`codec`]: the versioned binary encoding of log entries, snapshots,
//!   forwarded writes and the typed records in API `bytes` fields.
//! - [`fingerprint`]: identities of submitted config versions from a template.
//!
//! [`load`] reads any Charter config and tells which kind it is.
//!
//! This crate is the one typed model of Charter's vocabulary: it depends on
//! no gRPC, protobuf or async crate. Conversions to and from the wire live
//! in `charter-proto`, one place per type.

pub mod app;
pub mod canonical;
pub mod codec;
pub mod constraint;
pub mod cron;
pub mod deployment;
mod error;
pub mod fingerprint;
pub mod lease;
pub mod limits;
pub mod liveness;
#[macro_use]
pub mod named;
pub mod node;
pub mod reader;
pub mod server;
pub mod spec;
pub mod states;
pub mod task;
pub mod units;

/// Milliseconds since the Unix epoch, UTC: every time Charter keeps.
pub type Millis = i64;

pub use error::{Diagnostic, Diagnostics};

use reader::{Fields, Source};

/// A parsed, validated config of any kind.
#[derive(Clone, Debug, PartialEq)]
pub enum AnyConfig {
    /// A lease request (`charter lease request -f`).
    Lease(lease::LeaseConfig),
    /// A node offer (`charter node register -f`).
    Node(node::NodeConfig),
    /// A server's own config (`charter server --config`).
    Server(server::ServerConfig),
    /// A task (`charter task submit -f`).
    Task(Box<task::TaskConfig>),
    /// Cron jobs (`charter cron apply`).
    Cron(cron::CronConfig),
    /// An app for the deployer (`charter deploy apply`).
    App(Box<app::AppConfig>),
}

impl AnyConfig {
    /// The kind's name, as written in `kind = "..."`.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyConfig::Lease(_) => "lease",
            AnyConfig::Node(_) => "node",
            AnyConfig::Server(_) => "server",
            AnyConfig::Task(_) => "task",
            AnyConfig::Cron(_) => "cron",
            AnyConfig::App(_) => "app",
        }
    }

    /// Canonical bytes of the config.
    pub fn canonical(&self) -> Vec<u8> {
        match self {
            AnyConfig::Lease(c) => canonical::to_bytes(c),
            AnyConfig::Node(c) => canonical::to_bytes(c),
            AnyConfig::Server(c) => canonical::to_bytes(c),
            AnyConfig::Task(c) => canonical::to_bytes(c),
            AnyConfig::Cron(c) => canonical::to_bytes(c),
            AnyConfig::App(c) => canonical::to_bytes(c),
        }
    }
}

/// The kinds [`load`] recognises.
pub const KINDS: &[&str] = &["lease", "node", "server", "task", "cron", "app"];

/// Parses `src` (named `file` in messages) as whichever kind it declares with
/// `kind = "..."`; without one, a file with `[[job]]` tables is a cron file
/// and any other a lease request. Cron schedules are only checked for shape
/// here; [`load_with`] takes the schedule parser.
pub fn load(file: &str, src: &str) -> Result<AnyConfig, Diagnostics> {
    load_with(file, src, &|_, _| Ok(()))
}

/// [`load`] with `check_schedule` judging cron schedule expressions.
pub fn load_with(
    file: &str,
    src: &str,
    check_schedule: cron::ScheduleCheck<'_>,
) -> Result<AnyConfig, Diagnostics> {
    let ctx = Source::new(file, src);
    let doc = ctx.parse()?;
    let top = Fields::root(&ctx, doc.as_table());
    let default = if top.has("job") { "cron" } else { "lease" };
    let kind = top.str("kind").unwrap_or_else(|| default.to_string());
    let out = match kind.as_str() {
        "lease" => lease::LeaseConfig::read(&top).map(AnyConfig::Lease),
        "node" => node::NodeConfig::read(&top).map(AnyConfig::Node),
        "server" => server::ServerConfig::read(&top).map(AnyConfig::Server),
        "task" => task::TaskConfig::read(&top).map(|t| AnyConfig::Task(Box::new(t))),
        "cron" => cron::CronConfig::read(&top, check_schedule).map(AnyConfig::Cron),
        "app" => app::AppConfig::read(&top).map(|a| AnyConfig::App(Box::new(a))),
        other => {
            top.error_at(
                "kind",
                format!("expected one of {}, got \"{other}\"", KINDS.join(", ")),
            );
            None
        }
    };
    top.finish();
    ctx.result(out)
}

/// Reads and parses a config file.
pub fn load_file(path: &std::path::Path) -> Result<AnyConfig, Diagnostics> {
    load_file_with(path, &|_, _| Ok(()))
}

/// [`load_file`] with a schedule parser for cron files.
pub fn load_file_with(
    path: &std::path::Path,
    check_schedule: cron::ScheduleCheck<'_>,
) -> Result<AnyConfig, Diagnostics> {
    let name = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            file: name.clone(),
            line: 0,
            field: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    load_with(&name, &src, check_schedule)
}
