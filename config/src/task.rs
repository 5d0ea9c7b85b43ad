//! A task as a file (`charter task submit -f task.toml`): what to run, how,
//! and the lease it runs in (the lease fields of [`crate::lease`]).
//!
//! ```toml
//! kind = "task"
//! name = "report"
//! amp = "batch"                 # batch | service
//! command = ["./report.sh", "--day", "2026-11-22"]
//! env = { MODE = "full" }
//! secret_env = { DB_PASSWORD = "…" }  # like env, shown as (hidden) to others
//! retries = 2                   # batch: further attempts after a failure
//! restart = "on_failure"        # service: always | on_failure | never
//! max_restarts = 5              # service: 0 = no limit
//! grace = "10s"                 # SIGTERM → SIGKILL at the lease's end
//! cpu = 0.5                     # the lease: any field of a lease request
//! mem = "256MiB"
//! for = "1h"
//!
//! [health]                      # service only: one of http, tcp, command
//! http = "/healthz"
//! port = 8080
//! status = 200
//! interval = "1s"
//! timeout = "1s"
//! healthy_after = 1
//! unhealthy_after = 3
//! ```

use crate::lease::LeaseConfig;
use crate::reader::Fields;
use crate::spec::{Amp, Check, CheckKind, Health, Restart, TaskSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A validated health check, as a file writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthConfig {
    /// What kind of check.
    pub kind: CheckKind,
    /// Port (http, tcp).
    pub port: u16,
    /// Path (http).
    pub path: String,
    /// Expected status (http).
    pub status: u16,
    /// Command (command).
    pub argv: Vec<String>,
    /// Between checks, in ms.
    pub interval_ms: u64,
    /// Per check, in ms.
    pub timeout_ms: u64,
    /// Passes in a row to become healthy.
    pub healthy_after: u32,
    /// Failures in a row to become unhealthy.
    pub unhealthy_after: u32,
}

/// A validated task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskConfig {
    /// A name for listings.
    pub name: String,
    /// How it is run.
    pub amp: Amp,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Extra environment that only its owner and admins may read back
    /// (shown as `(hidden)` to anyone else); the process gets it as `env`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    /// Batch: further attempts.
    pub retries: u32,
    /// Service: when it is started again after it exits.
    pub restart: Restart,
    /// Service: most restarts (0: no limit).
    pub max_restarts: u32,
    /// Grace in ms (0: the agent's default).
    pub grace_ms: u64,
    /// Service health check.
    pub health: Option<HealthConfig>,
    /// Named ports the agent picks (`PORT`, `PORT_<NAME>`).
    #[serde(default)]
    pub ports: Vec<String>,
    /// The lease the task runs in.
    pub lease: LeaseConfig,
}

fn small(f: &Fields<'_, '_>, key: &str, v: Option<u64>) -> Option<u32> {
    match v.map(u32::try_from) {
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            f.error_at(key, "expected a whole number below 4294967296");
            None
        }
        None => Some(0),
    }
}

impl TaskConfig {
    /// The task as the servers keep it (for `task submit` and Hydra's
    /// fires): `secret_env` joins `env`.
    pub fn spec(&self) -> TaskSpec {
        TaskSpec {
            name: self.name.clone(),
            amp: self.amp,
            command: self.command.clone(),
            env: self
                .env
                .iter()
                .chain(&self.secret_env)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            retries: self.retries,
            restart: self.restart,
            max_restarts: self.max_restarts,
            health: self.health.as_ref().map(HealthConfig::spec),
            grace_ms: self.grace_ms,
            ports: self.ports.clone(),
            ..TaskSpec::default()
        }
    }

