//! The typed model (`charter-config`) to the wire and back, one place per
//! type. Reading from the wire checks what the model needs and what
//! [`limits`] allow: every problem is `INVALID_ARGUMENT` naming the field,
//! and nothing is changed.

use crate::v1 as pb;
use charter_config::constraint::Constraint;
use charter_config::limits;
use charter_config::spec::{
    Amp, Check, CheckKind, Health, LeaseSpec, Prefer, Resources, Restart, TaskSpec, valid_port_name,
};
use std::str::FromStr;
use tonic::Status;

impl From<&Resources> for pb::Resources {
    fn from(r: &Resources) -> pb::Resources {
        pb::Resources {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            disk_bytes: r.disk_bytes,
            gpus: r.gpus,
        }
    }
}

impl From<&pb::Resources> for Resources {
    fn from(r: &pb::Resources) -> Resources {
        Resources {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            disk_bytes: r.disk_bytes,
            gpus: r.gpus,
        }
    }
}

/// A limit of [`charter_config::limits`] as `INVALID_ARGUMENT`.
fn within(r: Result<(), String>) -> Result<(), Status> {
    r.map_err(|e| Status::invalid_argument(format!("{e}; nothing was changed")))
}

/// A named enum from the wire, where the empty string is its default.
fn named<T: FromStr + Default>(s: &str) -> Result<T, Status>
where
    T::Err: std::fmt::Display,
{
    if s.is_empty() {
        return Ok(T::default());
    }
    s.parse()
        .map_err(|e: T::Err| Status::invalid_argument(e.to_string()))
}

impl From<&LeaseSpec> for pb::LeaseRequest {
    /// The request with no idempotency key.
    fn from(s: &LeaseSpec) -> pb::LeaseRequest {
        pb::LeaseRequest {
            idempotency_key: String::new(),
            resources: Some((&s.resources).into()),
            constraints: s.constraints.iter().map(|c| c.to_string()).collect(),
            duration_ms: s.duration_ms,
            reason: s.reason.clone(),
            count: s.count,
            max_total_ms: s.max_total_ms,
            priority: s.priority,
            wait_ms: s.wait_ms,
            max_cost_per_hour: s.max_cost_per_hour,
            prefer: s.prefer.to_string(),
            deadline_ms: s.deadline,
        }
    }
}

impl TryFrom<pb::LeaseRequest> for LeaseSpec {
    type Error = Status;

    /// A lease request from the wire, checked.
    fn try_from(r: pb::LeaseRequest) -> Result<LeaseSpec, Status> {
        within(limits::reason(&r.reason))?;
        within(limits::constraints(&r.constraints))?;
        if r.duration_ms == 0 {
            return Err(Status::invalid_argument(
                "lease duration is zero; pass --for, e.g. --for 2h",
            ));
        }
        let constraints = r
            .constraints
            .iter()
            .map(|c| Constraint::parse(c).map_err(Status::invalid_argument))
            .collect::<Result<Vec<_>, _>>()?;
        let prefer: Prefer = named(&r.prefer)?;
        if let Some(c) = r.max_cost_per_hour
            && !(c.is_finite() && c >= 0.0)
        {
            return Err(Status::invalid_argument(format!(
                "max cost {c} is not a price >= 0"
            )));
        }
        if r.max_total_ms != 0 && r.max_total_ms < r.duration_ms {
            return Err(Status::invalid_argument(
                "max total is shorter than the duration; raise --max-total",
            ));
        }
        Ok(LeaseSpec {
            resources: (&r.resources.unwrap_or_default()).into(),
            constraints,
            count: r.count.max(1),
            duration_ms: r.duration_ms,
            max_total_ms: r.max_total_ms,
            priority: r.priority,
            wait_ms: r.wait_ms,
            max_cost_per_hour: r.max_cost_per_hour,
            prefer,
            deadline: r.deadline_ms,
            reason: r.reason,
        })
    }
}

impl From<&Health> for pb::HealthCheck {
    fn from(h: &Health) -> pb::HealthCheck {
        let mut out = pb::HealthCheck {
            kind: h.check.kind().to_string(),
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            healthy_after: h.healthy_after,
            unhealthy_after: h.unhealthy_after,
            ..Default::default()
        };
        match &h.check {
            Check::Http { port, path, status } => {
                out.port = u32::from(*port);
                out.path = path.clone();
                out.status = u32::from(*status);
            }
            Check::Tcp { port } => out.port = u32::from(*port),
            Check::Command { argv } => out.argv = argv.clone(),
        }
        out
    }
}

