//! Output for people (aligned tables) and for scripts (`--json`), and the
//! three-part error format: what failed, why, what to do.

use chrono::{TimeZone, Utc};
use serde::Serialize;

/// Prints rows as an aligned table with a header.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < width.len() {
                width[i] = width[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// Prints a value as pretty JSON.
pub fn json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Unix ms as RFC 3339 (UTC, second precision); `-` for 0.
pub fn time(ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// A user-facing error with a reason and a hint.
#[derive(Debug)]
pub struct UserError {
    /// What failed.
    pub what: String,
    /// Why (may be several lines).
    pub why: Vec<String>,
    /// What to do.
    pub hint: Option<String>,
    /// The gRPC code when a server refused, else a kind of our own
    /// (`invalid_input`).
    pub code: Option<String>,
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.what)?;
        for w in &self.why {
            write!(f, "\n  {w}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for UserError {}

/// A [`UserError`] as an `anyhow::Error`.
pub fn fail(
    what: impl Into<String>,
    why: impl Into<String>,
    hint: impl Into<String>,
) -> anyhow::Error {
    let why = why.into();
    UserError {
        what: what.into(),
        why: if why.is_empty() { vec![] } else { vec![why] },
        hint: Some(hint.into()).filter(|h: &String| !h.is_empty()),
        code: None,
    }
    .into()
}

/// Any error as one JSON object for stderr under `--json`:
/// `{"error": {"code", "message", "hint"}}` (`message` holds what failed
/// and why, as the plain form does).
pub fn error_json(e: &anyhow::Error) -> String {
    let (code, message, hint) = match e.downcast_ref::<UserError>() {
        Some(u) => {
            let mut m = u.what.clone();
            for w in &u.why {
                m.push_str(": ");
                m.push_str(w);
            }
            (
                u.code.clone().unwrap_or_else(|| "invalid_input".into()),
                m,
                u.hint.clone(),
            )
        }
        None => (
            "error".to_string(),
            e.chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": "),
            None,
        ),
    };
    serde_json::json!({"error": {"code": code, "message": message, "hint": hint}}).to_string()
}

/// Formats any error for stderr, starting with `error: `.
pub fn format_error(e: &anyhow::Error) -> String {
    if let Some(u) = e.downcast_ref::<UserError>() {
        return format!("error: {u}");
    }
    let mut s = format!("error: {e}");
    for cause in e.chain().skip(1) {
        s.push_str(&format!("\n  {cause}"));
    }
    s
}
