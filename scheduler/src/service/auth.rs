//! Bearer-token authentication. A token file holds one token per line:
//! `<token> <principal> [admin|hydra|deployer]`; `#` starts a comment.
//!
//! Besides the file's tokens, members accept **node credentials**: an
//! agent's token, minted by an admin (`charter node credential NAME`),
//! `charter-node.NAME.MAC` where MAC is an HMAC-SHA256 of the node's name
//! keyed by the cluster's peer token (the first admin token, the same on
//! every member). A node credential can only register, heartbeat, watch and
//! report for its own node and move the artifacts of its own tasks; it
//! stays valid until the peer token changes.

use std::collections::HashMap;
use std::path::Path;
use tonic::{Request, Status};

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The principal's name (a user nick, a controller, or `node:NAME`).
    pub name: String,
    /// Admins see and change everything.
    pub admin: bool,
    /// What the credential is for; only [`Scope::User`] passes [`principal`].
    pub scope: Scope,
}

/// What a credential may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A person's token: their own leases, tasks, jobs and apps (everything
    /// with `admin`).
    User,
    /// An agent's node credential: its own node's calls only.
    Node(String),
    /// A standalone Hydra: reads the plan, fires and skips ticks.
    Hydra,
    /// A standalone deployer: plans and steps deployments, renews their
    /// servers' leases, reads their tasks' logs.
    Deployer,
}

impl Scope {
    fn describe(&self) -> String {
        match self {
            Scope::User => "a user token".into(),
            Scope::Node(n) => format!("the node credential of {n}"),
            Scope::Hydra => "a Hydra token".into(),
            Scope::Deployer => "a deployer token".into(),
        }
    }
}

/// How every node credential starts.
pub const NODE_PREFIX: &str = "charter-node.";

/// The known tokens, or none at all in insecure mode.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    by_token: HashMap<String, Principal>,
    insecure: bool,
}

impl Tokens {
    /// Accepts every call as the admin `anonymous`.
    pub fn insecure() -> Tokens {
        Tokens {
            by_token: HashMap::new(),
            insecure: true,
        }
    }

