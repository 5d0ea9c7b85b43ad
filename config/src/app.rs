//! An app for the deployer (`charter deploy apply app.toml`): where its code
//! lives, how it is built and run, how its health is judged, and on how many
//! fresh servers it runs.
//!
//! ```toml
//! kind = "app"
//! name = "hello"
//! repo = "/srv/git/hello"            # a URL or a local path
//! branch = "main"
//! servers = 2                        # fresh servers per version (default 2)
//! progress_deadline = "10m"          # a deployment not active by then rolls back
//! poll = "30s"                       # poll the branch head (0 or absent: webhooks only)
//! secret = "s3cret"                  # webhook HMAC secret / token
//! fingerprint = "{user}/{kind}/{name}@{commit}"
//! keep = 5                           # artifact versions kept
//!
//! [build]                            # a batch task on the cluster, in a checkout
//! command = ["sh", "build.sh"]
//! artifact = "out/hello"             # the file it produces
//! cpu = 1
//! mem = "512MiB"
//! timeout = "10m"
//!
//! [run]
//! command = ["./hello"]
//! ports = ["http"]                   # PORT (the first) and PORT_HTTP in its env
//! env = { GREETING = "hi" }
//! secret_env = { API_KEY = "…" }      # like env, shown as (hidden) to others
//!
//! [health]
//! http = "/healthz"                  # or tcp = true; checked on the first port
//! status = 200
//! interval = "500ms"
//! timeout = "1s"
//! min_healthy = "3s"                 # healthy this long before promotion
//!
//! [requirements]                     # what each server needs
//! cpu = 0.5
//! mem = "256MiB"
//! labels = { zone = "a" }
//! ```

use crate::constraint::Constraint;
use crate::reader::Fields;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The default fingerprint template of a deployed version.
pub const DEFAULT_FINGERPRINT: &str = "{user}/{kind}/{name}@{commit}";

/// A validated app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppConfig {
    /// Unique name.
    pub name: String,
    /// Git URL or local path.
    pub repo: String,
    /// The branch deployed.
    pub branch: String,
    /// Fresh servers per version.
    pub servers: u32,
    /// A deployment not active this long after it started rolls back, in ms.
    pub progress_deadline_ms: u64,
    /// Branch polling interval in ms (0: off).
    pub poll_ms: u64,
    /// Webhook secret (empty: webhooks refused).
    pub secret: String,
    /// Fingerprint template.
    pub fingerprint: String,
    /// Artifact versions kept.
    pub keep: u32,
    /// How it is built.
    pub build: BuildConfig,
    /// How it runs.
    pub run: RunConfig,
    /// How health is judged.
    pub health: AppHealth,
    /// What each server needs.
    pub requirements: Requirements,
}

/// The build step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildConfig {
    /// Run in the checkout.
    pub command: Vec<String>,
    /// The file it produces, relative to the checkout.
    pub artifact: String,
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Time limit in ms.
    pub timeout_ms: u64,
}

/// The run step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Run next to the artifact.
    pub command: Vec<String>,
    /// Named ports, the first also as `PORT`.
    pub ports: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Extra environment only the app's owner and admins read back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
}

/// Health of a running version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppHealth {
    /// `http` or `tcp`, on the first port.
    pub kind: crate::spec::CheckKind,
    /// HTTP path.
    pub path: String,
    /// Expected HTTP status.
    pub status: u16,
    /// Between checks, in ms.
    pub interval_ms: u64,
    /// Per check, in ms.
    pub timeout_ms: u64,
    /// Healthy this long before promotion, in ms.
    pub min_healthy_ms: u64,
}

/// What each server needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Requirements {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Labels the node must have.
    pub labels: BTreeMap<String, String>,
    /// Further constraints, as written.
    pub constraints: Vec<String>,
}

fn command(f: &Fields<'_, '_>, example: &str) -> Vec<String> {
    let c = f.str_list("command");
    if c.is_empty() && !f.has("command") {
        f.missing(
            "command",
            &format!("the program to run, like command = {example}"),
        );
    } else if c.first().is_none_or(|p| p.trim().is_empty()) {
        f.error_at(
            "command",
            format!("expected a program name first, like {example}"),
        );
    }
    c
}

