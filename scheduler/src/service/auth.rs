//! Bearer-token authentication. A token file holds one token per line:
//! `<token> <principal> [admin]`; `#` starts a comment.

use std::collections::HashMap;
use std::path::Path;
use tonic::{Request, Status};

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The principal's name (a user nick or a controller).
    pub name: String,
    /// Admins see and change everything.
    pub admin: bool,
}

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
            let admin = match parts.as_slice() {
                [_, _] => false,
                [_, _, "admin"] => true,
                [_, _, other] => {
                    return Err(format!(
                        "{at}: expected `admin` or nothing after the principal, got `{other}`"
                    ));
                }
                _ => {
                    return Err(format!(
                        "{at}: expected `<token> <principal> [admin]`, got {} field(s)",
                        parts.len()
                    ));
                }
            };
            if parts[0].len() < 8 {
                return Err(format!("{at}: token is too short (at least 8 characters)"));
            }
            let p = Principal {
                name: parts[1].to_string(),
                admin,
            };
            if by_token.insert(parts[0].to_string(), p).is_some() {
                return Err(format!("{at}: this token is listed twice"));
            }
        }
        if by_token.is_empty() {
            return Err(format!(
                "{origin}: no tokens; add a line `<token> <principal> [admin]`"
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

    /// The principal for a bearer token.
    pub fn check(&self, header: Option<&str>) -> Result<Principal, Status> {
        if self.insecure {
            return Ok(Principal {
                name: "anonymous".into(),
                admin: true,
            });
        }
        let Some(h) = header else {
            return Err(Status::unauthenticated(
                "no token: pass --token, set CHARTER_TOKEN, or run `charter dev` for a dev token",
            ));
        };
        let token = h.strip_prefix("Bearer ").unwrap_or(h).trim();
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

/// The caller of a request that went through the interceptor.
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("request was not authenticated"))
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
            (
                "secret-aaaa\n",
                Err("t:1: expected `<token> <principal> [admin]`, got 1 field(s)"),
            ),
            (
                "secret-aaaa ann root\n",
                Err("t:1: expected `admin` or nothing after the principal, got `root`"),
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
                Err("t: no tokens; add a line `<token> <principal> [admin]`"),
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
}
