//! Push webhooks (`POST /hooks/git`): who sent it, whether it is signed
//! with the app's secret, and what was pushed.
//!
//! - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`,
//!   delivery id in `X-GitHub-Delivery`.
//! - Gitea (and Forgejo): `X-Gitea-Signature: <hex HMAC-SHA256>`, delivery
//!   id in `X-Gitea-Delivery`.
//! - GitLab: `X-Gitlab-Token: <the secret>`, delivery id in
//!   `X-Gitlab-Event-UUID`.
//!
//! Signatures and tokens are compared in constant time. Pure: no IO, no
//! clock; the HTTP handler passes the lower-cased headers and the body.

use sha2::Sha256;
use std::collections::BTreeMap;

/// Where a delivery came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// GitHub.
    GitHub,
    /// Gitea or Forgejo.
    Gitea,
    /// GitLab.
    GitLab,
}

/// Why a delivery is refused (the handler answers 401 or 400 and logs it).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No signature or token header of a known provider.
    #[error("no X-Hub-Signature-256, X-Gitea-Signature or X-Gitlab-Token header")]
    Unsigned,
    /// The signature or token does not match the app's secret.
    #[error("the {0} signature does not match the app's secret")]
    BadSignature(&'static str),
    /// The app has no secret, so no delivery can be trusted.
    #[error("the app has no webhook secret; set secret in its app.toml")]
    NoSecret,
    /// The body is not a push payload.
    #[error("not a push payload: {0}")]
    NotAPush(String),
    /// No delivery id, or not one Charter keeps: a push without one could be
    /// a replay, since only the body is signed.
    #[error(
        "no usable delivery id (X-GitHub-Delivery, X-Gitea-Delivery or X-Gitlab-Event-UUID: 1-128 printable characters); a push without one could be a replay"
    )]
    NoDelivery,
}

impl Refused {
    /// Whether the sender (not the signature) is at fault: answered 400.
    pub fn bad_request(&self) -> bool {
        matches!(self, Refused::NotAPush(_) | Refused::NoDelivery)
    }
}

/// A verified push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// Who sent it.
    pub provider: Provider,
    /// The delivery id (replays carry the same one).
    pub delivery: String,
    /// The pushed branch, without `refs/heads/`.
    pub branch: String,
    /// The new head commit.
    pub commit: String,
    /// Every URL the payload gives for the repository.
    pub repo_urls: Vec<String>,
}

/// HMAC-SHA256 (RFC 2104) of `msg` under `key` (the `hmac` crate).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    // An HMAC takes a key of any length: `new_from_slice` cannot fail.
    let Ok(mut m) = hmac::Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of any length")
    };
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// Equal bytes, in time that depends only on the lengths (`subtle`).
pub fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Whether `sig_hex` is the HMAC of `body` under `secret`, checked in
/// constant time.
fn signed(sig_hex: &str, secret: &str, body: &[u8]) -> bool {
    use hmac::Mac;
    let Ok(sig) = hex::decode(sig_hex.trim()) else {
        return false;
    };
    let Ok(mut m) = hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    m.update(body);
    m.verify_slice(&sig).is_ok()
}

/// The repository URLs a push payload names (GitHub and Gitea put them
/// under `repository`, GitLab under `project`); read before any signature
/// is checked, to find the app whose secret checks it.
pub fn repo_urls(payload: &serde_json::Value) -> Vec<String> {
    let mut urls = Vec::new();
    for (obj, keys) in [
        (
            "repository",
            &["clone_url", "html_url", "ssh_url", "git_url", "url"][..],
        ),
        ("project", &["git_http_url", "git_ssh_url", "web_url"][..]),
    ] {
        for k in keys {
            if let Some(u) = payload[obj][k].as_str() {
                urls.push(u.to_string());
            }
        }
    }
    urls
}