    /// Parses a token file's text; errors name the line.
    pub fn parse(text: &str, origin: &str) -> Result<Tokens, String> {
        let mut by_token = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            let at = format!("{origin}:{}", i + 1);
            let (admin, scope) = match parts.as_slice() {
                [_, _] => (false, Scope::User),
                [_, _, "admin"] => (true, Scope::User),
                [_, _, "hydra"] => (false, Scope::Hydra),
                [_, _, "deployer"] => (false, Scope::Deployer),
                [_, _, other] => {
                    return Err(format!(
                        "{at}: expected `admin`, `hydra`, `deployer` or nothing after the principal, got `{other}`"
                    ));
                }
                _ => {
                    return Err(format!(
                        "{at}: expected `<token> <principal> [admin|hydra|deployer]`, got {} field(s)",
                        parts.len()
                    ));
                }
            };
            if parts[0].len() < 8 {
                return Err(format!("{at}: token is too short (at least 8 characters)"));
            }
            if parts[0].starts_with(NODE_PREFIX) {
                return Err(format!(
                    "{at}: a token may not start with `{NODE_PREFIX}` (node credentials are minted with `charter node credential`)"
                ));
            }
            if parts[1].starts_with("node:") {
                return Err(format!(
                    "{at}: principal `{}`: names starting with `node:` are agents'",
                    parts[1]
                ));
            }
            let p = Principal {
                name: parts[1].to_string(),
                admin,
                scope,
            };
            if by_token.insert(parts[0].to_string(), p).is_some() {
                return Err(format!("{at}: this token is listed twice"));
            }
        }
        if by_token.is_empty() {
            return Err(format!(
                "{origin}: no tokens; add a line `<token> <principal> [admin|hydra|deployer]`"
            ));
        }
        Ok(Tokens {
            by_token,
            insecure: false,
        })
    }

    /// Reads and parses a token file.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
        Tokens::parse(&text, &path.display().to_string())
    }

    /// The token members use to call each other: the first admin token by name.
    pub fn peer_token(&self) -> Option<String> {
        let mut admins: Vec<(&String, &Principal)> =
            self.by_token.iter().filter(|(_, p)| p.admin).collect();
        admins.sort_by(|a, b| a.1.name.cmp(&b.1.name).then(a.0.cmp(b.0)));
        admins.first().map(|(t, _)| (*t).clone())
    }

    /// The node credential of node `name`: `None` without a peer token
    /// (insecure mode needs none) or for a name nodes cannot have.
    pub fn node_credential(&self, name: &str) -> Option<String> {
        node_credential(&self.peer_token()?, name)
    }

    /// The node a node credential is for, if its MAC is right.
    fn node_of(&self, token: &str) -> Option<String> {
        let rest = token.strip_prefix(NODE_PREFIX)?;
        let (name, mac) = rest.rsplit_once('.')?;
        let mac = hex::decode(mac).ok()?;
        let key = self.peer_token()?;
        let want = node_mac(key.as_bytes(), name);
        use subtle::ConstantTimeEq;
        (charter_config::limits::name(name)
            && mac.len() == want.len()
            && bool::from(mac.ct_eq(&want)))
        .then(|| name.to_string())
    }

    /// The principal for a bearer token.
    pub fn check(&self, header: Option<&str>) -> Result<Principal, Status> {
        if self.insecure {
            return Ok(Principal {
                name: "anonymous".into(),
                admin: true,
                scope: Scope::User,
            });
        }
        let Some(h) = header else {
            return Err(Status::unauthenticated(
                "no token: pass --token, set CHARTER_TOKEN, or run `charter dev` for a dev token",
            ));
        };
        let token = h.strip_prefix("Bearer ").unwrap_or(h).trim();
        if token.starts_with(NODE_PREFIX) {
            return self
                .node_of(token)
                .map(|node| Principal {
                    name: format!("node:{node}"),
                    admin: false,
                    scope: Scope::Node(node),
                })
                .ok_or_else(|| {
                    Status::unauthenticated(
                        "this node credential is not valid here: mint a new one with `charter node credential NAME` (the cluster's peer token may have changed)",
                    )
                });
        }
        self.by_token.get(token).cloned().ok_or_else(|| {
            Status::unauthenticated(
                "unknown token: check --token / CHARTER_TOKEN against the server's token file",
            )
        })
    }

    /// A tonic interceptor that puts the caller's [`Principal`] into the request.
    pub fn interceptor(
        &self,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let tokens = self.clone();
        move |mut req: Request<()>| {
            let header = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            let p = tokens.check(header)?;
            req.extensions_mut().insert(p);
            Ok(req)
        }
    }
}

/// The node credential of node `name` under `peer_token`; `None` for a
/// name nodes cannot have.
pub fn node_credential(peer_token: &str, name: &str) -> Option<String> {
    if !charter_config::limits::name(name) {
        return None;
    }
    let mac = node_mac(peer_token.as_bytes(), name);
    Some(format!("{NODE_PREFIX}{name}.{}", hex::encode(mac)))
}

/// HMAC-SHA256 of a node's name under the peer token.
fn node_mac(key: &[u8], name: &str) -> Vec<u8> {
    use hmac::Mac;
    // HMAC takes a key of any length.
    let Ok(mut m) = hmac::Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return Vec::new();
    };
    m.update(b"charter node credential v1\0");
    m.update(name.as_bytes());
    m.finalize().into_bytes().to_vec()
}

fn caller<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("request was not authenticated"))
}

/// The caller of a request that went through the interceptor, if it holds
/// a user (or admin) token: every call but the few that name another
/// scope refuses machine credentials.
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    let p = caller(req)?;
    match p.scope {
        Scope::User => Ok(p),
        ref other => Err(Status::permission_denied(format!(
            "{} cannot make this call; it needs a user or admin token",
            other.describe()
        ))),
    }
}