/// A health check from the wire, checked; `first_port` says whether port 0
/// (the task's first named port) means something.
fn health(h: pb::HealthCheck, first_port: bool) -> Result<Health, Status> {
    within(limits::command("the health check's command", &h.argv))?;
    within(limits::text("the health check's path", &h.path))?;
    let port = || {
        u16::try_from(h.port)
            .ok()
            .filter(|p| *p > 0 || first_port)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "health check port {} is not 1-65535 (0 checks the task's first named port, and it has none)",
                    h.port
                ))
            })
    };
    let kind: CheckKind = h
        .kind
        .parse()
        .map_err(|e: charter_config::named::UnknownName| Status::invalid_argument(e.to_string()))?;
    let check = match kind {
        CheckKind::Http => Check::Http {
            port: port()?,
            path: if h.path.is_empty() {
                "/".into()
            } else {
                h.path.clone()
            },
            status: u16::try_from(h.status)
                .ok()
                .filter(|s| *s > 0)
                .unwrap_or(200),
        },
        CheckKind::Tcp => Check::Tcp { port: port()? },
        CheckKind::Command if !h.argv.is_empty() => Check::Command {
            argv: h.argv.clone(),
        },
        CheckKind::Command => {
            return Err(Status::invalid_argument(
                "a command health check needs a command",
            ));
        }
    };
    let or_second = |ms: u64| if ms == 0 { 1_000 } else { ms };
    Ok(Health {
        check,
        interval_ms: or_second(h.interval_ms),
        timeout_ms: or_second(h.timeout_ms),
        healthy_after: h.healthy_after.max(1),
        unhealthy_after: h.unhealthy_after.max(1),
    })
}

impl From<&TaskSpec> for pb::TaskSpec {
    fn from(s: &TaskSpec) -> pb::TaskSpec {
        pb::TaskSpec {
            name: s.name.clone(),
            amp: s.amp.to_string(),
            command: s.command.clone(),
            env: s.env.clone().into_iter().collect(),
            retries: s.retries,
            restart: s.restart.to_string(),
            max_restarts: s.max_restarts,
            health: s.health.as_ref().map(pb::HealthCheck::from),
            grace_ms: s.grace_ms,
            ports: s.ports.clone(),
            artifact_out: s.artifact_out.clone(),
            artifact_in: s.artifact_in.clone(),
            artifact_name: s.artifact_name.clone(),
        }
    }
}

/// A short, quoted echo of a bad value for an error message.
fn echo(s: &str) -> String {
    format!("{:?}", s.chars().take(64).collect::<String>())
}

/// The artifact fields of a task spec from the wire, checked: a relative
/// `artifact_out`, a sha256 `artifact_in` and a plain `artifact_name`.
fn artifacts(s: &pb::TaskSpec) -> Result<(), Status> {
    let bad = |m: String| Err(Status::invalid_argument(m));
    if !s.artifact_out.is_empty() && !limits::relative_path(&s.artifact_out) {
        return bad(format!(
            "artifact_out {} must be a relative path inside the task's sandbox (no `..`), like out/app",
            echo(&s.artifact_out)
        ));
    }
    let sha256 = s.artifact_in.len() == 64
        && s.artifact_in
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
    if !s.artifact_in.is_empty() && !sha256 {
        return bad(format!(
            "artifact_in `{}` is not a sha256 (64 lower-case hex digits)",
            s.artifact_in.chars().take(64).collect::<String>()
        ));
    }
    if !s.artifact_in.is_empty()
        && (!limits::file_name(&s.artifact_name) || s.artifact_name.starts_with('.'))
    {
        return bad(format!(
            "artifact_name {} must be a plain file name, like app",
            echo(&s.artifact_name)
        ));
    }
    Ok(())
}

/// The name, command, environment and ports of a task spec from the wire,
/// checked.
fn basics(s: &pb::TaskSpec) -> Result<(), Status> {
    let bad = |m: String| Err(Status::invalid_argument(m));
    within(limits::text("the task's name", &s.name))?;
    within(limits::command("the command", &s.command))?;
    within(limits::env(&s.env))?;
    if let Some(app) = s.env.get("CHARTER_APP")
        && !limits::name(app)
    {
        return bad(format!(
            "CHARTER_APP {} is not an app name ({})",
            echo(app),
            limits::NAME_RULE
        ));
    }
    if s.ports.len() > limits::PORTS_MAX {
        return bad(format!(
            "{} named ports; at most {}",
            s.ports.len(),
            limits::PORTS_MAX
        ));
    }
    if let Some(p) = s.ports.iter().find(|p| !valid_port_name(p)) {
        return bad(format!(
            "port name `{p}` must be 1-32 letters, digits or '_', like http"
        ));
    }
    if s.command.first().is_none_or(|c| c.trim().is_empty()) {
        return bad(
            "a task needs a command: put it after `--`, like `charter task submit -- ./run.sh`"
                .into(),
        );
    }
    Ok(())
}

impl TryFrom<pb::TaskSpec> for TaskSpec {
    type Error = Status;

    /// A task spec from the wire, checked.
    fn try_from(s: pb::TaskSpec) -> Result<TaskSpec, Status> {
        basics(&s)?;
        artifacts(&s)?;
        let amp: Amp = named(&s.amp)?;
        let restart: Restart = named(&s.restart)?;
        let first_port = !s.ports.is_empty();
        let health = match s.health.filter(|h| !h.kind.is_empty()) {
            None => None,
            Some(_) if amp != Amp::Service => {
                return Err(Status::invalid_argument(
                    "health checks are for service tasks; add --amp service",
                ));
            }
            Some(h) => Some(health(h, first_port)?),
        };
        Ok(TaskSpec {
            name: s.name,
            amp,
            command: s.command,
            env: s.env.into_iter().collect(),
            retries: s.retries,
            restart,
            max_restarts: s.max_restarts,
            health,
            grace_ms: s.grace_ms,
            ports: s.ports,
            artifact_out: s.artifact_out,
            artifact_in: s.artifact_in,
            artifact_name: s.artifact_name,
        })
    }
}
