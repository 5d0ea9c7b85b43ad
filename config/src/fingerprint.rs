//! Fingerprints: the identity of a submitted config version. A template over
//! `{user} {kind} {name} {commit} {date} {hash}` is rendered, and the full
//! content hash rides along, so equal fingerprints are the same work.
//! `{hash}` renders the first 12 hex digits; `{{` and `}}` are literal braces.

use std::fmt;

/// The values a template may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vars {
    /// The submitting principal.
    pub user: String,
    /// The config kind (`lease`, `app`, `cron`, …).
    pub kind: String,
    /// The config's name.
    pub name: String,
    /// A source commit, when there is one.
    pub commit: String,
    /// The day, `YYYY-MM-DD` (given by the caller; never read from a clock here).
    pub date: String,
    /// The full content hash of the canonical config.
    pub hash: String,
}

/// A rendered fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    /// The rendered template.
    pub id: String,
    /// The full content hash.
    pub hash: String,
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// The placeholders a template may use.
pub const PLACEHOLDERS: &[&str] = &["user", "kind", "name", "commit", "date", "hash"];

/// Checks a template without rendering it.
pub fn check(template: &str) -> Result<(), String> {
    render(template, &Vars::default()).map(|_| ())
}

/// Renders `template` with `vars`. Errors name the bad placeholder and the
/// byte offset where it starts.
pub fn render(template: &str, vars: &Vars) -> Result<Fingerprint, String> {
    if template.trim().is_empty() {
        return Err(
            "fingerprint template is empty; the default is {user}/{kind}/{name}@{commit}".into(),
        );
    }
    let mut out = String::new();
    let mut rest = template;
    let mut offset = 0;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            offset += i + 2;
            continue;
        }
        if tail.starts_with('}') {
            return Err(format!(
                "unmatched `}}` at offset {}; write `}}}}` for a literal brace",
                offset + i
            ));
        }
        let Some(end) = tail.find('}') else {
            return Err(format!("unclosed `{{` at offset {}", offset + i));
        };
        let name = &tail[1..end];
        let v = match name {
            "user" => vars.user.as_str(),
            "kind" => vars.kind.as_str(),
            "name" => vars.name.as_str(),
            "commit" => vars.commit.as_str(),
            "date" => vars.date.as_str(),
            "hash" => &vars.hash[..vars.hash.len().min(12)],
            other => {
                return Err(format!(
                    "unknown placeholder `{{{other}}}` at offset {}; expected one of {}",
                    offset + i,
                    PLACEHOLDERS
                        .iter()
                        .map(|p| format!("{{{p}}}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
            }
        };
        out.push_str(v);
        rest = &tail[end + 1..];
        offset += i + end + 1;
    }
    out.push_str(rest);
    Ok(Fingerprint {
        id: out,
        hash: vars.hash.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars {
            user: "ann".into(),
            kind: "app".into(),
            name: "web".into(),
            commit: "3f2a9c1".into(),
            date: "2026-11-22".into(),
            hash: "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9".into(),
        }
    }

    #[test]
    fn render_table() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("{user}/{kind}/{name}@{commit}", Ok("ann/app/web@3f2a9c1")),
            (
                "{user}/{kind}/{name}@{commit}/{date}",
                Ok("ann/app/web@3f2a9c1/2026-11-22"),
            ),
            ("{name}-{hash}", Ok("web-a1b2c3d4e5f6")),
            ("literal {{braces}}", Ok("literal {braces}")),
            ("{name}{name}", Ok("webweb")),
            (
                "{nme}",
                Err(
                    "unknown placeholder `{nme}` at offset 0; expected one of {user} {kind} {name} {commit} {date} {hash}",
                ),
            ),
            ("x{user", Err("unclosed `{` at offset 1")),
            (
                "a}b",
                Err("unmatched `}` at offset 1; write `}}` for a literal brace"),
            ),
            (
                "  ",
                Err("fingerprint template is empty; the default is {user}/{kind}/{name}@{commit}"),
            ),
        ];
        for (tpl, want) in cases {
            let got = render(tpl, &vars()).map(|f| f.id);
            assert_eq!(got, want.map(String::from).map_err(String::from), "{tpl}");
        }
    }

    #[test]
    fn equal_fingerprints_are_the_same_work() {
        let a = render("{name}@{commit}", &vars()).unwrap();
        let mut other = vars();
        other.hash = "ff".repeat(32);
        let b = render("{name}@{commit}", &other).unwrap();
        assert_eq!(a.id, b.id);
        assert_ne!(a, b, "a different content hash is different work");
        assert_eq!(a, render("{name}@{commit}", &vars()).unwrap());
    }
}
