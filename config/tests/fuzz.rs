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
