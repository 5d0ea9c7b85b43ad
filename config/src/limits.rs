//! Limits on what callers may write: which characters a name may hold and
//! how large each field may be. The config readers check them (with file,
//! line and field) and the servers check them again on every write that
//! arrives over the wire, so a request past a limit is refused before it
//! reaches the replicated state (and an agent's assignment list, which
//! carries these fields, stays small).
//!
//! | what | limit |
//! | --- | --- |
//! | names (node, pool, app, cron job, task) | [`name`]: 1-63 of `A-Z a-z 0-9 - . _`, starting with a letter or digit |
//! | label key / value | [`LABEL_KEY_MAX`] / [`LABEL_VALUE_MAX`] bytes; at most [`LABELS_MAX`] labels |
//! | constraints | at most [`CONSTRAINTS_MAX`], each at most [`CONSTRAINT_MAX`] bytes |
//! | reason | [`REASON_MAX`] bytes |
//! | command (or a health-check command) | at most [`ARGS_MAX`] arguments and [`COMMAND_MAX`] bytes in all |
//! | env | at most [`ENV_MAX`] variables; keys `[A-Za-z_][A-Za-z0-9_]*` of at most [`ENV_KEY_MAX`] bytes; [`ENV_BYTES_MAX`] bytes in all |
//! | ports | at most [`PORTS_MAX`] names |
//! | paths in a sandbox (artifact) | [`relative_path`]: relative, no `..`, at most [`PATH_MAX`] bytes |
//! | file names (artifact) | [`file_name`]: one component, no `/`, not `.` or `..` |
//!
//! Anything that becomes a path is checked again where the path is made
//! (the artifact store, the agent's sandbox), not only here.

use std::collections::BTreeMap;

/// Most labels on a node or pool.
pub const LABELS_MAX: usize = 64;
/// Longest label key.
pub const LABEL_KEY_MAX: usize = 63;
/// Longest label value.
pub const LABEL_VALUE_MAX: usize = 255;
/// Most constraints on a request.
pub const CONSTRAINTS_MAX: usize = 32;
/// Longest constraint expression.
pub const CONSTRAINT_MAX: usize = 512;
/// Longest lease reason.
pub const REASON_MAX: usize = 1024;
/// Most arguments of a command.
pub const ARGS_MAX: usize = 1024;
/// Most bytes of a command, all arguments together.
pub const COMMAND_MAX: usize = 64 << 10;
/// Most environment variables of a task.
pub const ENV_MAX: usize = 256;
/// Longest environment variable name.
pub const ENV_KEY_MAX: usize = 128;
/// Most bytes of a task's environment, keys and values together.
pub const ENV_BYTES_MAX: usize = 64 << 10;
/// Most named ports of a task.
pub const PORTS_MAX: usize = 16;
/// Longest path inside a sandbox.
pub const PATH_MAX: usize = 255;
/// Longest free text of other kinds (a health-check path, a message).
pub const TEXT_MAX: usize = 1024;

/// A name of a node, pool, app, cron job or task: 1-63 letters, digits,
/// `-`, `.` or `_`, starting with a letter or digit (so never `.`, `..` or
/// anything with a `/`: safe as one path component).
pub fn name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// What [`name`] allows, for messages.
pub const NAME_RULE: &str =
    "1-63 letters, digits, '-', '.' or '_', starting with a letter or digit";

/// One path component: not empty, no `/` or NUL, not `.` or `..`, at most
/// [`PATH_MAX`] bytes.
pub fn file_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= PATH_MAX && s != "." && s != ".." && !s.contains(['/', '\0'])
}

/// A relative path that stays inside its directory: components that are
/// each a [`file_name`] (no `..`, no leading `/`), at most [`PATH_MAX`]
/// bytes in all.
pub fn relative_path(s: &str) -> bool {
    s.len() <= PATH_MAX && !s.starts_with('/') && s.split('/').all(file_name)
}

/// An environment variable name.
pub fn env_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= ENV_KEY_MAX
        && k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a lease reason.
pub fn reason(r: &str) -> Result<(), String> {
    if r.len() > REASON_MAX {
        return Err(format!(
            "the reason is {} bytes; at most {REASON_MAX} are kept",
            r.len()
        ));
    }
    Ok(())
}

/// Checks a list of constraint expressions' sizes (their syntax is
/// [`crate::constraint::Constraint::parse`]'s).
pub fn constraints(list: &[String]) -> Result<(), String> {
    if list.len() > CONSTRAINTS_MAX {
        return Err(format!(
            "{} constraints; at most {CONSTRAINTS_MAX}",
            list.len()
        ));
    }
    match list.iter().find(|c| c.len() > CONSTRAINT_MAX) {
        Some(c) => Err(format!(
            "a constraint of {} bytes; at most {CONSTRAINT_MAX}",
            c.len()
        )),
        None => Ok(()),
    }
}

