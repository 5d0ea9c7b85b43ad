//! Mutual TLS between the parties of a cluster (rustls through tonic).
//!
//! One cluster CA signs every certificate (`charter tls init`). Each party
//! checks the other's against it:
//! - a **member** certificate (CN `member:ID`, DNS name [`MEMBER_NAME`])
//!   serves the cluster API and the raft peer service, and is what a member
//!   presents when it calls another member or an agent;
//! - an **agent** certificate (CN `agent:NODE`, DNS name [`AGENT_NAME`])
//!   serves the agent's own port and is what the agent presents to members;
//! - a **client** certificate (CN `client:NAME`) is what a person's CLI or
//!   a standalone controller may present; a client without one still gets
//!   an encrypted connection and is known by its token.
//!
//! Clients check a member's certificate for [`MEMBER_NAME`] (and a member an
//! agent's for [`AGENT_NAME`]) rather than for the address they dialled, so
//! one certificate serves whatever address a member is reached at; the CA
//! is the cluster's own, so no outside certificate passes.
//!
//! A process has one identity: [`install`] it once at start; every channel
//! made by [`endpoint`] uses it, and servers take [`Tls::server`].

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The DNS name every member certificate carries and every client checks.
pub const MEMBER_NAME: &str = "charter-member";
/// The DNS name every agent certificate carries and members check.
pub const AGENT_NAME: &str = "charter-agent";

/// What a certificate says its holder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A cluster member.
    Member,
    /// An agent (its id is its node's name).
    Agent,
    /// A person's CLI or a standalone controller.
    Client,
}

impl Role {
    /// The word before the `:` in a certificate's CN.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Agent => "agent",
            Role::Client => "client",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        [Role::Member, Role::Agent, Role::Client]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// The holder a verified peer certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerId {
    /// Member, agent or client.
    pub role: Role,
    /// The member id, node name or client name.
    pub id: String,
}

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.role.as_str(), self.id)
    }
}

/// The CN a certificate for `role` and `id` carries.
pub fn common_name(role: Role, id: &str) -> String {
    format!("{}:{id}", role.as_str())
}

/// Parses a CN written by [`common_name`].
pub fn parse_common_name(cn: &str) -> Option<PeerId> {
    let (role, id) = cn.split_once(':')?;
    Some(PeerId {
        role: Role::parse(role)?,
        id: id.to_string(),
    })
}

/// Where a party's TLS material is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate (PEM).
    pub ca: PathBuf,
    /// Its own certificate and key (PEM); a client may have none.
    pub cert: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// The files `charter tls init` writes for party `name` into `dir`:
    /// `ca.pem`, `NAME.pem` and `NAME-key.pem`.
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: Some((
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}-key.pem")),
            )),
        }
    }
}

/// A party's loaded TLS material.
#[derive(Clone)]
pub struct Tls {
    identity: Option<Identity>,
    ca: Certificate,
    /// Who this party's own certificate names.
    pub me: Option<PeerId>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("me", &self.me).finish()
    }
}

impl Tls {
    /// Reads the files; errors name the file and what is wrong.
    pub fn load(files: &TlsFiles) -> Result<Tls, String> {
        use rustls_pki_types::pem::PemObject;
        let read = |what: &str, p: &Path| {
            std::fs::read(p).map_err(|e| format!("cannot read the TLS {what} {}: {e}", p.display()))
        };
        let ca = read("CA certificate", &files.ca)?;
        if first_cert(&ca).is_none() {
            return Err(format!("{} holds no PEM certificate", files.ca.display()));
        }
        let (identity, me) = match &files.cert {
            None => (None, None),
            Some((cert_path, key_path)) => {
                let cert = read("certificate", cert_path)?;
                let key = read("key", key_path)?;
                let der = first_cert(&cert)
                    .ok_or_else(|| format!("{} holds no PEM certificate", cert_path.display()))?;
                if rustls_pki_types::PrivateKeyDer::from_pem_slice(&key).is_err() {
                    return Err(format!("{} holds no PEM private key", key_path.display()));
                }
                (Some(Identity::from_pem(cert, key)), peer_of(&der))
            }
        };
        Ok(Tls {
            identity,
            ca: Certificate::from_pem(ca),
            me,
        })
    }

    /// A client's settings for reaching `to` (a member or an agent).
    pub fn client(&self, to: Role) -> ClientTlsConfig {
        let name = match to {
            Role::Agent => AGENT_NAME,
            Role::Member | Role::Client => MEMBER_NAME,
        };
        let c = ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .domain_name(name);
        match &self.identity {
            Some(id) => c.identity(id.clone()),
            None => c,
        }
    }

    /// A server's settings: its certificate; a client's certificate, when
    /// it presents one, must be the CA's (a plaintext client fails the
    /// handshake, a client without a certificate is known by its token).
    pub fn server(&self) -> Result<ServerTlsConfig, String> {
        let Some(id) = &self.identity else {
            return Err("a TLS server needs --tls-cert and --tls-key besides --tls-ca".into());
        };
        Ok(ServerTlsConfig::new()
            .identity(id.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(true))
    }
}

/// The DER of the first certificate in a PEM text.
fn first_cert(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem)
        .ok()
        .map(|c| c.as_ref().to_vec())
}

/// Who a DER certificate names, from its subject's CN.
pub fn peer_of(der: &[u8]) -> Option<PeerId> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    parse_common_name(cn)
}

/// Who the verified client certificate of a request names (servers with
/// TLS only; `None` over plaintext or without a certificate).
pub fn peer_of_request<T>(req: &tonic::Request<T>) -> Option<PeerId> {
    let certs = req.peer_certs()?;
    certs.first().and_then(|c| peer_of(c.as_ref()))
}

static INSTALLED: OnceLock<Tls> = OnceLock::new();

/// Makes `tls` this process's identity for every channel [`endpoint`]
/// makes; only the first call counts.
pub fn install(tls: Tls) {
    let _ = INSTALLED.set(tls);
}

/// This process's identity, if [`install`]ed.
pub fn installed() -> Option<&'static Tls> {
    INSTALLED.get()
}

/// An endpoint for `addr` (`HOST:PORT`, or with `http://` / `https://`):
/// TLS to `to` with the installed identity, else plaintext.
pub fn endpoint(addr: &str, to: Role) -> Result<Endpoint, String> {
    let bare = addr
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    match installed() {
        None => Endpoint::from_shared(format!("http://{bare}")).map_err(|e| e.to_string()),
        Some(t) => Endpoint::from_shared(format!("https://{bare}"))
            .and_then(|e| e.tls_config(t.client(to)))
            .map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_round_trip_and_strangers_do_not_parse() {
        let p = parse_common_name(&common_name(Role::Agent, "n1")).unwrap();
        assert_eq!((p.role, p.id.as_str()), (Role::Agent, "n1"));
        assert_eq!(p.to_string(), "agent:n1");
        assert_eq!(parse_common_name("root:x"), None);
        assert_eq!(parse_common_name("member"), None);
    }
}
