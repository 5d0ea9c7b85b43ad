//! Version 0 of the stored format: log entries and snapshots as JSON with
//! no header, as members wrote them before 2026-12-02. Read only, so a
//! member upgraded in place replays its log and loads its snapshot; every
//! entry and snapshot it writes afterwards is version 1
//! ([`charter_config::codec`]). Forwards and API records never were JSON
//! without a header, so only [`crate::codec::decode_stored`] comes here.

use charter_config::codec::{CodecError, Kind};

/// Reads version-0 bytes of `kind`.
pub fn decode<T: serde::de::DeserializeOwned>(kind: Kind, b: &[u8]) -> Result<T, CodecError> {
    if !matches!(kind, Kind::Entry | Kind::Snapshot) {
        return Err(CodecError::Unversioned(kind));
    }
    serde_json::from_slice(b).map_err(|e| CodecError::Corrupt {
        kind,
        version: 0,
        why: e.to_string(),
    })
}

#[cfg(test)]
pub mod tests {
    /// How long `v` is as version 0 (JSON) would write it.
    pub fn json_len<T: serde::Serialize>(v: &T) -> usize {
        serde_json::to_vec(v).map_or(0, |b| b.len())
    }
}
