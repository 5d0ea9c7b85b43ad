//! Property-based fuzzing: no input makes config parsing or constraint
//! parsing panic, and every refusal names the file. `PROPTEST_CASES` sets
//! how many inputs (default 256 per target).

use charter_config::constraint::Constraint;
use charter_config::load;
use proptest::prelude::*;

/// TOML-ish text: fragments that hit the parser's interesting paths.
fn tomlish() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("cpu = ".to_string()),
        Just("mem = ".to_string()),
        Just("for = ".to_string()),
        Just("kind = \"node\"\n".to_string()),
        Just("labels = { a = \"b\" }\n".to_string()),
        Just("constraints = [".to_string()),
        Just("\"2h\"\n".to_string()),
        Just("\"4GiB\"\n".to_string()),
        Just("[x]\n".to_string()),
        Just("[[job]]\n".to_string()),
        Just("kind = \"app\"\n".to_string()),
        Just("[build]\n".to_string()),
        Just("[run]\n".to_string()),
        Just("[health]\n".to_string()),
        Just("name = \"a\"\nrepo = \"/r\"\n".to_string()),
        Just("command = [\"x\"]\n".to_string()),
        Just("ports = [".to_string()),
        "[ -~]{0,12}",
        "[0-9.]{1,8}\n",
    ];
    prop::collection::vec(atom, 0..12).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn config_parsing_never_panics(src in tomlish()) {
        if let Err(d) = load("f.toml", &src) {
            prop_assert!(!d.0.is_empty());
            for x in &d.0 {
                prop_assert_eq!(&x.file, "f.toml");
                prop_assert!(!x.message.is_empty());
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(src in "\\PC{0,200}") {
        let _ = load("f.toml", &src);
    }

    #[test]
    fn constraints_parse_or_explain_and_round_trip(s in "[a-z!<>=(), .0-9]{0,24}") {
        match Constraint::parse(&s) {
            Ok(c) => prop_assert_eq!(Constraint::parse(&c.to_string()), Ok(c)),
            Err(e) => prop_assert!(e.contains("constraint `")),
        }
    }
}

/// Names and paths made of the characters that matter: separators, dots,
/// NUL, a few letters and some non-ASCII.
fn pathish() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("/".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("\0".to_string()),
        Just("a".to_string()),
        Just("-".to_string()),
        Just("é".to_string()),
        "[ -~]{0,4}",
    ];
    prop::collection::vec(atom, 0..10).prop_map(|v| v.concat())
}

proptest! {
    /// A name that passes is one plain path component; a relative path
    /// that passes never leaves its directory, however it is joined.
    #[test]
    fn names_and_paths_that_pass_stay_inside(s in pathish()) {
        use charter_config::limits;
        use std::path::{Component, Path};
        let inside = |p: &str| {
            let joined = Path::new("/base").join(p);
            joined.starts_with("/base")
                && joined.components().all(|c| !matches!(c, Component::ParentDir))
                && !p.contains('\0')
        };
        if limits::name(&s) {
            prop_assert!(limits::file_name(&s) && inside(&s) && !s.contains('/'));
            prop_assert!(s.len() <= 63 && !s.starts_with('.'));
        }
        if limits::file_name(&s) {
            prop_assert!(inside(&s) && !s.contains('/'));
        }
        if limits::relative_path(&s) {
            prop_assert!(inside(&s));
            prop_assert!(Path::new(&s).components().all(|c| matches!(c, Component::Normal(_))));
        }
    }

    /// Size checks never panic, and what passes is within the limits.
    #[test]
    fn size_checks_hold_their_limits(
        argv in prop::collection::vec("[ -~]{0,40}", 0..20),
        env in prop::collection::btree_map("[A-Za-z_0-9=-]{0,6}", "[ -~]{0,30}", 0..20),
        reason in "[ -~]{0,2000}",
    ) {
        use charter_config::limits;
        if limits::command("c", &argv).is_ok() {
            prop_assert!(argv.iter().map(String::len).sum::<usize>() <= limits::COMMAND_MAX);
        }
        if limits::env(&env).is_ok() {
            prop_assert!(env.keys().all(|k| limits::env_key(k) && !k.contains('=')));
        }
        prop_assert_eq!(limits::reason(&reason).is_ok(), reason.len() <= limits::REASON_MAX);
    }
}
