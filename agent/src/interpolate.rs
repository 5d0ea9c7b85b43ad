//! `${NAME}` in a task's argv, filled in from what the agent gives the task
//! (as Nomad interpolates `${NOMAD_PORT_http}`): a command run without a
//! shell, like `python3 -m http.server ${PORT}`, still gets its port.
//!
//! Only `${PORT}`, `${PORT_<NAME>}` and `${CHARTER_*}` are filled in, and
//! only when the task has them; anything else (`$PORT` without braces, an
//! unknown name, a user's own `${X}`) is left exactly as written.

use std::collections::BTreeMap;

/// `arg` with each known `${NAME}` replaced by its value in `vars`.
pub fn expand(arg: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 2..];
        let known = tail.find('}').and_then(|end| {
            let name = &tail[..end];
            let ours = name == "PORT" || name.starts_with("PORT_") || name.starts_with("CHARTER_");
            ours.then(|| vars.get(name)).flatten().map(|v| (v, end))
        });
        match known {
            Some((v, end)) => {
                out.push_str(v);
                rest = &tail[end + 1..];
            }
            None => {
                out.push_str("${");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn ports_and_charter_variables_are_filled_in_and_nothing_else() {
        let vars = [
            ("PORT", "8080"),
            ("PORT_ADMIN", "9090"),
            ("CHARTER_TASK_ID", "7"),
            ("HOME", "/root"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(expand("${PORT}", &vars), "8080");
        assert_eq!(expand("--bind=:${PORT_ADMIN}/x", &vars), "--bind=:9090/x");
        assert_eq!(expand("t${CHARTER_TASK_ID}${PORT}", &vars), "t78080");
        for same in [
            "$PORT",
            "${HOME}",
            "${PORT_NONE}",
            "${PORT",
            "${",
            "a}b",
            "${}",
        ] {
            assert_eq!(expand(same, &vars), same);
        }
    }
}
