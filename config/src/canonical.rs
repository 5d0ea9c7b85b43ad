//! Canonical bytes and content hashes. The canonical form of a config is its
//! typed value as compact JSON: struct fields in declaration order, maps
//! sorted by key (every map in a config is a `BTreeMap`), no whitespace. Two
//! files that mean the same (other comments, key order, `"2h"` vs `"120m"`)
//! have the same canonical bytes and so the same hash.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The canonical bytes of a typed config.
pub fn to_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    // Configs hold only strings, numbers and string-keyed maps: this cannot fail.
    serde_json::to_vec(v).expect("configs serialise to JSON")
}

/// The sha256 of `bytes`, lower-case hex.
pub fn hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use crate::load;

    #[test]
    fn same_meaning_same_hash() {
        let a = load(
            "a.toml",
            "cpu = 2\nmem = \"1GiB\"\nfor = \"2h\"\nlabels = { b = \"2\", a = \"1\" }\n",
        )
        .unwrap();
        let b = load(
            "b.toml",
            "# reordered, other units\nfor = \"120m\"\nlabels = { a = \"1\", b = \"2\" }\nmem = \"1024MiB\"\ncpu = \"2000m\"\n",
        )
        .unwrap();
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(super::hash(&a.canonical()), super::hash(&b.canonical()));
        let c = load("c.toml", "cpu = 2\nmem = \"1GiB\"\nfor = \"3h\"\n").unwrap();
        assert_ne!(super::hash(&a.canonical()), super::hash(&c.canonical()));
        assert_eq!(super::hash(b"").len(), 64);
    }
}
