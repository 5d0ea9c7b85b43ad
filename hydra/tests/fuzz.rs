//! Property-based fuzzing of cron expressions: no input panics; every
//! accepted schedule has a next fire time strictly after any start.

use charter_hydra::schedule::Schedule;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        Just("*/5".to_string()),
        Just("1-5".to_string()),
        Just("mon-fri".to_string()),
        Just("jan,jul".to_string()),
        Just("0".to_string()),
        Just("7".to_string()),
        Just("L".to_string()),
        "[0-9]{1,2}",
        "[0-9]{1,2}-[0-9]{1,2}/[0-9]",
        "[a-z*/,-]{1,6}",
    ]
}

proptest! {
    #[test]
    fn expressions_never_panic(fields in prop::collection::vec(field(), 0..8), start in 0i64..4_000_000_000) {
        let expr = fields.join(" ");
        if let Ok(s) = Schedule::parse(&expr, None) {
            let t = Utc.timestamp_opt(start, 0).unwrap();
            if let Some(n) = s.next_after(t) {
                prop_assert!(n > t);
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,60}", tz in "[A-Za-z/_]{0,20}") {
        let _ = Schedule::parse(&s, Some(&tz));
    }
}