    /// Reads a task from a table; `None` when a diagnostic was recorded.
    pub fn read(f: &Fields<'_, '_>) -> Option<TaskConfig> {
        let name = f.str("name").unwrap_or_default();
        let amp: Amp = f.named("amp").unwrap_or_default();
        let command = f.str_list("command");
        if command.is_empty() && !f.has("command") {
            f.missing(
                "command",
                "the program to run, like command = [\"./run.sh\"]",
            );
        } else if command.first().is_none_or(|c| c.trim().is_empty()) {
            f.error_at(
                "command",
                "expected a program name first, like [\"./run.sh\"]",
            );
        }
        let env = f.str_map("env");
        let secret_env = f.str_map("secret_env");
        if let Some(k) = secret_env.keys().find(|k| env.contains_key(*k)) {
            f.error_at("secret_env", format!("{k} is in env too; keep it in one"));
        }
        let limited = [
            ("name", crate::limits::text("the name", &name)),
            ("command", crate::limits::command("the command", &command)),
            ("env", crate::limits::env(env.iter().chain(&secret_env))),
        ];
        for (key, r) in limited {
            if let Err(e) = r {
                f.error_at(key, e);
            }
        }
        let retries = small(f, "retries", f.u64("retries"));
        let restart: Restart = f.named("restart").unwrap_or_default();
        let max_restarts = small(f, "max_restarts", f.u64("max_restarts"));
        let grace = f.duration("grace").unwrap_or(0);
        let health = f.table("health").and_then(|h| {
            let out = HealthConfig::read(&h);
            h.finish();
            out
        });
        if health.is_some() && amp != Amp::Service {
            f.error_at(
                "health",
                "health checks are for services; set amp = \"service\"",
            );
        }
        let ports = f.str_list("ports");
        if ports.len() > crate::limits::PORTS_MAX {
            f.error_at(
                "ports",
                format!("at most {} named ports", crate::limits::PORTS_MAX),
            );
        }
        for p in &ports {
            if !crate::spec::valid_port_name(p) {
                f.error_at(
                    "ports",
                    format!("port name \"{p}\" must be 1-32 letters, digits or '_'"),
                );
            }
        }
        let lease = LeaseConfig::read(f);
        Some(TaskConfig {
            name,
            amp,
            command,
            env,
            secret_env,
            retries: retries?,
            restart,
            max_restarts: max_restarts?,
            grace_ms: grace,
            health,
            ports,
            lease: lease?,
        })
    }
}

/// What others than a secret's owner see in its place.
pub const HIDDEN: &str = "(hidden)";

/// Replaces each value of `env` with [`HIDDEN`].
pub fn hide(env: &mut BTreeMap<String, String>) {
    env.values_mut().for_each(|v| *v = HIDDEN.to_string());
}

impl HealthConfig {
    /// The check as a task spec holds it.
    pub fn spec(&self) -> Health {
        let check = match self.kind {
            CheckKind::Http => Check::Http {
                port: self.port,
                path: self.path.clone(),
                status: self.status,
            },
            CheckKind::Tcp => Check::Tcp { port: self.port },
            CheckKind::Command => Check::Command {
                argv: self.argv.clone(),
            },
        };
        Health {
            check,
            interval_ms: self.interval_ms,
            timeout_ms: self.timeout_ms,
            healthy_after: self.healthy_after,
            unhealthy_after: self.unhealthy_after,
        }
    }

    fn read(f: &Fields<'_, '_>) -> Option<HealthConfig> {
        let http = f.str("http");
        let tcp = f.bool("tcp").unwrap_or(false);
        let argv = f.str_list("command");
        let port = f.u64("port");
        let status = f.u64("status").unwrap_or(200);
        let interval = f.duration("interval").unwrap_or(1_000);
        let timeout = f.duration("timeout").unwrap_or(1_000);
        let up = f.u64("healthy_after").unwrap_or(1);
        let down = f.u64("unhealthy_after").unwrap_or(3);
        let kinds = [http.is_some(), tcp, !argv.is_empty()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            f.error_at(
                "http",
                "give exactly one check: http = \"/path\", tcp = true, or command = [...]",
            );
            return None;
        }
        let kind = if http.is_some() {
            CheckKind::Http
        } else if tcp {
            CheckKind::Tcp
        } else {
            CheckKind::Command
        };
        let port = match port.map(u16::try_from) {
            Some(Ok(p)) if p > 0 => p,
            None if kind == CheckKind::Command => 0,
            None => {
                f.missing("port", "the port to check, like port = 8080");
                return None;
            }
            _ => {
                f.error_at("port", "expected a port from 1 to 65535");
                return None;
            }
        };
        let Ok(status) = u16::try_from(status) else {
            f.error_at("status", "expected an HTTP status like 200");
            return None;
        };
        Some(HealthConfig {
            kind,
            port,
            path: http.unwrap_or_default(),
            status,
            argv,
            interval_ms: interval.max(1),
            timeout_ms: timeout.max(1),
            healthy_after: u32::try_from(up).unwrap_or(u32::MAX).max(1),
            unhealthy_after: u32::try_from(down).unwrap_or(u32::MAX).max(1),
        })
    }
}
