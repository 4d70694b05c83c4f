//! The hash tree of what a node may fetch: a flat map from directory path
//! to its sorted entries, where a directory's hash covers its entries (and
//! so, through their hashes, everything below). Equal root hashes mean
//! equal trees, so an unchanged snapshot costs one round trip; a changed
//! one is found by descending only into directories whose hash differs.
//!
//! Owns the hashing rule, building a manifest from a directory without
//! following symlinks, and the validation of every entry a client receives
//! (names, kinds, modes, hashes, path lengths) before it touches disk.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::wire::Entry;
pub use crate::fsutil::md5_file;

/// Longest path the client accepts.
pub const MAX_PATH: usize = 4096;
/// Largest file the client accepts (a configuration tree, not a mirror).
pub const MAX_FILE: u64 = 16 << 30;

/// A tree of directories and their entries; `""` is the root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub dirs: BTreeMap<String, Vec<Entry>>,
}

/// The hash of a directory with these (sorted) entries.
pub fn dir_hash(entries: &[Entry]) -> String {
    let mut h = Md5::new();
    for e in entries {
        h.update(format!("{} {:o} {} {} {}\n", e.kind, e.mode, e.size, e.hash, e.name).as_bytes());
    }
    format!("{:x}", h.finalize())
}

/// `dir/name`, or `name` at the root.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Size, mtime (s, ns), ctime (s, ns) and the md5 of a file.
type Stamp = (u64, i64, i64, i64, i64, String);

/// The md5 of files already hashed, keyed by device and inode and valid
/// while size, mtime and ctime are unchanged (ctime cannot be set back by
/// a writer). A file changed less than [`HashCache::RACY`] before it was
/// hashed is not kept: a second write in the same timestamp tick would
/// leave its times equal (git's "racily clean" entries). Saved as JSON.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HashCache {
    files: BTreeMap<String, Stamp>,
    #[serde(skip)]
    used: BTreeMap<String, Stamp>,
    /// [`HashCache::RACY`] unless set (by tests).
    #[serde(skip)]
    racy: Option<i64>,
    /// Files over this size are never read: they get [`UNREAD`].
    #[serde(skip)]
    limit: Option<u64>,
}

/// The hash a file over the reader's size limit gets: it is never read
/// (the node refuses it by its size at the listing, before any hash).
pub const UNREAD: &str = "00000000000000000000000000000000";

impl HashCache {
    /// Seconds within which a just-changed file is hashed again next time.
    pub const RACY: i64 = 2;