/// The `[build]` table; `None` when a diagnostic was recorded.
fn read_build(f: &Fields<'_, '_>) -> Option<BuildConfig> {
    match f.table("build") {
        Some(b) => {
            let command = command(&b, "[\"sh\", \"build.sh\"]");
            let artifact = b.req_str(
                "artifact",
                "the file the build makes, like artifact = \"out/app\"",
            );
            let out = BuildConfig {
                command,
                artifact: artifact.unwrap_or_default(),
                cpu_millis: b.cores("cpu").unwrap_or(1_000),
                memory_bytes: b.size("mem").unwrap_or(512 << 20),
                timeout_ms: b.duration("timeout").unwrap_or(600_000),
            };
            b.finish();
            Some(out)
        }
        None => {
            f.missing("build", "a [build] table: command and artifact");
            None
        }
    }
}

/// The `[run]` table; `None` when a diagnostic was recorded.
fn read_run(f: &Fields<'_, '_>) -> Option<RunConfig> {
    match f.table("run") {
        Some(r) => {
            let out = RunConfig {
                command: command(&r, "[\"./app\"]"),
                ports: {
                    let p = r.str_list("ports");
                    if p.is_empty() { vec!["http".into()] } else { p }
                },
                env: r.str_map("env"),
                secret_env: r.str_map("secret_env"),
            };
            if let Some(k) = out.secret_env.keys().find(|k| out.env.contains_key(*k)) {
                r.error_at("secret_env", format!("{k} is in env too; keep it in one"));
            }
            if let Err(e) = crate::limits::env(out.env.iter().chain(&out.secret_env)) {
                r.error_at("env", e);
            }
            r.finish();
            Some(out)
        }
        None => {
            f.missing("run", "a [run] table: how the artifact runs");
            None
        }
    }
}

/// The `[health]` table; `None` when a diagnostic was recorded.
fn read_health(f: &Fields<'_, '_>) -> Option<AppHealth> {
    match f.table("health") {
        Some(h) => {
            let http = h.str("http");
            let tcp = h.bool("tcp").unwrap_or(false);
            if http.is_some() == tcp {
                h.error_at("http", "give one check: http = \"/healthz\" or tcp = true");
            }
            let status = h.u64("status").unwrap_or(200);
            if !(100..=599).contains(&status) {
                h.error_at("status", format!("expected an HTTP status, got {status}"));
            }
            let out = AppHealth {
                kind: if tcp {
                    crate::spec::CheckKind::Tcp
                } else {
                    crate::spec::CheckKind::Http
                },
                path: http.unwrap_or_default(),
                status: status as u16,
                interval_ms: h.duration("interval").unwrap_or(1_000),
                timeout_ms: h.duration("timeout").unwrap_or(1_000),
                min_healthy_ms: h.duration("min_healthy").unwrap_or(3_000),
            };
            h.finish();
            Some(out)
        }
        None => {
            f.missing(
                "health",
                "a [health] table: http = \"/healthz\" or tcp = true",
            );
            None
        }
    }
}

/// The `[requirements]` table, or its defaults.
fn read_requirements(f: &Fields<'_, '_>) -> Requirements {
    match f.table("requirements") {
        Some(r) => {
            let constraints = r.str_list("constraints");
            for c in &constraints {
                if let Err(e) = Constraint::parse(c) {
                    r.error_at("constraints", e);
                }
            }
            let out = Requirements {
                cpu_millis: r.cores("cpu").unwrap_or(500),
                memory_bytes: r.size("mem").unwrap_or(256 << 20),
                labels: r.str_map("labels"),
                constraints,
            };
            r.finish();
            out
        }
        None => Requirements {
            cpu_millis: 500,
            memory_bytes: 256 << 20,
            ..Requirements::default()
        },
    }
}

