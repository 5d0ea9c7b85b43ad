//! `charter lock acquire|renew|release|show|list|run` and `charter elect`,
//! on the [`charter_client`] library.
//!
//! `lock run` holds a lock while a command runs, as `consul lock` does: the
//! library renews it every third of the TTL; the command gets the fencing
//! token in `CHARTER_LOCK_TOKEN`. When renewals fail, the command gets
//! SIGTERM once three quarters of the TTL since the last good renewal have
//! passed and SIGKILL at nine tenths, so it has stopped before the cluster
//! can give the lock to anyone else; a lock the cluster says is over
//! stops it at once. The command dies with this process (PDEATHSIG).
//!
//! Over 500 lines: every lock verb, `lock run`'s supervision of its command and elections.

use super::client::{Client, Global, lock_client, new_key, status_error};
use super::output::{self, fail};
use charter_client::{Lock, Status};
use charter_config::units;
use charter_proto as pb;
use charter_proto::locks_client::LocksClient;
use clap::{Args as ClapArgs, Subcommand};
use serde::Serialize;
use std::time::Duration;
use tokio::time::Instant;

/// Lock verbs.
#[derive(Subcommand, Debug)]
pub enum LockCmd {
    /// Take a lock (or wait for it with --wait); prints its id and fencing
    /// token. It lasts one TTL unless renewed (`charter lock renew`).
    Acquire {
        /// The lock's name.
        name: String,
        #[command(flatten)]
        opts: LockArgs,
        /// How long to wait in line, e.g. 1m (default: not at all).
        #[arg(long)]
        wait: Option<String>,
    },
    /// Keep an acquisition alive for another TTL.
    Renew {
        /// The lock's name.
        name: String,
        /// The acquisition id `lock acquire` printed.
        id: u64,
    },
    /// Let go of an acquisition (the next in line gets the lock at once).
    Release {
        /// The lock's name.
        name: String,
        /// The acquisition id `lock acquire` printed.
        id: u64,
    },
    /// Show a lock: holders with their tokens and expiries, the line, and
    /// recent acquisitions.
    Show {
        /// The lock's name.
        name: String,
        /// How many ended acquisitions to show.
        #[arg(long, default_value_t = 10)]
        recent: u32,
    },
    /// List the locks someone holds or waits for.
    List,
    /// Run a command while holding the lock; it gets the fencing token in
    /// CHARTER_LOCK_TOKEN and is stopped before the lock can run out.
    #[command(
        after_help = "Examples:\n  charter lock run nightly --ttl 10s -- ./report.sh\n  charter lock run gpu-pool --limit 3 --wait 1h -- ./train.sh\n  charter lock run db-migrate --wait 0s -- ./migrate.sh   # give up if busy"
    )]
    Run {
        /// The lock's name.
        name: String,
        #[command(flatten)]
        opts: LockArgs,
        /// How long to wait in line, e.g. 10m (default: until granted).
        #[arg(long)]
        wait: Option<String>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// What every acquisition may say.
#[derive(ClapArgs, Debug, Clone)]
pub struct LockArgs {
    /// How long the lock lives without a renewal, e.g. 10s (1s to 24h).
    #[arg(long, default_value = "15s")]
    ttl: String,
    /// How many may hold it at once (a semaphore); every holder must agree.
    #[arg(long, default_value_t = 1)]
    limit: u32,
    /// Who holds it, for `lock show` (default: hostname:pid).
    #[arg(long)]
    holder: Option<String>,
    /// A value to publish with the acquisition (an election's address).
    #[arg(long, default_value = "")]
    value: String,
}

/// `charter elect`.
#[derive(ClapArgs, Debug)]
pub struct ElectArgs {
    /// The election's name (a lock with limit 1).
    name: String,
    /// What to publish as leader, e.g. this process's address.
    #[arg(long, default_value = "")]
    value: String,
    /// How long leadership lasts without a renewal, e.g. 10s.
    #[arg(long, default_value = "15s")]
    ttl: String,
    /// Do not campaign: print the leader now and at every change.
    #[arg(long, conflicts_with = "command")]
    observe: bool,
    /// Run this while leader (after `--`); without it, hold leadership
    /// until interrupted.
    #[arg(last = true)]
    command: Vec<String>,
}

fn duration(flag: &str, v: &str) -> anyhow::Result<Duration> {
    units::parse_duration(v)
        .map(Duration::from_millis)
        .map_err(|e| {
            fail(
                format!("cannot use --{flag} {v}"),
                e,
                "give a duration like 500ms, 10s, 5m or 1h",
            )
        })
}

fn options(
    c: &charter_client::Client,
    name: &str,
    a: &LockArgs,
    wait: Option<&str>,
) -> anyhow::Result<charter_client::LockOptions> {
    let mut o = c
        .lock(name)
        .ttl(duration("ttl", &a.ttl)?)
        .limit(a.limit)
        .value(&a.value);
    if let Some(h) = &a.holder {
        o = o.holder(h);
    }
    if let Some(w) = wait {
        o = o.wait(duration("wait", w)?);
    }
    Ok(o)
}

fn lock_error(what: &str, s: &Status) -> anyhow::Error {
    // The library names the member that answered last: "… (from ADDR)".
    let (msg, addr) = match s.message().rsplit_once(" (from ") {
        Some((m, a)) => (m.to_string(), a.trim_end_matches(')').to_string()),
        None => (s.message().to_string(), String::new()),
    };
    let mut u = status_error(what, &addr, &Status::new(s.code(), msg));
    if s.code() == tonic::Code::FailedPrecondition && s.message().contains("is held by") {
        u.hint = Some(
            "wait in line with --wait D, or see who holds it: `charter lock show NAME`".into(),
        );
    }
    if s.code() == tonic::Code::DeadlineExceeded {
        u.hint = Some("wait longer (--wait), or see who holds it: `charter lock show NAME`".into());
    }
    u.into()
}

#[derive(Serialize)]
struct HoldOut {
    id: u64,
    lock: String,
    principal: String,
    holder: String,
    value: String,
    state: String,
    token: u64,
    ttl_ms: u64,
    position: u32,
    acquired_at: String,
    expires_at: String,
    ended_at: String,
}

fn hold_out(h: &pb::LockHold) -> HoldOut {
    HoldOut {
        id: h.id,
        lock: h.lock.clone(),
        principal: h.principal.clone(),
        holder: h.holder.clone(),
        value: h.value.clone(),
        state: h.state.clone(),
        token: h.token,
        ttl_ms: h.ttl_ms,
        position: h.position,
        acquired_at: output::time(h.acquired_at_ms),
        expires_at: output::time(h.expires_at_ms),
        ended_at: output::time(h.ended_at_ms),
    }
}

#[derive(Serialize)]
struct LockOut {
    name: String,
    limit: u32,
    holders: Vec<HoldOut>,
    waiters: Vec<HoldOut>,
    recent: Vec<HoldOut>,
}

fn lock_out(l: &pb::LockReply) -> LockOut {
    LockOut {
        name: l.name.clone(),
        limit: l.limit,
        holders: l.holders.iter().map(hold_out).collect(),
        waiters: l.waiters.iter().map(hold_out).collect(),
        recent: l.recent.iter().map(hold_out).collect(),
    }
}

fn rows(holds: &[pb::LockHold]) -> Vec<Vec<String>> {
    holds
        .iter()
        .map(|h| {
            vec![
                h.id.to_string(),
                h.state.clone(),
                if h.token == 0 {
                    "-".into()
                } else {
                    h.token.to_string()
                },
                h.principal.clone(),
                h.holder.clone(),
                output::time(h.expires_at_ms),
                output::time(h.ended_at_ms),
            ]
        })
        .collect()
}

const HEADER: [&str; 7] = [
    "ID",
    "STATE",
    "TOKEN",
    "PRINCIPAL",
    "HOLDER",
    "EXPIRES",
    "ENDED",
];

/// Runs a lock verb.
pub async fn run(g: &Global, cmd: LockCmd) -> anyhow::Result<i32> {
    match cmd {
        LockCmd::Acquire { name, opts, wait } => acquire(g, name, opts, wait).await,
        LockCmd::Renew { name, id } | LockCmd::Release { name, id } if id == 0 => Err(fail(
            format!("cannot change lock {name} acquisition 0"),
            "acquisition ids start at 1",
            "use the id `charter lock acquire` printed, or see `charter lock show NAME`",
        )),
        LockCmd::Renew { name, id } => change(g, &name, id, true).await,
        LockCmd::Release { name, id } => change(g, &name, id, false).await,
        LockCmd::Show { name, recent } => show(g, name, recent).await,
        LockCmd::List => list(g).await,
        LockCmd::Run {
            name,
            opts,
            wait,
            command,
        } => run_cmd(g, name, opts, wait, command).await,
    }
}

/// `lock acquire NAME`.
async fn acquire(
    g: &Global,
    name: String,
    opts: LockArgs,
    wait: Option<String>,
) -> anyhow::Result<i32> {
    let c = lock_client(g)?;
    let o = options(&c, &name, &opts, Some(wait.as_deref().unwrap_or("0s")))?;
    let lock = o
        .acquire()
        .await
        .map_err(|s| lock_error(&format!("acquiring lock {name}"), &s))?;
    let ttl = duration("ttl", &opts.ttl)?;
    let (id, token) = lock.detach();
    if g.json {
        output::json(&serde_json::json!({
            "lock": name, "id": id, "token": token, "ttl_ms": ttl.as_millis() as u64
        }))?;
    } else {
        println!("lock {name} acquisition {id} held, fencing token {token}");
        println!(
            "it ends in {} unless renewed: charter lock renew {name} {id}; let go: charter lock release {name} {id}",
            units::format_duration(ttl.as_millis() as u64)
        );
    }
    Ok(0)
}

/// `lock show NAME`.
async fn show(g: &Global, name: String, recent: u32) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    let req = pb::ShowLockRequest {
        name: name.clone(),
        stale: false,
        recent,
    };
    let l = c
        .call(&format!("showing lock {name}"), |ch| {
            let r = c.req(req.clone());
            async move { LocksClient::new(ch).show(r).await }
        })
        .await?;
    if g.json {
        output::json(&lock_out(&l))?;
        return Ok(0);
    }
    if l.holders.is_empty() && l.waiters.is_empty() {
        println!("lock {name}: free");
    } else {
        println!(
            "lock {name}: {} of {} held, {} waiting",
            l.holders.len(),
            l.limit,
            l.waiters.len()
        );
    }
    let mut all = l.holders.clone();
    all.extend(l.waiters.iter().cloned());
    all.extend(l.recent.iter().cloned());
    if !all.is_empty() {
        output::table(&HEADER, rows(&all));
    }
    Ok(0)
}

