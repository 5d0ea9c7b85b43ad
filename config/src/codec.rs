//! Charter's one binary encoding, for everything it keeps or sends that is
//! not a protobuf message of its own: raft log entries, snapshots, writes a
//! follower forwards, and the typed records the API carries in `bytes`
//! fields (a deployment, the deployer's view, a cron job's or an app's
//! definition). Four header bytes (`C`, `H`, the format version, what it
//! holds), then MessagePack (`rmp-serde`, fields by name, so a field added
//! with a default reads older bytes).
//!
//! | version | encoding |
//! | --- | --- |
//! | 0 | JSON without a header: log entries and snapshots written before 2026-12-02; read by the scheduler's storage only, never written |
//! | 1 | MessagePack after the header |
//!
//! A reader refuses, with an error that names both versions, bytes whose
//! version it does not know (written by a newer Charter), bytes that hold
//! another kind than asked for, and bytes with no header.
//!
//! Limitations: MessagePack by field name repeats each name in every record
//! (about 60% of the JSON's size, not a schema-driven minimum).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The format version this build writes.
pub const VERSION: u8 = 1;

/// The first two bytes of everything encoded here.
pub const MAGIC: [u8; 2] = *b"CH";

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
    /// A deployment (`crate::deployment::Deployment`).
    Deployment = b'D',
    /// What the deployer knows of a task (`crate::deployment::TaskView`).
    TaskView = b'T',
    /// The deployer's whole view (`crate::deployment::DeployView`).
    DeployView = b'V',
    /// A cron job's definition (`crate::cron::JobConfig`).
    Job = b'J',
    /// An app's definition (`crate::app::AppConfig`).
    App = b'A',
}

/// Why bytes could not be written or read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// Written by a format version this reader does not know.
    #[error(
        "format version {found} (this build reads versions 0 to {VERSION}): written by a newer Charter; upgrade this one"
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
    /// No header: not written by this codec (version 0 for stored entries
    /// and snapshots; garbage anywhere else).
    #[error("no format header (version 0, or not Charter's): cannot read it as {0:?}")]
    Unversioned(Kind),
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
    /// The value does not encode (a map with keys MessagePack cannot hold).
    #[error("cannot encode {kind:?}: {why}")]
    Encode {
        /// What was written.
        kind: Kind,
        /// The encoder's words.
        why: String,
    },
}

/// Encodes `v` as `kind` in the current format version.
pub fn encode<T: Serialize>(kind: Kind, v: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(256);
    encode_to(kind, v, &mut out)?;
    Ok(out)
}

/// Encodes `v` as `kind` in the current format version into `out`, as it
/// goes (a large value, such as a snapshot, is never whole in memory).
pub fn encode_to<T: Serialize, W: std::io::Write + ?Sized>(
    kind: Kind,
    v: &T,
    out: &mut W,
) -> Result<(), CodecError> {
    let failed = |why: String| CodecError::Encode { kind, why };
    out.write_all(&[MAGIC[0], MAGIC[1], VERSION, kind as u8])
        .map_err(|e| failed(e.to_string()))?;
    rmp_serde::encode::write_named(out, v).map_err(|e| failed(e.to_string()))
}

/// Decodes bytes of `kind` in the current format version.
pub fn decode<T: DeserializeOwned>(kind: Kind, b: &[u8]) -> Result<T, CodecError> {
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
            rmp_serde::from_slice(rest).map_err(|e| CodecError::Corrupt {
                kind,
                version: *version,
                why: e.to_string(),
            })
        }
        _ => Err(CodecError::Unversioned(kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::{DeployStep, StepRecord, StepState};

    #[test]
    fn round_trips_and_refuses_what_it_does_not_know() {
        let r = StepRecord {
            step: DeployStep::AwaitHealthy,
            started_at: 5,
            ended_at: None,
            state: StepState::Running,
            message: "m".into(),
        };
        let b = encode(Kind::Deployment, &r).unwrap();
        assert_eq!(&b[..4], b"CH\x01D");
        assert_eq!(decode::<StepRecord>(Kind::Deployment, &b), Ok(r));
        let mut newer = b.clone();
        newer[2] = 2;
        let e = decode::<StepRecord>(Kind::Deployment, &newer).unwrap_err();
        assert_eq!(e, CodecError::Version { found: 2 });
        assert!(e.to_string().contains("reads versions 0 to 1"), "{e}");
        assert!(matches!(
            decode::<StepRecord>(Kind::App, &b),
            Err(CodecError::Kind {
                expected: Kind::App,
                found: b'D'
            })
        ));
        assert_eq!(
            decode::<StepRecord>(Kind::Deployment, b"{}"),
            Err(CodecError::Unversioned(Kind::Deployment))
        );
        assert!(matches!(
            decode::<StepRecord>(Kind::Deployment, b"CH\x01D\xff"),
            Err(CodecError::Corrupt { version: 1, .. })
        ));
    }
}
