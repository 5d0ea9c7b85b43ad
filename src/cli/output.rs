//! Output for people (aligned tables) and for scripts (`--json`), and the
//! three-part error format: what failed, why, what to do.

use chrono::{TimeZone, Utc};
use serde::Serialize;

/// Prints rows as an aligned table with a header.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| r.iter().map(|c| one_line(c)).collect())
        .collect();
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

/// `text` on one line, safe to print: a line end, a tab or another control
/// character (an escape sequence a command or a reason carries, say) is
/// written as its escape (`\n`, `\t`, `\u{1b}`), so one row stays one line
/// and no cell can drive the terminal.
pub fn one_line(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for ch in text.chars() {
        match ch {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn control_characters_are_written_as_escapes() {
        assert_eq!(one_line("sh -c echo \"a\nb\""), "sh -c echo \"a\\nb\"");
        assert_eq!(one_line("a\tb\r\u{1b}[2J"), "a\\tb\\r\\u{1b}[2J");
        assert_eq!(one_line("plain é"), "plain é");
    }
}