    /// The cache saved at `path`; empty when it is missing or unreadable
    /// (it is only a cache).
    pub fn load(path: &Path) -> HashCache {
        crate::fsutil::read_small(path, &path.display().to_string(), 256 << 20)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Saves the entries used since [`HashCache::load`] (files no longer
    /// seen are dropped) to `path`, atomically; nothing is written when
    /// they are the ones loaded.
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.used == self.files {
            return Ok(());
        }
        self.write(path, self.used.clone())
    }

    /// Like [`HashCache::save`], but keeps the loaded entries this run did
    /// not use (up to [`HashCache::MAX_KEPT`] entries in all): a server's
    /// cache serves many nodes, each reading only its own view.
    pub fn save_shared(&self, path: &Path) -> Result<()> {
        if self.used.iter().all(|(k, v)| self.files.get(k) == Some(v)) {
            return Ok(());
        }
        let mut all = self.files.clone();
        if all.len() + self.used.len() > Self::MAX_KEPT {
            all.clear();
        }
        all.extend(self.used.clone());
        self.write(path, all)
    }

    /// Most entries [`HashCache::save_shared`] keeps.
    pub const MAX_KEPT: usize = 1_000_000;

    fn write(&self, path: &Path, files: BTreeMap<String, Stamp>) -> Result<()> {
        let data = serde_json::to_vec(&HashCache {
            files,
            ..HashCache::default()
        })?;
        // 0600: md5s of secret parameters are not for other users.
        crate::fsutil::write_private(path, &data)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Never reads a file over `bytes` (a node's `max_file_size`): its
    /// hash is [`UNREAD`], and nothing is cached for it.
    pub fn refuse_over(&mut self, bytes: u64) {
        self.limit = Some(bytes);
    }

    /// The md5 of `path` (whose metadata is `m`), from the cache when the
    /// file is unchanged; [`UNREAD`] when it is over [`HashCache::refuse_over`].
    pub fn md5(&mut self, path: &Path, m: &fs::Metadata) -> Result<String> {
        if self.limit.is_some_and(|l| m.len() > l) {
            return Ok(UNREAD.to_string());
        }
        let key = format!("{}:{}", m.dev(), m.ino());
        let stamp = (
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        );
        if let Some(e) = self.files.get(&key) {
            if (e.0, e.1, e.2, e.3, e.4) == stamp {
                self.used.insert(key, e.clone());
                return Ok(e.5.clone());
            }
        }
        let hash = md5_file(path)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if now - m.ctime().max(m.mtime()) > self.racy.unwrap_or(Self::RACY) {
            let (a, b, c, d, e) = stamp;
            self.used.insert(key, (a, b, c, d, e, hash.clone()));
        }
        Ok(hash)
    }
}

impl Manifest {
    pub fn root_hash(&self) -> String {
        dir_hash(self.dirs.get("").map(Vec::as_slice).unwrap_or(&[]))
    }

    /// The entry at `path` (not for the root).
    pub fn entry(&self, path: &str) -> Option<&Entry> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        self.dirs.get(dir)?.iter().find(|e| e.name == name)
    }

    /// Adds the tree under `src` at manifest path `at`, returning the entry
    /// `at` gets in its parent (named `name`). Symlinks are never followed.
    pub fn add_tree(&mut self, src: &Path, at: &str, name: &str) -> Result<Entry> {
        self.add_tree_cached(src, at, name, &mut HashCache::default())
    }

    /// [`Manifest::add_tree`], taking the md5 of a file from `hashes` when
    /// the file is unchanged since it was hashed.
    pub fn add_tree_cached(
        &mut self,
        src: &Path,
        at: &str,
        name: &str,
        hashes: &mut HashCache,
    ) -> Result<Entry> {
        if at.matches('/').count() > crate::fsutil::MAX_DEPTH {
            bail!(
                "{}: more than {} levels of directories",
                src.display(),
                crate::fsutil::MAX_DEPTH
            );
        }
        let meta = fs::metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
        let mut entries = Vec::new();
        let mut names: Vec<_> = fs::read_dir(src)
            .with_context(|| format!("cannot read {}", src.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        for n in names {
            let Some(ns) = n.to_str() else {
                bail!(
                    "{}/{}: file names must be UTF-8",
                    src.display(),
                    n.to_string_lossy()
                );
            };
            let p = src.join(&n);
            let m = fs::symlink_metadata(&p)?;
            let e = if m.file_type().is_symlink() {
                let t = fs::read_link(&p)?;
                Entry {
                    name: ns.into(),
                    kind: 'l',
                    mode: 0o777,
                    size: 0,
                    hash: t.to_string_lossy().into_owned(),
                }
            } else if m.is_dir() {
                self.add_tree_cached(&p, &join(at, ns), ns, hashes)?
            } else if m.is_file() {
                Entry {
                    name: ns.into(),
                    kind: 'f',
                    mode: m.mode() & 0o7777,
                    size: m.len(),
                    hash: hashes.md5(&p, &m)?,
                }
            } else {
                bail!(
                    "{} is a {}; a server tree may hold only regular files, directories and symlinks",
                    join(at, ns),
                    crate::fsutil::kind_name(&m)
                );
            };
            entries.push(e);
        }
        let hash = dir_hash(&entries);
        self.dirs.insert(at.to_string(), entries);
        Ok(Entry {
            name: name.into(),
            kind: 'd',
            mode: meta.mode() & 0o7777,
            size: 0,
            hash,
        })
    }

    /// Adds an empty-or-not directory listing built from `entries`.
    pub fn set_dir(&mut self, at: &str, name: &str, mode: u32, mut entries: Vec<Entry>) -> Entry {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let hash = dir_hash(&entries);
        self.dirs.insert(at.to_string(), entries);
        Entry {
            name: name.into(),
            kind: 'd',
            mode,
            size: 0,
            hash,
        }
    }

    /// Copies the subtree at `path` from `other` into this manifest.
    pub fn graft(&mut self, other: &Manifest, path: &str) {
        let prefix = format!("{path}/");
        for (k, v) in other.dirs.range(path.to_string()..) {
            if k == path || k.starts_with(&prefix) {
                self.dirs.insert(k.clone(), v.clone());
            } else if k.as_str() > prefix.as_str() {
                break;
            }
        }
    }

    /// Copies the subtree at `from` in `other` to `to` in this manifest
    /// (a unit that is a symlink to another unit of a published snapshot).
    pub fn graft_as(&mut self, other: &Manifest, from: &str, to: &str) {
        let prefix = format!("{from}/");
        for (k, v) in other.dirs.range(from.to_string()..) {
            if k == from {
                self.dirs.insert(to.to_string(), v.clone());
            } else if let Some(rest) = k.strip_prefix(&prefix) {
                self.dirs.insert(format!("{to}/{rest}"), v.clone());
            } else if k.as_str() > prefix.as_str() {
                break;
            }
        }
    }

    /// Every file path with its entry.
    pub fn files(&self) -> Vec<(String, &Entry)> {
        let mut out = Vec::new();
        for (dir, entries) in &self.dirs {
            for e in entries.iter().filter(|e| e.kind == 'f') {
                out.push((join(dir, &e.name), e));
            }
        }
        out
    }
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks an entry received from a server before anything is written:
/// a plain file name (no `/`, NUL, `.`, `..`, at most 255 bytes), a known
/// kind, a mode of permission bits only, a well-formed hash or link target,
/// and a total path within [`MAX_PATH`].
pub fn validate(dir: &str, e: &Entry) -> Result<()> {
    let n = &e.name;
    let bad = n.is_empty()
        || n == "."
        || n == ".."
        || n.contains('/')
        || n.contains('\0')
        || n.len() > 255;
    if bad {
        bail!("the server sent a bad file name {:?} in {:?}", n, dir);
    }
    if join(dir, n).len() > MAX_PATH {
        bail!("the server sent a path longer than {MAX_PATH} bytes");
    }
    if e.size > MAX_FILE {
        bail!(
            "the server sent a size of {} bytes for {}, over the {MAX_FILE}-byte limit",
            e.size,
            join(dir, n)
        );
    }
    if e.mode > 0o7777 {
        bail!(
            "the server sent a bad mode {:o} for {}",
            e.mode,
            join(dir, n)
        );
    }
    match e.kind {
        'f' | 'd' if is_hex32(&e.hash) => Ok(()),
        'l' if !e.hash.is_empty() && !e.hash.contains('\0') && e.hash.len() <= MAX_PATH => Ok(()),
        _ => bail!("the server sent a bad entry for {}", join(dir, n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_cache_reuses_only_unchanged_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let saved = d.path().join("hashes.json");
        fs::write(&p, "one\n").unwrap();
        let md5 = |c: &mut HashCache| c.md5(&p, &fs::metadata(&p).unwrap()).unwrap();
        let mut c = HashCache {
            racy: Some(-10),
            ..HashCache::default()
        };
        assert_eq!(md5(&mut c), md5_file(&p).unwrap());
        c.save(&saved).unwrap();
        // Same size, mtime set back: only ctime tells the change.
        let mtime = fs::metadata(&p).unwrap().modified().unwrap();
        fs::write(&p, "two\n").unwrap();
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let mut c = HashCache::load(&saved);
        c.racy = Some(-10);
        assert_eq!(c.files.len(), 1, "the saved hash is loaded");
        assert_eq!(md5(&mut c), md5_file(&p).unwrap(), "changed: hashed again");
        // Unchanged: the cached value is what comes back.
        let key = c.used.keys().next().unwrap().clone();
        let mut c = HashCache {
            files: c.used.clone(),
            racy: Some(-10),
            ..HashCache::default()
        };
        c.files.get_mut(&key).unwrap().5 = "cached".into();
        assert_eq!(md5(&mut c), "cached");
        // A file changed just now is not kept (racily clean).
        let mut c = HashCache::default();
        md5(&mut c);
        assert!(c.used.is_empty());
    }

    #[test]
    fn a_change_anywhere_changes_the_root_hash() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("a/b")).unwrap();
        fs::write(d.path().join("a/b/f"), "1").unwrap();
        let mut m1 = Manifest::default();
        let top = m1.add_tree(d.path(), "", "").unwrap();
        assert_eq!(top.hash, m1.root_hash());
        fs::write(d.path().join("a/b/f"), "2").unwrap();
        let mut m2 = Manifest::default();
        m2.add_tree(d.path(), "", "").unwrap();
        assert_ne!(m1.root_hash(), m2.root_hash());
        assert_ne!(m1.entry("a").unwrap().hash, m2.entry("a").unwrap().hash);
        assert_eq!(m2.files().len(), 1);
    }

    #[test]
    fn hostile_entries_are_refused() {
        let ok = Entry {
            name: "x".into(),
            kind: 'f',
            mode: 0o644,
            size: 1,
            hash: "0".repeat(32),
        };
        assert!(validate("modules/a", &ok).is_ok());
        for name in ["..", ".", "a/b", "", "a\0b", &"n".repeat(256)] {
            assert!(
                validate(
                    "d",
                    &Entry {
                        name: name.into(),
                        ..ok.clone()
                    }
                )
                .is_err(),
                "{name:?}"
            );
        }
        assert!(validate(
            "d",
            &Entry {
                mode: 0o170000,
                ..ok.clone()
            }
        )
        .is_err());
        assert!(validate(
            "d",
            &Entry {
                kind: 'c',
                ..ok.clone()
            }
        )
        .is_err());
        assert!(validate(
            "d",
            &Entry {
                hash: "zz".into(),
                ..ok.clone()
            }
        )
        .is_err());
        assert!(validate(&"d".repeat(4096), &ok).is_err());
    }
}
