//! The content-addressed artifact store: a built artifact is kept under
//! the sha256 of its bytes (`ROOT/sha256/<hex>`), moved in from a finished
//! file on the same filesystem after an fsync, so a key always names whole
//! bytes.
//! Each app lists its versions (`ROOT/apps/<app>`, newest last); an app
//! keeps its newest `keep`, and a blob no app lists any more is removed.
//! Downloaders check the bytes against the key (the agent, on fetch).

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// An artifact store under one directory.
pub struct Store {
    root: PathBuf,
}

fn is_key(k: &str) -> bool {
    k.len() == 64
        && k.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// The sha256 of a file's bytes, in hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

impl Store {
    /// Opens (creating) a store at `root`.
    pub fn open(root: &Path) -> std::io::Result<Store> {
        std::fs::create_dir_all(root.join("sha256"))?;
        std::fs::create_dir_all(root.join("apps"))?;
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// Where the artifact `key` is, if the store has it.
    pub fn path(&self, key: &str) -> Option<PathBuf> {
        let p = self.root.join("sha256").join(key);
        (is_key(key) && p.is_file()).then_some(p)
    }

    /// The file listing `app`'s versions. The name becomes a path here, so
    /// it is checked here: one component of an app name, never `..` or `/`.
    fn list(&self, app: &str) -> std::io::Result<PathBuf> {
        if !charter_config::limits::name(app) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "app name {:?}: {}",
                    app.chars().take(64).collect::<String>(),
                    charter_config::limits::NAME_RULE
                ),
            ));
        }
        Ok(self.root.join("apps").join(app))
    }

    /// The versions of `app`, oldest first.
    pub fn versions(&self, app: &str) -> std::io::Result<Vec<String>> {
        match std::fs::read_to_string(self.list(app)?) {
            Ok(t) => Ok(t.lines().filter(|l| is_key(l)).map(String::from).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Moves the file at `src` (on the store's filesystem, e.g. an upload
    /// finished under the store's root) into the store as a version of
    /// `app`, fsynced, and keeps the newest `keep` versions of it and any
    /// older one in `pinned` (versions still running). Returns the key.
    pub fn put(
        &self,
        app: &str,
        src: &Path,
        keep: usize,
        pinned: &[String],
    ) -> std::io::Result<String> {
        let list = self.list(app)?;
        let key = sha256_file(src)?;
        let dst = self.root.join("sha256").join(&key);
        if dst.is_file() {
            std::fs::remove_file(src)?;
        } else {
            std::fs::File::open(src)?.sync_all()?;
            std::fs::rename(src, &dst)?;
        }
        let mut v = self.versions(app)?;
        v.retain(|k| k != &key);
        v.push(key.clone());
        let mut extra = v.len().saturating_sub(keep.max(1));
        v.retain(|k| {
            let drop = extra > 0 && *k != key && !pinned.contains(k);
            if drop {
                extra -= 1;
            }
            !drop
        });
        self.write_list(&list, &v)?;
        self.collect()?;
        Ok(key)
    }

    fn write_list(&self, path: &Path, keys: &[String]) -> std::io::Result<()> {
        // `.NAME.tmp`: a leading dot is never an app name.
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = path.with_file_name(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        for k in keys {
            writeln!(f, "{k}")?;
        }
        f.sync_all()?;
        std::fs::rename(tmp, path)
    }

    /// Removes blobs no app lists.
    fn collect(&self) -> std::io::Result<()> {
        let mut live = std::collections::BTreeSet::new();
        for e in std::fs::read_dir(self.root.join("apps"))? {
            let name = e?.file_name().to_string_lossy().into_owned();
            // A list, not a half-written `.NAME.tmp`.
            if charter_config::limits::name(&name) {
                live.extend(self.versions(&name)?);
            }
        }
        for e in std::fs::read_dir(self.root.join("sha256"))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if is_key(&name) && !live.contains(&name) {
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the file at `path` has the sha256 `key`.
    fn verify(path: &Path, key: &str) -> std::io::Result<bool> {
        Ok(sha256_file(path)? == key)
    }

    #[test]
    fn artifacts_are_kept_by_content_and_pruned_per_app() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("store")).unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let a1 = s.put("a", &file("1", "one"), 2, &[]).unwrap();
        assert_eq!(
            a1,
            "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed"
        );
        assert!(verify(&s.path(&a1).unwrap(), &a1).unwrap());
        let a2 = s.put("a", &file("2", "two"), 2, &[]).unwrap();
        // Another app shares the first blob.
        assert_eq!(s.put("b", &file("3", "one"), 2, &[]).unwrap(), a1);
        let a3 = s.put("a", &file("4", "three"), 2, &[]).unwrap();
        assert_eq!(s.versions("a").unwrap(), [a2.clone(), a3.clone()]);
        assert!(s.path(&a1).is_some(), "b still lists it");
        s.put("b", &file("5", "four"), 1, &[]).unwrap();
        assert!(s.path(&a1).is_none(), "no app lists it any more");
        // A pinned version (still running) outlives `keep`.
        let a5 = s
            .put("a", &file("6", "five"), 2, std::slice::from_ref(&a2))
            .unwrap();
        assert_eq!(s.versions("a").unwrap(), [a2.clone(), a5.clone()]);
        let a6 = s
            .put("a", &file("7", "six"), 1, std::slice::from_ref(&a2))
            .unwrap();
        assert_eq!(s.versions("a").unwrap(), [a2.clone(), a6]);
        assert!(s.path(&a2).is_some());
        // A key is only ever a sha256; a path is never built from anything else.
        assert!(s.path("../apps/a").is_none());
        // Bytes that do not match their key fail verification.
        std::fs::write(s.path(&a2).unwrap(), "tampered").unwrap();
        assert!(!verify(&s.path(&a2).unwrap(), &a2).unwrap());
    }

    #[test]
    fn an_app_name_that_is_a_path_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("store")).unwrap();
        let outside = dir.path().join("owned");
        for app in [
            "../owned".to_string(),
            format!("/{}{}", "../".repeat(12), outside.display()),
            "a/b".into(),
            String::new(),
            ".hidden".into(),
        ] {
            let src = dir.path().join("upload");
            std::fs::write(&src, "x").unwrap();
            let e = s.put(&app, &src, 2, &[]).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{app}");
            assert!(s.versions(&app).is_err(), "{app}");
        }
        assert!(!outside.exists());
        let listed: Vec<_> = std::fs::read_dir(dir.path().join("store/apps"))
            .unwrap()
            .collect();
        assert!(listed.is_empty(), "nothing listed: {listed:?}");
    }

    proptest::proptest! {
        /// Whatever an app is called, the store writes inside its root.
        #[test]
        fn any_app_name_stays_inside_the_store(app in "[./a-z-]{0,12}") {
            let dir = tempfile::tempdir().unwrap();
            let s = Store::open(&dir.path().join("store")).unwrap();
            let src = dir.path().join("store").join("upload");
            std::fs::write(&src, "x").unwrap();
            let _ = s.put(&app, &src, 2, &[]);
            for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
                proptest::prop_assert_eq!(e.file_name(), "store");
            }
            for e in std::fs::read_dir(dir.path().join("store/apps")).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                proptest::prop_assert!(charter_config::limits::name(&name), "{}", name);
            }
        }
    }
}
