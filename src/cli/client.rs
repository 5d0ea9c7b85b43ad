//! Talking to the servers: token discovery, one channel per server address,
//! and retries. A call goes to the first address; when that member is down
//! or answers `UNAVAILABLE` (no leader yet), the next address is tried, for
//! up to [`RETRY_FOR`]. Writes carry an idempotency key made here, so a retry
//! never applies twice.

use super::output::UserError;
use charter_agent::conn::Servers;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// How long a call keeps retrying through elections and restarts, unless
/// `CHARTER_RETRY_FOR` (a duration like `5s`) says otherwise.
pub const RETRY_FOR: Duration = Duration::from_secs(15);

fn retry_for() -> Duration {
    std::env::var("CHARTER_RETRY_FOR")
        .ok()
        .and_then(|v| charter_config::units::parse_duration(&v).ok())
        .map_or(RETRY_FOR, Duration::from_millis)
}

/// Flags every command shares.
#[derive(Clone, Debug)]
pub struct Global {
    /// Comma-separated server addresses.
    pub servers: String,
    /// The token given with `--token` / `CHARTER_TOKEN`.
    pub token: Option<String>,
    /// JSON output.
    pub json: bool,
}

/// `$CHARTER_HOME`, else `~/.charter`.
pub fn charter_home() -> PathBuf {
    if let Some(h) = std::env::var_os("CHARTER_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".charter")
}

/// Where `charter dev` leaves its token for the CLI.
pub fn dev_token_path() -> PathBuf {
    charter_home().join("dev-token")
}

/// Where `charter dev` keeps its CA and certificate, and the address it
/// serves (`server`): the CLI trusts that CA for that address.
pub fn dev_tls_dir() -> PathBuf {
    charter_home().join("dev-tls")
}

/// A fresh idempotency key.
pub fn new_key() -> String {
    format!(
        "cli-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// The token to call with: `--token`/`CHARTER_TOKEN`, else the dev token.
pub fn find_token(g: &Global) -> Option<String> {
    // A token pasted with its line end still works.
    g.token
        .as_deref()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .or_else(|| {
            std::fs::read_to_string(dev_token_path())
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
}

/// A connection to the cluster.
pub struct Client {
    servers: Servers,
}

impl Client {
    /// Builds channels (lazily connected) to every `--server` address.
    pub fn new(g: &Global) -> anyhow::Result<Client> {
        let token = find_token(g);
        if let Some(t) = token
            .as_deref()
            .filter(|t| t.len() > 4096 || t.chars().any(char::is_control))
        {
            return Err(super::output::fail(
                "cannot use the token",
                format!(
                    "it is {} bytes{}; a token is one line of at most 4096 printable characters",
                    t.len(),
                    if t.chars().any(char::is_control) {
                        " with control characters"
                    } else {
                        ""
                    }
                ),
                "pass the token from the server's token file (--token or CHARTER_TOKEN)",
            ));
        }
        let addrs: Vec<String> = g.servers.split(',').map(str::to_string).collect();
        let servers = Servers::new(&addrs, token).map(|s| s.give_up_unreachable(Duration::from_secs(2))).map_err(|e| {
            super::output::fail(
                "cannot use --server",
                e,
                "pass --server HOST:PORT[,HOST:PORT…] or set CHARTER_SERVER, e.g. 127.0.0.1:7700",
            )
        })?;
        Ok(Client { servers })
    }

    /// Wraps a message with the bearer token.
    pub fn req<M>(&self, m: M) -> Request<M> {
        self.servers.req(m)
    }

    /// Calls `f` on a server channel, moving to the next server on
    /// unavailability, until it succeeds or [`RETRY_FOR`] has passed.
    pub async fn call<T, F, Fut>(&self, what: &str, f: F) -> anyhow::Result<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.servers
            .call(retry_for(), f)
            .await
            .map_err(|e| status_error(what, &e.addr, &e.status).into())
    }

    /// [`Client::call`] that hands the last status back, for a caller that
    /// acts on it.
    pub async fn try_call<T, F, Fut>(&self, f: F) -> Result<T, charter_proto::conn::Failed>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.servers.call(retry_for(), f).await
    }

    /// [`Client::call`] for a write carrying idempotency key `key`: when
    /// no member answered for good (the write may or may not have been
    /// applied), the error gives the key and a retry command that reuses
    /// it, so a retry never applies twice; `find` says how to look for it.
    pub async fn call_keyed<T, F, Fut>(
        &self,
        what: &str,
        key: &str,
        find: &str,
        f: F,
    ) -> anyhow::Result<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.servers.call(retry_for(), f).await.map_err(|e| {
            let mut u = status_error(what, &e.addr, &e.status);
            if charter_agent::conn::retryable(&e.status)
                || e.status.code() == Code::DeadlineExceeded
            {
                u.why.push(format!(
                    "the request may or may not have been applied; its idempotency key is {key}"
                ));
                u.hint = Some(format!(
                    "retry with the same key, which never applies twice: {}; or look for it: {find}",
                    retry_command(std::env::args(), key)
                ));
            }
            u.into()
        })
    }
}

/// This command line again with `--key KEY` (any `--key` given replaced),
/// quoted for a POSIX shell.
pub fn retry_command(mut args: impl Iterator<Item = String>, key: &str) -> String {
    // The program as a person types it, whatever path ran it.
    let _ = args.next();
    let mut out = vec!["charter".to_string()];
    while let Some(a) = args.next() {
        if a == "--key" {
            args.next();
            continue;
        }
        if a.starts_with("--key=") {
            continue;
        }
        out.push(a);
    }
    // Before a `--` that passes a command on, or at the end.
    let at = out.iter().position(|a| a == "--").unwrap_or(out.len());
    out.insert(at, key.to_string());
    out.insert(at, "--key".into());
    out.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=,+@%".contains(c));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

/// Turns a gRPC status into a three-part error.
pub fn status_error(what: &str, addr: &str, s: &Status) -> UserError {
    let msg = s.message().to_string();
    let hint = match s.code() {
        Code::Unauthenticated => {
            "pass --token or set CHARTER_TOKEN to a token from the server's token file (or run `charter dev`, which writes a dev token)"
        }
        // A quota is the principal's own limit, not someone else's object.
        Code::PermissionDenied if msg.starts_with("quota:") => {
            "see your limits with `charter quota list`; ask for less, release a lease you hold, or have an admin raise the quota (`charter quota set`)"
        }
        Code::PermissionDenied => "ask an admin, or use a token of the principal that owns it",
        Code::Unavailable if msg.starts_with("cannot connect to") => {
            "check that --server (or CHARTER_SERVER) names running members (`charter dev` listens on 127.0.0.1:7700)"
        }
        Code::Unavailable => {
            "the cluster may be electing a leader or down: check `charter cluster status`, or start one with `charter dev`; then retry"
        }
        Code::InvalidArgument => "fix the request as the message says",
        Code::NotFound => "list what exists with the matching `list` command",
        // Waiting cannot help a request that no node could ever hold.
        Code::ResourceExhausted if msg.contains("could ever hold") => {
            "ask for what a node has (`charter node list`), or add one that fits: `charter agent --label k=v …` on a machine, or a pool that grows (`[[pool]]` in server.toml)"
        }
        Code::ResourceExhausted => {
            "ask for less, wait with `--wait D`, add a node (`charter agent` on a machine), or let a lease end"
        }
        Code::FailedPrecondition if msg.contains("max total") => {
            "request a new lease; `--max-total D` on a request lets it be renewed up to D from its grant"
        }
        Code::FailedPrecondition => {
            "check its current state with the matching `show` or `list` command"
        }
        Code::DeadlineExceeded => {
            "the server took too long; check `charter cluster status` and retry"
        }
        _ => "",
    };
    UserError {
        what: format!("{what} failed"),
        why: vec![format!("{msg} (server {addr}, code {:?})", s.code())],
        hint: Some(hint.to_string()).filter(|h| !h.is_empty()),
        code: Some(format!("{:?}", s.code())),
    }
}

/// The locks client library ([`charter_client`]) over the same servers and
/// token as every other command (checked as [`Client::new`] checks them).
pub fn lock_client(g: &Global) -> anyhow::Result<charter_client::Client> {
    Ok(charter_client::Client::from_servers(
        Client::new(g)?.servers,
    ))
}

#[cfg(test)]
mod tests {
    use super::retry_command;

    fn argv(s: &[&str]) -> impl Iterator<Item = String> {
        s.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn a_retry_command_reuses_the_key_once_and_quotes_what_a_shell_would_split() {
        let c = retry_command(
            argv(&[
                "/x/charter",
                "lease",
                "request",
                "--key",
                "old",
                "--reason",
                "it's mine",
            ]),
            "cli-1",
        );
        assert_eq!(
            c,
            "charter lease request --reason 'it'\\''s mine' --key cli-1"
        );
        let c = retry_command(
            argv(&["charter", "task", "submit", "--", "sh", "-c", "a b"]),
            "k",
        );
        assert_eq!(c, "charter task submit --key k -- sh -c 'a b'");
    }
}
