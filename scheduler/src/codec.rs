//! The scheduler's side of [`charter_config::codec`], Charter's versioned
//! binary encoding: log entries, snapshots and forwarded writes. Writing
//! them cannot fail (plain data with string or integer keys; a failure is a
//! broken invariant of the types). Stored entries and snapshots written
//! before the format had versions (version 0, JSON) are read by
//! [`crate::storage::v0`]; nothing else ever reads JSON here.

pub use charter_config::codec::{CodecError, Kind, VERSION, decode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encodes a log entry, snapshot, forward or outcome.
pub fn encode<T: Serialize>(kind: Kind, v: &T) -> Vec<u8> {
    match charter_config::codec::encode(kind, v) {
        Ok(b) => b,
        Err(e) => panic!("the {kind:?} types must encode as MessagePack: {e}"),
    }
}

/// Decodes a stored log entry or snapshot, in any version this member
/// knows (version 0 too).
pub fn decode_stored<T: DeserializeOwned>(kind: Kind, b: &[u8]) -> Result<T, CodecError> {
    match decode(kind, b) {
        Err(CodecError::Unversioned(_)) => crate::storage::v0::decode(kind, b),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Proposal, Retention, State};

    /// Fixtures written by format versions 0 (JSON) and 1: a log entry and a
    /// snapshot. A change to the types or the codec that cannot read them
    /// fails here. (`CHARTER_WRITE_FIXTURES=1` rewrites version 1's.)
    const ENTRY_V0: &str = include_str!("../tests/fixtures/entry-v0.json");
    const SNAPSHOT_V0: &str = include_str!("../tests/fixtures/snapshot-v0.json");
    const ENTRY_V1: &[u8] = include_bytes!("../tests/fixtures/entry-v1.bin");
    const SNAPSHOT_V1: &[u8] = include_bytes!("../tests/fixtures/snapshot-v1.bin");

    fn fixture_state() -> State {
        let mut s = State::new([(1, "127.0.0.1:7701".to_string())].into());
        let props = decode_stored::<Vec<Proposal>>(Kind::Entry, ENTRY_V0.as_bytes()).unwrap();
        for p in &props {
            let _ = s.apply(p);
        }
        s
    }

    #[test]
    fn fixtures_of_every_version_decode() {
        let props = decode_stored::<Vec<Proposal>>(Kind::Entry, ENTRY_V0.as_bytes()).unwrap();
        assert_eq!(props.len(), 3, "v0 entry");
        assert!(matches!(props[0].cmd, Command::RegisterNode { .. }));
        let old = State::from_bytes(SNAPSHOT_V0.as_bytes()).unwrap();
        assert_eq!(old.leases.len(), 1, "v0 snapshot");
        // Its idempotency outcomes (kept whole then) are honoured.
        assert_eq!(old.keys.len(), 3, "v0 applied_keys read into keys");
        let retry = crate::state::retention::key_id("ann/req-1");
        assert!(old.keys.contains_key(&retry));
        if std::env::var("CHARTER_WRITE_FIXTURES").is_ok() {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
            std::fs::write(dir.join("entry-v1.bin"), encode(Kind::Entry, &props)).unwrap();
            std::fs::write(
                dir.join("snapshot-v1.bin"),
                encode(Kind::Snapshot, &fixture_state()),
            )
            .unwrap();
        }
        let v1: Vec<Proposal> = decode(Kind::Entry, ENTRY_V1).unwrap();
        assert_eq!(v1, props, "v1 entry");
        let mut s: State = decode(Kind::Snapshot, SNAPSHOT_V1).unwrap();
        s.rebuild_index();
        assert_eq!(s, fixture_state(), "v1 snapshot");
    }

    #[test]
    fn round_trips_and_refuses_what_it_does_not_know() {
        let mut s = fixture_state();
        s.retention = Retention {
            keys_max: 7,
            ..Retention::default()
        };
        let b = encode(Kind::Snapshot, &s);
        assert_eq!(&b[..4], b"CH\x01S");
        let mut back: State = decode(Kind::Snapshot, &b).unwrap();
        back.rebuild_index();
        assert_eq!(back, s);
        assert!(
            b.len() < crate::storage::v0::tests::json_len(&s),
            "smaller than JSON"
        );
        let mut newer = b.clone();
        newer[2] = 9;
        let e = decode::<State>(Kind::Snapshot, &newer).unwrap_err();
        assert_eq!(e, CodecError::Version { found: 9 });
        assert!(e.to_string().contains("reads versions 0 to 1"), "{e}");
        let e = decode::<Vec<Proposal>>(Kind::Entry, &b).unwrap_err();
        assert!(
            matches!(
                e,
                CodecError::Kind {
                    expected: Kind::Entry,
                    ..
                }
            ),
            "{e}"
        );
        let e = decode_stored::<State>(Kind::Snapshot, b"{not json").unwrap_err();
        assert!(matches!(e, CodecError::Corrupt { version: 0, .. }), "{e}");
        let e = decode::<State>(Kind::Snapshot, b"CH\x01S\xff").unwrap_err();
        assert!(matches!(e, CodecError::Corrupt { version: 1, .. }), "{e}");
    }
}
