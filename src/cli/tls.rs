//! `charter tls init`: a cluster CA and certificates for its parties, and
//! the global `--tls-*` flags that give a process its TLS identity.

use super::output::fail;
use charter_proto::tls::{AGENT_NAME, MEMBER_NAME, Role, Tls, TlsFiles, common_name};
use clap::Subcommand;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// TLS verbs.
#[derive(Subcommand, Debug)]
pub enum TlsCmd {
    /// Write a CA (or reuse the one in DIR) and a certificate and key per
    /// member, agent and client: `ca.pem`, `member-1.pem`, `member-1-key.pem`,
    /// `agent-n1.pem`, `client-admin.pem`, … Keys are 0600; keep `ca-key.pem`
    /// offline once every party has its files.
    Init {
        /// Where the files go (made 0700 if missing).
        dir: PathBuf,
        /// Member ids, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        members: Vec<u64>,
        /// Agents' node names, comma-separated.
        #[arg(long, value_delimiter = ',')]
        agents: Vec<String>,
        /// Client names (people, standalone Hydra or deployer), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "admin")]
        clients: Vec<String>,
    },
}

/// Loads the `--tls-*` flags and makes them this process's identity.
/// Without them, a client command (`dev_server`: its `--server`) talking
/// to the address `charter dev` serves trusts dev's CA, as it finds the
/// dev token.
pub fn install(
    ca: &Option<PathBuf>,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    dev_server: Option<&str>,
) -> anyhow::Result<()> {
    let files = match (ca, cert, key) {
        (None, None, None) => {
            let dir = super::client::dev_tls_dir();
            let serves = std::fs::read_to_string(dir.join("server")).unwrap_or_default();
            let dev =
                dev_server.is_some_and(|s| !serves.trim().is_empty() && s.trim() == serves.trim());
            if !dev || !dir.join("ca.pem").is_file() {
                return Ok(());
            }
            TlsFiles {
                ca: dir.join("ca.pem"),
                cert: None,
            }
        }
        (None, _, _) => {
            return Err(fail(
                "--tls-cert and --tls-key need --tls-ca",
                "TLS checks the other side against the cluster CA",
                "pass --tls-ca ca.pem (from `charter tls init`)",
            ));
        }
        (Some(ca), Some(c), Some(k)) => TlsFiles {
            ca: ca.clone(),
            cert: Some((c.clone(), k.clone())),
        },
        (Some(ca), None, None) => TlsFiles {
            ca: ca.clone(),
            cert: None,
        },
        _ => {
            return Err(fail(
                "--tls-cert and --tls-key go together",
                "",
                "pass both, e.g. --tls-cert member-1.pem --tls-key member-1-key.pem",
            ));
        }
    };
    let tls = Tls::load(&files).map_err(|e| {
        fail(
            "cannot use the TLS files",
            e,
            "make them with `charter tls init DIR`",
        )
    })?;
    charter_proto::tls::install(tls);
    Ok(())
}

/// Runs a `charter tls` verb.
pub fn run(cmd: TlsCmd) -> anyhow::Result<i32> {
    match cmd {
        TlsCmd::Init {
            dir,
            members,
            agents,
            clients,
        } => {
            let made = init(&dir, &members, &agents, &clients)
                .map_err(|e| fail("cannot make the TLS files", e, "check DIR and the names"))?;
            for f in made {
                println!("{}", f.display());
            }
            Ok(0)
        }
    }
}

/// Writes the CA (unless DIR has one) and every party's files; returns
/// the paths written.
pub fn init(
    dir: &Path,
    members: &[u64],
    agents: &[String],
    clients: &[String],
) -> Result<Vec<PathBuf>, String> {
    for n in agents.iter().chain(clients) {
        if !charter_config::limits::name(n) {
            return Err(format!(
                "name {:?}: {}",
                n.chars().take(64).collect::<String>(),
                charter_config::limits::NAME_RULE
            ));
        }
    }
    let (issuer, mut made) = ca(dir)?;
    let parties = members
        .iter()
        .map(|id| (Role::Member, id.to_string()))
        .chain(agents.iter().map(|a| (Role::Agent, a.clone())))
        .chain(clients.iter().map(|c| (Role::Client, c.clone())));
    for (role, id) in parties {
        let dns = match role {
            Role::Member => vec![MEMBER_NAME.to_string()],
            Role::Agent => vec![AGENT_NAME.to_string()],
            Role::Client => vec![],
        };
        made.extend(issue(dir, &issuer, role, &id, dns)?);
    }
    Ok(made)
}