/// Checks labels: how many, and each key's and value's size and characters.
pub fn labels(l: &BTreeMap<String, String>) -> Result<(), String> {
    if l.len() > LABELS_MAX {
        return Err(format!("{} labels; at most {LABELS_MAX}", l.len()));
    }
    for (k, v) in l {
        let key_ok = !k.is_empty()
            && k.len() <= LABEL_KEY_MAX
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !key_ok {
            return Err(format!(
                "label key {:?}: 1-{LABEL_KEY_MAX} letters, digits, '-', '_', '.' or '/'",
                cut(k)
            ));
        }
        if v.len() > LABEL_VALUE_MAX || v.chars().any(char::is_control) {
            return Err(format!(
                "label {k}: a value of at most {LABEL_VALUE_MAX} bytes with no control characters"
            ));
        }
    }
    Ok(())
}

/// Checks a command (or a health-check command): how many arguments and
/// how many bytes in all. `what` names it in the message.
pub fn command(what: &str, argv: &[String]) -> Result<(), String> {
    if argv.len() > ARGS_MAX {
        return Err(format!(
            "{what} has {} arguments; at most {ARGS_MAX}",
            argv.len()
        ));
    }
    let bytes: usize = argv.iter().map(String::len).sum();
    if bytes > COMMAND_MAX {
        return Err(format!(
            "{what} is {bytes} bytes; at most {COMMAND_MAX} (put long input in a file)"
        ));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(format!("{what} holds a NUL byte, which no argument may"));
    }
    Ok(())
}

/// Checks a task's environment: names, count and total size.
pub fn env<'a>(vars: impl IntoIterator<Item = (&'a String, &'a String)>) -> Result<(), String> {
    let (mut n, mut bytes) = (0usize, 0usize);
    for (k, v) in vars {
        if !env_key(k) {
            return Err(format!(
                "env name {:?}: letters, digits and '_', not starting with a digit, at most {ENV_KEY_MAX} bytes",
                cut(k)
            ));
        }
        if v.contains('\0') {
            return Err(format!("env {k} holds a NUL byte"));
        }
        n += 1;
        bytes += k.len() + v.len();
    }
    if n > ENV_MAX {
        return Err(format!("{n} env variables; at most {ENV_MAX}"));
    }
    if bytes > ENV_BYTES_MAX {
        return Err(format!(
            "the env is {bytes} bytes; at most {ENV_BYTES_MAX} (put large values in a file)"
        ));
    }
    Ok(())
}

/// Checks free text of other kinds (`what` names it).
pub fn text(what: &str, t: &str) -> Result<(), String> {
    if t.len() > TEXT_MAX {
        return Err(format!("{what} is {} bytes; at most {TEXT_MAX}", t.len()));
    }
    Ok(())
}

/// The start of a long value, for a message.
fn cut(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        for ok in ["hello", "a", "web-1.b_c", "9z"] {
            assert!(name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            "a/b",
            "../x",
            &"x".repeat(64),
            "a b",
            "é",
        ] {
            assert!(!name(bad), "{bad}");
        }
        for ok in ["out/a", "a", "x/y/z.bin", ".hidden"] {
            assert!(relative_path(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../a",
            "a/../../b",
            "a//b",
            "a/.",
            &"x".repeat(256),
        ] {
            assert!(!relative_path(bad), "{bad}");
        }
        assert!(file_name("hello") && !file_name("a/b") && !file_name(".."));
        assert!(env_key("PATH") && env_key("_x1") && !env_key("1X") && !env_key("A-B"));
    }

    #[test]
    fn sizes_name_the_limit() {
        assert!(reason(&"r".repeat(REASON_MAX)).is_ok());
        assert!(
            reason(&"r".repeat(120_000))
                .unwrap_err()
                .contains("at most 1024")
        );
        let argv = vec!["x".repeat(COMMAND_MAX)];
        assert!(command("the command", &argv).is_ok());
        let long = vec!["x".repeat(COMMAND_MAX + 1)];
        assert!(
            command("the command", &long)
                .unwrap_err()
                .contains("65537 bytes")
        );
        let many: BTreeMap<String, String> = (0..=ENV_MAX)
            .map(|i| (format!("K{i}"), String::new()))
            .collect();
        assert!(env(&many).unwrap_err().contains("257 env variables"));
        let bad: BTreeMap<String, String> = [("A=B".to_string(), String::new())].into();
        assert!(env(&bad).unwrap_err().contains("env name"));
        let l: BTreeMap<String, String> = [("gpu".to_string(), "\n".to_string())].into();
        assert!(labels(&l).is_err());
        assert!(constraints(&vec!["a=b".to_string(); 33]).is_err());
    }
}