/// `lock list`.
async fn list(g: &Global) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    let l = c
        .call("listing locks", |ch| {
            let r = c.req(pb::ListLocksRequest { stale: false });
            async move { LocksClient::new(ch).list(r).await }
        })
        .await?;
    if g.json {
        output::json(&l.locks.iter().map(lock_out).collect::<Vec<_>>())?;
        return Ok(0);
    }
    let table: Vec<Vec<String>> = l
        .locks
        .iter()
        .map(|l| {
            vec![
                l.name.clone(),
                format!("{}/{}", l.holders.len(), l.limit),
                l.waiters.len().to_string(),
                l.holders
                    .iter()
                    .map(|h| format!("{} (token {})", h.principal, h.token))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    output::table(&["LOCK", "HELD", "WAITING", "HOLDERS"], table);
    Ok(0)
}

/// `lock run NAME -- CMD`.
async fn run_cmd(
    g: &Global,
    name: String,
    opts: LockArgs,
    wait: Option<String>,
    command: Vec<String>,
) -> anyhow::Result<i32> {
    let c = lock_client(g)?;
    let ttl = duration("ttl", &opts.ttl)?;
    let o = options(&c, &name, &opts, wait.as_deref())?;
    let lock = o
        .acquire()
        .await
        .map_err(|s| lock_error(&format!("acquiring lock {name}"), &s))?;
    eprintln!(
        "charter: lock {name} held (acquisition {}, token {})",
        lock.id(),
        lock.token()
    );
    supervise(lock, ttl, &command).await
}

async fn change(g: &Global, name: &str, id: u64, renew: bool) -> anyhow::Result<i32> {
    let c = Client::new(g)?;
    let key = new_key();
    let verb = if renew { "renew" } else { "release" };
    let req = pb::LockHoldRequest {
        idempotency_key: key.clone(),
        id,
        name: name.to_string(),
    };
    let h = c
        .call_keyed(
            &format!("{verb} of lock {name} acquisition {id}"),
            &key,
            &format!("charter lock show {name}"),
            |ch| {
                let r = c.req(req.clone());
                async move {
                    let mut l = LocksClient::new(ch);
                    if renew {
                        l.renew(r).await
                    } else {
                        l.release(r).await
                    }
                }
            },
        )
        .await?;
    if h.lock != name {
        return Err(fail(
            format!("lock acquisition {id} is of lock {}, not {name}", h.lock),
            format!("it was {verb}ed all the same"),
            format!("use the lock's own name: charter lock show {}", h.lock),
        ));
    }
    if g.json {
        output::json(&hold_out(&h))?;
    } else if renew {
        println!(
            "lock {name} acquisition {id} renewed: {} until {}",
            h.state,
            output::time(h.expires_at_ms)
        );
    } else {
        println!("lock {name} acquisition {id} released");
    }
    Ok(0)
}

/// Exit code of a child that ended with `status`.
fn code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

fn signal(pid: Option<u32>, sig: libc::c_int) {
    if let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill(2) with a pid we spawned and a valid signal number.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Runs `command` while `lock` holds, and stops it before the lock can
/// run out; releases the lock when the command ends. Returns its exit code.
///
/// Over 80 lines: one select loop over the lock and its command.
async fn supervise(lock: Lock, ttl: Duration, command: &[String]) -> anyhow::Result<i32> {
    use std::os::unix::process::CommandExt;
    use tokio::signal::unix::{SignalKind, signal as on};
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .env("CHARTER_LOCK_TOKEN", lock.token().to_string())
        .env("CHARTER_LOCK_NAME", lock.name())
        .env("CHARTER_LOCK_ID", lock.id().to_string());
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.as_std_mut().pre_exec(|| {
            // The command must not outlive its supervisor: nothing would
            // stop it when the lock runs out.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        fail(
            format!("cannot run {}", command[0]),
            e.to_string(),
            "check the command after `--` exists and is executable",
        )
    })?;
    let pid = child.id();
    let mut int = on(SignalKind::interrupt())?;
    let mut term = on(SignalKind::terminate())?;
    let mut deadline = lock.deadline_watch();
    let mut lost: Option<String> = None;
    let mut termed = false;
    loop {
        let d = *deadline.borrow_and_update();
        let term_at = d.checked_sub(ttl / 4).unwrap_or(d);
        let kill_at = d.checked_sub(ttl / 10).unwrap_or(d);
        let now = Instant::now();
        if now >= kill_at {
            // Woken late (a stopped process) or renewals failed for good.
            signal(pid, libc::SIGKILL);
            let _ = child.wait().await;
            eprintln!(
                "charter: lock {} could not be kept ({}); the command was killed before its expiry",
                lock.name(),
                lost.as_deref().unwrap_or("no renewal succeeded in time")
            );
            drop(lock);
            return Ok(1);
        }
        if (now >= term_at || lost.is_some()) && !termed {
            termed = true;
            eprintln!(
                "charter: lock {} is being lost ({}); sending SIGTERM",
                lock.name(),
                lost.as_deref().unwrap_or("renewals are failing")
            );
            signal(pid, libc::SIGTERM);
        }
        let next = if termed { kill_at } else { term_at };
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                if let Err(s) = lock.release().await {
                    eprintln!("charter: cannot release the lock ({}); it ends at its expiry", s.message());
                }
                return Ok(code(status));
            }
            why = lock.lost(), if lost.is_none() => {
                lost = Some(why);
                // The cluster ended it: nothing is gained by waiting.
                if !termed {
                    termed = true;
                    eprintln!("charter: lock {} lost ({}); sending SIGTERM", lock.name(), lost.as_deref().unwrap_or(""));
                    signal(pid, libc::SIGTERM);
                }
            }
            _ = deadline.changed() => {}
            _ = tokio::time::sleep_until(next) => {}
            _ = int.recv() => signal(pid, libc::SIGINT),
            _ = term.recv() => signal(pid, libc::SIGTERM),
        }
    }
}

