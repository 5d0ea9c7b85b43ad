//! The encoding of what the replicated log, snapshots and member-to-member
//! forwards carry: a 4-byte header (`C`, `H`, the format version, what it
//! holds) and then MessagePack (`rmp-serde`, fields by name, so a field
//! added with a default reads old bytes).
//!
//! | version | encoding |
//! | --- | --- |
//! | 0 | JSON without a header: written before this codec; read, never written |
//! | 1 | MessagePack after the header |
//!
//! A member refuses, with an error that names both versions, bytes whose
//! version it does not know (written by a newer Charter), and bytes that
//! hold another kind than asked for.
//!
//! Limitations: MessagePack by field name repeats each name in every record
//! (about 60% of the JSON's size, not a schema-driven minimum).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The format version this build writes.
pub const VERSION: u8 = 1;

const MAGIC: [u8; 2] = *b"CH";

/// What a run of bytes holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A log entry: a batch of proposals.
    Entry = b'E',
    /// A snapshot: the whole state.
    Snapshot = b'S',
    /// A write forwarded from a follower to the leader.
    Forward = b'F',
    /// The outcome of a forwarded write.
    Outcome = b'O',
}

/// Why bytes could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// Written by a format version this member does not know.
    #[error(
        "format version {found} (this member reads versions 0 to {VERSION}): written by a newer Charter; upgrade this member"
    )]
    Version {
        /// The version found.
        found: u8,
    },
    /// Bytes of another kind than expected.
    #[error("holds {found:?}, not {expected:?}")]
    Kind {
        /// What was asked for.
        expected: Kind,
        /// What the header says (as a byte).
        found: u8,
    },
    /// The payload does not decode.
    #[error("undecodable {kind:?} (format version {version}): {why}")]
    Corrupt {
        /// What was asked for.
        kind: Kind,
        /// The version read.
        version: u8,
        /// The decoder's words.
        why: String,
    },
}

/// Encodes `v` as `kind` in the current format version.
pub fn encode<T: Serialize>(kind: Kind, v: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    // Plain data (maps with string or integer keys): encoding cannot fail;
    // a failure would be a broken invariant of the types, caught by tests.
    if let Err(e) = rmp_serde::encode::write_named(&mut out, v) {
        panic!("the {kind:?} types must encode as MessagePack: {e}");
    }
    out
}

/// Decodes bytes of `kind`, in any version this member knows.
pub fn decode<T: DeserializeOwned>(kind: Kind, b: &[u8]) -> Result<T, CodecError> {
    let corrupt = |version: u8, why: String| CodecError::Corrupt { kind, version, why };
    match b {
        [m0, m1, version, k, rest @ ..] if [*m0, *m1] == MAGIC => {
            if *version != VERSION {
                return Err(CodecError::Version { found: *version });
            }
            if *k != kind as u8 {
                return Err(CodecError::Kind {
                    expected: kind,
                    found: *k,
                });
            }
            rmp_serde::from_slice(rest).map_err(|e| corrupt(*version, e.to_string()))
        }
        _ => legacy::decode(b).map_err(|e| corrupt(0, e)),
    }
}

/// Version 0: JSON, as written before this codec. Read only, so a member
/// upgraded in place replays its log and loads its snapshot.
mod legacy {
    pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
        serde_json::from_slice(b).map_err(|e| e.to_string())
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
        let props = decode::<Vec<Proposal>>(Kind::Entry, ENTRY_V0.as_bytes()).unwrap();
        for p in &props {
            let _ = s.apply(p);
        }
        s
    }

    #[test]
    fn fixtures_of_every_version_decode() {
        let props = decode::<Vec<Proposal>>(Kind::Entry, ENTRY_V0.as_bytes()).unwrap();
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
            b.len() < serde_json::to_vec(&s).unwrap().len(),
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
        let e = decode::<State>(Kind::Snapshot, b"CH\x01S\xff").unwrap_err();
        assert!(matches!(e, CodecError::Corrupt { version: 1, .. }), "{e}");
    }
}