/// Whose records a read returns: an admin's, `asked`'s (everyone's when
/// empty); anyone else's, only its own (`what` names them in the refusal).
pub fn own_or_admin(who: &Principal, asked: String, what: &str) -> Result<Option<String>, Status> {
    if who.admin {
        Ok((!asked.is_empty()).then_some(asked))
    } else if asked.is_empty() || asked == who.name {
        Ok(Some(who.name.clone()))
    } else {
        Err(Status::permission_denied(format!(
            "reading {asked}'s {what} needs an admin token; {} may read only its own",
            who.name
        )))
    }
}

/// The caller of one of an agent's calls: an admin (any node) or a node
/// credential (its own node, returned). The principal returned acts as
/// the agent in the log (admin), so check the node before proposing.
pub fn agent_caller<T>(
    req: &Request<T>,
    what: &str,
) -> Result<(Principal, Option<String>), Status> {
    let p = caller(req)?;
    match &p.scope {
        Scope::User if p.admin => Ok((p, None)),
        Scope::Node(n) => {
            let node = n.clone();
            agent_certificate(req, &node)?;
            Ok((Principal { admin: true, ..p }, Some(node)))
        }
        other => Err(Status::permission_denied(format!(
            "{what} needs an agent's node credential or an admin token; {} ({}) is neither",
            other.describe(),
            p.name
        ))),
    }
}

/// [`principal`] for a user token; a token of `scope` passes too, acting as
/// its controller (admin) for this call.
pub fn principal_or<T>(req: &Request<T>, scope: Scope) -> Result<Principal, Status> {
    let p = caller(req)?;
    if p.scope == scope {
        return Ok(Principal { admin: true, ..p });
    }
    principal(req)
}

/// With TLS, a node credential comes with its agent's certificate: the
/// certificate must name the same node (`agent:NAME`).
fn agent_certificate<T>(req: &Request<T>, node: &str) -> Result<(), Status> {
    use charter_proto::tls::{Role, installed, peer_of_request};
    if installed().is_none() {
        return Ok(());
    }
    match peer_of_request(req) {
        Some(p) if p.role == Role::Agent && p.id == node => Ok(()),
        // A member may act for any node (`charter dev` runs its agent in
        // its own process); members hold the peer token anyway.
        Some(p) if p.role == Role::Member => Ok(()),
        Some(p) => Err(Status::permission_denied(format!(
            "the node credential of {node} came with the certificate of {p}; an agent presents its own node's (agent:{node})"
        ))),
        None => Err(Status::permission_denied(format!(
            "the node credential of {node} needs its agent's certificate (agent:{node}): pass --tls-cert and --tls-key from `charter tls init`"
        ))),
    }
}

/// With TLS, raft peer traffic and forwarded writes come only from a
/// member's certificate, besides the peer token.
pub fn member_certificate<T>(req: &Request<T>) -> Result<(), Status> {
    use charter_proto::tls::{Role, installed, peer_of_request};
    if installed().is_none() {
        return Ok(());
    }
    match peer_of_request(req) {
        Some(p) if p.role == Role::Member => Ok(()),
        Some(p) => Err(Status::permission_denied(format!(
            "raft peer traffic needs a member's certificate; this one names {p}"
        ))),
        None => Err(Status::permission_denied(
            "raft peer traffic needs a member's certificate; none was presented",
        )),
    }
}

/// Refuses a node-scoped caller naming a node other than its own.
pub fn own_node(scoped: &Option<String>, named: &str, what: &str) -> Result<(), Status> {
    match scoped {
        Some(mine) if mine != named => Err(Status::permission_denied(format!(
            "the node credential of {mine} cannot {what} node {named}"
        ))),
        _ => Ok(()),
    }
}

/// The caller of one of a controller's calls: an admin, or a token of
/// `scope` ([`Scope::Hydra`] or [`Scope::Deployer`]), which then acts as
/// the controller (admin) in the log for this call only.
pub fn controller<T>(req: &Request<T>, scope: Scope, what: &str) -> Result<Principal, Status> {
    let p = caller(req)?;
    if p.scope == Scope::User && p.admin {
        return Ok(p);
    }
    if p.scope == scope {
        return Ok(Principal { admin: true, ..p });
    }
    Err(Status::permission_denied(format!(
        "{what} needs {} or an admin token; {} ({}) is neither",
        scope.describe(),
        p.scope.describe(),
        p.name
    )))
}