/// Checks a delivery against `secret` and reads the push from it.
/// `headers` are lower-cased names.
pub fn verify(
    headers: &BTreeMap<String, String>,
    body: &[u8],
    secret: &str,
) -> Result<Push, Refused> {
    let h = |k: &str| headers.get(k).map(String::as_str);
    let (provider, delivery) = if let Some(sig) = h("x-hub-signature-256") {
        if secret.is_empty() {
            return Err(Refused::NoSecret);
        }
        let hex = sig.strip_prefix("sha256=").unwrap_or("");
        if !signed(hex, secret, body) {
            return Err(Refused::BadSignature("GitHub"));
        }
        (Provider::GitHub, h("x-github-delivery"))
    } else if let Some(sig) = h("x-gitea-signature") {
        if secret.is_empty() {
            return Err(Refused::NoSecret);
        }
        if !signed(sig, secret, body) {
            return Err(Refused::BadSignature("Gitea"));
        }
        (Provider::Gitea, h("x-gitea-delivery"))
    } else if let Some(token) = h("x-gitlab-token") {
        if secret.is_empty() {
            return Err(Refused::NoSecret);
        }
        if !constant_eq(token.as_bytes(), secret.as_bytes()) {
            return Err(Refused::BadSignature("GitLab"));
        }
        (Provider::GitLab, h("x-gitlab-event-uuid"))
    } else {
        return Err(Refused::Unsigned);
    };
    let delivery = delivery
        .filter(|d| (1..=128).contains(&d.len()) && d.chars().all(|c| c.is_ascii_graphic()))
        .ok_or(Refused::NoDelivery)?;
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| Refused::NotAPush(format!("bad JSON: {e}")))?;
    let git_ref = v["ref"]
        .as_str()
        .ok_or_else(|| Refused::NotAPush("no \"ref\"".into()))?;
    let branch = git_ref
        .strip_prefix("refs/heads/")
        .ok_or_else(|| Refused::NotAPush(format!("{git_ref} is not a branch")))?
        .to_string();
    let commit = v["after"]
        .as_str()
        .filter(|c| c.len() >= 7 && c.chars().all(|x| x.is_ascii_hexdigit()))
        .ok_or_else(|| Refused::NotAPush("no commit in \"after\"".into()))?
        .to_string();
    let repo_urls = repo_urls(&v);
    Ok(Push {
        provider,
        delivery: delivery.to_string(),
        branch,
        commit,
        repo_urls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hmac_matches_rfc_4231_and_githubs_example() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_sha256(b"It's a Secret to Everybody", b"Hello, World!")),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert_eq!(
            hex::encode(hmac_sha256(&[b'k'; 100], b"long key")),
            "5903eedefe0bba3f15b658715e41d71f1848739bddf19e497e968df5723dcd56"
        );
    }

    const BODY: &str = r#"{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567",
        "repository":{"clone_url":"https://git.example/hello.git"}}"#;

    #[test]
    fn each_provider_is_checked_against_the_secret() {
        let sig = hex::encode(hmac_sha256(b"s3cret", BODY.as_bytes()));
        let gh = headers(&[
            ("x-hub-signature-256", &format!("sha256={sig}")),
            ("x-github-delivery", "d-1"),
        ]);
        let p = verify(&gh, BODY.as_bytes(), "s3cret").unwrap();
        assert_eq!(p.provider, Provider::GitHub);
        assert_eq!((p.branch.as_str(), p.delivery.as_str()), ("main", "d-1"));
        assert_eq!(p.commit, "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(p.repo_urls, ["https://git.example/hello.git"]);
        assert_eq!(
            verify(&gh, BODY.as_bytes(), "other"),
            Err(Refused::BadSignature("GitHub"))
        );
        let tampered = BODY.replace("main", "evil");
        assert!(verify(&gh, tampered.as_bytes(), "s3cret").is_err());
        let gitea = headers(&[("x-gitea-signature", &sig), ("x-gitea-delivery", "g-1")]);
        assert_eq!(
            verify(&gitea, BODY.as_bytes(), "s3cret").unwrap().provider,
            Provider::Gitea
        );
        let gitlab = headers(&[("x-gitlab-token", "s3cret"), ("x-gitlab-event-uuid", "u-1")]);
        assert_eq!(
            verify(&gitlab, BODY.as_bytes(), "s3cret").unwrap().delivery,
            "u-1"
        );
        let wrong = headers(&[("x-gitlab-token", "s3crex")]);
        assert_eq!(
            verify(&wrong, BODY.as_bytes(), "s3cret"),
            Err(Refused::BadSignature("GitLab"))
        );
        assert_eq!(
            verify(&headers(&[]), BODY.as_bytes(), "s3cret"),
            Err(Refused::Unsigned)
        );
        assert_eq!(verify(&gh, BODY.as_bytes(), ""), Err(Refused::NoSecret));
        // Only the body is signed: a push without its delivery id, or with
        // one Charter would not keep, could be a replay.
        let undelivered = headers(&[("x-hub-signature-256", &format!("sha256={sig}"))]);
        assert_eq!(
            verify(&undelivered, BODY.as_bytes(), "s3cret"),
            Err(Refused::NoDelivery)
        );
        let long = "d".repeat(129);
        let odd = headers(&[
            ("x-hub-signature-256", &format!("sha256={sig}")),
            ("x-github-delivery", &long),
        ]);
        assert_eq!(
            verify(&odd, BODY.as_bytes(), "s3cret"),
            Err(Refused::NoDelivery)
        );
        assert!(Refused::NoDelivery.bad_request() && !Refused::Unsigned.bad_request());
    }

    proptest::proptest! {
        /// Any headers and body: a refusal or a push, never a panic; and
        /// nothing unsigned with the secret gets through.
        #[test]
        fn deliveries_never_panic_and_forgeries_never_pass(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            sig in "[0-9a-f]{0,70}",
            which in 0..4usize,
        ) {
            let name = ["x-hub-signature-256", "x-gitea-signature", "x-gitlab-token", "x-other"][which];
            let value = if which == 0 { format!("sha256={sig}") } else { sig.clone() };
            let h = headers(&[(name, &value)]);
            let real = hex::encode(hmac_sha256(b"s3cret", &body));
            let forged = sig != real && sig != "s3cret";
            if verify(&h, &body, "s3cret").is_ok() {
                proptest::prop_assert!(!forged);
            }
        }
    }

    #[test]
    fn a_tag_push_or_garbage_is_not_a_push() {
        let body = BODY.replace("refs/heads/main", "refs/tags/v1");
        let sig = hex::encode(hmac_sha256(b"s", body.as_bytes()));
        let signed = |sig: &str| {
            headers(&[
                ("x-hub-signature-256", &format!("sha256={sig}")),
                ("x-github-delivery", "d-1"),
            ])
        };
        let h = signed(&sig);
        assert!(matches!(
            verify(&h, body.as_bytes(), "s"),
            Err(Refused::NotAPush(_))
        ));
        let sig = hex::encode(hmac_sha256(b"s", b"{not json"));
        let h = signed(&sig);
        assert!(matches!(
            verify(&h, b"{not json", "s"),
            Err(Refused::NotAPush(_))
        ));
    }
}