/// `charter dev`'s TLS: a CA (made once) and one certificate for its
/// process, which is member 1 and serves the agent it runs (so it carries
/// both DNS names), in `dir`; `listen` is written to `dir/server` for the
/// CLI. Returns the process's identity.
pub fn init_dev(dir: &Path, listen: &str) -> Result<Tls, String> {
    let files = TlsFiles::in_dir(dir, "member-1");
    let have = files
        .cert
        .as_ref()
        .is_some_and(|(c, k)| c.is_file() && k.is_file() && files.ca.is_file());
    if !have {
        let (issuer, _) = ca(dir)?;
        issue(
            dir,
            &issuer,
            Role::Member,
            "1",
            vec![MEMBER_NAME.to_string(), AGENT_NAME.to_string()],
        )?;
    }
    write(&dir.join("server"), &format!("{listen}\n"), false)?;
    Tls::load(&files)
}

/// The CA in `dir`, made when missing; returns it and the files written.
fn ca(dir: &Path) -> Result<(Issuer<'static, KeyPair>, Vec<PathBuf>), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut made = Vec::new();
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let issuer = if ca_pem.exists() || ca_key.exists() {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let key = KeyPair::from_pem(&read(&ca_key)?)
            .map_err(|e| format!("{}: not a private key: {e}", ca_key.display()))?;
        Issuer::from_ca_cert_pem(&read(&ca_pem)?, key)
            .map_err(|e| format!("{}: not a CA certificate: {e}", ca_pem.display()))?
    } else {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "charter cluster CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params);
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        write(&ca_pem, &cert.pem(), false)?;
        write(&ca_key, &key.serialize_pem(), true)?;
        made.extend([ca_pem, ca_key]);
        Issuer::new(params, key)
    };
    Ok((issuer, made))
}

/// Issues the certificate of `role` `id` with DNS names `dns` into `dir`.
fn issue(
    dir: &Path,
    issuer: &Issuer<'static, KeyPair>,
    role: Role,
    id: &str,
    dns: Vec<String>,
) -> Result<Vec<PathBuf>, String> {
    {
        let mut params = CertificateParams::new(dns).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name(role, id));
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Members and agents serve and call; clients only call.
        params.extended_key_usages = match role {
            Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            _ => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        validity(&mut params);
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params.signed_by(&key, issuer).map_err(|e| e.to_string())?;
        let files = TlsFiles::in_dir(dir, &format!("{}-{id}", role.as_str()));
        let Some((cert_path, key_path)) = files.cert else {
            return Ok(Vec::new());
        };
        write(&cert_path, &cert.pem(), false)?;
        write(&key_path, &key.serialize_pem(), true)?;
        Ok(vec![cert_path, key_path])
    }
}

/// Valid from the start of this year for ten years.
fn validity(p: &mut CertificateParams) {
    use chrono::Datelike;
    let year = chrono::Utc::now().year();
    p.not_before = rcgen::date_time_ymd(year, 1, 1);
    p.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
}

/// Writes a file (0600 for keys, 0644 for certificates), replacing it.
fn write(path: &Path, text: &str, secret: bool) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_names_each_party_and_reuses_its_ca() {
        let d = tempfile::tempdir().unwrap();
        let made = init(d.path(), &[1, 2], &["n1".into()], &["admin".into()]).unwrap();
        assert_eq!(made.len(), 2 + 2 * 4, "{made:?}");
        let tls = Tls::load(&TlsFiles::in_dir(d.path(), "agent-n1")).unwrap();
        assert_eq!(tls.me.unwrap().to_string(), "agent:n1");
        let ca = std::fs::read(d.path().join("ca.pem")).unwrap();
        // A second run adds a party under the same CA.
        let again = init(d.path(), &[], &["n2".into()], &[]).unwrap();
        assert_eq!(again.len(), 2, "{again:?}");
        assert_eq!(std::fs::read(d.path().join("ca.pem")).unwrap(), ca);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(d.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(
            (mode("ca-key.pem"), mode("agent-n2-key.pem")),
            (0o600, 0o600)
        );
        assert!(init(d.path(), &[], &["../x".into()], &[]).is_err());
    }
}