/// Refuses non-admins.
pub fn require_admin(p: &Principal, what: &str) -> Result<(), Status> {
    if p.admin {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{what} needs an admin token; {} is not an admin",
            p.name
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_table() {
        let cases: &[(&str, Result<(), &str>)] = &[
            ("secret-aaaa ann admin\nsecret-bbbb bob\n", Ok(())),
            ("# comment\n\nsecret-aaaa ann # trailing\n", Ok(())),
            ("secret-aaaa hy hydra\nsecret-bbbb dep deployer\n", Ok(())),
            (
                "secret-aaaa\n",
                Err("t:1: expected `<token> <principal> [admin|hydra|deployer]`, got 1 field(s)"),
            ),
            (
                "secret-aaaa ann root\n",
                Err(
                    "t:1: expected `admin`, `hydra`, `deployer` or nothing after the principal, got `root`",
                ),
            ),
            (
                "charter-node.x.00 ann\n",
                Err(
                    "t:1: a token may not start with `charter-node.` (node credentials are minted with `charter node credential`)",
                ),
            ),
            (
                "secret-aaaa node:n1\n",
                Err("t:1: principal `node:n1`: names starting with `node:` are agents'"),
            ),
            (
                "short ann\n",
                Err("t:1: token is too short (at least 8 characters)"),
            ),
            (
                "secret-aaaa ann\nsecret-aaaa bob\n",
                Err("t:2: this token is listed twice"),
            ),
            (
                "\n# nothing\n",
                Err("t: no tokens; add a line `<token> <principal> [admin|hydra|deployer]`"),
            ),
        ];
        for (text, want) in cases {
            let got = Tokens::parse(text, "t").map(|_| ());
            assert_eq!(got, want.map_err(String::from), "{text:?}");
        }
    }

    #[test]
    fn check_maps_tokens_to_principals() {
        let t = Tokens::parse("secret-aaaa ann admin\nsecret-bbbb bob\n", "t").unwrap();
        assert_eq!(t.check(Some("Bearer secret-bbbb")).unwrap().name, "bob");
        assert!(!t.check(Some("Bearer secret-bbbb")).unwrap().admin);
        assert!(t.check(Some("Bearer secret-aaaa")).unwrap().admin);
        assert_eq!(
            t.check(Some("Bearer nope")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(t.check(None).is_err());
        assert_eq!(t.peer_token().as_deref(), Some("secret-aaaa"));
    }

    #[test]
    fn node_credentials_name_one_node_under_the_peer_token() {
        let t = Tokens::parse("secret-aaaa ann admin\nsecret-bbbb bob\n", "t").unwrap();
        let cred = t.node_credential("n1").unwrap();
        assert!(cred.starts_with("charter-node.n1."), "{cred}");
        let p = t.check(Some(&format!("Bearer {cred}"))).unwrap();
        assert_eq!(
            (p.name.as_str(), p.admin, &p.scope),
            ("node:n1", false, &Scope::Node("n1".into()))
        );
        // Another node's name with n1's MAC, a cut MAC, another cluster's.
        let mac = cred.rsplit('.').next().unwrap();
        for bad in [
            format!("charter-node.n2.{mac}"),
            format!("charter-node.n1.{}", &mac[..10]),
            format!("charter-node.n1.{mac}00"),
            "charter-node.n1.zz".to_string(),
            Tokens::parse("other-cccc root admin\n", "t")
                .unwrap()
                .node_credential("n1")
                .unwrap(),
        ] {
            let e = t.check(Some(&format!("Bearer {bad}"))).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad}");
        }
        assert_eq!(t.node_credential("../etc"), None);
        assert_eq!(Tokens::insecure().node_credential("n1"), None);
    }
}