impl AppConfig {
    /// Reads an app; `None` when a diagnostic was recorded.
    pub fn read(f: &Fields<'_, '_>) -> Option<AppConfig> {
        let name = f.req_str("name", "the app's name, like name = \"hello\"");
        if let Some(n) = &name
            && !crate::node::valid_name(n)
        {
            f.error_at(
                "name",
                format!("expected 1-63 letters, digits, '-', '.' or '_', got \"{n}\""),
            );
        }
        let repo = f.req_str(
            "repo",
            "a git URL or a local path, like repo = \"/srv/git/hello\"",
        );
        // Builds clone it inside a sandbox: a local path must be absolute.
        if let Some(r) = &repo
            && !r.contains("://")
            && !r.contains('@')
            && !r.starts_with('/')
        {
            f.error_at(
                "repo",
                format!("a local path must be absolute (builds clone it from their own directory), got \"{r}\""),
            );
        }
        let branch = f.str("branch").unwrap_or_else(|| "main".into());
        let servers = f.u64("servers").unwrap_or(2);
        if !(1..=100).contains(&servers) {
            f.error_at(
                "servers",
                format!("expected 1 to 100 servers, got {servers}"),
            );
        }
        let deadline = f.duration("progress_deadline").unwrap_or(600_000);
        let poll = f.duration("poll").unwrap_or(0);
        if poll > 0 && poll < 1_000 {
            f.error_at("poll", "poll at most once a second, like poll = \"30s\"");
        }
        let secret = f.str("secret").unwrap_or_default();
        let fingerprint = f
            .str("fingerprint")
            .unwrap_or_else(|| DEFAULT_FINGERPRINT.into());
        if let Err(e) = crate::fingerprint::check(&fingerprint) {
            f.error_at("fingerprint", e);
        }
        let keep = f.u64("keep").unwrap_or(5).clamp(1, 1_000) as u32;
        let build = read_build(f);
        let run = read_run(f);
        let health = read_health(f);
        let requirements = read_requirements(f);
        Some(AppConfig {
            name: name.filter(|n| crate::node::valid_name(n))?,
            repo: repo?,
            branch,
            servers: servers.clamp(1, 100) as u32,
            progress_deadline_ms: deadline,
            poll_ms: poll,
            secret,
            fingerprint,
            keep,
            build: build?,
            run: run?,
            health: health?,
            requirements,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{AnyConfig, load};

    const APP: &str = r#"
kind = "app"
name = "hello"
repo = "/srv/git/hello"
poll = "30s"
secret = "s3cret"

[build]
command = ["sh", "build.sh"]
artifact = "out/hello"

[run]
command = ["./hello"]

[health]
http = "/healthz"
min_healthy = "2s"
"#;

    #[test]
    fn an_app_reads_with_its_defaults() {
        let AnyConfig::App(a) = load("app.toml", APP).unwrap() else {
            panic!("not an app")
        };
        assert_eq!((a.servers, a.branch.as_str()), (2, "main"));
        assert_eq!(a.run.ports, ["http"]);
        assert_eq!(a.health.min_healthy_ms, 2_000);
        assert_eq!(a.progress_deadline_ms, 600_000);
        assert_eq!(a.fingerprint, super::DEFAULT_FINGERPRINT);
    }

    #[test]
    fn every_problem_is_named_with_its_line() {
        let bad = APP
            .replace("poll = \"30s\"", "poll = \"10ms\"\nservers = 0")
            .replace("http = \"/healthz\"", "tcp = false")
            .replace("artifact = \"out/hello\"", "");
        let e = load("app.toml", &bad).unwrap_err().to_string();
        let relative = APP.replace("repo = \"/srv/git/hello\"", "repo = \"hello\"");
        let r = load("app.toml", &relative).unwrap_err().to_string();
        assert!(r.contains("repo: a local path must be absolute"), "{r}");
        for url in [
            "https://git.example/hello.git",
            "git@git.example:x/hello.git",
        ] {
            let ok = APP.replace("/srv/git/hello", url);
            assert!(load("app.toml", &ok).is_ok(), "{url}");
        }
        for want in [
            "app.toml:5: poll",
            "app.toml:6: servers",
            "build.artifact: missing",
            "health.http",
        ] {
            assert!(e.contains(want), "{want} not in:\n{e}");
        }
    }
}