/// Runs `charter elect`.
pub async fn elect(g: &Global, a: ElectArgs) -> anyhow::Result<i32> {
    use tokio_stream::StreamExt;
    let c = lock_client(g)?;
    let ttl = duration("ttl", &a.ttl)?;
    if a.observe {
        let mut s = c
            .observe(&a.name)
            .await
            .map_err(|s| lock_error(&format!("observing election {}", a.name), &s))?;
        let mut last = None;
        while let Some(item) = s.next().await {
            let leader =
                item.map_err(|s| lock_error(&format!("observing {} failed", a.name), &s))?;
            if last.as_ref() == Some(&leader) {
                continue;
            }
            match &leader {
                Some(l) if g.json => output::json(&serde_json::json!({
                    "election": a.name, "principal": l.principal, "value": l.value,
                    "token": l.token, "expires_at": output::time(l.expires_at_ms)
                }))?,
                Some(l) => println!(
                    "{}: leader {} value {:?} term {}",
                    a.name, l.principal, l.value, l.token
                ),
                None if g.json => {
                    output::json(&serde_json::json!({"election": a.name, "leader": null}))?
                }
                None => println!("{}: no leader", a.name),
            }
            last = Some(leader);
        }
        return Err(fail(
            format!("observing election {} ended", a.name),
            "the member serving the stream stopped",
            "run it again; it goes to another member",
        ));
    }
    let e = c.election(&a.name, &a.value).ttl(ttl);
    loop {
        let lock = e
            .campaign()
            .await
            .map_err(|s| lock_error(&format!("campaigning in election {}", a.name), &s))?;
        eprintln!(
            "charter: elected leader of {} (term {})",
            a.name,
            lock.token()
        );
        if !a.command.is_empty() {
            return supervise(lock, ttl, &a.command).await;
        }
        tokio::select! {
            why = lock.lost() => eprintln!("charter: lost leadership of {} ({why}); campaigning again", a.name),
            _ = tokio::signal::ctrl_c() => {
                let _ = lock.release().await;
                eprintln!("charter: resigned from {}", a.name);
                return Ok(0);
            }
        }
    }
}
